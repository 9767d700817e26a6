//! Resource limits for exec tasks, with cgroups v1 or v2 (whichever the machine mounts at
//! `/sys/fs/cgroup`): a memory hard limit (swap included), CPU shares and optionally a CFS
//! quota, and a pids limit. Each task gets its own cgroup, created here before it starts and
//! joined by the launcher (`sandbox`) before the task's program runs, so nothing the task forks
//! escapes it.
//!
//! v1: one directory per controller, under the agent's own cgroup (so limits on the agent, as a
//! service manager sets them, hold its tasks too): `<mount>/<controller><own>/helios/<name>`.
//! v2: `/sys/fs/cgroup/helios.slice/<name>` (the agent's own cgroup holds processes, and v2
//! lets only cgroups without processes hand controllers to children).

use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const V2_SLICE: &str = "helios.slice";
/// CFS period for a hard CPU limit (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Which cgroups this machine offers for tasks, if it offers what exec needs.
pub fn detect() -> Option<Version> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        return V1_CONTROLLERS.iter().all(|c| has(c)).then_some(Version::V2);
    }
    V1_CONTROLLERS.iter().all(|c| root.join(c).join("cgroup.procs").exists()).then_some(Version::V1)
}

/// What one task may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u32,
    /// Relative weight: the task's MHz, as Nomad sets shares.
    pub cpu_shares: u32,
    /// The CPU time the task may use per period, in µs, when hard-limited.
    pub cpu_quota_us: Option<u64>,
    pub pids_max: u32,
}

impl Limits {
    /// `cpu_mhz` of a node with `node_mhz` over `cores` cores, as a CFS quota: the task's share of
    /// the node's MHz, of all its cores' time.
    pub fn quota_for(cpu_mhz: u32, node_mhz: u32, cores: usize) -> u64 {
        let cores = u64::try_from(cores.max(1)).unwrap_or(1);
        let quota = CPU_PERIOD_US * cores * u64::from(cpu_mhz) / u64::from(node_mhz.max(1));
        // The kernel refuses quotas under 1 ms.
        quota.max(1000)
    }
}

/// One task's cgroup (its directories: one per v1 controller, or one in v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCgroup {
    version: Version,
    /// Where the hierarchy is mounted (`/sys/fs/cgroup`; elsewhere in tests).
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl TaskCgroup {
    /// Where task `name`'s cgroup lives (nothing is created).
    pub fn locate(version: Version, name: &str) -> io::Result<TaskCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        Ok(TaskCgroup::under(Path::new(ROOT), version, name, &own))
    }

    /// Where task `name`'s cgroup lives in a hierarchy mounted at `root`, for an agent whose
    /// `/proc/self/cgroup` reads `own`.
    fn under(root: &Path, version: Version, name: &str, own: &str) -> TaskCgroup {
        let dirs = match version {
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|controller| {
                    let mine = own_v1_path(own, controller).unwrap_or("/");
                    root.join(controller).join(mine.trim_start_matches('/')).join("helios").join(name)
                })
                .collect(),
            Version::V2 => vec![root.join(V2_SLICE).join(name)],
        };
        TaskCgroup { version, root: root.to_path_buf(), dirs }
    }

    /// Creates the cgroup with `limits`. A leftover of the same name (an agent died before
    /// removing it) is removed first: its counters (OOM kills) belong to an earlier run.
    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        self.remove();
        if self.version == Version::V2 {
            // Hand the controllers down to the slice and from it to tasks.
            let wanted = "+memory +cpu +pids";
            write(&self.root.join("cgroup.subtree_control"), wanted)?;
            std::fs::create_dir_all(self.root.join(V2_SLICE))?;
            write(&self.root.join(V2_SLICE).join("cgroup.subtree_control"), wanted)?;
        }
        for dir in &self.dirs {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = u64::from(limits.memory_mb) * 1024 * 1024;
        match self.version {
            Version::V1 => {
                let [memory, cpu, pids] = [&self.dirs[0], &self.dirs[1], &self.dirs[2]];
                write(&memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // Memory plus swap at the same limit: swapping out does not escape it.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
                write(&cpu.join("cpu.shares"), &limits.cpu_shares.max(2).to_string())?;
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = limits.cpu_quota_us.map_or("-1".to_string(), |q| q.to_string());
                write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
                write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
            }
            Version::V2 => {
                let dir = &self.dirs[0];
                write(&dir.join("memory.max"), &bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("cpu.weight"), &v2_weight(limits.cpu_shares).to_string())?;
                let max = limits.cpu_quota_us.map_or("max".to_string(), |q| q.to_string());
                write(&dir.join("cpu.max"), &format!("{max} {CPU_PERIOD_US}"))?;
                write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            }
        }
        Ok(())
    }

    /// The files a process writes `0` to in order to join the cgroup (what the launcher does).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the kernel's OOM killer killed a process of the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = match self.version {
            Version::V1 => ("memory.oom_control", &self.dirs[0]),
            Version::V2 => ("memory.events", &self.dirs[0]),
        };
        std::fs::read_to_string(dir.join(file)).map_or(0, |text| counter(&text, "oom_kill"))
    }

    /// Kills whatever still runs in the cgroup and removes it.
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a task's cgroup");
                }
            }
        }
    }
}

/// The agent's own path in v1 `controller`'s hierarchy, from /proc/self/cgroup
/// (`4:memory:/some/path`; `2:cpu,cpuacct:/path` when controllers share a hierarchy).
fn own_v1_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })
}

/// v1 shares (2..262144, default 1024) as a v2 weight (1..10000, default 100), as runc maps them.
fn v2_weight(shares: u32) -> u64 {
    let shares = u64::from(shares.clamp(2, 262_144));
    1 + ((shares - 2) * 9999) / 262_142
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 3`).
fn counter(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_v1_path_is_found_per_controller() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/svc\n0::/\n";
        assert_eq!(own_v1_path(text, "memory"), Some("/process_api/abc"));
        assert_eq!(own_v1_path(text, "cpu"), Some("/svc"));
        assert_eq!(own_v1_path(text, "pids"), None);
    }

    #[test]
    fn counters_and_weights_read_as_the_kernel_writes_them() {
        assert_eq!(counter("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), 3);
        assert_eq!(counter("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", "oom_kill"), 1);
        assert_eq!(counter("", "oom_kill"), 0);
        assert_eq!((v2_weight(2), v2_weight(1024), v2_weight(262_144)), (1, 39, 10000));
    }

    /// The files a kernel would offer in a new cgroup, so that `create` finds what it checks for.
    fn fake_kernel_files(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for file in files {
            std::fs::write(dir.join(file), "").unwrap();
        }
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const LIMITS: Limits = Limits { memory_mb: 64, cpu_shares: 500, cpu_quota_us: Some(25_000), pids_max: 100 };

    // This machine mounts v1, so v2 is checked against a directory standing in for the mount:
    // which files get which values (what the kernel then does with them is not).
    #[test]
    fn v2_limits_are_written_as_v2_names_them() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = TaskCgroup::under(root.path(), Version::V2, "a1.web", "0::/\n");
        let dir = root.path().join("helios.slice/a1.web");
        assert_eq!(cgroup.procs_files(), [dir.join("cgroup.procs")]);
        fake_kernel_files(&dir, &["memory.swap.max"]);
        cgroup.create(&LIMITS).unwrap();
        assert_eq!(read(root.path().join("cgroup.subtree_control")), "+memory +cpu +pids");
        assert_eq!(read(root.path().join("helios.slice/cgroup.subtree_control")), "+memory +cpu +pids");
        assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(dir.join("memory.swap.max")), "0", "no swap beyond the limit");
        assert_eq!(read(dir.join("cpu.weight")), v2_weight(500).to_string());
        assert_eq!(read(dir.join("cpu.max")), "25000 100000");
        assert_eq!(read(dir.join("pids.max")), "100");
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(cgroup.oom_kills(), 2);
    }

    #[test]
    fn v1_limits_go_under_the_agents_own_cgroup_per_controller() {
        let root = tempfile::tempdir().unwrap();
        let own = "4:memory:/svc/agent\n3:cpu,cpuacct:/svc\n2:pids:/\n";
        let cgroup = TaskCgroup::under(root.path(), Version::V1, "a1.web", own);
        let [memory, cpu, pids] =
            ["memory/svc/agent", "cpu/svc", "pids"].map(|p| root.path().join(p).join("helios/a1.web"));
        assert_eq!(cgroup.procs_files(), [&memory, &cpu, &pids].map(|d| d.join("cgroup.procs")));
        fake_kernel_files(&memory, &["memory.memsw.limit_in_bytes"]);
        cgroup.create(&Limits { cpu_quota_us: None, ..LIMITS }).unwrap();
        assert_eq!(read(memory.join("memory.limit_in_bytes")), (64u64 << 20).to_string());
        assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), (64u64 << 20).to_string());
        assert_eq!(read(cpu.join("cpu.shares")), "500");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1", "no hard limit asked");
        assert_eq!(read(pids.join("pids.max")), "100");
    }

    #[test]
    fn a_hard_cpu_limit_is_the_tasks_share_of_all_cores() {
        // 1,000 of 4,000 MHz on 2 cores: a quarter of 2 cores' time, half a core.
        assert_eq!(Limits::quota_for(1000, 4000, 2), 50_000);
        assert_eq!(Limits::quota_for(1, 100_000, 1), 1000, "never under the kernel's minimum");
    }
}
