//! `EventService`: the event stream (`crate::events`) to subscribers, each filtered by its topics
//! and keys, resumable by index, and allowed only the topics its token may read. Each message
//! holds the subscription's events up to an index (every one the log had when the subscriber
//! woke), so a subscriber costs one message per wake, however many entries were applied, and the
//! message is made of events encoded once for all subscribers (`helios_api::wire`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use helios_api::pb;
use helios_api::wire::encoded_event_service::event_service_server::EventService;
use helios_api::wire::EncodedEventBatch;
use helios_core::acl::Capability;
use helios_core::events::{Subscription, TooOld, Topic};
use helios_core::Timestamp;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::auth::{authorize_locally, authorize_secret, presented_secret, secret_hash};
use super::errors::{cluster_status, invalid};
use crate::clock;
use crate::cluster::Cluster;
use crate::events::Batch;

/// A subscriber sent nothing for this long gets an empty batch carrying the latest index: it
/// learns where to resume from, however narrow its filter, and a dead connection is noticed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A stream that sent a batch less than `linger` ago waits out the rest before the next, so a
/// busy stream is one message per `linger` however fast entries apply (each message costs the
/// server a write to its connection), while an idle one gets a change at once. A millisecond per
/// busy stream (one lingering so, itself included), from `MIN_LINGER` to `MAX_LINGER`: with 10
/// to 50 busy subscribers a server sends about a thousand messages a second in all, whatever
/// their number, and beyond that 20 a second each; with a few of them a change reaches each
/// within milliseconds, however many idle watchers are open. (At 100 ms, a hundred subscribers
/// cost no less within this machine's noise, and waited longer: docs/performance.md.)
fn linger(busy_streams: usize) -> Duration {
    let per_stream = Duration::from_millis(u64::try_from(busy_streams).unwrap_or(u64::MAX));
    per_stream.clamp(MIN_LINGER, MAX_LINGER)
}
const MIN_LINGER: Duration = Duration::from_millis(10);
const MAX_LINGER: Duration = Duration::from_millis(50);

/// Batches sent ahead of a slow subscriber; beyond them it falls behind the log, and once the log
/// drops what it has not read it is told to resync.
const AHEAD: usize = 16;

/// A message's events stop at the log index that would take them past this, under the 4 MiB a
/// default gRPC client accepts (one index's events always go whole, whatever their size: a
/// subscriber resumes after an index, never inside one).
const MAX_BATCH_BYTES: usize = 3 * helios_core::limits::MAX_MESSAGE_BYTES;

pub struct Events {
    pub cluster: Cluster,
    /// Streams lingering after a message on this server: the busy ones (`linger`).
    pub lingering: Arc<AtomicUsize>,
}

impl Events {
    pub fn new(cluster: Cluster) -> Events {
        Events { cluster, lingering: Arc::default() }
    }
}

/// A stream lingering after a message, counted in `Events::lingering` while it lives (a stream
/// that ends or is dropped mid-wait stops counting).
struct Lingering(Arc<AtomicUsize>);

impl Lingering {
    /// Counts one more, and says how many linger with it.
    fn start(count: &Arc<AtomicUsize>) -> (Lingering, usize) {
        let busy = count.fetch_add(1, Ordering::Relaxed) + 1;
        (Lingering(count.clone()), busy)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The capability a topic's events need: a node's, or a job's (allocations, evaluations and
/// deployments are a job's).
fn capability(topic: Topic) -> Capability {
    match topic {
        Topic::Node => Capability::NodeRead,
        _ => Capability::ReadJob,
    }
}

fn subscription(filters: &[pb::TopicFilter]) -> Result<Subscription, Status> {
    let mut out = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        let topic = pb::EventTopic::try_from(filter.topic)
            .ok()
            .and_then(helios_api::convert::topic_from_pb)
            .ok_or_else(|| invalid(&format!("topics[{i}].topic"), "must be one of the EventTopic values"))?;
        if let Some(k) = filter.keys.iter().position(String::is_empty) {
            return Err(invalid(&format!("topics[{i}].keys[{k}]"), "must not be empty"));
        }
        out.push((topic, filter.keys.clone()));
    }
    Ok(Subscription::new(out))
}

fn too_old(from: u64, old: TooOld) -> Status {
    let message = format!(
        "events from index {from} are no longer held (the oldest is {}): read the state again and subscribe from the index it reflects",
        old.first_available
    );
    helios_api::errors::status(tonic::Code::OutOfRange, helios_api::errors::reason::EVENTS_TOO_OLD, message)
}

#[tonic::async_trait]
impl EventService for Events {
    type SubscribeStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<EncodedEventBatch, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let secret = presented_secret(&request).map(|s| secret_hash(&s));
        let req = request.into_inner();
        let subscription = subscription(&req.topics)?;
        let capabilities: Vec<Capability> = subscription.topics().into_iter().map(capability).collect();
        // Read before the check: a change of ACLs during it makes the stream check again.
        let acl_generation = self.cluster.signals.acl_generation();
        let mut token = None;
        for &needed in &capabilities {
            token = authorize_secret(&self.cluster, secret.clone(), needed).await?;
        }
        let events = self.cluster.signals.events.clone();
        let from = match req.from_index {
            None => events.latest() + 1,
            Some(0) => return Err(invalid("from_index", "must be at least 1 (log indexes start at 1)")),
            Some(from) => {
                // An index another server gave is reached here too before it is judged.
                self.cluster.linearize().await.map_err(cluster_status)?;
                let next = events.latest() + 1;
                if from > next {
                    return Err(invalid("from_index", format!("is past the next index to be written, {next}")));
                }
                from
            }
        };
        // Refused at once rather than as the stream's first message.
        events.since(from).map_err(|old| too_old(from, old))?;
        let (tx, rx) = mpsc::channel(AHEAD);
        let cluster = self.cluster.clone();
        let access =
            Access { secret, capabilities, generation: acl_generation, expires_at: token.and_then(|t| t.expires_at) };
        let lingering = self.lingering.clone();
        tokio::spawn(async move {
            if let Err(status) = stream(&cluster, &subscription, from, access, &lingering, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        let batches = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|batch| (batch, rx)) });
        Ok(Response::new(Box::pin(batches)))
    }
}

/// What a stream's token was allowed, and when to check it again.
struct Access {
    secret: Option<String>,
    capabilities: Vec<Capability>,
    /// The ACL generation it was checked at.
    generation: u64,
    /// When its token expires, if it does.
    expires_at: Option<Timestamp>,
}

impl Access {
    /// Checks the token again if ACLs changed or it has expired since it was last checked.
    /// From this server's own tables: they hold every ACL change this server has applied, so a
    /// revocation logged before the events about to be sent is seen (the leader, asked instead,
    /// may not have applied it yet).
    async fn recheck(&mut self, cluster: &Cluster) -> Result<(), Status> {
        let generation = cluster.signals.acl_generation();
        let expired = self.expires_at.is_some_and(|at| clock::now() >= at);
        if generation == self.generation && !expired {
            return Ok(());
        }
        self.generation = generation;
        for &needed in &self.capabilities {
            authorize_locally(cluster, self.secret.clone(), needed).await?;
        }
        Ok(())
    }
}

fn stopping() -> Status {
    helios_api::errors::coded(tonic::Code::Unavailable, "the server is stopping: subscribe again, to another server")
}

/// Sends `subscription`'s batches from index `from` on until the subscriber goes, the server
/// stops, or an error ends it (its token no longer allowed, or the log past what it has read).
/// The first message is empty, with index `from - 1`: the subscriber knows where to resume from
/// before any event comes.
async fn stream(
    cluster: &Cluster,
    subscription: &Subscription,
    from: u64,
    mut access: Access,
    lingering: &Arc<AtomicUsize>,
    tx: &mpsc::Sender<Result<EncodedEventBatch, Status>>,
) -> Result<(), Status> {
    let events = &cluster.signals.events;
    let mut moved = events.watch();
    let mut closed = cluster.signals.closed();
    let mut next = from;
    if tx.send(Ok(EncodedEventBatch { index: from - 1, events: Vec::new() })).await.is_err() {
        return Ok(());
    }
    let mut sent_at = tokio::time::Instant::now();
    loop {
        if *closed.borrow() {
            return Err(stopping());
        }
        let (batches, latest) = events.since(next).map_err(|old| too_old(next, old))?;
        // The state machine bumps the generation before it logs a batch that changed ACLs: a
        // token revoked at or before these batches is checked before any of them is sent.
        access.recheck(cluster).await?;
        for message in messages(subscription, &batches, latest) {
            if tx.send(Ok(message)).await.is_err() {
                return Ok(());
            }
            sent_at = tokio::time::Instant::now();
        }
        next = next.max(latest + 1);
        // (`closed` only ever becomes true: any change of it is the server stopping.)
        tokio::select! {
            changed = moved.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep_until(sent_at + HEARTBEAT) => {
                access.recheck(cluster).await?;
                if tx.send(Ok(EncodedEventBatch { index: next - 1, events: Vec::new() })).await.is_err() {
                    return Ok(());
                }
                sent_at = tokio::time::Instant::now();
                continue;
            }
            _ = closed.changed() => return Err(stopping()),
            () = tx.closed() => return Ok(()),
        }
        let (_lingering, busy) = Lingering::start(lingering);
        tokio::time::sleep_until(sent_at + linger(busy)).await;
    }
}

/// The events `subscription` selects from `batches` (every index up to `latest`), as messages
/// of at most `MAX_BATCH_BYTES` (but whole indexes), the last one's index `latest`. None when
/// nothing is selected.
fn messages(subscription: &Subscription, batches: &[Batch], latest: u64) -> Vec<EncodedEventBatch> {
    let mut out: Vec<EncodedEventBatch> = Vec::new();
    let mut current = EncodedEventBatch::default();
    let mut bytes = 0;
    for (index, logged) in batches {
        let picked: Vec<_> = logged
            .iter()
            .filter_map(|logged| logged.published())
            .filter(|p| subscription.wants(p.topic, &p.keys))
            .map(|p| p.encoded.clone())
            .collect();
        let size: usize = picked.iter().map(|e| e.len()).sum();
        if !current.events.is_empty() && bytes + size > MAX_BATCH_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.index = *index;
        current.events.extend(picked);
        bytes += size;
    }
    if !current.events.is_empty() {
        current.index = latest;
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Change, Events};
    use crate::store::codec::encode;
    use helios_core::Job;

    /// A job whose event is a little over 1 MiB (1.05).
    fn big_job(name: &str) -> Change {
        let args = vec!["x".repeat(60 * 1024); 18];
        let job = Job::exec(name, "/bin/true", args);
        Change { index: 0, topic: Topic::Job, row: encode(&job), deleted: false }
    }

    #[test]
    fn streams_linger_a_millisecond_each_within_bounds() {
        assert_eq!(linger(0), MIN_LINGER);
        assert_eq!(linger(1), MIN_LINGER, "one subscriber hears within 10 ms");
        assert_eq!(linger(40), Duration::from_millis(40), "40 streams send 1,000 messages a second in all");
        assert_eq!(linger(100), MAX_LINGER);
        assert_eq!(linger(5000), MAX_LINGER);
        let count = Arc::new(AtomicUsize::new(0));
        let ((_a, first), (b, second)) = (Lingering::start(&count), Lingering::start(&count));
        assert_eq!((first, second), (1, 2), "each counts itself");
        drop(b);
        assert_eq!(Lingering::start(&count).1, 2, "one that stopped lingering no longer counts");
    }

    #[test]
    fn messages_stop_at_the_index_that_would_make_them_too_large_but_keep_indexes_whole() {
        let events = Events::new(64);
        events.reset(1);
        // Indexes 2..=5 of one such job each, and index 6 of two.
        let mut changes: Vec<Change> = (2..=5).map(|i| Change { index: i, ..big_job(&format!("j{i}")) }).collect();
        changes.push(Change { index: 6, ..big_job("j6a") });
        changes.push(Change { index: 6, ..big_job("j6b") });
        events.applied(changes, 7);
        let (batches, latest) = events.since(2).expect("held");
        let sent = messages(&Subscription::default(), &batches, latest);
        let shape: Vec<(u64, usize)> = sent.iter().map(|m| (m.index, m.events.len())).collect();
        // Two indexes fit under 3 MiB, a third would not; index 6 goes whole; the last message
        // carries the log's latest index.
        assert_eq!(shape, [(3, 2), (5, 2), (7, 2)]);
        for m in &sent {
            let bytes: usize = m.events.iter().map(|e| e.len()).sum();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        // A subscription that selects nothing gets no message.
        let none = Subscription::new([(Topic::Node, Vec::new())]);
        assert!(messages(&none, &batches, latest).is_empty());
    }
}
