//! The raw_exec driver: the task's program run directly by the agent, with no isolation (the
//! agent's namespaces and cgroups; its user unless the task names one). Offered only by agents
//! started with `--enable-raw-exec`, as in Nomad.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::drivers::{exec, Driver, Fingerprint, OnEvent, Settings, Started, TaskRun, TaskUser};
use crate::task_dir::TaskDir;

/// Shares exec's flow (`exec::start`) without the launcher.
pub(crate) struct RawExec(pub Arc<Settings>);

impl Driver for RawExec {
    fn name(&self) -> &'static str {
        "raw_exec"
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        let mut fingerprint = Fingerprint::default();
        if self.0.raw_exec {
            fingerprint.offered = true;
            fingerprint.attributes.insert("driver.raw_exec".into(), "1".into());
        }
        Box::pin(std::future::ready(fingerprint))
    }

    fn recover<'a>(&'a self, run: TaskRun<'a>) -> BoxFuture<'a, Option<Started>> {
        Box::pin(exec::recover(&self.0, run, false))
    }

    fn start<'a>(&'a self, run: TaskRun<'a>, _: &'a OnEvent) -> BoxFuture<'a, Started> {
        Box::pin(exec::start(&self.0, run, false))
    }
}

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
