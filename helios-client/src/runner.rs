//! Runs the allocations the servers assign to this node, and reports their state.
//!
//! One runner per allocation starts its group's tasks with their drivers (`crate::drivers`,
//! `crate::docker`), each in its own directory (`crate::task_dir`), with stdout and stderr in
//! rotated log files, and restarts them as the group's policy says (`Supervisor`). When the servers want an allocation stopped, every task gets SIGTERM,
//! then SIGKILL after its kill timeout. A task whose process is still alive from before an agent
//! restart (its pid file names a live process) is adopted, not started again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use helios_api::pb;
use helios_core::{Job, JobType, RestartMode, RestartPolicy, Task, TaskDriver, TaskGroup};

use crate::drivers::process::{live_pid, process_group, start_time, PID_FILE};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

pub type Reports = mpsc::UnboundedSender<pb::AllocationUpdate>;

/// Task events kept per task (the oldest are dropped).
const MAX_EVENTS: usize = 50;

/// Written in a task's directory when it is done for good (no restart will follow).
pub const DONE_MARKER: &str = "done";

pub struct Runners {
    node_id: String,
    docker: crate::docker::Engine,
    drivers: Arc<crate::drivers::Settings>,
    node: Arc<crate::task_env::NodeFacts>,
    allocs_dir: PathBuf,
    reports: Reports,
    /// Stop signals of the allocations running here.
    running: HashMap<String, watch::Sender<bool>>,
    /// Allocations that finished here, until the servers stop listing them.
    finished: HashSet<String>,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
    /// Whether containers left from allocations that went away were looked for (once per start).
    orphans_removed: bool,
    /// The allocation runners. Dropped with the agent, which aborts them: a stopping agent must
    /// not start anything more (its tasks themselves keep running, for the next agent to adopt).
    tasks: tokio::task::JoinSet<()>,
}

pub(crate) fn now_ms() -> u64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX)
}

pub(crate) fn event(kind: &str, message: impl Into<String>, exit_code: Option<i32>) -> pb::TaskEvent {
    pb::TaskEvent { time_ms: now_ms(), kind: kind.to_string(), message: message.into(), exit_code }
}

impl Runners {
    pub fn new(
        node: crate::task_env::NodeFacts,
        docker: crate::docker::Engine,
        drivers: crate::drivers::Settings,
        reports: Reports,
    ) -> Runners {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Runners {
            node_id: node.id.clone(),
            allocs_dir: drivers.data_dir.join("allocs"),
            docker,
            drivers: Arc::new(drivers),
            node: Arc::new(node),
            reports,
            running: HashMap::new(),
            finished: HashSet::new(),
            done_tx,
            done_rx,
            orphans_removed: false,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Brings what runs here in line with what the servers assigned.
    pub fn sync(&mut self, assigned: pb::AssignedAllocations) {
        while self.tasks.try_join_next().is_some() {}
        while let Ok(id) = self.done_rx.try_recv() {
            self.running.remove(&id);
            self.finished.insert(id);
        }
        let listed: HashSet<String> =
            assigned.allocations.iter().filter_map(|a| a.allocation.as_ref().map(|al| al.id.clone())).collect();
        self.finished.retain(|id| listed.contains(id));
        if !self.orphans_removed {
            self.orphans_removed = true;
            tokio::spawn(crate::docker::remove_orphans(
                self.docker.endpoint.clone(),
                self.node_id.clone(),
                listed.clone(),
            ));
            // Before any runner starts: whatever runs under an allocation now is from before
            // this agent started. Tasks first get their pid files back (see there), so that
            // adoption and the stops below see every one of them.
            repair_pid_files(&self.allocs_dir, &self.node_id);
            stop_orphaned_processes(&self.allocs_dir, &self.node_id, &listed);
        }
        // No longer listed (the servers marked it lost, or forgot it): it must not keep running.
        for (id, stop) in &self.running {
            if !listed.contains(id) {
                let _ = stop.send(true);
            }
        }
        for assigned in assigned.allocations {
            let (Some(alloc), job) = (assigned.allocation, assigned.job) else { continue };
            let wanted = alloc.desired_status == "run";
            if let Some(stop) = self.running.get(&alloc.id) {
                if !wanted {
                    let _ = stop.send(true);
                }
                continue;
            }
            if self.finished.contains(&alloc.id) {
                continue;
            }
            let dir = self.allocs_dir.join(&alloc.id);
            if !wanted && !has_live_task(&dir) {
                // Never started here (or already gone): it is simply done.
                self.report(&alloc.id, "complete", "stopped before it started", BTreeMap::new());
                self.finished.insert(alloc.id);
                continue;
            }
            let job = job.and_then(|j| helios_api::convert::job_from_pb(j).ok());
            let job_type = job.as_ref().map_or(JobType::Batch, |j: &Job| j.job_type);
            let mut meta = job.as_ref().map(|j| j.meta.clone()).unwrap_or_default();
            let group = job.and_then(|j| j.task_groups.into_iter().find(|g| g.name == alloc.task_group));
            let Some(group) = group else {
                self.report(&alloc.id, "failed", "its job version is unknown to the servers", BTreeMap::new());
                self.finished.insert(alloc.id);
                continue;
            };
            if let Err(e) = claim(&dir, &self.node_id) {
                tracing::warn!(alloc = %alloc.id, error = %e, "cannot mark the allocation's directory as this node's");
            }
            // Unwanted but alive (left from before an agent restart): adopt it, stopping at once.
            let (stop_tx, stop_rx) = watch::channel(!wanted);
            self.running.insert(alloc.id.clone(), stop_tx);
            let reports = self.reports.clone();
            let done = self.done_tx.clone();
            meta.extend(group.meta.clone());
            let host_ports: Vec<u16> = alloc.host_ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect();
            let owner = Owner {
                dynamic_ports: group.assigned_dynamic_ports(&host_ports),
                node_id: self.node_id.clone(),
                alloc_id: alloc.id.clone(),
                alloc_name: alloc.name,
                job_name: alloc.job_name,
                group: group.name.clone(),
                meta,
                docker: self.docker.clone(),
                drivers: self.drivers.clone(),
                node: self.node.clone(),
            };
            self.tasks.spawn(async move {
                run_allocation(owner, job_type, group, dir, stop_rx, reports).await;
                let _ = done.send(alloc.id);
            });
        }
    }

    fn report(&self, alloc_id: &str, status: &str, description: &str, task_states: BTreeMap<String, pb::TaskState>) {
        let _ = self.reports.send(pb::AllocationUpdate {
            alloc_id: alloc_id.to_string(),
            client_status: status.to_string(),
            client_description: description.to_string(),
            task_states,
        });
    }
}

/// Whose a task is (what labels its container, names it in reports and fills its runtime
/// variables), and what this node runs it with.
#[derive(Clone)]
pub(crate) struct Owner {
    pub node_id: String,
    pub alloc_id: String,
    /// `job.group[index]`.
    pub alloc_name: String,
    pub job_name: String,
    pub group: String,
    /// The job's meta with the group's over it.
    pub meta: BTreeMap<String, String>,
    /// The host ports the scheduler chose for the group's dynamic ports, by (task, port name).
    pub dynamic_ports: BTreeMap<(String, String), u16>,
    pub docker: crate::docker::Engine,
    pub drivers: Arc<crate::drivers::Settings>,
    pub node: Arc<crate::task_env::NodeFacts>,
}

impl Owner {
    pub fn identity<'a>(&'a self, task: &'a Task, ports: &'a BTreeMap<String, u16>) -> crate::task_env::Identity<'a> {
        crate::task_env::Identity {
            alloc_id: &self.alloc_id,
            alloc_name: &self.alloc_name,
            job_name: &self.job_name,
            group: &self.group,
            task: &task.name,
            cpu_mhz: task.resources.cpu_mhz,
            memory_mb: task.resources.memory_mb,
            meta: &self.meta,
            ports,
        }
    }
}

async fn run_allocation(
    owner: Owner,
    job_type: JobType,
    group: TaskGroup,
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    reports: Reports,
) {
    let report = |status: &str, description: String, states: BTreeMap<String, pb::TaskState>| {
        let _ = reports.send(pb::AllocationUpdate {
            alloc_id: owner.alloc_id.clone(),
            client_status: status.to_string(),
            client_description: description,
            task_states: states,
        });
    };
    // Each task has a supervisor (restarts per the group's policy) that sends every state
    // change here; the allocation's report combines them.
    let (progress, mut changes) = mpsc::unbounded_channel::<(String, pb::TaskState)>();
    // Aborted with this runner (see `Runners::tasks`).
    let mut supervisors = tokio::task::JoinSet::new();
    for task in group.tasks {
        let supervisor = Supervisor {
            owner: owner.clone(),
            job_type,
            policy: group.restart.clone(),
            dir: dir.join(&task.name),
            stop: stop.clone(),
            progress: progress.clone(),
        };
        supervisors.spawn(supervisor.run(task));
    }
    drop(progress);
    let mut states = BTreeMap::new();
    // Every change is reported as it happens: a task that failed and waits to restart (dead,
    // its last event "Restarting") shows its failure now, not when its restarts run out.
    while let Some((name, state)) = changes.recv().await {
        states.insert(name, state);
        let restarting =
            |s: &pb::TaskState| s.state == "dead" && s.events.last().is_some_and(|e| e.kind == "Restarting");
        let (status, description) = if states.values().any(|s| s.state == "running") {
            ("running", "tasks running")
        } else if states.values().any(restarting) {
            ("pending", "a task is waiting to restart")
        } else if states.values().any(|s| s.state == "pending") {
            ("pending", "tasks starting")
        } else {
            // Every task done for good: the final report below says how it ended. A "pending"
            // here would briefly undo a running allocation's state on the servers.
            continue;
        };
        report(status, description.to_string(), states.clone());
    }
    let stopped = *stop.borrow();
    let failed = states.values().any(|s| s.failed);
    let (status, description) = match (stopped, failed) {
        (true, _) => ("complete", "stopped by the servers".to_string()),
        (false, true) => ("failed", "a task failed".to_string()),
        (false, false) => ("complete", "all tasks exited successfully".to_string()),
    };
    report(status, description, states);
}

/// Keeps one task running as its job type and restart policy say: a batch task is restarted
/// only when it fails, a service or system task whenever it exits; at most `attempts` restarts
/// within `interval_secs`, `delay_secs` apart; then the task fails (mode `fail`), or waits out
/// the interval and starts over (mode `delay`).
struct Supervisor {
    owner: Owner,
    job_type: JobType,
    policy: RestartPolicy,
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    progress: mpsc::UnboundedSender<(String, pb::TaskState)>,
}

impl Supervisor {
    async fn run(mut self, task: Task) {
        let name = task.name.clone();
        let interval = Duration::from_secs(u64::from(self.policy.interval_secs));
        let mut history = vec![event("Received", "the agent received the allocation", None)];
        let mut restarts = 0u32;
        let mut window = (tokio::time::Instant::now(), 0u32);
        if self.dir.join(DONE_MARKER).exists() {
            // Done for good under an earlier agent (a server that lags may still list it as
            // running): it is never run again. An exec task's exit file says how it ended.
            let exit = crate::sandbox::Ending::read(&self.dir.join("exit"));
            let (code, failed) = match exit {
                Some(crate::sandbox::Ending::Exited(code)) => (Some(code), code != 0),
                Some(_) => (None, true),
                None => (None, false),
            };
            history.push(event("Terminated", "finished before the agent restarted", code));
            self.finish(name, dead(history, failed));
            return;
        }
        loop {
            // Events before the task runs (an image pull) are reported as they happen.
            let early = std::sync::Mutex::new(history.clone());
            let (progress, name_now) = (self.progress.clone(), name.clone());
            let on_event = move |e: pb::TaskEvent| {
                let mut events = early.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                events.push(e);
                let _ = progress.send((name_now.clone(), pending(events.clone(), restarts)));
            };
            let (mut state, handle) =
                start_task(&self.owner, task.clone(), self.dir.clone(), self.stop.clone(), &on_event).await;
            let with_history = |state: &mut pb::TaskState, history: &[pb::TaskEvent], restarts: u32| {
                let mut events = history.to_vec();
                events.append(&mut state.events);
                // A task restarting for days must not grow its reports without bound.
                let excess = events.len().saturating_sub(MAX_EVENTS);
                events.drain(..excess);
                state.events = events;
                state.restarts = restarts;
            };
            with_history(&mut state, &history, restarts);
            let _ = self.progress.send((name.clone(), state.clone()));
            let mut last = match handle {
                Some(handle) => {
                    let mut done =
                        handle.await.unwrap_or_else(|e| dead(vec![event("Driver Failure", e.to_string(), None)], true));
                    with_history(&mut done, &history, restarts);
                    done
                }
                None => state,
            };
            if self.stop.has_changed().is_err() {
                // The agent that ran this supervisor is gone (in-process restart): a new agent
                // adopts or restarts the task; this one must not act on it any more.
                return;
            }
            let stopped = *self.stop.borrow();
            let restart = !stopped && (self.job_type != JobType::Batch || last.failed);
            if !restart {
                self.finish(name, last);
                return;
            }
            if window.0.elapsed() > interval {
                window = (tokio::time::Instant::now(), 0);
            }
            if window.1 >= self.policy.attempts {
                if self.policy.mode == RestartMode::Fail {
                    let why = format!(
                        "{} restarts within {}s: not restarting",
                        self.policy.attempts, self.policy.interval_secs
                    );
                    last.events.push(event("Not Restarting", why, None));
                    last.failed = true;
                    self.finish(name, last);
                    return;
                }
                let rest = interval.saturating_sub(window.0.elapsed());
                last.events.push(event("Restarting", format!("attempts exhausted: waiting {rest:?}"), None));
                let _ = self.progress.send((name.clone(), last.clone()));
                if self.interrupted_by_stop(rest).await {
                    self.finish(name, last);
                    return;
                }
                window = (tokio::time::Instant::now(), 0);
            }
            window.1 += 1;
            restarts += 1;
            let delay = Duration::from_secs(u64::from(self.policy.delay_secs));
            last.events.push(event("Restarting", format!("restart {restarts} in {delay:?}"), None));
            history = last.events.clone();
            let _ = self.progress.send((name.clone(), last.clone()));
            if self.interrupted_by_stop(delay).await {
                self.finish(name, last);
                return;
            }
        }
    }

    /// The task is done for good: mark it (log followers stop at the marker, not at an exit
    /// between restarts) and send its last state.
    fn finish(&self, name: String, state: pb::TaskState) {
        let _ = std::fs::write(self.dir.join(DONE_MARKER), b"");
        let _ = self.progress.send((name, state));
    }

    /// Waits `pause`; true if the servers asked for a stop meanwhile.
    async fn interrupted_by_stop(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = stop_requested(&mut self.stop) => true,
        }
    }
}

pub(crate) fn dead(events: Vec<pb::TaskEvent>, failed: bool) -> pb::TaskState {
    pb::TaskState {
        state: "dead".into(),
        failed,
        restarts: 0,
        started_at_ms: None,
        finished_at_ms: Some(now_ms()),
        events,
    }
}

pub(crate) type TaskHandle = tokio::task::JoinHandle<pb::TaskState>;

/// Starts (or adopts) one task with its driver; returns its state now and, when it runs, the
/// handle that resolves to its final state.
async fn start_task(
    owner: &Owner,
    task: Task,
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    on_event: &crate::docker::OnEvent,
) -> (pb::TaskState, Option<TaskHandle>) {
    match task.driver.clone() {
        TaskDriver::Docker(config) => crate::docker::start_task(owner, task, config, dir, stop, on_event).await,
        TaskDriver::Exec(config) => crate::drivers::exec::start(owner, task, config, true, dir, stop).await,
        TaskDriver::RawExec(config) => crate::drivers::exec::start(owner, task, config, false, dir, stop).await,
    }
}

fn pending(events: Vec<pb::TaskEvent>, restarts: u32) -> pb::TaskState {
    pb::TaskState {
        state: "pending".into(),
        failed: false,
        restarts,
        started_at_ms: None,
        finished_at_ms: None,
        events,
    }
}

pub(crate) fn running(events: Vec<pb::TaskEvent>) -> pb::TaskState {
    pb::TaskState {
        state: "running".into(),
        failed: false,
        restarts: 0,
        started_at_ms: Some(now_ms()),
        finished_at_ms: None,
        events,
    }
}

/// Resolves when the servers want the task stopped. If the agent itself is going away (the
/// sender is gone) it never resolves: tasks outlive their agent, which adopts them on restart.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// In an allocation's directory: the node whose agent runs it. Agents with different node ids
/// may share a data dir (the README runs three on one machine from one directory); each must
/// leave the others' allocations alone. No task is called this: names cannot start with '.'.
const OWNER_FILE: &str = ".node";

/// Marks `alloc_dir` as this node's, before any of its tasks starts.
fn claim(alloc_dir: &Path, node_id: &str) -> std::io::Result<()> {
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
fn repair_pid_files(allocs_dir: &Path, node_id: &str) {
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
fn stop_orphaned_processes(allocs_dir: &Path, node_id: &str, keep: &HashSet<String>) {
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
fn has_live_task(dir: &Path) -> bool {
    task_dirs(dir)
        .iter()
        .any(|t| live_pid(&t.path()).is_some() || t.path().join(crate::docker::CONTAINER_MARKER).exists())
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
