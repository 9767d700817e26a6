//! The server side of server-to-server traffic: Raft RPCs, snapshot installation, forwarded
//! requests, and status for `server members`.
//!
//! Nothing reaches Raft before its sender is known and allowed (`admit`): the request must
//! authenticate (`peer_auth`), its sender must be a member of the membership this server holds,
//! the vote inside must be the sender's own, and its terms and indexes must be far from
//! overflowing. Refusals are logged (at most once per sender every few seconds: a storm of
//! forged messages must not become a storm of log lines).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use helios_api::pb::raft_peer_server::RaftPeer;
use helios_api::pb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::vote::RaftLeaderId;
use tonic::{Request, Response, Status, Streaming};

use super::network::{methods, MIN_PEER_FORMAT};
use super::peer_auth::{PeerAuth, Sender};
use super::snapshot::ReceivedFile;
use super::{LogId, NodeId, SnapshotMeta, TypeConfig, Vote};
use crate::cluster::{Cluster, ForwardRequest};
use crate::store::codec::{decode, decode_bounded, try_encode};

/// Largest snapshot a server accepts: far above any state Helios keeps in practice. It is
/// written to disk as it arrives, so this bounds disk use, not memory.
const MAX_SNAPSHOT_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Terms and log indexes from peers must stay below this: Raft adds one to them (a new term, the
/// next index), and a forged `u64::MAX` would wrap or panic. Real ones never come near.
pub const MAX_PEER_COUNTER: u64 = 1 << 62;

/// A peer's term may lead this server's by at most this much. Terms grow by one per election;
/// a member that jumps far ahead (a forged or corrupted message) would otherwise leave every
/// later election stuck against `MAX_PEER_COUNTER`.
pub const MAX_TERM_LEAD: u64 = 1 << 20;

/// A refusal is logged at most this often per sender.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// Senders whose refusals are counted; beyond this the counts start over (a keyless attacker
/// can name any id, and must not grow the map without end).
const REFUSAL_SENDERS: usize = 1024;

/// A snapshot stream that sends nothing for this long is given up, freeing the one slot.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PeerService {
    cluster: Cluster,
    auth: PeerAuth,
    /// One snapshot is received at a time: each can be gigabytes of disk.
    snapshot_slot: tokio::sync::Semaphore,
    refusals: Mutex<HashMap<NodeId, (Option<Instant>, u64)>>,
}

/// What kind of vote a message must carry: a leader's (committed) in replication, a
/// candidate's (not yet committed) in an election.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VoteKind {
    Leader,
    Candidate,
}

/// Refuses a request from a build older than `MIN_PEER_FORMAT` (whose payloads this server
/// would misread), before anything is decoded. Newer builds are heard: they write what the
/// cluster's oldest member reads.
pub fn check_format(request: Request<()>) -> Result<Request<()>, Status> {
    let ours = crate::store::tables::FORMAT_VERSION;
    match super::network::announced_format(request.metadata()) {
        Some(format) if format >= MIN_PEER_FORMAT => Ok(request),
        other => Err(Status::failed_precondition(format!(
            "the peer sends stored format {}, but this server (format {ours}) talks to format {MIN_PEER_FORMAT} or later: \
             upgrade every server of an older cluster together (docs/operations.md)",
            other.map_or_else(|| "none (an older build)".to_string(), |f| f.to_string())
        ))),
    }
}

fn bad_payload(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer payload: {e}"))
}

fn check_counter(what: &str, value: u64) -> Result<(), Status> {
    if value >= MAX_PEER_COUNTER {
        return Err(Status::invalid_argument(format!("{what} {value} is out of range (at most {MAX_PEER_COUNTER})")));
    }
    Ok(())
}

fn check_log_id(what: &str, log_id: Option<&LogId>) -> Result<(), Status> {
    if let Some(id) = log_id {
        check_counter(&format!("{what} index"), id.index())?;
        check_counter(&format!("{what} term"), id.committed_leader_id().term())?;
    }
    Ok(())
}

/// Replicated entries must follow `prev_log_id` one index at a time and belong to the sending
/// leader's term or an earlier one: openraft only debug-asserts this, so a release build would
/// store a malformed run.
fn check_entries(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
    let leader = *rpc.vote.leader_id();
    check_log_id("previous log", rpc.prev_log_id.as_ref())?;
    check_log_id("leader commit", rpc.leader_commit.as_ref())?;
    let first = rpc.prev_log_id.as_ref().map_or(0, |id| id.index() + 1);
    let mut previous = rpc.prev_log_id;
    for (expected, entry) in (first..).zip(&rpc.entries) {
        let id = entry.log_id();
        check_log_id("entry", Some(&id))?;
        if id.index() != expected {
            return Err(Status::invalid_argument(format!("entry index {} where {expected} was due", id.index())));
        }
        if id.committed_leader_id() > &leader
            || previous.as_ref().is_some_and(|p| p.committed_leader_id() > id.committed_leader_id())
        {
            return Err(Status::invalid_argument(format!("entry {id} is out of order with the leader's vote")));
        }
        previous = Some(id);
    }
    if rpc.prev_log_id.as_ref().is_some_and(|p| p.committed_leader_id() > &leader) {
        return Err(Status::invalid_argument("the previous log id is beyond the leader's vote"));
    }
    Ok(())
}

/// A snapshot must be newer than this server's vote allows, end at a log id its leader could
/// have written, and go beyond what this server committed (openraft asserts the last two).
fn check_snapshot_meta(
    vote: &Vote,
    current: &Vote,
    committed: Option<&LogId>,
    meta: &SnapshotMeta,
) -> Result<(), Status> {
    if vote < current {
        return Err(Status::failed_precondition(format!(
            "a snapshot with vote {vote}, older than this server's {current}"
        )));
    }
    let last = meta.last_log_id.as_ref().ok_or_else(|| Status::invalid_argument("a snapshot of nothing"))?;
    check_log_id("snapshot last log", Some(last))?;
    if last.committed_leader_id() > vote.leader_id() {
        return Err(Status::invalid_argument(format!(
            "snapshot last log id {last} is beyond its leader's vote {vote}"
        )));
    }
    // One that ends at or before what this server committed is a harmless resend that openraft
    // ignores; one greater than that but not at a greater index contradicts committed entries
    // (openraft asserts it cannot happen).
    if committed.is_some_and(|c| last > c && last.index() <= c.index()) {
        return Err(Status::invalid_argument(format!(
            "the snapshot ends at {last}, which contradicts what this server committed"
        )));
    }
    Ok(())
}

/// Removes snapshots left half received by a crash.
fn sweep_incoming_snapshots(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot-from-") && name.ends_with(".incoming") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a half-received snapshot");
            }
        }
    }
}

impl PeerService {
    pub fn new(cluster: Cluster) -> PeerService {
        let auth = cluster.channels.auth.clone();
        sweep_incoming_snapshots(&cluster.data_dir);
        PeerService { cluster, auth, snapshot_slot: tokio::sync::Semaphore::new(1), refusals: Mutex::default() }
    }

    /// The request's sender, if it authenticates and is a member; otherwise the refusal.
    ///
    /// Replication (`replication: true`) from a server that proved it belongs to the cluster (the
    /// key, or a server certificate) is heard even if this server does not yet know it as a
    /// member: a follower that missed the entry adding a server that now leads learns of it only
    /// through that leader's replication. Votes and forwarded requests always need a member.
    fn admit(&self, method: &str, request: &Request<RaftPayload>, replication: bool) -> Result<Sender, Status> {
        let sender = self.auth.verify_request(method, request.metadata(), &request.get_ref().data);
        let mut sender = sender.map_err(|status| self.refused(None, method, status))?;
        sender.format = super::network::announced_format(request.metadata());
        let proven = self.auth.is_keyed() || self.cluster.channels.has_tls();
        if !(replication && proven) {
            self.check_member(&sender, method)?;
        }
        if let Some(addr) = self.cluster.membership().0.get(&sender.id) {
            self.cluster.channels.formats.record(addr, request.metadata());
        }
        Ok(sender)
    }

    /// Only members of the membership this server holds are heard. A server that is not yet in
    /// any cluster (it waits to be added) holds none, and hears whoever authenticates: the
    /// leader adding it.
    fn check_member(&self, sender: &Sender, method: &str) -> Result<(), Status> {
        let member = {
            let metrics = self.cluster.raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            membership.nodes().next().is_none() || membership.get_node(&sender.id).is_some()
        };
        if member {
            return Ok(());
        }
        let status = Status::permission_denied(format!(
            "server {} is not a member of this cluster; members change only through `server join`",
            sender.id
        ));
        Err(self.refused(Some(sender.id), method, status))
    }

    /// The vote in a message must be its sender's own, of the right kind, and its term within
    /// reach of this server's.
    fn check_own_vote(&self, sender: &Sender, method: &str, vote: &Vote, kind: VoteKind) -> Result<(), Status> {
        let refuse = |status| self.refused(Some(sender.id), method, status);
        check_counter("term", vote.leader_id().term()).map_err(refuse)?;
        let claimed = *vote.leader_id().node_id();
        if claimed != sender.id {
            return Err(refuse(Status::permission_denied(format!(
                "server {} sent a vote of server {claimed}",
                sender.id
            ))));
        }
        if vote.is_committed() != (kind == VoteKind::Leader) {
            return Err(refuse(Status::invalid_argument(
                "a leader's vote in an election, or a candidate's in replication",
            )));
        }
        let ours = self.cluster.raft.metrics().borrow_watched().current_term;
        let term = vote.leader_id().term();
        if term > ours.saturating_add(MAX_TERM_LEAD) {
            return Err(refuse(Status::invalid_argument(format!(
                "term {term} is more than {MAX_TERM_LEAD} ahead of this server's {ours}"
            ))));
        }
        Ok(())
    }

    /// Logs a refusal (rate limited per sender) and passes it on.
    fn refused(&self, sender: Option<NodeId>, method: &str, status: Status) -> Status {
        let key = sender.unwrap_or(NodeId::MAX);
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if refusals.len() >= REFUSAL_SENDERS && !refusals.contains_key(&key) {
            refusals.clear();
        }
        let (last, count) = refusals.entry(key).or_insert((None, 0));
        *count += 1;
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                sender = ?sender,
                method,
                refused_since_last_report = *count,
                reason = status.message(),
                "refused a peer request"
            );
            *last = Some(Instant::now());
            *count = 0;
        }
        status
    }

    /// Answers `sender`, written for the format it announced (`PeerFormats::write_for`).
    fn reply<T: serde::Serialize>(&self, sender: &Sender, value: &T) -> Result<Response<RaftPayload>, Status> {
        let format = sender.format.unwrap_or_else(|| self.cluster.channels.formats.stored.get());
        let data = helios_core::format::write_for(format, || try_encode(value))
            .map_err(|e| Status::failed_precondition(format!("the answer cannot be sent to this peer: {e}")))?;
        let mut metadata = tonic::metadata::MetadataMap::new();
        self.auth.sign_reply(sender, &data, &mut metadata);
        metadata.insert(super::network::FORMAT_HEADER, crate::store::tables::FORMAT_VERSION.into());
        let mut response = Response::new(RaftPayload { data });
        *response.metadata_mut() = metadata;
        Ok(response)
    }

    async fn vote_like(
        &self,
        method: &str,
        request: Request<RaftPayload>,
        pre_vote: bool,
    ) -> Result<Response<RaftPayload>, Status> {
        let sender = self.admit(method, &request, false)?;
        let rpc: VoteRequest<TypeConfig> = decode_bounded(&request.get_ref().data).map_err(bad_payload)?;
        self.check_own_vote(&sender, method, &rpc.vote, VoteKind::Candidate)?;
        check_log_id("last log", rpc.last_log_id.as_ref())?;
        // Helios never transfers leadership, so no vote may claim the leader's permission to
        // disrupt it (openraft would then ignore the leader's lease).
        if rpc.leadership_transfer {
            let status = Status::permission_denied("this cluster does not transfer leadership; vote refused");
            return Err(self.refused(Some(sender.id), method, status));
        }
        let result = if pre_vote { self.cluster.raft.pre_vote(rpc).await } else { self.cluster.raft.vote(rpc).await };
        self.reply(&sender, &result.map_err(|e| Status::internal(e.to_string()))?)
    }

    /// Receives a snapshot's data into a file, checking size and (keyed) the MAC that ends it.
    async fn receive_snapshot(
        &self,
        sender: &Sender,
        stream: &mut Streaming<SnapshotChunk>,
    ) -> Result<ReceivedFile, Status> {
        // Received snapshots are written to the data dir while they arrive.
        let path =
            self.cluster.data_dir.join(format!("snapshot-from-{}-{}.incoming", sender.id, crate::clock::new_id()));
        let file = std::fs::File::create(&path)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", path.display())))?;
        // From here on the file is removed whatever happens.
        let received = ReceivedFile(path);
        let mut out = std::io::BufWriter::new(file);
        let mut mac = sender.request_mac.as_deref().and_then(|m| self.auth.snapshot_data_mac(m));
        let mut size = 0u64;
        let mut mac_seen = false;
        loop {
            let next = tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.next())
                .await
                .map_err(|_| Status::deadline_exceeded("the snapshot stream stalled"))?;
            let Some(chunk) = next else { break };
            match chunk?.chunk {
                Some(snapshot_chunk::Chunk::Data(bytes)) if !mac_seen => {
                    size += bytes.len() as u64;
                    if size > MAX_SNAPSHOT_BYTES {
                        return Err(Status::resource_exhausted("snapshot exceeds the size limit"));
                    }
                    if let Some(mac) = &mut mac {
                        mac.update(&bytes);
                    }
                    // Small buffered writes; the final flush and sync happen below.
                    out.write_all(&bytes).map_err(|e| Status::internal(format!("writing the snapshot: {e}")))?;
                }
                Some(snapshot_chunk::Chunk::Mac(given)) if !mac_seen => {
                    let Some(expected) = mac.take() else {
                        return Err(Status::invalid_argument("a MAC chunk in a cluster without a key"));
                    };
                    if !expected.verify(&given) {
                        return Err(Status::unauthenticated("the snapshot's data does not match its MAC"));
                    }
                    mac_seen = true;
                }
                _ => return Err(Status::invalid_argument("metadata may only open a snapshot stream, a MAC close it")),
            }
        }
        if mac.is_some() {
            return Err(Status::unauthenticated("the snapshot stream ended without its MAC"));
        }
        out.flush().map_err(|e| Status::internal(format!("writing the snapshot: {e}")))?;
        Ok(received)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let method = methods::APPEND_ENTRIES;
        let sender = self.admit(method, &request, true)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.get_ref().data).map_err(bad_payload)?;
        self.check_own_vote(&sender, method, &rpc.vote, VoteKind::Leader)?;
        check_entries(&rpc).map_err(|status| self.refused(Some(sender.id), method, status))?;
        let result = self.cluster.raft.append_entries(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&sender, &result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.vote_like(methods::VOTE, request, false).await
    }

    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.vote_like(methods::PRE_VOTE, request, true).await
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let method = methods::INSTALL_SNAPSHOT;
        let (metadata, _, mut stream) = request.into_parts();
        // The header is read before anything is known of the sender: bounded in time too.
        let first = tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no snapshot metadata"))?;
        let header = match first {
            Some(Ok(SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(meta)) })) => meta,
            Some(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("a snapshot stream must start with its metadata")),
        };
        // Who sends it, and whether its vote still counts, before a byte of data is read.
        let header = RaftPayload { data: header };
        let sender = self.admit(method, &Request::from_parts(metadata, Default::default(), header.clone()), true)?;
        let (vote, meta): (Vote, SnapshotMeta) = decode_bounded(&header.data).map_err(bad_payload)?;
        self.check_own_vote(&sender, method, &vote, VoteKind::Leader)?;
        let (current, committed) = {
            let metrics = self.cluster.raft.metrics();
            let m = metrics.borrow_watched();
            (m.vote, m.local_committed)
        };
        check_snapshot_meta(&vote, &current, committed.as_ref(), &meta)
            .map_err(|status| self.refused(Some(sender.id), method, status))?;
        let Ok(_slot) = self.snapshot_slot.try_acquire() else {
            return Err(Status::resource_exhausted("another snapshot is being received; try again"));
        };
        let received = self.receive_snapshot(&sender, &mut stream).await?;
        tracing::info!(from = sender.id, last_log_id = ?meta.last_log_id, "installing a snapshot from the leader");
        let snapshot = super::Snapshot { meta, snapshot: super::SnapshotData::Received(Arc::new(received)) };
        let result = self
            .cluster
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&sender, &result)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let method = methods::FORWARD;
        let sender = self.admit(method, &request, false)?;
        let forwarded: ForwardRequest = decode_bounded(&request.get_ref().data).map_err(bad_payload)?;
        crate::cluster::check_forwarded(&forwarded).map_err(|status| self.refused(Some(sender.id), method, status))?;
        if let ForwardRequest::Write(proposal) = &forwarded {
            // The proposal id the forwarding server logged with the call's request id.
            tracing::debug!(from = sender.id, proposal = %proposal.request_id, "forwarded");
        }
        self.reply(&sender, &self.cluster.handle_as_leader(forwarded).await)
    }

    async fn status(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        // Any holder of the key may ask (the leader asks a server it is about to add); the
        // signed answer is how it proves it holds the key too.
        let sender = self
            .auth
            .verify_request(methods::STATUS, request.metadata(), &request.get_ref().data)
            .map_err(|status| self.refused(None, methods::STATUS, status))?;
        self.reply(&sender, &self.cluster.own_status())
    }
}
