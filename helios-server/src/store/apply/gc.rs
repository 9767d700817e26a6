//! Applying `CollectGarbage`: each record it names is checked against `helios_core::gc` again,
//! as the tables are now, and deleted with every index entry that points at it.

use helios_core::events::Topic;
use std::collections::BTreeSet;

use helios_core::gc::{self, Collected, Cutoffs, Garbage};
use helios_core::{Allocation, CommandResponse, EvalStatus, Evaluation, Job, Node};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::decode;
use crate::store::tables::{index_id, index_key, index_range, job_version_key, job_version_range};

impl StateTables<'_> {
    pub(super) fn collect_garbage(
        &mut self,
        cutoffs: Cutoffs,
        garbage: Garbage,
    ) -> Result<CommandResponse, redb::Error> {
        let mut collected = Collected::default();
        for name in &garbage.jobs {
            collected.add(self.collect_job(name, &cutoffs)?);
        }
        for id in &garbage.allocs {
            let Some(alloc) = get::<Allocation>(&self.allocations, id)? else { continue };
            let job = get::<Job>(&self.jobs, &alloc.job_name)?;
            if gc::alloc_collectable(&alloc, job.as_ref(), &cutoffs) {
                self.delete_allocation(&alloc)?;
                collected.allocs += 1;
            }
        }
        for id in &garbage.evals {
            let Some(eval) = get::<Evaluation>(&self.evaluations, id)? else { continue };
            let job_exists = self.jobs.get(eval.job_name.as_str())?.is_some();
            if gc::eval_collectable(&eval, job_exists, &cutoffs) {
                self.delete_evaluation(&eval)?;
                collected.evals += 1;
            }
        }
        for (name, version) in &garbage.versions {
            if self.droppable_versions(name, &cutoffs)?.contains(version) {
                self.job_versions.remove(job_version_key(name, *version).as_str())?;
                self.touched(Topic::Job);
                self.delete_deployment_of_version(name, *version)?;
                collected.versions += 1;
            }
        }
        for id in &garbage.nodes {
            let Some(node) = get::<Node>(&self.nodes, id)? else { continue };
            let unfinished = self.allocations_on_node(id)?.iter().any(|a| !a.is_terminal());
            if gc::node_collectable(&node, unfinished, &cutoffs) {
                self.remove_row(Topic::Node, id)?;
                self.node_usage.remove(id.as_str())?;
                self.usage.remove(id.as_str());
                collected.nodes += 1;
            }
        }
        Ok(CommandResponse::GarbageCollected(collected))
    }

    /// A dead job, whole: its allocations, finished evaluations, versions and index entries.
    fn collect_job(&mut self, name: &str, cutoffs: &Cutoffs) -> Result<Collected, redb::Error> {
        let mut collected = Collected::default();
        let Some(job) = get::<Job>(&self.jobs, name)? else { return Ok(collected) };
        let allocs = self.allocations_of_job(name)?;
        if !gc::job_collectable(&job, &allocs, cutoffs) {
            return Ok(collected);
        }
        for alloc in &allocs {
            self.delete_allocation(alloc)?;
            collected.allocs += 1;
        }
        // Pending evaluations stay: the scheduler finds the job gone and completes them, and a
        // later pass collects them.
        for eval in self.evaluations_of_job(name)? {
            if eval.status != EvalStatus::Pending && eval.status != EvalStatus::Blocked {
                self.delete_evaluation(&eval)?;
                collected.evals += 1;
            }
        }
        collected.versions += self.forget_versions_of(name)?;
        self.remove_row(Topic::Job, name)?;
        self.job_alloc_counts.remove(name)?;
        self.counts.remove(name);
        self.blocked_jobs.remove(name)?;
        collected.jobs += 1;
        Ok(collected)
    }

    /// The versions of job `name` that may go now (`gc::versions_to_drop`).
    fn droppable_versions(&self, name: &str, cutoffs: &Cutoffs) -> Result<Vec<u64>, redb::Error> {
        let Some(job) = get::<Job>(&self.jobs, name)? else { return Ok(Vec::new()) };
        let (first, last) = job_version_range(name);
        let mut versions = Vec::new();
        let mut latest_stable = None;
        for row in self.job_versions.range(first.as_str()..=last.as_str())? {
            let (_, value) = row?;
            let version: Job = decode(value.value()).map_err(redb::StorageError::Io)?;
            versions.push(version.version);
            if version.stable {
                latest_stable = Some(version.version);
            }
        }
        let mut in_use: BTreeSet<u64> = self.allocations_of_job(name)?.iter().map(|a| a.job_version).collect();
        // The latest stable version is what auto_revert goes back to.
        in_use.extend(latest_stable);
        Ok(gc::versions_to_drop(&versions, job.version, &in_use, cutoffs))
    }

    fn allocations_on_node(&self, node_id: &str) -> Result<Vec<Allocation>, redb::Error> {
        let (from, to) = index_range(node_id);
        let mut out = Vec::new();
        for row in self.allocs_by_node.range(from.as_str()..to.as_str())? {
            if let Some(alloc) = get::<Allocation>(&self.allocations, index_id(row?.0.value()))? {
                out.push(alloc);
            }
        }
        Ok(out)
    }

    fn evaluations_of_job(&self, name: &str) -> Result<Vec<Evaluation>, redb::Error> {
        let (from, to) = index_range(name);
        let mut out = Vec::new();
        for row in self.evals_by_job.range(from.as_str()..to.as_str())? {
            if let Some(eval) = get::<Evaluation>(&self.evaluations, index_id(row?.0.value()))? {
                out.push(eval);
            }
        }
        Ok(out)
    }

    /// Removes a finished allocation and its index entries. A finished allocation reserves no
    /// room, holds no port and counts for nothing, so those indexes are already clear of it.
    fn delete_allocation(&mut self, alloc: &Allocation) -> Result<(), redb::Error> {
        self.remove_row(Topic::Allocation, &alloc.id)?;
        self.allocs_by_job.remove(index_key(&alloc.job_name, &alloc.id).as_str())?;
        self.allocs_by_node.remove(index_key(&alloc.node_id, &alloc.id).as_str())?;
        // Its agent's watch is told: the allocation leaves its list (and would be stopped there,
        // were it running after all).
        self.touched.entry(alloc.node_id.clone()).or_default().insert(alloc.id.clone());
        Ok(())
    }

    fn delete_evaluation(&mut self, eval: &Evaluation) -> Result<(), redb::Error> {
        self.remove_row(Topic::Evaluation, &eval.id)?;
        self.evals_by_job.remove(index_key(&eval.job_name, &eval.id).as_str())?;
        self.pending_evaluations.remove(eval.id.as_str())?;
        Ok(())
    }
}
