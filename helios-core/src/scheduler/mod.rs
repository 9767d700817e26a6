//! The scheduler: turns an evaluation into a plan. Pure: it reads a [`StateView`] and returns a
//! [`Plan`]; it never touches Raft, disk or the network. The leader's plan applier checks the
//! plan against the latest state before committing it, and a stale plan is simply re-planned.
//!
//! Per task group it reconciles what runs with what the job asks for (`reconcile`), then finds a
//! node for each missing allocation (`select`): feasible nodes (status, drivers, constraints,
//! free resources) are ranked by best fit, ties broken by spreading the group across nodes.
//! Like Nomad, it ranks a bounded sample of feasible nodes rather than every node, which keeps a
//! placement O(sample) on a 10,000-node cluster.

mod feasibility;
mod preferences;
mod reconcile;
pub mod select;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use crate::alloc::Allocation;
use crate::deployment::Deployment;
use crate::eval::Evaluation;
use crate::job::{Job, Resources};
use crate::node::Node;
use crate::plan::Plan;
use crate::time::Timestamp;

pub use feasibility::CompiledConstraints;
pub use select::SAMPLE_SIZE;

/// What the scheduler may read. The server implements it over its tables; tests over a harness.
pub trait StateView {
    /// The state's index (the Raft log index it reflects); a plan records it so the applier can
    /// detect a plan made on stale state.
    fn index(&self) -> u64;
    fn job(&self, name: &str) -> Option<&Job>;
    /// Every client node, in a stable order.
    fn nodes(&self) -> &[Node];
    /// Every allocation of the job, terminal ones included.
    fn allocations_of_job(&self, job_name: &str) -> Vec<&Allocation>;
    /// Resources reserved on a node by its non-terminal allocations.
    fn node_usage(&self, node_id: &str) -> Resources;
    /// The allocation that holds fixed host port `port` on a node, if one does.
    fn host_port_holder(&self, node_id: &str, port: u16) -> Option<&str>;
    /// False while the cluster's stored format predates delayed reschedules (a rolling upgrade
    /// from format 6): failed allocations are then replaced at once, at most
    /// `MAX_LEGACY_RESCHEDULES` times per slot and version, as the older build does.
    fn delays_reschedules(&self) -> bool {
        true
    }
    /// The job's latest deployment (`crate::deployment`), if it has one.
    fn deployment(&self, _job_name: &str) -> Option<&Deployment> {
        None
    }
}

/// Plans evaluation `eval`. `new_id` makes allocation ids (the caller's source of identity keeps
/// this function deterministic).
pub fn schedule(view: &impl StateView, eval: &Evaluation, now: Timestamp, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut plan = Plan {
        eval_id: eval.id.clone(),
        job_name: eval.job_name.clone(),
        planned_at_index: view.index(),
        placements: Vec::new(),
        stops: Vec::new(),
        in_place: Vec::new(),
        job_version: 0,
        failed_placements: BTreeMap::new(),
        revisit_at: None,
        revisit_reason: String::new(),
        final_failures: BTreeSet::new(),
    };
    let existing = view.allocations_of_job(&eval.job_name);
    let job = view.job(&eval.job_name).filter(|j| !j.stopped);
    let Some(job) = job else {
        // Stopped or purged: nothing of it may run.
        reconcile::stop_all(&existing, &mut plan, "job stopped");
        return plan;
    };
    plan.job_version = job.version;
    // The nodes of the job's unfinished allocations (what reconciling looks up), found in one
    // pass; a new job's plan needs none.
    let on: BTreeSet<&str> =
        existing.iter().filter(|a| !a.client_status.is_terminal()).map(|a| a.node_id.as_str()).collect();
    let nodes_by_id: BTreeMap<&str, &Node> = if on.is_empty() {
        BTreeMap::new()
    } else {
        view.nodes().iter().filter(|n| on.contains(n.id.as_str())).map(|n| (n.id.as_str(), n)).collect()
    };
    // Decide every stop first, so placements can use the room (and the hosts) they free.
    let mut asks = Vec::new();
    // Only the current version's deployment rules this plan (an older one was cancelled).
    let deployment = view.deployment(&job.name).filter(|d| d.job_version == job.version);
    for group in &job.task_groups {
        let slots =
            reconcile::Slots { job, group, existing: &existing, delays: view.delays_reschedules(), now, deployment };
        asks.push(slots.reconcile(&nodes_by_id, view.nodes(), &mut plan));
    }
    reconcile::stop_removed_groups(job, &existing, &mut plan);
    let stopping: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
    let freed: Vec<&Allocation> = existing.iter().copied().filter(|a| stopping.contains(a.id.as_str())).collect();
    // A stopped allocation keeps its host ports until it has finished; one that never started
    // (or whose node is gone) is finished by the stop itself.
    let ports_freed: BTreeSet<String> = plan
        .stops
        .iter()
        .filter_map(|stop| {
            let alloc = freed.iter().find(|a| a.id == stop.alloc_id)?;
            (!stop.applied_to(alloc).holds_host_ports()).then(|| alloc.id.clone())
        })
        .collect();
    let mut placer = select::Placer::new(view, job, eval, &freed, ports_freed);
    let system = job.job_type == crate::job::JobType::System;
    for (group, group_asks) in job.task_groups.iter().zip(asks) {
        for ask in group_asks {
            match placer.place(group, &ask, now, new_id) {
                Ok(mut alloc) => {
                    // Placed by the version's deployment, whose watcher judges it.
                    let by = deployment.filter(|d| d.groups.contains_key(&group.name));
                    alloc.deployment_id = by.map(|d| d.id.clone());
                    plan.placements.push(alloc);
                }
                // A system job simply does not run where it cannot: not a failure.
                Err(select::PlaceError::Infeasible(_)) if system => {}
                Err(select::PlaceError::Infeasible(reason) | select::PlaceError::NoRoom(reason)) => {
                    // Beside a reschedule policy's refusal, if there is one: both are said.
                    plan.final_failures.remove(&group.name);
                    let why = plan.failed_placements.entry(group.name.clone()).or_default();
                    if !why.is_empty() && !why.ends_with(&reason) {
                        why.push_str("; ");
                    }
                    if !why.ends_with(&reason) {
                        why.push_str(&reason);
                    }
                }
            }
        }
    }
    plan
}
