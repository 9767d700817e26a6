//! Client liveness, tracked by the leader in memory.
//!
//! Heartbeats are not Raft writes: the leader records when each node must be heard from next,
//! and proposes a status change only when a node misses its deadline (`Down`) or comes back
//! (`Ready`). A server that becomes leader gives every node a fresh grace period first, so a
//! failover never marks healthy nodes down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use helios_core::{Command, EvalTrigger, NodeStatus};
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

    /// On a new term every deadline restarts: nodes get a full TTL to find the new leader.
    /// Returns whether `term` was new.
    pub fn begin_term(&self, term: u64, now: Instant, ttl: Duration) -> bool {
        let mut state = self.lock();
        if state.term == Some(term) {
            return false;
        }
        tracing::info!(term, "leading: every client node gets a fresh heartbeat grace period");
        state.term = Some(term);
        for deadline in state.deadlines.values_mut() {
            *deadline = now + ttl;
        }
        true
    }

    pub fn end_term(&self) {
        self.lock().term = None;
    }

    /// The ready nodes past their deadline, forgotten so that a node that registers again
    /// starts with a full TTL. A node not seen yet (registered just now, or before this term)
    /// gets a full TTL from `now`.
    pub fn expired(&self, ready: &[&str], now: Instant, ttl: Duration) -> Vec<String> {
        let mut state = self.lock();
        let mut silent = Vec::new();
        for id in ready {
            let deadline = *state.deadlines.entry((*id).to_string()).or_insert(now + ttl);
            if deadline <= now {
                silent.push((*id).to_string());
            }
        }
        for id in &silent {
            state.deadlines.remove(id);
        }
        silent
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
            cluster.tracker.end_term();
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        }
        cluster.tracker.begin_term(term, Instant::now(), ttl);
        if let Err(e) = check_deadlines(&cluster, ttl).await {
            tracing::warn!(error = %e, "liveness check failed; retrying");
        }
        let _ = tokio::time::timeout(tick, metrics.changed()).await;
    }
}

async fn check_deadlines(cluster: &Cluster, ttl: Duration) -> Result<(), crate::cluster::ClusterError> {
    let nodes = cluster.read_local(read::nodes).await?;
    let ready: Vec<&str> = nodes.iter().filter(|n| n.status == NodeStatus::Ready).map(|n| n.id.as_str()).collect();
    let silent = cluster.tracker.expired(&ready, Instant::now(), ttl);
    for node_id in silent {
        tracing::warn!(%node_id, "node missed its heartbeat deadline; marking it down");
        let evals = cluster.node_change_evaluations(&node_id, EvalTrigger::NodeUpdate).await?;
        let command = Command::SetNodeStatus { node_id, status: NodeStatus::Down, now: clock::now(), evals };
        cluster.propose_as_leader(command).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_term_gives_every_node_a_fresh_grace_period() {
        let tracker = HeartbeatTracker::default();
        let ttl = Duration::from_secs(10);
        let start = Instant::now();
        assert!(tracker.begin_term(1, start, ttl));
        assert!(tracker.expired(&["a", "b"], start, ttl).is_empty(), "unseen nodes get a full TTL");
        // Term 1 ends (leadership lost) long enough ago that both deadlines passed.
        let later = start + ttl * 3;
        tracker.end_term();
        assert!(tracker.begin_term(2, later, ttl), "leading again, in a new term");
        assert!(tracker.expired(&["a", "b"], later + ttl / 2, ttl).is_empty(), "no node is judged on old deadlines");
        assert_eq!(tracker.expired(&["a", "b"], later + ttl, ttl), ["a", "b"]);
        assert!(!tracker.begin_term(2, later, ttl), "the same term is not new");
    }

    #[test]
    fn an_expired_node_starts_over_when_it_comes_back() {
        let tracker = HeartbeatTracker::default();
        let ttl = Duration::from_secs(10);
        let start = Instant::now();
        tracker.begin_term(1, start, ttl);
        assert!(tracker.expired(&["a"], start, ttl).is_empty());
        assert_eq!(tracker.expired(&["a"], start + ttl, ttl), ["a"]);
        // Back (re-registered, ready again) before its first heartbeat: a full TTL, not the old
        // deadline.
        let back = start + ttl * 2;
        assert!(tracker.expired(&["a"], back, ttl).is_empty());
        assert!(tracker.expired(&["a"], back + ttl / 2, ttl).is_empty());
    }
}
