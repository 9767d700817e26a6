//! Garbage collection: which records the cluster may forget, and when (Nomad's core GC).
//!
//! The leader finds candidates with these rules and proposes them by id (`Command::
//! CollectGarbage`); the state machine applies the same rules again to each before deleting it,
//! so a record that changed in between (a job registered again, an allocation that restarted)
//! is kept. Ages are measured against cutoffs carried in the command, so every replica decides
//! alike.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, Allocation};
use crate::eval::{EvalStatus, Evaluation};
use crate::job::{Job, JobStatus, JobType};
use crate::node::{Node, NodeStatus};
use crate::time::Timestamp;

/// How long finished records are kept (Nomad's `*_gc_threshold`), and how many job versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub eval_ms: u64,
    pub job_ms: u64,
    pub node_ms: u64,
    pub job_max_versions: u32,
}

impl Default for Thresholds {
    /// Nomad's defaults: evaluations 1 h, jobs and allocations 4 h, nodes 24 h, 6 versions.
    fn default() -> Thresholds {
        Thresholds { eval_ms: 3_600_000, job_ms: 4 * 3_600_000, node_ms: 24 * 3_600_000, job_max_versions: 6 }
    }
}

/// Records that last changed at or before these times may be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutoffs {
    pub evals: Timestamp,
    pub allocs: Timestamp,
    pub jobs: Timestamp,
    pub nodes: Timestamp,
    /// Versions kept per job (the newest; the current one and any an allocation runs always).
    pub job_max_versions: u32,
}

impl Thresholds {
    pub fn cutoffs(&self, now: Timestamp) -> Cutoffs {
        let before = |ms: u64| Timestamp(now.as_millis().saturating_sub(ms));
        Cutoffs {
            evals: before(self.eval_ms),
            allocs: before(self.job_ms),
            jobs: before(self.job_ms),
            nodes: before(self.node_ms),
            job_max_versions: self.job_max_versions,
        }
    }

    /// `system gc`: everything finished, whatever its age.
    pub fn forced(&self, now: Timestamp) -> Cutoffs {
        Cutoffs { evals: now, allocs: now, jobs: now, nodes: now, job_max_versions: self.job_max_versions }
    }
}

/// The records one `CollectGarbage` command names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    pub evals: Vec<String>,
    pub allocs: Vec<String>,
    pub jobs: Vec<String>,
    pub versions: Vec<(String, u64)>,
    pub nodes: Vec<String>,
}

impl Garbage {
    pub fn len(&self) -> usize {
        self.evals.len() + self.allocs.len() + self.jobs.len() + self.versions.len() + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one `CollectGarbage` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    pub evals: u64,
    pub allocs: u64,
    pub jobs: u64,
    pub versions: u64,
    pub nodes: u64,
}

impl Collected {
    pub fn add(&mut self, other: Collected) {
        self.evals += other.evals;
        self.allocs += other.allocs;
        self.jobs += other.jobs;
        self.versions += other.versions;
        self.nodes += other.nodes;
    }
}

/// A finished evaluation, old enough or of a job that no longer exists. Pending evaluations are
/// the scheduler's work list and are never collected; a blocked one only once its job is gone
/// (nothing will retry it then).
pub fn eval_collectable(eval: &Evaluation, job_exists: bool, cutoffs: &Cutoffs) -> bool {
    let finished = matches!(eval.status, EvalStatus::Complete | EvalStatus::Failed | EvalStatus::Canceled);
    (finished && (eval.modified_at <= cutoffs.evals || !job_exists))
        || (eval.status == EvalStatus::Blocked && !job_exists)
}

/// A finished allocation that holds nothing on its node, old enough or of a job that no longer
/// exists (a purged job's allocations go as soon as they finish). While its job lives, an
/// allocation of the job's current version that the scheduler still reads is kept: a batch
/// slot that completed (it is done, not to be run again) and a failure not yet replaced (its
/// slot's reschedule waits on it; a replacement carries the history on, `next_allocation`). They
/// are bounded by the job's count (a system job's failures, by its nodes and four per node);
/// the job's own collection takes them.
pub fn alloc_collectable(alloc: &Allocation, job: Option<&Job>, cutoffs: &Cutoffs) -> bool {
    let still_read = job.is_some_and(|job| {
        let current = alloc.job_version == job.version;
        // A failure waiting for its replacement, of this version or of one that changed only
        // counts (the scheduler reads those too).
        let waiting_failure = alloc.client_status == AllocClientStatus::Failed
            && alloc.next_allocation.is_none()
            && (current
                || job
                    .task_groups
                    .iter()
                    .any(|g| g.name == alloc.task_group && g.fingerprint() == alloc.group_fingerprint));
        let finished_batch_slot =
            current && job.job_type == JobType::Batch && alloc.client_status == AllocClientStatus::Complete;
        !job.stopped && (waiting_failure || finished_batch_slot)
    });
    alloc.is_terminal()
        && !alloc.holds_host_ports()
        && !still_read
        && (alloc.modified_at <= cutoffs.allocs || job.is_none())
}

/// A dead job (a finished batch job, or a stopped one) whose allocations all finished before
/// the cutoff: collected whole, with its versions, allocations and evaluations. A dead system
/// or service job that was not stopped is not collected: it may be waiting for nodes.
pub fn job_collectable(job: &Job, allocs: &[Allocation], cutoffs: &Cutoffs) -> bool {
    job.status == JobStatus::Dead
        && (job.stopped || job.job_type == JobType::Batch)
        && job.submitted_at <= cutoffs.jobs
        && allocs.iter().all(|a| a.is_terminal() && !a.holds_host_ports() && a.modified_at <= cutoffs.jobs)
}

/// The versions of a job to forget: all but the newest `job_max_versions`, never the current one
/// nor one an existing allocation was placed from (its agent reads the spec from it).
pub fn versions_to_drop(versions: &[u64], current: u64, in_use: &BTreeSet<u64>, cutoffs: &Cutoffs) -> Vec<u64> {
    let mut sorted = versions.to_vec();
    sorted.sort_unstable();
    let keep_from = sorted.len().saturating_sub(cutoffs.job_max_versions.max(1) as usize);
    sorted[..keep_from].iter().copied().filter(|v| *v != current && !in_use.contains(v)).collect()
}

/// A node down since before the cutoff with no unfinished allocation.
pub fn node_collectable(node: &Node, has_unfinished_allocs: bool, cutoffs: &Cutoffs) -> bool {
    node.status == NodeStatus::Down && node.status_updated_at <= cutoffs.nodes && !has_unfinished_allocs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{AllocClientStatus, AllocDesiredStatus};
    use crate::eval::EvalTrigger;

    fn cutoffs(at: u64) -> Cutoffs {
        Cutoffs {
            evals: Timestamp(at),
            allocs: Timestamp(at),
            jobs: Timestamp(at),
            nodes: Timestamp(at),
            job_max_versions: 2,
        }
    }

    fn alloc(client: AllocClientStatus, desired: AllocDesiredStatus, modified: u64, ports: Vec<u16>) -> Allocation {
        Allocation {
            host_ports: ports,
            desired_status: desired,
            client_status: client,
            modified_at: Timestamp(modified),
            ..Allocation::for_test("a", "n")
        }
    }

    #[test]
    fn only_finished_evaluations_go_and_only_once_old_unless_their_job_is_gone() {
        let mut eval = Evaluation::new("e".into(), "j", 50, EvalTrigger::JobRegister, Timestamp(10));
        for status in [EvalStatus::Pending, EvalStatus::Blocked] {
            eval.status = status;
            assert!(!eval_collectable(&eval, true, &cutoffs(100)), "{status:?}");
        }
        assert!(eval_collectable(&eval, false, &cutoffs(0)), "blocked, of a purged job: nothing retries it");
        eval.status = EvalStatus::Pending;
        assert!(!eval_collectable(&eval, false, &cutoffs(100)), "the scheduler completes it");
        eval.status = EvalStatus::Complete;
        assert!(eval_collectable(&eval, true, &cutoffs(10)));
        assert!(!eval_collectable(&eval, true, &cutoffs(9)), "too young");
        assert!(eval_collectable(&eval, false, &cutoffs(9)), "its job was purged");
    }

    #[test]
    fn allocations_go_once_finished_and_free_of_their_ports() {
        use AllocClientStatus::*;
        use AllocDesiredStatus::*;
        let mut service = Job::exec("j", "true", vec![]);
        service.set_type(JobType::Service);
        service.version = 1;
        let old = |client, desired, modified| {
            let mut a = alloc(client, desired, modified, vec![]);
            a.job_version = 0;
            a
        };
        let job = Some(&service);
        assert!(!alloc_collectable(&alloc(Running, Run, 0, vec![]), None, &cutoffs(100)));
        assert!(alloc_collectable(&old(Complete, Run, 5), job, &cutoffs(5)));
        assert!(!alloc_collectable(&old(Complete, Run, 6), job, &cutoffs(5)), "too young");
        assert!(alloc_collectable(&alloc(Failed, Run, 6, vec![8080]), None, &cutoffs(5)), "ports freed once finished");
        // Stopped before its agent reported it: it may still be starting, and holds its port.
        assert!(!alloc_collectable(&alloc(Pending, Stop, 0, vec![8080]), None, &cutoffs(5)));
        assert!(alloc_collectable(&alloc(Pending, Stop, 0, vec![]), None, &cutoffs(5)));
    }

    /// The scheduler reads a live job's current-version failures (each counts against its slot's
    /// reschedules) and, for a batch job, its completed slots (done, not to be run again).
    #[test]
    fn what_the_scheduler_still_reads_of_a_live_job_is_kept() {
        use AllocClientStatus::*;
        use AllocDesiredStatus::*;
        let mut batch = Job::exec("j", "true", vec![]);
        batch.set_type(JobType::Batch);
        batch.version = 3;
        let current = |client| {
            let mut a = alloc(client, Run, 0, vec![]);
            a.job_version = 3;
            a
        };
        assert!(!alloc_collectable(&current(Complete), Some(&batch), &cutoffs(100)), "a finished batch slot");
        assert!(!alloc_collectable(&current(Failed), Some(&batch), &cutoffs(100)), "a failure waiting to be replaced");
        let replaced = Allocation { next_allocation: Some("b".into()), ..current(Failed) };
        assert!(alloc_collectable(&replaced, Some(&batch), &cutoffs(100)), "a replaced failure: its history moved on");
        assert!(alloc_collectable(&current(Lost), Some(&batch), &cutoffs(100)), "lost: replaced, not counted");
        let mut previous = current(Failed);
        previous.job_version = 2;
        assert!(alloc_collectable(&previous, Some(&batch), &cutoffs(100)), "an older version's");
        let mut service = batch.clone();
        service.set_type(JobType::Service);
        assert!(alloc_collectable(&current(Complete), Some(&service), &cutoffs(100)));
        assert!(!alloc_collectable(&current(Failed), Some(&service), &cutoffs(100)));
        batch.stopped = true;
        assert!(alloc_collectable(&current(Complete), Some(&batch), &cutoffs(100)), "a stopped job's");
        assert!(alloc_collectable(&current(Failed), None, &cutoffs(100)), "a purged job's");
    }

    #[test]
    fn versions_keep_the_newest_the_current_and_those_in_use() {
        let in_use = BTreeSet::from([1]);
        assert_eq!(versions_to_drop(&[0, 1, 2, 3, 4], 4, &in_use, &cutoffs(0)), [0, 2]);
        assert_eq!(versions_to_drop(&[0, 1, 2, 3, 4], 0, &BTreeSet::new(), &cutoffs(0)), [1, 2]);
        assert!(versions_to_drop(&[3, 4], 4, &BTreeSet::new(), &cutoffs(0)).is_empty());
    }

    #[test]
    fn a_job_goes_whole_when_dead_stopped_or_batch_and_all_its_allocations_are_old() {
        let mut job = Job::exec("j", "true", vec![]);
        job.status = JobStatus::Dead;
        job.set_type(JobType::Service);
        let done = [alloc(AllocClientStatus::Complete, AllocDesiredStatus::Stop, 5, vec![])];
        assert!(!job_collectable(&job, &done, &cutoffs(10)), "a dead service job that was not stopped");
        job.stopped = true;
        assert!(job_collectable(&job, &done, &cutoffs(10)));
        assert!(!job_collectable(&job, &done, &cutoffs(4)), "an allocation finished after the cutoff");
        let running = [alloc(AllocClientStatus::Running, AllocDesiredStatus::Run, 0, vec![])];
        assert!(!job_collectable(&job, &running, &cutoffs(10)));
    }
}
