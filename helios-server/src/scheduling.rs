//! The leader's scheduling loop: evaluations in, plans committed through Raft.
//!
//! While this server leads it takes pending evaluations oldest first, runs the pure scheduler
//! (`helios_core::scheduler`) on a consistent read of the tables, and proposes the plan with the
//! evaluation's outcome (`ApplyPlan`). The state machine refuses a plan that no longer fits; the
//! loop then plans again on fresh state. Node changes arrive as evaluations committed together
//! with the change itself (`Command::SetNodeStatus`, `Command::RegisterNode`), so a leader change
//! cannot lose them.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use helios_core::scheduler::{schedule, StateView};
use helios_core::{
    AllocDesiredStatus, Allocation, Command, CommandResponse, EvalStatus, EvalTrigger, Evaluation, Job, Node, Resources,
};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use redb::ReadTransaction;

use crate::clock;
use crate::cluster::{Cluster, ClusterError};
use crate::store::read;

/// A plan refused this many times in a row leaves its evaluation pending for the next round.
const MAX_ATTEMPTS: usize = 5;

/// One consistent read of what the scheduler needs for one job.
struct Snapshot {
    /// The applied index this read reflects (the plan records it; see `ApplyPlan`).
    index: u64,
    job: Option<Job>,
    nodes: Vec<Node>,
    allocations: Vec<Allocation>,
    usage: HashMap<String, Resources>,
}

impl Snapshot {
    fn read(txn: &ReadTransaction, job_name: &str) -> io::Result<Snapshot> {
        let all = read::allocations(txn, None, None)?;
        let mut usage: HashMap<String, Resources> = HashMap::new();
        for a in all.iter().filter(|a| !a.is_terminal() && a.desired_status == AllocDesiredStatus::Run) {
            let r = usage.entry(a.node_id.clone()).or_insert(Resources { cpu_mhz: 0, memory_mb: 0 });
            r.cpu_mhz = r.cpu_mhz.saturating_add(a.resources.cpu_mhz);
            r.memory_mb = r.memory_mb.saturating_add(a.resources.memory_mb);
        }
        Ok(Snapshot {
            index: read::applied_index(txn)?,
            job: read::job(txn, job_name)?,
            nodes: read::nodes(txn)?,
            allocations: all.into_iter().filter(|a| a.job_name == job_name).collect(),
            usage,
        })
    }
}

impl StateView for Snapshot {
    fn index(&self) -> u64 {
        self.index
    }
    fn job(&self, name: &str) -> Option<&Job> {
        self.job.as_ref().filter(|j| j.name == name)
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    fn allocations_of_job(&self, job_name: &str) -> Vec<&Allocation> {
        self.allocations.iter().filter(|a| a.job_name == job_name).collect()
    }
    fn node_usage(&self, node_id: &str) -> Resources {
        self.usage.get(node_id).copied().unwrap_or(Resources { cpu_mhz: 0, memory_mb: 0 })
    }
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
        if let Err(e) = round(&cluster).await {
            tracing::warn!(error = %e, "scheduling round failed; retrying");
        }
        // Wake on any progress (an applied entry may be a new evaluation), or poll.
        let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
    }
}

async fn round(cluster: &Cluster) -> Result<(), ClusterError> {
    let pending = cluster.read_local(read::pending_evaluations).await?;
    for eval in pending {
        if !cluster.raft.is_leader() {
            break;
        }
        process(cluster, eval).await?;
    }
    Ok(())
}

async fn process(cluster: &Cluster, eval: Evaluation) -> Result<(), ClusterError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let job_name = eval.job_name.clone();
        let snapshot = cluster.read_local(move |txn| Snapshot::read(txn, &job_name)).await?;
        let now = clock::now();
        let plan = schedule(&snapshot, &eval, now, &mut clock::new_id);
        let mut outcome = eval.clone();
        outcome.modified_at = now;
        outcome.failed_placements = plan.failed_placements.clone();
        outcome.status = if plan.failed_placements.is_empty() { EvalStatus::Complete } else { EvalStatus::Blocked };
        outcome.status_description = if plan.failed_placements.is_empty() {
            format!("{} placed, {} stopped", plan.placements.len(), plan.stops.len())
        } else {
            "some allocations could not be placed; retried when the cluster changes".to_string()
        };
        // Room freed here may be what a blocked job waits for.
        let follow_ups = if plan.stops.is_empty() {
            Vec::new()
        } else {
            let blocked = cluster.read_local(read::blocked_jobs).await?;
            blocked
                .into_iter()
                .filter(|(job, _)| *job != eval.job_name)
                .map(|(job, priority)| {
                    Evaluation::new(clock::new_id(), &job, priority, EvalTrigger::RetryFailedPlacement, now)
                })
                .collect()
        };
        // Only as leader: a deposed leader's plan must not reach the new one by forwarding.
        let response = cluster.propose_as_leader(Command::ApplyPlan { plan, eval: outcome, follow_ups }).await?;
        match response {
            CommandResponse::PlanApplied { placed, stopped } => {
                tracing::info!(eval = %eval.id, job = %eval.job_name, placed, stopped, "plan applied");
                return Ok(());
            }
            CommandResponse::Rejected(r) => {
                tracing::info!(eval = %eval.id, attempt, reason = %r.message, "plan refused; planning again");
            }
            other => return Err(ClusterError::Internal(format!("unexpected answer to a plan: {other:?}"))),
        }
    }
    tracing::warn!(eval = %eval.id, "plan refused {MAX_ATTEMPTS} times; the evaluation stays pending for the next round");
    Ok(())
}
