//! `AgentService`: client agents register and heartbeat.

use std::collections::VecDeque;

use helios_api::convert::node_from_pb;
use helios_api::pb;
use helios_api::pb::agent_service_server::AgentService;
use helios_core::command::answer::{AllocationsUpdated, NodeRegistered};
use helios_core::{Command, RejectionKind};
use tonic::{Request, Response, Status};

use super::errors::{cluster_status, invalid, require_name};
use crate::clock;

use super::assigned::SentAllocations;
use crate::cluster::{node_evaluations, Cluster, ClusterError};
use crate::signals::Changes;
use crate::store::read;

pub struct Agents {
    pub cluster: Cluster,
}

fn ttl_ms(cluster: &Cluster) -> u64 {
    u64::try_from(cluster.heartbeat_ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Every server's address, as the membership holds it: agents learn the cluster from it. An
/// unspecified address (`0.0.0.0:4646`, a `--dev` server's) names no server another machine
/// could dial, so it is left out.
fn server_addrs(cluster: &Cluster) -> Vec<String> {
    let dialable = |addr: &String| !addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified());
    cluster.membership().0.into_values().filter(dialable).collect()
}

impl Agents {
    /// The node, if `secret` is its secret. A current read: the agent may have registered through
    /// another server a moment ago.
    async fn authenticate(&self, node_id: &str, secret: &str) -> Result<helios_core::Node, Status> {
        require_name("node_id", node_id)?;
        let id = node_id.to_string();
        let node = self.cluster.read(move |txn| read::node(txn, &id)).await.map_err(cluster_status)?;
        let node = node.ok_or_else(|| Status::not_found(format!("node {node_id:?} is not registered")))?;
        if !node.secret_matches(secret) {
            return Err(Status::permission_denied(format!("node {node_id:?} is registered by another agent")));
        }
        Ok(node)
    }
}

#[tonic::async_trait]
impl AgentService for Agents {
    type WatchAllocationsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AssignedAllocations, Status>> + Send>>;

    async fn watch_allocations(
        &self,
        request: Request<pb::WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        let req = request.into_inner();
        self.authenticate(&req.node_id, &req.secret).await?;
        let cluster = self.cluster.clone();
        // Subscribe before the first read, so no change between the two is missed.
        let signal = cluster.signals.subscribe(&req.node_id);
        // Send the whole set, then what changed each time the state machine signals a change.
        // The stream's state: what was sent, pages not sent yet, and what changed since (None:
        // wait for a signal).
        let stream = futures::stream::unfold(
            (
                cluster,
                req.node_id,
                Some(SentAllocations::new(req.paged)),
                VecDeque::new(),
                signal,
                Some(Changes::Everything),
            ),
            |(cluster, node_id, sent, mut pages, mut signal, mut changes)| async move {
                let mut sent = sent?; // None: the stream failed and has ended
                loop {
                    if let Some(page) = pages.pop_front() {
                        return Some((Ok(page), (cluster, node_id, Some(sent), pages, signal, changes)));
                    }
                    let Some(changed) = changes.take() else {
                        match signal.changed().await {
                            Some(c) => changes = Some(c),
                            None => return None, // the server is stopping: the agent resumes elsewhere
                        }
                        continue;
                    };
                    let id = node_id.clone();
                    // The whole set is a current read: from a lagging server it could miss an
                    // allocation, and the agent would stop that allocation's tasks. Changes
                    // after it come from this server's own, ever newer, state.
                    let first = !sent.started();
                    let query = move |txn: &redb::ReadTransaction| {
                        let messages = sent.next_messages(txn, &id, &changed)?;
                        Ok((sent, messages))
                    };
                    let read = if first { cluster.read(query).await } else { cluster.read_local(query).await };
                    match read {
                        Ok((next, messages)) => {
                            sent = next;
                            pages.extend(messages);
                        }
                        Err(e) => return Some((Err(cluster_status(e)), (cluster, node_id, None, pages, signal, None))),
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_allocations(
        &self,
        request: Request<pb::UpdateAllocationsRequest>,
    ) -> Result<Response<pb::UpdateAllocationsResponse>, Status> {
        let req = request.into_inner();
        // The secret is checked by the state machine when the update applies.
        require_name("node_id", &req.node_id)?;
        if req.updates.len() > 1000 {
            return Err(invalid("updates", "at most 1000 per call"));
        }
        let mut updates = Vec::with_capacity(req.updates.len());
        let mut problems = Vec::new();
        for (i, u) in req.updates.into_iter().enumerate() {
            match helios_api::convert::agent::alloc_update_from_agent(u, &format!("updates[{i}]")) {
                Ok(u) => updates.push(u),
                Err(e) => problems.extend(e.0),
            }
        }
        if !problems.is_empty() {
            return Err(helios_api::invalid_argument(&helios_core::ValidationErrors(problems)));
        }
        // A failed allocation is the scheduler's to replace.
        let failed: Vec<String> = updates
            .iter()
            .filter(|u| u.client_status == helios_core::AllocClientStatus::Failed)
            .map(|u| u.alloc_id.clone())
            .collect();
        let jobs = if failed.is_empty() {
            Default::default()
        } else {
            self.cluster
                .read(move |txn| {
                    let mut jobs = std::collections::BTreeMap::new();
                    for id in &failed {
                        if let Some(alloc) = read::allocation(txn, id)? {
                            if let Some(job) = read::job(txn, &alloc.job_name)? {
                                jobs.insert(job.name.clone(), job.priority);
                            }
                        }
                    }
                    Ok(jobs)
                })
                .await
                .map_err(cluster_status)?
        };
        let now = clock::now();
        let evals = jobs
            .into_iter()
            .map(|(job, priority)| {
                helios_core::Evaluation::new(
                    clock::new_id(),
                    &job,
                    priority,
                    helios_core::EvalTrigger::AllocFailure,
                    now,
                )
            })
            .collect();
        let command = Command::ReportAllocations { node_id: req.node_id, secret: req.secret, updates, now, evals };
        // The state machine refuses a report whose secret is not the node's: to the agent that
        // is a denial, not a precondition.
        let (_, AllocationsUpdated) = self.cluster.propose(command).await.map_err(|e| match e {
            ClusterError::Rejected(r) if r.kind == RejectionKind::FailedPrecondition => {
                Status::permission_denied(r.message)
            }
            other => cluster_status(other),
        })?;
        Ok(Response::new(pb::UpdateAllocationsResponse {}))
    }

    async fn report_services(
        &self,
        request: Request<pb::ReportServicesRequest>,
    ) -> Result<Response<pb::ReportServicesResponse>, Status> {
        let req = request.into_inner();
        // The secret is checked by the state machine when the report applies.
        require_name("node_id", &req.node_id)?;
        if req.services.len() > 1000 {
            return Err(invalid("services", "at most 1000 allocations per call"));
        }
        let services = helios_api::convert::agent::alloc_services_from_agent(req.services)
            .map_err(|e| helios_api::invalid_argument(&e))?;
        let command = Command::ReportServices { node_id: req.node_id, secret: req.secret, services, now: clock::now() };
        let (_, AllocationsUpdated) = self.cluster.propose(command).await.map_err(|e| match e {
            ClusterError::Rejected(r) if r.kind == RejectionKind::FailedPrecondition => {
                Status::permission_denied(r.message)
            }
            other => cluster_status(other),
        })?;
        Ok(Response::new(pb::ReportServicesResponse {}))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        // Who may introduce a node: with TLS, a client certificate (checked for the service);
        // with ACLs and no TLS, a token granting node write.
        if !self.cluster.channels.has_tls() {
            super::auth::authorize(&self.cluster, &request, helios_core::acl::Capability::NodeWrite).await?;
        }
        let req = request.into_inner();
        let node = req.node.ok_or_else(|| invalid("node", "must be set"))?;
        let node =
            node_from_pb(node, req.secret, clock::now()).map_err(|e| helios_api::errors::invalid_fields("node", &e))?;
        let id = node.id.clone();
        let jobs = self
            .cluster
            .read(move |txn| crate::store::read::jobs_affected_by_node(txn, &id))
            .await
            .map_err(cluster_status)?;
        let evals = node_evaluations(jobs, &node.id, helios_core::EvalTrigger::NodeUpdate);
        let (_, NodeRegistered) =
            self.cluster.propose(Command::RegisterNode { node, evals }).await.map_err(cluster_status)?;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_ttl_ms: ttl_ms(&self.cluster),
            servers: server_addrs(&self.cluster),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        require_name("node_id", &req.node_id)?;
        let ttl = self.cluster.heartbeat(req.node_id, req.secret).await.map_err(cluster_status)?;
        let heartbeat_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::HeartbeatResponse { heartbeat_ttl_ms, servers: server_addrs(&self.cluster) }))
    }
}
