//! Applying commands to the state tables. Deterministic by construction: the only inputs are the
//! command (which carries its IDs and timestamps) and the tables; no clock, no randomness, no I/O
//! besides the transaction itself.

use helios_core::{
    AllocClientStatus, Allocation, Command, CommandResponse, Evaluation, Job, JobStatus, Rejection,
    RejectionKind, Timestamp,
};
use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{decode, encode};
use super::tables::{job_version_key, ALLOCATIONS, EVALUATIONS, JOBS, JOB_VERSIONS};

type StateTable<'txn> = Table<'txn, &'static str, &'static [u8]>;

/// The state tables, opened once for a whole batch of commands.
pub struct StateTables<'txn> {
    jobs: StateTable<'txn>,
    job_versions: StateTable<'txn>,
    allocations: StateTable<'txn>,
    evaluations: StateTable<'txn>,
}

impl<'txn> StateTables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<StateTables<'txn>, redb::Error> {
        Ok(StateTables {
            jobs: txn.open_table(JOBS)?,
            job_versions: txn.open_table(JOB_VERSIONS)?,
            allocations: txn.open_table(ALLOCATIONS)?,
            evaluations: txn.open_table(EVALUATIONS)?,
        })
    }

    pub fn apply(&mut self, command: Command) -> Result<CommandResponse, redb::Error> {
        match command {
            Command::RegisterJob { job, eval } => self.register_job(job, eval),
            Command::DeregisterJob {
                job_name,
                purge,
                eval,
                now,
            } => self.deregister_job(&job_name, purge, eval, now),
        }
    }

    fn register_job(
        &mut self,
        mut job: Job,
        eval: Evaluation,
    ) -> Result<CommandResponse, redb::Error> {
        let previous: Option<Job> = get(&self.jobs, &job.name)?;
        if let Some(prev) = &previous {
            if prev.same_spec(&job) && !prev.stopped {
                return Ok(CommandResponse::JobRegistered {
                    version: prev.version,
                    changed: false,
                    eval_id: None,
                });
            }
        }
        job.version = previous.map_or(0, |p| p.version + 1);
        job.status = JobStatus::Pending;
        job.stopped = false;
        let bytes = encode(&job);
        self.jobs.insert(job.name.as_str(), bytes.as_slice())?;
        self.job_versions.insert(
            job_version_key(&job.name, job.version).as_str(),
            bytes.as_slice(),
        )?;
        self.evaluations
            .insert(eval.id.as_str(), encode(&eval).as_slice())?;
        Ok(CommandResponse::JobRegistered {
            version: job.version,
            changed: true,
            eval_id: Some(eval.id),
        })
    }

    fn deregister_job(
        &mut self,
        name: &str,
        purge: bool,
        eval: Evaluation,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(mut job) = get::<Job>(&self.jobs, name)? else {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::NotFound,
                message: format!("job {name:?} not found"),
            }));
        };
        if purge {
            self.jobs.remove(name)?;
            let first = job_version_key(name, 0);
            let last = job_version_key(name, u64::MAX);
            self.job_versions
                .retain_in(first.as_str()..=last.as_str(), |_, _| false)?;
        } else {
            job.stopped = true;
            job.submitted_at = job.submitted_at.max(now);
            if !self.has_live_allocations(name)? {
                job.status = JobStatus::Dead;
            }
            self.jobs.insert(name, encode(&job).as_slice())?;
        }
        self.evaluations
            .insert(eval.id.as_str(), encode(&eval).as_slice())?;
        Ok(CommandResponse::JobDeregistered { eval_id: eval.id })
    }

    fn has_live_allocations(&self, job_name: &str) -> Result<bool, redb::Error> {
        for row in self.allocations.iter()? {
            let (_, value) = row?;
            let alloc: Allocation = decode(value.value()).map_err(redb::StorageError::Io)?;
            if alloc.job_name == job_name
                && !alloc.is_terminal()
                && alloc.client_status != AllocClientStatus::Lost
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn get<T: serde::de::DeserializeOwned>(
    table: &StateTable<'_>,
    key: &str,
) -> Result<Option<T>, redb::Error> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(v.value()).map_err(redb::StorageError::Io)?)),
    }
}
