//! One server's handle on the cluster: Raft, the database, and the rules that make "any server
//! answers" true.
//!
//! - Writes: proposed locally when this server leads; otherwise forwarded to the leader over the
//!   peer API, retried across elections until a deadline.
//! - Reads that must be current: the leader confirms its leadership with a quorum (ReadIndex) and
//!   names the commit index; this server waits until it has applied that index, then reads its own
//!   tables. A follower therefore never serves a read older than a write acknowledged before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use helios_core::acl::{AclToken, Capability};
use helios_core::command::Answer;
use helios_core::{Command, CommandResponse, EvalStatus, Proposal, Rejection};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use redb::{Database, ReadTransaction, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;

use crate::clock;
use crate::liveness::HeartbeatTracker;
use crate::raft::network::{methods, PeerChannels, PeerClient};
use crate::raft::{NodeId, Raft};
use crate::store::codec::decode;
use crate::store::StoreError;
use crate::telemetry;

/// How long a request waits for a leader (an election, a restart) before giving up.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// How long a joining server may take to catch up (it may need a large snapshot) before the
/// join is abandoned and the server removed again.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Cluster {
    pub node_id: NodeId,
    pub raft: Raft,
    pub db: Arc<Database>,
    pub channels: PeerChannels,
    pub heartbeat_ttl: Duration,
    /// Client liveness; meaningful only while this server leads (see `liveness`).
    pub tracker: Arc<HeartbeatTracker>,
    /// Wakes agents' allocation watches (see `signals`).
    pub signals: crate::signals::NodeSignals,
    /// Public calls need a token (`api::auth`).
    pub acl_enabled: bool,
    /// What tokens were found to grant, by secret hash, with the ACL generation they were read
    /// at (`NodeSignals::acl_generation`): the leader answers most authorizations from here.
    pub acl_cache: Arc<std::sync::Mutex<HashMap<Option<String>, CachedGrants>>>,
    /// This server's data dir: received snapshots, an operator's `acl-bootstrap-reset` file.
    pub data_dir: std::path::PathBuf,
    /// How long finished records are kept (`crate::gc`).
    pub gc: helios_core::gc::Thresholds,
}

/// A token's grants as read at an ACL generation.
#[derive(Clone)]
pub struct CachedGrants {
    generation: u64,
    token: Option<AclToken>,
    grants: helios_core::acl::Grants,
}

/// Distinct secrets remembered at most; beyond, the cache starts over (a caller sending random
/// secrets must not grow it without end).
const ACL_CACHE_ENTRIES: usize = 10_000;

/// What a follower asks of the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Box<Proposal>),
    ReadIndex,
    AddServer {
        id: NodeId,
        addr: String,
    },
    RemoveServer {
        id: NodeId,
    },
    Heartbeat {
        node_id: String,
        secret: String,
    },
    /// May the holder of the secret hashing to `secret_hash` (none: an anonymous caller) use
    /// `capability`? Decided by the leader (see `Cluster::authorize`).
    Authorize {
        secret_hash: Option<String>,
        capability: Capability,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardResponse {
    Written {
        index: u64,
        response: CommandResponse,
    },
    ReadIndex {
        index: u64,
    },
    MembershipChanged {
        index: u64,
    },
    HeartbeatAccepted {
        ttl_ms: u64,
    },
    /// The receiver is not (or no longer) the leader; the hint names who is, if known.
    NotLeader {
        leader: Option<(NodeId, String)>,
    },
    Failed(ForwardFailure),
    /// The answer to `Authorize`: the caller's token (if any), and whether the capability is granted.
    Authorized {
        token: Option<AclToken>,
        allowed: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardFailure {
    #[error("{0}")]
    InvalidMembership(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The command needs a stored format some servers do not read yet (a rolling upgrade).
    #[error("{0}")]
    NeedsUpgrade(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader could be reached within {}s (election in progress, or a majority of servers is down)", .0.as_secs())]
    NoLeader(Duration),
    #[error("{0}")]
    InvalidMembership(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NeedsUpgrade(String),
    #[error("this server is no longer the leader")]
    NotLeader,
    #[error("{0}")]
    Storage(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
    /// The state machine refused the command against the state it met (nothing changed).
    #[error("{}", .0.message)]
    Rejected(Rejection),
}

impl From<io::Error> for ClusterError {
    fn from(e: io::Error) -> ClusterError {
        ClusterError::Storage(StoreError::from(e))
    }
}

/// A command's answer as `A`, or its rejection; an answer of another kind is a bug in this
/// server (the command and its handler disagree), reported as internal.
pub fn expect_answer<A: Answer>(response: CommandResponse) -> Result<Result<A, Rejection>, ClusterError> {
    A::expect(response).map_err(|other| {
        ClusterError::Internal(format!("expected a {} answer, got {other:?}", std::any::type_name::<A>()))
    })
}

/// This server's own view, as the peer `Status` call reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub last_applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub leader: Option<NodeId>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// The stored format it writes.
    pub format: u32,
    /// On the leader: how far each follower's log is behind the leader's (entries), by id.
    pub lag: BTreeMap<NodeId, u64>,
}

/// How a refusal of request ids and preconditions during an upgrade begins (clients that
/// fall back to sending without them look for it).
pub const CONDITIONS_NEED: &str = "request ids and version checks need every server to run stored format";

/// What a caller attaches to a write (`Cluster::write_with`): its own request id, so a retry
/// is answered rather than applied again, and a precondition, so a change made against a state
/// that has since changed is refused rather than lost.
#[derive(Debug, Clone, Default)]
pub struct WriteConditions {
    pub client_request: Option<helios_core::command::ClientRequest>,
    pub precondition: Option<helios_core::command::Precondition>,
}

impl Cluster {
    /// Proposes a command wherever the leader is, and returns its log index and the state
    /// machine's answer.
    ///
    /// The command is wrapped once in a `Proposal` with a fresh request id; every retry (a leader
    /// change, a lost reply) resends that same proposal, and the state machine applies a request
    /// id at most once, so retrying is always safe.
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResponse), ClusterError> {
        self.write_with(WriteConditions::default(), command).await
    }

    /// `write`, with the caller's request id and precondition (format 10).
    pub async fn write_with(
        &self,
        conditions: WriteConditions,
        command: Command,
    ) -> Result<(u64, CommandResponse), ClusterError> {
        let proposal = Proposal {
            client_request: conditions.client_request,
            precondition: conditions.precondition,
            ..Proposal::new(clock::new_id(), clock::now(), command)
        };
        // Inside the call's `request` span: its request id, then this proposal's id, which the
        // leader's `forwarded` line and every server's `applying` line name again.
        tracing::debug!(proposal = %proposal.request_id, command = %proposal.command, "proposing");
        // Refused here, by name, rather than by an older leader this server cannot write it for.
        self.check_cluster_format(&proposal).map_err(ClusterError::NeedsUpgrade)?;
        match self.submit(ForwardRequest::Write(Box::new(proposal)), REQUEST_DEADLINE).await? {
            ForwardResponse::Written { index, response } => Ok((index, response)),
            other => Err(ClusterError::Internal(format!("unexpected reply to a write: {other:?}"))),
        }
    }

    /// Proposes a command (as `write`) and returns its log index and its answer, of the type the
    /// caller expects; a refusal by the state machine is `ClusterError::Rejected`.
    pub async fn propose<A: Answer>(&self, command: Command) -> Result<(u64, A), ClusterError> {
        self.propose_with(WriteConditions::default(), command).await
    }

    /// `propose`, with the caller's request id and precondition (format 10).
    pub async fn propose_with<A: Answer>(
        &self,
        conditions: WriteConditions,
        command: Command,
    ) -> Result<(u64, A), ClusterError> {
        let (index, response) = self.write_with(conditions, command).await?;
        Ok((index, expect_answer::<A>(response)?.map_err(ClusterError::Rejected)?))
    }

    /// Runs `query` on this server's tables once they reflect every write committed before the
    /// call (a linearizable read).
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.linearize().await?;
        self.read_local(query).await
    }

    /// Returns once this server has applied every write committed before the call.
    pub async fn linearize(&self) -> Result<(), ClusterError> {
        let index = match self.submit(ForwardRequest::ReadIndex, REQUEST_DEADLINE).await? {
            ForwardResponse::ReadIndex { index } => index,
            other => return Err(ClusterError::Internal(format!("unexpected reply to a read index: {other:?}"))),
        };
        self.raft
            .wait(Some(REQUEST_DEADLINE))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| ClusterError::Internal(format!("waiting to apply index {index}: {e}")))?;
        Ok(())
    }

    /// Runs `query` on this server's tables as they are now (possibly behind the leader).
    pub async fn read_local<T: Send + 'static>(
        &self,
        query: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            query(&txn)
        })
        .await
        .map_err(|e| ClusterError::Internal(e.to_string()))?;
        Ok(result?)
    }

    pub async fn add_server(&self, id: NodeId, addr: String) -> Result<u64, ClusterError> {
        match self.submit(ForwardRequest::AddServer { id, addr }, JOIN_DEADLINE).await? {
            ForwardResponse::MembershipChanged { index } => Ok(index),
            other => Err(ClusterError::Internal(format!("unexpected reply: {other:?}"))),
        }
    }

    pub async fn remove_server(&self, id: NodeId) -> Result<u64, ClusterError> {
        match self.submit(ForwardRequest::RemoveServer { id }, REQUEST_DEADLINE).await? {
            ForwardResponse::MembershipChanged { index } => Ok(index),
            other => Err(ClusterError::Internal(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Sends `request` to the leader (this server or another), following leader hints and
    /// waiting out elections until `patience` has passed.
    async fn submit(&self, request: ForwardRequest, patience: Duration) -> Result<ForwardResponse, ClusterError> {
        let deadline = Instant::now() + patience;
        let mut hint: Option<(NodeId, String)> = None;
        loop {
            let target = hint.take().or_else(|| self.known_leader());
            let target_id = target.as_ref().map(|(id, _)| *id);
            let reply = match &target {
                Some((id, _)) if *id == self.node_id => Some(self.handle_as_leader(request.clone()).await),
                Some((_, addr)) => self.forward(addr, &request, deadline).await,
                None => None,
            };
            match reply {
                // Follow a hint only if it names someone new; otherwise wait for the election.
                Some(ForwardResponse::NotLeader { leader }) => hint = leader.filter(|(id, _)| Some(*id) != target_id),
                Some(ForwardResponse::Failed(ForwardFailure::InvalidMembership(m))) => {
                    return Err(ClusterError::InvalidMembership(m))
                }
                Some(ForwardResponse::Failed(ForwardFailure::Internal(m))) => return Err(ClusterError::Internal(m)),
                Some(ForwardResponse::Failed(ForwardFailure::NotFound(m))) => return Err(ClusterError::NotFound(m)),
                Some(ForwardResponse::Failed(ForwardFailure::NeedsUpgrade(m))) => {
                    return Err(ClusterError::NeedsUpgrade(m))
                }
                Some(ForwardResponse::Failed(ForwardFailure::PermissionDenied(m))) => {
                    return Err(ClusterError::PermissionDenied(m))
                }
                Some(answer) => return Ok(answer),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoLeader(patience));
            }
            if hint.is_none() {
                self.wait_for_leader_change(deadline).await;
            }
        }
    }

    fn known_leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    /// Waits (briefly) for the metrics to change, typically an election finishing.
    async fn wait_for_leader_change(&self, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let step = Instant::now() + Duration::from_millis(100);
        let _ = tokio::time::timeout_at(step.min(deadline), metrics.changed()).await;
    }

    async fn forward(&self, addr: &str, request: &ForwardRequest, deadline: Instant) -> Option<ForwardResponse> {
        let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        // The call carries on this one's request id and trace (`telemetry`).
        let call = |mut client: PeerClient, mut req: tonic::Request<_>| async move {
            telemetry::outgoing_headers(req.metadata_mut());
            client.forward(req).await
        };
        let body = match self.channels.encode_for(addr, request) {
            Ok(body) => body,
            // The leader runs an older build that cannot apply it.
            Err(e) => return Some(ForwardResponse::Failed(ForwardFailure::NeedsUpgrade(e.to_string()))),
        };
        let request_id = telemetry::request_id().unwrap_or_default();
        let span = tracing::info_span!("forward", otel.kind = "client", leader = %addr, request_id = %request_id);
        match self.channels.call(addr, methods::FORWARD, body, timeout, call).instrument(span).await {
            Ok(reply) => decode(&reply.data).ok(),
            Err(status) => {
                tracing::debug!(%addr, %status, "forwarding to the leader failed; retrying");
                None
            }
        }
    }

    /// Executes a forwarded (or local) request as the leader, or says who leads instead.
    pub async fn handle_as_leader(&self, request: ForwardRequest) -> ForwardResponse {
        match request {
            // `forward_to_leader` also covers an entry discarded by a leader change, whose fate
            // is unknown: resending the same proposal is safe (applied at most once).
            ForwardRequest::Write(proposal) => {
                if let Err(message) = self.check_cluster_format(&proposal) {
                    return ForwardResponse::Failed(ForwardFailure::NeedsUpgrade(message));
                }
                // The apply joins the trace of the call that proposed it.
                let _awaiting = telemetry::await_apply(&proposal.request_id);
                match self.raft.client_write(*proposal).await {
                    Ok(reply) => ForwardResponse::Written { index: reply.log_id.index(), response: reply.data },
                    Err(e) => self.not_leader_or(e.forward_to_leader().cloned(), &e),
                }
            }
            ForwardRequest::ReadIndex => match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(read_log_id) => ForwardResponse::ReadIndex { index: read_log_id.index() },
                // No quorum answered this round of heartbeats (busy or partitioned followers):
                // leadership is unconfirmed, so the caller waits and asks again, as in an election.
                Err(openraft::errors::RaftError::APIError(
                    openraft::errors::LinearizableReadError::QuorumNotEnough(e),
                )) => {
                    tracing::debug!(error = %e, "read index without a quorum; retrying");
                    ForwardResponse::NotLeader { leader: None }
                }
                Err(e) => self.not_leader_or(e.forward_to_leader().cloned(), &e),
            },
            ForwardRequest::AddServer { id, addr } => self.add_voter(id, addr).await,
            ForwardRequest::RemoveServer { id } => self.remove_voter(id).await,
            ForwardRequest::Heartbeat { node_id, secret } => self.accept_heartbeat(node_id, secret).await,
            ForwardRequest::Authorize { secret_hash, capability } => {
                self.authorize_as_leader(secret_hash, capability).await
            }
        }
    }

    /// Proposes `command` on this server only if it leads, never forwarding: the leader's own
    /// loops (liveness, scheduling) must not act through a newer leader after losing office.
    pub async fn propose_as_leader(&self, command: Command) -> Result<CommandResponse, ClusterError> {
        let proposal = Proposal::new(clock::new_id(), clock::now(), command);
        self.check_cluster_format(&proposal).map_err(ClusterError::NeedsUpgrade)?;
        match self.raft.client_write(proposal).await {
            Ok(reply) => Ok(reply.data),
            Err(e) if e.forward_to_leader().is_some() => Err(ClusterError::NotLeader),
            Err(e) => Err(ClusterError::Internal(e.to_string())),
        }
    }

    /// Evaluations for the jobs a change of node `node_id` affects, from this server's tables as
    /// they are (current on the leader, which is where node changes are proposed from).
    pub async fn node_change_evaluations(
        &self,
        node_id: &str,
        trigger: helios_core::EvalTrigger,
    ) -> Result<Vec<helios_core::Evaluation>, ClusterError> {
        let id = node_id.to_string();
        let jobs = self.read_local(move |txn| crate::store::read::jobs_affected_by_node(txn, &id)).await?;
        Ok(node_evaluations(jobs, node_id, trigger))
    }

    /// Whether the holder of `secret_hash` may use `capability`, as the leader's tables say.
    ///
    /// The leader, not this server: it has applied every ACL change it acknowledged, so a token
    /// deleted or a policy changed through any server is seen at once, for the cost of one call
    /// to the leader (none on the leader itself) rather than a quorum round per request. A
    /// deposed leader that does not know it yet may answer from stale tables; the request's own
    /// write or linearizable read then fails on it, so nothing is done on a stale answer.
    pub async fn authorize(
        &self,
        secret_hash: Option<String>,
        capability: Capability,
    ) -> Result<(Option<AclToken>, bool), ClusterError> {
        match self.submit(ForwardRequest::Authorize { secret_hash, capability }, REQUEST_DEADLINE).await? {
            ForwardResponse::Authorized { token, allowed } => Ok((token, allowed)),
            other => Err(ClusterError::Internal(format!("unexpected reply to an authorization: {other:?}"))),
        }
    }

    async fn authorize_as_leader(&self, secret_hash: Option<String>, capability: Capability) -> ForwardResponse {
        if !self.raft.is_leader() {
            let leader = self.known_leader().filter(|(id, _)| *id != self.node_id);
            return ForwardResponse::NotLeader { leader };
        }
        // A new leader can hold entries of earlier terms that were committed (an ACL change
        // among them) but that it has not applied yet. Once it has applied an entry of its own
        // term (the first it writes), it has applied all of those: a check per term, not a
        // wait per request behind the apply pipeline.
        let ready = own_term_applied(&self.raft.metrics().borrow_watched());
        if !ready {
            let waited =
                self.raft.wait(Some(REQUEST_DEADLINE)).metrics(own_term_applied, "the leader's term applied").await;
            if let Err(e) = waited {
                return ForwardResponse::Failed(ForwardFailure::Internal(format!("waiting to apply: {e}")));
            }
        }
        let now = clock::now();
        let generation = self.signals.acl_generation();
        let cached = self.acl_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&secret_hash).cloned();
        // A cached token past its TTL is read again: the read no longer finds it.
        if let Some(hit) =
            cached.filter(|c| c.generation == generation && !c.token.as_ref().is_some_and(|t| t.is_expired(now)))
        {
            return ForwardResponse::Authorized { token: hit.token, allowed: hit.grants.allows(capability) };
        }
        let key = secret_hash.clone();
        let resolved =
            self.read_local(move |txn| crate::store::read::acl_grants(txn, secret_hash.as_deref(), now)).await;
        match resolved {
            Ok((token, grants)) => {
                let allowed = grants.allows(capability);
                let mut cache = self.acl_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= ACL_CACHE_ENTRIES {
                    cache.clear();
                }
                // Tagged with the generation read before the tables: if an ACL change landed in
                // between, the entry is already stale and is read again next time.
                cache.insert(key, CachedGrants { generation, token: token.clone(), grants });
                ForwardResponse::Authorized { token, allowed }
            }
            Err(e) => ForwardResponse::Failed(ForwardFailure::Internal(e.to_string())),
        }
    }

    /// Records a client heartbeat wherever the leader is; returns the TTL to heartbeat within.
    pub async fn heartbeat(&self, node_id: String, secret: String) -> Result<Duration, ClusterError> {
        match self.submit(ForwardRequest::Heartbeat { node_id, secret }, REQUEST_DEADLINE).await? {
            ForwardResponse::HeartbeatAccepted { ttl_ms } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(ClusterError::Internal(format!("unexpected reply to a heartbeat: {other:?}"))),
        }
    }

    async fn accept_heartbeat(&self, node_id: String, secret: String) -> ForwardResponse {
        if !self.raft.is_leader() {
            let leader = self.known_leader().filter(|(id, _)| *id != self.node_id);
            return ForwardResponse::NotLeader { leader };
        }
        let lookup = node_id.clone();
        let node = match self.read_local(move |txn| crate::store::read::node(txn, &lookup)).await {
            Ok(node) => node,
            Err(e) => return ForwardResponse::Failed(ForwardFailure::Internal(e.to_string())),
        };
        let Some(node) = node else {
            return ForwardResponse::Failed(ForwardFailure::NotFound(format!(
                "node {node_id:?} is not registered; register first"
            )));
        };
        if !node.secret_matches(&secret) {
            return ForwardResponse::Failed(ForwardFailure::PermissionDenied(format!(
                "node {node_id:?} is registered by another agent"
            )));
        }
        self.tracker.touch(&node_id, self.heartbeat_ttl);
        if node.status == helios_core::NodeStatus::Down {
            // It is back: one Raft write for the status change, not one per heartbeat.
            let evals = match self.node_change_evaluations(&node_id, helios_core::EvalTrigger::NodeUpdate).await {
                Ok(evals) => evals,
                Err(e) => return ForwardResponse::Failed(ForwardFailure::Internal(e.to_string())),
            };
            let status = helios_core::NodeStatus::Ready;
            let command = Command::SetNodeStatus { node_id, status, now: clock::now(), evals };
            match self.propose_as_leader(command).await {
                Ok(_) => {}
                Err(ClusterError::NotLeader) => return ForwardResponse::NotLeader { leader: None },
                Err(e) => return ForwardResponse::Failed(ForwardFailure::Internal(e.to_string())),
            }
        }
        let ttl_ms = u64::try_from(self.heartbeat_ttl.as_millis()).unwrap_or(u64::MAX);
        ForwardResponse::HeartbeatAccepted { ttl_ms }
    }

    fn not_leader_or(
        &self,
        forward: Option<openraft::errors::ForwardToLeader<crate::raft::TypeConfig>>,
        error: &dyn std::fmt::Display,
    ) -> ForwardResponse {
        match forward {
            Some(f) => ForwardResponse::NotLeader { leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)) },
            None => ForwardResponse::Failed(ForwardFailure::Internal(error.to_string())),
        }
    }

    async fn add_voter(&self, id: NodeId, addr: String) -> ForwardResponse {
        let members = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        if let Some(existing) = members.get_node(&id) {
            if existing.addr != addr {
                return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                    "server {id} is already a member at {}; remove it first to change its address",
                    existing.addr
                )));
            }
            if members.voter_ids().any(|v| v == id) {
                return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                    "server {id} is already a voting member"
                )));
            }
        }
        if let Some((other, _)) = members.nodes().find(|(nid, n)| **nid != id && n.addr == addr) {
            return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                "address {addr} already belongs to server {other}"
            )));
        }
        // Before the new server is sent anything: it must answer at that address, as that id,
        // and (with a cluster key) prove it holds the key. A stranger gets no state.
        match self.checked_peer_status(&addr).await {
            // A server that cannot read the cluster's stored format would never catch up.
            Ok(status) if status.id == id && status.format < self.stored_format() => {
                return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                    "the server at {addr} runs stored format {}, but this cluster's is {}: run this cluster's \
                     build on it",
                    status.format,
                    self.stored_format()
                )))
            }
            Ok(status) if status.id == id => {}
            Ok(status) => {
                return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                    "the server at {addr} is server {}, not {id}",
                    status.id
                )))
            }
            Err(e) if e.code() == tonic::Code::Unauthenticated => {
                return ForwardResponse::Failed(ForwardFailure::PermissionDenied(format!(
                    "the server at {addr} does not hold this cluster's key ({}); start it with the same \
                     --cluster-key or --cluster-key-file",
                    e.message()
                )))
            }
            Err(e) => {
                return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                    "no Helios server answers at {addr} ({}); start it there without --bootstrap first",
                    e.message()
                )))
            }
        }
        // A learner first: it catches up (by snapshot if the log was purged) without counting
        // towards the quorum, and only then becomes a voter.
        let added = match self.raft.add_learner(id, BasicNode { addr: addr.clone() }, false).await {
            Ok(reply) => reply.log_id.index(),
            Err(e) => return self.not_leader_or(e.forward_to_leader().cloned(), &e),
        };
        // openraft's own blocking wait has no deadline: a wrong address would hang the join.
        let caught_up = self
            .raft
            .wait(Some(JOIN_DEADLINE - Duration::from_secs(5)))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
                    matched.is_some_and(|log_id| log_id.index() >= added)
                },
                "new server catches up",
            )
            .await;
        if caught_up.is_err() {
            // Do not leave an unreachable learner in the membership.
            let _ = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await;
            return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                "server {id} at {addr} did not catch up in time; is it running there, started \
                 without --bootstrap and reachable from the leader?"
            )));
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    async fn remove_voter(&self, id: NodeId) -> ForwardResponse {
        let members = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        if members.get_node(&id).is_none() {
            return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!("server {id} is not a member")));
        }
        let voters: BTreeSet<NodeId> = members.voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return ForwardResponse::Failed(ForwardFailure::InvalidMembership(format!(
                "server {id} is the only voter; the cluster cannot remove its last server"
            )));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.change_membership(change).await
    }

    /// Commits a membership change; a removed server is not kept as a learner.
    async fn change_membership(&self, change: ChangeMembers<NodeId, BasicNode>) -> ForwardResponse {
        match self.raft.change_membership(change, false).await {
            Ok(reply) => ForwardResponse::MembershipChanged { index: reply.log_id.index() },
            Err(e) => self.not_leader_or(e.forward_to_leader().cloned(), &e),
        }
    }

    /// Whether this server leads now (it may stop at any moment: act through
    /// `propose_as_leader`, which refuses once it does).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The newest stored format every member (voters, and learners being added) has announced
    /// (`PeerFormats::oldest_announced`): what the cluster's stored format may be raised to.
    pub fn announced_format(&self) -> u32 {
        let (nodes, _) = self.membership();
        let peers = nodes.iter().filter(|(id, _)| **id != self.node_id);
        self.channels.formats.oldest_announced(peers.map(|(_, addr)| addr.as_str()))
    }

    /// The cluster's stored format as this server applied it (`Command::RaiseFormat`).
    pub fn stored_format(&self) -> u32 {
        self.channels.formats.stored.get()
    }

    /// Refuses a command some voters could not apply: during a rolling upgrade, what the newer
    /// build adds waits until the cluster's stored format is raised, after every server runs it.
    /// The raise itself needs only every voter's announcement.
    fn check_cluster_format(&self, proposal: &Proposal) -> Result<(), String> {
        let raise = matches!(proposal.command, Command::RaiseFormat { .. });
        let cluster = if raise { self.announced_format() } else { self.stored_format() };
        let needs = proposal.needs_format();
        if needs <= cluster {
            // While the cluster's format is older than this build's, a record the command
            // carries may not be writable for it (its `TryFrom` refuses): found here, not when
            // every replica applies it.
            let stored = self.stored_format();
            if stored < crate::store::tables::FORMAT_VERSION && !raise {
                helios_core::format::write_for(stored, || crate::store::codec::try_encode(proposal))
                    .map_err(|e| format!("{e}: finish the upgrade first"))?;
            }
            return Ok(());
        }
        if proposal.command.needs_format() <= cluster {
            return Err(format!(
                "{CONDITIONS_NEED} {needs}, but some run format {cluster}: finish the upgrade first, or send the \
                 request without request_id, expected_version and create_only"
            ));
        }
        Err(format!(
            "{} needs every server to run stored format {needs}, but some run format {cluster}: finish the upgrade first",
            proposal.command
        ))
    }

    /// This server's role, term and indexes.
    pub fn own_status(&self) -> PeerStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        PeerStatus {
            id: self.node_id,
            role: role.to_string(),
            term: m.current_term,
            last_applied_index: m.last_applied.as_ref().map(|l| l.index()),
            last_log_index: m.last_log_index,
            leader: m.current_leader,
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            purged_index: m.purged.as_ref().map(|l| l.index()),
            format: crate::store::tables::FORMAT_VERSION,
            lag: m
                .replication
                .as_ref()
                .map(|replication| {
                    let last = m.last_log_index.unwrap_or(0);
                    replication
                        .iter()
                        .filter(|(id, _)| **id != self.node_id)
                        .map(|(id, matched)| (*id, last.saturating_sub(matched.as_ref().map_or(0, |l| l.index()))))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Every member (voters and learners) with its address.
    pub fn membership(&self) -> (BTreeMap<NodeId, String>, BTreeSet<NodeId>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let voters = membership.voter_ids().collect();
        (nodes, voters)
    }

    /// Asks a peer for its own status; `None` when it does not answer within a second.
    pub async fn peer_status(&self, addr: &str) -> Option<PeerStatus> {
        self.checked_peer_status(addr).await.ok()
    }

    /// A peer's own status; with a cluster key, the answer proves the peer holds it.
    async fn checked_peer_status(&self, addr: &str) -> Result<PeerStatus, tonic::Status> {
        let call = |mut client: PeerClient, req| async move { client.status(req).await };
        let reply = self.channels.call(addr, methods::STATUS, Vec::new(), Duration::from_secs(1), call).await?;
        decode(&reply.data).map_err(|e| tonic::Status::internal(format!("undecodable status: {e}")))
    }
}

/// What a follower may ask of the leader: only what a server's own handlers build from a
/// validated public or agent request. A command only the leader's own loops propose (node
/// status, plans that place), or the old secret-less allocation report, is refused; a job is
/// validated again. A member is trusted this far and no further.
pub fn check_forwarded(request: &ForwardRequest) -> Result<(), tonic::Status> {
    let ForwardRequest::Write(proposal) = request else { return Ok(()) };
    let refuse = |what: &str| {
        Err(tonic::Status::permission_denied(format!("the leader does not accept {what} from another server")))
    };
    // Handlers create evaluations pending; one already complete or blocked would end a job's
    // scheduling without a plan.
    // A waiting one (`wait_until`) would hold a job's scheduling back: only the leader's own
    // plans make those.
    let pending = |evals: &[helios_core::Evaluation]| {
        evals.iter().all(|e| e.status == EvalStatus::Pending && e.wait_until.is_none())
    };
    match &proposal.command {
        Command::RegisterJob { job, eval } => {
            job.validate().map_err(|e| tonic::Status::invalid_argument(format!("forwarded job: {e}")))?;
            if eval.job_name != job.name || !pending(std::slice::from_ref(eval)) {
                return refuse("a job with an evaluation of another job, or one already decided");
            }
            Ok(())
        }
        Command::RegisterNode { node, evals } => {
            node.validate().map_err(|e| tonic::Status::invalid_argument(format!("forwarded node: {e}")))?;
            if !pending(evals) {
                return refuse("evaluations already decided");
            }
            Ok(())
        }
        // `alloc stop` builds exactly this: one stop that leaves the client status alone, and
        // the pending evaluation that places the replacement.
        Command::ApplyPlan { plan, eval } => {
            let alloc_stop = plan.placements.is_empty()
                && plan.in_place.is_empty()
                && plan.failed_placements.is_empty()
                && plan.stops.len() == 1
                && plan.stops.iter().all(|s| s.client_status.is_none())
                && eval.id == plan.eval_id
                && eval.job_name == plan.job_name
                && eval.status == EvalStatus::Pending;
            if alloc_stop {
                Ok(())
            } else {
                refuse("a plan other than an allocation stop")
            }
        }
        Command::DeregisterJob { eval, .. } if pending(std::slice::from_ref(eval)) => Ok(()),
        Command::SetNodeScheduling { evals, .. }
        | Command::ReportAllocations { evals, .. }
        | Command::PurgeNode { evals, .. }
            if pending(evals) =>
        {
            Ok(())
        }
        Command::DeregisterJob { .. }
        | Command::SetNodeScheduling { .. }
        | Command::ReportAllocations { .. }
        | Command::PurgeNode { .. } => refuse("evaluations already decided"),
        // Built by the ACL, `system gc` and snapshot restore handlers, which checked the caller's token first (and
        // garbage is checked again, record by record, when applied); an agent's services are
        // checked against its node's secret when applied.
        Command::ReportServices { .. }
        | Command::CollectGarbage { .. }
        | Command::RestoreBegin { .. }
        | Command::RestoreRows { .. }
        | Command::RestoreCommit { .. }
        | Command::AclBootstrap { .. }
        | Command::UpsertAclPolicy { .. }
        | Command::DeleteAclPolicy { .. }
        | Command::UpsertAclToken { .. }
        | Command::DeleteAclToken { .. } => Ok(()),
        Command::SetNodeStatus { .. } => refuse("node status changes (the leader's heartbeat tracker makes them)"),
        Command::CreateEvaluations { .. } => refuse("bare evaluations"),
        Command::RaiseFormat { .. } => refuse("format raises (the leader makes them)"),
        // Built by the deployment handlers, which checked the caller's token.
        Command::ActOnDeployment { eval, .. } if pending(std::slice::from_ref(eval)) => Ok(()),
        Command::ActOnDeployment { .. } => refuse("evaluations already decided"),
        Command::UpdateDeployment { .. } => refuse("deployment verdicts (the leader's watcher makes them)"),
    }
}

/// Whether this server has applied an entry of its current term.
fn own_term_applied(m: &openraft::RaftMetrics<crate::raft::TypeConfig>) -> bool {
    use openraft::vote::RaftLeaderId;
    m.last_applied.as_ref().is_some_and(|l| l.committed_leader_id().term() == m.current_term)
}

/// One evaluation per affected job, stamped with fresh ids and the current time.
pub fn node_evaluations(
    jobs: Vec<(String, u32)>,
    node_id: &str,
    trigger: helios_core::EvalTrigger,
) -> Vec<helios_core::Evaluation> {
    let now = clock::now();
    jobs.into_iter()
        .map(|(job, priority)| {
            let mut eval = helios_core::Evaluation::new(clock::new_id(), &job, priority, trigger, now);
            eval.node_id = Some(node_id.to_string());
            eval
        })
        .collect()
}
