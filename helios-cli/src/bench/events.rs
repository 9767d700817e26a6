//! `helios-cli bench events`: what event subscribers cost and how fast changes reach them.
//!
//! 1. Submission throughput (as `bench submit`) with no subscriber, then with `--subscribers`
//!    streams of every job event open, then with none again, side by side: the runs before and
//!    after show how much the growing tables alone slow submissions, and the subscribers' run
//!    is compared with their mean.
//! 2. Event latency, during the second run: from just before a submission to its job's event
//!    reaching a subscriber, next to the submission's own latency (to its commit).
//! 3. A blocking read's wake-up: `--probes` times, a `GetJob` waits on a job; from just before a
//!    new version is submitted to the read's answer, next to that submission's latency.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::event_service_client::EventServiceClient;
use helios_api::wire::{subscribe_headers, EventHeadersBatch};
use helios_core::Job;

use super::{histogram, record, summary};
use crate::connect::{Conn, Servers};
use crate::job::client;

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[arg(long, default_value_t = 100)]
    subscribers: u64,
    /// Jobs submitted in each of the two runs.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// HTTP/2 connections for the submissions, and as many again for the subscribers.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Blocking reads timed.
    #[arg(long, default_value_t = 200)]
    probes: u64,
    /// Subscribers decode every event's payload, as a client that reads the objects does; by
    /// default they read each event's index, topic, type and key and skip its payload, so that
    /// what they cost this machine, which the servers share, is mostly the servers' own.
    #[arg(long)]
    decode_payloads: bool,
}

/// When each job's submission started, by name: the first subscriber times its event against it.
type Starts = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(servers: &Servers, args: EventsArgs) -> Result<()> {
    if args.concurrency == 0 || args.jobs == 0 || args.connections == 0 {
        bail!("--concurrency, --jobs and --connections must be > 0");
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(servers.dedicated().await?);
    }
    let run = format!("bench-events-{}", std::process::id());

    let (alone, alone_latency) = submit_all(&channels, &args, &format!("{run}-alone"), None).await?;
    print_run("no subscriber", args.jobs, alone, &alone_latency);

    let starts: Starts = Arc::default();
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let mut subscribers = Vec::new();
    let opened = Arc::new(AtomicU64::new(0));
    for s in 0..args.subscribers {
        let channel = servers.dedicated().await?;
        let timing = (s == 0).then(|| (starts.clone(), latency.clone()));
        let counted = Counted { opened: opened.clone(), delivered: delivered.clone(), timing };
        subscribers.push(tokio::spawn(subscriber(channel, counted, args.decode_payloads)));
    }
    // Every stream starts from the log's latest index when it opens: none may open after the
    // first submission, or it would miss that job.
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < args.subscribers {
        if Instant::now() > deadline || subscribers.iter().any(|s| s.is_finished()) {
            bail!("{} of {} subscribers could subscribe", opened.load(Ordering::Relaxed), args.subscribers);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shared = format!("{run}-shared");
    let (with, with_latency) = submit_all(&channels, &args, &shared, Some(&starts)).await?;
    println!(
        "{} subscribers: {} jobs in {:.2}s: {:.0} jobs/s ({:.0}% of none); submit latency {}",
        args.subscribers,
        args.jobs,
        with.as_secs_f64(),
        args.jobs as f64 / with.as_secs_f64(),
        100.0 * alone.as_secs_f64() / with.as_secs_f64(),
        summary(&with_latency)
    );
    // Every subscriber gets every job's event: wait for the last of them, then stop.
    let expected = args.jobs * args.subscribers;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &subscribers {
        s.abort();
    }
    let got = delivered.load(Ordering::Relaxed);
    let latency = latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    println!("event latency (submit start -> a subscriber has the job's event): {}", summary(&latency));
    if got < expected {
        bail!("subscribers received {got} of {expected} job events");
    }

    let (after, after_latency) = submit_all(&channels, &args, &format!("{run}-after"), None).await?;
    print_run("no subscriber again", args.jobs, after, &after_latency);
    let none = (alone.as_secs_f64() + after.as_secs_f64()) / 2.0;
    println!(
        "with {} subscribers: {:.0}% of the mean throughput with none",
        args.subscribers,
        100.0 * none / with.as_secs_f64()
    );

    blocking_reads(&channels[0], &run, args.probes).await
}

fn print_run(label: &str, jobs: u64, elapsed: Duration, latency: &Histogram<u64>) {
    let (secs, rate) = (elapsed.as_secs_f64(), jobs as f64 / elapsed.as_secs_f64());
    println!("{label}: {jobs} jobs in {secs:.2}s: {rate:.0} jobs/s; submit latency {}", summary(latency));
}

/// Submits `args.jobs` jobs named `prefix-N`; the elapsed time and the submit latencies.
async fn submit_all(
    channels: &[Conn],
    args: &EventsArgs,
    prefix: &str,
    starts: Option<&Starts>,
) -> Result<(Duration, Histogram<u64>)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let channel = channels[usize::try_from(w).unwrap_or(0) % channels.len()].clone();
        let (next, prefix, jobs, starts) = (next.clone(), prefix.to_string(), args.jobs, starts.cloned());
        workers.push(tokio::spawn(async move {
            let mut jobs_client = client(channel);
            let mut latencies = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let job = Job::exec(&format!("{prefix}-{i}"), "true", Vec::new());
                let t = Instant::now();
                if let Some(starts) = &starts {
                    starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(job.name.clone(), t);
                }
                jobs_client
                    .submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() })
                    .await?;
                record(&mut latencies, t.elapsed());
            }
        }));
    }
    let mut all = histogram();
    for w in workers {
        all.add(w.await??)?;
    }
    Ok((started.elapsed(), all))
}

/// What the subscribers count: how many opened, and how many job registrations reached them;
/// the one given `timing` records each event's latency from its submission's start.
struct Counted {
    opened: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    timing: Option<(Starts, Arc<Mutex<Histogram<u64>>>)>,
}

impl Counted {
    /// An upserted job `key` arrived at `now`; the first for a key is its registration.
    fn upserted(&self, key: &str, seen: &mut HashSet<String>, now: Instant) {
        if !key.contains("-shared-") || !seen.insert(key.to_string()) {
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some((starts, latency)) = &self.timing {
            let started = starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
            if let Some(started) = started {
                record(&mut latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner), now - started);
            }
        }
    }
}

/// One subscriber of every job event (from now), counting the registrations it receives,
/// decoding each event whole (`decode`) or skimming its header.
async fn subscriber(channel: Conn, counted: Counted, decode: bool) {
    let topics = vec![pb::TopicFilter { topic: pb::EventTopic::Job as i32, keys: Vec::new() }];
    let request = pb::SubscribeRequest { topics, from_index: None };
    if decode {
        if let Ok(reply) = EventServiceClient::new(channel).subscribe(request).await {
            receive(reply.into_inner(), &counted).await;
        }
    } else if let Ok(stream) = subscribe_headers(channel, request).await {
        receive(stream, &counted).await;
    }
}

/// A batch of events, whole or skimmed: the keys of the objects it upserted.
trait Upserted {
    fn upserted(&self) -> impl Iterator<Item = &str>;
}

impl Upserted for pb::EventBatch {
    fn upserted(&self) -> impl Iterator<Item = &str> {
        self.events.iter().filter(|e| e.r#type == pb::EventType::Upserted as i32).map(|e| e.key.as_str())
    }
}

impl Upserted for EventHeadersBatch {
    fn upserted(&self) -> impl Iterator<Item = &str> {
        self.events.iter().filter(|e| e.r#type == pb::EventType::Upserted as i32).map(|e| e.key.as_str())
    }
}

/// Counts an opened stream's registrations until it ends.
async fn receive<B: Upserted>(mut stream: tonic::Streaming<B>, counted: &Counted) {
    counted.opened.fetch_add(1, Ordering::Relaxed);
    let mut seen = HashSet::new();
    while let Ok(Some(batch)) = stream.message().await {
        let now = Instant::now();
        for key in batch.upserted() {
            counted.upserted(key, &mut seen, now);
        }
    }
}

/// A blocking read of a job waits; a new version is submitted; how long until the read answers.
async fn blocking_reads(channel: &Conn, run: &str, probes: u64) -> Result<()> {
    let name = format!("{run}-probe");
    let mut jobs = client(channel.clone());
    let mut job = Job::exec(&name, "true", Vec::new());
    let mut index = jobs
        .submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() })
        .await?
        .into_inner()
        .index;
    let (mut woke, mut committed) = (histogram(), histogram());
    for i in 0..probes {
        let mut reader = client(channel.clone());
        let wait = Some(helios_api::convert::duration_to_pb(Duration::from_secs(30)));
        let request = pb::GetJobRequest { name: name.clone(), min_index: Some(index), wait };
        let read = tokio::spawn(async move { reader.get_job(request).await.map(|r| (r.into_inner(), Instant::now())) });
        // Time for the read to reach the server and wait there (this tool's only pause).
        tokio::time::sleep(Duration::from_millis(20)).await;
        job.meta.insert("probe".to_string(), i.to_string());
        let t = Instant::now();
        jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await?;
        record(&mut committed, t.elapsed());
        let (answer, at) = read.await??;
        record(&mut woke, at - t);
        index = answer.index;
    }
    println!("submit latency (commit) {}", summary(&committed));
    println!("blocking read wake-up (submit start -> the waiting read's answer): {}", summary(&woke));
    Ok(())
}
