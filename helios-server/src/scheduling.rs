//! The leader's scheduling loop: evaluations in, plans committed through Raft.
//!
//! While this server leads it works in rounds: it takes pending evaluations oldest first (one per
//! job), reads the state they need once, runs the pure scheduler (`helios_core::scheduler`) for
//! each, counting every plan's placements before planning the next, and proposes all the plans,
//! each with its evaluation's outcome (`ApplyPlan`), so Raft commits them together. The state
//! machine refuses a plan that no longer fits; its evaluation stays pending and the next round
//! plans it again on fresh state. Node changes arrive as evaluations committed together
//! with the change itself (`Command::SetNodeStatus`, `Command::RegisterNode`), so a leader change
//! cannot lose them.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::time::Duration;

use helios_core::command::PlanApplied;
use helios_core::deployment::Deployment;
use helios_core::scheduler::{schedule, StateView};
use helios_core::{Allocation, Command, EvalStatus, EvalTrigger, Evaluation, Job, Node, Plan, Resources};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use redb::ReadTransaction;

use crate::clock;
use crate::cluster::{expect_answer, Cluster, ClusterError};
use crate::store::apply::reserves_room;
use crate::store::{read, StoreError};

/// At most this many evaluations are planned in one round: one read of the state, then their
/// plans go to Raft together.
const MAX_ROUND: usize = 128;
/// A round also ends once its plans place this many allocations: smaller rounds keep Raft
/// messages and state machine batches moderate, and let followers apply one round while the
/// leader plans the next.
const MAX_ROUND_PLACEMENTS: usize = 8_192;

/// One consistent read of what the scheduler needs for one round's jobs.
struct Snapshot {
    /// The applied index this read reflects (the plan records it; see `ApplyPlan`).
    index: u64,
    jobs: HashMap<String, Job>,
    nodes: Vec<Node>,
    allocations: HashMap<String, Vec<Allocation>>,
    usage: HashMap<String, Resources>,
    ports: read::HostPorts,
    /// The cluster's stored format can hold delayed evaluations (`StateView::delays_reschedules`).
    delays: bool,
    /// Each job's latest deployment.
    deployments: HashMap<String, Deployment>,
}

impl Snapshot {
    fn read(txn: &ReadTransaction, job_names: &BTreeSet<String>) -> Result<Snapshot, StoreError> {
        let mut jobs = HashMap::new();
        let mut allocations = HashMap::new();
        let mut deployments = HashMap::new();
        for name in job_names {
            if let Some(job) = read::job(txn, name)? {
                jobs.insert(name.clone(), job);
            }
            if let Some(deployment) = read::latest_deployment(txn, name)? {
                deployments.insert(name.clone(), deployment);
            }
            allocations.insert(name.clone(), read::allocations(txn, Some(name), None)?);
        }
        Ok(Snapshot {
            index: read::applied_index(txn)?,
            jobs,
            nodes: read::nodes(txn)?,
            allocations,
            usage: read::node_usage(txn)?,
            ports: read::host_ports(txn)?,
            delays: read::stored_format(txn)? >= DELAYED_EVALUATIONS_FORMAT,
            deployments,
        })
    }

    /// Counts a plan's stops and placements as done, so the round's later plans neither reuse
    /// the room it takes nor miss the room it frees. (If the plan is refused, later plans may
    /// be refused too and are simply planned again.)
    fn assume(&mut self, plan: &Plan) {
        let empty = Vec::new();
        let existing = self.allocations.get(&plan.job_name).unwrap_or(&empty);
        let by_id: HashMap<&str, &Allocation> = existing.iter().map(|a| (a.id.as_str(), a)).collect();
        for stop in &plan.stops {
            let Some(alloc) = by_id.get(stop.alloc_id.as_str()).copied() else { continue };
            if reserves_room(alloc) {
                let r = self.usage.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
                *r = r.minus(alloc.resources);
            }
            // Ports stay held until the allocation has finished, unless the stop finishes it.
            if alloc.holds_host_ports() && !stop.applied_to(alloc).holds_host_ports() {
                for port in &alloc.host_ports {
                    self.ports.remove(&(alloc.node_id.clone(), *port));
                }
            }
        }
        for alloc in &plan.placements {
            let r = self.usage.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
            *r = r.plus(alloc.resources);
            for port in &alloc.host_ports {
                self.ports.insert((alloc.node_id.clone(), *port), alloc.id.clone());
            }
        }
    }
}

impl StateView for Snapshot {
    fn index(&self) -> u64 {
        self.index
    }
    fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    fn allocations_of_job(&self, job_name: &str) -> Vec<&Allocation> {
        self.allocations.get(job_name).map(|a| a.iter().collect()).unwrap_or_default()
    }
    fn node_usage(&self, node_id: &str) -> Resources {
        self.usage.get(node_id).copied().unwrap_or(Resources::ZERO)
    }
    fn host_port_holder(&self, node_id: &str, port: u16) -> Option<&str> {
        self.ports.get(&(node_id.to_string(), port)).map(String::as_str)
    }
    fn delays_reschedules(&self) -> bool {
        self.delays
    }
    fn deployment(&self, job_name: &str) -> Option<&Deployment> {
        self.deployments.get(job_name)
    }
}

/// The first stored format whose evaluations can wait (`Evaluation::wait_until`).
pub const DELAYED_EVALUATIONS_FORMAT: u32 = 7;

/// What the scheduler would do if `job` were submitted now, planned on the state `txn` reads
/// and not proposed (`job plan`). Returns the plan, the stored job (if any), and whether the
/// submission would make a new version.
pub fn dry_run(
    txn: &ReadTransaction,
    mut job: Job,
    now: helios_core::Timestamp,
) -> io::Result<(Plan, Vec<Allocation>, Option<Job>)> {
    let mut snapshot = Snapshot::read(txn, &BTreeSet::from([job.name.clone()]))?;
    let stored = snapshot.jobs.remove(&job.name);
    let changed = stored.as_ref().is_none_or(|s| s.stopped || !s.same_spec(&job));
    job.version = match &stored {
        Some(s) if !changed => s.version,
        Some(s) => s.version + 1,
        None => 0,
    };
    job.stopped = false;
    if changed && read::stored_format(txn)? >= helios_core::command::DEPLOYMENTS_FORMAT {
        // The deployment the submission would start (its canaries, say), as the state machine would.
        let allocs = snapshot.allocations.get(&job.name).map_or(&[][..], Vec::as_slice);
        match Deployment::for_version(&job, "plan", now, allocs) {
            Some(deployment) => snapshot.deployments.insert(job.name.clone(), deployment),
            None => snapshot.deployments.remove(&job.name),
        };
    }
    snapshot.jobs.insert(job.name.clone(), job.clone());
    let eval = Evaluation::new("plan".into(), &job.name, job.priority, EvalTrigger::JobRegister, now);
    let mut count = 0;
    let plan = schedule(&snapshot, &eval, now, &mut || {
        count += 1;
        format!("planned-{count}")
    });
    let existing = snapshot.allocations.remove(&job.name).unwrap_or_default();
    Ok((plan, existing, stored))
}

/// Runs for the server's lifetime; works only while this server leads.
pub async fn run(cluster: Cluster) {
    let mut metrics = cluster.raft.metrics();
    loop {
        let leading = metrics.borrow_watched().state == ServerState::Leader;
        if !leading {
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        }
        match round(&cluster).await {
            // More may be waiting: go on at once.
            Ok(Round::Progress) => continue,
            Ok(Round::Idle) => {}
            // Every plan was refused: the state changed under them. Plan again, but not in a
            // tight loop (each refusal is itself a Raft entry, so the wake-up below is immediate).
            Ok(Round::Refused) => tokio::time::sleep(REFUSED_BACKOFF).await,
            Err(e) => tracing::warn!(error = %e, "scheduling round failed; retrying"),
        }
        // Wake on any progress (an applied entry may be a new evaluation), or poll.
        let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
    }
}

/// What a round did.
enum Round {
    /// Nothing was pending.
    Idle,
    /// Some plan was applied: more may be waiting.
    Progress,
    /// Every plan was refused.
    Refused,
}

/// Pause after a round whose plans were all refused.
const REFUSED_BACKOFF: Duration = Duration::from_millis(50);

/// Plans up to `MAX_ROUND` pending evaluations, at most one per job, on one read of the state,
/// and commits their plans. A refused plan leaves its evaluation pending: the next round plans
/// it again on fresh state.
async fn round(cluster: &Cluster) -> Result<Round, ClusterError> {
    let started = std::time::Instant::now();
    let now = clock::now();
    let evals = cluster.read_local(move |txn| read::pending_evaluations(txn, MAX_ROUND, now)).await?;
    if evals.is_empty() {
        return Ok(Round::Idle);
    }
    let jobs: BTreeSet<String> = evals.iter().map(|e| e.job_name.clone()).collect();
    let mut snapshot = cluster.read_local(move |txn| Snapshot::read(txn, &jobs)).await?;
    let mut commands = Vec::with_capacity(evals.len());
    let mut placements = 0;
    let mut planned = 0;
    for eval in &evals {
        if placements >= MAX_ROUND_PLACEMENTS {
            break;
        }
        let plan = schedule(&snapshot, eval, now, &mut clock::new_id);
        snapshot.assume(&plan);
        placements += plan.placements.len();
        planned += 1;
        // Room the plan frees wakes blocked jobs when it is applied (`StateTables::retry_blocked`).
        let outcome = outcome(eval, &plan, now);
        commands.push(Command::ApplyPlan { plan, eval: outcome });
    }
    // Proposed together, so Raft commits them in one batch. Only as leader: a deposed leader's
    // plan must not reach the new one by forwarding.
    let outcomes: Vec<EvalStatus> = commands
        .iter()
        .map(|c| match c {
            Command::ApplyPlan { eval, .. } => eval.status,
            _ => EvalStatus::Pending,
        })
        .collect();
    let responses = futures::future::join_all(commands.into_iter().map(|c| cluster.propose_as_leader(c))).await;
    let mut applied = false;
    for ((eval, response), outcome) in evals[..planned].iter().zip(responses).zip(outcomes) {
        match expect_answer::<PlanApplied>(response?)? {
            Ok(PlanApplied { placed, stopped }) => {
                applied = true;
                metrics::counter!("helios_scheduler_placements_total").increment(u64::from(placed));
                metrics::counter!("helios_scheduler_evaluations_total", "status" => outcome.as_str()).increment(1);
                tracing::debug!(eval = %eval.id, job = %eval.job_name, placed, stopped, "plan applied");
            }
            Err(r) => {
                metrics::counter!("helios_scheduler_plan_rejections_total").increment(1);
                tracing::info!(eval = %eval.id, reason = %r.message, "plan refused; planning again");
            }
        }
    }
    metrics::histogram!("helios_scheduler_round_seconds").record(started.elapsed().as_secs_f64());
    Ok(if applied { Round::Progress } else { Round::Refused })
}

/// The evaluation as its plan leaves it.
fn outcome(eval: &Evaluation, plan: &Plan, now: helios_core::Timestamp) -> Evaluation {
    let mut outcome = eval.clone();
    outcome.modified_at = now;
    outcome.failed_placements = plan.failed_placements.clone();
    outcome.wait_until = plan.revisit_at;
    if let Some(at) = plan.revisit_at {
        // Planned again then (also retrying what failed to place).
        outcome.status = EvalStatus::Pending;
        outcome.status_description = format!(
            "{} placed, {} stopped; planned again at {}: {}",
            plan.placements.len(),
            plan.stops.len(),
            at.to_rfc3339(),
            plan.revisit_reason
        );
    } else if !plan.blocked() {
        outcome.status = EvalStatus::Complete;
        outcome.status_description = format!("{} placed, {} stopped", plan.placements.len(), plan.stops.len());
    } else {
        outcome.status = EvalStatus::Blocked;
        outcome.status_description = "some allocations could not be placed; retried when the cluster changes".into();
    }
    outcome
}
