//! Applying commands to the state tables. Deterministic by construction: the only inputs are the
//! command (which carries its IDs and timestamps) and the tables; no clock, no randomness, no I/O
//! besides the transaction itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use helios_core::{
    AllocClientStatus, AllocDesiredStatus, Allocation, Command, CommandResponse, Evaluation, Job, JobStatus, Node,
    NodeEligibility, NodeStatus, Plan, Proposal, Rejection, RejectionKind, Resources, Timestamp,
};
use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{decode, encode};
use super::tables::{
    host_port_key, index_id, index_key, index_range, job_version_key, request_key, AllocCounts, ALLOCATIONS,
    ALLOCS_BY_JOB, ALLOCS_BY_NODE, BLOCKED_JOBS, CLUSTER, EVALS_BY_JOB, EVALUATIONS, JOBS, JOB_ALLOC_COUNTS,
    JOB_VERSIONS, NODES, NODES_CHANGED_AT, NODE_PORTS, NODE_USAGE, PENDING_EVALUATIONS, REQUESTS, ROOM_FREED_AT,
};
use super::tables::{ACL_POLICIES, ACL_TOKENS, ACL_TOKEN_SECRETS, RESTORE_STAGING};

mod acl;
mod gc;
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
    /// Node usage and job counts as this batch left them, written once by `finish`: they change
    /// with every allocation written, and writing them through would double the B-tree work.
    usage: HashMap<String, Resources>,
    counts: HashMap<String, AllocCounts>,
    /// Set (to the command's time) when the command being applied freed room or host ports:
    /// blocked jobs are then planned again.
    room_freed: Option<Timestamp>,
    /// Node id -> its allocations written in this batch: their agents' watches are told.
    pub touched: BTreeMap<String, BTreeSet<String>>,
    /// The log index of the entry being applied (set by the caller before each `apply_once`).
    pub index: u64,
    /// A restore replaced every table in this batch: every watch and cache must start over.
    pub restored: bool,
}

impl<'txn> StateTables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<StateTables<'txn>, redb::Error> {
        Ok(StateTables {
            jobs: txn.open_table(JOBS)?,
            job_versions: txn.open_table(JOB_VERSIONS)?,
            allocations: txn.open_table(ALLOCATIONS)?,
            evaluations: txn.open_table(EVALUATIONS)?,
            requests: txn.open_table(REQUESTS)?,
            nodes: txn.open_table(NODES)?,
            pending_evaluations: txn.open_table(PENDING_EVALUATIONS)?,
            blocked_jobs: txn.open_table(BLOCKED_JOBS)?,
            cluster: txn.open_table(CLUSTER)?,
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
            usage: HashMap::new(),
            counts: HashMap::new(),
            room_freed: None,
            touched: BTreeMap::new(),
            index: 0,
            restored: false,
        })
    }

    /// Applies a proposal once: a request id seen before gets its first answer again and changes
    /// nothing. Ids older than the memory window (by this proposal's time) are forgotten first:
    /// per entry, so every server remembers the same ids at every index, however its entries
    /// were batched.
    pub fn apply_once(&mut self, proposal: Proposal) -> Result<CommandResponse, redb::Error> {
        self.forget_requests_before(proposal.proposed_at)?;
        let key = request_key(proposal.proposed_at.as_millis(), &proposal.request_id);
        if let Some(first) = get::<CommandResponse>(&self.requests, &key)? {
            return Ok(first);
        }
        // A restore's commit leaves the tables exactly as the snapshot had them, its requests
        // included; a repeat of it finds its restore gone and changes nothing.
        let remembered = !matches!(proposal.command, Command::RestoreCommit { .. });
        let response = self.apply(proposal.command)?;
        if remembered {
            self.requests.insert(key.as_str(), encode(&response).as_slice())?;
        }
        Ok(response)
    }

    /// Builds the indexes over allocations and evaluations (`tables::ALLOCS_BY_JOB` ...
    /// `JOB_ALLOC_COUNTS`) afresh from the tables themselves, for data written before they
    /// existed: an older server's database, or a snapshot from one. Then call `finish`.
    pub fn rebuild_indexes(&mut self) -> Result<(), redb::Error> {
        self.allocs_by_job.retain(|_, _| false)?;
        self.allocs_by_node.retain(|_, _| false)?;
        self.evals_by_job.retain(|_, _| false)?;
        self.node_usage.retain(|_, _| false)?;
        self.job_alloc_counts.retain(|_, _| false)?;
        self.node_ports.retain(|_, _| false)?;
        self.usage.clear();
        self.counts.clear();
        for row in self.allocations.iter()? {
            let (_, value) = row?;
            let alloc: Allocation = decode(value.value()).map_err(redb::StorageError::Io)?;
            self.allocs_by_job.insert(index_key(&alloc.job_name, &alloc.id).as_str(), [].as_slice())?;
            self.allocs_by_node.insert(index_key(&alloc.node_id, &alloc.id).as_str(), [].as_slice())?;
            if reserves_room(&alloc) {
                let usage = self.usage.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
                *usage = usage.plus(alloc.resources);
            }
            if alloc.holds_host_ports() {
                for port in &alloc.host_ports {
                    let key = host_port_key(&alloc.node_id, *port);
                    if get::<String>(&self.node_ports, &key)?.is_none() {
                        self.node_ports.insert(key.as_str(), encode(&alloc.id).as_slice())?;
                    }
                }
            }
            let counts = self.counts.entry(alloc.job_name.clone()).or_default();
            counts.running += counted(&alloc).running;
            counts.live += counted(&alloc).live;
        }
        for row in self.evaluations.iter()? {
            let (_, value) = row?;
            let eval: Evaluation = decode(value.value()).map_err(redb::StorageError::Io)?;
            self.evals_by_job.insert(index_key(&eval.job_name, &eval.id).as_str(), [].as_slice())?;
        }
        Ok(())
    }

    /// Writes what the batch kept in memory. Call once, after the batch's last command.
    pub fn finish(&mut self) -> Result<(), redb::Error> {
        for (node, usage) in std::mem::take(&mut self.usage) {
            self.node_usage.insert(node.as_str(), encode(&usage).as_slice())?;
        }
        for (job, counts) in std::mem::take(&mut self.counts) {
            self.job_alloc_counts.insert(job.as_str(), encode(&counts).as_slice())?;
        }
        Ok(())
    }

    fn usage_of(&self, node: &str) -> Result<Resources, redb::Error> {
        match self.usage.get(node) {
            Some(u) => Ok(*u),
            None => Ok(get(&self.node_usage, node)?.unwrap_or(Resources::ZERO)),
        }
    }

    fn counts_of(&self, job: &str) -> Result<AllocCounts, redb::Error> {
        match self.counts.get(job) {
            Some(c) => Ok(*c),
            None => Ok(get(&self.job_alloc_counts, job)?.unwrap_or_default()),
        }
    }

    /// Forgets request ids proposed more than `REQUEST_MEMORY_MS` before `latest` (the time of
    /// the proposal being applied: a deterministic clock, the same on every replica).
    fn forget_requests_before(&mut self, latest: Timestamp) -> Result<(), redb::Error> {
        let horizon = request_key(latest.as_millis().saturating_sub(REQUEST_MEMORY_MS), "");
        self.requests.retain_in(..horizon.as_str(), |_, _| false)?;
        Ok(())
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
                    return Ok(CommandResponse::Rejected(Rejection {
                        kind: RejectionKind::NotFound,
                        message: format!("node {node_id:?} not found"),
                    }));
                };
                node.drain = drain;
                node.eligibility = eligibility;
                node.status_updated_at = now;
                self.nodes.insert(node_id.as_str(), encode(&node).as_slice())?;
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
            Command::ApplyPlan { plan, eval } => self.apply_plan(plan, eval),
            Command::CollectGarbage { cutoffs, garbage } => self.collect_garbage(cutoffs, garbage),
            Command::RestoreBegin { restore_id } => self.restore_begin(&restore_id),
            Command::RestoreRows { restore_id, table, rows } => self.restore_rows(&restore_id, &table, rows),
            Command::RestoreCommit { restore_id, rows } => self.restore_commit(&restore_id, rows),
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

    /// Forgets a down node: its unfinished allocations are lost (their jobs' evaluations place
    /// them elsewhere), and its id is free for the next agent that registers it.
    fn purge_node(&mut self, node_id: &str, now: Timestamp) -> Result<CommandResponse, redb::Error> {
        let Some(node) = get::<Node>(&self.nodes, node_id)? else {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::NotFound,
                message: format!("node {node_id:?} not found"),
            }));
        };
        if node.status != NodeStatus::Down {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::FailedPrecondition,
                message: format!(
                    "node {node_id:?} is {}: only a node that is down can be purged (stop its agent, or drain it)",
                    node.status.as_str()
                ),
            }));
        }
        let (from, to) = index_range(node_id);
        let mut ids = Vec::new();
        for row in self.allocs_by_node.range(from.as_str()..to.as_str())? {
            ids.push(index_id(row?.0.value()).to_string());
        }
        for id in ids {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, &id)? else { continue };
            if !alloc.is_terminal() {
                alloc.desired_status = AllocDesiredStatus::Stop;
                alloc.desired_description = "node purged".to_string();
                alloc.client_status = helios_core::AllocClientStatus::Lost;
                alloc.modified_at = now;
                self.put_allocation(&alloc)?;
            }
        }
        self.nodes.remove(node_id)?;
        Ok(CommandResponse::NodePurged)
    }

    /// The usable nodes changed at this entry. Whatever was decided on the old set is decided
    /// again: blocked evaluations go back to pending, and every system job gets an evaluation.
    /// Done here, deterministically, because the proposer's own list of affected jobs can be
    /// outdated by a plan committed just before this entry.
    fn nodes_changed(&mut self, now: Timestamp) -> Result<(), redb::Error> {
        use helios_core::{EvalTrigger, JobType};
        self.cluster.insert(NODES_CHANGED_AT, encode(&self.index).as_slice())?;
        self.retry_blocked(now, "the nodes changed; planning again")?;
        let mut system = Vec::new();
        for row in self.jobs.iter()? {
            let (_, value) = row?;
            let job: Job = decode(value.value()).map_err(redb::StorageError::Io)?;
            if job.job_type == JobType::System && !job.stopped {
                system.push(job);
            }
        }
        for job in system {
            // An id derived from the log index: the same on every replica.
            let id = format!("node-change-{:020}-{}", self.index, job.name);
            let eval = Evaluation::new(id, &job.name, job.priority, EvalTrigger::NodeUpdate, now);
            self.put_evaluation(&eval)?;
        }
        Ok(())
    }

    fn register_job(&mut self, mut job: Job, eval: Evaluation) -> Result<CommandResponse, redb::Error> {
        let previous: Option<Job> = get(&self.jobs, &job.name)?;
        if let Some(prev) = &previous {
            if prev.same_spec(&job) && !prev.stopped {
                return Ok(CommandResponse::JobRegistered { version: prev.version, changed: false, eval_id: None });
            }
        }
        job.version = previous.map_or(0, |p| p.version + 1);
        job.status = JobStatus::Pending;
        job.stopped = false;
        let bytes = encode(&job);
        self.jobs.insert(job.name.as_str(), bytes.as_slice())?;
        self.job_versions.insert(job_version_key(&job.name, job.version).as_str(), bytes.as_slice())?;
        self.put_evaluation(&eval)?;
        Ok(CommandResponse::JobRegistered { version: job.version, changed: true, eval_id: Some(eval.id) })
    }

    /// Blocked evaluations go back to pending: what blocked them may have changed.
    fn retry_blocked(&mut self, now: Timestamp, why: &str) -> Result<(), redb::Error> {
        use helios_core::EvalStatus;
        let mut blocked = Vec::new();
        for row in self.blocked_jobs.iter()? {
            let (_, eval_id) = row?;
            blocked.push(String::from_utf8_lossy(eval_id.value()).into_owned());
        }
        for id in blocked {
            if let Some(mut eval) = get::<Evaluation>(&self.evaluations, &id)? {
                if eval.status == EvalStatus::Blocked {
                    eval.status = EvalStatus::Pending;
                    eval.status_description = why.to_string();
                    eval.modified_at = now;
                    self.put_evaluation(&eval)?;
                }
            }
        }
        Ok(())
    }

    fn deregister_job(
        &mut self,
        name: &str,
        purge: bool,
        eval: Evaluation,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(mut job) = get::<Job>(&self.jobs, name)? else {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::NotFound,
                message: format!("job {name:?} not found"),
            }));
        };
        if purge {
            // Stop its allocations now: a job submitted again under this name starts over at
            // version 0, and must not mistake these for its own.
            self.stop_allocations_of(name, now)?;
            self.blocked_jobs.remove(name)?;
            self.jobs.remove(name)?;
            let first = job_version_key(name, 0);
            let last = job_version_key(name, u64::MAX);
            self.job_versions.retain_in(first.as_str()..=last.as_str(), |_, _| false)?;
        } else {
            job.stopped = true;
            job.submitted_at = job.submitted_at.max(now);
            if !self.has_live_allocations(name)? {
                job.status = JobStatus::Dead;
            }
            self.jobs.insert(name, encode(&job).as_slice())?;
        }
        self.put_evaluation(&eval)?;
        Ok(CommandResponse::JobDeregistered { eval_id: eval.id })
    }

    fn register_node(&mut self, mut node: Node) -> Result<CommandResponse, redb::Error> {
        if let Some(existing) = get::<Node>(&self.nodes, &node.id)? {
            // A node id keeps its secret for good, down or not: a down node's id taken by
            // another agent would hand it the node's allocations. Only an operator frees it.
            if !existing.secret_matches(&node.secret_id) {
                return Ok(CommandResponse::Rejected(Rejection {
                    kind: RejectionKind::FailedPrecondition,
                    message: format!(
                        "node id {:?} belongs to another agent (its secret differs); give this agent another \
                         --node-id, or free the id with `helios-cli node purge {}` if that machine is gone for good",
                        node.id, node.id
                    ),
                }));
            }
            // A restarted agent keeps what operators decided about its node.
            node.eligibility = existing.eligibility;
            node.drain = existing.drain;
            node.registered_at = existing.registered_at;
        }
        node.status = NodeStatus::Ready;
        self.nodes.insert(node.id.as_str(), encode(&node).as_slice())?;
        Ok(CommandResponse::NodeRegistered)
    }

    fn set_node_status(
        &mut self,
        id: &str,
        status: NodeStatus,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(mut node) = get::<Node>(&self.nodes, id)? else {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::NotFound,
                message: format!("node {id:?} not found"),
            }));
        };
        if node.status != status {
            node.status = status;
            node.status_updated_at = now;
            self.nodes.insert(id, encode(&node).as_slice())?;
        }
        Ok(CommandResponse::NodeStatusSet)
    }

    /// The plan applier's last line: a plan is committed only if it still fits the state it
    /// meets here, so no node is over-committed and no slot is filled twice, however plans race.
    fn apply_plan(&mut self, plan: Plan, mut eval: Evaluation) -> Result<CommandResponse, redb::Error> {
        // Blocked on a view of the nodes that has changed since (a node registered while this
        // plan was made): plan it again rather than wait for the next change.
        let nodes_changed_at: u64 = get(&self.cluster, NODES_CHANGED_AT)?.unwrap_or(0);
        let system =
            get::<Job>(&self.jobs, &plan.job_name)?.is_some_and(|j| j.job_type == helios_core::JobType::System);
        let decided_on_old_nodes = nodes_changed_at > plan.planned_at_index;
        if decided_on_old_nodes && (eval.status == helios_core::EvalStatus::Blocked || system) {
            eval.status = helios_core::EvalStatus::Pending;
            eval.status_description = "the nodes changed while it was planned; planning again".to_string();
        }
        let room_freed_at: u64 = get(&self.cluster, ROOM_FREED_AT)?.unwrap_or(0);
        if room_freed_at > plan.planned_at_index && eval.status == helios_core::EvalStatus::Blocked {
            eval.status = helios_core::EvalStatus::Pending;
            eval.status_description = "room was freed while it was planned; planning again".to_string();
        }
        if let Err(why) = self.check_plan(&plan)? {
            return Ok(CommandResponse::Rejected(Rejection {
                kind: RejectionKind::FailedPrecondition,
                message: format!("stale plan: {why}"),
            }));
        }
        let now = eval.modified_at;
        for stop in &plan.stops {
            let Some(alloc) = get::<Allocation>(&self.allocations, &stop.alloc_id)? else { continue };
            let mut alloc = stop.applied_to(&alloc);
            alloc.modified_at = now;
            self.put_allocation(&alloc)?;
        }
        for id in &plan.in_place {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, id)? else { continue };
            alloc.job_version = plan.job_version;
            alloc.modified_at = now;
            self.put_allocation(&alloc)?;
        }
        for alloc in &plan.placements {
            self.put_allocation(alloc)?;
        }
        if !plan.stops.is_empty() {
            // A stopped job whose allocations never started is dead once they are stopped.
            self.refresh_job_status(&plan.job_name)?;
        }
        self.put_evaluation(&eval)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(CommandResponse::PlanApplied { placed: count(plan.placements.len()), stopped: count(plan.stops.len()) })
    }

    fn check_plan(&self, plan: &Plan) -> Result<Result<(), String>, redb::Error> {
        if plan.placements.is_empty() {
            return Ok(Ok(()));
        }
        let stopping: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        // What each node has reserved, less what this plan stops.
        let mut used: HashMap<String, Resources> = HashMap::new();
        // Each stopped allocation once, however often the plan names it.
        for id in &stopping {
            let Some(alloc) = get::<Allocation>(&self.allocations, id)? else { continue };
            if reserves_room(&alloc) {
                let r = self.used_on(&mut used, &alloc.node_id)?;
                *r = r.minus(alloc.resources);
            }
        }
        // The slots the plan's job already fills. Names may repeat across jobs ("a.b" + "c" and
        // "a" + "b.c"), but slots belong to one job.
        let mut taken: BTreeSet<(String, String)> = BTreeSet::new();
        for alloc in self.allocations_of_job(&plan.job_name)? {
            if reserves_room(&alloc) && !stopping.contains(alloc.id.as_str()) {
                taken.insert((alloc.name.clone(), alloc.node_id.clone()));
                taken.insert((alloc.name, String::new()));
            }
        }
        let system =
            get::<Job>(&self.jobs, &plan.job_name)?.is_some_and(|j| j.job_type == helios_core::JobType::System);
        // Fixed host ports: free unless held by an allocation that the plan does not finish, and
        // each taken once.
        let mut ports_freed: BTreeSet<&str> = BTreeSet::new();
        let wants_ports = plan.placements.iter().any(|a| !a.host_ports.is_empty());
        for stop in plan.stops.iter().filter(|_| wants_ports) {
            let Some(alloc) = get::<Allocation>(&self.allocations, &stop.alloc_id)? else { continue };
            if !stop.applied_to(&alloc).holds_host_ports() {
                ports_freed.insert(stop.alloc_id.as_str());
            }
        }
        let mut ports_taken: BTreeSet<(&str, u16)> = BTreeSet::new();
        for alloc in &plan.placements {
            for port in &alloc.host_ports {
                let holder = get::<String>(&self.node_ports, &host_port_key(&alloc.node_id, *port))?;
                let held = holder.is_some_and(|h| !ports_freed.contains(h.as_str()));
                if held || !ports_taken.insert((alloc.node_id.as_str(), *port)) {
                    return Ok(Err(format!("host port {port} on node {} is taken", alloc.node_id)));
                }
            }
        }
        // A plan puts many allocations on few nodes: decode each node once.
        let mut nodes: HashMap<&str, Option<Node>> = HashMap::new();
        for alloc in &plan.placements {
            if alloc.job_name != plan.job_name {
                return Ok(Err(format!("allocation {} belongs to another job", alloc.id)));
            }
            if !nodes.contains_key(alloc.node_id.as_str()) {
                nodes.insert(&alloc.node_id, get::<Node>(&self.nodes, &alloc.node_id)?);
            }
            let Some(node) = &nodes[alloc.node_id.as_str()] else {
                return Ok(Err(format!("node {} is gone", alloc.node_id)));
            };
            if node.status != NodeStatus::Ready || node.eligibility != NodeEligibility::Eligible || node.drain {
                return Ok(Err(format!("node {} can no longer take work", node.id)));
            }
            // A system job's slot is per node; other slots are per job.
            let slot = (alloc.name.clone(), if system { alloc.node_id.clone() } else { String::new() });
            if !taken.insert(slot) {
                return Ok(Err(format!("slot {} is already filled", alloc.name)));
            }
            let r = self.used_on(&mut used, &node.id)?;
            *r = r.plus(alloc.resources);
            if r.cpu_mhz > node.resources.cpu_mhz || r.memory_mb > node.resources.memory_mb {
                return Ok(Err(format!("node {} has no room left", node.id)));
            }
        }
        Ok(Ok(()))
    }

    /// The entry for `node` in `used`, starting from what the node has reserved now.
    fn used_on<'m>(
        &self,
        used: &'m mut HashMap<String, Resources>,
        node: &str,
    ) -> Result<&'m mut Resources, redb::Error> {
        if !used.contains_key(node) {
            let now = self.usage_of(node)?;
            used.insert(node.to_string(), now);
        }
        Ok(used.get_mut(node).expect("inserted above"))
    }

    /// Records (or releases) the fixed host ports `alloc` holds on its node.
    fn hold_host_ports(&mut self, alloc: &Allocation, hold: bool) -> Result<(), redb::Error> {
        for port in &alloc.host_ports {
            let key = host_port_key(&alloc.node_id, *port);
            if hold {
                // check_plan keeps ports unique; should two ever claim one, the first keeps it
                // (as `rebuild_indexes`, which meets allocations in id order, cannot tell).
                if get::<String>(&self.node_ports, &key)?.is_none() {
                    self.node_ports.insert(key.as_str(), encode(&alloc.id).as_slice())?;
                }
            } else if get::<String>(&self.node_ports, &key)?.as_deref() == Some(alloc.id.as_str()) {
                self.node_ports.remove(key.as_str())?;
            }
        }
        Ok(())
    }

    /// Every allocation of `job_name`, terminal ones included.
    fn allocations_of_job(&self, job_name: &str) -> Result<Vec<Allocation>, redb::Error> {
        let (from, to) = index_range(job_name);
        let mut out = Vec::new();
        for row in self.allocs_by_job.range(from.as_str()..to.as_str())? {
            let (key, _) = row?;
            if let Some(alloc) = get::<Allocation>(&self.allocations, index_id(key.value()))? {
                out.push(alloc);
            }
        }
        Ok(out)
    }

    /// Writes an allocation and keeps every index over allocations in step with it. The only way
    /// allocations are written. An allocation never changes its job, node or resources.
    fn put_allocation(&mut self, alloc: &Allocation) -> Result<(), redb::Error> {
        let old: Option<Allocation> = get(&self.allocations, &alloc.id)?;
        self.allocations.insert(alloc.id.as_str(), encode(alloc).as_slice())?;
        if old.is_none() {
            self.allocs_by_job.insert(index_key(&alloc.job_name, &alloc.id).as_str(), [].as_slice())?;
            self.allocs_by_node.insert(index_key(&alloc.node_id, &alloc.id).as_str(), [].as_slice())?;
        }
        let was_reserved = old.as_ref().is_some_and(reserves_room);
        if was_reserved != reserves_room(alloc) {
            let usage = self.usage_of(&alloc.node_id)?;
            let usage = if was_reserved { usage.minus(alloc.resources) } else { usage.plus(alloc.resources) };
            self.usage.insert(alloc.node_id.clone(), usage);
        }
        let was_holding = old.as_ref().is_some_and(Allocation::holds_host_ports);
        if was_holding != alloc.holds_host_ports() {
            self.hold_host_ports(alloc, !was_holding)?;
        }
        if (was_reserved && !reserves_room(alloc)) || (was_holding && !alloc.holds_host_ports()) {
            self.room_freed = Some(alloc.modified_at);
        }
        let before = old.as_ref().map(counted).unwrap_or_default();
        let after = counted(alloc);
        if before != after {
            let mut counts = self.counts_of(&alloc.job_name)?;
            counts.running = (counts.running + after.running).saturating_sub(before.running);
            counts.live = (counts.live + after.live).saturating_sub(before.live);
            self.counts.insert(alloc.job_name.clone(), counts);
        }
        self.touched.entry(alloc.node_id.clone()).or_default().insert(alloc.id.clone());
        Ok(())
    }

    fn put_evaluations(&mut self, evals: &[Evaluation]) -> Result<(), redb::Error> {
        evals.iter().try_for_each(|e| self.put_evaluation(e))
    }

    /// Stores an evaluation and keeps the indexes of pending evaluations (what the scheduler
    /// reads) and of blocked jobs (what a cluster change retries).
    fn put_evaluation(&mut self, eval: &Evaluation) -> Result<(), redb::Error> {
        use helios_core::EvalStatus;
        self.evaluations.insert(eval.id.as_str(), encode(eval).as_slice())?;
        self.evals_by_job.insert(index_key(&eval.job_name, &eval.id).as_str(), [].as_slice())?;
        if eval.status == EvalStatus::Pending {
            self.pending_evaluations.insert(eval.id.as_str(), [].as_slice())?;
        } else {
            self.pending_evaluations.remove(eval.id.as_str())?;
        }
        if eval.status == EvalStatus::Blocked {
            self.blocked_jobs.insert(eval.job_name.as_str(), eval.id.as_bytes())?;
        } else {
            // Only while blocked: retrying then scans just the jobs still waiting.
            let listed =
                self.blocked_jobs.get(eval.job_name.as_str())?.is_some_and(|id| id.value() == eval.id.as_bytes());
            if listed || eval.status == EvalStatus::Complete {
                self.blocked_jobs.remove(eval.job_name.as_str())?;
            }
        }
        Ok(())
    }

    fn update_allocations(
        &mut self,
        node_id: &str,
        secret: &str,
        updates: Vec<helios_core::AllocUpdate>,
        now: Timestamp,
    ) -> Result<CommandResponse, redb::Error> {
        match get::<Node>(&self.nodes, node_id)? {
            None => {
                return Ok(CommandResponse::Rejected(Rejection {
                    kind: RejectionKind::NotFound,
                    message: format!("node {node_id:?} is not registered"),
                }))
            }
            Some(node) if !node.secret_matches(secret) => {
                return Ok(CommandResponse::Rejected(Rejection {
                    kind: RejectionKind::FailedPrecondition,
                    message: format!("node {node_id:?} is registered by another agent"),
                }))
            }
            Some(_) => {}
        }
        let mut changed = Vec::with_capacity(updates.len());
        for update in updates {
            let Some(mut alloc) = get::<Allocation>(&self.allocations, &update.alloc_id)? else {
                return Ok(CommandResponse::Rejected(Rejection {
                    kind: RejectionKind::NotFound,
                    message: format!("allocation {} not found", update.alloc_id),
                }));
            };
            if alloc.node_id != node_id {
                return Ok(CommandResponse::Rejected(Rejection {
                    kind: RejectionKind::FailedPrecondition,
                    message: format!("allocation {} is not on node {node_id}", update.alloc_id),
                }));
            }
            // A finished allocation stays finished (a late or repeated report cannot revive it),
            // and a lost one stays lost: the servers already replaced it.
            if !alloc.client_status.is_terminal() {
                alloc.client_status = update.client_status;
                alloc.client_description = update.client_description;
                alloc.task_states = update.task_states;
                alloc.modified_at = now;
            }
            changed.push(alloc);
        }
        let mut jobs = BTreeSet::new();
        for alloc in changed {
            self.put_allocation(&alloc)?;
            jobs.insert(alloc.job_name);
        }
        for job in jobs {
            self.refresh_job_status(&job)?;
        }
        Ok(CommandResponse::AllocationsUpdated)
    }

    /// A job runs while any of its allocations runs; a batch job whose allocations of the current
    /// version have all finished, and none still to run, is dead.
    fn refresh_job_status(&mut self, job_name: &str) -> Result<(), redb::Error> {
        let Some(mut job) = get::<Job>(&self.jobs, job_name)? else { return Ok(()) };
        let counts = self.counts_of(job_name)?;
        let finished_batch = || -> Result<bool, redb::Error> {
            if job.job_type != helios_core::JobType::Batch || counts.live > 0 {
                return Ok(false);
            }
            // Only reached when the last live allocation finishes, so the scan is rare.
            let complete = self
                .allocations_of_job(job_name)?
                .iter()
                .filter(|a| a.job_version == job.version && a.client_status == AllocClientStatus::Complete)
                .count();
            Ok(complete as u64 >= job.desired_allocations())
        };
        let status = if counts.running > 0 {
            JobStatus::Running
        } else if job.stopped || finished_batch()? {
            JobStatus::Dead
        } else {
            job.status
        };
        if status != job.status {
            job.status = status;
            self.jobs.insert(job_name, encode(&job).as_slice())?;
        }
        Ok(())
    }

    fn stop_allocations_of(&mut self, job_name: &str, now: Timestamp) -> Result<(), redb::Error> {
        for mut alloc in self.allocations_of_job(job_name)? {
            if alloc.desired_status == AllocDesiredStatus::Run {
                alloc.desired_status = AllocDesiredStatus::Stop;
                alloc.desired_description = "job purged".to_string();
                alloc.modified_at = now;
                self.put_allocation(&alloc)?;
            }
        }
        Ok(())
    }

    fn has_live_allocations(&self, job_name: &str) -> Result<bool, redb::Error> {
        Ok(self.counts_of(job_name)?.live > 0)
    }
}

/// True while an allocation holds room on its node: wanted, and not finished.
pub fn reserves_room(alloc: &Allocation) -> bool {
    !alloc.is_terminal() && alloc.desired_status == AllocDesiredStatus::Run
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
mod tests {
    use helios_core::{EvalTrigger, Job};
    use redb::ReadableDatabase;

    use super::*;
    use crate::store::{open, read};

    fn proposal(id: &str, at: u64, command: Command) -> Proposal {
        Proposal { request_id: id.to_string(), proposed_at: Timestamp(at), command }
    }

    fn register(name: &str, arg: &str, eval: &str) -> Command {
        let job = Job::exec(name, "echo", vec![arg.to_string()]);
        let eval = Evaluation::new(eval.to_string(), name, 50, EvalTrigger::JobRegister, Timestamp(1));
        Command::RegisterJob { job, eval }
    }

    /// Applies proposals in one transaction, as the state machine applies one batch.
    fn apply_all(db: &redb::Database, proposals: Vec<Proposal>) -> Vec<CommandResponse> {
        let txn = db.begin_write().unwrap();
        let responses = {
            let mut tables = StateTables::open(&txn).unwrap();
            let out = proposals
                .into_iter()
                .map(|p| {
                    tables.index += 1;
                    tables.apply_once(p).unwrap()
                })
                .collect();
            tables.finish().unwrap();
            out
        };
        txn.commit().unwrap();
        responses
    }

    #[test]
    fn versions_count_changed_specs_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let got = apply_all(
            &db,
            vec![
                proposal("r1", 10, register("web", "a", "e1")),
                proposal("r2", 11, register("web", "a", "e2")),
                proposal("r3", 12, register("web", "b", "e3")),
            ],
        );
        assert_eq!(
            got,
            vec![
                CommandResponse::JobRegistered { version: 0, changed: true, eval_id: Some("e1".into()) },
                CommandResponse::JobRegistered { version: 0, changed: false, eval_id: None },
                CommandResponse::JobRegistered { version: 1, changed: true, eval_id: Some("e3".into()) },
            ]
        );
        let txn = db.begin_read().unwrap();
        assert_eq!(read::job_versions(&txn, "web").unwrap().len(), 2);
        assert_eq!(read::evaluations_for_job(&txn, "web").unwrap().len(), 2);
    }

    #[test]
    fn a_repeated_request_is_answered_without_applying_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let first = apply_all(&db, vec![proposal("r1", 10, register("web", "a", "e1"))]);
        // Someone else updates the job; then the first request is retried (a leader change).
        apply_all(&db, vec![proposal("r2", 11, register("web", "b", "e2"))]);
        let retried = apply_all(&db, vec![proposal("r1", 10, register("web", "a", "e1"))]);
        assert_eq!(first, retried);
        let txn = db.begin_read().unwrap();
        let job = read::job(&txn, "web").unwrap().unwrap();
        assert_eq!(job.version, 1, "the retry must not roll the job back to the older spec");
    }

    #[test]
    fn request_ids_are_forgotten_after_the_memory_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        apply_all(&db, vec![proposal("old", 1_000, register("a", "x", "e1"))]);
        apply_all(&db, vec![proposal("new", 1_000 + REQUEST_MEMORY_MS + 1, register("b", "x", "e2"))]);
        let txn = db.begin_read().unwrap();
        let requests = txn.open_table(REQUESTS).unwrap();
        let keys: Vec<String> = requests.iter().unwrap().map(|r| r.unwrap().0.value().to_string()).collect();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].ends_with("/new"), "{keys:?}");
    }

    #[test]
    fn remembered_request_ids_do_not_depend_on_batching() {
        // p4 comes from a server whose clock is far behind: applied after p3, it is remembered
        // until a later proposal's window passes it, in whatever batch it arrives.
        let proposals = || {
            vec![
                proposal("p1", 1_000, register("a", "x", "e1")),
                proposal("p2", 1_005 + REQUEST_MEMORY_MS, register("b", "x", "e2")),
                proposal("p3", 1_010 + REQUEST_MEMORY_MS, register("c", "x", "e3")),
                proposal("p4", 1_002, register("d", "x", "e4")),
            ]
        };
        let remembered = |batches: Vec<Vec<Proposal>>| {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), 1).unwrap();
            let mut after_each = Vec::new();
            for batch in batches {
                apply_all(&db, batch);
                let txn = db.begin_read().unwrap();
                let requests = txn.open_table(REQUESTS).unwrap();
                after_each.push(requests.iter().unwrap().map(|r| r.unwrap().0.value().to_string()).collect::<Vec<_>>());
            }
            after_each
        };
        let one_by_one = remembered(proposals().into_iter().map(|p| vec![p]).collect());
        let mut pairs = proposals();
        let second = pairs.split_off(2);
        let in_pairs = remembered(vec![pairs, second]);
        assert_eq!(in_pairs, vec![one_by_one[1].clone(), one_by_one[3].clone()]);
        assert_eq!(one_by_one[3].len(), 3, "p1 forgotten once p2's time passed its window: {one_by_one:?}");
    }

    #[test]
    fn stop_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let eval = |id: &str| Evaluation::new(id.into(), "web", 50, EvalTrigger::JobDeregister, Timestamp(5));
        let stop = |id: &str, purge| Command::DeregisterJob {
            job_name: "web".into(),
            purge,
            eval: eval(id),
            now: Timestamp(5),
        };
        let got = apply_all(
            &db,
            vec![
                proposal("r0", 1, stop("e0", false)),
                proposal("r1", 2, register("web", "a", "e1")),
                proposal("r2", 3, stop("e2", false)),
            ],
        );
        assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
        assert_eq!(got[2], CommandResponse::JobDeregistered { eval_id: "e2".into() });
        {
            let txn = db.begin_read().unwrap();
            let job = read::job(&txn, "web").unwrap().unwrap();
            assert!(job.stopped);
            assert_eq!(job.status, JobStatus::Dead, "no allocations run, so the stopped job is dead");
        }
        apply_all(&db, vec![proposal("r3", 4, stop("e3", true))]);
        let txn = db.begin_read().unwrap();
        assert!(read::job(&txn, "web").unwrap().is_none());
        assert!(read::job_versions(&txn, "web").unwrap().is_empty());
    }

    fn node(id: &str, cpu: u32) -> helios_core::Node {
        helios_core::Node {
            id: id.into(),
            hostname: id.into(),
            rpc_addr: "127.0.0.1:1".into(),
            attributes: Default::default(),
            meta: Default::default(),
            drivers: vec!["exec".into()],
            resources: Resources { cpu_mhz: cpu, memory_mb: 1000 },
            status: NodeStatus::Ready,
            eligibility: NodeEligibility::Eligible,
            drain: false,
            registered_at: Timestamp(1),
            status_updated_at: Timestamp(1),
            secret_id: "s".into(),
        }
    }

    fn alloc(id: &str, job: &str, name: &str, node: &str, cpu: u32) -> Allocation {
        Allocation {
            id: id.into(),
            name: name.into(),
            eval_id: "e".into(),
            job_name: job.into(),
            job_version: 0,
            task_group: "g".into(),
            group_fingerprint: 0,
            node_id: node.into(),
            resources: Resources { cpu_mhz: cpu, memory_mb: 10 },
            host_ports: vec![],
            desired_status: AllocDesiredStatus::Run,
            desired_description: String::new(),
            client_status: AllocClientStatus::Pending,
            client_description: String::new(),
            task_states: Default::default(),
            created_at: Timestamp(1),
            modified_at: Timestamp(1),
        }
    }

    fn plan(job: &str, placements: Vec<Allocation>) -> Command {
        let plan = Plan {
            eval_id: "e".into(),
            job_name: job.into(),
            planned_at_index: 0,
            placements,
            stops: vec![],
            in_place: vec![],
            job_version: 0,
            failed_placements: Default::default(),
        };
        let mut eval = Evaluation::new("e".into(), job, 50, EvalTrigger::JobRegister, Timestamp(2));
        eval.status = helios_core::EvalStatus::Complete;
        Command::ApplyPlan { plan, eval }
    }

    #[test]
    fn the_plan_applier_refuses_over_commits_and_double_placements() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let register = Command::RegisterNode { node: node("n", 1000), evals: vec![] };
        apply_all(&db, vec![proposal("r0", 1, register)]);
        let got = apply_all(
            &db,
            vec![
                proposal("r1", 2, plan("a", vec![alloc("x1", "a", "a.g[0]", "n", 600)])),
                // Would put 1200 MHz on a 1000 MHz node.
                proposal("r2", 3, plan("b", vec![alloc("x2", "b", "b.g[0]", "n", 600)])),
                // The same slot of job a again.
                proposal("r3", 4, plan("a", vec![alloc("x3", "a", "a.g[0]", "n", 100)])),
                // Another job whose allocation happens to have the same name is fine.
                proposal("r4", 5, plan("a.g", vec![alloc("x4", "a.g", "a.g[0]", "n", 100)])),
                // A node nobody registered.
                proposal("r5", 6, plan("c", vec![alloc("x5", "c", "c.g[0]", "ghost", 1)])),
            ],
        );
        assert_eq!(got[0], CommandResponse::PlanApplied { placed: 1, stopped: 0 });
        let refused = |r: &CommandResponse, why: &str| matches!(r, CommandResponse::Rejected(x) if x.kind == RejectionKind::FailedPrecondition && x.message.contains(why));
        assert!(refused(&got[1], "no room left"), "{:?}", got[1]);
        assert!(refused(&got[2], "already filled"), "{:?}", got[2]);
        assert_eq!(got[3], CommandResponse::PlanApplied { placed: 1, stopped: 0 });
        assert!(refused(&got[4], "is gone"), "{:?}", got[4]);
        let txn = db.begin_read().unwrap();
        let ids: Vec<String> = read::allocations(&txn, None, None).unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["x1", "x4"]);
    }

    #[test]
    fn a_fixed_host_port_is_held_once_per_node_until_its_allocation_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        apply_all(&db, vec![proposal("r0", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
        let with_port = |id: &str, job: &str, port: u16| Allocation {
            host_ports: vec![port],
            ..alloc(id, job, &format!("{job}.g[0]"), "n", 1)
        };
        let got = apply_all(
            &db,
            vec![
                proposal("r1", 2, plan("a", vec![with_port("a1", "a", 8080)])),
                // Another job on the same node and port.
                proposal("r2", 3, plan("b", vec![with_port("b1", "b", 8080)])),
                // Two placements of one plan on the same port.
                proposal(
                    "r3",
                    4,
                    plan(
                        "c",
                        vec![
                            with_port("c1", "c", 9090),
                            Allocation { name: "c.g[1]".into(), ..with_port("c2", "c", 9090) },
                        ],
                    ),
                ),
                proposal("r4", 5, plan("d", vec![with_port("d1", "d", 9090)])),
            ],
        );
        let refused = |r: &CommandResponse| matches!(r, CommandResponse::Rejected(x) if x.message.contains("is taken"));
        assert_eq!(got[0], CommandResponse::PlanApplied { placed: 1, stopped: 0 });
        assert!(refused(&got[1]) && refused(&got[2]), "{got:?}");
        assert_eq!(got[3], CommandResponse::PlanApplied { placed: 1, stopped: 0 });
        assert_indexes_agree_with_a_scan(&db);

        // a1 fails: 8080 is free again.
        let fail_a1 = report_on_n(report("a1", AllocClientStatus::Failed), 10);
        apply_all(&db, vec![proposal("r5", 6, fail_a1)]);
        let got = apply_all(&db, vec![proposal("r6", 7, plan("b", vec![with_port("b2", "b", 8080)]))]);
        assert_eq!(got[0], CommandResponse::PlanApplied { placed: 1, stopped: 0 });
        assert_indexes_agree_with_a_scan(&db);
        {
            let txn = db.begin_read().unwrap();
            assert_eq!(read::host_ports(&txn).unwrap()[&("n".to_string(), 8080)], "b2");
        }

        // b2 runs, and is asked to stop: its container keeps the port until it has exited.
        let running = report_on_n(report("b2", AllocClientStatus::Running), 11);
        apply_all(&db, vec![proposal("r7", 8, running)]);
        let Command::ApplyPlan { plan: mut replace, eval } =
            plan("b", vec![Allocation { name: "b.g[1]".into(), ..with_port("b3", "b", 8080) }])
        else {
            unreachable!()
        };
        replace.stops.push(helios_core::plan::AllocStop {
            alloc_id: "b2".into(),
            desired_status: AllocDesiredStatus::Stop,
            client_status: None,
            description: "replaced".into(),
        });
        let got = apply_all(&db, vec![proposal("r8", 9, Command::ApplyPlan { plan: replace, eval })]);
        assert!(refused(&got[0]), "the port is still in use: {got:?}");
        let stop_b2 = {
            let Command::ApplyPlan { mut plan, eval } = self::plan("b", vec![]) else { unreachable!() };
            plan.stops.push(helios_core::plan::AllocStop {
                alloc_id: "b2".into(),
                desired_status: AllocDesiredStatus::Stop,
                client_status: None,
                description: "replaced".into(),
            });
            Command::ApplyPlan { plan, eval }
        };
        apply_all(&db, vec![proposal("r10", 11, stop_b2)]);
        assert_indexes_agree_with_a_scan(&db);
        {
            let txn = db.begin_read().unwrap();
            assert_eq!(read::host_ports(&txn).unwrap()[&("n".to_string(), 8080)], "b2", "held while it stops");
        }
        // A job blocked meanwhile (on that port, say): the stop freed cpu and memory already, so
        // only the port's release can wake it.
        let Command::ApplyPlan { mut plan, mut eval } = plan("z", vec![]) else { unreachable!() };
        plan.planned_at_index = u64::MAX; // planned on the latest state
        eval.id = "ez".into();
        eval.status = helios_core::EvalStatus::Blocked;
        apply_all(&db, vec![proposal("r9", 10, Command::ApplyPlan { plan, eval })]);
        let status_of_ez = |db: &redb::Database| {
            let txn = db.begin_read().unwrap();
            read::evaluations_for_job(&txn, "z").unwrap().into_iter().find(|e| e.id == "ez").expect("ez").status
        };
        assert_eq!(status_of_ez(&db), helios_core::EvalStatus::Blocked);
        let exited = report_on_n(report("b2", AllocClientStatus::Complete), 12);
        apply_all(&db, vec![proposal("r11", 12, exited)]);
        assert_indexes_agree_with_a_scan(&db);
        let txn = db.begin_read().unwrap();
        assert!(!read::host_ports(&txn).unwrap().contains_key(&("n".to_string(), 8080)), "freed once it exited");
        drop(txn);
        assert_eq!(status_of_ez(&db), helios_core::EvalStatus::Pending, "planned again once the port is free");
    }

    /// The indexes are kept incrementally; they must always equal what a full scan computes.
    fn assert_indexes_agree_with_a_scan(db: &redb::Database) {
        let txn = db.begin_read().unwrap();
        let all = read::allocations(&txn, None, None).unwrap();
        let mut usage: HashMap<String, Resources> = HashMap::new();
        let mut counts: HashMap<String, crate::store::tables::AllocCounts> = HashMap::new();
        for a in &all {
            if reserves_room(a) {
                let r = usage.entry(a.node_id.clone()).or_insert(Resources::ZERO);
                *r = r.plus(a.resources);
            }
            let c = counts.entry(a.job_name.clone()).or_default();
            c.running += counted(a).running;
            c.live += counted(a).live;
            let by_job = read::allocations(&txn, Some(&a.job_name), None).unwrap();
            let by_node = read::allocations(&txn, None, Some(&a.node_id)).unwrap();
            assert!(by_job.contains(a) && by_node.contains(a), "{} missing from an index", a.id);
        }
        let mut ports = read::HostPorts::new();
        for a in all.iter().filter(|a| a.holds_host_ports()) {
            for port in &a.host_ports {
                assert!(ports.insert((a.node_id.clone(), *port), a.id.clone()).is_none(), "port {port} held twice");
            }
        }
        assert_eq!(read::host_ports(&txn).unwrap(), ports, "node ports");
        let stored = read::node_usage(&txn).unwrap();
        for (node, used) in &usage {
            assert_eq!(stored.get(node), Some(used), "usage of {node}");
        }
        for (node, used) in &stored {
            assert_eq!(usage.get(node).copied().unwrap_or(Resources::ZERO), *used, "usage of {node}");
        }
        for (job, c) in &counts {
            assert_eq!(read::alloc_counts(&txn, job).unwrap(), *c, "counts of {job}");
        }
    }

    /// Node n's agent reports `update` at time `now`.
    fn report_on_n(update: helios_core::AllocUpdate, now: u64) -> Command {
        Command::ReportAllocations {
            node_id: "n".into(),
            secret: "s".into(),
            updates: vec![update],
            now: Timestamp(now),
            evals: vec![],
        }
    }

    fn report(id: &str, status: AllocClientStatus) -> helios_core::AllocUpdate {
        helios_core::AllocUpdate {
            alloc_id: id.into(),
            client_status: status,
            client_description: String::new(),
            task_states: Default::default(),
        }
    }

    #[test]
    fn indexes_follow_placements_reports_stops_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        for n in ["n1", "n2"] {
            apply_all(&db, vec![proposal(n, 1, Command::RegisterNode { node: node(n, 1000), evals: vec![] })]);
        }
        apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
        apply_all(
            &db,
            vec![
                proposal("p1", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n1", 300)])),
                proposal("p2", 3, plan("a", vec![alloc("a2", "a", "a.g[1]", "n2", 200)])),
                proposal("p3", 4, plan("b", vec![alloc("b1", "b", "b.g[0]", "n1", 100)])),
            ],
        );
        assert_indexes_agree_with_a_scan(&db);
        let updates = |node: &str, list: Vec<helios_core::AllocUpdate>| Command::ReportAllocations {
            node_id: node.into(),
            secret: "s".into(),
            updates: list,
            now: Timestamp(5),
            evals: vec![],
        };
        apply_all(
            &db,
            vec![
                proposal("u1", 5, updates("n1", vec![report("a1", AllocClientStatus::Running)])),
                proposal("u2", 6, updates("n2", vec![report("a2", AllocClientStatus::Failed)])),
            ],
        );
        assert_indexes_agree_with_a_scan(&db);
        {
            let txn = db.begin_read().unwrap();
            assert_eq!(read::job(&txn, "a").unwrap().unwrap().status, JobStatus::Running);
            assert_eq!(read::node_usage(&txn).unwrap()["n2"], Resources::ZERO, "a failed allocation frees its room");
        }
        let stop = Command::DeregisterJob {
            job_name: "a".into(),
            purge: true,
            eval: Evaluation::new("es".into(), "a", 50, EvalTrigger::JobDeregister, Timestamp(7)),
            now: Timestamp(7),
        };
        apply_all(&db, vec![proposal("s", 7, stop)]);
        assert_indexes_agree_with_a_scan(&db);
        {
            let txn = db.begin_read().unwrap();
            assert_eq!(read::node_usage(&txn).unwrap()["n1"].cpu_mhz, 100, "only b1 is left on n1");
        }
        // A report with the wrong secret changes nothing.
        let mut forged = updates("n1", vec![report("b1", AllocClientStatus::Failed)]);
        if let Command::ReportAllocations { secret, .. } = &mut forged {
            *secret = "guess".into();
        }
        let got = apply_all(&db, vec![proposal("f", 8, forged)]);
        assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
        // The node of b1 goes down: the plan marks it lost, which frees its room.
        let mut lose = plan("b", vec![]);
        if let Command::ApplyPlan { plan, .. } = &mut lose {
            plan.stops.push(helios_core::plan::AllocStop {
                alloc_id: "b1".into(),
                desired_status: AllocDesiredStatus::Stop,
                client_status: Some(AllocClientStatus::Lost),
                description: "node down".into(),
            });
        }
        apply_all(&db, vec![proposal("l", 9, lose)]);
        assert_indexes_agree_with_a_scan(&db);
        let txn = db.begin_read().unwrap();
        assert_eq!(read::node_usage(&txn).unwrap()["n1"], Resources::ZERO);
        assert_eq!(read::alloc_counts(&txn, "b").unwrap(), crate::store::tables::AllocCounts { running: 0, live: 0 });
    }

    #[test]
    fn indexes_are_rebuilt_for_data_that_predates_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
        apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
        apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 300)]))]);
        // What an older server left behind: the tables without their indexes or the marker.
        let txn = db.begin_write().unwrap();
        for def in [ALLOCS_BY_JOB, ALLOCS_BY_NODE, EVALS_BY_JOB, NODE_USAGE, JOB_ALLOC_COUNTS] {
            txn.open_table(def).unwrap().retain(|_, _| false).unwrap();
        }
        txn.open_table(crate::store::tables::SM_META).unwrap().remove(crate::store::tables::SM_INDEXES).unwrap();
        txn.commit().unwrap();
        drop(db);

        let db = open(dir.path(), 1).unwrap();
        assert_indexes_agree_with_a_scan(&db);
        let txn = db.begin_read().unwrap();
        assert_eq!(read::node_usage(&txn).unwrap()["n"].cpu_mhz, 300);
        assert_eq!(read::evaluations_for_job(&txn, "a").unwrap().len(), 2, "the job's and the plan's");
    }

    #[test]
    fn a_node_id_keeps_its_secret_until_purged_and_reports_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
        apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
        apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 300)]))]);
        let claim = |at: u64| {
            let mut other = node("n", 1000);
            other.secret_id = "another".into();
            proposal(&format!("c{at}"), at, Command::RegisterNode { node: other, evals: vec![] })
        };
        let refused = |r: &CommandResponse| matches!(r, CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition);
        // Ready, then down: the id is not another agent's to take, and a ready node is not purged.
        assert!(refused(&apply_all(&db, vec![claim(4)])[0]));
        let purge = |at: u64| {
            proposal(
                &format!("x{at}"),
                at,
                Command::PurgeNode { node_id: "n".into(), now: Timestamp(at), evals: vec![] },
            )
        };
        assert!(refused(&apply_all(&db, vec![purge(5)])[0]));
        let down =
            Command::SetNodeStatus { node_id: "n".into(), status: NodeStatus::Down, now: Timestamp(6), evals: vec![] };
        apply_all(&db, vec![proposal("d", 6, down)]);
        assert!(refused(&apply_all(&db, vec![claim(7)])[0]));
        assert_eq!(apply_all(&db, vec![purge(8)])[0], CommandResponse::NodePurged);
        assert_indexes_agree_with_a_scan(&db);
        {
            let txn = db.begin_read().unwrap();
            assert!(read::node(&txn, "n").unwrap().is_none());
            let a1 = read::allocation(&txn, "a1").unwrap().unwrap();
            assert_eq!((a1.client_status, a1.desired_status), (AllocClientStatus::Lost, AllocDesiredStatus::Stop));
        }
        assert_eq!(apply_all(&db, vec![claim(9)])[0], CommandResponse::NodeRegistered, "the freed id is taken");
    }

    #[test]
    fn acls_bootstrap_once_unless_reset_and_tokens_need_their_policies() {
        use helios_core::acl::{AclPolicy, AclToken, Level, PolicyRules, TokenType};
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let token = |id: &str, policies: &[&str]| AclToken {
            accessor_id: id.into(),
            secret_hash: format!("hash-{id}"),
            name: id.into(),
            token_type: if policies.is_empty() { TokenType::Management } else { TokenType::Client },
            policies: policies.iter().map(|p| p.to_string()).collect(),
            created_at: Timestamp(1),
            expires_at: None,
        };
        let boot = |id: &str, reset: Option<u64>| Command::AclBootstrap { token: token(id, &[]), reset_index: reset };
        assert_eq!(apply_all(&db, vec![proposal("b1", 1, boot("root", None))])[0], CommandResponse::AclChanged);
        let again = apply_all(&db, vec![proposal("b2", 2, boot("root2", None))]);
        assert!(matches!(&again[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
        let index = {
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(CLUSTER).unwrap();
            let bytes = table.get(crate::store::tables::ACL_BOOTSTRAP_INDEX).unwrap().unwrap();
            decode::<u64>(bytes.value()).unwrap()
        };
        let wrong = apply_all(&db, vec![proposal("b3", 3, boot("root3", Some(index + 7)))]);
        assert!(matches!(&wrong[0], CommandResponse::Rejected(_)), "a wrong reset index");
        assert_eq!(apply_all(&db, vec![proposal("b4", 4, boot("root4", Some(index)))])[0], CommandResponse::AclChanged);

        let missing =
            apply_all(&db, vec![proposal("t1", 5, Command::UpsertAclToken { token: token("ro", &["readonly"]) })]);
        assert!(matches!(&missing[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
        let policy = AclPolicy {
            name: "readonly".into(),
            description: String::new(),
            rules: PolicyRules { job_level: Some(Level::Read), ..Default::default() },
            source: String::new(),
            modified_at: Timestamp(6),
        };
        apply_all(&db, vec![proposal("p", 6, Command::UpsertAclPolicy { policy })]);
        apply_all(&db, vec![proposal("t2", 7, Command::UpsertAclToken { token: token("ro", &["readonly"]) })]);
        {
            let txn = db.begin_read().unwrap();
            assert_eq!(read::acl_token_by_secret(&txn, "hash-ro").unwrap().unwrap().name, "ro");
        }
        apply_all(&db, vec![proposal("d", 8, Command::DeleteAclToken { accessor_id: "ro".into() })]);
        let txn = db.begin_read().unwrap();
        assert!(read::acl_token_by_secret(&txn, "hash-ro").unwrap().is_none(), "its secret no longer finds it");
        assert_eq!(read::acl_tokens(&txn).unwrap().len(), 2, "the two bootstrap tokens");
    }
}
