//! `helios-cli node ...`

use anyhow::{anyhow, Result};
use clap::Subcommand;
use helios_api::convert::{time_of, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::node_service_client::NodeServiceClient;

use crate::connect::{status_error, Servers};
use crate::json::Output;
use crate::table::{now, Table};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every client node with its status and capacity.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// One node: attributes, metadata, drivers, resources.
    Status {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Move a node's allocations elsewhere and stop it taking new work (--disable: undo).
    Drain {
        id: String,
        #[arg(long)]
        disable: bool,
    },
    /// Let a node take new work, or not (what runs there keeps running).
    Eligibility {
        id: String,
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Forget a node that is down for good and free its id for another agent. Until then the
    /// id keeps its secret: no other agent can take it. Its unfinished allocations are marked
    /// lost and replaced.
    Purge { id: String },
}

pub async fn run(servers: &Servers, command: NodeCommand) -> Result<()> {
    let mut nodes =
        NodeServiceClient::new(servers.connect().await?).max_decoding_message_size(crate::connect::MAX_RESPONSE);
    let now = now();
    match command {
        NodeCommand::List { output: Output { json } } => {
            let listed = every_page(pb::ListNodesRequest::default(), |r| {
                let mut nodes = nodes.clone();
                async move { nodes.list_nodes(r).await }
            })
            .await
            .map_err(status_error)?;
            if json {
                return crate::json::print(&listed.iter().map(crate::json::node).collect());
            }
            if listed.is_empty() {
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
            for n in listed {
                let res = n.resources.unwrap_or_default();
                let (status, eligibility) = (n.status().label(), n.eligibility().label());
                table.row(vec![
                    n.id,
                    n.hostname,
                    n.rpc_addr,
                    status.to_string(),
                    if n.drain { format!("{eligibility} (draining)") } else { eligibility.to_string() },
                    n.drivers.join(","),
                    format!("{} MHz", res.cpu_mhz),
                    format!("{} MB", res.memory_mb),
                    time_of(n.status_update_time.as_ref()).ago(now),
                ]);
            }
            table.print();
        }
        NodeCommand::Drain { id, disable } => {
            nodes
                .drain_node(pb::DrainNodeRequest { id: id.clone(), enable: !disable, ..Default::default() })
                .await
                .map_err(status_error)?;
            if disable {
                println!("Node {id:?} is no longer draining and takes new work again");
            } else {
                println!("Node {id:?} is draining: its allocations move to other nodes");
            }
        }
        NodeCommand::Eligibility { id, enable, .. } => {
            let request = pb::SetEligibilityRequest { id: id.clone(), eligible: enable, ..Default::default() };
            nodes.set_eligibility(request).await.map_err(status_error)?;
            let what = if enable { "eligible for new work" } else { "ineligible for new work" };
            println!("Node {id:?} is {what}");
        }
        NodeCommand::Purge { id } => {
            nodes
                .purge_node(pb::PurgeNodeRequest { id: id.clone(), ..Default::default() })
                .await
                .map_err(status_error)?;
            println!("Node {id:?} is purged: its id is free, and its allocations are replaced elsewhere");
        }
        NodeCommand::Status { id, output: Output { json } } => {
            let n = nodes
                .get_node(pb::GetNodeRequest { id, ..Default::default() })
                .await
                .map_err(status_error)?
                .into_inner()
                .node
                .ok_or_else(|| anyhow!("server returned no node"))?;
            if json {
                return crate::json::print(&crate::json::node(&n));
            }
            let res = n.resources.unwrap_or_default();
            println!("ID          = {}", n.id);
            println!("Hostname    = {}", n.hostname);
            println!("Address     = {}", n.rpc_addr);
            println!(
                "Status      = {} (since {})",
                n.status().label(),
                time_of(n.status_update_time.as_ref()).ago(now)
            );
            println!("Eligibility = {}{}", n.eligibility().label(), if n.drain { ", draining" } else { "" });
            println!("Drivers     = {}", n.drivers.join(", "));
            println!("Resources   = {} MHz CPU, {} MB memory", res.cpu_mhz, res.memory_mb);
            println!("Registered  = {}", time_of(n.register_time.as_ref()).to_rfc3339());
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
