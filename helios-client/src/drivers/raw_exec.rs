//! The raw_exec driver: the task's program run with no isolation (the agent's namespaces and
//! cgroups; its user unless the task names one), through the launcher only so that how it ended
//! is recorded (`sandbox`, `--raw`). Offered only by agents started with `--enable-raw-exec`, as
//! in Nomad.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::drivers::{exec, Driver, Fingerprint, OnEvent, Settings, Started, TaskRun};

/// Shares exec's flow (`exec::start`), its launcher in raw mode.
pub(crate) struct RawExec(pub Arc<Settings>);

impl Driver for RawExec {
    fn name(&self) -> &'static str {
        "raw_exec"
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        let mut fingerprint = Fingerprint::default();
        // Its tasks start through the launcher (this binary), which must be there.
        if self.0.raw_exec && self.0.launcher.is_some() {
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

    fn run_in_task<'a>(
        &'a self,
        run: TaskRun<'a>,
        command: &'a [String],
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<(i32, String), String>> {
        Box::pin(exec::run_in_task(&self.0, run, false, command, timeout))
    }
}
