//! Client liveness, tracked by the leader in memory.
//!
//! Heartbeats are not Raft writes: the leader records when each node must be heard from next,
//! and proposes a status change only when a node misses its deadline (`Down`) or comes back
//! (`Ready`). A server that becomes leader gives every node a fresh grace period first, so a
//! failover never marks healthy nodes down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use helios_core::{Command, NodeStatus};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use crate::clock;
use crate::cluster::Cluster;
use crate::store::read;

/// Deadlines by node id, valid for one leadership term.
#[derive(Default)]
pub struct HeartbeatTracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    /// The term these deadlines belong to; `None` while not leading.
    term: Option<u64>,
    deadlines: HashMap<String, Instant>,
}

impl HeartbeatTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // Deadlines are plain data: a panic elsewhere cannot leave them unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat: `node_id` must be heard from again within `ttl`.
    pub fn touch(&self, node_id: &str, ttl: Duration) {
        self.lock().deadlines.insert(node_id.to_string(), Instant::now() + ttl);
    }
}

/// Runs for the server's lifetime: while this server leads, marks silent nodes down.
pub async fn run(cluster: Cluster) {
    let ttl = cluster.heartbeat_ttl;
    let tick = (ttl / 4).max(Duration::from_millis(50));
    let mut metrics = cluster.raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_watched();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !leading {
            cluster.tracker.lock().term = None;
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        }
        begin_term(&cluster, term, ttl);
        if let Err(e) = check_deadlines(&cluster, ttl).await {
            tracing::warn!(error = %e, "liveness check failed; retrying");
        }
        let _ = tokio::time::timeout(tick, metrics.changed()).await;
    }
}

/// On a new term every deadline restarts: nodes get a full TTL to find the new leader.
fn begin_term(cluster: &Cluster, term: u64, ttl: Duration) {
    let mut state = cluster.tracker.lock();
    if state.term != Some(term) {
        tracing::info!(term, "leading: every client node gets a fresh heartbeat grace period");
        state.term = Some(term);
        let fresh = Instant::now() + ttl;
        for deadline in state.deadlines.values_mut() {
            *deadline = fresh;
        }
    }
}

async fn check_deadlines(cluster: &Cluster, ttl: Duration) -> Result<(), crate::cluster::ClusterError> {
    let nodes = cluster.read_local(read::nodes).await?;
    let now = Instant::now();
    let mut silent = Vec::new();
    {
        let mut state = cluster.tracker.lock();
        for node in nodes.iter().filter(|n| n.status == NodeStatus::Ready) {
            // A node this leader has not heard of yet (registered just now, or before the
            // term began) starts with a full TTL.
            let deadline = *state.deadlines.entry(node.id.clone()).or_insert(now + ttl);
            if deadline <= now {
                silent.push(node.id.clone());
            }
        }
    }
    for node_id in silent {
        tracing::warn!(%node_id, "node missed its heartbeat deadline; marking it down");
        let command = Command::SetNodeStatus { node_id, status: NodeStatus::Down, now: clock::now() };
        cluster.write(command).await?;
    }
    Ok(())
}
