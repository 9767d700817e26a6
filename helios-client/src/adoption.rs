//! What an agent finds on its node from before it started: which allocations' directories are
//! its own (agents sharing a data dir leave each other's alone), task processes an agent killed
//! mid-start left without a pid file, and processes of allocations the servers no longer list,
//! which are stopped. Adopting a still-running task is its driver's (`Driver::recover`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helios_core::Task;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::drivers::process::{live_pid, process_group, start_time, PID_FILE};
use crate::runner::DONE_MARKER;

/// In an allocation's directory: the node whose agent runs it. Agents with different node ids
/// may share a data dir (the README runs three on one machine from one directory); each must
/// leave the others' allocations alone. No task is called this: names cannot start with '.'.
const OWNER_FILE: &str = ".node";

/// Marks `alloc_dir` as this node's, before any of its tasks starts.
pub(crate) fn claim(alloc_dir: &Path, node_id: &str) -> std::io::Result<()> {
    if owned_by(alloc_dir, node_id) {
        return Ok(());
    }
    std::fs::create_dir_all(alloc_dir)?;
    std::fs::write(alloc_dir.join(OWNER_FILE), node_id)
}

fn owned_by(alloc_dir: &Path, node_id: &str) -> bool {
    std::fs::read_to_string(alloc_dir.join(OWNER_FILE)).is_ok_and(|owner| owner == node_id)
}

/// Writes the pid file of every task process found running under `allocs_dir` whose file does
/// not name it: an agent killed between starting a task and writing its pid file would otherwise
/// neither adopt nor stop that task, and might start a second copy or call it "stopped before
/// it started" while it runs. A task's process leads its process group and runs as the agent's
/// user: an exec task's launcher (its `--task-dir` argument says whose), a raw_exec task (the
/// parent of the `HELIOS_TASK_DIR` in its environment). A process of a task's own user is never
/// taken for one: a task could name another's directory.
pub(crate) fn repair_pid_files(allocs_dir: &Path, node_id: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    let agent_uid = nix::unistd::geteuid().as_raw();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if process_group(pid) != Some(pid) || process_uid(pid) != Some(agent_uid) {
            continue;
        }
        let Some(dir) = launcher_task_dir(pid).or_else(|| raw_task_dir(pid)) else { continue };
        let Some(alloc_dir) = dir.parent().filter(|a| a.parent() == Some(allocs_dir)) else { continue };
        let is_task = dir.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'));
        if !is_task || !owned_by(alloc_dir, node_id) || live_pid(&dir) == Some(pid) {
            continue;
        }
        if let Some(started) = start_time(pid) {
            tracing::warn!(pid, dir = %dir.display(), "a task without its pid file (its agent died starting it): recorded");
            let _ = std::fs::write(dir.join(PID_FILE), format!("{pid} {started}"));
        }
    }
}

/// The real uid of a process (`Uid:` in /proc/<pid>/status).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The task dir an exec launcher was started for (`helios-client task-launch ... --task-dir D`).
fn launcher_task_dir(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&crate::sandbox::LAUNCH.as_bytes()) {
        return None;
    }
    let at = args.iter().position(|a| *a == b"--task-dir")?;
    args.get(at + 1).map(|d| PathBuf::from(String::from_utf8_lossy(d).into_owned()))
}

/// The task dir of a raw_exec task: the parent of its `HELIOS_TASK_DIR` (its `local/`).
fn raw_task_dir(pid: u32) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let local = environ.split(|b| *b == 0).find_map(|var| var.strip_prefix(b"HELIOS_TASK_DIR="))?;
    PathBuf::from(String::from_utf8_lossy(local).into_owned()).parent().map(Path::to_path_buf)
}

/// Stops the processes, left from before this agent started, of this node's allocations that
/// the servers no longer list for it: they were marked lost while the agent was away (and
/// replaced elsewhere), so they must not keep running. SIGTERM now, SIGKILL after the default
/// kill timeout (the allocation's own is unknown: its job may be gone), each only while the
/// task's pid file still names that same process.
pub(crate) fn stop_orphaned_processes(allocs_dir: &Path, node_id: &str, keep: &HashSet<String>) {
    let orphans = orphaned_tasks(allocs_dir, node_id, keep);
    for (pid, dir) in &orphans {
        tracing::info!(pid, dir = %dir.display(), "stopping a task whose allocation is gone");
        let _ = killpg(Pid::from_raw(i32::try_from(*pid).unwrap_or(i32::MAX)), Signal::SIGTERM);
    }
    if orphans.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let timeout = Duration::from_secs(u64::from(Task::DEFAULT_KILL_TIMEOUT_SECS));
        let deadline = tokio::time::Instant::now() + timeout;
        let alive = |orphans: &[(u32, PathBuf)]| orphans.iter().any(|(pid, dir)| live_pid(dir) == Some(*pid));
        while alive(&orphans) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (pid, dir) in orphans {
            if live_pid(&dir) == Some(pid) {
                let _ = killpg(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), Signal::SIGKILL);
            }
            let _ = std::fs::write(dir.join(DONE_MARKER), b"");
        }
    });
}

/// The live task processes (pid, task dir) of this node's allocations not in `keep`.
fn orphaned_tasks(allocs_dir: &Path, node_id: &str, keep: &HashSet<String>) -> Vec<(u32, PathBuf)> {
    let Ok(allocs) = std::fs::read_dir(allocs_dir) else { return Vec::new() };
    let ours = allocs.flatten().filter(|alloc| {
        !keep.contains(alloc.file_name().to_string_lossy().as_ref()) && owned_by(&alloc.path(), node_id)
    });
    let tasks = ours.flat_map(|alloc| task_dirs(&alloc.path()));
    tasks.filter_map(|task| live_pid(&task.path()).map(|pid| (pid, task.path()))).collect()
}

/// The task directories of an allocation: its subdirectories but the shared `.alloc` (which
/// tasks write; task names cannot start with a dot).
fn task_dirs(alloc_dir: &Path) -> Vec<std::fs::DirEntry> {
    let entries = std::fs::read_dir(alloc_dir).into_iter().flatten().flatten();
    entries
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .collect()
}

/// True if any task of the allocation in `dir` has a live process or a container.
pub(crate) fn has_live_task(dir: &Path) -> bool {
    task_dirs(dir)
        .iter()
        .any(|t| live_pid(&t.path()).is_some() || t.path().join(crate::drivers::docker::CONTAINER_MARKER).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep` process leading its own process group, recorded as `<allocs>/<alloc>/t/pid`
    /// of an allocation claimed by `owner`.
    fn task_of(allocs: &Path, alloc: &str, owner: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let alloc_dir = allocs.join(alloc);
        claim(&alloc_dir, owner).unwrap();
        let child = std::process::Command::new("sleep").arg("600").process_group(0).spawn().unwrap();
        let task_dir = alloc_dir.join("t");
        std::fs::create_dir_all(&task_dir).unwrap();
        let started = start_time(child.id()).unwrap();
        std::fs::write(task_dir.join("pid"), format!("{} {started}", child.id())).unwrap();
        child
    }

    #[test]
    fn an_agent_stops_only_its_own_nodes_unlisted_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = [("alloc-a", "a"), ("alloc-listed", "a"), ("alloc-b", "b")]
            .map(|(alloc, node)| task_of(dir.path(), alloc, node));
        let orphans = orphaned_tasks(dir.path(), "a", &HashSet::from(["alloc-listed".to_string()]));
        assert_eq!(orphans, vec![(tasks[0].id(), dir.path().join("alloc-a").join("t"))]);
        for mut child in tasks {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn a_claim_is_kept_and_names_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = dir.path().join("x");
        assert!(!owned_by(&alloc, "a"));
        claim(&alloc, "a").unwrap();
        claim(&alloc, "a").unwrap();
        assert!(owned_by(&alloc, "a") && !owned_by(&alloc, "b"));
    }
}
