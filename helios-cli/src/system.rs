//! `helios-cli system ...`

use anyhow::Result;
use clap::Subcommand;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;

use crate::connect::{status_error, Servers};

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Forget finished evaluations and allocations, dead jobs, old job versions and long-down
    /// nodes now, whatever their age (the servers otherwise do it after their --*-gc-threshold).
    Gc,
}

pub async fn run(servers: &Servers, command: SystemCommand) -> Result<()> {
    let mut cluster = ClusterServiceClient::new(servers.connect().await?);
    match command {
        SystemCommand::Gc => {
            let c = cluster.collect_garbage(pb::CollectGarbageRequest {}).await.map_err(status_error)?.into_inner();
            println!(
                "Collected {} evaluations, {} allocations, {} jobs, {} job versions, {} nodes",
                c.evaluations, c.allocations, c.jobs, c.job_versions, c.nodes
            );
        }
    }
    Ok(())
}
