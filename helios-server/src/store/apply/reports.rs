//! Agents' reports of their allocations' states, checked against the node's secret.

use std::collections::BTreeSet;

use helios_core::service::AllocServices;
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
        if let Some(refused) = self.refuse_reporter(node_id, secret)? {
            return Ok(refused);
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
                if alloc.client_status.is_terminal() {
                    // Its services leave the catalog with it.
                    alloc.services.clear();
                }
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

    /// Each listed allocation's registrations replace what it had; one that no longer runs keeps
    /// none (a late report cannot bring a stopped allocation back into the catalog).
    pub(super) fn report_services(
        &mut self,
        node_id: &str,
        secret: &str,
        reports: Vec<AllocServices>,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        if let Some(refused) = self.refuse_reporter(node_id, secret)? {
            return Ok(refused);
        }
        let mut changed = Vec::with_capacity(reports.len());
        for report in reports {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, &report.alloc_id)? else { continue };
            if alloc.node_id != node_id {
                return Ok(CommandResponse::rejected(
                    RejectionKind::FailedPrecondition,
                    format!("allocation {} is not on node {node_id}", report.alloc_id),
                ));
            }
            let registrations = if alloc.is_terminal() { Vec::new() } else { report.registrations };
            if alloc.services != registrations {
                alloc.services = registrations;
                alloc.modified_at = now;
                changed.push(alloc);
            }
        }
        for alloc in changed {
            self.put_allocation(&alloc)?;
        }
        Ok(CommandResponse::AllocationsUpdated)
    }

    /// Why a report from `node_id` is refused: the node is unknown, or another agent's.
    fn refuse_reporter(&self, node_id: &str, secret: &str) -> Result<Option<CommandResponse>, redb::Error> {
        Ok(match get::<Node>(&self.nodes, node_id)? {
            None => {
                Some(CommandResponse::rejected(RejectionKind::NotFound, format!("node {node_id:?} is not registered")))
            }
            Some(node) if !node.secret_matches(secret) => Some(CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!("node {node_id:?} is registered by another agent"),
            )),
            Some(_) => None,
        })
    }
}
