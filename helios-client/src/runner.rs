//! Runs the allocations the servers assign to this node, and reports their state.
//!
//! One runner per allocation starts each task of its group under a `Supervisor` (restarts as
//! the group's policy says), which runs it with its driver (`crate::drivers`), in its own
//! directory (`crate::task_dir`), with stdout and stderr in rotated log files. When the servers
//! want an allocation stopped, every task gets SIGTERM, then SIGKILL after its kill timeout. A
//! task still running from before an agent restart is adopted (`Driver::recover`), not started
//! again; what the servers no longer list is stopped (`crate::adoption`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use helios_api::pb;
use helios_core::{
    AllocClientStatus, AllocDesiredStatus, AllocUpdate, Job, JobType, Task, TaskEvent, TaskEventKind, TaskGroup,
    TaskRunState, TaskState, Timestamp,
};
use tokio::sync::{mpsc, watch};

use crate::adoption::{claim, has_live_task, repair_pid_files, stop_orphaned_processes};
use crate::drivers::Drivers;
use crate::supervisor::Supervisor;

pub type Reports = mpsc::UnboundedSender<AllocUpdate>;

/// Written in a task's directory when it is done for good (no restart will follow).
pub const DONE_MARKER: &str = "done";

pub struct Runners {
    node_id: String,
    drivers: Drivers,
    node: Arc<crate::task_env::NodeFacts>,
    allocs_dir: PathBuf,
    reports: Reports,
    service_reports: crate::services::ServiceReports,
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

pub(crate) fn now() -> Timestamp {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

pub(crate) fn event(kind: TaskEventKind, message: impl Into<String>, exit_code: Option<i32>) -> TaskEvent {
    TaskEvent { time: now(), kind: kind.as_str().to_string(), message: message.into(), exit_code }
}

impl Runners {
    pub fn new(
        node: crate::task_env::NodeFacts,
        drivers: Drivers,
        allocs_dir: PathBuf,
        reports: Reports,
        service_reports: crate::services::ServiceReports,
    ) -> Runners {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Runners {
            node_id: node.id.clone(),
            allocs_dir,
            drivers,
            node: Arc::new(node),
            reports,
            service_reports,
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
            for driver in self.drivers.all() {
                tokio::spawn(driver.remove_orphans(&self.node_id, &listed));
            }
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
            // An unknown desired status (a newer server's) is not taken for "run".
            let wanted = AllocDesiredStatus::parse(&alloc.desired_status) == Some(AllocDesiredStatus::Run);
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
                self.report(&alloc.id, AllocClientStatus::Complete, "stopped before it started", BTreeMap::new());
                self.finished.insert(alloc.id);
                continue;
            }
            let job = job.and_then(|j| helios_api::convert::agent::job_from_agent(j).ok());
            let job_type = job.as_ref().map_or(JobType::Batch, |j: &Job| j.job_type);
            let mut meta = job.as_ref().map(|j| j.meta.clone()).unwrap_or_default();
            let group = job.and_then(|j| j.task_groups.into_iter().find(|g| g.name == alloc.task_group));
            let Some(group) = group else {
                let why = "its job version is unknown to the servers";
                self.report(&alloc.id, AllocClientStatus::Failed, why, BTreeMap::new());
                self.finished.insert(alloc.id);
                continue;
            };
            if let Err(e) = claim(&dir, &self.node_id) {
                tracing::warn!(alloc = %alloc.id, error = %e, "cannot mark the allocation's directory as this node's");
            }
            // Unwanted but alive (left from before an agent restart): adopt it, stopping at once.
            let (stop_tx, stop_rx) = watch::channel(!wanted);
            self.running.insert(alloc.id.clone(), stop_tx);
            let reports = (self.reports.clone(), self.service_reports.clone());
            let done = self.done_tx.clone();
            meta.extend(group.meta.clone());
            let host_ports: Vec<u16> = alloc.host_ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect();
            // What an earlier agent registered: the checks of a task it adopts go on from there.
            let registered = helios_api::convert::agent::registrations_from_agent(alloc.services).unwrap_or_default();
            let owner = Owner {
                dynamic_ports: group.assigned_dynamic_ports(&host_ports),
                group_ports: group.assigned_group_ports(&host_ports),
                node_id: self.node_id.clone(),
                alloc_id: alloc.id.clone(),
                alloc_name: alloc.name,
                job_name: alloc.job_name,
                group: group.name.clone(),
                meta,
                node: self.node.clone(),
            };
            let drivers = self.drivers.clone();
            self.tasks.spawn(async move {
                let (reports, service_reports) = reports;
                let reporting = (reports, service_reports, registered);
                run_allocation(owner, &drivers, job_type, group, dir, stop_rx, reporting).await;
                let _ = done.send(alloc.id);
            });
        }
    }

    fn report(
        &self,
        alloc_id: &str,
        status: AllocClientStatus,
        description: &str,
        task_states: BTreeMap<String, TaskState>,
    ) {
        let _ = self.reports.send(AllocUpdate {
            alloc_id: alloc_id.to_string(),
            client_status: status,
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
    /// The group's own ports (for its exec and raw_exec tasks), by label.
    pub group_ports: BTreeMap<String, u16>,
    pub node: Arc<crate::task_env::NodeFacts>,
}

impl Owner {
    pub fn identity<'a>(
        &'a self,
        task: &'a Task,
        ports: &'a BTreeMap<String, crate::task_env::TaskPort>,
    ) -> crate::task_env::Identity<'a> {
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
            ip: self.node.attributes.get(crate::fingerprint::IP_ATTRIBUTE).map_or("127.0.0.1", String::as_str),
        }
    }
}

async fn run_allocation(
    owner: Owner,
    drivers: &Drivers,
    job_type: JobType,
    group: TaskGroup,
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    // Where its tasks' and its services' states are reported, and what an earlier agent
    // registered for its services.
    (reports, service_reports, registered): (
        Reports,
        crate::services::ServiceReports,
        Vec<helios_core::service::ServiceRegistration>,
    ),
) {
    let report = |status: AllocClientStatus, description: String, states: BTreeMap<String, TaskState>| {
        let _ = reports.send(AllocUpdate {
            alloc_id: owner.alloc_id.clone(),
            client_status: status,
            client_description: description,
            task_states: states,
        });
    };
    // Each task has a supervisor (restarts per the group's policy) that sends every state
    // change here; the allocation's report combines them.
    let (progress, mut changes) = mpsc::unbounded_channel::<(String, TaskState)>();
    // Aborted with this runner (see `Runners::tasks`).
    let mut supervisors = tokio::task::JoinSet::new();
    // The tasks' states for the services' checks, and their restart requests (`check_restart`).
    let (states_tx, states_rx) = watch::channel(BTreeMap::new());
    let mut restarts = BTreeMap::new();
    let services = group.services.clone();
    let tasks = group.tasks.clone();
    for task in tasks {
        let (restart_tx, restart_rx) = mpsc::unbounded_channel();
        restarts.insert(task.name.clone(), restart_tx);
        let Some(driver) = drivers.for_task(&task) else {
            let why = format!("this agent has no {} driver", task.driver.name());
            let _ =
                progress.send((task.name.clone(), dead(vec![event(TaskEventKind::DriverFailure, why, None)], true)));
            continue;
        };
        let supervisor = Supervisor {
            owner: owner.clone(),
            driver,
            job_type,
            policy: group.restart.clone(),
            dir: dir.join(&task.name),
            stop: stop.clone(),
            progress: progress.clone(),
            restart: restart_rx,
        };
        supervisors.spawn(supervisor.run(task));
    }
    drop(progress);
    if !services.is_empty() {
        let run = crate::services::AllocServicesRun {
            owner: owner.clone(),
            group: group.clone(),
            drivers: drivers.clone(),
            dir: dir.clone(),
            states: states_rx,
            stop: stop.clone(),
            restarts,
            reports: service_reports,
            registered,
        };
        supervisors.spawn(run.run());
    }
    let mut states = BTreeMap::new();
    // Every change is reported as it happens: a task that failed and waits to restart (dead,
    // its last event "Restarting") shows its failure now, not when its restarts run out.
    while let Some((name, state)) = changes.recv().await {
        states.insert(name, state);
        states_tx.send_replace(states.clone());
        let restarting =
            |s: &TaskState| s.state == TaskRunState::Dead && s.events.last().is_some_and(|e| e.kind == "Restarting");
        let (status, description) = if states.values().any(|s| s.state == TaskRunState::Running) {
            (AllocClientStatus::Running, "tasks running")
        } else if states.values().any(restarting) {
            (AllocClientStatus::Pending, "a task is waiting to restart")
        } else if states.values().any(|s| s.state == TaskRunState::Pending) {
            (AllocClientStatus::Pending, "tasks starting")
        } else {
            // Every task done for good: the final report below says how it ended. A "pending"
            // here would briefly undo a running allocation's state on the servers.
            continue;
        };
        report(status, description.to_string(), states.clone());
    }
    // Closing it ends the services, which deregister before the allocation's last report.
    drop(states_tx);
    while supervisors.join_next().await.is_some() {}
    let stopped = *stop.borrow();
    let failed = states.values().any(|s| s.failed);
    let (status, description) = match (stopped, failed) {
        (true, _) => (AllocClientStatus::Complete, "stopped by the servers".to_string()),
        (false, true) => (AllocClientStatus::Failed, "a task failed".to_string()),
        (false, false) => (AllocClientStatus::Complete, "all tasks exited successfully".to_string()),
    };
    report(status, description, states);
}

pub(crate) fn dead(events: Vec<TaskEvent>, failed: bool) -> TaskState {
    TaskState { state: TaskRunState::Dead, failed, restarts: 0, started_at: None, finished_at: Some(now()), events }
}

pub(crate) type TaskHandle = tokio::task::JoinHandle<TaskState>;

pub(crate) fn pending(events: Vec<TaskEvent>, restarts: u32) -> TaskState {
    TaskState { state: TaskRunState::Pending, failed: false, restarts, started_at: None, finished_at: None, events }
}

pub(crate) fn running(events: Vec<TaskEvent>) -> TaskState {
    TaskState {
        state: TaskRunState::Running,
        failed: false,
        restarts: 0,
        started_at: Some(now()),
        finished_at: None,
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
