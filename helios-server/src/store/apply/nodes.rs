//! Client nodes: registering (an id keeps its secret), status changes, purging, and what a change
//! of the usable nodes re-evaluates.

use helios_core::events::Topic;
use helios_core::{
    AllocDesiredStatus, Allocation, CommandResponse, Evaluation, Job, Node, NodeStatus, RejectionKind, Timestamp,
};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::{decode, encode};
use crate::store::tables::{index_id, index_range, NODES_CHANGED_AT};

impl StateTables<'_> {
    /// Forgets a down node: its unfinished allocations are lost (their jobs' evaluations place
    /// them elsewhere), and its id is free for the next agent that registers it.
    pub(super) fn purge_node(&mut self, node_id: &str, now: Timestamp) -> Result<CommandResponse, redb::Error> {
        let Some(node) = get::<Node>(&self.nodes, node_id)? else {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("node {node_id:?} not found")));
        };
        if node.status != NodeStatus::Down {
            return Ok(CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!(
                    "node {node_id:?} is {}: only a node that is down can be purged (stop its agent, or drain it)",
                    node.status.as_str()
                ),
            ));
        }
        self.lose_allocations(node_id, now, |alloc| {
            alloc.desired_status = AllocDesiredStatus::Stop;
            alloc.desired_description = "node purged".to_string();
            true
        })?;
        self.remove_row(Topic::Node, node_id)?;
        Ok(CommandResponse::NodePurged)
    }

    /// Marks the node's unfinished allocations that `lose` picks (and may amend) lost: no agent
    /// will report them finished.
    fn lose_allocations(
        &mut self,
        node_id: &str,
        now: Timestamp,
        mut lose: impl FnMut(&mut Allocation) -> bool,
    ) -> Result<(), redb::Error> {
        let (from, to) = index_range(node_id);
        let mut ids = Vec::new();
        for row in self.allocs_by_node.range(from.as_str()..to.as_str())? {
            ids.push(index_id(row?.0.value()).to_string());
        }
        for id in ids {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, &id)? else { continue };
            if !alloc.is_terminal() && lose(&mut alloc) {
                alloc.client_status = helios_core::AllocClientStatus::Lost;
                alloc.modified_at = now;
                self.put_allocation(&alloc)?;
            }
        }
        Ok(())
    }

    /// The usable nodes changed at this entry. Whatever was decided on the old set is decided
    /// again: blocked evaluations go back to pending, and every system job gets an evaluation.
    /// Done here, deterministically, because the proposer's own list of affected jobs can be
    /// outdated by a plan committed just before this entry.
    pub(super) fn nodes_changed(&mut self, now: Timestamp) -> Result<(), redb::Error> {
        use helios_core::{EvalTrigger, JobType};
        self.cluster.insert(NODES_CHANGED_AT, encode(&self.index).as_slice())?;
        self.retry_blocked(now, "the nodes changed; planning again")?;
        let mut system = Vec::new();
        for row in self.jobs.iter()? {
            let (_, value) = row?;
            let job: Job = decode(value.value()).map_err(redb::StorageError::Io)?;
            if job.job_type == JobType::System && !job.stopped {
                system.push(job);
            }
        }
        for job in system {
            // An id derived from the log index: the same on every replica.
            let id = format!("node-change-{:020}-{}", self.index, job.name);
            let eval = Evaluation::new(id, &job.name, job.priority, EvalTrigger::NodeUpdate, now);
            self.put_evaluation(&eval)?;
        }
        Ok(())
    }

    pub(super) fn register_node(&mut self, mut node: Node) -> Result<CommandResponse, redb::Error> {
        if let Some(existing) = get::<Node>(&self.nodes, &node.id)? {
            // A node id keeps its secret for good, down or not: a down node's id taken by
            // another agent would hand it the node's allocations. Only an operator frees it.
            if !existing.secret_matches(&node.secret_id) {
                return Ok(CommandResponse::rejected(
                    RejectionKind::FailedPrecondition,
                    format!(
                        "node id {:?} belongs to another agent (its secret differs); give this agent another \
                         --node-id, or free the id with `helios-cli node purge {}` if that machine is gone for good",
                        node.id, node.id
                    ),
                ));
            }
            // A restarted agent keeps what operators decided about its node.
            node.eligibility = existing.eligibility;
            node.drain = existing.drain;
            node.registered_at = existing.registered_at;
        }
        node.status = NodeStatus::Ready;
        self.put_row(Topic::Node, &node.id, &encode(&node))?;
        Ok(CommandResponse::NodeRegistered)
    }

    pub(super) fn set_node_status(
        &mut self,
        id: &str,
        status: NodeStatus,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(mut node) = get::<Node>(&self.nodes, id)? else {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("node {id:?} not found")));
        };
        if node.status != status {
            node.status = status;
            node.status_updated_at = now;
            self.put_row(Topic::Node, id, &encode(&node))?;
            // What the servers had asked the node to stop cannot be reported stopped any more.
            // Left as it was, such an allocation (of a purged or stopped job, whose evaluations
            // place nothing) would stay unfinished for good, and keep its job and node from
            // being collected. Those that should run are the scheduler's to replace.
            if status == NodeStatus::Down {
                self.lose_allocations(id, now, |alloc| {
                    alloc.desired_status != AllocDesiredStatus::Run && {
                        alloc.client_description = "its node went down while it was being stopped".to_string();
                        true
                    }
                })?;
            }
        }
        Ok(CommandResponse::NodeStatusSet)
    }
}
