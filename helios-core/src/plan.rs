use serde::{Deserialize, Serialize};

use crate::alloc::{AllocDesiredStatus, Allocation};

/// The scheduler's answer to an evaluation: what to place and what to stop. The leader's plan
/// applier checks it against the latest state before committing it through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub eval_id: String,
    pub job_name: String,
    /// The state index the scheduler planned against; a plan whose allocations changed since is
    /// rejected and re-planned.
    pub planned_at_index: u64,
    pub placements: Vec<Allocation>,
    pub stops: Vec<AllocStop>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocStop {
    pub alloc_id: String,
    pub desired_status: AllocDesiredStatus,
    pub description: String,
}
