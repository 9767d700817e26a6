//! How this node runs a task's program: `exec` (isolated), `raw_exec` (not isolated, only when
//! the agent allows it) and, in `crate::docker`, `docker`. What the agent can offer is decided
//! once, at start ([`Settings::detect`]), and fingerprinted, so the scheduler places tasks only
//! where their driver works.

pub(crate) mod exec;
pub(crate) mod process;
pub(crate) mod raw_exec;

use std::path::{Path, PathBuf};

use helios_core::DockerPrivilege;

use crate::cgroups;

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
    /// `--allowed-users`: the users tasks may name; None: any but root (for exec).
    pub allowed_users: Option<Vec<String>>,
    /// What docker tasks may ask for beyond their container (`--docker-allow-*`).
    pub docker_allowed: Vec<DockerPrivilege>,
    /// The agent's data directory, absolute (what exec tasks must not see).
    pub data_dir: PathBuf,
    pub cpu: crate::docker::NodeCpu,
}

#[derive(Debug, Clone)]
pub struct Isolation {
    pub cgroups: cgroups::Version,
    /// The `helios-client` binary, run as the launcher (`sandbox`).
    pub launcher: PathBuf,
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
    /// `--docker-allow-volumes`, `--docker-allow-host-network`.
    pub docker_allowed: Vec<DockerPrivilege>,
    /// `--dynamic-ports MIN-MAX`: where the scheduler picks tasks' dynamic host ports here.
    pub dynamic_ports: Option<(u16, u16)>,
}

impl Settings {
    pub fn detect(options: &Options, data_dir: &Path, cpu: crate::docker::NodeCpu) -> Settings {
        let launcher = options.launcher.clone().or_else(|| std::env::current_exe().ok());
        let isolation = if !nix::unistd::geteuid().is_root() {
            Err("exec isolates tasks and needs the agent to run as root".to_string())
        } else if let Some(version) = cgroups::detect() {
            match launcher {
                Some(launcher) if launcher.is_file() => {
                    Ok(Isolation { cgroups: version, launcher, pids_max: options.pids_max.unwrap_or(DEFAULT_PIDS_MAX) })
                }
                _ => Err("the task launcher (this helios-client binary) cannot be found".to_string()),
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
            allowed_users: options.allowed_users.clone(),
            docker_allowed: options.docker_allowed.clone(),
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
            allowed_users: allowed.map(|a| a.iter().map(|u| u.to_string()).collect()),
            docker_allowed: Vec::new(),
            data_dir: "/var/lib/helios".into(),
            cpu: crate::docker::NodeCpu { total_mhz: 4000, cores: 2 },
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
