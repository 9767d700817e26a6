//! `NodeService`: the client nodes the cluster knows.

use helios_api::convert::node_to_pb;
use helios_api::pb;
use helios_api::pb::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use super::errors::{cluster_status, require_name};
use crate::cluster::Cluster;
use crate::store::read;

pub struct Nodes {
    pub cluster: Cluster,
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.cluster.read(read::nodes).await.map_err(cluster_status)?;
        Ok(Response::new(pb::ListNodesResponse { nodes: nodes.iter().map(node_to_pb).collect() }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        let id = request.into_inner().id;
        require_name("id", &id)?;
        let lookup = id.clone();
        let node = self.cluster.read(move |txn| read::node(txn, &lookup)).await.map_err(cluster_status)?;
        let node = node.ok_or_else(|| Status::not_found(format!("node {id:?} not found")))?;
        Ok(Response::new(pb::GetNodeResponse { node: Some(node_to_pb(&node)) }))
    }
}
