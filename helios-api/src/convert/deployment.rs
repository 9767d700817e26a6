//! Deployments to protobuf (output only: operators act on them by id).

use helios_core::deployment::{Deployment, DeploymentStatus};

use crate::pb;

pub fn deployment_status_to_pb(status: DeploymentStatus) -> pb::DeploymentStatus {
    match status {
        DeploymentStatus::Running => pb::DeploymentStatus::Running,
        DeploymentStatus::Paused => pb::DeploymentStatus::Paused,
        DeploymentStatus::Successful => pb::DeploymentStatus::Successful,
        DeploymentStatus::Failed => pb::DeploymentStatus::Failed,
        DeploymentStatus::Cancelled => pb::DeploymentStatus::Cancelled,
    }
}

pub fn deployment_to_pb(d: &Deployment) -> pb::Deployment {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let groups = d
        .groups
        .iter()
        .map(|(name, g)| pb::DeploymentGroup {
            name: name.clone(),
            desired_total: g.desired_total,
            desired_canaries: g.desired_canaries,
            placed: g.placed,
            healthy: count(g.healthy()),
            unhealthy: count(g.unhealthy()),
            promoted: g.promoted,
            auto_revert: g.auto_revert,
            auto_promote: g.auto_promote,
            require_progress_by: g.require_progress_by.map(super::timestamp_to_pb),
            placed_canaries: g.placed_canaries.clone(),
            healthy_allocs: g.health.iter().filter(|(_, h)| **h).map(|(id, _)| id.clone()).collect(),
            unhealthy_allocs: g.health.iter().filter(|(_, h)| !**h).map(|(id, _)| id.clone()).collect(),
        })
        .collect();
    pb::Deployment {
        id: d.id.clone(),
        job_name: d.job_name.clone(),
        job_version: d.job_version,
        status: deployment_status_to_pb(d.status) as i32,
        status_description: d.status_description.clone(),
        groups,
        create_time: Some(super::timestamp_to_pb(d.created_at)),
        update_time: Some(super::timestamp_to_pb(d.modified_at)),
    }
}
