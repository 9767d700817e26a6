//! `helios-cli node ...`

use anyhow::{anyhow, Result};
use clap::Subcommand;
use helios_api::pb;
use helios_api::pb::node_service_client::NodeServiceClient;
use helios_core::Timestamp;

use crate::connect::{status_error, Servers};
use crate::table::{now, Table};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every client node with its status and capacity.
    List,
    /// One node: attributes, metadata, drivers, resources.
    Status { id: String },
}

pub async fn run(servers: &Servers, command: NodeCommand) -> Result<()> {
    let mut nodes = NodeServiceClient::new(servers.connect().await?);
    let now = now();
    match command {
        NodeCommand::List => {
            let reply = nodes.list_nodes(pb::ListNodesRequest {}).await.map_err(status_error)?.into_inner();
            if reply.nodes.is_empty() {
                println!("No client nodes");
                return Ok(());
            }
            let mut table = Table::new(&[
                "ID",
                "HOSTNAME",
                "ADDRESS",
                "STATUS",
                "ELIGIBILITY",
                "DRIVERS",
                "CPU",
                "MEMORY",
                "SINCE",
            ]);
            for n in reply.nodes {
                let res = n.resources.unwrap_or_default();
                table.row(vec![
                    n.id,
                    n.hostname,
                    n.rpc_addr,
                    n.status,
                    if n.drain { format!("{} (draining)", n.eligibility) } else { n.eligibility },
                    n.drivers.join(","),
                    format!("{} MHz", res.cpu_mhz),
                    format!("{} MB", res.memory_mb),
                    Timestamp(n.status_updated_at_ms).ago(now),
                ]);
            }
            table.print();
        }
        NodeCommand::Status { id } => {
            let n = nodes
                .get_node(pb::GetNodeRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .node
                .ok_or_else(|| anyhow!("server returned no node"))?;
            let res = n.resources.unwrap_or_default();
            println!("ID          = {}", n.id);
            println!("Hostname    = {}", n.hostname);
            println!("Address     = {}", n.rpc_addr);
            println!("Status      = {} (since {})", n.status, Timestamp(n.status_updated_at_ms).ago(now));
            println!("Eligibility = {}{}", n.eligibility, if n.drain { ", draining" } else { "" });
            println!("Drivers     = {}", n.drivers.join(", "));
            println!("Resources   = {} MHz CPU, {} MB memory", res.cpu_mhz, res.memory_mb);
            println!("Registered  = {}", Timestamp(n.registered_at_ms).to_rfc3339());
            println!("\nAttributes");
            for (k, v) in &n.attributes {
                println!("  {k} = {v}");
            }
            if !n.meta.is_empty() {
                println!("\nMeta");
                for (k, v) in &n.meta {
                    println!("  {k} = {v}");
                }
            }
        }
    }
    Ok(())
}
