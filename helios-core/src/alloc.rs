use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::Resources;
use crate::placement::PlacementMetrics;
use crate::reschedule::RescheduleEvent;
use crate::service::ServiceRegistration;
use crate::time::Timestamp;

/// One placement of one task group of one job version on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Allocation {
    /// Stamped by the server that proposes the plan (never by the state machine).
    pub id: String,
    /// `job.group[index]`: stable across replacements, so a replacement keeps its slot.
    pub name: String,
    pub eval_id: String,
    pub job_name: String,
    pub job_version: u64,
    pub task_group: String,
    /// `TaskGroup::fingerprint` of the group it was placed for.
    pub group_fingerprint: u64,
    pub node_id: String,
    pub resources: Resources,
    /// The host ports its docker tasks publish and its group's own, held on its node while `holds_host_ports`, so no
    /// other allocation is placed on them: the group's fixed ports (`-p NAME=PORT:HOSTPORT`,
    /// `TaskGroup::static_host_ports`), then one port the scheduler chose from the node's dynamic
    /// range for each of `TaskGroup::dynamic_ports`, in that order.
    pub host_ports: Vec<u16>,
    pub desired_status: AllocDesiredStatus,
    pub desired_description: String,
    pub client_status: AllocClientStatus,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// When it replaces a failed allocation: the reschedules that led to it, oldest first, the
    /// last one its own (`crate::reschedule`). Empty for a first placement.
    pub reschedule_events: Vec<RescheduleEvent>,
    /// For a failed allocation: the one that replaced it (set by the plan applier). The
    /// scheduler no longer reads a replaced failure, so it can be collected.
    pub next_allocation: Option<String>,
    /// The scores that decided its node (empty for allocations placed before format 7).
    pub metrics: PlacementMetrics,
    /// Its services as its agent registered them while its tasks run (`crate::service`);
    /// emptied when it stops.
    pub services: Vec<ServiceRegistration>,
    /// The deployment it was placed by (`crate::deployment`), if its version has one.
    pub deployment_id: Option<String>,
    /// Placed as a canary of that deployment: beside the older allocation of its slot, which
    /// it replaces once the deployment is promoted.
    pub canary: bool,
}

// Version 2 (stored format 7): `reschedule_events`, `next_allocation` and placement `metrics`. Written as version 1 for older readers
// without them: they are the servers' own bookkeeping, which those readers do not use, so a
// cluster mid-upgrade only counts a slot's reschedules afresh (`alloc_v1`).
// Version 3 (stored format 8): `services` (`alloc_v2`). Version 4 (stored format 9):
// `deployment_id` and `canary` (`alloc_v3`).
crate::versioned!(Allocation = 4, since format 9, previous crate::alloc_v3::Allocation);

impl Allocation {
    /// True while its fixed host ports are held on its node: until its agent reports it finished
    /// (or it is lost with its node), even once it is asked to stop. Its container keeps the
    /// port through the kill timeout, and an allocation stopped before the servers heard it
    /// start may have started: only the agent knows.
    pub fn holds_host_ports(&self) -> bool {
        !self.client_status.is_terminal() && !self.host_ports.is_empty()
    }

    /// The host port the scheduler gave `task`'s dynamic port `name` (see `host_ports`), when
    /// `group` is the one the allocation was placed for.
    pub fn host_port_of(&self, group: &crate::job::TaskGroup, task: &str, name: &str) -> Option<u16> {
        group.assigned_dynamic_ports(&self.host_ports).get(&(task.to_string(), name.to_string())).copied()
    }

    /// A running allocation of `j.g[0]` on `node`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, node: &str) -> Allocation {
        Allocation {
            id: id.into(),
            name: "j.g[0]".into(),
            eval_id: "e".into(),
            job_name: "j".into(),
            job_version: 0,
            task_group: "g".into(),
            group_fingerprint: 0,
            node_id: node.into(),
            resources: Resources::default(),
            host_ports: Vec::new(),
            desired_status: AllocDesiredStatus::Run,
            desired_description: String::new(),
            client_status: AllocClientStatus::Running,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            created_at: Timestamp(0),
            modified_at: Timestamp(0),
            reschedule_events: Vec::new(),
            next_allocation: None,
            metrics: PlacementMetrics::default(),
            services: Vec::new(),
            deployment_id: None,
            canary: false,
        }
    }

    /// When it failed: its last task's end, else its last change.
    pub fn failed_at(&self) -> Timestamp {
        self.task_states.values().filter_map(|t| t.finished_at).max().unwrap_or(self.modified_at)
    }

    /// The allocation it replaced after a failure, if it is a reschedule.
    pub fn previous_allocation(&self) -> Option<&str> {
        self.reschedule_events.last().map(|e| e.prev_alloc_id.as_str())
    }

    /// True while it holds room on its node: wanted, and not finished (what the plan applier
    /// counts, and what a new version's deployment replaces).
    pub fn reserves_room(&self) -> bool {
        !self.is_terminal() && self.desired_status == AllocDesiredStatus::Run
    }

    /// True once the allocation will not run again (its client says so, or it was never started
    /// and the servers want it stopped).
    pub fn is_terminal(&self) -> bool {
        self.client_status.is_terminal()
            || (self.desired_status != AllocDesiredStatus::Run && self.client_status == AllocClientStatus::Pending)
    }
}

/// What the servers want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocDesiredStatus {
    Run,
    Stop,
    /// Stopped to make room or because its node is draining; it is replaced elsewhere.
    Evict,
}

impl AllocDesiredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocDesiredStatus::Run => "run",
            AllocDesiredStatus::Stop => "stop",
            AllocDesiredStatus::Evict => "evict",
        }
    }
}

/// What the client agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocClientStatus {
    Pending,
    Running,
    Complete,
    Failed,
    /// Its node went down; the scheduler replaces it.
    Lost,
}

impl AllocClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocClientStatus::Pending => "pending",
            AllocClientStatus::Running => "running",
            AllocClientStatus::Complete => "complete",
            AllocClientStatus::Failed => "failed",
            AllocClientStatus::Lost => "lost",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, AllocClientStatus::Complete | AllocClientStatus::Failed | AllocClientStatus::Lost)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub state: TaskRunState,
    pub failed: bool,
    pub restarts: u32,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRunState {
    Pending,
    Running,
    Dead,
}

impl TaskRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRunState::Pending => "pending",
            TaskRunState::Running => "running",
            TaskRunState::Dead => "dead",
        }
    }
}

/// One line of a task's history (`Received`, `Started`, `Terminated`, `Restarting`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub time: Timestamp,
    /// A `TaskEventKind`'s word (stored as the word: an agent of a later build may add kinds).
    pub kind: String,
    pub message: String,
    pub exit_code: Option<i32>,
}

/// What happened to a task: Nomad's task event types, as agents write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEventKind {
    Received,
    Started,
    Terminated,
    Restarting,
    NotRestarting,
    RestartSignaled,
    Killing,
    Killed,
    OomKilled,
    DriverFailure,
    SetupFailure,
    DownloadingImage,
    ImagePulled,
    NotStarted,
    Adopted,
}

impl TaskEventKind {
    pub const ALL: [TaskEventKind; 15] = [
        TaskEventKind::Received,
        TaskEventKind::Started,
        TaskEventKind::Terminated,
        TaskEventKind::Restarting,
        TaskEventKind::NotRestarting,
        TaskEventKind::RestartSignaled,
        TaskEventKind::Killing,
        TaskEventKind::Killed,
        TaskEventKind::OomKilled,
        TaskEventKind::DriverFailure,
        TaskEventKind::SetupFailure,
        TaskEventKind::DownloadingImage,
        TaskEventKind::ImagePulled,
        TaskEventKind::NotStarted,
        TaskEventKind::Adopted,
    ];

    /// Nomad's word for it, as task events carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Received => "Received",
            TaskEventKind::Started => "Started",
            TaskEventKind::Terminated => "Terminated",
            TaskEventKind::Restarting => "Restarting",
            TaskEventKind::NotRestarting => "Not Restarting",
            TaskEventKind::RestartSignaled => "Restart Signaled",
            TaskEventKind::Killing => "Killing",
            TaskEventKind::Killed => "Killed",
            TaskEventKind::OomKilled => "OOM Killed",
            TaskEventKind::DriverFailure => "Driver Failure",
            TaskEventKind::SetupFailure => "Setup Failure",
            TaskEventKind::DownloadingImage => "Downloading Image",
            TaskEventKind::ImagePulled => "Image Pulled",
            TaskEventKind::NotStarted => "Not Started",
            TaskEventKind::Adopted => "Adopted",
        }
    }

    pub fn parse(word: &str) -> Option<TaskEventKind> {
        TaskEventKind::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

/// What a client agent reports about one of its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocUpdate {
    pub alloc_id: String,
    pub client_status: AllocClientStatus,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
}

impl AllocClientStatus {
    pub fn parse(text: &str) -> Option<AllocClientStatus> {
        Some(match text {
            "pending" => AllocClientStatus::Pending,
            "running" => AllocClientStatus::Running,
            "complete" => AllocClientStatus::Complete,
            "failed" => AllocClientStatus::Failed,
            "lost" => AllocClientStatus::Lost,
            _ => return None,
        })
    }
}

impl AllocDesiredStatus {
    pub fn parse(text: &str) -> Option<AllocDesiredStatus> {
        Some(match text {
            "run" => AllocDesiredStatus::Run,
            "stop" => AllocDesiredStatus::Stop,
            "evict" => AllocDesiredStatus::Evict,
            _ => return None,
        })
    }
}

impl TaskRunState {
    pub fn parse(text: &str) -> Option<TaskRunState> {
        Some(match text {
            "pending" => TaskRunState::Pending,
            "running" => TaskRunState::Running,
            "dead" => TaskRunState::Dead,
            _ => return None,
        })
    }
}
