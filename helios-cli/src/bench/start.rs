//! `helios-cli bench start`: submit -> process (or container) started, against the cluster's real
//! agents.
//!
//! Each worker submits a batch job of `--count` one-task allocations running `true` (a process,
//! or a container of `--image` with `--driver docker`) and polls until every allocation's task
//! has its `started_at`; each latency is that time minus the time just before the submit. Both
//! clocks are this machine's (run it against a local cluster), in milliseconds. With `--node`
//! the job runs on that node only: `--jobs 1 --count 100 --node 1` measures how many tasks one
//! agent starts per second. The jobs are purged at the end.
//!
//! Where the time goes is printed too, per stage, from the times the cluster records: submit ->
//! allocation created (Raft commit of the job, scheduling, Raft commit of the plan), created ->
//! the agent's `Received` event (the watch), and received -> started (the agent and its driver).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::Conn;
use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use helios_api::convert::job_to_pb;
use helios_api::pages::every_page;
use helios_api::pb;
use helios_core::{Constraint, ConstraintOperator, DockerConfig, ExecConfig, Job, Resources, TaskDriver};

use super::{histogram, now_ms, record, summary};
use crate::connect::Servers;
use crate::job::{client, DriverArg};

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Jobs to submit.
    #[arg(long, default_value_t = 200)]
    jobs: u32,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Allocations per job.
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(long, value_enum, default_value_t = DriverArg::Exec)]
    driver: DriverArg,
    /// The image for --driver docker (local: no registry is needed); it must have `true`.
    #[arg(long)]
    image: Option<String>,
    /// Run every job on this node only.
    #[arg(long)]
    node: Option<String>,
}

/// A task that has not started this long after its submit counts as a failure of the run.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(servers: &Servers, args: StartArgs) -> Result<()> {
    if args.jobs == 0 || args.concurrency == 0 || args.count == 0 {
        bail!("--jobs, --concurrency and --count must be > 0");
    }
    let template = template_job(&args)?;
    let prefix = format!("start-{}", std::process::id());
    let channel = servers.connect().await?;
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (channel, next, prefix, jobs) = (channel.clone(), next.clone(), prefix.clone(), args.jobs);
        let template = template.clone();
        workers.spawn(async move {
            let mut stages = Stages::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(stages);
                }
                let mut job = template.clone();
                job.name = format!("{prefix}-{i}");
                for timeline in submit_and_wait(channel.clone(), job).await? {
                    stages.record(&timeline);
                }
            }
        });
    }
    let mut all = Stages::default();
    let mut failure = None;
    while let Some(done) = workers.join_next().await {
        match done? {
            Ok(stages) => all.add(stages)?,
            Err(e) => failure = Some(e),
        }
    }
    let elapsed = started.elapsed();
    let mut jobs = client(channel);
    for i in 0..args.jobs {
        let name = format!("{prefix}-{i}");
        // Jobs never submitted (after a failure) are simply not found.
        let _ = jobs.stop_job(pb::StopJobRequest { name, purge: true, ..Default::default() }).await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let what = if matches!(args.driver, DriverArg::Docker) { "container" } else { "process" };
    println!(
        "{} jobs x {} allocations, concurrency {}, in {:.2}s ({:.1} tasks started/s): submit -> {what} started {}",
        args.jobs,
        args.count,
        args.concurrency,
        elapsed.as_secs_f64(),
        all.total.len() as f64 / elapsed.as_secs_f64(),
        summary(&all.total)
    );
    println!("  submit -> allocation created: {}", summary(&all.placed));
    println!("  created -> agent received:    {}", summary(&all.delivered));
    println!("  received -> {what} started:  {}", summary(&all.started));
    Ok(())
}

/// When one allocation's task passed each stage, in ms since the epoch (the cluster's clocks:
/// the servers' for `created`, the agent's for the rest; one machine in a local cluster).
struct Timeline {
    submitted: u64,
    created: u64,
    received: u64,
    started: u64,
}

/// The latency histograms: the whole way, and each stage of it.
struct Stages {
    total: Histogram<u64>,
    placed: Histogram<u64>,
    delivered: Histogram<u64>,
    started: Histogram<u64>,
}

impl Default for Stages {
    fn default() -> Stages {
        Stages { total: histogram(), placed: histogram(), delivered: histogram(), started: histogram() }
    }
}

impl Stages {
    fn record(&mut self, t: &Timeline) {
        let ms = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
        record(&mut self.total, ms(t.submitted, t.started));
        record(&mut self.placed, ms(t.submitted, t.created));
        record(&mut self.delivered, ms(t.created, t.received));
        record(&mut self.started, ms(t.received, t.started));
    }

    fn add(&mut self, other: Stages) -> Result<()> {
        self.total.add(other.total)?;
        self.placed.add(other.placed)?;
        self.delivered.add(other.delivered)?;
        self.started.add(other.started)?;
        Ok(())
    }
}

/// The job every worker submits (under its own name).
fn template_job(args: &StartArgs) -> Result<Job> {
    let mut job = Job::exec("template", "true", Vec::new());
    let group = &mut job.task_groups[0];
    group.count = args.count;
    // Small tasks, so that `--count` of them fit one node.
    group.tasks[0].resources = Resources { cpu_mhz: 10, memory_mb: 16 };
    match args.driver {
        DriverArg::Exec => {}
        DriverArg::RawExec => group.tasks[0].driver = TaskDriver::RawExec(ExecConfig::new("true", Vec::new())),
        DriverArg::Docker => {
            let Some(image) = &args.image else { bail!("--driver docker needs --image IMAGE") };
            group.tasks[0].driver = TaskDriver::Docker(DockerConfig {
                command: Some("true".to_string()),
                ..DockerConfig::for_image(image)
            });
        }
    }
    if let Some(node) = &args.node {
        job.constraints.push(Constraint {
            attribute: "node.id".to_string(),
            operator: ConstraintOperator::Equal,
            value: node.clone(),
        });
    }
    Ok(job)
}

/// Submits `job` and waits until every allocation's task has started: their timelines.
async fn submit_and_wait(channel: Conn, job: Job) -> Result<Vec<Timeline>> {
    let name = job.name.clone();
    let count = usize::try_from(job.task_groups[0].count).unwrap_or(usize::MAX);
    let submitted_ms = now_ms();
    client(channel.clone())
        .submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() })
        .await
        .with_context(|| format!("submitting {name}"))?;
    let allocs = crate::alloc::client(channel);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let request = pb::ListAllocationsRequest { job_name: Some(name.clone()), node_id: None, ..Default::default() };
        let listed = every_page(request, |r| {
            let mut allocs = allocs.clone();
            async move { allocs.list_allocations(r).await }
        })
        .await
        .context("listing allocations")?;
        let started: Vec<Timeline> = listed.iter().filter_map(|a| timeline(submitted_ms, a)).collect();
        if started.len() >= count {
            return Ok(started);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of job {name}'s {count} tasks started within {START_TIMEOUT:?}; are agents running?",
                started.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The allocation's timeline, once its (first) task has started.
fn timeline(submitted: u64, alloc: &pb::Allocation) -> Option<Timeline> {
    use helios_api::convert::{time_of, timestamp_from_pb};
    let started_at = |t: &pb::TaskState| timestamp_from_pb(t.start_time.as_ref()).map(|t| t.0);
    let task = alloc.task_states.values().filter(|t| started_at(t).is_some()).min_by_key(|t| started_at(t))?;
    let started = started_at(task)?;
    let received = task
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::Received)
        .map_or(started, |e| time_of(e.event_time.as_ref()).0);
    Some(Timeline { submitted, created: time_of(alloc.create_time.as_ref()).0, received, started })
}
