use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A unit of scheduler work: "something about this job changed, reconcile it".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Evaluation {
    pub id: String,
    pub job_name: String,
    pub priority: u32,
    pub trigger: EvalTrigger,
    /// The node whose change caused this evaluation, for node triggers.
    pub node_id: Option<String>,
    pub status: EvalStatus,
    pub status_description: String,
    /// Task group -> why it could not be placed (shown by `job status`).
    pub failed_placements: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// A pending evaluation waits until then (a failed allocation's reschedule delay): the
    /// leader's scheduler takes it only afterwards.
    pub wait_until: Option<Timestamp>,
}

// Version 2 (stored format 7): `wait_until`. For older readers it is written as version 1 only
// without one: the leader's scheduler delays nothing while the cluster is older (`eval_v1`).
crate::versioned!(Evaluation = 2, since format 7, previous crate::eval_v1::Evaluation);

impl Evaluation {
    pub fn new(id: String, job_name: &str, priority: u32, trigger: EvalTrigger, now: Timestamp) -> Evaluation {
        Evaluation {
            id,
            job_name: job_name.to_string(),
            priority,
            trigger,
            node_id: None,
            status: EvalStatus::Pending,
            status_description: String::new(),
            failed_placements: BTreeMap::new(),
            created_at: now,
            modified_at: now,
            wait_until: None,
        }
    }

    /// True while it is pending but waiting for `wait_until`.
    pub fn is_waiting(&self, now: Timestamp) -> bool {
        self.status == EvalStatus::Pending && self.wait_until.is_some_and(|t| t > now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalTrigger {
    JobRegister,
    JobDeregister,
    NodeUpdate,
    NodeDrain,
    AllocFailure,
    RetryFailedPlacement,
    /// A user stopped an allocation (`alloc stop`); its replacement is placed. (Variants are
    /// encoded by position: add new ones at the end.)
    AllocStop,
    /// A deployment changed (a verdict, promotion, resume): the rollout goes on. (Format 9.)
    DeploymentWatcher,
}

impl EvalTrigger {
    pub const ALL: [EvalTrigger; 8] = [
        EvalTrigger::JobRegister,
        EvalTrigger::JobDeregister,
        EvalTrigger::NodeUpdate,
        EvalTrigger::NodeDrain,
        EvalTrigger::AllocFailure,
        EvalTrigger::RetryFailedPlacement,
        EvalTrigger::AllocStop,
        EvalTrigger::DeploymentWatcher,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvalTrigger::JobRegister => "job-register",
            EvalTrigger::JobDeregister => "job-deregister",
            EvalTrigger::NodeUpdate => "node-update",
            EvalTrigger::NodeDrain => "node-drain",
            EvalTrigger::AllocFailure => "alloc-failure",
            EvalTrigger::RetryFailedPlacement => "retry-failed-placement",
            EvalTrigger::AllocStop => "alloc-stop",
            EvalTrigger::DeploymentWatcher => "deployment-watcher",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalStatus {
    /// Waiting for the leader's scheduler.
    Pending,
    Complete,
    /// Some placements failed; retried when the cluster changes.
    Blocked,
    Failed,
    /// Superseded by a newer evaluation of the same job.
    Canceled,
}

impl EvalStatus {
    pub const ALL: [EvalStatus; 5] =
        [EvalStatus::Pending, EvalStatus::Complete, EvalStatus::Blocked, EvalStatus::Failed, EvalStatus::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Pending => "pending",
            EvalStatus::Complete => "complete",
            EvalStatus::Blocked => "blocked",
            EvalStatus::Failed => "failed",
            EvalStatus::Canceled => "canceled",
        }
    }
}
