//! `ClusterService`: server membership.

use helios_api::pb;
use helios_api::pb::cluster_service_server::ClusterService;
use helios_core::acl::Capability;
use tonic::{Request, Response, Status};

use super::auth::authorize;

use super::errors::{cluster_status, invalid};
use crate::cluster::Cluster;
use crate::config::parse_host_port;
use crate::store::read;

pub struct Membership {
    pub cluster: Cluster,
}

#[tonic::async_trait]
impl ClusterService for Membership {
    async fn state_digest(
        &self,
        request: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestResponse>, Status> {
        authorize(&self.cluster, &request, Capability::OperatorRead).await?;
        // This server's own state, not a linearizable read: the point is to compare servers.
        let d = self.cluster.read_local(read::state_digest).await.map_err(cluster_status)?;
        Ok(Response::new(pb::StateDigestResponse {
            node_id: self.cluster.node_id,
            applied_index: d.applied_index,
            digest: d.digest,
            entries: d.entries,
        }))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        authorize(&self.cluster, &request, Capability::OperatorWrite).await?;
        let cutoffs = self.cluster.gc.forced(crate::clock::now());
        let c = crate::gc::collect(&self.cluster, cutoffs, crate::gc::Via::AnyServer).await.map_err(cluster_status)?;
        Ok(Response::new(pb::CollectGarbageResponse {
            evaluations: c.evals,
            allocations: c.allocs,
            jobs: c.jobs,
            job_versions: c.versions,
            nodes: c.nodes,
        }))
    }

    type SaveSnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SaveSnapshotResponse, Status>> + Send>>;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        authorize(&self.cluster, &request, Capability::Management).await?;
        // Everything acknowledged before this call is in what follows: the read waits for it.
        let db = self.cluster.db.clone();
        let snapshot = self
            .cluster
            .read(move |_| Ok(crate::raft::state_machine::current_snapshot(&db)?))
            .await
            .map_err(cluster_status)?;
        tracing::info!(last_log_id = ?snapshot.meta.last_log_id, "saving a snapshot for an operator");
        let chunks = crate::raft::snapshot::stream_chunks(
            snapshot.snapshot,
            snapshot.meta,
            helios_core::limits::SNAPSHOT_FILE_CHUNK_BYTES,
            crate::raft::snapshot::CHUNK_TAKEN_WITHIN,
        );
        let stream = futures::stream::unfold(chunks, |mut rx| async move {
            let chunk = match rx.recv().await? {
                Ok(data) => Ok(pb::SaveSnapshotResponse { data }),
                Err(e) => Err(Status::internal(format!("reading the state: {e}"))),
            };
            Some((chunk, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn restore_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::RestoreSnapshotRequest>>,
    ) -> Result<Response<pb::RestoreSnapshotResponse>, Status> {
        authorize(&self.cluster, &request, Capability::Management).await?;
        super::restore::restore(&self.cluster, request.into_inner()).await.map(Response::new)
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        authorize(&self.cluster, &request, Capability::AgentRead).await?;
        let (mut nodes, voters) = self.cluster.membership();
        if request.get_ref().local {
            nodes.retain(|id, _| *id == self.cluster.node_id);
        }
        // Each member reports itself; asking all of them at once keeps a down member from
        // delaying the answer by more than its one-second timeout.
        let statuses = futures::future::join_all(nodes.iter().map(|(id, addr)| {
            let cluster = self.cluster.clone();
            let (id, addr) = (*id, addr.clone());
            async move {
                if id == cluster.node_id {
                    Some(cluster.own_status())
                } else {
                    cluster.peer_status(&addr).await
                }
            }
        }))
        .await;
        let own = self.cluster.own_status();
        let leader_lag = statuses.iter().flatten().find(|s| s.role == "leader").map(|s| s.lag.clone());
        let members = nodes
            .iter()
            .zip(statuses)
            .map(|((id, addr), status)| pb::Member {
                id: *id,
                addr: addr.clone(),
                role: member_role(status.as_ref().map(|s| s.role.as_str())) as i32,
                voter: voters.contains(id),
                term: status.as_ref().map_or(0, |s| s.term),
                last_applied_index: status.as_ref().and_then(|s| s.last_applied_index).unwrap_or(0),
                last_log_index: status.as_ref().and_then(|s| s.last_log_index).unwrap_or(0),
                snapshot_index: status.as_ref().and_then(|s| s.snapshot_index),
                purged_index: status.as_ref().and_then(|s| s.purged_index),
                format: status.as_ref().map_or(0, |s| s.format),
                lag: match (&leader_lag, status.as_ref().map(|s| s.role.as_str())) {
                    (Some(_), Some("leader")) => Some(0),
                    (Some(lag), _) => lag.get(id).copied(),
                    (None, _) => None,
                },
            })
            .collect();
        Ok(Response::new(pb::ListMembersResponse {
            members,
            leader_id: own.leader,
            stored_format: self.cluster.stored_format(),
        }))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::AddServerResponse>, Status> {
        authorize(&self.cluster, &request, Capability::OperatorWrite).await?;
        let req = request.into_inner();
        if req.id == 0 {
            return Err(invalid("id", "must be > 0"));
        }
        parse_host_port(&req.addr).map_err(|problem| invalid("addr", problem))?;
        let index = self.cluster.add_server(req.id, req.addr).await.map_err(cluster_status)?;
        Ok(Response::new(pb::AddServerResponse { index }))
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        authorize(&self.cluster, &request, Capability::OperatorWrite).await?;
        let id = request.into_inner().id;
        let index = self.cluster.remove_server(id).await.map_err(cluster_status)?;
        Ok(Response::new(pb::RemoveServerResponse { index }))
    }
}

/// A member's role as the API names it, from the role its status reports (`None`: it did not
/// answer).
fn member_role(reported: Option<&str>) -> pb::MemberRole {
    match reported {
        // A server shutting down answers, but no longer takes part.
        None | Some("shutdown") => pb::MemberRole::Unreachable,
        Some("leader") => pb::MemberRole::Leader,
        Some("follower") => pb::MemberRole::Follower,
        Some("candidate") => pb::MemberRole::Candidate,
        Some("learner") => pb::MemberRole::Learner,
        Some(_) => pb::MemberRole::Unspecified,
    }
}
