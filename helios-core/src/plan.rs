use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, AllocDesiredStatus, Allocation};
use crate::time::Timestamp;

/// The scheduler's answer to an evaluation: what to place and what to stop. The leader's plan
/// applier checks it against the latest state before committing it through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub eval_id: String,
    pub job_name: String,
    /// The state index the scheduler planned against, as its `StateView` reports it (for logs
    /// and tests; the server's applier does not compare it). What makes a plan stale is checked
    /// directly when it is applied: a placement whose node is no longer ready, lacks room, or
    /// whose slot is taken.
    pub planned_at_index: u64,
    pub placements: Vec<Allocation>,
    pub stops: Vec<AllocStop>,
    /// Allocations of an older version whose group changed only in count: they stay, and move to
    /// `job_version`.
    pub in_place: Vec<String>,
    pub job_version: u64,
    /// Task group -> why some of its allocations could not be placed.
    pub failed_placements: BTreeMap<String, String>,
    /// When the job must be planned again although nothing may change meanwhile: a failed
    /// allocation's reschedule delay ends, or a drain's wave may move on (its replacements may
    /// be healthy by then). The leader keeps the evaluation pending until then
    /// (`Evaluation::wait_until`). Not part of the Raft command (the evaluation carries it), so
    /// older readers see the same plan.
    #[serde(skip)]
    pub revisit_at: Option<Timestamp>,
    /// Why, for the earliest `revisit_at`.
    #[serde(skip)]
    pub revisit_reason: String,
    /// Groups in `failed_placements` only for what no cluster change fixes (their reschedule
    /// policy gave up): the evaluation is then done rather than blocked.
    #[serde(skip)]
    pub final_failures: std::collections::BTreeSet<String>,
}

impl Plan {
    /// True when some placement failed for a reason a cluster change may fix (room, nodes).
    pub fn blocked(&self) -> bool {
        self.failed_placements.keys().any(|group| !self.final_failures.contains(group))
    }

    /// Asks for the job to be planned again at `at`, because `why` (the earliest ask wins).
    pub fn revisit(&mut self, at: Timestamp, why: &str) {
        if self.revisit_at.is_none_or(|t| at < t) {
            self.revisit_at = Some(at);
            self.revisit_reason = why.to_string();
        }
    }

    /// True when the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.stops.is_empty() && self.in_place.is_empty()
    }
}

impl AllocStop {
    /// `alloc` as this stop leaves it (what the plan applier stores).
    pub fn applied_to(&self, alloc: &Allocation) -> Allocation {
        let mut stopped = alloc.clone();
        stopped.desired_status = self.desired_status;
        stopped.desired_description = self.description.clone();
        if let Some(status) = self.client_status {
            stopped.client_status = status;
        }
        stopped
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocStop {
    pub alloc_id: String,
    pub desired_status: AllocDesiredStatus,
    /// Set when the servers know the client status themselves: `Lost` for an allocation whose
    /// node went down.
    pub client_status: Option<AllocClientStatus>,
    pub description: String,
}
