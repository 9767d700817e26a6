//! Writing allocations and evaluations with every index over them in step (`put_allocation` is
//! the one way allocations are written), and rebuilding those indexes from the tables.

use helios_core::events::Topic;
use helios_core::{Allocation, Evaluation, Resources};
use redb::ReadableTable;

use super::{counted, get, reserves_room, StateTables};
use crate::store::codec::{decode, encode};
use crate::store::tables::{host_port_key, index_id, index_key, index_range, AllocCounts};

impl StateTables<'_> {
    /// Builds the indexes over allocations and evaluations (`tables::ALLOCS_BY_JOB` ...
    /// `JOB_ALLOC_COUNTS`) afresh from the tables themselves, for data written before they
    /// existed: an older server's database, or a snapshot from one. Then call `finish`.
    pub fn rebuild_indexes(&mut self) -> Result<(), redb::Error> {
        self.allocs_by_job.retain(|_, _| false)?;
        self.allocs_by_node.retain(|_, _| false)?;
        self.evals_by_job.retain(|_, _| false)?;
        self.node_usage.retain(|_, _| false)?;
        self.job_alloc_counts.retain(|_, _| false)?;
        self.node_ports.retain(|_, _| false)?;
        self.usage.clear();
        self.counts.clear();
        for row in self.allocations.iter()? {
            let (_, value) = row?;
            let alloc: Allocation = decode(value.value()).map_err(redb::StorageError::Io)?;
            self.allocs_by_job.insert(index_key(&alloc.job_name, &alloc.id).as_str(), [].as_slice())?;
            self.allocs_by_node.insert(index_key(&alloc.node_id, &alloc.id).as_str(), [].as_slice())?;
            if reserves_room(&alloc) {
                let usage = self.usage.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
                *usage = usage.plus(alloc.resources);
            }
            if alloc.holds_host_ports() {
                for port in &alloc.host_ports {
                    let key = host_port_key(&alloc.node_id, *port);
                    if get::<String>(&self.node_ports, &key)?.is_none() {
                        self.node_ports.insert(key.as_str(), encode(&alloc.id).as_slice())?;
                    }
                }
            }
            let counts = self.counts.entry(alloc.job_name.clone()).or_default();
            counts.running += counted(&alloc).running;
            counts.live += counted(&alloc).live;
        }
        for row in self.evaluations.iter()? {
            let (_, value) = row?;
            let eval: Evaluation = decode(value.value()).map_err(redb::StorageError::Io)?;
            self.evals_by_job.insert(index_key(&eval.job_name, &eval.id).as_str(), [].as_slice())?;
        }
        Ok(())
    }

    pub(super) fn usage_of(&self, node: &str) -> Result<Resources, redb::Error> {
        match self.usage.get(node) {
            Some(u) => Ok(*u),
            None => Ok(get(&self.node_usage, node)?.unwrap_or(Resources::ZERO)),
        }
    }

    pub(super) fn counts_of(&self, job: &str) -> Result<AllocCounts, redb::Error> {
        match self.counts.get(job) {
            Some(c) => Ok(*c),
            None => Ok(get(&self.job_alloc_counts, job)?.unwrap_or_default()),
        }
    }

    /// Records (or releases) the fixed host ports `alloc` holds on its node.
    pub(super) fn hold_host_ports(&mut self, alloc: &Allocation, hold: bool) -> Result<(), redb::Error> {
        for port in &alloc.host_ports {
            let key = host_port_key(&alloc.node_id, *port);
            if hold {
                // check_plan keeps ports unique; should two ever claim one, the first keeps it
                // (as `rebuild_indexes`, which meets allocations in id order, cannot tell).
                if get::<String>(&self.node_ports, &key)?.is_none() {
                    self.node_ports.insert(key.as_str(), encode(&alloc.id).as_slice())?;
                }
            } else if get::<String>(&self.node_ports, &key)?.as_deref() == Some(alloc.id.as_str()) {
                self.node_ports.remove(key.as_str())?;
            }
        }
        Ok(())
    }

    /// Every allocation of `job_name`, terminal ones included.
    pub(super) fn allocations_of_job(&self, job_name: &str) -> Result<Vec<Allocation>, redb::Error> {
        let (from, to) = index_range(job_name);
        let mut out = Vec::new();
        for row in self.allocs_by_job.range(from.as_str()..to.as_str())? {
            let (key, _) = row?;
            if let Some(alloc) = get::<Allocation>(&self.allocations, index_id(key.value()))? {
                out.push(alloc);
            }
        }
        Ok(out)
    }

    /// Writes an allocation and keeps every index over allocations in step with it. The only way
    /// allocations are written. An allocation never changes its job, node or resources.
    pub(super) fn put_allocation(&mut self, alloc: &Allocation) -> Result<(), redb::Error> {
        let old: Option<Allocation> = get(&self.allocations, &alloc.id)?;
        self.put_row(Topic::Allocation, &alloc.id, &encode(alloc))?;
        if old.is_none() {
            self.allocs_by_job.insert(index_key(&alloc.job_name, &alloc.id).as_str(), [].as_slice())?;
            self.allocs_by_node.insert(index_key(&alloc.node_id, &alloc.id).as_str(), [].as_slice())?;
        }
        let was_reserved = old.as_ref().is_some_and(reserves_room);
        if was_reserved != reserves_room(alloc) {
            let usage = self.usage_of(&alloc.node_id)?;
            let usage = if was_reserved { usage.minus(alloc.resources) } else { usage.plus(alloc.resources) };
            self.usage.insert(alloc.node_id.clone(), usage);
        }
        let was_holding = old.as_ref().is_some_and(Allocation::holds_host_ports);
        if was_holding != alloc.holds_host_ports() {
            self.hold_host_ports(alloc, !was_holding)?;
        }
        if (was_reserved && !reserves_room(alloc)) || (was_holding && !alloc.holds_host_ports()) {
            self.room_freed = Some(alloc.modified_at);
        }
        let before = old.as_ref().map(counted).unwrap_or_default();
        let after = counted(alloc);
        if before != after {
            let mut counts = self.counts_of(&alloc.job_name)?;
            counts.running = (counts.running + after.running).saturating_sub(before.running);
            counts.live = (counts.live + after.live).saturating_sub(before.live);
            self.counts.insert(alloc.job_name.clone(), counts);
        }
        self.touched.entry(alloc.node_id.clone()).or_default().insert(alloc.id.clone());
        Ok(())
    }

    pub(super) fn put_evaluations(&mut self, evals: &[Evaluation]) -> Result<(), redb::Error> {
        evals.iter().try_for_each(|e| self.put_evaluation(e))
    }

    /// Stores an evaluation and keeps the indexes of pending evaluations (what the scheduler
    /// reads) and of blocked jobs (what a cluster change retries).
    pub(super) fn put_evaluation(&mut self, eval: &Evaluation) -> Result<(), redb::Error> {
        use helios_core::EvalStatus;
        self.put_row(Topic::Evaluation, &eval.id, &encode(eval))?;
        self.evals_by_job.insert(index_key(&eval.job_name, &eval.id).as_str(), [].as_slice())?;
        if eval.status == EvalStatus::Pending {
            // The row holds the time it waits for, if any: the scheduler skips it unread.
            let waits = eval.wait_until.map(|t| t.0.to_be_bytes());
            self.pending_evaluations.insert(eval.id.as_str(), waits.as_ref().map_or(&[][..], |w| &w[..]))?;
        } else {
            self.pending_evaluations.remove(eval.id.as_str())?;
        }
        // One that waits to reschedule but also could not place something is retried by a
        // cluster change too, as a blocked one is (`retry_blocked`).
        let waiting_and_blocked = eval.wait_until.is_some() && !eval.failed_placements.is_empty();
        if eval.status == EvalStatus::Blocked || (eval.status == EvalStatus::Pending && waiting_and_blocked) {
            self.blocked_jobs.insert(eval.job_name.as_str(), eval.id.as_bytes())?;
        } else {
            // Only while blocked: retrying then scans just the jobs still waiting.
            let listed =
                self.blocked_jobs.get(eval.job_name.as_str())?.is_some_and(|id| id.value() == eval.id.as_bytes());
            if listed || eval.status == EvalStatus::Complete {
                self.blocked_jobs.remove(eval.job_name.as_str())?;
            }
        }
        Ok(())
    }
}
