//! Agents' reports of their allocations' states, checked against the node's secret.

use std::collections::BTreeSet;

use helios_core::{Allocation, CommandResponse, Node, RejectionKind, Timestamp};

use super::{get, StateTables};

impl StateTables<'_> {
    pub(super) fn update_allocations(
        &mut self,
        node_id: &str,
        secret: &str,
        updates: Vec<helios_core::AllocUpdate>,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        match get::<Node>(&self.nodes, node_id)? {
            None => {
                return Ok(CommandResponse::rejected(
                    RejectionKind::NotFound,
                    format!("node {node_id:?} is not registered"),
                ))
            }
            Some(node) if !node.secret_matches(secret) => {
                return Ok(CommandResponse::rejected(
                    RejectionKind::FailedPrecondition,
                    format!("node {node_id:?} is registered by another agent"),
                ))
            }
            Some(_) => {}
        }
        let mut changed = Vec::with_capacity(updates.len());
        for update in updates {
            // Collected since (a purged job's, or one lost with its node): the report has nothing
            // left to change. Refusing the batch would lose its other updates, which the agent
            // does not resend.
            let Some(mut alloc) = get::<Allocation>(&self.allocations, &update.alloc_id)? else { continue };
            if alloc.node_id != node_id {
                return Ok(CommandResponse::rejected(
                    RejectionKind::FailedPrecondition,
                    format!("allocation {} is not on node {node_id}", update.alloc_id),
                ));
            }
            // A finished allocation stays finished (a late or repeated report cannot revive it),
            // and a lost one stays lost: the servers already replaced it.
            if !alloc.client_status.is_terminal() {
                alloc.client_status = update.client_status;
                alloc.client_description = update.client_description;
                alloc.task_states = update.task_states;
                alloc.modified_at = now;
            }
            changed.push(alloc);
        }
        let mut jobs = BTreeSet::new();
        for alloc in changed {
            self.put_allocation(&alloc)?;
            jobs.insert(alloc.job_name);
        }
        for job in jobs {
            self.refresh_job_status(&job)?;
        }
        Ok(CommandResponse::AllocationsUpdated)
    }
}
