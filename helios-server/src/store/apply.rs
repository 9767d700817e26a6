//! Applying commands to the state tables. Deterministic by construction: the only inputs are the
//! command (which carries its IDs and timestamps) and the tables; no clock, no randomness, no I/O
//! besides the transaction itself.

use helios_core::{
    AllocClientStatus, Allocation, Command, CommandResponse, Evaluation, Job, JobStatus, Rejection,
    RejectionKind,
};
use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{decode, encode};
use super::tables::{job_version_key, ALLOCATIONS, EVALUATIONS, JOBS, JOB_VERSIONS};

pub fn apply_command(
    txn: &WriteTransaction,
    command: Command,
) -> Result<CommandResponse, redb::Error> {
    match command {
        Command::RegisterJob { job, eval } => register_job(txn, job, eval),
        Command::DeregisterJob {
            job_name,
            purge,
            eval,
            now,
        } => deregister_job(txn, &job_name, purge, eval, now),
    }
}

fn get<T: serde::de::DeserializeOwned>(
    table: &Table<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, redb::Error> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(v.value()).map_err(redb::StorageError::Io)?)),
    }
}

fn register_job(
    txn: &WriteTransaction,
    mut job: Job,
    eval: Evaluation,
) -> Result<CommandResponse, redb::Error> {
    let mut jobs = txn.open_table(JOBS)?;
    let previous: Option<Job> = get(&jobs, &job.name)?;
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
    jobs.insert(job.name.as_str(), bytes.as_slice())?;
    txn.open_table(JOB_VERSIONS)?.insert(
        job_version_key(&job.name, job.version).as_str(),
        bytes.as_slice(),
    )?;
    txn.open_table(EVALUATIONS)?
        .insert(eval.id.as_str(), encode(&eval).as_slice())?;
    Ok(CommandResponse::JobRegistered {
        version: job.version,
        changed: true,
        eval_id: Some(eval.id),
    })
}

fn deregister_job(
    txn: &WriteTransaction,
    name: &str,
    purge: bool,
    eval: Evaluation,
    now: helios_core::Timestamp,
) -> Result<CommandResponse, redb::Error> {
    let mut jobs = txn.open_table(JOBS)?;
    let Some(mut job) = get::<Job>(&jobs, name)? else {
        return Ok(CommandResponse::Rejected(Rejection {
            kind: RejectionKind::NotFound,
            message: format!("job {name:?} not found"),
        }));
    };
    if purge {
        jobs.remove(name)?;
        let mut versions = txn.open_table(JOB_VERSIONS)?;
        let prefix = job_version_key(name, 0);
        let last = job_version_key(name, u64::MAX);
        versions.retain_in(prefix.as_str()..=last.as_str(), |_, _| false)?;
    } else {
        job.stopped = true;
        job.submitted_at = job.submitted_at.max(now);
        if !has_live_allocations(txn, name)? {
            job.status = JobStatus::Dead;
        }
        jobs.insert(name, encode(&job).as_slice())?;
    }
    txn.open_table(EVALUATIONS)?
        .insert(eval.id.as_str(), encode(&eval).as_slice())?;
    Ok(CommandResponse::JobDeregistered { eval_id: eval.id })
}

fn has_live_allocations(txn: &WriteTransaction, job_name: &str) -> Result<bool, redb::Error> {
    let allocs = txn.open_table(ALLOCATIONS)?;
    for row in allocs.iter()? {
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
