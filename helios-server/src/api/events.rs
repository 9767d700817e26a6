//! `EventService`: the event stream (`crate::events`) to subscribers, each filtered by its topics
//! and keys, resumable by index, and allowed only the topics its token may read. Each message
//! holds the subscription's events up to an index (every one the log had when the subscriber
//! woke), so a subscriber costs one message per wake, however many entries were applied, and the
//! message is made of events encoded once for all subscribers (`helios_api::wire`).

use std::time::Duration;

use helios_api::pb;
use helios_api::wire::encoded_event_service::event_service_server::EventService;
use helios_api::wire::EncodedEventBatch;
use helios_core::acl::Capability;
use helios_core::events::{Subscription, TooOld, Topic};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::auth::{authorize_secret, presented_secret, secret_hash};
use super::errors::invalid;
use crate::cluster::Cluster;

/// A subscriber that received nothing for this long gets an empty batch carrying the latest
/// index: it learns where to resume from, and a dead connection is noticed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A subscriber sent a batch less than this long ago waits out the rest before the next, so a
/// busy stream is one message per `LINGER` however fast entries apply (each message costs the
/// server a write to its connection), while an idle one gets a change at once.
const LINGER: Duration = Duration::from_millis(50);

/// Batches sent ahead of a slow subscriber; beyond them it falls behind the log, and once the log
/// drops what it has not read it is told to resync.
const AHEAD: usize = 16;

pub struct Events {
    pub cluster: Cluster,
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
    Status::out_of_range(format!(
        "events from index {from} are no longer held (the oldest is {}): read the state again and subscribe from the index it reflects",
        old.first_available
    ))
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
        for &needed in &capabilities {
            authorize_secret(&self.cluster, secret.clone(), needed).await?;
        }
        let events = self.cluster.signals.events.clone();
        let from = req.from_index.unwrap_or_else(|| events.latest() + 1);
        // Refused at once rather than as the stream's first message.
        events.since(from).map_err(|old| too_old(from, old))?;
        let (tx, rx) = mpsc::channel(AHEAD);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let sent = stream(&cluster, &subscription, (from, acl_generation), &tx, || async {
                // Checked again whenever ACLs change: a revoked token's stream ends.
                for &needed in &capabilities {
                    authorize_secret(&cluster, secret.clone(), needed).await?;
                }
                Ok(())
            })
            .await;
            if let Err(status) = sent {
                let _ = tx.send(Err(status)).await;
            }
        });
        let batches = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|batch| (batch, rx)) });
        Ok(Response::new(Box::pin(batches)))
    }
}

fn stopping() -> Status {
    Status::unavailable("the server is stopping: subscribe again, to another server")
}

/// Sends `subscription`'s batches from index `from` on until the subscriber goes, the server
/// stops, or an error ends it; the token is checked again once the ACL generation moves from
/// `acl_generation`.
async fn stream<F, Fut>(
    cluster: &Cluster,
    subscription: &Subscription,
    (from, mut acl_generation): (u64, u64),
    tx: &mpsc::Sender<Result<EncodedEventBatch, Status>>,
    reauthorize: F,
) -> Result<(), Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let events = &cluster.signals.events;
    let mut moved = events.watch();
    let mut closed = cluster.signals.closed();
    let mut next = from;
    let mut sent_at: Option<tokio::time::Instant> = None;
    loop {
        if *closed.borrow() {
            return Err(stopping());
        }
        if let Some(sent_at) = sent_at {
            tokio::time::sleep_until(sent_at + LINGER).await;
        }
        let (batches, latest) = events.since(next).map_err(|old| too_old(next, old))?;
        // The state machine bumps the generation before it logs a batch that changed ACLs: a
        // token revoked at or before these batches is checked before any of them is sent.
        let generation = cluster.signals.acl_generation();
        if generation != acl_generation {
            acl_generation = generation;
            reauthorize().await?;
        }
        // Everything up to `latest` in one message: under load a subscriber is sent one message
        // per wake, not one per log index.
        let picked: Vec<helios_api::wire::Bytes> = batches
            .iter()
            .flat_map(|(_, logged)| logged.iter())
            .filter_map(|logged| logged.published())
            .filter(|p| subscription.wants(p.topic, &p.keys))
            .map(|p| p.encoded.clone())
            .collect();
        if !picked.is_empty() {
            if tx.send(Ok(EncodedEventBatch { index: latest, events: picked })).await.is_err() {
                return Ok(());
            }
            sent_at = Some(tokio::time::Instant::now());
        }
        next = next.max(latest + 1);
        // (`closed` only ever becomes true: any change of it is the server stopping.)
        let quiet = tokio::select! {
            changed = moved.changed() => if changed.is_err() { return Ok(()) } else { false },
            () = tokio::time::sleep(HEARTBEAT) => true,
            _ = closed.changed() => return Err(stopping()),
            () = tx.closed() => return Ok(()),
        };
        if quiet && tx.send(Ok(EncodedEventBatch { index: next - 1, events: Vec::new() })).await.is_err() {
            return Ok(());
        }
    }
}
