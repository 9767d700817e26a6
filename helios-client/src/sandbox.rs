//! The exec driver's launcher: how an isolated task gets from the agent to its program.
//!
//! The agent runs its own binary as `helios-client task-launch ...` (the *launcher*, root, in the
//! agent's namespaces, leading the task's process group), which
//! 1. joins the task's cgroups, so that everything the task will ever fork is limited;
//! 2. unshares a PID and an IPC namespace and starts `helios-client task-init ...` in them (the
//!    *init*, pid 1 there), which unshares a mount namespace of its own, hides the agent's data
//!    directory behind an empty tmpfs with only this allocation's directory put back at its
//!    path, mounts a /proc that shows only the task's processes, sets no_new_privs, and starts
//!    the task's program as the task's user;
//! 3. reports "started" (or why not) to the agent through its stdin, a pipe, and when the task
//!    ends writes how (`exit N`, `signal N`, `error ...`) to the task's exit file, which a
//!    restarted agent that adopted the task reads too.
//!
//! The task cannot see or signal the agent or other jobs' processes (another PID namespace; its
//! own user), cannot read the agent's data dir (not mounted in its view), and stays in its
//! cgroups. When the init exits, the kernel kills whatever else the task left in its namespace.
//! The launcher blocks the stop signals the agent sends to the process group, so that it
//! outlives the task and records its end; the task gets them directly (same process group).
//!
//! For raw_exec (`--raw`) the launcher does only the first and last of this: it starts the
//! program directly, in its own session, as the agent's user or the task's, and records how it
//! ended, so that a task adopted by a restarted agent still reports its exit code.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

pub const LAUNCH: &str = "task-launch";
const INIT: &str = "task-init";

/// Everything the launcher and the init need, as command-line arguments.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(no_binary_name = true)]
pub struct Spec {
    /// `cgroup.procs` files to join.
    #[arg(long = "cgroup")]
    pub cgroups: Vec<PathBuf>,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    /// The agent's data directory (absolute): hidden from the task.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The allocation's directory (in the data directory): kept visible at its path.
    #[arg(long)]
    pub alloc_dir: PathBuf,
    /// The task's working directory.
    #[arg(long)]
    pub cwd: PathBuf,
    /// The task's own directory (root's: logs, pid and exit files): kept visible, like the
    /// allocation's shared `.alloc`; the other tasks' directories are not.
    #[arg(long)]
    pub task_dir: PathBuf,
    /// Where the launcher writes how the task ended.
    #[arg(long)]
    pub exit_file: PathBuf,
    /// The task's environment, NUL-separated `KEY=VALUE` (a file only root reads). The launcher
    /// and the init run with an empty environment: the job's variables (`LD_PRELOAD`, ...) reach
    /// the task alone, never a process running as root.
    #[arg(long)]
    pub env_file: PathBuf,
    /// raw_exec: no cgroups, no namespaces, no hidden data dir; the launcher only starts the
    /// program and records how it ended (which a restarted agent could not learn otherwise).
    #[arg(long)]
    pub raw: bool,
    /// A process of a running exec task (its init): the program runs in that task's PID, IPC
    /// and mount namespaces (its processes, its private /tmp, its view of the files) instead
    /// of new ones, as Nomad's ExecTask does (a script check).
    #[arg(long)]
    pub enter: Option<u32>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl Spec {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![LAUNCH.into()];
        for cgroup in &self.cgroups {
            args.extend(["--cgroup".into(), cgroup.into()]);
        }
        args.extend(["--uid".into(), self.uid.to_string().into(), "--gid".into(), self.gid.to_string().into()]);
        args.extend([
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--alloc-dir".into(),
            self.alloc_dir.clone().into(),
        ]);
        args.extend(["--cwd".into(), self.cwd.clone().into(), "--exit-file".into(), self.exit_file.clone().into()]);
        args.extend([
            "--task-dir".into(),
            self.task_dir.clone().into(),
            "--env-file".into(),
            self.env_file.clone().into(),
        ]);
        if self.raw {
            args.push("--raw".into());
        }
        if let Some(pid) = self.enter {
            args.extend(["--enter".into(), pid.to_string().into()]);
        }
        args.push("--".into());
        args.extend(self.command.iter().map(OsString::from));
        args
    }
}

/// Runs the launcher or the init when this process was started as one (`main` calls this first).
pub fn run_if_launcher() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let role = args.next()?;
    let role = if role == LAUNCH {
        LAUNCH
    } else if role == INIT {
        INIT
    } else {
        return None;
    };
    let spec = match Spec::try_parse_from(args) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("helios {role}: {e}");
            return Some(ExitCode::from(125));
        }
    };
    Some(if role == LAUNCH { launch(&spec) } else { init(&spec) })
}

/// How a task ended, as the exit file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    /// It never ran: the reason.
    NotStarted(String),
}

impl Ending {
    pub fn parse(line: &str) -> Option<Ending> {
        let (kind, rest) = line.trim_end().split_once(' ')?;
        match kind {
            "exit" => rest.parse().ok().map(Ending::Exited),
            "signal" => rest.parse().ok().map(Ending::Signaled),
            "error" => Some(Ending::NotStarted(rest.to_string())),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Ending::Exited(code) => format!("exit {code}"),
            Ending::Signaled(signal) => format!("signal {signal}"),
            Ending::NotStarted(why) => format!("error {}", why.replace('\n', " ")),
        }
    }

    /// Reads the exit file the launcher wrote, if it did.
    pub fn read(path: &Path) -> Option<Ending> {
        std::fs::read_to_string(path).ok().and_then(|text| Ending::parse(&text))
    }
}

/// The stop signals the agent sends: the launcher must outlive them to record the task's end.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
        set.add(signal);
    }
    set
}

fn launch(spec: &Spec) -> ExitCode {
    // A session of its own, without the agent's controlling terminal (a task could otherwise
    // open it and type into the operator's shell); its process group is its pid, which the
    // agent signals.
    let _ = nix::unistd::setsid();
    // The standard library resets the mask in children, so the init and the task get these.
    let _ = stop_signals().thread_block();
    // stdin: the agent's pipe, for the start report.
    let mut agent = File::options().write(true).open("/proc/self/fd/0").ok();
    let mut tell_agent = |line: &str| {
        if let Some(agent) = agent.as_mut() {
            let _ = writeln!(agent, "{line}");
        }
    };
    if spec.raw || spec.enter.is_some() {
        let started = match spec.enter {
            Some(pid) => enter_task(spec, pid).and_then(|()| start_task(spec)),
            None => start_task(spec),
        };
        let ending = match started {
            Ok(mut child) => {
                tell_agent("started");
                match child.wait() {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => Ending::Exited(code),
                        (None, Some(signal)) => Ending::Signaled(signal),
                        (None, None) => Ending::NotStarted("the task ended in an unknown way".to_string()),
                    },
                    Err(e) => Ending::NotStarted(format!("cannot wait for the task: {e}")),
                }
            }
            Err(why) => {
                tell_agent(&format!("error {why}"));
                Ending::NotStarted(why)
            }
        };
        return finish(spec, ending);
    }
    let ending = match start_init(spec) {
        Ok((mut child, report)) => {
            let mut lines = BufReader::new(report).lines();
            let first = lines.next().and_then(Result::ok);
            match first.as_deref() {
                Some("started") => tell_agent("started"),
                Some(other) => tell_agent(other),
                None => tell_agent("error the task's init ended before starting it"),
            }
            let last = lines.map_while(Result::ok).last().or(first);
            let status = child.wait();
            match last.as_deref().and_then(Ending::parse) {
                Some(ending) => ending,
                // The init died without saying how the task ended (killed along with it).
                _ => match status.ok().and_then(|s| s.signal()) {
                    Some(signal) => Ending::Signaled(signal),
                    None => Ending::NotStarted("the task's init failed".to_string()),
                },
            }
        }
        Err(why) => {
            tell_agent(&format!("error {why}"));
            Ending::NotStarted(why)
        }
    };
    finish(spec, ending)
}

/// Joins a running task's cgroups and its PID, IPC and mount namespaces (those of `pid`, its
/// init): what starts next runs inside the task, seeing what it sees. The launcher is single
/// threaded, as joining a mount namespace requires.
fn enter_task(spec: &Spec, pid: u32) -> Result<(), String> {
    for procs in &spec.cgroups {
        std::fs::write(procs, "0").map_err(|e| format!("cannot join cgroup {}: {e}", procs.display()))?;
    }
    let namespaces =
        [("ipc", CloneFlags::CLONE_NEWIPC), ("pid", CloneFlags::CLONE_NEWPID), ("mnt", CloneFlags::CLONE_NEWNS)];
    for (name, kind) in namespaces {
        let path = format!("/proc/{pid}/ns/{name}");
        let ns = File::open(&path).map_err(|e| format!("cannot open {path} (is the task running?): {e}"))?;
        nix::sched::setns(ns, kind).map_err(|e| format!("cannot enter the task's {name} namespace: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))
}

/// Records how the task ended, and exits as it did.
fn finish(spec: &Spec, ending: Ending) -> ExitCode {
    record(&spec.exit_file, &ending);
    ExitCode::from(match ending {
        Ending::Exited(code) => u8::try_from(code).unwrap_or(1),
        Ending::Signaled(signal) => u8::try_from(128 + signal).unwrap_or(255),
        Ending::NotStarted(_) => 127,
    })
}

/// Joins the cgroups, enters new PID and IPC namespaces and starts the init in them; returns it
/// and the pipe it reports on.
fn start_init(spec: &Spec) -> Result<(std::process::Child, std::io::PipeReader), String> {
    for procs in &spec.cgroups {
        std::fs::write(procs, "0").map_err(|e| format!("cannot join cgroup {}: {e}", procs.display()))?;
    }
    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("cannot create the task's namespaces: {e}"))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut args = spec.to_args();
    args[0] = INIT.into();
    let child = Command::new("/proc/self/exe")
        .args(args)
        .stdin(writer)
        .spawn()
        .map_err(|e| format!("cannot start the task's init: {e}"))?;
    Ok((child, reader))
}

/// Writes the exit file whole (a new file renamed over), so a reader never sees half of it.
fn record(path: &Path, ending: &Ending) {
    let partial = path.with_extension("partial");
    let written = std::fs::write(&partial, ending.line()).and_then(|()| std::fs::rename(&partial, path));
    if let Err(e) = written {
        eprintln!("helios launcher: cannot record the task's end in {}: {e}", path.display());
    }
}

/// Pid 1 of the task's PID namespace: sets up the task's view, starts it, reaps every process
/// of the namespace, and reports how the task ended. Exiting ends the namespace.
fn init(spec: &Spec) -> ExitCode {
    let Ok(mut launcher) = File::options().write(true).open("/proc/self/fd/0") else {
        return ExitCode::from(125);
    };
    let task = match prepare_view(spec).and_then(|()| start_task(spec)) {
        Ok(task) => task,
        Err(why) => {
            let _ = writeln!(launcher, "{}", Ending::NotStarted(why).line());
            return ExitCode::from(127);
        }
    };
    let _ = writeln!(launcher, "started");
    let task_pid = Pid::from_raw(i32::try_from(task.id()).unwrap_or(i32::MAX));
    // Orphans of the task are re-parented here: reap them too, until the task itself ends.
    let ending = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == task_pid => break Ending::Exited(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == task_pid => break Ending::Signaled(signal as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Ending::NotStarted(format!("lost track of the task: {e}")),
        }
    };
    let _ = writeln!(launcher, "{}", ending.line());
    ExitCode::SUCCESS
}

/// The task's mount namespace: private, the data dir hidden with only the task's own directory
/// and its allocation's shared `.alloc` put back at their paths, a private `/tmp` and `/dev/shm`,
/// and a /proc of its PID namespace.
fn prepare_view(spec: &Spec) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot create the task's mount namespace: {e}"))?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("cannot make the task's mounts private: {e}"))?;
    // Opened before the tmpfs covers them, and bound back through the open handles.
    let shared = spec.alloc_dir.join(crate::task_dir::SHARED);
    let kept = [&spec.task_dir, &shared].map(|dir| {
        File::open(dir).map(|f| (dir.clone(), f)).map_err(|e| format!("cannot open {}: {e}", dir.display()))
    });
    let cover = cover_for(&spec.data_dir).ok_or_else(|| format!("{} cannot be hidden", spec.data_dir.display()))?;
    let tmpfs = |at: &Path, options: &str| {
        mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options))
            .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", at.display()))
    };
    // Other tasks' files in /tmp, and their shared memory in /dev/shm, are not this one's.
    // First: the data dir may lie under /tmp (its handles and `cover` are taken already).
    for private in ["/tmp", "/dev/shm"] {
        if Path::new(private).is_dir() {
            tmpfs(Path::new(private), "mode=1777")?;
        }
    }
    std::fs::create_dir_all(&cover).map_err(|e| format!("cannot recreate {}: {e}", cover.display()))?;
    // Directories just made in the private /tmp: traversable whatever the agent's umask.
    for made in cover.ancestors().filter(|d| d.starts_with("/tmp") && *d != Path::new("/tmp")) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755));
    }
    tmpfs(&cover, "mode=0755,size=64k")?;
    for kept in kept {
        let (dir, handle) = kept?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot recreate {}: {e}", dir.display()))?;
        // Traversable by the task's user whatever the agent's umask.
        for ancestor in dir.ancestors().take_while(|d| d.starts_with(&cover)) {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(0o755));
        }
        let source = format!("/proc/self/fd/{}", handle.as_raw_fd());
        mount(Some(source.as_str()), &dir, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
            .map_err(|e| format!("cannot mount {}: {e}", dir.display()))?;
    }
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(none, &cover, none, ro, none).map_err(|e| format!("cannot make {} read-only: {e}", cover.display()))?;
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), proc_flags, none).map_err(|e| format!("cannot mount /proc: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    Ok(())
}

/// What to cover so that the task sees nothing of the data dir but can still reach its
/// allocation's dir: the data dir itself, or its highest ancestor that other users cannot
/// traverse (nothing there was reachable for the task anyway).
pub fn cover_for(data_dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let closed = data_dir
        .ancestors()
        .skip(1)
        .filter(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .last();
    let cover = closed.unwrap_or(data_dir);
    (cover != Path::new("/")).then(|| cover.to_path_buf())
}

/// Reads a NUL-separated `KEY=VALUE` file.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the task's environment: {e}"))?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let text = String::from_utf8_lossy(v);
            text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Writes `env` as `read_env_file` reads it, readable by root alone.
pub fn write_env_file(path: &Path, env: &std::collections::BTreeMap<String, String>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(path)?;
    for (key, value) in env {
        file.write_all(format!("{key}={value}\0").as_bytes())?;
    }
    Ok(())
}

fn start_task(spec: &Spec) -> Result<std::process::Child, String> {
    let (program, args) = spec.command.split_first().ok_or("no command")?;
    let env = read_env_file(&spec.env_file)?;
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env).current_dir(&spec.cwd).stdin(Stdio::null());
    // A raw_exec task of an agent that is not root runs as that agent: no switch to ask for.
    if !spec.raw || spec.uid != nix::unistd::getuid().as_raw() || spec.gid != nix::unistd::getgid().as_raw() {
        command.uid(spec.uid).gid(spec.gid);
    }
    command.spawn().map_err(|e| format!("cannot start {program:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_goes_through_its_command_line_unchanged() {
        let spec = Spec {
            cgroups: vec!["/sys/fs/cgroup/memory/helios/a.t/cgroup.procs".into()],
            uid: 65534,
            gid: 65534,
            data_dir: "/var/lib/helios".into(),
            alloc_dir: "/var/lib/helios/allocs/a".into(),
            cwd: "/var/lib/helios/allocs/a/t/local".into(),
            task_dir: "/var/lib/helios/allocs/a/t".into(),
            exit_file: "/var/lib/helios/allocs/a/t/exit".into(),
            env_file: "/var/lib/helios/allocs/a/t/env".into(),
            raw: false,
            enter: Some(4242),
            command: vec!["sh".into(), "-c".into(), "echo --uid 0; exit 3".into()],
        };
        let args = spec.to_args();
        assert_eq!(args[0], LAUNCH);
        assert_eq!(Spec::try_parse_from(&args[1..]).expect("parses"), spec);
        let raw = Spec { raw: true, cgroups: Vec::new(), ..spec };
        assert_eq!(Spec::try_parse_from(&raw.to_args()[1..]).expect("parses"), raw);
    }

    #[test]
    fn an_environment_file_reads_back_and_only_root_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env");
        let env = std::collections::BTreeMap::from([
            ("A".to_string(), "x=y z".to_string()),
            ("LD_PRELOAD".to_string(), "/tmp/evil.so".to_string()),
        ]);
        write_env_file(&path, &env).expect("written");
        assert_eq!(std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777, 0o600);
        let back: std::collections::BTreeMap<String, String> =
            read_env_file(&path).expect("read").into_iter().collect();
        assert_eq!(back, env);
    }

    #[test]
    fn endings_read_back_as_written() {
        for ending in
            [Ending::Exited(0), Ending::Exited(137), Ending::Signaled(9), Ending::NotStarted("no such file".into())]
        {
            assert_eq!(Ending::parse(&ending.line()), Some(ending));
        }
        assert_eq!(Ending::parse("garbage"), None);
    }

    #[test]
    fn the_cover_is_the_highest_closed_ancestor_or_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let open = root.path().join("open");
        let data = open.join("closed").join("data");
        std::fs::create_dir_all(&data).expect("dirs");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(open.join("closed"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(cover_for(&data), Some(open.join("closed")));
        std::fs::set_permissions(open.join("closed"), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        assert_eq!(cover_for(&data), Some(data.clone()));
        assert_eq!(cover_for(Path::new("/")), None);
    }
}
