//! Table definitions. Values are bincode (`codec`); keys are chosen so that redb's order is useful.

use redb::{Database, TableDefinition};

/// Raft log: index -> encoded `Entry`.
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft log metadata: `vote`, `last_purged`, `committed`.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// State machine metadata: `last_applied`, `membership`, `has_snapshot`.
pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// job name -> `Job` (latest version).
pub const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `job_version_key(name, version)` -> `Job`.
pub const JOB_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_versions");
/// `job_version_key(job, version)` -> that version's `Deployment` (format 9): a job's
/// deployments in version order, its latest last.
pub const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// allocation id -> `Allocation`.
pub const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
/// node id -> `Node`.
pub const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// evaluation id -> `Evaluation`.
pub const EVALUATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("evaluations");

/// evaluation id -> nothing: the evaluations still waiting for the scheduler (an index over
/// `evaluations`, so the leader need not scan them all).
pub const PENDING_EVALUATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_evaluations");

/// `request_key(proposed_at, request_id)` -> the `CommandResponse` it got: a repeated proposal
/// is answered from here instead of being applied again.
pub const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");

/// A caller's request id (`ClientRequest::id`, format 10) -> `ClientRequestRecord`: its digest
/// and first answer, so a retry through any server is answered again instead of applied.
pub const CLIENT_REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("client_requests");
/// `request_key(proposed_at, client request id)` -> nothing: `CLIENT_REQUESTS` in the order
/// they were proposed, so forgetting old ones trims the front.
pub const CLIENT_REQUESTS_BY_TIME: TableDefinition<&str, &[u8]> = TableDefinition::new("client_requests_by_time");

/// job name -> its latest blocked evaluation's id: the jobs to retry when the cluster changes.
pub const BLOCKED_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocked_jobs");

/// Cluster-wide facts: `nodes_changed_at`, the log index of the last change to the set of usable
/// nodes (a blocked plan made before it is planned again).
pub const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");
pub const NODES_CHANGED_AT: &str = "nodes_changed_at";
/// The log index of the last entry that freed room or host ports on a node (an allocation
/// finished, or a stop released its reservation): a plan blocked before it is planned again.
pub const ROOM_FREED_AT: &str = "room_freed_at";
/// In `CLUSTER`: the cluster's stored format (`Command::RaiseFormat`), what every replicated row
/// and entry is written for; absent: `format::OLDEST_WRITTEN_FORMAT`. A property of this
/// cluster, kept by a restore.
pub const STORED_FORMAT: &str = "stored_format";
/// The `cluster` keys that hold positions in this cluster's own log: a restore re-bases them,
/// and `server digest` leaves them out (equal state, whichever log reached it).
pub const LOG_POSITIONS: [&str; 2] = [NODES_CHANGED_AT, ROOM_FREED_AT];

// Indexes, kept by `apply::StateTables` on every write so that no hot path scans a whole table.

/// `index_key(job, alloc id)` -> nothing: a job's allocations.
pub const ALLOCS_BY_JOB: TableDefinition<&str, &[u8]> = TableDefinition::new("allocs_by_job");
/// `index_key(node, alloc id)` -> nothing: a node's allocations.
pub const ALLOCS_BY_NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("allocs_by_node");
/// `index_key(job, eval id)` -> nothing: a job's evaluations.
pub const EVALS_BY_JOB: TableDefinition<&str, &[u8]> = TableDefinition::new("evals_by_job");
/// node id -> `Resources` reserved on it by allocations that are wanted and not finished.
pub const NODE_USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("node_usage");
/// job name -> `AllocCounts` of its allocations.
pub const JOB_ALLOC_COUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_alloc_counts");
/// `host_port_key(node, port)` -> the id of the allocation holding that fixed host port there
/// (while `Allocation::holds_host_ports`).
pub const NODE_PORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_ports");

/// policy name -> `AclPolicy`.
pub const ACL_POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("acl_policies");
/// accessor id -> `AclToken`.
pub const ACL_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("acl_tokens");
/// hex SHA-256 of a token's secret -> its accessor id (how a presented secret is found).
pub const ACL_TOKEN_SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("acl_token_secrets");
/// In `CLUSTER`: the log index of the ACL bootstrap.
pub const ACL_BOOTSTRAP_INDEX: &str = "acl_bootstrap_index";

/// `index_key(table name, key)` -> value: the rows of a restore in progress (`RestoreRows`),
/// moved into their tables by its `RestoreCommit`.
pub const RESTORE_STAGING: TableDefinition<&str, &[u8]> = TableDefinition::new("restore_staging");
/// In `CLUSTER`: the id of the restore in progress.
pub const RESTORE_ID: &str = "restore_id";

/// The tables that make up the replicated state: exactly what a snapshot carries. A snapshot
/// from a server without the ACL tables simply has none (no tokens, not bootstrapped); one
/// from before format 9, no deployments; from before format 10, no client requests.
pub const STATE_TABLES: [TableDefinition<&str, &[u8]>; 22] = [
    JOBS,
    JOB_VERSIONS,
    ALLOCATIONS,
    NODES,
    EVALUATIONS,
    REQUESTS,
    PENDING_EVALUATIONS,
    BLOCKED_JOBS,
    CLUSTER,
    ALLOCS_BY_JOB,
    ALLOCS_BY_NODE,
    EVALS_BY_JOB,
    NODE_USAGE,
    JOB_ALLOC_COUNTS,
    NODE_PORTS,
    ACL_POLICIES,
    ACL_TOKENS,
    ACL_TOKEN_SECRETS,
    RESTORE_STAGING,
    DEPLOYMENTS,
    CLIENT_REQUESTS,
    CLIENT_REQUESTS_BY_TIME,
];

/// The state tables older stored formats did not have (`read::state_digest` leaves them out
/// while empty, as the builds of those formats do): deployments (format 9), client requests
/// (format 10).
pub const NEWER_TABLES: [&str; 3] = ["deployments", "client_requests", "client_requests_by_time"];

/// How many of a job's allocations run, and how many have not finished: what its status follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllocCounts {
    pub running: u64,
    pub live: u64,
}

/// Index keys sort by owner, then by id. Names and ids hold only letters, digits, '-', '_', '.'
/// and (job names) ':' (validation), so the NUL separator cannot occur inside either part.
pub fn index_key(owner: &str, id: &str) -> String {
    format!("{owner}\0{id}")
}

/// The key range holding every `index_key(owner, _)`.
pub fn index_range(owner: &str) -> (String, String) {
    (format!("{owner}\0"), format!("{owner}\u{1}"))
}

/// A node's fixed host port: an `index_key` whose id is the zero-padded port, so a node's ports
/// sort in order.
pub fn host_port_key(node: &str, port: u16) -> String {
    index_key(node, &format!("{port:05}"))
}

/// The id part of an `index_key`.
pub fn index_id(key: &str) -> &str {
    key.split_once('\0').map_or(key, |(_, id)| id)
}

pub const META_VOTE: &str = "vote";
/// The encoding of the stored types this database holds (`FORMAT_VERSION`), in `raft_meta`.
pub const META_FORMAT: &str = "format";
/// What every value in this database is encoded as (`helios_core::format`): a database of an
/// older format is converted when it opens (`store::convert`), one of a newer format refused.
pub use helios_core::format::FORMAT_VERSION;
pub const META_LAST_PURGED: &str = "last_purged";
pub const META_COMMITTED: &str = "committed";
pub const SM_LAST_APPLIED: &str = "last_applied";
pub const SM_MEMBERSHIP: &str = "membership";
/// Present once a snapshot has been built or installed (the snapshot itself is the tables).
pub const SM_HAS_SNAPSHOT: &str = "has_snapshot";
/// The version of the indexes this database holds (`INDEXES_VERSION`); older data gets them
/// rebuilt when the store opens.
pub const SM_INDEXES: &str = "indexes";
/// 1: allocations by job and node, evaluations by job, node usage, job counts. 2: node ports.
/// 3: node ports held until the agent reports the allocation finished; blocked jobs only while
/// their evaluation is blocked.
pub const INDEXES_VERSION: u32 = 3;

/// Versions sort by number within a job: names cannot contain '@' (validation), and the version
/// is zero-padded.
pub fn job_version_key(name: &str, version: u64) -> String {
    format!("{name}@{version:020}")
}

/// The key range (inclusive) holding every `job_version_key(name, _)`: a job's versions, and
/// its deployments.
pub fn job_version_range(name: &str) -> (String, String) {
    (job_version_key(name, 0), job_version_key(name, u64::MAX))
}

/// Requests sort by the time they were proposed, so forgetting old ones trims the front.
pub fn request_key(proposed_at_ms: u64, request_id: &str) -> String {
    format!("{proposed_at_ms:020}/{request_id}")
}

pub fn create_all(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(RAFT_LOG)?;
    txn.open_table(RAFT_META)?;
    txn.open_table(SM_META)?;
    for table in STATE_TABLES {
        txn.open_table(table)?;
    }
    txn.commit()?;
    Ok(())
}
