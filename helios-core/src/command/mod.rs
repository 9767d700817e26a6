//! The Raft command log's payload.
//!
//! **Versioned.** A `Proposal` is stored in the Raft log and sent between servers as a versioned
//! record (`crate::format`): bincode encodes a variant by its position, so a variant removed or
//! changed is a new `Proposal` version, with the previous shape kept in a `vN` module and a
//! `From` that migrates it (see `v1.rs`). A variant appended at the end leaves every older body
//! readable as it was, so it is no new version; instead it names the format that introduced it
//! (`Command::needs_format`): it is proposed only once the cluster's replicated format reaches
//! that one, and never written for older readers (`Serialize for Command` refuses).
//!
//! Commands carry everything the state machine needs, IDs and timestamps included: the handler
//! that proposes a command stamps them, so every replica applies identical values.

pub mod answer;
pub mod request;
mod v1;
mod v2;

pub use answer::{Answer, DeploymentChanged, JobDeregistered, JobRegistered, PlanApplied, Restored};
pub use request::{ClientRequest, ClientRequestRecord, Precondition, REQUESTS_FORMAT};

use serde::{Deserialize, Serialize};

use crate::acl::{AclPolicy, AclToken};
use crate::alloc::AllocUpdate;
use crate::deployment::{Deployment, DeploymentAction};
use crate::eval::Evaluation;
use crate::gc::{Collected, Cutoffs, Garbage};
use crate::job::Job;
use crate::node::{Node, NodeEligibility, NodeStatus};
use crate::plan::Plan;
use crate::service::AllocServices;
use crate::time::Timestamp;

/// What the Raft log holds: a command and the identity of the request that proposed it.
///
/// A proposal can reach the log twice (the leader changed while it was in flight and the server
/// retried it); the state machine applies a `request_id` once and answers a repeat with the first
/// answer, so every write is applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Proposal {
    pub request_id: String,
    /// Stamped by the proposing server; bounds how long the request id is remembered.
    pub proposed_at: Timestamp,
    /// The caller's own id for the request (format 10): a retry of it, through any server, gets
    /// the first attempt's answer instead of being applied again.
    pub client_request: Option<ClientRequest>,
    /// What the state must be for the command to apply (format 10); otherwise it is refused
    /// (`RejectionKind::Conflict`) and nothing changes.
    pub precondition: Option<Precondition>,
    pub command: Command,
}

// 2: `UpdateAllocations` and `ApplyPlan::follow_ups` removed (format 3).
// 3: `client_request` and `precondition` (format 10).
crate::versioned!(Proposal = 3, since format 10, previous v2::Proposal);

impl Proposal {
    /// A proposal of `command` with no client request id and no precondition.
    pub fn new(request_id: String, proposed_at: Timestamp, command: Command) -> Proposal {
        Proposal { request_id, proposed_at, client_request: None, precondition: None, command }
    }

    /// The oldest stored format whose servers can apply it (`Command::needs_format`).
    pub fn needs_format(&self) -> u32 {
        let conditional = self.client_request.is_some() || self.precondition.is_some();
        let needs = self.command.needs_format();
        if conditional {
            needs.max(REQUESTS_FORMAT)
        } else {
            needs
        }
    }
}

/// Serialized through `Serialize for Command` below, which refuses a command that the readers
/// being written for (`format::write_for`) could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub enum Command {
    /// Create a job or update its spec. A changed spec becomes the next version and creates
    /// `eval`; an identical spec changes nothing.
    RegisterJob {
        job: Job,
        eval: Evaluation,
    },
    /// Stop a job (it stays visible, `stopped = true`), or remove it and its history with
    /// `purge`. Creates `eval` so the scheduler stops its allocations.
    DeregisterJob {
        job_name: String,
        purge: bool,
        eval: Evaluation,
        now: Timestamp,
    },
    /// A client agent registers (or re-registers after a restart). Refused when the id belongs
    /// to a live node with another secret: one machine cannot take over another's identity.
    ///
    /// `evals` re-evaluate the jobs the node's arrival affects (system jobs, blocked jobs, jobs
    /// with allocations on it), stamped by the proposer and committed in the same entry, so a
    /// leader change cannot lose them.
    RegisterNode {
        node: Node,
        evals: Vec<Evaluation>,
    },
    /// The leader's heartbeat tracker saw a node go silent (`Down`) or come back (`Ready`).
    /// `evals` as for `RegisterNode`.
    SetNodeStatus {
        node_id: String,
        status: NodeStatus,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    /// The leader's scheduler result. Applied only if it still fits: every placement's node is
    /// ready with room for it and its slot is free; otherwise rejected as stale (the leader
    /// re-plans). `eval` is the evaluation as it ends (complete, or blocked with reasons).
    ApplyPlan {
        plan: Plan,
        eval: Evaluation,
    },
    /// An operator drains a node (its allocations move elsewhere; it takes no new work), ends a
    /// drain, or changes its eligibility. `evals` as for `SetNodeStatus`.
    SetNodeScheduling {
        node_id: String,
        drain: bool,
        eligibility: NodeEligibility,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    /// New evaluations, e.g. for the jobs a node change affects.
    CreateEvaluations {
        evals: Vec<Evaluation>,
    },
    /// A client agent reports its allocations' states: refused whole if any allocation is not on
    /// `node_id` or if `secret` is not the node's; `evals` reschedule the jobs of allocations
    /// that failed. Checked here, against the replicated state, so the handler
    /// needs no linearizable read per report.
    ReportAllocations {
        node_id: String,
        secret: String,
        updates: Vec<AllocUpdate>,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    /// An operator forgets a node that is down for good, freeing its id for another agent
    /// (until then the id keeps its secret). Refused unless the node is down. Its unfinished
    /// allocations are marked lost; `evals` re-evaluate their jobs.
    PurgeNode {
        node_id: String,
        now: Timestamp,
        evals: Vec<Evaluation>,
    },
    /// Creates the first management token, once: refused when ACLs were bootstrapped already,
    /// unless `reset_index` names the log index of that bootstrap (the operator's reset, read
    /// from a file on the server that took the request).
    AclBootstrap {
        token: AclToken,
        reset_index: Option<u64>,
    },
    /// Creates or replaces a policy.
    UpsertAclPolicy {
        policy: AclPolicy,
    },
    DeleteAclPolicy {
        name: String,
    },
    /// Creates a token; refused if a policy it names does not exist.
    UpsertAclToken {
        token: AclToken,
    },
    DeleteAclToken {
        accessor_id: String,
    },
    /// The leader's garbage collection: forgets the named records that still qualify under
    /// `cutoffs` (`crate::gc`), keeping any that changed since they were found.
    CollectGarbage {
        cutoffs: Cutoffs,
        garbage: Garbage,
    },
    /// An operator's snapshot restore, in small entries: `RestoreBegin` empties the staging
    /// table and names the restore, `RestoreRows` stage rows, `RestoreCommit` replaces every
    /// state table with the staged rows at once, if all `rows` arrived. A newer restore's begin
    /// refuses the rest of an older one.
    RestoreBegin {
        restore_id: String,
    },
    RestoreRows {
        restore_id: String,
        /// A state table's name.
        table: String,
        rows: Vec<(String, Vec<u8>)>,
    },
    RestoreCommit {
        restore_id: String,
        rows: u64,
    },
    /// The leader saw every voter announce stored `format`: from this entry on, replicas write
    /// records for it (`format::write_for`) and commands that need it may be proposed. Never
    /// lowered. (Format 4.)
    RaiseFormat {
        format: u32,
    },
    /// A client agent registers its allocations' services with their checks' states (format 8):
    /// each listed allocation's registrations replace the ones it had. Refused whole as
    /// `ReportAllocations` is; an allocation that no longer runs keeps none.
    ReportServices {
        node_id: String,
        secret: String,
        services: Vec<AllocServices>,
        now: Timestamp,
    },
    /// The leader's deployment watcher (format 9): `deployment` (`Deployment::observe`'s next
    /// state) replaces the stored one if that is still at `deployment.revision`, else it is
    /// refused and observed again. Its consequences, as for `DeploymentAction`: `eval` asks the
    /// scheduler to go on; on success the version is marked stable; on failure with
    /// `auto_revert` the last stable version is registered again, with `eval`.
    UpdateDeployment {
        deployment: Deployment,
        eval: Evaluation,
    },
    /// An operator promotes, pauses, resumes or fails a deployment, or sets its allocations'
    /// health (format 9); refused (nothing changed) when the deployment cannot do it now.
    ActOnDeployment {
        deployment_id: String,
        action: DeploymentAction,
        now: Timestamp,
        eval: Evaluation,
    },
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let needs = self.needs_format();
        if needs > crate::format::writing_for() {
            return Err(crate::format::not_writable("command", format_args!("{self} needs servers of format {needs}")));
        }
        Command::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
        Command::deserialize(d)
    }
}

/// The state machine's deterministic answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub enum CommandResponse {
    /// For Raft's own entries (blank, membership), which no caller waits on.
    #[default]
    Empty,
    JobRegistered(JobRegistered),
    JobDeregistered(JobDeregistered),
    /// The command was valid when proposed but the state it met at apply time refuses it (for
    /// example the job was purged in between). Nothing was changed.
    Rejected(Rejection),
    NodeRegistered,
    NodeStatusSet,
    PlanApplied(PlanApplied),
    EvaluationsCreated,
    AllocationsUpdated,
    NodePurged,
    AclChanged,
    GarbageCollected(Collected),
    RestoreStaged,
    Restored(Restored),
    /// Format 4: the answer to `RaiseFormat`.
    FormatRaised,
    /// Format 9: the answer to `UpdateDeployment` and `ActOnDeployment`.
    DeploymentChanged(DeploymentChanged),
}

crate::versioned!(CommandResponse = 1);

impl CommandResponse {
    /// The state machine's refusal of a command against the state it met (nothing changed).
    pub fn rejected(kind: RejectionKind, message: impl Into<String>) -> CommandResponse {
        CommandResponse::Rejected(Rejection { kind, message: message.into() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// Appended variants arise only from what their format brought, so older readers never meet them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    NotFound,
    FailedPrecondition,
    /// Format 10: the proposal's `Precondition` did not hold (a concurrent change came first).
    Conflict,
    /// Format 10: the client request id was already used for a different request.
    RequestIdReused,
}

/// The stored format that brought deployments (`crate::deployment`).
pub const DEPLOYMENTS_FORMAT: u32 = 9;

impl Command {
    /// The oldest stored format whose servers can apply this command. A leader proposes it only
    /// once every server announces at least this format, so during a rolling upgrade no older
    /// server meets a command it cannot decode. A new variant, or a variant whose meaning
    /// changes, names the format that introduces it.
    pub fn needs_format(&self) -> u32 {
        match self {
            Command::RegisterJob { .. }
            | Command::DeregisterJob { .. }
            | Command::RegisterNode { .. }
            | Command::SetNodeStatus { .. }
            | Command::ApplyPlan { .. }
            | Command::SetNodeScheduling { .. }
            | Command::CreateEvaluations { .. }
            | Command::ReportAllocations { .. }
            | Command::PurgeNode { .. }
            | Command::AclBootstrap { .. }
            | Command::UpsertAclPolicy { .. }
            | Command::DeleteAclPolicy { .. }
            | Command::UpsertAclToken { .. }
            | Command::DeleteAclToken { .. }
            | Command::CollectGarbage { .. }
            | Command::RestoreBegin { .. }
            | Command::RestoreRows { .. }
            | Command::RestoreCommit { .. } => 3,
            Command::RaiseFormat { format } => (*format).max(4),
            Command::ReportServices { .. } => 8,
            Command::UpdateDeployment { .. } | Command::ActOnDeployment { .. } => DEPLOYMENTS_FORMAT,
        }
    }

    /// Whether applying it can change what a token may do.
    pub fn is_acl(&self) -> bool {
        matches!(
            self,
            Command::AclBootstrap { .. }
                | Command::UpsertAclPolicy { .. }
                | Command::DeleteAclPolicy { .. }
                | Command::UpsertAclToken { .. }
                | Command::DeleteAclToken { .. }
        )
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::RegisterJob { job, eval } => {
                write!(f, "register-job {} (eval {})", job.name, eval.id)
            }
            Command::DeregisterJob { job_name, purge, eval, .. } => {
                write!(f, "deregister-job {job_name} purge={purge} (eval {})", eval.id)
            }
            Command::RegisterNode { node, .. } => write!(f, "register-node {}", node.id),
            Command::SetNodeStatus { node_id, status, .. } => {
                write!(f, "set-node-status {node_id} {}", status.as_str())
            }
            Command::ApplyPlan { plan, .. } => write!(
                f,
                "apply-plan {} (eval {}): {} placements, {} stops",
                plan.job_name,
                plan.eval_id,
                plan.placements.len(),
                plan.stops.len()
            ),
            Command::CreateEvaluations { evals } => write!(f, "create-evaluations ({})", evals.len()),
            Command::SetNodeScheduling { node_id, drain, eligibility, .. } => {
                write!(f, "set-node-scheduling {node_id} drain={drain} {}", eligibility.as_str())
            }
            Command::PurgeNode { node_id, .. } => write!(f, "purge-node {node_id}"),
            Command::AclBootstrap { token, .. } => write!(f, "acl-bootstrap {}", token.accessor_id),
            Command::UpsertAclPolicy { policy } => write!(f, "upsert-acl-policy {}", policy.name),
            Command::DeleteAclPolicy { name } => write!(f, "delete-acl-policy {name}"),
            Command::UpsertAclToken { token } => write!(f, "upsert-acl-token {}", token.accessor_id),
            Command::DeleteAclToken { accessor_id } => write!(f, "delete-acl-token {accessor_id}"),
            Command::CollectGarbage { garbage, .. } => write!(f, "collect-garbage ({} records)", garbage.len()),
            Command::RestoreBegin { restore_id } => write!(f, "restore-begin {restore_id}"),
            Command::RestoreRows { restore_id, table, rows } => {
                write!(f, "restore-rows {restore_id} {table} ({})", rows.len())
            }
            Command::RestoreCommit { restore_id, rows } => write!(f, "restore-commit {restore_id} ({rows} rows)"),
            Command::RaiseFormat { format } => write!(f, "raise-format {format}"),
            Command::ReportAllocations { node_id, updates, .. } => {
                write!(f, "update-allocations {node_id} ({})", updates.len())
            }
            Command::ReportServices { node_id, services, .. } => {
                write!(f, "report-services {node_id} ({} allocations)", services.len())
            }
            Command::UpdateDeployment { deployment, .. } => {
                write!(f, "update-deployment {} {}", deployment.id, deployment.status.as_str())
            }
            Command::ActOnDeployment { deployment_id, action, .. } => {
                write!(f, "act-on-deployment {deployment_id} {}", action.as_str())
            }
        }
    }
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (request {})", self.command, self.request_id)?;
        if let Some(client) = &self.client_request {
            write!(f, " (client request {})", client.id)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
