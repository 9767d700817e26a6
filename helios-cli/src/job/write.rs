//! Submitting jobs safely: every submission carries a request id, so an answer lost on the way
//! (a server that went away, a deadline) is asked for again through whichever server answers,
//! without applying the job twice; and a change to a stored job (`job scale`, `deploy`,
//! `undeploy`) is submitted over the version it was made to (`expected_version`), so a
//! concurrent writer's change is never overwritten: the change is made again to the new version.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use helios_api::convert::{job_from_pb, job_to_pb};
use helios_api::pb;
use helios_api::retries::new_request_id;
use helios_core::Job;
use tonic::Code;

use super::{client, monitor, short};
use crate::connect::{status_error, Conn, Servers};

/// How often a submission whose answer was lost is sent again.
const LOST_ANSWER_RETRIES: u32 = 3;
/// How often a change is made again after losing a race to another writer.
const CONFLICT_RETRIES: u32 = 8;

/// A job to submit, and how to watch it settle.
pub struct Submission {
    pub job: Job,
    pub detach: bool,
    /// How many allocations to wait for (None: as many as the nodes allow).
    pub expected: Option<u64>,
}

/// Submits `job`, then (unless `detach`) watches it settle (`monitor`).
pub async fn submit(servers: &Servers, job: Job, detach: bool, expected: Option<u64>) -> Result<()> {
    let request = pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() };
    let (conn, reply) = send(servers, request).await.map_err(status_error)?;
    report(conn, Submission { job, detach, expected }, reply).await
}

/// Reads job `name`, lets `change` make the submission from it, and submits that only if the
/// job is still at the version read. When another writer changed it first (ABORTED), it reads
/// the job again and makes the change again, so concurrent changes all land.
pub async fn change_stored(
    servers: &Servers,
    name: &str,
    mut change: impl FnMut(Job) -> Result<Submission>,
) -> Result<()> {
    for attempt in 0..CONFLICT_RETRIES {
        if attempt > 0 {
            // Writers that raced once would race again in step: each waits a different while.
            let mut byte = [0u8; 1];
            let _ = getrandom::fill(&mut byte);
            let jitter = u64::from(byte[0]);
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + jitter)).await;
        }
        let stored = read(servers, name).await?;
        let version = stored.version;
        let submission = change(stored)?;
        let request = pb::SubmitJobRequest {
            job: Some(job_to_pb(&submission.job)),
            expected_version: Some(version),
            ..Default::default()
        };
        match send(servers, request).await {
            Ok((conn, reply)) => return report(conn, submission, reply).await,
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => return Err(status_error(status)),
        }
    }
    bail!("job {name:?} kept changing while this change was made ({CONFLICT_RETRIES} attempts); try again")
}

/// The stored job `name`, with its version.
pub async fn read(servers: &Servers, name: &str) -> Result<Job> {
    let mut jobs = client(servers.connect().await?);
    let request = pb::GetJobRequest { name: name.to_string(), ..Default::default() };
    let stored = jobs.get_job(request).await.map_err(status_error)?.into_inner();
    let stored = stored.job.ok_or_else(|| anyhow!("the server returned no job"))?;
    // The version is output only: a job read back as a spec does not carry it.
    let version = stored.version;
    let job = job_from_pb(stored).map_err(|e| anyhow!("cannot read job {name:?}: {e}"))?;
    Ok(Job { version, ..job })
}

/// Sends `request` with a fresh request id; an answer lost on the way is asked for again, with
/// the same id, through whichever server answers.
///
/// A cluster in the middle of an upgrade from a format without request ids (before 10) refuses
/// them: the request is then sent as that format took it, and the user is told what it lacks.
pub async fn send(
    servers: &Servers,
    mut request: pb::SubmitJobRequest,
) -> Result<(Conn, pb::SubmitJobResponse), tonic::Status> {
    request.request_id = new_request_id();
    let mut lost = 0;
    loop {
        let conn = servers.connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        match client(conn.clone()).submit_job(request.clone()).await {
            Ok(reply) => return Ok((conn, reply.into_inner())),
            Err(status) if answer_lost(&status) && lost < LOST_ANSWER_RETRIES => {
                lost += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(lost))).await;
            }
            Err(status) if mid_upgrade(&status) && !request.request_id.is_empty() => {
                eprintln!(
                    "note: the cluster is being upgraded (not every server remembers request ids yet): \
                     sent without a request id{}, as before the upgrade",
                    if request.expected_version.is_some() { " or a version check" } else { "" }
                );
                request.request_id.clear();
                request.expected_version = None;
                request.create_only = false;
            }
            Err(status) => return Err(status),
        }
    }
}

/// How servers begin the refusal of request ids and version checks while the cluster's stored
/// format is older than 10 (helios-server's `cluster::CONDITIONS_NEED`).
const REFUSED_MID_UPGRADE: &str = "request ids and version checks need every server to run stored format";

/// The refusal of a request the cluster's stored format cannot hold yet.
fn mid_upgrade(status: &tonic::Status) -> bool {
    status.code() == Code::FailedPrecondition && status.message().contains(REFUSED_MID_UPGRADE)
}

/// Whether the call may have been applied without its answer arriving: the server went away
/// or had no leader for a while, or the deadline passed.
fn answer_lost(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

async fn report(conn: Conn, submission: Submission, reply: pb::SubmitJobResponse) -> Result<()> {
    let Submission { job, detach, expected } = submission;
    if !reply.changed {
        println!("Job {:?} unchanged (version {}); nothing to do", job.name, reply.version);
        return Ok(());
    }
    println!("Job {:?} submitted: version {}, evaluation {}", job.name, reply.version, short(&reply.eval_id));
    if detach {
        return Ok(());
    }
    monitor::watch(conn, &job.name, reply.version, &reply.eval_id, &job, expected).await
}
