//! `NodeService`: the client nodes the cluster knows.

use super::blocking::Blocking;
use super::pages;
use helios_api::convert::node_to_pb;
use helios_api::pb;
use helios_api::pb::node_service_server::NodeService;
use helios_core::acl::Capability;
use helios_core::events::Topic;
use helios_core::page::Order;
use tonic::{Request, Response, Status};

use super::auth::authorize;

use helios_core::command::answer::{NodePurged, NodeStatusSet};
use helios_core::{Command, EvalTrigger, NodeEligibility};

use super::errors::{cluster_status, require_name};
use super::retries::{self, write_once};
use crate::clock;
use crate::cluster::node_evaluations;
use crate::cluster::{Cluster, WriteConditions};
use crate::store::read;

pub struct Nodes {
    pub cluster: Cluster,
}

impl Nodes {
    /// Sets a node's drain flag (`None`: unchanged) and eligibility, with evaluations for the
    /// jobs running there.
    async fn set_scheduling(
        &self,
        conditions: WriteConditions,
        id: &str,
        drain: Option<bool>,
        eligibility: NodeEligibility,
    ) -> Result<u64, Status> {
        require_name("id", id)?;
        let command = async {
            let lookup = id.to_string();
            let (node, jobs) = self
                .cluster
                .read(move |txn| Ok((read::node(txn, &lookup)?, read::jobs_affected_by_node(txn, &lookup)?)))
                .await
                .map_err(cluster_status)?;
            let node = node.ok_or_else(|| Status::not_found(format!("node {id:?} not found")))?;
            let evals = node_evaluations(jobs, id, EvalTrigger::NodeDrain);
            Ok(Command::SetNodeScheduling {
                node_id: id.to_string(),
                drain: drain.unwrap_or(node.drain),
                eligibility,
                now: clock::now(),
                evals,
            })
        };
        let (index, NodeStatusSet) = write_once(&self.cluster, conditions, command).await?;
        Ok(index)
    }
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        authorize(&self.cluster, &request, Capability::NodeRead).await?;
        let blocking = Blocking::of(&request)?;
        let page = pages::requested("nodes", request.get_ref().page_size, &request.get_ref().page_token)?;
        let index = blocking.wait(&self.cluster, &[Topic::Node]).await.map_err(cluster_status)?;
        let nodes = self.cluster.read_local(read::nodes).await.map_err(cluster_status)?;
        let (nodes, next_page_token) = page.page(
            nodes.iter().map(node_to_pb).collect(),
            Order::Ascending,
            |n| n.id.clone(),
            helios_api::encoded_len,
        );
        Ok(Response::new(pb::ListNodesResponse { nodes, index, next_page_token }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::NodeWrite).await?;
        let conditions = retries::conditions("DrainNode", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        let eligibility = if req.enable { NodeEligibility::Ineligible } else { NodeEligibility::Eligible };
        let index = self.set_scheduling(conditions, &req.id, Some(req.enable), eligibility).await?;
        Ok(Response::new(pb::DrainNodeResponse { index }))
    }

    async fn set_eligibility(
        &self,
        request: Request<pb::SetEligibilityRequest>,
    ) -> Result<Response<pb::SetEligibilityResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::NodeWrite).await?;
        let conditions = retries::conditions("SetEligibility", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        let eligibility = if req.eligible { NodeEligibility::Eligible } else { NodeEligibility::Ineligible };
        let index = self.set_scheduling(conditions, &req.id, None, eligibility).await?;
        Ok(Response::new(pb::SetEligibilityResponse { index }))
    }

    async fn purge_node(
        &self,
        request: Request<pb::PurgeNodeRequest>,
    ) -> Result<Response<pb::PurgeNodeResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::NodeWrite).await?;
        let conditions = retries::conditions("PurgeNode", caller.as_ref(), request.get_ref())?;
        let id = request.into_inner().id;
        require_name("id", &id)?;
        let command = async {
            let lookup = id.clone();
            let jobs = self
                .cluster
                .read(move |txn| read::jobs_affected_by_node(txn, &lookup))
                .await
                .map_err(cluster_status)?;
            let evals = node_evaluations(jobs, &id, EvalTrigger::NodeUpdate);
            Ok(Command::PurgeNode { node_id: id.clone(), now: clock::now(), evals })
        };
        let (index, NodePurged) = write_once(&self.cluster, conditions, command).await?;
        Ok(Response::new(pb::PurgeNodeResponse { index }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        authorize(&self.cluster, &request, Capability::NodeRead).await?;
        let blocking = Blocking::of(&request)?;
        let id = request.into_inner().id;
        require_name("id", &id)?;
        let lookup = id.clone();
        let index = blocking.wait(&self.cluster, &[Topic::Node]).await.map_err(cluster_status)?;
        let node = self.cluster.read_local(move |txn| read::node(txn, &lookup)).await.map_err(cluster_status)?;
        let node = node.ok_or_else(|| Status::not_found(format!("node {id:?} not found")))?;
        Ok(Response::new(pb::GetNodeResponse { node: Some(node_to_pb(&node)), index }))
    }
}
