//! The event stream and blocking reads, fed by the state machine.
//!
//! After each applied batch the state machine hands over the rows it wrote (`Change`s), before
//! the batch's callers are answered. Each topic's latest index moves at once: blocking reads wait
//! on it. The rows go, as they are, into a bounded log (`helios_core::events::EventLog`) that
//! subscribers read from; each becomes an encoded protobuf event the first time a subscriber
//! reads it, once for all of them, so a server with no subscribers decodes nothing and one with a
//! hundred encodes each event once.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use helios_api::wire::Bytes;

use helios_api::convert::{alloc_to_pb, deployment_to_pb, eval_to_pb, job_to_pb, node_to_pb, topic_to_pb};
use helios_api::pb;
use helios_api::wire::encode_event;
use helios_core::deployment::Deployment;
use helios_core::events::{EventLog, TooOld, Topic};
use helios_core::{Allocation, Evaluation, Job, Node};
use tokio::sync::watch;

use crate::store::codec::decode;

/// Events kept for subscribers that resume (`--event-buffer`): at a few kilobytes each, a few
/// megabytes.
pub const DEFAULT_BUFFER: usize = 4096;

/// However many events `--event-buffer` allows, the rows they were made of weigh at most this
/// (a job's row may be a megabyte; each event's encoding, once made, weighs about as much
/// again).
pub const MAX_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// A row of a table that events are made of, as one entry wrote it (or, `deleted`, as it was
/// before the entry removed it). With no row, a change of a table beside the topic's (a job's
/// versions): it moves the topic's index for blocking reads and is no event.
#[derive(Debug)]
pub struct Change {
    pub index: u64,
    pub topic: Topic,
    pub row: Vec<u8>,
    pub deleted: bool,
}

impl Change {
    fn is_event(&self) -> bool {
        !self.row.is_empty()
    }
}

/// One event as subscribers get it (encoded, for `wire::EncodedEventBatch`), with the keys their
/// filters match.
#[derive(Debug)]
pub struct Published {
    pub topic: Topic,
    pub keys: Vec<String>,
    pub encoded: Bytes,
}

/// A change in the log, made an event when first read.
#[derive(Debug)]
pub struct Logged {
    change: Change,
    event: OnceLock<Option<Published>>,
}

impl Logged {
    /// The change as its event; None (logged once) for a row that does not decode, which the
    /// state machine wrote itself, so only a bug makes one.
    pub fn published(&self) -> Option<&Published> {
        self.event.get_or_init(|| published(&self.change)).as_ref()
    }
}

/// One index's changes, as the log holds them.
pub type Batch = (u64, Vec<Arc<Logged>>);

#[derive(Clone)]
pub struct Events {
    shared: Arc<Shared>,
}

struct Shared {
    log: Mutex<EventLog<Arc<Logged>>>,
    /// The log's latest index: subscribers wake when it moves.
    latest: watch::Sender<u64>,
    /// Per topic (`Topic::position`), the latest index that changed it.
    indexes: watch::Sender<[u64; Topic::ALL.len()]>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(DEFAULT_BUFFER)
    }
}

impl Events {
    /// Events holding the latest `capacity` events for subscribers to resume from.
    pub fn new(capacity: usize) -> Events {
        Events {
            shared: Arc::new(Shared {
                log: Mutex::new(EventLog::new(capacity, MAX_BUFFER_BYTES, 0)),
                latest: watch::channel(0).0,
                indexes: watch::channel([0; Topic::ALL.len()]).0,
            }),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, EventLog<Arc<Logged>>> {
        self.shared.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tables reflect `index`, with no history before it known: at start, after a snapshot
    /// is installed, and after a restore. Any topic may have changed.
    pub fn reset(&self, index: u64) {
        self.shared.indexes.send_modify(|all| all.iter_mut().for_each(|i| *i = (*i).max(index)));
        let mut log = self.log();
        log.reset(index);
        self.shared.latest.send_replace(log.latest());
    }

    /// The rows a batch wrote, up to its last index `applied`. Called after the batch is
    /// committed and before its callers are answered, so an answered write has moved the
    /// indexes that blocking reads wait on.
    pub fn applied(&self, changes: Vec<Change>, applied: u64) {
        if !changes.is_empty() {
            self.shared.indexes.send_modify(|all| {
                for change in &changes {
                    let at = &mut all[change.topic.position()];
                    *at = (*at).max(change.index);
                }
            });
        }
        let mut log = self.log();
        let mut batch: Vec<Arc<Logged>> = Vec::new();
        let push = |log: &mut EventLog<Arc<Logged>>, batch: Vec<Arc<Logged>>| {
            let bytes = batch.iter().map(|logged| logged.change.row.len()).sum();
            log.push(batch[0].change.index, batch, bytes);
        };
        for change in changes.into_iter().filter(Change::is_event) {
            if batch.first().is_some_and(|first| first.change.index != change.index) {
                push(&mut log, std::mem::take(&mut batch));
            }
            batch.push(Arc::new(Logged { change, event: OnceLock::new() }));
        }
        if !batch.is_empty() {
            push(&mut log, batch);
        }
        log.seen(applied);
        self.shared.latest.send_replace(log.latest());
    }

    /// The latest index that changed any of `topics`.
    pub fn index_of(&self, topics: &[Topic]) -> u64 {
        let all = self.shared.indexes.borrow();
        topics.iter().map(|t| all[t.position()]).max().unwrap_or(0)
    }

    /// Waits until one of `topics` changes after `min_index`, or `wait` passes.
    pub async fn changed_after(&self, topics: &[Topic], min_index: u64, wait: Duration) {
        let mut indexes = self.shared.indexes.subscribe();
        let passed = |all: &[u64; Topic::ALL.len()]| topics.iter().any(|t| all[t.position()] > min_index);
        let _ = tokio::time::timeout(wait, indexes.wait_for(passed)).await;
    }

    /// Every batch of index `from` or later, and the latest index the log has seen (every
    /// batch up to it is among them).
    pub fn since(&self, from: u64) -> Result<(Vec<Batch>, u64), TooOld> {
        let log = self.log();
        Ok((log.since(from)?, log.latest()))
    }

    /// The latest index the log has seen: a subscription from now on starts after it.
    pub fn latest(&self) -> u64 {
        self.log().latest()
    }

    /// Wakes when the log moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.latest.subscribe()
    }
}

fn published(change: &Change) -> Option<Published> {
    use pb::event::Payload;
    let row = change.row.as_slice();
    let made = match change.topic {
        Topic::Job => decode::<Job>(row).map(|j| (vec![j.name.clone()], Payload::Job(job_to_pb(&j)))),
        Topic::Allocation => decode::<Allocation>(row)
            .map(|a| (vec![a.id.clone(), a.job_name.clone(), a.node_id.clone()], Payload::Allocation(alloc_to_pb(&a)))),
        Topic::Node => decode::<Node>(row).map(|n| (vec![n.id.clone()], Payload::Node(node_to_pb(&n)))),
        Topic::Evaluation => decode::<Evaluation>(row)
            .map(|e| (vec![e.id.clone(), e.job_name.clone()], Payload::Evaluation(eval_to_pb(&e)))),
        Topic::Deployment => decode::<Deployment>(row)
            .map(|d| (vec![d.id.clone(), d.job_name.clone()], Payload::Deployment(deployment_to_pb(&d)))),
    };
    let (keys, payload) = match made {
        Ok(made) => made,
        Err(e) => {
            tracing::error!(topic = change.topic.as_str(), index = change.index, error = %e, "an event's row does not decode");
            return None;
        }
    };
    let kind = if change.deleted { pb::EventType::Deleted } else { pb::EventType::Upserted };
    let event = pb::Event {
        index: change.index,
        topic: topic_to_pb(change.topic) as i32,
        r#type: kind as i32,
        key: keys[0].clone(),
        payload: Some(payload),
    };
    Some(Published { topic: change.topic, keys, encoded: encode_event(&event) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::encode;

    fn job_change(index: u64, name: &str) -> Change {
        let job = Job::exec(name, "/bin/true", Vec::new());
        Change { index, topic: Topic::Job, row: encode(&job), deleted: false }
    }

    #[tokio::test]
    async fn a_batch_moves_its_topics_indexes_and_logs_one_batch_per_index() {
        let events = Events::new(16);
        events.reset(4);
        assert_eq!(events.index_of(&[Topic::Job, Topic::Node]), 4);
        events.applied(vec![job_change(5, "a"), job_change(5, "b"), job_change(7, "c")], 8);
        assert_eq!((events.index_of(&[Topic::Job]), events.index_of(&[Topic::Node])), (7, 4));
        let (batches, latest) = events.since(5).expect("held");
        assert_eq!(latest, 8);
        let shape: Vec<(u64, Vec<String>)> = batches
            .iter()
            .map(|(i, logged)| (*i, logged.iter().map(|l| l.published().expect("decodes").keys[0].clone()).collect()))
            .collect();
        assert_eq!(shape, [(5, vec!["a".to_string(), "b".to_string()]), (7, vec!["c".to_string()])]);
        assert!(events.since(4).is_err(), "from before the reset");
        // A blocking read past index 7 on jobs wakes for a job, not for a node.
        let waiting = events.clone();
        let woke = tokio::spawn(async move {
            waiting.changed_after(&[Topic::Job], 7, Duration::from_secs(60)).await;
            waiting.index_of(&[Topic::Job])
        });
        events.applied(vec![Change { index: 9, topic: Topic::Node, row: Vec::new(), deleted: false }], 9);
        events.applied(vec![job_change(10, "d")], 10);
        assert_eq!(woke.await.expect("woke"), 10);
    }
}
