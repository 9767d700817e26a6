//! `helios-cli bench place`: placements committed per second, with simulated client agents.
//!
//! Registers `--agents` simulated agents that speak the real agent protocol (register, heartbeat,
//! watch their allocations, report them running) without running anything, then submits
//! `--jobs` service jobs of `--count` allocations each, constrained to those agents. A placement
//! counts when the agent it was placed on receives it: the plan was committed through Raft,
//! applied, and delivered over the agent's watch stream. The jobs are purged at the end.
//!
//! Run it on a fresh cluster: the simulated nodes stay registered (and go down) afterwards.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::Conn;
use anyhow::{bail, Context, Result};
use clap::Args;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_core::{Constraint, ConstraintOperator, Job, JobType, Resources};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::connect::Servers;
use crate::job::client;

#[derive(Args, Debug)]
pub struct PlaceArgs {
    /// Simulated client agents to register.
    #[arg(long, default_value_t = 1000)]
    agents: u32,
    /// Service jobs to submit.
    #[arg(long, default_value_t = 100)]
    jobs: u32,
    /// Allocations per job.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// CPU of each simulated node (each allocation asks for 100 MHz and 64 MB).
    #[arg(long, default_value_t = 16_000)]
    node_cpu_mhz: u32,
    #[arg(long, default_value_t = 65_536)]
    node_memory_mb: u32,
    /// HTTP/2 connections the simulated agents share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// What the simulated agents have seen, shared with the main task.
#[derive(Default)]
struct Progress {
    placed: AtomicU64,
    reported: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    changed: Notify,
}

impl Progress {
    /// Counts an error the agents recovered from, keeping the first for the summary.
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(message);
    }
}

pub async fn run(servers: &Servers, args: PlaceArgs) -> Result<()> {
    if args.agents == 0 || args.jobs == 0 || args.count == 0 || args.connections == 0 {
        bail!("--agents, --jobs, --count and --connections must be > 0");
    }
    let run_id = format!("place-{}", std::process::id());
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(servers.dedicated().await?);
    }
    let progress = Arc::new(Progress::default());

    let started = Instant::now();
    let mut agents = JoinSet::new();
    let mut registered = JoinSet::new();
    for i in 0..args.agents {
        let channel = channels[i as usize % channels.len()].clone();
        let node = simulated_node(&run_id, i, &args);
        let progress = progress.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        agents.spawn(simulated_agent(channel, node, progress, ready_tx));
        registered.spawn(ready_rx);
    }
    while let Some(ready) = registered.join_next().await {
        if ready?.is_err() {
            bail!("a simulated agent could not register: {}", first_error(&mut agents).await);
        }
    }
    println!("registered {} simulated agents in {:.2}s", args.agents, started.elapsed().as_secs_f64());

    let total = u64::from(args.jobs) * u64::from(args.count);
    let started = Instant::now();
    let mut submitted = JoinSet::new();
    for j in 0..args.jobs {
        let mut jobs = client(channels[j as usize % channels.len()].clone());
        let job = bench_job(&format!("{run_id}-{j}"), &run_id, args.count);
        submitted.spawn(async move {
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await
        });
    }
    while let Some(result) = submitted.join_next().await {
        result?.context("submitting a job")?;
    }
    let submit_time = started.elapsed();

    let deadline = started + Duration::from_secs(600);
    let mut last_print = Instant::now();
    let mut placed_at = None;
    loop {
        let notified = progress.changed.notified();
        let placed = progress.placed.load(Ordering::Relaxed);
        let reported = progress.reported.load(Ordering::Relaxed);
        if placed >= total && placed_at.is_none() {
            placed_at = Some(started.elapsed());
        }
        if reported >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {placed} of {total} allocations placed ({reported} reported running) after 10 minutes");
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  {:.0}s: {placed} placed, {reported} reported running", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    let running_at = started.elapsed();
    let placed_at = placed_at.unwrap_or(running_at);
    agents.abort_all();
    if let Some(e) = progress.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
        println!("first agent error: {e}");
    }
    println!(
        "placed {total} allocations ({} jobs x {}) on {} agents in {:.2}s: {:.0} placements/s \
         (committed and delivered to the agents); all submissions acknowledged after {:.2}s; \
         all reported running after {:.2}s; {} agent errors (retried)",
        args.jobs,
        args.count,
        args.agents,
        placed_at.as_secs_f64(),
        total as f64 / placed_at.as_secs_f64(),
        submit_time.as_secs_f64(),
        running_at.as_secs_f64(),
        progress.errors.load(Ordering::Relaxed),
    );

    let mut jobs = client(channels[0].clone());
    for j in 0..args.jobs {
        let name = format!("{run_id}-{j}");
        jobs.stop_job(pb::StopJobRequest { name, purge: true, ..Default::default() })
            .await
            .context("purging a benchmark job")?;
    }
    Ok(())
}

async fn first_error(agents: &mut JoinSet<Result<()>>) -> String {
    while let Some(done) = agents.join_next().await {
        match done {
            Ok(Err(e)) => return format!("{e:#}"),
            Err(e) => return e.to_string(),
            Ok(Ok(())) => {}
        }
    }
    "unknown error".to_string()
}

fn simulated_node(run_id: &str, i: u32, args: &PlaceArgs) -> pb::Node {
    let id = format!("{run_id}-{i}");
    pb::Node {
        hostname: id.clone(),
        id,
        rpc_addr: "127.0.0.1:1".to_string(),
        attributes: BTreeMap::from([("os".to_string(), "linux".to_string())]),
        meta: BTreeMap::from([("helios_bench".to_string(), run_id.to_string())]),
        drivers: vec!["exec".to_string()],
        resources: Some(pb::Resources { cpu_mhz: args.node_cpu_mhz, memory_mb: args.node_memory_mb }),
        ..Default::default()
    }
}

/// A service job that only this run's simulated nodes can take.
fn bench_job(name: &str, run_id: &str, count: u32) -> Job {
    let mut job = Job::exec(name, "sleep", vec!["3600".to_string()]);
    job.set_type(JobType::Service);
    job.constraints.push(Constraint {
        attribute: "meta.helios_bench".to_string(),
        operator: ConstraintOperator::Equal,
        value: run_id.to_string(),
    });
    let group = &mut job.task_groups[0];
    group.name = "work".to_string();
    group.tasks[0].name = "work".to_string();
    group.count = count;
    group.restart = helios_core::RestartPolicy::default_for(JobType::Service);
    group.tasks[0].resources = Resources { cpu_mhz: 100, memory_mb: 64 };
    job
}

/// One simulated agent: registers, heartbeats, and reports every allocation it is given as
/// running, as a real agent does once its tasks start.
async fn simulated_agent(
    channel: Conn,
    node: pb::Node,
    progress: Arc<Progress>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let mut agent = AgentServiceClient::new(channel);
    let node_id = node.id.clone();
    let secret = format!("{node_id}-secret");
    let registered = agent
        .register(pb::RegisterRequest { node: Some(node), secret: secret.clone() })
        .await
        .with_context(|| format!("registering {node_id}"))?
        .into_inner();
    let _ = ready.send(());
    let interval = Duration::from_millis(registered.heartbeat_ttl_ms / 3).max(Duration::from_millis(100));
    let mut heartbeats = agent.clone();
    let (hb_id, hb_secret) = (node_id.clone(), secret.clone());
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let request = pb::HeartbeatRequest { node_id: hb_id.clone(), secret: hb_secret.clone() };
            let _ = heartbeats.heartbeat(request).await;
        }
    });
    // Like a real agent, keep watching through errors (a busy or changing leader): the watch is
    // opened again, and a report is sent again, until it is accepted.
    let mut seen = HashSet::new();
    loop {
        if let Err(e) = watch_and_report(&mut agent, &node_id, &secret, &progress, &mut seen).await {
            progress.error(format!("{node_id}: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if heartbeat.is_finished() {
            bail!("heartbeats of {node_id} stopped");
        }
    }
}

async fn watch_and_report(
    agent: &mut AgentServiceClient<Conn>,
    node_id: &str,
    secret: &str,
    progress: &Progress,
    seen: &mut HashSet<String>,
) -> Result<()> {
    let request = pb::WatchAllocationsRequest { node_id: node_id.to_string(), secret: secret.to_string(), paged: true };
    let mut stream = agent.watch_allocations(request).await?.into_inner();
    while let Some(assigned) = stream.message().await? {
        let new: Vec<String> = assigned
            .allocations
            .into_iter()
            .filter_map(|a| a.allocation)
            .filter(|a| a.desired_status == "run" && seen.insert(a.id.clone()))
            .map(|a| a.id)
            .collect();
        if new.is_empty() {
            continue;
        }
        progress.placed.fetch_add(new.len() as u64, Ordering::Relaxed);
        progress.changed.notify_one();
        let now = super::now_ms();
        for chunk in new.chunks(1000) {
            let updates = chunk.iter().map(|id| running(id, now)).collect();
            let request =
                pb::UpdateAllocationsRequest { node_id: node_id.to_string(), secret: secret.to_string(), updates };
            report(agent, request, progress).await?;
            progress.reported.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            progress.changed.notify_one();
        }
    }
    Ok(())
}

/// Sends a report until it is accepted (at most a minute of retries).
async fn report(
    agent: &mut AgentServiceClient<Conn>,
    request: pb::UpdateAllocationsRequest,
    progress: &Progress,
) -> Result<()> {
    let mut attempts = 0;
    loop {
        match agent.update_allocations(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if attempts < 600 => {
                attempts += 1;
                progress.error(format!("{}: {e}", request.node_id));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn running(alloc_id: &str, now_ms: u64) -> pb::AllocationUpdate {
    use helios_core::{AllocClientStatus, AllocUpdate, TaskEvent, TaskRunState, TaskState, Timestamp};
    let state = TaskState {
        state: TaskRunState::Running,
        failed: false,
        restarts: 0,
        started_at: Some(Timestamp(now_ms)),
        finished_at: None,
        events: vec![TaskEvent {
            time: Timestamp(now_ms),
            kind: helios_core::TaskEventKind::Started.as_str().to_string(),
            message: "simulated".to_string(),
            exit_code: None,
        }],
    };
    helios_api::convert::agent::alloc_update_to_agent(&AllocUpdate {
        alloc_id: alloc_id.to_string(),
        client_status: AllocClientStatus::Running,
        client_description: String::new(),
        task_states: [("work".to_string(), state)].into(),
    })
}
