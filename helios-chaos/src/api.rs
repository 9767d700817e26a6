//! gRPC clients for the servers under test, one lazily connected channel per server, every call
//! bounded by a deadline (a paused or cut-off server must not hang a worker).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use helios_api::pages::every_page_at_one_index;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_api::pb::node_service_client::NodeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// How long one call may take before the caller treats it as failed (outcome unknown).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Clone)]
pub struct Servers {
    channels: BTreeMap<u64, Channel>,
}

impl Servers {
    /// `urls`: server id -> `http://host:port`.
    pub fn new(urls: &BTreeMap<u64, String>) -> Result<Servers> {
        let mut channels = BTreeMap::new();
        for (&id, url) in urls {
            let endpoint = Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(1))
                .timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2));
            channels.insert(id, endpoint.connect_lazy());
        }
        Ok(Servers { channels })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.channels.keys().copied().collect()
    }

    pub fn jobs(&self, id: u64) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel(id)).max_decoding_message_size(256 * 1024 * 1024)
    }

    pub fn nodes(&self, id: u64) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel(id))
    }

    pub fn cluster(&self, id: u64) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel(id))
    }

    pub fn allocations(&self, id: u64) -> pb::allocation_service_client::AllocationServiceClient<Channel> {
        pb::allocation_service_client::AllocationServiceClient::new(self.channel(id))
            .max_decoding_message_size(256 * 1024 * 1024)
    }

    fn channel(&self, id: u64) -> Channel {
        self.channels[&id].clone()
    }

    /// `id`'s own term, as it reports it.
    pub async fn term_of(&self, id: u64) -> Option<u64> {
        let mut client = self.cluster(id);
        let call = client.list_members(pb::ListMembersRequest { local: true });
        let reply = tokio::time::timeout(Duration::from_millis(300), call).await.ok()?.ok()?.into_inner();
        reply.members.iter().find(|m| m.id == id).map(|m| m.term)
    }

    /// The leader as `id`'s server sees it, with the term.
    pub async fn leader_seen_by(&self, id: u64) -> Option<(u64, u64)> {
        let mut client = self.cluster(id);
        let call = client.list_members(pb::ListMembersRequest { local: true });
        // A paused or cut-off server must not stall whoever polls for the leader.
        let reply = tokio::time::timeout(Duration::from_millis(300), call).await.ok()?.ok()?.into_inner();
        let leader = reply.leader_id?;
        let term = reply.members.iter().find(|m| m.id == id).map(|m| m.term)?;
        Some((leader, term))
    }

    /// The leader that a majority of all servers name (asking only `among`), if it is one of
    /// `among`: a cut-off old leader that still thinks it leads is outvoted.
    pub async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let views = futures::future::join_all(among.iter().map(|&id| self.leader_seen_by(id))).await;
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (leader, _) in views.into_iter().flatten() {
            *votes.entry(leader).or_default() += 1;
        }
        let (leader, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        (n * 2 > self.channels.len() && among.contains(&leader)).then_some(leader)
    }

    pub async fn digest(&self, id: u64) -> Result<pb::StateDigestResponse> {
        Ok(self.cluster(id).state_digest(pb::StateDigestRequest {}).await?.into_inner())
    }

    /// Every allocation and job, as one server reads them.
    pub async fn state(&self, id: u64) -> Result<(Vec<pb::Allocation>, Vec<pb::JobSummary>)> {
        let allocations = self.allocations(id);
        let allocs = every_page_at_one_index(pb::ListAllocationsRequest::default(), |r| {
            let mut allocations = allocations.clone();
            async move { allocations.list_allocations(r).await }
        })
        .await?;
        let jobs = self.jobs(id);
        let jobs = every_page_at_one_index(pb::ListJobsRequest::default(), |r| {
            let mut jobs = jobs.clone();
            async move { jobs.list_jobs(r).await }
        })
        .await?;
        Ok((allocs, jobs))
    }

    pub async fn nodes_of(&self, id: u64) -> Result<Vec<pb::Node>> {
        let nodes = self.nodes(id);
        Ok(every_page_at_one_index(pb::ListNodesRequest::default(), |r| {
            let mut nodes = nodes.clone();
            async move { nodes.list_nodes(r).await }
        })
        .await?)
    }

    pub async fn versions(&self, id: u64, job: &str) -> Result<Vec<pb::Job>> {
        let jobs = self.jobs(id);
        let request = pb::GetJobVersionsRequest { name: job.to_string(), ..Default::default() };
        let reply = every_page_at_one_index(request, |r| {
            let mut jobs = jobs.clone();
            async move { jobs.get_job_versions(r).await }
        })
        .await;
        match reply {
            Ok(versions) => Ok(versions),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(Vec::new()),
            Err(status) => Err(anyhow!("GetJobVersions {job}: {status}")),
        }
    }
}
