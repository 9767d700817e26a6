//! Proposals as stored formats 1 and 2 wrote them (version 1), kept only to be read and migrated.
//! Never change these types: they describe bytes already on disk.

use serde::Deserialize;

use crate::acl::{AclPolicy, AclToken};
use crate::alloc::AllocUpdate;
use crate::eval::Evaluation;
use crate::job::Job;
use crate::node::{Node, NodeEligibility, NodeStatus};
use crate::plan::Plan;
use crate::time::Timestamp;

#[derive(Deserialize)]
pub struct Proposal {
    pub request_id: String,
    pub proposed_at: Timestamp,
    pub command: Command,
}

crate::legacy!(Proposal = 1);

/// Version 1's variants, in their order (bincode encodes the position).
#[derive(Deserialize)]
pub enum Command {
    RegisterJob {
        job: Job,
        eval: Evaluation,
    },
    DeregisterJob {
        job_name: String,
        purge: bool,
        eval: Evaluation,
        now: Timestamp,
    },
    RegisterNode {
        node: Node,
        evals: Vec<Evaluation>,
    },
    SetNodeStatus {
        node_id: String,
        status: NodeStatus,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    ApplyPlan {
        plan: Plan,
        eval: Evaluation,
        follow_ups: Vec<Evaluation>,
    },
    UpdateAllocations {
        node_id: String,
        updates: Vec<AllocUpdate>,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    SetNodeScheduling {
        node_id: String,
        drain: bool,
        eligibility: NodeEligibility,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    CreateEvaluations {
        evals: Vec<Evaluation>,
    },
    ReportAllocations {
        node_id: String,
        secret: String,
        updates: Vec<AllocUpdate>,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    PurgeNode {
        node_id: String,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    AclBootstrap {
        token: AclToken,
        reset_index: Option<u64>,
    },
    UpsertAclPolicy {
        policy: AclPolicy,
    },
    DeleteAclPolicy {
        name: String,
    },
    UpsertAclToken {
        token: AclToken,
    },
    DeleteAclToken {
        accessor_id: String,
    },
}

impl From<Proposal> for super::v2::Proposal {
    fn from(old: Proposal) -> super::v2::Proposal {
        super::v2::Proposal { request_id: old.request_id, proposed_at: old.proposed_at, command: old.command.into() }
    }
}

impl From<Command> for super::Command {
    fn from(old: Command) -> super::Command {
        use super::Command as New;
        match old {
            Command::RegisterJob { job, eval } => New::RegisterJob { job, eval },
            Command::DeregisterJob { job_name, purge, eval, now } => New::DeregisterJob { job_name, purge, eval, now },
            Command::RegisterNode { node, evals } => New::RegisterNode { node, evals },
            Command::SetNodeStatus { node_id, status, now, evals } => {
                New::SetNodeStatus { node_id, status, now, evals }
            }
            // Leaders stopped sending follow-ups before format 2 (the state machine retries
            // blocked jobs itself): every stored one is empty.
            Command::ApplyPlan { plan, eval, follow_ups: _ } => New::ApplyPlan { plan, eval },
            // Servers stopped proposing it before format 2, and format 2 applies one as a refusal
            // that changes nothing: it migrates to a command that changes nothing.
            Command::UpdateAllocations { .. } => New::CreateEvaluations { evals: Vec::new() },
            Command::SetNodeScheduling { node_id, drain, eligibility, now, evals } => {
                New::SetNodeScheduling { node_id, drain, eligibility, now, evals }
            }
            Command::CreateEvaluations { evals } => New::CreateEvaluations { evals },
            Command::ReportAllocations { node_id, secret, updates, now, evals } => {
                New::ReportAllocations { node_id, secret, updates, now, evals }
            }
            Command::PurgeNode { node_id, now, evals } => New::PurgeNode { node_id, now, evals },
            Command::AclBootstrap { token, reset_index } => New::AclBootstrap { token, reset_index },
            Command::UpsertAclPolicy { policy } => New::UpsertAclPolicy { policy },
            Command::DeleteAclPolicy { name } => New::DeleteAclPolicy { name },
            Command::UpsertAclToken { token } => New::UpsertAclToken { token },
            Command::DeleteAclToken { accessor_id } => New::DeleteAclToken { accessor_id },
        }
    }
}
