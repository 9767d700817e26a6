//! Deployments (format 9): started when a service job's rolling version is registered, cancelled
//! by the next version or a stop, changed by the leader's watcher (`UpdateDeployment`) and by
//! operators (`ActOnDeployment`). Their consequences are applied here, in the same entry: a
//! successful deployment marks its version stable; a failed one with `auto_revert` registers
//! the last stable version again.

use helios_core::command::{DeploymentChanged, DEPLOYMENTS_FORMAT};
use helios_core::deployment::{Deployment, DeploymentAction, DeploymentStatus};
use helios_core::events::Topic;
use helios_core::{CommandResponse, Evaluation, HealthCheck, Job, RejectionKind, Timestamp};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::{decode, encode};
use crate::store::tables::{job_version_key, job_version_range};

impl StateTables<'_> {
    /// A new version of `job` was stored: the job's running deployment is cancelled, and the
    /// version gets its own if its groups roll (named by `eval_id`, the registration's).
    pub(super) fn start_deployment(&mut self, job: &Job, eval_id: &str, now: Timestamp) -> Result<(), redb::Error> {
        if self.format < DEPLOYMENTS_FORMAT {
            return Ok(());
        }
        let why = format!("Cancelled due to newer version of job ({})", job.version);
        self.cancel_deployment(&job.name, &why, now)?;
        let allocs = self.allocations_of_job(&job.name)?;
        if let Some(deployment) = Deployment::for_version(job, eval_id, now, &allocs) {
            self.put_deployment(&deployment)?;
        }
        Ok(())
    }

    /// Cancels the job's latest deployment if it is still running or paused.
    pub(super) fn cancel_deployment(&mut self, job_name: &str, why: &str, now: Timestamp) -> Result<(), redb::Error> {
        if let Some(mut deployment) = self.latest_deployment(job_name)? {
            if deployment.status.is_active() {
                deployment.cancel(why, now);
                deployment.revision += 1;
                self.put_deployment(&deployment)?;
            }
        }
        Ok(())
    }

    /// Forgets every version of a purged or collected job, and their deployments; returns how
    /// many versions there were.
    pub(super) fn forget_versions_of(&mut self, job_name: &str) -> Result<u64, redb::Error> {
        let (first, last) = job_version_range(job_name);
        let versions = self.job_versions.range(first.as_str()..=last.as_str())?.count() as u64;
        self.job_versions.retain_in(first.as_str()..=last.as_str(), |_, _| false)?;
        let mut deployments = Vec::new();
        for row in self.deployments.range(first.as_str()..=last.as_str())? {
            deployments.push(row?.0.value().to_string());
        }
        for key in deployments {
            self.remove_row(Topic::Deployment, &key)?;
        }
        Ok(versions)
    }

    /// Forgets the deployment of a collected job version.
    pub(super) fn delete_deployment_of_version(&mut self, job_name: &str, version: u64) -> Result<(), redb::Error> {
        self.remove_row(Topic::Deployment, &job_version_key(job_name, version))?;
        Ok(())
    }

    fn latest_deployment(&self, job_name: &str) -> Result<Option<Deployment>, redb::Error> {
        let (first, last) = job_version_range(job_name);
        let latest = self.deployments.range(first.as_str()..=last.as_str())?.next_back().transpose()?;
        latest.map(|(_, v)| decode(v.value()).map_err(|e| redb::StorageError::Io(e).into())).transpose()
    }

    /// By exact id (the API resolves prefixes first). Deployments are few: one per version kept.
    fn deployment_by_id(&self, id: &str) -> Result<Option<Deployment>, redb::Error> {
        for row in self.deployments.iter()? {
            let (_, v) = row?;
            let deployment: Deployment = decode(v.value()).map_err(redb::StorageError::Io)?;
            if deployment.id == id {
                return Ok(Some(deployment));
            }
        }
        Ok(None)
    }

    fn put_deployment(&mut self, deployment: &Deployment) -> Result<(), redb::Error> {
        let key = job_version_key(&deployment.job_name, deployment.job_version);
        self.put_row(Topic::Deployment, &key, &encode(deployment))?;
        Ok(())
    }

    /// The watcher's observation, applied over the revision it was made from.
    pub(super) fn update_deployment(
        &mut self,
        next: Deployment,
        eval: Evaluation,
    ) -> Result<CommandResponse, redb::Error> {
        let key = job_version_key(&next.job_name, next.job_version);
        let Some(stored) = get::<Deployment>(&self.deployments, &key)? else {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("deployment {} not found", next.id)));
        };
        if stored.id != next.id || stored.revision != next.revision || !stored.status.is_active() {
            return Ok(CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!("deployment {} changed since it was observed", next.id),
            ));
        }
        self.deployment_changed(&stored, next, eval)
    }

    pub(super) fn act_on_deployment(
        &mut self,
        id: &str,
        action: &DeploymentAction,
        now: Timestamp,
        eval: Evaluation,
    ) -> Result<CommandResponse, redb::Error> {
        let Some(stored) = self.deployment_by_id(id)? else {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("deployment {id:?} not found")));
        };
        let Some(spec) = get::<Job>(&self.job_versions, &job_version_key(&stored.job_name, stored.job_version))? else {
            return Ok(CommandResponse::rejected(
                RejectionKind::NotFound,
                format!("job {:?} version {} is gone", stored.job_name, stored.job_version),
            ));
        };
        // The allocations of the deployment's version, by id, with their groups.
        let mut groups = std::collections::BTreeMap::new();
        if let DeploymentAction::SetHealth { healthy, unhealthy } = action {
            for alloc_id in healthy.iter().chain(unhealthy) {
                let alloc = get::<helios_core::Allocation>(&self.allocations, alloc_id)?
                    .filter(|a| a.job_name == stored.job_name && a.job_version == stored.job_version);
                let Some(alloc) = alloc else { continue };
                let manual = spec
                    .task_groups
                    .iter()
                    .any(|g| g.name == alloc.task_group && g.update.health_check == HealthCheck::Manual);
                if !manual {
                    return Ok(CommandResponse::rejected(
                        RejectionKind::FailedPrecondition,
                        format!(
                            "group {:?} judges health itself; health is set by hand only with health_check = \"manual\"",
                            alloc.task_group
                        ),
                    ));
                }
                groups.insert(alloc.id.clone(), alloc.task_group);
            }
        }
        let mut next = stored.clone();
        if let Err(why) = next.act(action, now, |alloc| groups.get(alloc).cloned()) {
            return Ok(CommandResponse::rejected(RejectionKind::FailedPrecondition, why));
        }
        self.deployment_changed(&stored, next, eval)
    }

    /// Stores `next` and applies what its change means: a stable version, a revert, or an
    /// evaluation for the scheduler to go on.
    fn deployment_changed(
        &mut self,
        before: &Deployment,
        mut next: Deployment,
        eval: Evaluation,
    ) -> Result<CommandResponse, redb::Error> {
        next.revision = before.revision + 1;
        let newly = |status: DeploymentStatus| next.status == status && before.status != status;
        if newly(DeploymentStatus::Successful) {
            self.mark_stable(&next.job_name, next.job_version)?;
        }
        let mut reverted_to = None;
        if newly(DeploymentStatus::Failed) && next.auto_revert() {
            match self.revert_target(&next)? {
                Ok(stable) => {
                    next.status_description =
                        format!("{} - rolling back to job version {}", next.status_description, stable.version);
                    self.put_deployment(&next)?;
                    // Registered as the next version, which starts its own deployment.
                    if let CommandResponse::JobRegistered(registered) = self.register_job(stable, eval.clone())? {
                        reverted_to = Some(registered.version);
                    }
                }
                Err(why) => next.status_description = format!("{} - {why}", next.status_description),
            }
        }
        if reverted_to.is_none() {
            self.put_deployment(&next)?;
            self.put_evaluation(&eval)?;
        }
        Ok(CommandResponse::DeploymentChanged(DeploymentChanged {
            status: next.status,
            status_description: next.status_description,
            eval_id: Some(eval.id),
            reverted_to,
        }))
    }

    /// What `auto_revert` does (Nomad's rule): register the latest stable version before the
    /// deployment's, unless its spec is the job's current one; or why not, for the description.
    fn revert_target(&self, deployment: &Deployment) -> Result<Result<Job, String>, redb::Error> {
        let Some(current) = get::<Job>(&self.jobs, &deployment.job_name)? else {
            return Ok(Err("the job is gone".to_string()));
        };
        if current.stopped || current.version != deployment.job_version {
            return Ok(Err("the job changed since".to_string()));
        }
        let first = job_version_key(&deployment.job_name, 0);
        let before = job_version_key(&deployment.job_name, deployment.job_version);
        for row in self.job_versions.range(first.as_str()..before.as_str())?.rev() {
            let (_, v) = row?;
            let version: Job = decode(v.value()).map_err(redb::StorageError::Io)?;
            if !version.stable {
                continue;
            }
            if version.same_spec(&current) {
                return Ok(Err(format!(
                    "not rolling back to stable job version {} as current job has same specification",
                    version.version
                )));
            }
            return Ok(Ok(version));
        }
        Ok(Err("no stable job version to auto revert to".to_string()))
    }

    fn mark_stable(&mut self, job_name: &str, version: u64) -> Result<(), redb::Error> {
        let key = job_version_key(job_name, version);
        if let Some(mut job) = get::<Job>(&self.job_versions, &key)? {
            job.stable = true;
            self.job_versions.insert(key.as_str(), encode(&job).as_slice())?;
            self.touched(Topic::Job);
        }
        if let Some(mut job) = get::<Job>(&self.jobs, job_name)?.filter(|j| j.version == version) {
            job.stable = true;
            self.put_row(Topic::Job, job_name, &encode(&job))?;
        }
        Ok(())
    }
}
