//! What the state machine tells the rest of the server as it applies: chiefly, it wakes agents'
//! allocation watches when it changes their node's allocations, and tells them which allocations
//! changed; it also feeds the event stream (`crate::events`) and keeps the ACL generation and the
//! stored format.
//!
//! Without it every watch would have to re-read its node's allocations after every applied entry:
//! with a thousand agents, a thousand reads per entry. The state machine knows which allocations
//! a batch wrote (`StateTables::touched`) and hands them to exactly the watches of their nodes.
//! Signals live in memory only; a watch still reads the replicated tables, and re-reads all of
//! them after a snapshot install or on a timer, so a missed signal costs latency, never
//! correctness.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How often a watch re-reads everything even without a signal: the safety net, not the
/// mechanism.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// What changed for one watch since it last looked.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These allocations of the node were written.
    Allocations(HashSet<String>),
    /// Anything may have changed: read the whole set.
    Everything,
}

#[derive(Default)]
struct Pending {
    ids: HashSet<String>,
    everything: bool,
}

#[derive(Default)]
struct Subscriber {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Subscriber {
    fn add(&self, update: impl FnOnce(&mut Pending)) {
        update(&mut self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        // Stores a permit if the watch is not waiting right now, so no change is slept through.
        self.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct NodeSignals {
    subscribers: Arc<Mutex<HashMap<String, Vec<Weak<Subscriber>>>>>,
    /// Set when the server stops: watches end so their agents resume on another server.
    closed: Arc<watch::Sender<bool>>,
    /// Bumped after every applied batch that changed ACLs (and every snapshot install), before
    /// its callers are answered: grants cached under an older generation are stale.
    acl_generation: Arc<std::sync::atomic::AtomicU64>,
    /// The cluster's stored format as the state machine last applied it.
    pub stored_format: crate::store::StoredFormat,
    /// The event stream and the indexes blocking reads wait on.
    pub events: crate::events::Events,
}

impl Default for NodeSignals {
    fn default() -> Self {
        NodeSignals::with_event_buffer(crate::events::DEFAULT_BUFFER)
    }
}

impl NodeSignals {
    /// Signals whose event stream keeps the latest `events` events.
    pub fn with_event_buffer(events: usize) -> NodeSignals {
        NodeSignals {
            subscribers: Arc::default(),
            closed: Arc::new(watch::channel(false).0),
            acl_generation: Arc::default(),
            stored_format: Default::default(),
            events: crate::events::Events::new(events),
        }
    }

    /// Becomes true when the server stops: streams end.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn acl_changed(&self) {
        self.acl_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn acl_generation(&self) -> u64 {
        self.acl_generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<Subscriber>>>> {
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self, node_id: &str) -> NodeWatch {
        let subscriber = Arc::new(Subscriber::default());
        let mut all = self.lock();
        // Forget watches that ended (subscriptions are rare; this keeps the map small).
        all.retain(|_, subs| {
            subs.retain(|s| s.strong_count() > 0);
            !subs.is_empty()
        });
        all.entry(node_id.to_string()).or_default().push(Arc::downgrade(&subscriber));
        NodeWatch { subscriber, closed: self.closed.subscribe() }
    }

    /// Node id -> the ids of its allocations that a batch wrote.
    pub fn notify(&self, touched: &BTreeMap<String, BTreeSet<String>>) {
        let all = self.lock();
        for (node, ids) in touched {
            for subscriber in all.get(node).into_iter().flatten().filter_map(Weak::upgrade) {
                subscriber.add(|p| p.ids.extend(ids.iter().cloned()));
            }
        }
    }

    pub fn notify_all(&self) {
        for subscriber in self.lock().values().flatten().filter_map(Weak::upgrade) {
            subscriber.add(|p| p.everything = true);
        }
    }

    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

pub struct NodeWatch {
    subscriber: Arc<Subscriber>,
    closed: watch::Receiver<bool>,
}

impl NodeWatch {
    /// Waits until the node's allocations may have changed and says what changed. None once the
    /// server is stopping.
    pub async fn changed(&mut self) -> Option<Changes> {
        if *self.closed.borrow() {
            return None;
        }
        let timed_out = tokio::select! {
            () = self.subscriber.wake.notified() => false,
            _ = self.closed.changed() => return None,
            () = tokio::time::sleep(RESYNC_EVERY) => true,
        };
        let mut pending = self.subscriber.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = std::mem::take(&mut *pending);
        Some(if timed_out || pending.everything { Changes::Everything } else { Changes::Allocations(pending.ids) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched(node: &str, ids: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([(node.to_string(), ids.iter().map(|s| s.to_string()).collect())])
    }

    #[tokio::test]
    async fn each_watch_of_the_touched_node_learns_which_allocations_changed() {
        let signals = NodeSignals::default();
        let mut a = signals.subscribe("a");
        let mut a_again = signals.subscribe("a");
        let mut b = signals.subscribe("b");
        signals.notify(&touched("a", &["x"]));
        signals.notify(&touched("a", &["y"]));
        let both = Some(Changes::Allocations(HashSet::from(["x".to_string(), "y".to_string()])));
        assert_eq!(a.changed().await, both);
        assert_eq!(a_again.changed().await, both);
        let woke = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(woke.is_err(), "b was not touched");
        signals.notify_all();
        assert_eq!(b.changed().await, Some(Changes::Everything));
        signals.close();
        assert_eq!(a.changed().await, None);
    }
}
