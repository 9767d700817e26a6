//! Queries over a read transaction. Callers decide how current the transaction must be (see
//! `cluster::Cluster::read`).

use helios_core::deployment::Deployment;
use helios_core::{Allocation, Evaluation, Job, Node, Timestamp};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use super::codec::decode;
use super::tables::{
    index_id, index_range, job_version_key, job_version_range, AllocCounts, ALLOCATIONS, ALLOCS_BY_JOB, ALLOCS_BY_NODE,
    DEPLOYMENTS, EVALS_BY_JOB, EVALUATIONS, JOBS, JOB_ALLOC_COUNTS, JOB_VERSIONS, NODES, NODE_USAGE,
    PENDING_EVALUATIONS,
};
use super::StoreError;

pub type Result<T> = std::result::Result<T, StoreError>;

fn table(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<ReadOnlyTable<&'static str, &'static [u8]>> {
    Ok(txn.open_table(def)?)
}

fn get<T: DeserializeOwned>(txn: &ReadTransaction, def: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<T>> {
    match table(txn, def)?.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(v.value())?)),
    }
}

/// Every value of `def` for which `keep` is true, in key order.
fn scan<T: DeserializeOwned>(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for row in table(txn, def)?.iter()? {
        let (_, v) = row?;
        let value: T = decode(v.value())?;
        if keep(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

pub fn job(txn: &ReadTransaction, name: &str) -> Result<Option<Job>> {
    get(txn, JOBS, name)
}

pub fn jobs(txn: &ReadTransaction) -> Result<Vec<Job>> {
    scan(txn, JOBS, |_| true)
}

pub fn job_versions(txn: &ReadTransaction, name: &str) -> Result<Vec<Job>> {
    let (first, last) = job_version_range(name);
    let versions = table(txn, JOB_VERSIONS)?;
    let mut out = Vec::new();
    for row in versions.range(first.as_str()..=last.as_str())? {
        let (_, v) = row?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// Deployments, all or one job's, in (job, version) order.
pub fn deployments(txn: &ReadTransaction, job_name: Option<&str>) -> Result<Vec<Deployment>> {
    let Some(job) = job_name else { return scan(txn, DEPLOYMENTS, |_| true) };
    let (first, last) = job_version_range(job);
    let mut out = Vec::new();
    for row in table(txn, DEPLOYMENTS)?.range(first.as_str()..=last.as_str())? {
        out.push(decode(row?.1.value())?);
    }
    Ok(out)
}

/// A job's latest deployment.
pub fn latest_deployment(txn: &ReadTransaction, job_name: &str) -> Result<Option<Deployment>> {
    let (first, last) = job_version_range(job_name);
    let latest = table(txn, DEPLOYMENTS)?.range(first.as_str()..=last.as_str())?.next_back().transpose()?;
    Ok(latest.map(|(_, v)| decode(v.value())).transpose()?)
}

/// The deployment of a job's version.
pub fn deployment_of_version(txn: &ReadTransaction, job_name: &str, version: u64) -> Result<Option<Deployment>> {
    get(txn, DEPLOYMENTS, &job_version_key(job_name, version))
}

/// The values of `values` whose ids `index` lists under `owner` (see `tables::index_key`).
fn indexed<T: DeserializeOwned>(
    txn: &ReadTransaction,
    index: TableDefinition<&str, &[u8]>,
    owner: &str,
    values: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>> {
    let (from, to) = index_range(owner);
    let values = table(txn, values)?;
    let mut out = Vec::new();
    for row in table(txn, index)?.range(from.as_str()..to.as_str())? {
        let (key, _) = row?;
        if let Some(v) = values.get(index_id(key.value()))? {
            out.push(decode(v.value())?);
        }
    }
    Ok(out)
}

/// Allocations, all or those of one job and/or one node (read through an index).
pub fn allocations(txn: &ReadTransaction, job_name: Option<&str>, node_id: Option<&str>) -> Result<Vec<Allocation>> {
    let mut out: Vec<Allocation> = match (job_name, node_id) {
        (Some(job), _) => indexed(txn, ALLOCS_BY_JOB, job, ALLOCATIONS)?,
        (None, Some(node)) => indexed(txn, ALLOCS_BY_NODE, node, ALLOCATIONS)?,
        (None, None) => scan(txn, ALLOCATIONS, |_| true)?,
    };
    out.retain(|a| node_id.is_none_or(|n| a.node_id == n));
    Ok(out)
}

pub fn allocation(txn: &ReadTransaction, id: &str) -> Result<Option<Allocation>> {
    get(txn, ALLOCATIONS, id)
}

/// What each node has reserved (nodes with nothing reserved may be missing).
pub fn node_usage(txn: &ReadTransaction) -> Result<std::collections::HashMap<String, helios_core::Resources>> {
    let mut out = std::collections::HashMap::new();
    for row in table(txn, NODE_USAGE)?.iter()? {
        let (node, usage) = row?;
        out.insert(node.value().to_string(), decode(usage.value())?);
    }
    Ok(out)
}

/// The fixed host ports held on each node, and by which allocation.
pub type HostPorts = std::collections::HashMap<(String, u16), String>;

/// Every fixed host port held (only docker tasks with `-p NAME=PORT:HOSTPORT` hold any).
pub fn host_ports(txn: &ReadTransaction) -> Result<HostPorts> {
    let mut out = HostPorts::new();
    for row in table(txn, super::tables::NODE_PORTS)?.iter()? {
        let (key, holder) = row?;
        let (node, port) = key.value().split_once('\0').unwrap_or_default();
        let port = port.parse().map_err(|_| StoreError::Corrupt(format!("node_ports key {:?}", key.value())))?;
        out.insert((node.to_string(), port), decode(holder.value())?);
    }
    Ok(out)
}

/// How many of a job's allocations run and how many have not finished.
pub fn alloc_counts(txn: &ReadTransaction, job_name: &str) -> Result<AllocCounts> {
    Ok(get(txn, JOB_ALLOC_COUNTS, job_name)?.unwrap_or_default())
}

/// An allocation by full id, by a prefix, or by a suffix (the CLI shows ids' last 8 characters,
/// since time-ordered ids share their leading ones). Returns every match so the caller can
/// report ambiguity.
pub fn allocations_by_prefix(txn: &ReadTransaction, prefix: &str) -> Result<Vec<Allocation>> {
    if let Some(exact) = get::<Allocation>(txn, ALLOCATIONS, prefix)? {
        return Ok(vec![exact]);
    }
    let allocs = table(txn, ALLOCATIONS)?;
    let mut out = Vec::new();
    for row in allocs.range(prefix..)? {
        let (k, v) = row?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(decode(v.value())?);
    }
    if out.is_empty() {
        out = scan(txn, ALLOCATIONS, |a: &Allocation| a.id.ends_with(prefix))?;
    }
    Ok(out)
}

pub fn node(txn: &ReadTransaction, id: &str) -> Result<Option<Node>> {
    get(txn, NODES, id)
}

pub fn nodes(txn: &ReadTransaction) -> Result<Vec<Node>> {
    scan(txn, NODES, |_| true)
}

pub fn evaluations_for_job(txn: &ReadTransaction, job_name: &str) -> Result<Vec<Evaluation>> {
    let mut evals: Vec<Evaluation> = indexed(txn, EVALS_BY_JOB, job_name, EVALUATIONS)?;
    evals.sort_by_key(|e| e.created_at);
    Ok(evals)
}

/// At most this many pending evaluations are looked at per call of `pending_evaluations`.
const MAX_PENDING_SCAN: usize = 16_384;

/// How many evaluations wait for the scheduler (some until a later time).
pub fn pending_evaluation_count(txn: &ReadTransaction) -> Result<u64> {
    use redb::ReadableTableMetadata;
    Ok(table(txn, PENDING_EVALUATIONS)?.len()?)
}

/// The oldest evaluation waiting for the scheduler of each of up to `jobs` jobs, oldest first
/// (ids are time-ordered). A job's later evaluations are left for later: they are planned on the
/// earlier one's result.
pub fn pending_evaluations(txn: &ReadTransaction, jobs: usize, now: Timestamp) -> Result<Vec<Evaluation>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut scanned = 0;
    // Waiting rows are skipped unread and not counted: there is at most one per job.
    for row in table(txn, PENDING_EVALUATIONS)?.iter()? {
        let (id, waits) = row?;
        if pending_row_waits(waits.value(), now) {
            continue;
        }
        scanned += 1;
        if scanned > MAX_PENDING_SCAN {
            break;
        }
        if let Some(eval) = get::<Evaluation>(txn, EVALUATIONS, id.value())? {
            if seen.insert(eval.job_name.clone()) {
                out.push(eval);
                if out.len() == jobs {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// A pending evaluation's index row holds its `wait_until` (8 bytes, big-endian) while it
/// waits, and nothing otherwise.
fn pending_row_waits(row: &[u8], now: Timestamp) -> bool {
    <[u8; 8]>::try_from(row).is_ok_and(|b| u64::from_be_bytes(b) > now.0)
}

/// The jobs with live allocations on node `node_id`, with their priorities: a change of that
/// node (down, drained) affects them. (Blocked and system jobs are re-evaluated by the state
/// machine itself on any node change, see `StateTables::nodes_changed`.)
pub fn jobs_affected_by_node(txn: &ReadTransaction, node_id: &str) -> Result<Vec<(String, u32)>> {
    let mut names = std::collections::BTreeSet::new();
    for alloc in allocations(txn, None, Some(node_id))? {
        if !alloc.is_terminal() {
            names.insert(alloc.job_name);
        }
    }
    let mut out = Vec::new();
    for name in names {
        if let Some(job) = job(txn, &name)?.filter(|j| !j.stopped) {
            out.push((job.name, job.priority));
        }
    }
    Ok(out)
}

/// What a node must run or stop: its allocations that are not finished.
pub fn assigned_allocations(txn: &ReadTransaction, node_id: &str) -> Result<Vec<Allocation>> {
    let mut out = allocations(txn, None, Some(node_id))?;
    out.retain(|a| !a.client_status.is_terminal());
    Ok(out)
}

/// One stored version of a job (the one an allocation runs).
pub fn job_version(txn: &ReadTransaction, name: &str, version: u64) -> Result<Option<Job>> {
    get(txn, JOB_VERSIONS, &job_version_key(name, version))
}

/// A digest of the replicated state and the applied index it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    pub applied_index: u64,
    /// SHA-256 over every state table, in `STATE_TABLES` order, of each table's name and each
    /// row's key and value (length-prefixed, so no two states hash alike by concatenation);
    /// an empty table of `NEWER_TABLES` is left out.
    pub digest: String,
    pub entries: u64,
}

/// The digest of the state `txn` reads: servers that applied the same log agree on it.
pub fn state_digest(txn: &ReadTransaction) -> Result<StateDigest> {
    use redb::{ReadableTableMetadata, TableHandle};
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut entries = 0u64;
    let mut framed = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for def in super::tables::STATE_TABLES {
        // A table newer than the previous format counts only once it holds rows, so servers of
        // both builds agree during a rolling upgrade (the older has no such table at all).
        if super::tables::NEWER_TABLES.contains(&def.name()) && table(txn, def)?.is_empty()? {
            continue;
        }
        framed(def.name().as_bytes());
        let log_positions = def.name() == super::tables::CLUSTER.name();
        for row in table(txn, def)?.iter()? {
            let (key, value) = row?;
            if log_positions && super::tables::LOG_POSITIONS.contains(&key.value()) {
                continue;
            }
            framed(key.value().as_bytes());
            framed(value.value());
            entries += 1;
        }
    }
    Ok(StateDigest { applied_index: applied_index(txn)?, digest: hex::encode(hasher.finalize()), entries })
}

/// The cluster's stored format (`Command::RaiseFormat`): what its rows are written for.
/// What the state machine remembers of a client request id, and the index the state reflects.
pub fn client_request(
    txn: &ReadTransaction,
    id: &str,
) -> Result<Option<(u64, helios_core::command::ClientRequestRecord)>> {
    let Some(record) = get(txn, super::tables::CLIENT_REQUESTS, id)? else { return Ok(None) };
    Ok(Some((applied_index(txn)?, record)))
}

pub fn stored_format(txn: &ReadTransaction) -> Result<u32> {
    let format = get(txn, super::tables::CLUSTER, super::tables::STORED_FORMAT)?;
    Ok(format.unwrap_or(helios_core::format::OLDEST_WRITTEN_FORMAT))
}

pub fn applied_index(txn: &ReadTransaction) -> Result<u64> {
    let meta = txn.open_table(super::tables::SM_META)?;
    let last: Option<crate::raft::LogId> = match meta.get(super::tables::SM_LAST_APPLIED)? {
        None => None,
        Some(v) => Some(decode(v.value())?),
    };
    Ok(last.map_or(0, |l| l.index()))
}

/// The token whose secret hashes to `secret_hash`, if any.
pub fn acl_token_by_secret(txn: &ReadTransaction, secret_hash: &str) -> Result<Option<helios_core::acl::AclToken>> {
    let accessor = match table(txn, super::tables::ACL_TOKEN_SECRETS)?.get(secret_hash)? {
        None => return Ok(None),
        Some(v) => String::from_utf8_lossy(v.value()).into_owned(),
    };
    acl_token(txn, &accessor)
}

pub fn acl_token(txn: &ReadTransaction, accessor_id: &str) -> Result<Option<helios_core::acl::AclToken>> {
    get(txn, super::tables::ACL_TOKENS, accessor_id)
}

pub fn acl_tokens(txn: &ReadTransaction) -> Result<Vec<helios_core::acl::AclToken>> {
    scan(txn, super::tables::ACL_TOKENS, |_| true)
}

pub fn acl_policy(txn: &ReadTransaction, name: &str) -> Result<Option<helios_core::acl::AclPolicy>> {
    get(txn, super::tables::ACL_POLICIES, name)
}

pub fn acl_policies(txn: &ReadTransaction) -> Result<Vec<helios_core::acl::AclPolicy>> {
    scan(txn, super::tables::ACL_POLICIES, |_| true)
}

/// The caller's token (none: anonymous, or a secret that is unknown or past its TTL at `now`)
/// and what its policies grant; anonymous callers get the `anonymous` policy, if there is one.
pub fn acl_grants(
    txn: &ReadTransaction,
    secret_hash: Option<&str>,
    now: helios_core::Timestamp,
) -> Result<(Option<helios_core::acl::AclToken>, helios_core::acl::Grants)> {
    use helios_core::acl::{Grants, TokenType, ANONYMOUS_POLICY};
    let token = match secret_hash {
        Some(hash) => acl_token_by_secret(txn, hash)?.filter(|t| !t.is_expired(now)),
        None => None,
    };
    let grants = match &token {
        Some(t) if t.token_type == TokenType::Management => Grants::management(),
        Some(t) => {
            let mut policies = Vec::new();
            for name in &t.policies {
                policies.extend(acl_policy(txn, name)?);
            }
            Grants::of(&policies.iter().map(|p| &p.rules).collect::<Vec<_>>())
        }
        None => match acl_policy(txn, ANONYMOUS_POLICY)? {
            Some(p) => Grants::of(&[&p.rules]),
            None => Grants::default(),
        },
    };
    Ok((token, grants))
}

/// The log index ACLs were bootstrapped at, if they were.
pub fn acl_bootstrap_index(txn: &ReadTransaction) -> Result<Option<u64>> {
    get(txn, super::tables::CLUSTER, super::tables::ACL_BOOTSTRAP_INDEX)
}
