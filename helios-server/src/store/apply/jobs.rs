//! Jobs: registering (a changed spec is a new version), stopping and purging, their status, and
//! retrying blocked jobs when the cluster changes.

use helios_core::command::{JobDeregistered, JobRegistered};
use helios_core::events::Topic;
use helios_core::{
    AllocClientStatus, AllocDesiredStatus, CommandResponse, Evaluation, Job, JobStatus, RejectionKind, Timestamp,
};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::encode;
use crate::store::tables::job_version_key;

impl StateTables<'_> {
    pub(super) fn register_job(&mut self, mut job: Job, eval: Evaluation) -> Result<CommandResponse, redb::Error> {
        let previous: Option<Job> = get(&self.jobs, &job.name)?;
        if let Some(prev) = &previous {
            if prev.same_spec(&job) && !prev.stopped {
                return Ok(CommandResponse::JobRegistered(JobRegistered {
                    version: prev.version,
                    changed: false,
                    eval_id: None,
                }));
            }
        }
        job.version = previous.map_or(0, |p| p.version + 1);
        job.status = JobStatus::Pending;
        job.stopped = false;
        // Stable once its own deployment succeeds (a reverted-to spec comes with its old mark).
        job.stable = false;
        let bytes = encode(&job);
        self.put_row(Topic::Job, &job.name, &bytes)?;
        self.job_versions.insert(job_version_key(&job.name, job.version).as_str(), bytes.as_slice())?;
        self.touched(Topic::Job);
        self.start_deployment(&job, &eval.id, eval.created_at)?;
        self.put_evaluation(&eval)?;
        Ok(CommandResponse::JobRegistered(JobRegistered {
            version: job.version,
            changed: true,
            eval_id: Some(eval.id),
        }))
    }

    /// Blocked evaluations go back to pending: what blocked them may have changed.
    pub(super) fn retry_blocked(&mut self, now: Timestamp, why: &str) -> Result<(), redb::Error> {
        use helios_core::EvalStatus;
        let mut blocked = Vec::new();
        for row in self.blocked_jobs.iter()? {
            let (_, eval_id) = row?;
            blocked.push(String::from_utf8_lossy(eval_id.value()).into_owned());
        }
        for id in blocked {
            if let Some(mut eval) = get::<Evaluation>(&self.evaluations, &id)? {
                // A waiting one is taken up now too: what it could not place may fit now.
                if eval.status == EvalStatus::Blocked || eval.wait_until.is_some() {
                    eval.status = EvalStatus::Pending;
                    eval.wait_until = None;
                    eval.status_description = why.to_string();
                    eval.modified_at = now;
                    self.put_evaluation(&eval)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn deregister_job(
        &mut self,
        name: &str,
        purge: bool,
        eval: Evaluation,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(mut job) = get::<Job>(&self.jobs, name)? else {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("job {name:?} not found")));
        };
        if purge {
            // Stop its allocations now: a job submitted again under this name starts over at
            // version 0, and must not mistake these for its own.
            self.stop_allocations_of(name, now)?;
            self.blocked_jobs.remove(name)?;
            self.remove_row(Topic::Job, name)?;
            self.forget_versions_of(name)?;
        } else {
            self.cancel_deployment(name, "Cancelled because job is stopped", now)?;
            job.stopped = true;
            job.submitted_at = job.submitted_at.max(now);
            if !self.has_live_allocations(name)? {
                job.status = JobStatus::Dead;
            }
            self.put_row(Topic::Job, name, &encode(&job))?;
        }
        self.put_evaluation(&eval)?;
        Ok(CommandResponse::JobDeregistered(JobDeregistered { eval_id: eval.id }))
    }

    /// A job runs while any of its allocations runs; a batch job whose allocations of the current
    /// version have all finished, and none still to run, is dead.
    pub(super) fn refresh_job_status(&mut self, job_name: &str) -> Result<(), redb::Error> {
        let Some(mut job) = get::<Job>(&self.jobs, job_name)? else { return Ok(()) };
        let counts = self.counts_of(job_name)?;
        let finished_batch = || -> Result<bool, redb::Error> {
            if job.job_type != helios_core::JobType::Batch || counts.live > 0 {
                return Ok(false);
            }
            // Only reached when the last live allocation finishes, so the scan is rare.
            let complete = self
                .allocations_of_job(job_name)?
                .iter()
                .filter(|a| a.job_version == job.version && a.client_status == AllocClientStatus::Complete)
                .count();
            Ok(complete as u64 >= job.desired_allocations())
        };
        let status = if counts.running > 0 {
            JobStatus::Running
        } else if job.stopped || finished_batch()? {
            JobStatus::Dead
        } else {
            job.status
        };
        if status != job.status {
            job.status = status;
            self.put_row(Topic::Job, job_name, &encode(&job))?;
        }
        Ok(())
    }

    pub(super) fn stop_allocations_of(&mut self, job_name: &str, now: Timestamp) -> Result<(), redb::Error> {
        for mut alloc in self.allocations_of_job(job_name)? {
            if alloc.desired_status == AllocDesiredStatus::Run {
                alloc.desired_status = AllocDesiredStatus::Stop;
                alloc.desired_description = "job purged".to_string();
                alloc.modified_at = now;
                self.put_allocation(&alloc)?;
            }
        }
        Ok(())
    }

    pub(super) fn has_live_allocations(&self, job_name: &str) -> Result<bool, redb::Error> {
        Ok(self.counts_of(job_name)?.live > 0)
    }
}
