//! `helios-cli server ...`

use anyhow::{anyhow, Result};
use clap::Subcommand;
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;

use crate::connect::{status_error, Servers};
use crate::json::Output;
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Every server in the cluster with its role, term, last applied index, how far its log is
    /// behind the leader's (LAG), and the stored format its build writes.
    Members {
        #[command(flatten)]
        output: Output,
    },
    /// Add a running server (started without --bootstrap) to the cluster: ID=HOST:PORT.
    Join {
        #[arg(value_parser = parse_member)]
        member: (u64, String),
    },
    /// Remove a server from the cluster.
    Remove { id: u64 },
    /// Each server's digest of its replicated state and the applied index it reflects. Servers
    /// at the same index must agree (exit 1 if they do not).
    Digest {
        #[command(flatten)]
        output: Output,
    },
}

fn parse_member(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| format!("expected ID=HOST:PORT, got {text:?}"))?;
    let id = id.parse().map_err(|_| format!("invalid server id {id:?}"))?;
    Ok((id, addr.to_string()))
}

pub async fn run(servers: &Servers, command: ServerCommand) -> Result<()> {
    let mut cluster = ClusterServiceClient::new(servers.connect().await?);
    match command {
        ServerCommand::Members { output: Output { json } } => {
            let reply =
                cluster.list_members(pb::ListMembersRequest { local: false }).await.map_err(status_error)?.into_inner();
            if json {
                return crate::json::print(&crate::json::members(&reply));
            }
            let mut table = Table::new(&[
                "ID",
                "ADDRESS",
                "ROLE",
                "VOTER",
                "TERM",
                "LAST_APPLIED",
                "LAST_LOG",
                "SNAPSHOT",
                "LAG",
                "FORMAT",
            ]);
            for m in reply.members {
                let role = m.role().label();
                table.row(vec![
                    m.id.to_string(),
                    m.addr,
                    role.to_string(),
                    if m.voter { "yes" } else { "no" }.to_string(),
                    m.term.to_string(),
                    m.last_applied_index.to_string(),
                    m.last_log_index.to_string(),
                    m.snapshot_index.map_or_else(|| "-".to_string(), |i| i.to_string()),
                    m.lag.map_or_else(|| "-".to_string(), |i| i.to_string()),
                    if m.format == 0 { "-".to_string() } else { m.format.to_string() },
                ]);
            }
            table.print();
            // 0: answered by a server of format 3, which does not report it.
            if reply.stored_format != 0 {
                println!("Cluster stored format: {}", reply.stored_format);
            }
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
        ServerCommand::Digest { output: Output { json } } => {
            let reply =
                cluster.list_members(pb::ListMembersRequest { local: false }).await.map_err(status_error)?.into_inner();
            let digests = futures::future::join_all(reply.members.iter().map(|m| digest_of(servers, &m.addr))).await;
            let rows: Vec<(&pb::Member, Option<pb::StateDigestResponse>)> = reply.members.iter().zip(digests).collect();
            let verdict = agreement(&rows);
            if json {
                let servers: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(m, d)| {
                        serde_json::json!({
                            "id": m.id, "address": m.addr,
                            "applied_index": d.as_ref().map(|d| d.applied_index),
                            "digest": d.as_ref().map(|d| d.digest.clone()),
                            "entries": d.as_ref().map(|d| d.entries),
                        })
                    })
                    .collect();
                crate::json::print(&serde_json::json!({ "servers": servers, "agree": verdict.is_ok() }))?;
            } else {
                let mut table = Table::new(&["ID", "ADDRESS", "APPLIED", "ENTRIES", "DIGEST"]);
                for (m, d) in &rows {
                    let (applied, entries, digest) = match d {
                        Some(d) => (d.applied_index.to_string(), d.entries.to_string(), d.digest.clone()),
                        None => ("-".into(), "-".into(), "unreachable".into()),
                    };
                    table.row(vec![m.id.to_string(), m.addr.clone(), applied, entries, digest]);
                }
                table.print();
                if let Ok(summary) = &verdict {
                    println!("{summary}");
                }
            }
            verdict.map(|_| ())?;
        }
        ServerCommand::Remove { id } => {
            let reply = cluster.remove_server(pb::RemoveServerRequest { id }).await.map_err(status_error)?.into_inner();
            println!("Server {id} removed from the cluster (log index {})", reply.index);
        }
    }
    Ok(())
}

/// One server's digest, asked of that server itself (None when it does not answer).
async fn digest_of(servers: &Servers, addr: &str) -> Option<pb::StateDigestResponse> {
    let endpoint = servers.endpoint_of(addr)?;
    let endpoint =
        endpoint.connect_timeout(std::time::Duration::from_secs(1)).timeout(std::time::Duration::from_secs(10));
    let mut client = ClusterServiceClient::new(endpoint.connect().await.ok()?);
    Some(client.state_digest(pb::StateDigestRequest {}).await.ok()?.into_inner())
}

/// Whether servers at the same applied index agree: a summary when they do, an error naming
/// the index when they do not.
fn agreement(rows: &[(&pb::Member, Option<pb::StateDigestResponse>)]) -> Result<String> {
    let mut by_index: std::collections::BTreeMap<u64, std::collections::BTreeSet<&str>> = Default::default();
    for d in rows.iter().filter_map(|(_, d)| d.as_ref()) {
        by_index.entry(d.applied_index).or_default().insert(d.digest.as_str());
    }
    if let Some((index, digests)) = by_index.iter().find(|(_, d)| d.len() > 1) {
        return Err(anyhow!("servers at applied index {index} disagree: {} different digests", digests.len()));
    }
    if by_index.is_empty() {
        return Err(anyhow!("no server answered with its digest"));
    }
    Ok(match by_index.len() {
        1 => format!("every server that answered agrees at applied index {}", by_index.keys().next().unwrap_or(&0)),
        _ => "servers are at different applied indexes (writes in flight); those at the same index agree".to_string(),
    })
}
