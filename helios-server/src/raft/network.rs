//! The client side of server-to-server traffic: openraft's network over tonic.
//!
//! One lazily-connected HTTP/2 channel per peer, shared by replication, votes, snapshots and
//! forwarding. A peer that cannot be reached is reported as `Unreachable`, so openraft backs off
//! instead of hammering it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use helios_api::pb::raft_peer_client::RaftPeerClient;
use helios_api::pb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use helios_api::tls::{Role, Tls};

use super::peer_auth::PeerAuth;
use super::{NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::store::codec::{decode, encode, try_encode};
use crate::store::StoredFormat;

/// How long a follower may take to store a batch of entries (see `append_entries`).
const APPEND_ENTRIES_TIMEOUT: Duration = Duration::from_secs(5);

/// Snapshot data travels in chunks of this size, well under the gRPC message limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The peer API's method names, as the MACs of its requests cover them.
pub mod methods {
    pub const APPEND_ENTRIES: &str = "append_entries";
    pub const VOTE: &str = "vote";
    pub const PRE_VOTE: &str = "pre_vote";
    pub const INSTALL_SNAPSHOT: &str = "install_snapshot";
    pub const FORWARD: &str = "forward";
    pub const STATUS: &str = "status";
}

/// A client to a peer whose every request says which stored format it writes.
pub type PeerClient = RaftPeerClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

/// Metadata on every request and answer between servers: the sender's `tables::FORMAT_VERSION`.
/// A server refuses requests from builds older than `MIN_PEER_FORMAT` rather than misread them
/// (`peer_service::check_format`), and remembers what each peer announced (`PeerFormats`): the
/// leader proposes a command only once every voter reads its format.
pub const FORMAT_HEADER: &str = "helios-stored-format";

/// The oldest format a peer may run: the first whose records carry their versions, so that a
/// newer build can read its payloads and (writing at the cluster's format) be read by it.
pub const MIN_PEER_FORMAT: u32 = 3;

/// The stored format each peer (by address) last announced, in a request to this server or an
/// answer to one of its requests, and the cluster's replicated one.
#[derive(Clone, Default)]
pub struct PeerFormats {
    announced: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Woken when a peer announces a format it had not: the leader may raise the cluster's.
    changed: Arc<tokio::sync::Notify>,
    /// The cluster's stored format as this server applied it: every voter reads it.
    pub stored: StoredFormat,
}

impl PeerFormats {
    pub fn new(stored: StoredFormat) -> PeerFormats {
        PeerFormats { announced: Arc::default(), changed: Arc::default(), stored }
    }

    pub fn record(&self, addr: &str, metadata: &tonic::metadata::MetadataMap) {
        if let Some(format) = announced_format(metadata) {
            let mut formats = self.announced.lock().expect("not poisoned");
            if formats.get(addr) != Some(&format) {
                formats.insert(addr.to_string(), format);
                self.changed.notify_one();
            }
        }
    }

    /// Waits until a peer announces a format it had not.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn get(&self, addr: &str) -> Option<u32> {
        self.announced.lock().expect("not poisoned").get(addr).copied()
    }

    /// The format every one of `voters` (addresses, this server's own left out) reads: the oldest
    /// announced, counting a voter not heard from yet as the oldest format a peer may run.
    pub fn oldest_announced<'a>(&self, peers: impl IntoIterator<Item = &'a str>) -> u32 {
        peers
            .into_iter()
            .map(|addr| self.get(addr).unwrap_or(MIN_PEER_FORMAT))
            .fold(crate::store::tables::FORMAT_VERSION, u32::min)
    }

    /// The format to write messages to `addr` for: the one it announced, or, before it has
    /// announced one, the cluster's (which every voter reads). An entry the peer could not read
    /// then fails to encode and is retried: the peer's answers to heartbeats announce its format.
    pub fn write_for(&self, addr: &str) -> u32 {
        self.get(addr).unwrap_or_else(|| self.stored.get())
    }
}

/// The format a request or answer announces.
pub fn announced_format(metadata: &tonic::metadata::MetadataMap) -> Option<u32> {
    metadata.get(FORMAT_HEADER)?.to_str().ok()?.parse().ok()
}

fn stamp_format(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert(FORMAT_HEADER, crate::store::tables::FORMAT_VERSION.into());
    Ok(request)
}

/// Channels to peers by address, shared by the Raft network and request forwarding, and the
/// credentials every request through them carries.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, PeerChannel>>>,
    pub auth: PeerAuth,
    pub formats: PeerFormats,
    /// Mutual TLS to peers (and to agents, for logs), if this server has it; replaced when the
    /// certificates are reloaded (`set_tls`).
    tls: Arc<std::sync::RwLock<Option<Tls>>>,
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
    pub fn new(auth: PeerAuth, tls: Option<Tls>, stored: StoredFormat) -> PeerChannels {
        PeerChannels {
            channels: Arc::default(),
            auth,
            formats: PeerFormats::new(stored),
            tls: Arc::new(std::sync::RwLock::new(tls)),
        }
    }

    /// `value` encoded for what the peer at `addr` reads (`PeerFormats::write_for`).
    pub fn encode_for<T: serde::Serialize + ?Sized>(&self, addr: &str, value: &T) -> io::Result<Vec<u8>> {
        helios_core::format::write_for(self.formats.write_for(addr), || try_encode(value))
    }

    pub fn has_tls(&self) -> bool {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// New certificates (SIGHUP): later connections use them; cached channels are dropped, so
    /// no connection made with the old ones is opened again. Calls under way finish on theirs.
    pub fn set_tls(&self, tls: Option<Tls>) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        self.lock().clear();
    }

    /// An endpoint for a peer of `role` at `addr`: https with this server's certificate when it
    /// has TLS, plain http otherwise.
    pub fn endpoint(&self, addr: &str, role: Role) -> Result<Endpoint, String> {
        helios_api::tls::endpoint(addr, self.tls.read().unwrap_or_else(|e| e.into_inner()).as_ref(), role)
    }

    fn client(&self, addr: &str) -> Result<PeerClient, String> {
        let channel = {
            let mut map = self.lock();
            match map.get(addr) {
                Some(peer) => peer.channel.clone(),
                None => {
                    let channel = self
                        .endpoint(addr, Role::Server)?
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

    /// Calls `method` of the peer at `addr` with `body`, signed as this server's, and returns
    /// the answer once it is known to come from a holder of the cluster key (when there is
    /// one); notes whether the peer answered (see `STALE_AFTER`).
    pub async fn call<Fut>(
        &self,
        addr: &str,
        method: &str,
        body: Vec<u8>,
        timeout: Duration,
        call: impl FnOnce(PeerClient, Request<RaftPayload>) -> Fut,
    ) -> Result<RaftPayload, Status>
    where
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, Status>>,
    {
        let client = self.client(addr).map_err(|e| Status::unavailable(e.to_string()))?;
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mac = self.auth.sign_request(method, &body, &mut metadata);
        let mut request = Request::new(RaftPayload { data: body });
        *request.metadata_mut() = metadata;
        request.set_timeout(timeout);
        let mut watch = CallWatch { channels: self, addr, answered: false };
        let reply = call(client, request).await;
        watch.answered = reply.as_ref().err().is_none_or(|status| !is_transport_failure(status));
        let reply = reply?;
        self.auth.verify_reply(mac.as_deref(), reply.metadata(), &reply.get_ref().data)?;
        self.formats.record(addr, reply.metadata());
        Ok(reply.into_inner())
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
        self.channels.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))
    }

    /// One request/response RPC: encode `rpc`, send it with openraft's deadline, decode the reply.
    async fn unary<Req, Resp, Fut>(
        &self,
        method: &str,
        rpc: &Req,
        option: &RPCOption,
        call: impl FnOnce(PeerClient, tonic::Request<RaftPayload>) -> Fut,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let body = self.channels.encode_for(&self.addr, rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self.channels.call(&self.addr, method, body, option.hard_ttl(), call).await;
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
        self.unary(methods::APPEND_ENTRIES, &rpc, &option, |mut c, r| async move { c.append_entries(r).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(methods::VOTE, &rpc, &option, |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(methods::PRE_VOTE, &rpc, &option, |mut c, r| async move { c.pre_vote(r).await }).await
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
        let header = encode(&(vote, meta.clone()));
        let mut metadata = tonic::metadata::MetadataMap::new();
        let request_mac = self.channels.auth.sign_request(methods::INSTALL_SNAPSHOT, &header, &mut metadata);
        let data_mac = request_mac.as_deref().and_then(|m| self.channels.auth.snapshot_data_mac(m));
        // The stream is produced by a blocking thread one chunk ahead of the network: neither
        // side holds more than a few chunks of it, however large the state.
        let chunks_rx =
            super::snapshot::stream_chunks(data, meta, SNAPSHOT_CHUNK_BYTES, super::snapshot::CHUNK_TAKEN_WITHIN);
        // Data chunks as they come, then (with a key) the MAC over all of them. A stream whose
        // producer failed ends without its trailer or end frame, so the receiver refuses it.
        // When the network last took a chunk (None once all are taken): a receiver that stops
        // taking them is abandoned after `SNAPSHOT_CHUNK_TIMEOUT`, and openraft retries.
        let last_taken = Arc::new(Mutex::new(Some(Instant::now())));
        let taken = last_taken.clone();
        let data_chunks = futures::stream::unfold((chunks_rx, data_mac, false), move |(mut rx, mut mac, done)| {
            let taken = taken.clone();
            async move {
                *taken.lock().expect("not poisoned") = (!done).then(Instant::now);
                if done {
                    return None;
                }
                match rx.recv().await {
                    Some(Ok(chunk)) => {
                        if let Some(mac) = &mut mac {
                            mac.update(&chunk);
                        }
                        Some((SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Data(chunk)) }, (rx, mac, false)))
                    }
                    Some(Err(_)) => None,
                    None => mac.map(|mac| {
                        (SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Mac(mac.finish())) }, (rx, None, true))
                    }),
                }
            }
        });
        let header = SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(header)) };
        let mut request = Request::new(futures::stream::iter(std::iter::once(header)).chain(data_chunks));
        *request.metadata_mut() = metadata;
        tracing::info!(target_node = self.target, "sending snapshot");
        let send = client.install_snapshot(request);
        let stalled = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let last = *last_taken.lock().expect("not poisoned");
                if last.is_some_and(|at| at.elapsed() > crate::raft::peer_service::SNAPSHOT_CHUNK_TIMEOUT) {
                    return;
                }
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            () = stalled => {
                tracing::warn!(target_node = self.target, "the peer stopped taking the snapshot; abandoning it");
                let stalled = io::Error::new(io::ErrorKind::TimedOut, "the snapshot transfer stalled");
                Err(StreamingError::from(RPCError::Unreachable(Unreachable::new(&stalled))))
            }
            reply = send => {
                let reply = reply.map_err(|s| StreamingError::from(status_to_rpc_error(&s)))?;
                let verified = self.channels.auth.verify_reply(request_mac.as_deref(), reply.metadata(), &reply.get_ref().data);
                verified.map_err(|s| StreamingError::from(RPCError::Network(NetworkError::new(&s))))?;
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

    #[test]
    fn the_announced_format_is_the_oldest_a_voter_announced() {
        let formats = PeerFormats::default();
        let ours = crate::store::tables::FORMAT_VERSION;
        assert_eq!(formats.oldest_announced([]), ours, "alone, a server's own format");
        assert_eq!(formats.oldest_announced(["a:1"]), MIN_PEER_FORMAT, "a voter not heard from: the oldest allowed");
        let announce = |addr: &str, format: u32| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(FORMAT_HEADER, format.into());
            formats.record(addr, &metadata);
        };
        announce("a:1", ours + 1);
        announce("b:1", ours);
        assert_eq!(formats.oldest_announced(["a:1", "b:1"]), ours, "a newer voter does not raise it past ours");
        announce("b:1", MIN_PEER_FORMAT);
        assert_eq!(formats.oldest_announced(["a:1", "b:1"]), MIN_PEER_FORMAT);
        assert_eq!(formats.oldest_announced(["a:1"]), ours, "only the voters asked about count");

        // Messages are written for what each peer announced, for the cluster's format before.
        assert_eq!(formats.write_for("b:1"), MIN_PEER_FORMAT);
        assert_eq!(formats.write_for("c:1"), helios_core::format::OLDEST_WRITTEN_FORMAT, "not heard from");
        formats.stored.set(ours);
        assert_eq!(formats.write_for("c:1"), ours, "not heard from, in a raised cluster");
    }

    #[test]
    fn a_command_a_peer_cannot_read_is_refused_not_sent_misread() {
        let channels = PeerChannels::new(PeerAuth::new(1, None), None, StoredFormat::default());
        let raise = helios_core::Command::RaiseFormat { format: crate::store::tables::FORMAT_VERSION };
        let error = channels.encode_for("old:1", &raise).expect_err("format 3 cannot read it");
        assert!(error.to_string().contains("cannot be written for stored format 3"), "{error}");
        channels.formats.stored.set(crate::store::tables::FORMAT_VERSION);
        channels.encode_for("old:1", &raise).expect("a raised cluster's peers read it");
    }

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
        channels.call(addr, methods::STATUS, Vec::new(), timeout, |mut c, r| async move { c.status(r).await }).await
    }

    fn channels() -> PeerChannels {
        PeerChannels::new(PeerAuth::new(1, None), None, StoredFormat::default())
    }

    #[tokio::test]
    async fn a_connection_that_stopped_answering_is_replaced() {
        let peer = peer_behind_proxy().await;
        let channels = channels();
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
        let channels = channels();
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
