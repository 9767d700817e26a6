//! The client side of server-to-server traffic: openraft's network over tonic.
//!
//! One lazily-connected HTTP/2 channel per peer, shared by replication, votes, snapshots and
//! forwarding. A peer that cannot be reached is reported as `Unreachable`, so openraft backs off
//! instead of hammering it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerChannels {
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::transport::Error> {
        // The map only caches channels; a poisoned lock cannot leave it inconsistent.
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_lazy();
                map.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        let stamp: fn(Request<()>) -> Result<Request<()>, Status> = stamp_format;
        Ok(RaftPeerClient::with_interceptor(channel, stamp)
            .max_decoding_message_size(helios_core::limits::MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(helios_core::limits::MAX_PEER_MESSAGE_BYTES))
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

/// A transport failure (connection refused, reset, timed out) means the peer is unreachable; any
/// other status means it answered with an error.
fn status_to_rpc_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        _ => RPCError::Network(NetworkError::new(status)),
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
        let reply = call(self.client()?, request).await.map_err(|s| status_to_rpc_error(&s))?;
        decode_reply(reply.into_inner())
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft gives every AppendEntries the heartbeat interval (100 ms) as its deadline. A
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
