//! Concurrent clients that keep submitting, updating and stopping jobs, and the ledger of what
//! each one saw acknowledged.
//!
//! Each writer owns its jobs, so the operations on one job are sequential and the ledger knows
//! their order. Every submission carries a new generation number in the task's environment
//! (`CHAOS_GEN`), which makes each one a new job version and lets the checker find it in the
//! job's version history. A call that fails or times out has an unknown outcome: it may have been
//! committed or not, and the checker accepts either.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_core::{Job, JobType, Resources};
use tokio::sync::watch;

use crate::api::{Servers, CALL_TIMEOUT};
use crate::rng::Rng;

/// What each task asks of its node (agents advertise room for the whole workload on two).
pub const TASK_CPU_MHZ: u32 = 100;
pub const TASK_MEMORY_MB: u32 = 32;
pub const MAX_COUNT: u64 = 3;

#[derive(Clone, Debug)]
pub enum OpKind {
    Submit { gen: u64, count: u32 },
    Stop,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The server said it was committed (with the job version it created, for submissions).
    Acked { version: Option<u64> },
    /// An error or no answer in time: committed or not, nobody knows.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub kind: OpKind,
    pub outcome: Outcome,
    pub server: u64,
    pub sent_at: Instant,
    /// When the answer arrived (for the minority check: none may come from a cut-off server).
    pub answered_at: Instant,
}

/// A write sent to a server cut off from the majority.
#[derive(Clone, Debug)]
pub struct Probe {
    pub name: String,
    pub server: u64,
    pub sent_at: Instant,
    pub acked_at: Option<Instant>,
}

#[derive(Default)]
pub struct Ledger {
    /// Job name -> its operations, in the order they were issued.
    pub jobs: BTreeMap<String, Vec<Op>>,
    pub probes: Vec<Probe>,
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The job a submission of generation `gen` registers.
pub fn job_spec(name: &str, gen: u64, count: u32) -> Job {
    let mut job = Job::exec(name, "sleep", vec!["3600".to_string()]);
    job.set_type(JobType::Service);
    let group = &mut job.task_groups[0];
    group.count = count;
    let task = &mut group.tasks[0];
    task.env.insert("CHAOS_GEN".to_string(), gen.to_string());
    task.resources = Resources { cpu_mhz: TASK_CPU_MHZ, memory_mb: TASK_MEMORY_MB };
    task.kill_timeout_secs = 2;
    job
}

/// The generation a stored job version carries.
pub fn gen_of(job: &pb::Job) -> Option<u64> {
    job.task_groups.first()?.tasks.first()?.env.get("CHAOS_GEN")?.parse().ok()
}

/// One writer: `jobs` jobs of its own, an operation every 50-300 ms until `stop` turns true.
pub async fn writer(
    servers: Servers,
    ledger: SharedLedger,
    id: usize,
    jobs: usize,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) {
    let names: Vec<String> = (0..jobs).map(|k| format!("w{id}-job{k}")).collect();
    let mut gens = vec![0u64; jobs];
    let ids = servers.ids();
    while !*stop.borrow() {
        let k = rng.index(jobs);
        let name = &names[k];
        let submitted_last = ledger
            .lock()
            .unwrap()
            .jobs
            .get(name)
            .and_then(|ops| ops.last())
            .is_some_and(|op| matches!(op.kind, OpKind::Submit { .. }));
        let server = ids[rng.index(ids.len())];
        let kind = if submitted_last && rng.chance(25) {
            OpKind::Stop
        } else {
            gens[k] += 1;
            OpKind::Submit { gen: gens[k], count: rng.between(1, MAX_COUNT) as u32 }
        };
        let sent_at = Instant::now();
        let outcome = perform(&servers, server, name, &kind).await;
        let op = Op { kind, outcome, server, sent_at, answered_at: Instant::now() };
        ledger.lock().unwrap().jobs.entry(name.clone()).or_default().push(op);
        let pause = rng.duration(Duration::from_millis(50), Duration::from_millis(300));
        let _ = tokio::time::timeout(pause, stop.changed()).await;
    }
}

async fn perform(servers: &Servers, server: u64, name: &str, kind: &OpKind) -> Outcome {
    let call = async {
        match kind {
            OpKind::Submit { gen, count } => {
                let job = job_to_pb(&job_spec(name, *gen, *count));
                let reply = servers
                    .jobs(server)
                    .submit_job(pb::SubmitJobRequest { job: Some(job), ..Default::default() })
                    .await?;
                Ok::<_, tonic::Status>(Some(reply.into_inner().version))
            }
            OpKind::Stop => {
                servers
                    .jobs(server)
                    .stop_job(pb::StopJobRequest { name: name.to_string(), purge: false, ..Default::default() })
                    .await?;
                Ok(None)
            }
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(version)) => Outcome::Acked { version },
        Ok(Err(status)) => Outcome::Unknown(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Outcome::Unknown("no answer in time".to_string()),
    }
}

/// While a server is cut off from the majority (`isolated` names it and when the cut was in
/// place), sends it a stream of new jobs. None may be acknowledged: it cannot commit alone.
pub async fn prober(
    servers: Servers,
    ledger: SharedLedger,
    mut isolated: watch::Receiver<Option<(u64, Instant)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    while !*stop.borrow() {
        let Some((server, _)) = *isolated.borrow_and_update() else {
            tokio::select! {
                _ = isolated.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        n += 1;
        let name = format!("probe-{n}");
        let job = job_to_pb(&job_spec(&name, 1, 0));
        let sent_at = Instant::now();
        let mut client = servers.jobs(server);
        let call = client.submit_job(pb::SubmitJobRequest { job: Some(job), ..Default::default() });
        let acked = matches!(tokio::time::timeout(Duration::from_secs(2), call).await, Ok(Ok(_)));
        let acked_at = acked.then(Instant::now);
        ledger.lock().unwrap().probes.push(Probe { name, server, sent_at, acked_at });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
