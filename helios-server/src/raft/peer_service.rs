//! The server side of server-to-server traffic: Raft RPCs, snapshot installation, forwarded
//! requests, and status for `server members`.

use futures::StreamExt;
use helios_api::pb::raft_peer_server::RaftPeer;
use helios_api::pb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::{SnapshotMeta, Vote};
use crate::cluster::{Cluster, ForwardRequest};
use crate::store::codec::{decode, encode};

/// Largest snapshot a server accepts: far above any state Helios keeps in practice, low enough
/// that a misbehaving peer cannot exhaust memory.
const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024 * 1024;

pub struct PeerService {
    pub cluster: Cluster,
}

/// Refuses a request whose payloads are in another stored format than this server's (a peer
/// running another build), before anything is decoded.
pub fn check_format(request: Request<()>) -> Result<Request<()>, Status> {
    let ours = crate::store::tables::FORMAT_VERSION;
    let theirs = request.metadata().get(super::network::FORMAT_HEADER).and_then(|v| v.to_str().ok());
    match theirs.and_then(|v| v.parse::<u32>().ok()) {
        Some(format) if format == ours => Ok(request),
        other => Err(Status::failed_precondition(format!(
            "the peer sends stored format {}, but this server reads format {ours}: run the same Helios build on every server",
            other.map_or_else(|| "none (an older build)".to_string(), |f| f.to_string())
        ))),
    }
}

fn bad_payload(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer payload: {e}"))
}

/// Decodes an openraft request, hands it to Raft, and encodes Raft's answer.
async fn relay<Req, Resp, E, Fut>(
    request: Request<RaftPayload>,
    handle: impl FnOnce(Req) -> Fut,
) -> Result<Response<RaftPayload>, Status>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<Resp, E>>,
{
    let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
    let result = handle(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
    reply(&result)
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload { data: encode(value) }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        relay(request, |rpc| self.cluster.raft.append_entries(rpc)).await
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        relay(request, |rpc| self.cluster.raft.vote(rpc)).await
    }

    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        relay(request, |rpc| self.cluster.raft.pre_vote(rpc)).await
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(meta)) })) => meta,
            Some(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("a snapshot stream must start with its metadata")),
        };
        let (vote, meta): (Vote, SnapshotMeta) = decode(&header).map_err(bad_payload)?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.chunk {
                Some(snapshot_chunk::Chunk::Data(bytes)) => {
                    if data.len() + bytes.len() > MAX_SNAPSHOT_BYTES {
                        return Err(Status::resource_exhausted("snapshot exceeds the size limit"));
                    }
                    data.extend_from_slice(&bytes);
                }
                _ => return Err(Status::invalid_argument("metadata may only open a snapshot stream")),
            }
        }
        tracing::info!(bytes = data.len(), last_log_id = ?meta.last_log_id, "installing snapshot from the leader");
        let snapshot = super::Snapshot { meta, snapshot: super::SnapshotData::Encoded(data) };
        let result = self
            .cluster
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        reply(&result)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let forwarded: ForwardRequest = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.cluster.handle_as_leader(forwarded).await)
    }

    async fn status(&self, _request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        reply(&self.cluster.own_status())
    }
}
