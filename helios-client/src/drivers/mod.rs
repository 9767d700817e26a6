//! How this node runs a task's program: `exec` (isolated), `raw_exec` (not isolated, only when
//! the agent allows it) and `docker`, each behind [`Driver`], so a new driver is one file here
//! and a line in [`Drivers::new`]. What the process drivers can offer is decided once, at start
//! ([`Settings::detect`]); docker's engine may come and go. The agent fingerprints them all, so
//! the scheduler places tasks only where their driver works.

pub(crate) mod docker;
pub(crate) mod docker_exec;
pub(crate) mod docker_logs;
pub(crate) mod exec;
pub(crate) mod process;
pub(crate) mod raw_exec;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use helios_api::pb;
use helios_core::{DockerPrivilege, Task, TaskEvent, TaskState};
use tokio::sync::watch;

use crate::cgroups;
use crate::runner::{Owner, TaskHandle};

/// A task a driver started or recovered: its state now and, while it runs, the handle that
/// resolves to its final state.
pub(crate) type Started = (TaskState, Option<TaskHandle>);

/// Called with each event that happens before the task starts (a long image pull).
pub(crate) type OnEvent = dyn Fn(TaskEvent) + Send + Sync;

/// One task as its driver is given it.
#[derive(Clone, Copy)]
pub(crate) struct TaskRun<'a> {
    pub owner: &'a Owner,
    pub task: &'a Task,
    /// The task's own directory in its allocation's.
    pub dir: &'a Path,
    /// The servers' stop order for the allocation (Nomad's StopTask): on it the driver signals
    /// the task, kills it after its kill timeout, and resolves the task's handle.
    pub stop: &'a watch::Receiver<bool>,
}

/// What a driver tells the scheduler about this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint {
    /// Whether tasks of this driver can run here now.
    pub offered: bool,
    /// Node attributes that say how (`driver.<name>`, versions, what docker tasks may ask for).
    pub attributes: BTreeMap<String, String>,
}

/// Every driver's fingerprint, with its name.
pub(crate) type Fingerprints = Vec<(&'static str, Fingerprint)>;

/// A task driver, after Nomad's driver plugin API: `fingerprint`, `recover` (RecoverTask),
/// `start` (StartTask); waiting is the handle a started task comes with (WaitTask), stopping
/// is the allocation's stop order (`TaskRun::stop`, StopTask).
pub(crate) trait Driver: Send + Sync {
    /// The name job files give it.
    fn name(&self) -> &'static str;

    /// Whether this node offers the driver, checked at start and then now and again.
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint>;

    /// A task an earlier agent left on the node: followed if it still runs, reported if it
    /// ended while no agent watched; never started a second time. None when there is none.
    /// Asked before every start: a run that ended under this agent leaves nothing behind, and
    /// a check that failed (an engine that did not answer) is made again on the restart.
    fn recover<'a>(&'a self, run: TaskRun<'a>) -> BoxFuture<'a, Option<Started>>;

    /// Starts the task; a failure to do so is a dead, failed state with the driver's event.
    fn start<'a>(&'a self, run: TaskRun<'a>, on_event: &'a OnEvent) -> BoxFuture<'a, Started>;

    /// Runs `command` in a running task's environment (Nomad's ExecTask, for script checks):
    /// its exit code and the first bytes of its output, or why it could not run. Killed after
    /// `timeout`.
    fn run_in_task<'a>(
        &'a self,
        _run: TaskRun<'a>,
        _command: &'a [String],
        _timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<(i32, String), String>> {
        let why = format!("the {} driver cannot run commands in its tasks", self.name());
        Box::pin(std::future::ready(Err(why)))
    }

    /// Removes what this driver left for allocations not in `keep` (stopped while the agent
    /// was down). Asked once, when the agent first hears from the servers. Process tasks are
    /// found by their allocations' directories instead (`crate::adoption`).
    fn remove_orphans(&self, _node_id: &str, _keep: &HashSet<String>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Every driver this agent has, in the order the node lists them.
#[derive(Clone)]
pub(crate) struct Drivers(Vec<Arc<dyn Driver>>);

impl Drivers {
    pub fn new(settings: Arc<Settings>, engine: docker::Engine) -> Drivers {
        let all: [Arc<dyn Driver>; 3] = [
            Arc::new(exec::Exec(settings.clone())),
            Arc::new(raw_exec::RawExec(settings.clone())),
            Arc::new(docker::DockerDriver {
                engine,
                allowed: settings.docker_allowed.clone(),
                allowed_caps: settings.docker_allow_caps.clone(),
            }),
        ];
        Drivers(all.into())
    }

    /// The driver the task names; None if this agent has no such driver.
    pub fn for_task(&self, task: &Task) -> Option<Arc<dyn Driver>> {
        self.0.iter().find(|d| d.name() == task.driver.name()).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.0.iter()
    }

    /// Every driver's fingerprint, with its name.
    pub async fn fingerprint(&self) -> Fingerprints {
        let mut all = Vec::new();
        for driver in &self.0 {
            all.push((driver.name(), driver.fingerprint().await));
        }
        all
    }
}

/// Writes `fingerprints` into the node the agent registers: the drivers offered, and every
/// driver's attributes.
pub(crate) fn offer(node: &mut pb::Node, fingerprints: &Fingerprints) {
    node.drivers = fingerprints.iter().filter(|(_, f)| f.offered).map(|(name, _)| name.to_string()).collect();
    for (_, fingerprint) in fingerprints {
        node.attributes.extend(fingerprint.attributes.clone());
    }
}

/// Tasks' processes at most (threads count), when the agent is not told otherwise.
pub const DEFAULT_PIDS_MAX: u32 = 2048;

/// What the agent's flags and its machine allow.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How exec isolates tasks; None when it cannot here (not root, no cgroups, no launcher).
    pub isolation: Option<Isolation>,
    /// Why exec is not offered, when it is not.
    pub exec_unavailable: Option<String>,
    /// `--enable-raw-exec`.
    pub raw_exec: bool,
    /// The `helios-client` binary, run as every exec and raw_exec task's launcher (`sandbox`).
    pub launcher: Option<PathBuf>,
    /// `--allowed-users`: the users tasks may name; None: any but root (for exec).
    pub allowed_users: Option<Vec<String>>,
    /// What docker tasks may ask for beyond their container (`--docker-allow-*`).
    pub docker_allowed: Vec<DockerPrivilege>,
    /// The capabilities docker tasks may add, in `capability_name` form (`--docker-allow-caps`).
    pub docker_allow_caps: Vec<String>,
    /// The agent's data directory, absolute (what exec tasks must not see).
    pub data_dir: PathBuf,
    pub cpu: crate::drivers::docker::NodeCpu,
}

#[derive(Debug, Clone)]
pub struct Isolation {
    pub cgroups: cgroups::Version,
    pub pids_max: u32,
}

/// The agent's choices about drivers, from its flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub enable_raw_exec: bool,
    pub allowed_users: Option<Vec<String>>,
    /// The launcher binary; None: this program (`helios-client`).
    pub launcher: Option<PathBuf>,
    pub pids_max: Option<u32>,
    /// `--docker-allow-volumes`, `--docker-allow-host-network`, `--docker-allow-privileged`,
    /// `--docker-allow-devices`.
    pub docker_allowed: Vec<DockerPrivilege>,
    /// `--docker-allow-caps`; None: Nomad's default (`DOCKER_DEFAULT_ALLOWED_CAPS`).
    pub docker_allow_caps: Option<Vec<String>>,
    /// `--dynamic-ports MIN-MAX`: where the scheduler picks tasks' dynamic host ports here.
    pub dynamic_ports: Option<(u16, u16)>,
}

impl Settings {
    pub fn detect(options: &Options, data_dir: &Path, cpu: crate::drivers::docker::NodeCpu) -> Settings {
        let launcher = options.launcher.clone().or_else(|| std::env::current_exe().ok()).filter(|l| l.is_file());
        let isolation = if !nix::unistd::geteuid().is_root() {
            Err("exec isolates tasks and needs the agent to run as root".to_string())
        } else if let Some(version) = cgroups::detect() {
            match launcher {
                Some(_) => Ok(Isolation { cgroups: version, pids_max: options.pids_max.unwrap_or(DEFAULT_PIDS_MAX) }),
                None => Err("the task launcher (this helios-client binary) cannot be found".to_string()),
            }
        } else {
            Err("no usable cgroups (memory, cpu and pids) under /sys/fs/cgroup".to_string())
        };
        let (isolation, exec_unavailable) = match isolation {
            Ok(isolation) => (Some(isolation), None),
            Err(why) => (None, Some(why)),
        };
        Settings {
            isolation,
            exec_unavailable,
            raw_exec: options.enable_raw_exec,
            launcher,
            allowed_users: options.allowed_users.clone(),
            docker_allowed: options.docker_allowed.clone(),
            docker_allow_caps: match &options.docker_allow_caps {
                Some(caps) => caps.iter().map(|c| helios_core::job::capability_name(c)).collect(),
                None => helios_core::job::DOCKER_DEFAULT_ALLOWED_CAPS.iter().map(|c| c.to_string()).collect(),
            },
            data_dir: data_dir.to_path_buf(),
            cpu,
        }
    }

    /// The user a task runs as, if this agent lets it: `name` or the driver's default.
    pub fn task_user(&self, name: Option<&str>, exec: bool) -> Result<Option<TaskUser>, String> {
        let name = match (name, exec) {
            (Some(name), _) => name,
            (None, true) => "nobody",
            // raw_exec without a user: the agent's own.
            (None, false) => return Ok(None),
        };
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
            .ok_or_else(|| format!("user {name:?} does not exist on this node"))?;
        // Root's group is as good as root (it owns system files); unless listed, neither.
        let rootish = user.uid.is_root() || user.gid.as_raw() == 0;
        let allowed = match &self.allowed_users {
            Some(list) => list.iter().any(|u| u == name),
            None => !exec || !rootish,
        };
        if !allowed {
            let why = match &self.allowed_users {
                Some(list) => format!("user {name:?} is not in this agent's --allowed-users ({})", list.join(",")),
                None => {
                    format!("exec tasks may not run as {name:?} (root or root's group) unless --allowed-users names it")
                }
            };
            return Err(why);
        }
        Ok(Some(TaskUser { name: name.to_string(), uid: user.uid.as_raw(), gid: user.gid.as_raw() }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allowed: Option<&[&str]>) -> Settings {
        Settings {
            isolation: None,
            exec_unavailable: None,
            raw_exec: true,
            launcher: None,
            allowed_users: allowed.map(|a| a.iter().map(|u| u.to_string()).collect()),
            docker_allowed: Vec::new(),
            docker_allow_caps: Vec::new(),
            data_dir: "/var/lib/helios".into(),
            cpu: crate::drivers::docker::NodeCpu { total_mhz: 4000, cores: 2 },
        }
    }

    #[test]
    fn exec_runs_as_nobody_unless_told_and_never_as_root_unless_allowed() {
        let open = settings(None);
        assert_eq!(open.task_user(None, true).expect("nobody").map(|u| u.uid), Some(65534));
        assert_eq!(open.task_user(None, false).expect("the agent's"), None);
        let root = open.task_user(Some("root"), true).expect_err("root refused");
        assert!(root.contains("--allowed-users"), "{root}");
        assert_eq!(open.task_user(Some("root"), false).expect("raw_exec may").map(|u| u.uid), Some(0));
        let missing = open.task_user(Some("no-such-user-here"), true).expect_err("unknown");
        assert!(missing.contains("does not exist"), "{missing}");

        let listed = settings(Some(&["root"]));
        assert_eq!(listed.task_user(Some("root"), true).expect("listed").map(|u| u.uid), Some(0));
        let nobody = listed.task_user(None, true).expect_err("nobody is not listed");
        assert!(nobody.contains("not in this agent's --allowed-users (root)"), "{nobody}");
    }
}
