//! `helios-cli bench start`: submit -> process started, against the cluster's real agents.
//!
//! Each worker submits a one-task exec batch job (`true`) and polls its allocation until the
//! task's `started_at` is set; the latency is that time minus the time just before the submit.
//! Both clocks are this machine's (run it against a local cluster), in milliseconds. The jobs
//! are purged at the end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_core::Job;
use tonic::transport::Channel;

use super::{histogram, now_ms, record, summary};
use crate::connect::Servers;
use crate::job::client;

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Jobs to submit.
    #[arg(long, default_value_t = 200)]
    jobs: u32,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
}

/// A task that has not started this long after its submit counts as a failure of the run.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(servers: &Servers, args: StartArgs) -> Result<()> {
    if args.jobs == 0 || args.concurrency == 0 {
        bail!("--jobs and --concurrency must be > 0");
    }
    let prefix = format!("start-{}", std::process::id());
    let channel = servers.connect().await?;
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (channel, next, prefix, jobs) = (channel.clone(), next.clone(), prefix.clone(), args.jobs);
        workers.spawn(async move {
            let mut latencies = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let latency = submit_and_wait(channel.clone(), &format!("{prefix}-{i}")).await?;
                record(&mut latencies, latency);
            }
        });
    }
    let mut all = histogram();
    let mut failure = None;
    while let Some(done) = workers.join_next().await {
        match done? {
            Ok(h) => all.add(h)?,
            Err(e) => failure = Some(e),
        }
    }
    let elapsed = started.elapsed();
    let mut jobs = client(channel);
    for i in 0..args.jobs {
        let name = format!("{prefix}-{i}");
        // Jobs never submitted (after a failure) are simply not found.
        let _ = jobs.stop_job(pb::StopJobRequest { name, purge: true }).await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    println!(
        "{} jobs, concurrency {}, in {:.2}s: submit -> process started {}",
        all.len(),
        args.concurrency,
        elapsed.as_secs_f64(),
        summary(&all)
    );
    Ok(())
}

async fn submit_and_wait(channel: Channel, name: &str) -> Result<Duration> {
    let job = Job::exec(name, "true", Vec::new());
    let submitted_ms = now_ms();
    client(channel.clone())
        .submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)) })
        .await
        .with_context(|| format!("submitting {name}"))?;
    let mut allocs = crate::alloc::client(channel);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let request = pb::ListAllocationsRequest { job_name: Some(name.to_string()), node_id: None };
        let listed = allocs.list_allocations(request).await.context("listing allocations")?.into_inner();
        let started =
            listed.allocations.iter().flat_map(|a| a.task_states.values()).filter_map(|t| t.started_at_ms).min();
        if let Some(started_ms) = started {
            return Ok(Duration::from_millis(started_ms.saturating_sub(submitted_ms)));
        }
        if Instant::now() > deadline {
            bail!("job {name}'s task did not start within {START_TIMEOUT:?}; are agents running?");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
