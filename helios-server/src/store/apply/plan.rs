//! The plan applier: the final check that a scheduler's plan still fits (nodes ready with room,
//! slots and host ports free), then its stops, in-place updates and placements.

use std::collections::{BTreeSet, HashMap};

use helios_core::command::PlanApplied;
use helios_core::{
    Allocation, CommandResponse, Evaluation, Job, Node, NodeEligibility, NodeStatus, Plan, RejectionKind, Resources,
};

use super::{get, reserves_room, StateTables};
use redb::ReadableTable;

use crate::store::tables::{host_port_key, index_id, index_range, NODES_CHANGED_AT, ROOM_FREED_AT};

impl StateTables<'_> {
    /// The plan applier's last line: a plan is committed only if it still fits the state it
    /// meets here, so no node is over-committed and no slot is filled twice, however plans race.
    pub(super) fn apply_plan(&mut self, plan: Plan, mut eval: Evaluation) -> Result<CommandResponse, redb::Error> {
        // Blocked on a view of the nodes that has changed since (a node registered while this
        // plan was made): plan it again rather than wait for the next change.
        let nodes_changed_at: u64 = get(&self.cluster, NODES_CHANGED_AT)?.unwrap_or(0);
        let system =
            get::<Job>(&self.jobs, &plan.job_name)?.is_some_and(|j| j.job_type == helios_core::JobType::System);
        let decided_on_old_nodes = nodes_changed_at > plan.planned_at_index;
        if decided_on_old_nodes && (eval.status == helios_core::EvalStatus::Blocked || system) {
            eval.status = helios_core::EvalStatus::Pending;
            eval.status_description = "the nodes changed while it was planned; planning again".to_string();
        }
        let room_freed_at: u64 = get(&self.cluster, ROOM_FREED_AT)?.unwrap_or(0);
        if room_freed_at > plan.planned_at_index && eval.status == helios_core::EvalStatus::Blocked {
            eval.status = helios_core::EvalStatus::Pending;
            eval.status_description = "room was freed while it was planned; planning again".to_string();
        }
        if let Err(why) = self.check_plan(&plan)? {
            return Ok(CommandResponse::rejected(RejectionKind::FailedPrecondition, format!("stale plan: {why}")));
        }
        let now = eval.modified_at;
        for stop in &plan.stops {
            let Some(alloc) = get::<Allocation>(&self.allocations, &stop.alloc_id)? else { continue };
            let mut alloc = stop.applied_to(&alloc);
            alloc.modified_at = now;
            self.put_allocation(&alloc)?;
        }
        for id in &plan.in_place {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, id)? else { continue };
            alloc.job_version = plan.job_version;
            alloc.modified_at = now;
            self.put_allocation(&alloc)?;
        }
        for alloc in &plan.placements {
            self.put_allocation(alloc)?;
            // The failure it replaces is done with: `alloc status` names its successor, and the
            // collector may take it.
            if let Some(previous) = alloc.previous_allocation() {
                // (Only the first: a replacement of a lost replacement carries the same history.)
                let failed = get::<Allocation>(&self.allocations, previous)?.filter(|a| a.next_allocation.is_none());
                if let Some(mut failed) = failed {
                    failed.next_allocation = Some(alloc.id.clone());
                    failed.modified_at = now;
                    self.put_allocation(&failed)?;
                }
            }
        }
        if !plan.stops.is_empty() {
            // A stopped job whose allocations never started is dead once they are stopped.
            self.refresh_job_status(&plan.job_name)?;
        }
        if eval.wait_until.is_some() {
            self.keep_one_waiting(&mut eval)?;
        }
        self.put_evaluation(&eval)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(CommandResponse::PlanApplied(PlanApplied {
            placed: count(plan.placements.len()),
            stopped: count(plan.stops.len()),
        }))
    }

    /// A job has at most one evaluation waiting (`wait_until`): every failure report brings a
    /// new evaluation, and each would otherwise end waiting too, piling up. The newest one goes
    /// on, due at the earliest of their times; the others are canceled. (The newest, because a
    /// job run watches the evaluation its submission made.)
    fn keep_one_waiting(&mut self, eval: &mut Evaluation) -> Result<(), redb::Error> {
        let Some(mut due) = eval.wait_until else { return Ok(()) };
        let (first, last) = index_range(&eval.job_name);
        let mut waiting = Vec::new();
        for row in self.evals_by_job.range(first.as_str()..last.as_str())? {
            let (key, _) = row?;
            let id = index_id(key.value()).to_string();
            let waits = self.pending_evaluations.get(id.as_str())?.is_some_and(|row| row.value().len() == 8);
            if waits && id != eval.id {
                waiting.push(id);
            }
        }
        for id in waiting {
            let Some(mut other) = get::<Evaluation>(&self.evaluations, &id)? else { continue };
            let Some(other_due) = other.wait_until else { continue };
            if other_due < due {
                due = other_due;
                eval.status_description = format!(
                    "{} (sooner: at {}, as evaluation {} was)",
                    eval.status_description,
                    due.to_rfc3339(),
                    other.id
                );
            }
            other.status = helios_core::EvalStatus::Canceled;
            other.wait_until = None;
            other.status_description = format!("superseded by evaluation {}", eval.id);
            other.modified_at = eval.modified_at;
            self.put_evaluation(&other)?;
        }
        eval.wait_until = Some(due);
        Ok(())
    }

    pub(super) fn check_plan(&self, plan: &Plan) -> Result<Result<(), String>, redb::Error> {
        if plan.placements.is_empty() {
            return Ok(Ok(()));
        }
        let stopping: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        // What each node has reserved, less what this plan stops.
        let mut used: HashMap<String, Resources> = HashMap::new();
        // Each stopped allocation once, however often the plan names it.
        for id in &stopping {
            let Some(alloc) = get::<Allocation>(&self.allocations, id)? else { continue };
            if reserves_room(&alloc) {
                let r = self.used_on(&mut used, &alloc.node_id)?;
                *r = r.minus(alloc.resources);
            }
        }
        // The slots the plan's job already fills, with the newest version filling each. Names
        // may repeat across jobs ("a.b" + "c" and "a" + "b.c"), but slots belong to one job.
        let mut taken: HashMap<(String, String), u64> = HashMap::new();
        for alloc in self.allocations_of_job(&plan.job_name)? {
            if reserves_room(&alloc) && !stopping.contains(alloc.id.as_str()) {
                for slot in [(alloc.name.clone(), alloc.node_id.clone()), (alloc.name.clone(), String::new())] {
                    let newest = taken.entry(slot).or_insert(alloc.job_version);
                    *newest = (*newest).max(alloc.job_version);
                }
            }
        }
        let job = get::<Job>(&self.jobs, &plan.job_name)?;
        let system = job.as_ref().is_some_and(|j| j.job_type == helios_core::JobType::System);
        // A canary shares its slot with the older allocation it replaces once promoted.
        let canaries = |group: &str| {
            job.as_ref().is_some_and(|j| j.task_groups.iter().any(|g| g.name == group && g.update.canary > 0))
        };
        // Fixed host ports: free unless held by an allocation that the plan does not finish, and
        // each taken once.
        let mut ports_freed: BTreeSet<&str> = BTreeSet::new();
        let wants_ports = plan.placements.iter().any(|a| !a.host_ports.is_empty());
        for stop in plan.stops.iter().filter(|_| wants_ports) {
            let Some(alloc) = get::<Allocation>(&self.allocations, &stop.alloc_id)? else { continue };
            if !stop.applied_to(&alloc).holds_host_ports() {
                ports_freed.insert(stop.alloc_id.as_str());
            }
        }
        let mut ports_taken: BTreeSet<(&str, u16)> = BTreeSet::new();
        for alloc in &plan.placements {
            for port in &alloc.host_ports {
                let holder = get::<String>(&self.node_ports, &host_port_key(&alloc.node_id, *port))?;
                let held = holder.is_some_and(|h| !ports_freed.contains(h.as_str()));
                if held || !ports_taken.insert((alloc.node_id.as_str(), *port)) {
                    return Ok(Err(format!("host port {port} on node {} is taken", alloc.node_id)));
                }
            }
        }
        // A plan puts many allocations on few nodes: decode each node once.
        let mut nodes: HashMap<&str, Option<Node>> = HashMap::new();
        for alloc in &plan.placements {
            if alloc.job_name != plan.job_name {
                return Ok(Err(format!("allocation {} belongs to another job", alloc.id)));
            }
            if !nodes.contains_key(alloc.node_id.as_str()) {
                nodes.insert(&alloc.node_id, get::<Node>(&self.nodes, &alloc.node_id)?);
            }
            let Some(node) = &nodes[alloc.node_id.as_str()] else {
                return Ok(Err(format!("node {} is gone", alloc.node_id)));
            };
            if node.status != NodeStatus::Ready || node.eligibility != NodeEligibility::Eligible || node.drain {
                return Ok(Err(format!("node {} can no longer take work", node.id)));
            }
            // A system job's slot is per node; other slots are per job.
            let slot = (alloc.name.clone(), if system { alloc.node_id.clone() } else { String::new() });
            match taken.insert(slot, alloc.job_version) {
                None => {}
                Some(older) if older < alloc.job_version && canaries(&alloc.task_group) => {}
                Some(_) => return Ok(Err(format!("slot {} is already filled", alloc.name))),
            }
            let r = self.used_on(&mut used, &node.id)?;
            *r = r.plus(alloc.resources);
            if r.cpu_mhz > node.resources.cpu_mhz || r.memory_mb > node.resources.memory_mb {
                return Ok(Err(format!("node {} has no room left", node.id)));
            }
        }
        Ok(Ok(()))
    }

    /// The entry for `node` in `used`, starting from what the node has reserved now.
    pub(super) fn used_on<'m>(
        &self,
        used: &'m mut HashMap<String, Resources>,
        node: &str,
    ) -> Result<&'m mut Resources, redb::Error> {
        if !used.contains_key(node) {
            let now = self.usage_of(node)?;
            used.insert(node.to_string(), now);
        }
        Ok(used.get_mut(node).expect("inserted above"))
    }
}
