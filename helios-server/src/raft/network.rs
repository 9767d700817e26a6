//! The client side of server-to-server traffic: openraft's network over tonic.
//!
//! One lazily-connected HTTP/2 channel per peer, shared by replication, votes, snapshots and
//! forwarding. A peer that cannot be reached is reported as `Unreachable`, so openraft backs off
//! instead of hammering it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helios_api::pb::raft_peer_client::RaftPeerClient;
use helios_api::pb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::{NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::store::codec::{decode, encode};

/// How long a follower may take to store a batch of entries (see `append_entries`).
const APPEND_ENTRIES_TIMEOUT: Duration = Duration::from_secs(5);

/// Snapshot data travels in chunks of this size, well under the gRPC message limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A client to a peer whose every request says which stored format its payloads are in.
pub type PeerClient = RaftPeerClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

/// Metadata on every request between servers: the sender's `tables::FORMAT_VERSION`. Payloads
/// are bincode, read by position: a server refuses those of another format rather than misread
/// them (`peer_service::check_format`).
pub const FORMAT_HEADER: &str = "helios-stored-format";

fn stamp_format(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert(FORMAT_HEADER, crate::store::tables::FORMAT_VERSION.into());
    Ok(request)
}

/// Channels to peers by address, shared by the Raft network and request forwarding.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, PeerChannel>>>,
}

/// A peer's channel, and when a call through it last got an answer.
struct PeerChannel {
    channel: Channel,
    answered: Instant,
}

/// A channel through which no call has been answered for this long is replaced when a call
/// through it goes unanswered. A partition that drops packets silently leaves the peer's TCP
/// connection retransmitting with exponential backoff: when the network heals, calls queued on
/// it wait for the next retransmission, seconds later, while a new connection works at once.
/// An election across such a connection (the next leader's votes) would wait as long.
const STALE_AFTER: Duration = Duration::from_secs(1);

impl PeerChannels {
    fn client(&self, addr: &str) -> Result<PeerClient, tonic::transport::Error> {
        let channel = {
            let mut map = self.lock();
            match map.get(addr) {
                Some(peer) => peer.channel.clone(),
                None => {
                    let channel = Endpoint::from_shared(format!("http://{addr}"))?
                        .connect_timeout(Duration::from_secs(1))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .connect_lazy();
                    map.insert(addr.to_string(), PeerChannel { channel: channel.clone(), answered: Instant::now() });
                    channel
                }
            }
        };
        let stamp: fn(Request<()>) -> Result<Request<()>, Status> = stamp_format;
        Ok(RaftPeerClient::with_interceptor(channel, stamp)
            .max_decoding_message_size(helios_core::limits::MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(helios_core::limits::MAX_PEER_MESSAGE_BYTES))
    }

    /// Calls the peer at `addr`, noting whether it answered (see `STALE_AFTER`).
    pub async fn call<T, Fut>(&self, addr: &str, call: impl FnOnce(PeerClient) -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client(addr).map_err(|e| Status::unavailable(e.to_string()))?;
        let mut watch = CallWatch { channels: self, addr, answered: false };
        let reply = call(client).await;
        watch.answered = reply.as_ref().err().is_none_or(|status| !is_transport_failure(status));
        reply.map(tonic::Response::into_inner)
    }

    /// The peer at `addr` answered (with anything, errors included): its connection works.
    fn answered(&self, addr: &str) {
        if let Some(peer) = self.lock().get_mut(addr) {
            peer.answered = Instant::now();
        }
    }

    /// A call to `addr` failed in transport or was given up on: if nothing came back through its
    /// channel for `STALE_AFTER`, the next call opens a new connection (calls already under way
    /// keep the old one).
    fn unanswered(&self, addr: &str) {
        let mut map = self.lock();
        if map.get(addr).is_some_and(|peer| peer.answered.elapsed() >= STALE_AFTER) {
            map.remove(addr);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerChannel>> {
        // The map only caches channels; a poisoned lock cannot leave it inconsistent.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reports a call's outcome to `PeerChannels`; a call dropped before it ends (openraft gives up
/// on it at its deadline) counts as unanswered.
struct CallWatch<'a> {
    channels: &'a PeerChannels,
    addr: &'a str,
    answered: bool,
}

impl Drop for CallWatch<'_> {
    fn drop(&mut self) {
        if self.answered {
            self.channels.answered(self.addr);
        } else {
            self.channels.unanswered(self.addr);
        }
    }
}

pub struct NetworkFactory {
    pub channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection { target, addr: node.addr.clone(), channels: self.channels.clone() }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    channels: PeerChannels,
}

/// A transport failure (connection refused, reset, timed out): any other status is an answer.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// A peer that could not be reached is `Unreachable` (openraft backs off); one that answered with
/// an error is a network error.
fn status_to_rpc_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    if is_transport_failure(status) {
        RPCError::Unreachable(Unreachable::new(status))
    } else {
        RPCError::Network(NetworkError::new(status))
    }
}

fn decode_reply<T: serde::de::DeserializeOwned>(reply: RaftPayload) -> Result<T, RPCError<TypeConfig>> {
    decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl PeerConnection {
    fn client(&self) -> Result<PeerClient, RPCError<TypeConfig>> {
        self.channels.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    /// One request/response RPC: encode `rpc`, send it with openraft's deadline, decode the reply.
    async fn unary<Req, Resp, Fut>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        call: impl FnOnce(PeerClient, tonic::Request<RaftPayload>) -> Fut,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(RaftPayload { data: encode(rpc) });
        request.set_timeout(option.hard_ttl());
        let reply = self.channels.call(&self.addr, |client| call(client, request)).await;
        decode_reply(reply.map_err(|s| status_to_rpc_error(&s))?)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft gives every AppendEntries the heartbeat interval (50 ms) as its deadline. A
        // batch of entries that misses it is sent again from scratch, a loop that starves
        // replication under load: a batch must be received, decoded and fsynced, so it gets
        // longer. Heartbeats keep the short deadline (openraft's heartbeat worker enforces it
        // anyway); a read that finds no quorum is retried (`Cluster::handle_as_leader`).
        let option = if rpc.entries.is_empty() { option } else { RPCOption::new(APPEND_ENTRIES_TIMEOUT) };
        self.unary(&rpc, &option, |mut c, r| async move { c.append_entries(r).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(StreamingError::from)?;
        let Snapshot { meta, snapshot: data } = snapshot;
        // Encoding reads every state table: keep it off the async threads.
        let data = tokio::task::spawn_blocking(move || data.to_bytes())
            .await
            .map_err(|e| StreamingError::from(RPCError::Network(NetworkError::new(&e))))?
            .map_err(|e| StreamingError::from(RPCError::Network(NetworkError::new(&e))))?;
        let header = SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(encode(&(vote, meta)))) };
        let chunks: Vec<SnapshotChunk> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|c| SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Data(c.to_vec())) })
            .collect();
        let stream = futures::stream::iter(std::iter::once(header).chain(chunks));
        tracing::info!(target_node = self.target, bytes = data.len(), "sending snapshot");
        let send = client.install_snapshot(stream);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let reply = reply.map_err(|s| StreamingError::from(status_to_rpc_error(&s)))?;
                decode_reply(reply.into_inner()).map_err(StreamingError::from)
            }
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        // A down peer is retried every 200 ms: fast enough to catch a restart, cheap enough not to
        // matter.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}

#[cfg(test)]
mod tests {
    use helios_chaos::proxy::FreezableProxy;

    use super::*;

    /// A gRPC server (it answers peer calls with `Unimplemented`: an answer all the same) behind
    /// a proxy that can freeze like a silently dropped link.
    async fn peer_behind_proxy() -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (_, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
        FreezableProxy::start(addr).await.expect("proxy")
    }

    /// Deadlines for calls that get an answer, and for calls into a frozen link.
    const ANSWER: Duration = Duration::from_secs(10);
    const SILENCE: Duration = Duration::from_millis(100);

    async fn status_call(channels: &PeerChannels, addr: &str, timeout: Duration) -> Result<RaftPayload, Status> {
        let mut req = Request::new(RaftPayload { data: Vec::new() });
        req.set_timeout(timeout);
        channels.call(addr, |mut c| async move { c.status(req).await }).await
    }

    #[tokio::test]
    async fn a_connection_that_stopped_answering_is_replaced() {
        let peer = peer_behind_proxy().await;
        let channels = PeerChannels::default();
        for _ in 0..3 {
            // Patient: a busy machine must not turn an answer into a timeout.
            let status = status_call(&channels, &peer.addr, ANSWER).await.expect_err("no such method");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
        }
        assert_eq!(peer.connections(), 1, "calls that are answered share one connection");
        // The link drops everything from now on. Once nothing has come back for STALE_AFTER,
        // the next call that goes unanswered makes the one after it open a new connection
        // (HTTP/2 keepalive would notice only after 30 s).
        peer.freeze();
        let deadline = Instant::now() + Duration::from_secs(10);
        while peer.connections() < 2 {
            assert!(Instant::now() < deadline, "the silent connection was never replaced");
            let status = status_call(&channels, &peer.addr, SILENCE).await.expect_err("frozen");
            assert!(is_transport_failure(&status), "{status}");
        }
        peer.thaw();
    }

    #[tokio::test]
    async fn a_call_given_up_on_counts_as_unanswered() {
        let peer = peer_behind_proxy().await;
        let channels = PeerChannels::default();
        assert!(status_call(&channels, &peer.addr, ANSWER).await.is_err());
        peer.freeze();
        let deadline = Instant::now() + Duration::from_secs(10);
        while peer.connections() < 2 {
            assert!(Instant::now() < deadline, "the silent connection was never replaced");
            // As openraft does at its own deadline: the call's future is dropped unfinished.
            let call = status_call(&channels, &peer.addr, ANSWER);
            assert!(tokio::time::timeout(Duration::from_millis(20), call).await.is_err());
        }
        peer.thaw();
    }
}
