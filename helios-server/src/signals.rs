//! Wakes agents' allocation watches when the state machine changes their node's allocations.
//!
//! Without it every watch would have to re-read its node's allocations after every applied entry:
//! with a thousand agents, a thousand reads per entry. The state machine knows which nodes an
//! entry touched (`StateTables::touched_nodes`) and signals exactly those. Signals live in memory
//! only; a watch still reads the replicated tables, so a missed signal costs latency (the watch
//! re-reads on a timer), never correctness.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// How often a watch re-reads even without a signal: the safety net, not the mechanism.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct NodeSignals {
    per_node: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// Bumped when everything may have changed (a snapshot was installed).
    everything: Arc<watch::Sender<u64>>,
    /// Set when the server stops: watches end so their agents resume on another server.
    closed: Arc<watch::Sender<bool>>,
}

impl Default for NodeSignals {
    fn default() -> Self {
        NodeSignals {
            per_node: Arc::default(),
            everything: Arc::new(watch::channel(0).0),
            closed: Arc::new(watch::channel(false).0),
        }
    }
}

impl NodeSignals {
    pub fn subscribe(&self, node_id: &str) -> NodeWatch {
        let mut per_node = self.per_node.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget nodes nobody watches any more (subscriptions are rare; this keeps the map small).
        per_node.retain(|_, sender| sender.receiver_count() > 0);
        let node = per_node.entry(node_id.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
        NodeWatch { node, everything: self.everything.subscribe(), closed: self.closed.subscribe() }
    }

    pub fn notify(&self, nodes: &BTreeSet<String>) {
        let per_node = self.per_node.lock().unwrap_or_else(PoisonError::into_inner);
        for id in nodes {
            if let Some(sender) = per_node.get(id) {
                sender.send_modify(|n| *n += 1);
            }
        }
    }

    pub fn notify_all(&self) {
        self.everything.send_modify(|n| *n += 1);
    }

    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

pub struct NodeWatch {
    node: watch::Receiver<u64>,
    everything: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
}

impl NodeWatch {
    /// Waits until the node's allocations may have changed. False once the server is stopping.
    pub async fn changed(&mut self) -> bool {
        if *self.closed.borrow() {
            return false;
        }
        tokio::select! {
            _ = self.node.changed() => true,
            _ = self.everything.changed() => true,
            _ = self.closed.changed() => false,
            () = tokio::time::sleep(RESYNC_EVERY) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_touched_node_is_woken() {
        let signals = NodeSignals::default();
        let mut a = signals.subscribe("a");
        let mut b = signals.subscribe("b");
        signals.notify(&BTreeSet::from(["a".to_string()]));
        assert!(a.changed().await);
        let woke = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(woke.is_err(), "b was not touched");
        signals.notify_all();
        assert!(b.changed().await);
        signals.close();
        assert!(!a.changed().await);
    }
}
