//! What exec and raw_exec share once a task's process runs: its pid file (how a restarted agent
//! finds it), log rotation while it runs, and stopping it: SIGTERM to its process group, SIGKILL
//! after the kill timeout.

use std::path::Path;
use std::time::Duration;

use helios_core::{TaskEventKind, TaskState};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::runner::{event, stop_requested};

/// Where the agent records the process it started for a task (`<pid> <start time>`).
pub const PID_FILE: &str = "pid";

fn group(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

pub fn record_pid(dir: &Path, pid: u32) {
    let _ = std::fs::write(dir.join(PID_FILE), format!("{pid} {}", start_time(pid).unwrap_or(0)));
}

/// Waits for the task's process, rotating its logs, and stops it when the servers ask. Returns
/// its exit status and whether it was stopped by request.
pub async fn supervise(
    mut child: tokio::process::Child,
    pid: u32,
    dir: &Path,
    kill_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    state: &mut TaskState,
) -> (std::io::Result<std::process::ExitStatus>, bool) {
    let rotation = async {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Err(e) = crate::logs::rotate_if_large(dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "log rotation failed");
            }
        }
    };
    tokio::pin!(rotation);
    let (status, stopped) = tokio::select! {
        status = child.wait() => (status, false),
        () = &mut rotation => unreachable!("rotation loops forever"),
        () = stop_requested(&mut stop) => (terminate(pid, kill_timeout, &mut child, state).await, true),
    };
    // Leftover children of the task (same process group) must not outlive it.
    let _ = killpg(group(pid), Signal::SIGKILL);
    // The pid file goes once the end is reported; if the agent that started the task is gone
    // (an in-process restart), it stays, for the next agent to find the task ended.
    if stop.has_changed().is_ok() {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
    }
    (status, stopped)
}

/// SIGTERM to the task's process group, then SIGKILL after `kill_timeout`.
async fn terminate(
    pid: u32,
    kill_timeout: Duration,
    child: &mut tokio::process::Child,
    state: &mut TaskState,
) -> std::io::Result<std::process::ExitStatus> {
    let _ = killpg(group(pid), Signal::SIGTERM);
    state.events.push(event(TaskEventKind::Killing, "sent SIGTERM", None));
    match tokio::time::timeout(kill_timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = killpg(group(pid), Signal::SIGKILL);
            state.events.push(event(
                TaskEventKind::Killing,
                format!("still running after {kill_timeout:?}: sent SIGKILL"),
                None,
            ));
            child.wait().await
        }
    }
}

/// Watches a process this agent did not start (adopted after an agent restart) until it ends,
/// stopping it on request. Its exit status cannot be had: the caller says what it knows.
pub async fn watch_adopted(pid: u32, kill_timeout: Duration, mut stop: watch::Receiver<bool>, state: &mut TaskState) {
    // The same process as when adopted (its start time): a pid the kernel hands to another
    // process once the task has exited must not be taken for the task, nor signalled.
    let started = start_time(pid);
    let alive = || started.is_some() && start_time(pid) == started && !exited(pid);
    let mut stopping_since: Option<tokio::time::Instant> = None;
    while alive() {
        if stopping_since.is_none() && *stop.borrow() {
            let _ = killpg(group(pid), Signal::SIGTERM);
            state.events.push(event(TaskEventKind::Killing, "sent SIGTERM", None));
            stopping_since = Some(tokio::time::Instant::now());
        }
        if stopping_since.is_some_and(|since| since.elapsed() > kill_timeout) {
            let _ = killpg(group(pid), Signal::SIGKILL);
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await {
            // The agent is going away: keep watching at the same pace, never stopping the task.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Leftover children of the task (same process group) must not outlive it.
    let _ = killpg(group(pid), Signal::SIGKILL);
}

/// The pid in the task's pid file, if that process is still the one we started (same start
/// time, so a recycled pid is not mistaken for it). The file is the agent's: tasks cannot
/// write in the directory that holds it.
pub fn live_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(PID_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started: u64 = parts.next()?.parse().ok()?;
    (pid > 0 && start_time(pid) == Some(started)).then_some(pid)
}

/// True when the process has exited and waits to be reaped (a zombie: state `Z`).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rfind(')').is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z')))
}

/// A process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 19)
}

/// A process's process group (field 5 of /proc/<pid>/stat).
pub fn process_group(pid: u32) -> Option<u32> {
    stat_field(pid, 2).and_then(|g| u32::try_from(g).ok())
}

/// Field `n` (0: the state, field 3) after the command name of /proc/<pid>/stat.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n)?.parse().ok()
}
