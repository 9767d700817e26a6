//! `AgentService`: client agents register and heartbeat.

use helios_api::convert::node_from_pb;
use helios_api::pb;
use helios_api::pb::agent_service_server::AgentService;
use helios_core::{Command, CommandResponse};
use tonic::{Request, Response, Status};

use super::errors::{cluster_status, invalid, rejection_status, require_name};
use crate::clock;
use crate::cluster::{node_evaluations, Cluster};

pub struct Agents {
    pub cluster: Cluster,
}

fn ttl_ms(cluster: &Cluster) -> u64 {
    u64::try_from(cluster.heartbeat_ttl.as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl AgentService for Agents {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let node = req.node.ok_or_else(|| invalid("node", "must be set"))?;
        let node = node_from_pb(node, req.secret, clock::now()).map_err(|e| helios_api::invalid_argument(&e))?;
        let id = node.id.clone();
        let jobs = self
            .cluster
            .read(move |txn| crate::store::read::jobs_affected_by_node(txn, &id))
            .await
            .map_err(cluster_status)?;
        let evals = node_evaluations(jobs, &node.id, helios_core::EvalTrigger::NodeUpdate);
        let (_, response) = self.cluster.write(Command::RegisterNode { node, evals }).await.map_err(cluster_status)?;
        match response {
            CommandResponse::NodeRegistered => {
                Ok(Response::new(pb::RegisterResponse { heartbeat_ttl_ms: ttl_ms(&self.cluster) }))
            }
            CommandResponse::Rejected(r) => Err(rejection_status(r)),
            other => Err(Status::internal(format!("unexpected answer to a registration: {other:?}"))),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        require_name("node_id", &req.node_id)?;
        let ttl = self.cluster.heartbeat(req.node_id, req.secret).await.map_err(cluster_status)?;
        let heartbeat_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::HeartbeatResponse { heartbeat_ttl_ms }))
    }
}
