//! The raw_exec driver: the task's program run directly by the agent, with no isolation (the
//! agent's namespaces and cgroups; its user unless the task names one). Offered only by agents
//! started with `--enable-raw-exec`, as in Nomad.

use std::collections::BTreeMap;

use crate::drivers::TaskUser;
use crate::task_dir::TaskDir;

/// Starts the program in its own process group, with only `env`, writing to the task's logs.
pub fn spawn(
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    user: Option<&TaskUser>,
    dirs: &TaskDir,
    logs: (std::fs::File, std::fs::File),
) -> Result<tokio::process::Child, String> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(dirs.local())
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(logs.0)
        .stderr(logs.1);
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.spawn().map_err(|e| format!("cannot start {command:?}: {e}"))
}
