//! The leader's deployment watcher (Nomad's): while this server leads, it looks at every running
//! or paused deployment twice a second, judges the health of its version's allocations by the
//! group's `update` rule and ends it when its rules say so (`Deployment::observe`: success,
//! an unhealthy allocation, a missed progress deadline, auto-promotion). A change goes through
//! Raft (`UpdateDeployment`, applied only over the revision it was observed at), so a new
//! leader's watcher simply goes on from the replicated record: nothing of it lives only here.

use std::time::Duration;

use helios_core::command::{DeploymentChanged, DEPLOYMENTS_FORMAT};
use helios_core::deployment::{Deployment, DeploymentStatus};
use helios_core::{Allocation, Command, EvalTrigger, Evaluation, TaskGroup, Timestamp};
use redb::ReadTransaction;

use crate::clock;
use crate::cluster::{expect_answer, Cluster, ClusterError};
use crate::store::apply::reserves_room;
use crate::store::{read, StoreError};

/// How often the deployments are looked at: health verdicts land within this of being due.
const INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(cluster: Cluster) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !cluster.is_leader() || cluster.stored_format() < DEPLOYMENTS_FORMAT {
            continue;
        }
        if let Err(e) = watch_once(&cluster).await {
            tracing::warn!(error = %e, "deployment watcher pass failed; retrying");
        }
    }
}

async fn watch_once(cluster: &Cluster) -> Result<(), ClusterError> {
    let now = clock::now();
    let changes = cluster.read_local(move |txn| observe_all(txn, now)).await?;
    for (deployment, priority) in changes {
        let (id, job) = (deployment.id.clone(), deployment.job_name.clone());
        // The scheduler goes on with this evaluation (or a revert registers with it).
        let eval = Evaluation::new(clock::new_id(), &job, priority, EvalTrigger::DeploymentWatcher, now);
        let response = cluster.propose_as_leader(Command::UpdateDeployment { deployment, eval }).await?;
        match expect_answer::<DeploymentChanged>(response)? {
            Ok(changed) if changed.status != DeploymentStatus::Running => tracing::info!(
                deployment = %id,
                job = %job,
                status = changed.status.as_str(),
                description = %changed.status_description,
                reverted_to = ?changed.reverted_to,
                "deployment ended"
            ),
            Ok(_) => {}
            // Changed meanwhile (an operator's pause, say): looked at again next time.
            Err(rejection) => tracing::debug!(deployment = %id, reason = %rejection.message, "deployment not updated"),
        }
    }
    Ok(())
}

/// Every active deployment's next state, where it changed, with its job's priority.
fn observe_all(txn: &ReadTransaction, now: Timestamp) -> Result<Vec<(Deployment, u32)>, StoreError> {
    let mut out = Vec::new();
    for deployment in read::deployments(txn, None)?.into_iter().filter(|d| d.status.is_active()) {
        let Some(job) = read::job(txn, &deployment.job_name)? else { continue };
        let allocs: Vec<Allocation> = read::allocations(txn, Some(&deployment.job_name), None)?;
        let refs: Vec<&Allocation> = allocs.iter().collect();
        let checks_of = |group: &str| -> usize {
            job.task_groups.iter().filter(|g| g.name == group).flat_map(|g| &g.services).map(|s| s.checks.len()).sum()
        };
        // Canaries only replace something: an older spec still running in the group.
        let needs_canaries = |g: &TaskGroup| {
            let fingerprint = g.fingerprint();
            allocs.iter().any(|a| {
                a.task_group == g.name
                    && a.job_version < job.version
                    && a.group_fingerprint != fingerprint
                    && reserves_room(a)
            })
        };
        let next = deployment.observe(&job, &refs, now, |a| checks_of(&a.task_group), needs_canaries);
        if let Some(next) = next {
            out.push((next, job.priority));
        }
    }
    Ok(out)
}
