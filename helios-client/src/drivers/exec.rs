//! The exec driver, and the flow it shares with raw_exec: adopt a task a previous agent left
//! running, or prepare the task's directories and environment and start it (exec: through the
//! launcher, `crate::sandbox`, as its user, in its namespaces and cgroups; raw_exec: directly),
//! then supervise it until it ends and report how.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use helios_core::{TaskDriver, TaskEventKind, TaskRunState, TaskState};

use crate::cgroups::{Limits, TaskCgroup};
use crate::drivers::process::{live_pid, record_pid, supervise, watch_adopted, PID_FILE};
use crate::drivers::{Driver, Fingerprint, OnEvent, Settings, Started, TaskRun, TaskUser};
use crate::runner::{dead, event, running};
use crate::sandbox::{Ending, Spec};
use crate::task_dir::TaskDir;
use crate::task_env::{self, TaskPort};

/// The exec driver: tasks isolated (`crate::sandbox`), offered where the agent can isolate them.
pub(crate) struct Exec(pub Arc<Settings>);

impl Driver for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        let mut fingerprint = Fingerprint::default();
        if let Some(isolation) = &self.0.isolation {
            fingerprint.offered = true;
            fingerprint.attributes.insert("driver.exec".into(), "1".into());
            fingerprint.attributes.insert("unique.cgroup.version".into(), isolation.cgroups.as_str().into());
        }
        Box::pin(std::future::ready(fingerprint))
    }

    fn recover<'a>(&'a self, run: TaskRun<'a>) -> BoxFuture<'a, Option<Started>> {
        Box::pin(recover(&self.0, run, true))
    }

    fn start<'a>(&'a self, run: TaskRun<'a>, _: &'a OnEvent) -> BoxFuture<'a, Started> {
        Box::pin(start(&self.0, run, true))
    }

    fn run_in_task<'a>(
        &'a self,
        run: TaskRun<'a>,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(i32, String), String>> {
        Box::pin(run_in_task(&self.0, run, true, command, timeout))
    }
}

/// A task's cgroup name: unique on the node, and found again by a restarted agent.
fn cgroup_name(alloc_id: &str, task: &str) -> String {
    format!("{alloc_id}.{task}")
}

/// The task's cgroup, where tasks are isolated (exec) and the agent can name its own.
fn cgroup_of(settings: &Settings, run: TaskRun<'_>, isolated: bool) -> Option<TaskCgroup> {
    let isolation = settings.isolation.as_ref().filter(|_| isolated)?;
    TaskCgroup::locate(isolation.cgroups, &cgroup_name(&run.owner.alloc_id, &run.task.name)).ok()
}

fn task_dir(run: TaskRun<'_>) -> TaskDir {
    TaskDir::new(run.dir.parent().unwrap_or(run.dir), &run.task.name)
}

fn kill_timeout(run: TaskRun<'_>) -> Duration {
    Duration::from_secs(u64::from(run.task.kill_timeout_secs))
}

/// An exec (`isolated`) or raw_exec task an earlier agent started: watched while it runs
/// (its pid file names a live process), or reported if it ended meanwhile.
pub(crate) async fn recover(settings: &Settings, run: TaskRun<'_>, isolated: bool) -> Option<Started> {
    let dirs = task_dir(run);
    let cgroup = cgroup_of(settings, run, isolated);
    if let Some(pid) = live_pid(&dirs.dir) {
        // From before an agent restart: watch it rather than start a second copy.
        let mut state = running(vec![event(
            TaskEventKind::Adopted,
            format!("process {pid} still running after an agent restart"),
            None,
        )]);
        let initial = state.clone();
        let (kill_timeout, stop) = (kill_timeout(run), run.stop.clone());
        let handle = tokio::spawn(async move {
            watch_adopted(pid, kill_timeout, stop, &mut state).await;
            match Ending::read(&dirs.exit_file()) {
                // The launcher recorded how it ended.
                Some(ending) => ended(state, &ending, cgroup, false).await,
                None => {
                    let why = "exited (exit code unknown: adopted after an agent restart)";
                    state.events.push(event(TaskEventKind::Terminated, why, None));
                    state.state = TaskRunState::Dead;
                    state.finished_at = Some(crate::runner::now());
                    state
                }
            }
        });
        return Some((initial, Some(handle)));
    }
    if !dirs.dir.join(PID_FILE).exists() {
        return None;
    }
    // Its process ended while no agent watched it: report how, never run it a second time.
    let _ = std::fs::remove_file(dirs.dir.join(PID_FILE));
    let state = running(vec![event(TaskEventKind::Adopted, "its process ended while the agent was away", None)]);
    let state = match Ending::read(&dirs.exit_file()) {
        Some(ending) => ended(state, &ending, cgroup, false).await,
        None => {
            let mut state = dead(state.events, false);
            state.events.push(event(
                TaskEventKind::Terminated,
                "exited while the agent was away (exit code unknown)",
                None,
            ));
            state
        }
    };
    Some((state, None))
}

/// What starting an exec (`isolated`) or raw_exec task takes: the launcher's spec, the
/// task's cgroup and limits (exec), its environment and user. Refused as (event kind, why).
struct Launch {
    spec: Spec,
    limited: Option<(TaskCgroup, Limits)>,
    env: std::collections::BTreeMap<String, String>,
    user: Option<TaskUser>,
    launcher: std::path::PathBuf,
}

fn prepare(settings: &Settings, run: TaskRun<'_>, isolated: bool) -> Result<Launch, (TaskEventKind, String)> {
    let (TaskDriver::Exec(config) | TaskDriver::RawExec(config)) = &run.task.driver else {
        return Err((TaskEventKind::DriverFailure, format!("not an exec task: {}", run.task.driver.name())));
    };
    let (owner, task) = (run.owner, run.task);
    let dirs = task_dir(run);
    let isolation = settings.isolation.clone().filter(|_| isolated);
    let cgroup = cgroup_of(settings, run, isolated);
    if isolated && isolation.is_none() {
        let why = settings.exec_unavailable.clone().unwrap_or_default();
        return Err((TaskEventKind::DriverFailure, format!("exec is not available on this node: {why}")));
    }
    if !isolated && !settings.raw_exec {
        return Err((
            TaskEventKind::DriverFailure,
            "raw_exec is disabled on this node (the agent needs --enable-raw-exec)".into(),
        ));
    }
    let user = settings.task_user(task.user.as_deref(), isolated).map_err(|why| (TaskEventKind::SetupFailure, why))?;
    // The group's own ports: the task listens on the host port itself.
    let ports =
        owner.group_ports.iter().map(|(label, &port)| (label.clone(), TaskPort { host: port, task: port })).collect();
    let who = owner.identity(task, &ports);
    let runtime = task_env::runtime(&who, &dirs);
    let env = task_env::environment(&task.env, &runtime, &owner.node);
    let command = task_env::interpolate(&config.command, &runtime, &owner.node);
    let args: Vec<String> = config.args.iter().map(|a| task_env::interpolate(a, &runtime, &owner.node)).collect();
    let Some(launcher) = settings.launcher.clone() else {
        return Err((
            TaskEventKind::DriverFailure,
            "the task launcher (this helios-client binary) cannot be found".into(),
        ));
    };
    // exec: the launcher joins the task's cgroup and isolates it; raw_exec: it only starts the
    // program, as the agent's user unless the task names one, and records how it ended.
    let (limited, cgroups, default_user) = match (&isolation, &cgroup) {
        (Some(isolation), Some(cgroup)) => {
            let limits = Limits {
                memory_mb: task.resources.memory_mb,
                cpu_shares: task.resources.cpu_mhz,
                cpu_quota_us: config.cpu_hard_limit.then(|| {
                    Limits::quota_for(task.resources.cpu_mhz, settings.cpu.total_mhz, settings.cpu.cores as usize)
                }),
                pids_max: isolation.pids_max,
            };
            (Some((cgroup.clone(), limits)), cgroup.procs_files(), (0, 0))
        }
        (Some(_), None) => {
            return Err((TaskEventKind::DriverFailure, "cannot find the agent's own cgroup".to_string()))
        }
        (None, _) => (None, Vec::new(), (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())),
    };
    let spec = Spec {
        raw: limited.is_none(),
        cgroups,
        uid: user.as_ref().map_or(default_user.0, |u| u.uid),
        gid: user.as_ref().map_or(default_user.1, |u| u.gid),
        data_dir: settings.data_dir.clone(),
        alloc_dir: dirs.alloc.clone(),
        cwd: dirs.local(),
        task_dir: dirs.dir.clone(),
        exit_file: dirs.exit_file(),
        env_file: dirs.env_file(),
        enter: None,
        command: std::iter::once(command).chain(args).collect(),
    };
    Ok(Launch { spec, limited, env, user, launcher })
}

/// Starts an exec (`isolated`) or raw_exec task.
pub(crate) async fn start(settings: &Settings, run: TaskRun<'_>, isolated: bool) -> Started {
    let refused = |kind: TaskEventKind, why: String| (dead(vec![event(kind, why, None)], true), None);
    let dirs = task_dir(run);
    let kill_timeout = kill_timeout(run);
    let cgroup = cgroup_of(settings, run, isolated);
    let Launch { spec, limited, env, user, launcher } = match prepare(settings, run, isolated) {
        Ok(launch) => launch,
        Err((kind, why)) => return refused(kind, why),
    };
    // Directories, log files, the cgroup and the process: file system work that waits on the
    // kernel (creating and joining cgroups takes tens of milliseconds on a busy node), kept off
    // the runtime's threads, which the agent's other tasks and its heartbeats share.
    let setup = {
        let (dirs, user) = (dirs.clone(), user.clone());
        tokio::task::spawn_blocking(move || {
            dirs.build(user.as_ref().map(|u| (u.uid, u.gid))).map_err(|e| {
                (
                    TaskEventKind::SetupFailure,
                    format!("cannot create the task's directories in {}: {e}", dirs.dir.display()),
                )
            })?;
            // Straight into the log files, not through the agent: the task must survive the agent.
            let logs = crate::logs::open_for_task(&dirs.dir, "stdout")
                .and_then(|out| Ok((out, crate::logs::open_for_task(&dirs.dir, "stderr")?)))
                .map_err(|e| (TaskEventKind::SetupFailure, format!("cannot open log files: {e}")))?;
            launch(&launcher, &spec, limited.as_ref(), &env, logs).map_err(|why| (TaskEventKind::DriverFailure, why))
        })
        .await
        .unwrap_or_else(|e| Err((TaskEventKind::DriverFailure, format!("the task's setup failed: {e}"))))
    };
    let started = match setup {
        Ok((child, report)) => launched(child, &report).await,
        Err((kind, why)) => {
            remove_cgroup(cgroup).await;
            return refused(kind, why);
        }
    };
    let child = match started {
        Ok(child) => child,
        Err(why) => {
            remove_cgroup(cgroup).await;
            return refused(TaskEventKind::DriverFailure, why);
        }
    };
    let pid = child.id().unwrap_or(0);
    record_pid(&dirs.dir, pid);
    let as_user = user.as_ref().map_or(String::new(), |u: &TaskUser| format!(" as {}", u.name));
    let mut state = running(vec![event(TaskEventKind::Started, format!("process {pid}{as_user}"), None)]);
    let initial = state.clone();
    let stop = run.stop.clone();
    let handle = tokio::spawn(async move {
        let (status, stopped) = supervise(child, pid, &dirs.dir, kill_timeout, stop, &mut state).await;
        // The launcher recorded how the task ended (its own status is the launcher's).
        let ending = Ending::read(&dirs.exit_file()).unwrap_or_else(|| match status {
            Ok(_) => Ending::Signaled(9),
            Err(e) => Ending::NotStarted(format!("lost track of the process: {e}")),
        });
        ended(state, &ending, cgroup, stopped).await
    });
    (initial, Some(handle))
}

/// Kills stragglers (there should be none: the namespace ended with its init) and removes the
/// cgroup, before the task can be started again (a restart reuses its name).
async fn remove_cgroup(cgroup: Option<TaskCgroup>) {
    if let Some(cgroup) = cgroup {
        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    }
}

/// The task's final state from how it ended; its cgroup (exec) is removed.
async fn ended(mut state: TaskState, ending: &Ending, cgroup: Option<TaskCgroup>, stopped: bool) -> TaskState {
    let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    remove_cgroup(cgroup).await;
    let code = match ending {
        Ending::Exited(code) => Some(*code),
        _ => None,
    };
    if oom {
        state.events.push(event(TaskEventKind::OomKilled, "the task exceeded its memory limit", code));
    }
    let (kind, message) = match ending {
        Ending::Exited(code) => (TaskEventKind::Terminated, format!("exit code {code}")),
        Ending::Signaled(signal) => (TaskEventKind::Terminated, format!("killed by signal {signal}")),
        Ending::NotStarted(why) => (TaskEventKind::DriverFailure, why.clone()),
    };
    state.events.push(event(kind, message, code));
    state.state = TaskRunState::Dead;
    state.finished_at = Some(crate::runner::now());
    state.failed = !stopped && code != Some(0);
    state
}

/// Creates the task's cgroup (exec) and runs the launcher; returns it and its first report (a blocking
/// wait: it is read until the launcher says whether the task started).
fn launch(
    launcher: &std::path::Path,
    spec: &Spec,
    limited: Option<&(TaskCgroup, Limits)>,
    env: &std::collections::BTreeMap<String, String>,
    logs: (std::fs::File, std::fs::File),
) -> Result<(tokio::process::Child, String), String> {
    if let Some((cgroup, limits)) = limited {
        cgroup.create(limits).map_err(|e| format!("cannot create the task's cgroup: {e}"))?;
    }
    let _ = std::fs::remove_file(&spec.exit_file);
    crate::sandbox::write_env_file(&spec.env_file, env)
        .map_err(|e| format!("cannot write the task's environment: {e}"))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    // No environment, and no process group: the launcher makes its own session (`sandbox`).
    let child = tokio::process::Command::new(launcher)
        .args(spec.to_args())
        .env_clear()
        .current_dir("/")
        .stdin(writer)
        .stdout(logs.0)
        .stderr(logs.1)
        .spawn()
        .map_err(|e| format!("cannot run the task launcher {}: {e}", launcher.display()))?;
    use std::io::BufRead;
    let mut line = String::new();
    let _ = std::io::BufReader::new(reader).read_line(&mut line);
    Ok((child, line))
}

/// The launched task's process, if its launcher reported it started; else why not.
async fn launched(mut child: tokio::process::Child, report: &str) -> Result<tokio::process::Child, String> {
    if report.trim_end() == "started" {
        return Ok(child);
    }
    let _ = child.wait().await;
    Err(match Ending::parse(report) {
        Some(Ending::NotStarted(why)) => why,
        _ => format!("the task launcher failed ({:?}); see the task's stderr", report.trim_end()),
    })
}

/// Runs `command` as the running exec (`isolated`) or raw_exec task runs (its user, environment
/// and working directory; for exec also its cgroups and its view of the files), for a script
/// check: the exit code and the first bytes of its output, or why it could not run. Killed
/// after `timeout`.
pub(crate) async fn run_in_task(
    settings: &Settings,
    run: TaskRun<'_>,
    isolated: bool,
    command: &[String],
    timeout: Duration,
) -> Result<(i32, String), String> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Launch { mut spec, launcher, .. } = prepare(settings, run, isolated).map_err(|(_, why)| why)?;
    if isolated {
        // Inside the running task: its init is the launcher's child.
        let dirs = task_dir(run);
        let launched = live_pid(&dirs.dir).ok_or("the task is not running")?;
        let children =
            std::fs::read_to_string(format!("/proc/{launched}/task/{launched}/children")).unwrap_or_default();
        let init = children.split_whitespace().next().and_then(|p| p.parse().ok()).ok_or("the task is not running")?;
        spec.enter = Some(init);
    }
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    spec.exit_file = spec.task_dir.join(format!("check-{n}.exit"));
    spec.command = command.to_vec();
    // The launcher reports "started" on its stdin (see `launch`): kept open until it is done.
    let (_report, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut child = tokio::process::Command::new(&launcher)
        .args(spec.to_args())
        .env_clear()
        .current_dir("/")
        .stdin(writer)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the task launcher {}: {e}", launcher.display()))?;
    // The launcher leads the command's process group: killed whole on a timeout, or when the
    // check is dropped (its allocation ended).
    let mut group = KillGroupOnDrop(child.id().and_then(|pid| i32::try_from(pid).ok()));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(timeout, async {
        // Both at once, to their end (what is past the first bytes is read and dropped), so a
        // chatty command never blocks on a full pipe.
        let (out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
        let _ = child.wait().await;
        [out, err].concat()
    })
    .await;
    let ending = Ending::read(&spec.exit_file);
    let _ = std::fs::remove_file(&spec.exit_file);
    let output = match finished {
        Ok(output) => {
            // Ended (and reaped): its group id may be reused now.
            group.0 = None;
            String::from_utf8_lossy(&output).into_owned()
        }
        Err(_) => {
            drop(group);
            return Err(format!("timed out after {timeout:?}"));
        }
    };
    match ending {
        Some(Ending::Exited(code)) => Ok((code, output)),
        Some(Ending::Signaled(signal)) => Ok((128 + signal, output)),
        Some(Ending::NotStarted(why)) => Err(why),
        None => Err(format!("the launcher did not say how the command ended: {}", output.trim())),
    }
}

/// Kills a process group (SIGKILL) when dropped.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A pipe read to its end, keeping the first 4 KiB.
async fn read_capped(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
    let Some(mut pipe) = pipe else { return kept };
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = 4096usize.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}
