//! `helios-cli deployment list|status|promote|pause|resume|fail|health` (Nomad's
//! `nomad deployment ...`): the rollouts of service jobs' versions.

use anyhow::{bail, Result};
use clap::Subcommand;
use helios_api::convert::timestamp_from_pb;
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::deployment_service_client::DeploymentServiceClient;
use serde_json::{json, Value};

use crate::connect::{status_error, Conn, Servers};
use crate::json::{millis, Output};
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum DeploymentCommand {
    /// Deployments, newest first.
    List {
        /// Only this job's.
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// One deployment, by its id (or its first or last characters): each group's progress.
    Status {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Promotes the canaries (of the named groups, or of every group) once they are healthy:
    /// the rollout then replaces the older version.
    Promote {
        id: String,
        /// A group to promote (repeat for more); every group's when none is named.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Pauses a running deployment: it replaces nothing more until resumed.
    Pause { id: String },
    /// Resumes a paused deployment.
    Resume { id: String },
    /// Fails a running deployment (with auto_revert, the last stable version runs again).
    Fail { id: String },
    /// Sets allocations' health, for groups whose update has health_check = "manual".
    Health {
        id: String,
        /// An allocation to mark healthy (repeat for more).
        #[arg(long = "healthy")]
        healthy: Vec<String>,
        /// An allocation to mark unhealthy (repeat for more).
        #[arg(long = "unhealthy")]
        unhealthy: Vec<String>,
    },
}

pub fn client(channel: Conn) -> DeploymentServiceClient<Conn> {
    DeploymentServiceClient::new(channel).max_decoding_message_size(crate::connect::MAX_RESPONSE)
}

pub async fn run(servers: &Servers, command: DeploymentCommand) -> Result<()> {
    let mut deployments = client(servers.connect().await?);
    let acted = match command {
        DeploymentCommand::List { job, output: Output { json } } => {
            let request = pb::ListDeploymentsRequest { job_name: job, ..Default::default() };
            let list = every_page(request, |r| {
                let mut deployments = deployments.clone();
                async move { deployments.list_deployments(r).await }
            })
            .await
            .map_err(status_error)?;
            if json {
                return crate::json::print(&Value::Array(list.iter().map(deployment_json).collect()));
            }
            if list.is_empty() {
                println!("No deployments");
                return Ok(());
            }
            let mut table = Table::new(&["ID", "JOB", "VERSION", "STATUS", "DESCRIPTION"]);
            for d in &list {
                table.row(vec![
                    crate::alloc::short(&d.id),
                    d.job_name.clone(),
                    d.job_version.to_string(),
                    status_name(d.status).to_string(),
                    d.status_description.clone(),
                ]);
            }
            table.print();
            return Ok(());
        }
        DeploymentCommand::Status { id, output: Output { json } } => {
            let reply = deployments
                .get_deployment(pb::GetDeploymentRequest { id, ..Default::default() })
                .await
                .map_err(status_error)?;
            let Some(d) = reply.into_inner().deployment else { bail!("the server sent no deployment") };
            if json {
                return crate::json::print(&deployment_json(&d));
            }
            print_status(&d);
            return Ok(());
        }
        DeploymentCommand::Promote { id, groups } => {
            let request = pb::PromoteDeploymentRequest { id, groups, ..Default::default() };
            deployments.promote_deployment(request).await.map(|r| (r.into_inner().deployment, None))
        }
        DeploymentCommand::Pause { id } => {
            let request = pb::PauseDeploymentRequest { id, pause: true, ..Default::default() };
            deployments.pause_deployment(request).await.map(|r| (r.into_inner().deployment, None))
        }
        DeploymentCommand::Resume { id } => {
            let request = pb::PauseDeploymentRequest { id, pause: false, ..Default::default() };
            deployments.pause_deployment(request).await.map(|r| (r.into_inner().deployment, None))
        }
        DeploymentCommand::Fail { id } => {
            let request = pb::FailDeploymentRequest { id, ..Default::default() };
            let failed = deployments.fail_deployment(request).await;
            failed.map(|r| r.into_inner()).map(|r| (r.deployment, r.reverted_to_version))
        }
        DeploymentCommand::Health { id, healthy, unhealthy } => {
            let request = pb::SetAllocationHealthRequest {
                id,
                healthy_alloc_ids: healthy,
                unhealthy_alloc_ids: unhealthy,
                ..Default::default()
            };
            let set = deployments.set_allocation_health(request).await;
            set.map(|r| r.into_inner()).map(|r| (r.deployment, r.reverted_to_version))
        }
    };
    // What the action left: the deployment, and the version a failure reverted to.
    let (deployment, reverted_to_version) = acted.map_err(status_error)?;
    if let Some(d) = &deployment {
        print_status(d);
    }
    if let Some(version) = reverted_to_version {
        println!("==> Reverted: version {version} runs the last stable version's spec");
    }
    Ok(())
}

pub fn status_name(status: i32) -> &'static str {
    match pb::DeploymentStatus::try_from(status) {
        Ok(pb::DeploymentStatus::Running) => "running",
        Ok(pb::DeploymentStatus::Paused) => "paused",
        Ok(pb::DeploymentStatus::Successful) => "successful",
        Ok(pb::DeploymentStatus::Failed) => "failed",
        Ok(pb::DeploymentStatus::Cancelled) => "cancelled",
        Ok(pb::DeploymentStatus::Unspecified) | Err(_) => "unknown",
    }
}

fn print_status(d: &pb::Deployment) {
    println!("ID          = {}", d.id);
    println!("Job ID      = {}", d.job_name);
    println!("Job Version = {}", d.job_version);
    println!("Status      = {}", status_name(d.status));
    println!("Description = {}", d.status_description);
    println!();
    println!("Deployed");
    groups_table(d).print();
}

/// Nomad's deployment table: per group, desired / placed / healthy / unhealthy / deadline
/// (with canaries and promotion where the group has them).
pub fn groups_table(d: &pb::Deployment) -> Table {
    let canaries = d.groups.iter().any(|g| g.desired_canaries > 0);
    let mut header = vec!["Task Group"];
    if canaries {
        header.extend(["Promoted", "Desired", "Canaries"]);
    } else {
        header.push("Desired");
    }
    header.extend(["Placed", "Healthy", "Unhealthy", "Progress Deadline"]);
    let mut table = Table::new(&header);
    for g in &d.groups {
        let mut row = vec![g.name.clone()];
        if canaries {
            row.extend([g.promoted.to_string(), g.desired_total.to_string(), g.desired_canaries.to_string()]);
        } else {
            row.push(g.desired_total.to_string());
        }
        let deadline = timestamp_from_pb(g.require_progress_by.as_ref()).map_or("-".to_string(), |at| at.to_rfc3339());
        row.extend([g.placed.to_string(), g.healthy.to_string(), g.unhealthy.to_string(), deadline]);
        table.row(row);
    }
    table
}

pub fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "id": d.id,
        "job": d.job_name,
        "job_version": d.job_version,
        "status": status_name(d.status),
        "status_description": d.status_description,
        "created_at_ms": millis(d.create_time.as_ref()),
        "modified_at_ms": millis(d.update_time.as_ref()),
        "groups": d.groups.iter().map(|g| json!({
            "name": g.name,
            "desired_total": g.desired_total,
            "desired_canaries": g.desired_canaries,
            "placed": g.placed,
            "healthy": g.healthy,
            "unhealthy": g.unhealthy,
            "promoted": g.promoted,
            "auto_revert": g.auto_revert,
            "auto_promote": g.auto_promote,
            "require_progress_by_ms": millis(g.require_progress_by.as_ref()),
            "placed_canaries": g.placed_canaries,
            "healthy_allocs": g.healthy_allocs,
            "unhealthy_allocs": g.unhealthy_allocs,
        })).collect::<Vec<_>>(),
    })
}
