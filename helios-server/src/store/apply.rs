//! Applying commands to the state tables. Deterministic by construction: the only inputs are the
//! command (which carries its IDs and timestamps) and the tables; no clock, no randomness, no I/O
//! besides the transaction itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use helios_core::{
    AllocClientStatus, Allocation, Command, CommandResponse, Node, Proposal, RejectionKind, Resources, Timestamp,
};
use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{decode, encode};
use super::tables::{
    request_key, AllocCounts, ALLOCATIONS, ALLOCS_BY_JOB, ALLOCS_BY_NODE, BLOCKED_JOBS, CLUSTER, EVALS_BY_JOB,
    EVALUATIONS, JOBS, JOB_ALLOC_COUNTS, JOB_VERSIONS, NODES, NODE_PORTS, NODE_USAGE, PENDING_EVALUATIONS, REQUESTS,
    ROOM_FREED_AT,
};
use super::tables::{
    ACL_POLICIES, ACL_TOKENS, ACL_TOKEN_SECRETS, CLIENT_REQUESTS, CLIENT_REQUESTS_BY_TIME, DEPLOYMENTS, RESTORE_STAGING,
};
use crate::events::Change;
use helios_core::events::Topic;

mod acl;
mod deployments;
mod format;
mod gc;
mod indexes;
mod jobs;
mod nodes;
mod plan;
mod reports;
mod requests;
mod restore;

/// How long a request id is remembered. A server retries a proposal for at most
/// `cluster::REQUEST_DEADLINE` (15 s); the margin covers clock differences between servers, whose
/// clocks stamp `proposed_at`.
pub const REQUEST_MEMORY_MS: u64 = 10 * 60 * 1000;

type StateTable<'txn> = Table<'txn, &'static str, &'static [u8]>;

/// The state tables, opened once for a whole batch of commands.
pub struct StateTables<'txn> {
    jobs: StateTable<'txn>,
    job_versions: StateTable<'txn>,
    allocations: StateTable<'txn>,
    evaluations: StateTable<'txn>,
    requests: StateTable<'txn>,
    client_requests: StateTable<'txn>,
    client_requests_by_time: StateTable<'txn>,
    nodes: StateTable<'txn>,
    pending_evaluations: StateTable<'txn>,
    blocked_jobs: StateTable<'txn>,
    cluster: StateTable<'txn>,
    allocs_by_job: StateTable<'txn>,
    allocs_by_node: StateTable<'txn>,
    evals_by_job: StateTable<'txn>,
    node_usage: StateTable<'txn>,
    job_alloc_counts: StateTable<'txn>,
    node_ports: StateTable<'txn>,
    acl_policies: StateTable<'txn>,
    acl_tokens: StateTable<'txn>,
    acl_token_secrets: StateTable<'txn>,
    restore_staging: StateTable<'txn>,
    deployments: StateTable<'txn>,
    /// Node usage and job counts as this batch left them, written once by `finish`: they change
    /// with every allocation written, and writing them through would double the B-tree work.
    usage: HashMap<String, Resources>,
    counts: HashMap<String, AllocCounts>,
    /// Set (to the command's time) when the command being applied freed room or host ports:
    /// blocked jobs are then planned again.
    room_freed: Option<Timestamp>,
    /// Node id -> its allocations written in this batch: their agents' watches are told.
    pub touched: BTreeMap<String, BTreeSet<String>>,
    /// The rows of jobs, allocations, nodes, evaluations and deployments this batch wrote or
    /// removed, in order: the event stream's events (`crate::events`).
    pub changes: Vec<Change>,
    /// The log index of the entry being applied (set by the caller before each `apply_once`).
    pub index: u64,
    /// A restore replaced every table in this batch: every watch and cache must start over.
    pub restored: bool,
    /// The cluster's stored format (`tables::STORED_FORMAT`): what every row is written for.
    format: u32,
}

impl<'txn> StateTables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<StateTables<'txn>, redb::Error> {
        let cluster = txn.open_table(CLUSTER)?;
        let format = format::stored_format(&cluster)?;
        Ok(StateTables {
            jobs: txn.open_table(JOBS)?,
            job_versions: txn.open_table(JOB_VERSIONS)?,
            allocations: txn.open_table(ALLOCATIONS)?,
            evaluations: txn.open_table(EVALUATIONS)?,
            requests: txn.open_table(REQUESTS)?,
            client_requests: txn.open_table(CLIENT_REQUESTS)?,
            client_requests_by_time: txn.open_table(CLIENT_REQUESTS_BY_TIME)?,
            nodes: txn.open_table(NODES)?,
            pending_evaluations: txn.open_table(PENDING_EVALUATIONS)?,
            blocked_jobs: txn.open_table(BLOCKED_JOBS)?,
            cluster,
            allocs_by_job: txn.open_table(ALLOCS_BY_JOB)?,
            allocs_by_node: txn.open_table(ALLOCS_BY_NODE)?,
            evals_by_job: txn.open_table(EVALS_BY_JOB)?,
            node_usage: txn.open_table(NODE_USAGE)?,
            job_alloc_counts: txn.open_table(JOB_ALLOC_COUNTS)?,
            node_ports: txn.open_table(NODE_PORTS)?,
            acl_policies: txn.open_table(ACL_POLICIES)?,
            acl_tokens: txn.open_table(ACL_TOKENS)?,
            acl_token_secrets: txn.open_table(ACL_TOKEN_SECRETS)?,
            restore_staging: txn.open_table(RESTORE_STAGING)?,
            deployments: txn.open_table(DEPLOYMENTS)?,
            usage: HashMap::new(),
            counts: HashMap::new(),
            room_freed: None,
            touched: BTreeMap::new(),
            changes: Vec::new(),
            index: 0,
            restored: false,
            format,
        })
    }

    /// Applies a proposal once: a request id seen before gets its first answer again and changes
    /// nothing. Ids older than the memory window (by this proposal's time) are forgotten first:
    /// per entry, so every server remembers the same ids at every index, however its entries
    /// were batched.
    ///
    /// Every row is written for the cluster's stored format as it stands before the entry, the
    /// same on every replica, so replicas hold the same bytes and every voter reads them.
    pub fn apply_once(&mut self, proposal: Proposal) -> Result<CommandResponse, redb::Error> {
        helios_core::format::write_for(self.format, || self.apply_once_as_written(proposal))
    }

    fn apply_once_as_written(&mut self, proposal: Proposal) -> Result<CommandResponse, redb::Error> {
        self.forget_requests_before(proposal.proposed_at)?;
        let key = request_key(proposal.proposed_at.as_millis(), &proposal.request_id);
        if let Some(first) = get::<CommandResponse>(&self.requests, &key)? {
            return Ok(first);
        }
        // A restore's commit leaves the tables exactly as the snapshot had them, its requests
        // included; a repeat of it finds its restore gone and changes nothing.
        let remembered = !matches!(proposal.command, Command::RestoreCommit { .. });
        let response = match &proposal.client_request {
            Some(client) => match self.client_request_answer(client)? {
                Some(answer) => answer,
                None => {
                    let response = self.apply_if(proposal.precondition.as_ref(), proposal.command)?;
                    self.remember_client_request(client, proposal.proposed_at, &response)?;
                    response
                }
            },
            None => self.apply_if(proposal.precondition.as_ref(), proposal.command)?,
        };
        if remembered {
            self.requests.insert(key.as_str(), encode(&response).as_slice())?;
        }
        Ok(response)
    }

    /// The table of `topic`'s rows.
    fn evented(&mut self, topic: Topic) -> &mut StateTable<'txn> {
        match topic {
            Topic::Job => &mut self.jobs,
            Topic::Allocation => &mut self.allocations,
            Topic::Node => &mut self.nodes,
            Topic::Evaluation => &mut self.evaluations,
            Topic::Deployment => &mut self.deployments,
        }
    }

    /// Writes a row of a table that events are made of, and notes it for the event stream:
    /// every write of those tables goes through here or `remove_row`.
    fn put_row(&mut self, topic: Topic, key: &str, row: &[u8]) -> Result<(), redb::Error> {
        self.evented(topic).insert(key, row)?;
        self.changes.push(Change { index: self.index, topic, row: row.to_vec(), deleted: false });
        Ok(())
    }

    /// Notes a write of a table beside `topic`'s (job versions beside jobs): blocking reads of
    /// the topic wake, and no event is sent.
    fn touched(&mut self, topic: Topic) {
        self.changes.push(Change { index: self.index, topic, row: Vec::new(), deleted: false });
    }

    /// Removes a row of a table that events are made of; its event carries the row as it was.
    fn remove_row(&mut self, topic: Topic, key: &str) -> Result<(), redb::Error> {
        let old = self.evented(topic).remove(key)?.map(|row| row.value().to_vec());
        if let Some(row) = old {
            self.changes.push(Change { index: self.index, topic, row, deleted: true });
        }
        Ok(())
    }

    /// The cluster's stored format, as the commands applied so far left it.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// Writes what the batch kept in memory. Call once, after the batch's last command.
    ///
    /// A zero is stored as no row, as a rebuild from the allocations leaves it: the tables must
    /// be the same bytes whichever way they were reached (a server that installed a snapshot
    /// rebuilds them), or `server digest` tells replicas apart that agree.
    pub fn finish(&mut self) -> Result<(), redb::Error> {
        helios_core::format::write_for(self.format, || self.write_kept())
    }

    fn write_kept(&mut self) -> Result<(), redb::Error> {
        for (node, usage) in std::mem::take(&mut self.usage) {
            if usage == Resources::ZERO {
                self.node_usage.remove(node.as_str())?;
            } else {
                self.node_usage.insert(node.as_str(), encode(&usage).as_slice())?;
            }
        }
        for (job, counts) in std::mem::take(&mut self.counts) {
            if counts == AllocCounts::default() {
                self.job_alloc_counts.remove(job.as_str())?;
            } else {
                self.job_alloc_counts.insert(job.as_str(), encode(&counts).as_slice())?;
            }
        }
        Ok(())
    }

    /// Forgets request ids proposed more than `REQUEST_MEMORY_MS` before `latest` (the time of
    /// the proposal being applied: a deterministic clock, the same on every replica).
    fn forget_requests_before(&mut self, latest: Timestamp) -> Result<(), redb::Error> {
        let horizon = request_key(latest.as_millis().saturating_sub(REQUEST_MEMORY_MS), "");
        self.requests.retain_in(..horizon.as_str(), |_, _| false)?;
        self.forget_client_requests_before(&horizon)
    }

    pub fn apply(&mut self, command: Command) -> Result<CommandResponse, redb::Error> {
        let response = self.apply_command(command)?;
        if let Some(now) = self.room_freed.take() {
            self.cluster.insert(ROOM_FREED_AT, encode(&self.index).as_slice())?;
            self.retry_blocked(now, "room was freed; planning again")?;
        }
        Ok(response)
    }

    fn apply_command(&mut self, command: Command) -> Result<CommandResponse, redb::Error> {
        match command {
            Command::RegisterJob { job, eval } => self.register_job(job, eval),
            Command::DeregisterJob { job_name, purge, eval, now } => self.deregister_job(&job_name, purge, eval, now),
            Command::RegisterNode { node, evals } => {
                let now = node.registered_at;
                let response = self.register_node(node)?;
                if response == CommandResponse::NodeRegistered {
                    self.nodes_changed(now)?;
                    self.put_evaluations(&evals)?;
                }
                Ok(response)
            }
            Command::SetNodeStatus { node_id, status, now, evals } => {
                let response = self.set_node_status(&node_id, status, now)?;
                if response == CommandResponse::NodeStatusSet {
                    self.nodes_changed(now)?;
                    self.put_evaluations(&evals)?;
                }
                Ok(response)
            }
            Command::SetNodeScheduling { node_id, drain, eligibility, now, evals } => {
                let Some(mut node) = get::<Node>(&self.nodes, &node_id)? else {
                    return Ok(CommandResponse::rejected(
                        RejectionKind::NotFound,
                        format!("node {node_id:?} not found"),
                    ));
                };
                node.drain = drain;
                node.eligibility = eligibility;
                node.status_updated_at = now;
                self.put_row(Topic::Node, &node_id, &encode(&node))?;
                self.nodes_changed(now)?;
                self.put_evaluations(&evals)?;
                Ok(CommandResponse::NodeStatusSet)
            }
            Command::ReportAllocations { node_id, secret, updates, now, evals } => {
                let response = self.update_allocations(&node_id, &secret, updates, now)?;
                if response == CommandResponse::AllocationsUpdated {
                    self.put_evaluations(&evals)?;
                }
                Ok(response)
            }
            Command::ReportServices { node_id, secret, services, now } => {
                self.report_services(&node_id, &secret, services, now)
            }
            Command::ApplyPlan { plan, eval } => self.apply_plan(plan, eval),
            Command::UpdateDeployment { deployment, eval } => self.update_deployment(deployment, eval),
            Command::ActOnDeployment { deployment_id, action, now, eval } => {
                self.act_on_deployment(&deployment_id, &action, now, eval)
            }
            Command::CollectGarbage { cutoffs, garbage } => self.collect_garbage(cutoffs, garbage),
            Command::RestoreBegin { restore_id } => self.restore_begin(&restore_id),
            Command::RestoreRows { restore_id, table, rows } => self.restore_rows(&restore_id, &table, rows),
            Command::RestoreCommit { restore_id, rows } => self.restore_commit(&restore_id, rows),
            Command::RaiseFormat { format } => self.raise_format(format),
            Command::CreateEvaluations { evals } => {
                self.put_evaluations(&evals)?;
                Ok(CommandResponse::EvaluationsCreated)
            }
            Command::AclBootstrap { token, reset_index } => self.acl_bootstrap(token, reset_index),
            Command::UpsertAclPolicy { policy } => self.upsert_acl_policy(policy),
            Command::DeleteAclPolicy { name } => self.delete_acl_policy(&name),
            Command::UpsertAclToken { token } => self.upsert_acl_token(token),
            Command::DeleteAclToken { accessor_id } => self.delete_acl_token(&accessor_id),
            Command::PurgeNode { node_id, now, evals } => {
                let response = self.purge_node(&node_id, now)?;
                if response == CommandResponse::NodePurged {
                    self.nodes_changed(now)?;
                    self.put_evaluations(&evals)?;
                }
                Ok(response)
            }
        }
    }
}

/// True while an allocation holds room on its node: wanted, and not finished.
pub fn reserves_room(alloc: &Allocation) -> bool {
    alloc.reserves_room()
}

/// What one allocation contributes to its job's `AllocCounts`.
pub fn counted(alloc: &Allocation) -> AllocCounts {
    AllocCounts {
        running: u64::from(alloc.client_status == AllocClientStatus::Running),
        live: u64::from(!alloc.is_terminal()),
    }
}

fn get<T: serde::de::DeserializeOwned>(table: &StateTable<'_>, key: &str) -> Result<Option<T>, redb::Error> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(v.value()).map_err(redb::StorageError::Io)?)),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_requests;
