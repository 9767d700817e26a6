//! `helios-cli bench submit`: a closed-loop load generator for job submissions.
//!
//! `--concurrency` workers each keep one submission in flight until `--jobs` have been
//! acknowledged. Every acknowledgement is a durable Raft commit on a majority.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_core::Job;

use super::{histogram, record, summary};
use crate::connect::Servers;
use crate::job::client;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// HTTP/2 connections to spread the workers over.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Job name prefix; defaults to one unique to this run.
    #[arg(long)]
    prefix: Option<String>,
}

pub async fn run(servers: &Servers, args: SubmitArgs) -> Result<()> {
    let SubmitArgs { concurrency, jobs, connections, prefix } = args;
    if concurrency == 0 || jobs == 0 || connections == 0 {
        bail!("--concurrency, --jobs and --connections must be > 0");
    }
    let prefix = prefix.unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let mut channels = Vec::new();
    for _ in 0..connections.min(concurrency) {
        channels.push(servers.dedicated().await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let channel = channels[usize::try_from(w).unwrap_or(0) % channels.len()].clone();
        let (next, prefix) = (next.clone(), prefix.clone());
        workers.push(tokio::spawn(async move {
            let mut jobs_client = client(channel);
            let mut latencies = histogram();
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                let job = Job::exec(&format!("{prefix}-{i}"), "true", Vec::new());
                let t = Instant::now();
                match jobs_client
                    .submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() })
                    .await
                {
                    Ok(_) => record(&mut latencies, t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = histogram();
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await?;
        all.add(h)?;
        errors += e;
    }
    let elapsed = started.elapsed();
    println!(
        "submitted {} jobs in {:.2}s with concurrency {concurrency}: {:.0} jobs/s; latency {}; {errors} errors",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        summary(&all),
    );
    if errors > 0 {
        bail!("{errors} submissions failed");
    }
    Ok(())
}
