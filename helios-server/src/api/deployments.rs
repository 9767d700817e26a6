//! `DeploymentService`: deployments (`helios_core::deployment`) listed, read, and steered by
//! operators (promote, pause, resume, fail, manual health) through `Command::ActOnDeployment`.

use helios_api::convert::{deployment_to_pb, time_of};
use helios_api::pb;
use helios_api::pb::deployment_service_server::DeploymentService;
use helios_core::acl::Capability;
use helios_core::command::DeploymentChanged;
use helios_core::deployment::{Deployment, DeploymentAction};
use helios_core::page::Order;
use helios_core::{Command, EvalTrigger, Evaluation};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::blocking::Blocking;
use super::errors::{cluster_status, invalid, require_job_name};
use super::ids::{check_id, the_one};
use super::jobs::{find_allocation, job_priority};
use super::pages;
use super::retries::{self, write_once};
use crate::clock::{new_id, now};
use crate::cluster::{Cluster, WriteConditions};
use crate::store::read;
use helios_core::events::Topic;

pub struct Deployments {
    pub cluster: Cluster,
}

impl Deployments {
    async fn find(&self, id: String) -> Result<Deployment, Status> {
        check_id("id", &id)?;
        self.cluster.linearize().await.map_err(cluster_status)?;
        self.find_local(id).await
    }

    /// As `find`, in this server's tables as they are (a caller that has caught up with the
    /// leader already, as a blocking read has).
    async fn find_local(&self, id: String) -> Result<Deployment, Status> {
        check_id("id", &id)?;
        let prefix = id.clone();
        let all = self.cluster.read_local(|txn| read::deployments(txn, None)).await.map_err(cluster_status)?;
        let matches: Vec<Deployment> =
            all.into_iter().filter(|d| d.id.starts_with(&prefix) || d.id.ends_with(&prefix)).collect();
        the_one("deployment", "id", &id, matches)
    }

    /// Full allocation ids for `ids` (each a full id or its first or last characters).
    async fn allocation_ids(&self, field: &str, ids: Vec<String>) -> Result<Vec<String>, Status> {
        let mut out = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            out.push(find_allocation(&self.cluster, &format!("{field}[{i}]"), id).await?.id);
        }
        Ok(out)
    }

    async fn act(&self, conditions: WriteConditions, id: String, action: DeploymentAction) -> Result<Acted, Status> {
        let deployment = self.find(id).await?;
        let command = async {
            let priority = job_priority(&self.cluster, &deployment.job_name).await?;
            let now = now();
            let eval = Evaluation::new(new_id(), &deployment.job_name, priority, EvalTrigger::DeploymentWatcher, now);
            Ok(Command::ActOnDeployment { deployment_id: deployment.id.clone(), action, now, eval })
        };
        let (index, DeploymentChanged { eval_id, reverted_to, .. }) =
            write_once(&self.cluster, conditions, command).await?;
        let (job, version) = (deployment.job_name.clone(), deployment.job_version);
        let after = self
            .cluster
            .read(move |txn| read::deployment_of_version(txn, &job, version))
            .await
            .map_err(cluster_status)?;
        Ok(Acted {
            deployment: after.as_ref().map(deployment_to_pb),
            eval_id: eval_id.unwrap_or_default(),
            reverted_to_version: reverted_to,
            index,
        })
    }
}

/// What an action on a deployment did, for each action's own answer.
struct Acted {
    deployment: Option<pb::Deployment>,
    eval_id: String,
    /// Only a failure (by an operator, or by an unhealthy verdict) reverts.
    reverted_to_version: Option<u64>,
    index: u64,
}

#[tonic::async_trait]
impl DeploymentService for Deployments {
    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ListJobs).await?;
        let blocking = Blocking::of(&request)?;
        let req = request.into_inner();
        let job = req.job_name;
        if let Some(job) = &job {
            require_job_name("job_name", job)?;
        }
        let scope = format!("deployments?job={}", job.as_deref().unwrap_or_default());
        let page = pages::requested(&scope, req.page_size, &req.page_token)?;
        let index = blocking.wait(&self.cluster, &[Topic::Deployment]).await.map_err(cluster_status)?;
        let all =
            self.cluster.read_local(move |txn| read::deployments(txn, job.as_deref())).await.map_err(cluster_status)?;
        // Newest first.
        let (deployments, next_page_token) = page.page(
            all.iter().map(deployment_to_pb).collect(),
            Order::Descending,
            |d| format!("{:020}/{}", time_of(d.create_time.as_ref()).as_millis(), d.id),
            helios_api::encoded_len,
        );
        Ok(Response::new(pb::ListDeploymentsResponse { deployments, index, next_page_token }))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::GetDeploymentResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let index = blocking.wait(&self.cluster, &[Topic::Deployment]).await.map_err(cluster_status)?;
        let deployment = self.find_local(request.into_inner().id).await?;
        Ok(Response::new(pb::GetDeploymentResponse { deployment: Some(deployment_to_pb(&deployment)), index }))
    }

    async fn promote_deployment(
        &self,
        request: Request<pb::PromoteDeploymentRequest>,
    ) -> Result<Response<pb::PromoteDeploymentResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let conditions = retries::conditions("PromoteDeployment", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        for (i, group) in req.groups.iter().enumerate() {
            super::errors::require_name(&format!("groups[{i}]"), group)?;
        }
        let acted = self.act(conditions, req.id, DeploymentAction::Promote { groups: req.groups }).await?;
        let Acted { deployment, eval_id, index, .. } = acted;
        Ok(Response::new(pb::PromoteDeploymentResponse { deployment, eval_id, index }))
    }

    async fn pause_deployment(
        &self,
        request: Request<pb::PauseDeploymentRequest>,
    ) -> Result<Response<pb::PauseDeploymentResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let conditions = retries::conditions("PauseDeployment", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        let action = if req.pause { DeploymentAction::Pause } else { DeploymentAction::Resume };
        let Acted { deployment, eval_id, index, .. } = self.act(conditions, req.id, action).await?;
        Ok(Response::new(pb::PauseDeploymentResponse { deployment, eval_id, index }))
    }

    async fn fail_deployment(
        &self,
        request: Request<pb::FailDeploymentRequest>,
    ) -> Result<Response<pb::FailDeploymentResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let conditions = retries::conditions("FailDeployment", caller.as_ref(), request.get_ref())?;
        let acted = self.act(conditions, request.into_inner().id, DeploymentAction::Fail).await?;
        let Acted { deployment, eval_id, reverted_to_version, index } = acted;
        Ok(Response::new(pb::FailDeploymentResponse { deployment, eval_id, reverted_to_version, index }))
    }

    async fn set_allocation_health(
        &self,
        request: Request<pb::SetAllocationHealthRequest>,
    ) -> Result<Response<pb::SetAllocationHealthResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let conditions = retries::conditions("SetAllocationHealth", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        if req.healthy_alloc_ids.is_empty() && req.unhealthy_alloc_ids.is_empty() {
            return Err(invalid("healthy_alloc_ids", "name at least one allocation, healthy or unhealthy"));
        }
        let healthy = self.allocation_ids("healthy_alloc_ids", req.healthy_alloc_ids).await?;
        let unhealthy = self.allocation_ids("unhealthy_alloc_ids", req.unhealthy_alloc_ids).await?;
        if let Some(both) = healthy.iter().find(|id| unhealthy.contains(id)) {
            return Err(invalid("unhealthy_alloc_ids", format!("allocation {both} is also named healthy")));
        }
        let acted = self.act(conditions, req.id, DeploymentAction::SetHealth { healthy, unhealthy }).await?;
        let Acted { deployment, eval_id, reverted_to_version, index } = acted;
        Ok(Response::new(pb::SetAllocationHealthResponse { deployment, eval_id, reverted_to_version, index }))
    }
}
