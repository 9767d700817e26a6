//! `helios-cli server ...`

use anyhow::{anyhow, Result};
use clap::Subcommand;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;

use crate::connect::{status_error, Servers};
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Every server in the cluster with its role, term and last applied index.
    Members {
        /// Print one JSON document (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Add a running server (started without --bootstrap) to the cluster: ID=HOST:PORT.
    Join {
        #[arg(value_parser = parse_member)]
        member: (u64, String),
    },
    /// Remove a server from the cluster.
    Remove { id: u64 },
}

fn parse_member(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| format!("expected ID=HOST:PORT, got {text:?}"))?;
    let id = id.parse().map_err(|_| format!("invalid server id {id:?}"))?;
    Ok((id, addr.to_string()))
}

pub async fn run(servers: &Servers, command: ServerCommand) -> Result<()> {
    let mut cluster = ClusterServiceClient::new(servers.connect().await?);
    match command {
        ServerCommand::Members { json } => {
            let reply = cluster.list_members(pb::ListMembersRequest {}).await.map_err(status_error)?.into_inner();
            if json {
                return crate::json::print(&crate::json::members(&reply));
            }
            let mut table =
                Table::new(&["ID", "ADDRESS", "ROLE", "VOTER", "TERM", "LAST_APPLIED", "LAST_LOG", "SNAPSHOT"]);
            for m in reply.members {
                table.row(vec![
                    m.id.to_string(),
                    m.addr,
                    m.role,
                    if m.voter { "yes" } else { "no" }.to_string(),
                    m.term.to_string(),
                    m.last_applied_index.to_string(),
                    m.last_log_index.to_string(),
                    m.snapshot_index.map_or_else(|| "-".to_string(), |i| i.to_string()),
                ]);
            }
            table.print();
            if reply.leader_id.is_none() {
                return Err(anyhow!("no leader is known: an election is in progress or a majority is down"));
            }
        }
        ServerCommand::Join { member: (id, addr) } => {
            let reply = cluster
                .add_server(pb::AddServerRequest { id, addr: addr.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("Server {id} ({addr}) joined the cluster as a voter (log index {})", reply.index);
        }
        ServerCommand::Remove { id } => {
            let reply = cluster.remove_server(pb::RemoveServerRequest { id }).await.map_err(status_error)?.into_inner();
            println!("Server {id} removed from the cluster (log index {})", reply.index);
        }
    }
    Ok(())
}
