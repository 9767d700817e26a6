//! `helios-cli operator snapshot ...`: the cluster's whole replicated state in one file
//! (Nomad's `operator snapshot save/inspect`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use futures::StreamExt;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_server::raft::snapshot::{self, Summary};

use crate::connect::{status_error, Servers};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write the cluster's state, as of now, to FILE (needs a management token). The file is
    /// checked as it is written, and only appears once complete.
    Save { file: PathBuf },
    /// Replace the cluster's whole state with FILE's (needs a management token). Through Raft:
    /// every server ends with the file's state, or (if the restore fails) keeps its own. To seed
    /// a new cluster, start its servers empty and restore into them.
    Restore { file: PathBuf },
    /// Check FILE and show what it holds: its format, Raft index and term, members, rows per
    /// table. Needs no server.
    Inspect { file: PathBuf },
}

pub async fn run(servers: &Servers, command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Save { file } => save(servers, &file).await,
        SnapshotCommand::Inspect { file } => inspect(&file),
        SnapshotCommand::Restore { file } => restore(servers, &file).await,
    }
}

async fn restore(servers: &Servers, file: &Path) -> Result<()> {
    // Checked here first: a damaged file is refused before it is sent.
    let summary = read_summary(file)?;
    let opened = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let chunks = futures::stream::unfold(opened, |mut file| async move {
        let mut data = vec![0u8; helios_core::limits::SNAPSHOT_FILE_CHUNK_BYTES];
        match tokio::io::AsyncReadExt::read(&mut file, &mut data).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                data.truncate(n);
                Some((pb::RestoreSnapshotRequest { data }, file))
            }
        }
    });
    let mut cluster = ClusterServiceClient::new(servers.connect().await?);
    let reply = cluster.restore_snapshot(chunks).await.map_err(status_error)?.into_inner();
    println!("Restored {} ({} rows, format {}) at index {}", file.display(), reply.rows, summary.format, reply.index);
    Ok(())
}

async fn save(servers: &Servers, file: &Path) -> Result<()> {
    let mut cluster = ClusterServiceClient::new(servers.connect().await?);
    let mut stream = cluster.save_snapshot(pb::SaveSnapshotRequest {}).await.map_err(status_error)?.into_inner();
    // Written beside the target and renamed once whole: an interrupted save leaves no file
    // that looks like a snapshot.
    let partial = file.with_extension("partial");
    let mut out = std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let written = async {
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(status_error)?.data)?;
        }
        out.sync_all()?;
        let summary = read_summary(&partial)?;
        std::fs::rename(&partial, file)?;
        anyhow::Ok(summary)
    }
    .await;
    let summary = written.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    let rows: u64 = summary.tables.iter().map(|(_, n)| n).sum();
    println!(
        "Saved {} ({} rows, {} bytes) at index {}",
        file.display(),
        rows,
        summary.bytes,
        summary.meta.as_ref().and_then(|m| m.last_log_id).map_or(0, |l| l.index)
    );
    Ok(())
}

fn read_summary(file: &Path) -> Result<Summary> {
    let reader =
        std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?);
    snapshot::inspect(reader).map_err(|e| anyhow!("{}: {e}", file.display()))
}

pub fn inspect(file: &Path) -> Result<()> {
    let summary = read_summary(file)?;
    println!("Format  = {}", summary.format);
    println!("Bytes   = {}", summary.bytes);
    if let Some(meta) = &summary.meta {
        let last = meta.last_log_id.as_ref();
        println!("Index   = {}", last.map_or(0, |l| l.index));
        println!("Term    = {}", last.map_or(0, |l| l.leader_id.term));
        let members: Vec<String> =
            meta.last_membership.membership().nodes().map(|(id, n)| format!("{id}={}", n.addr)).collect();
        println!("Members = {}", members.join(", "));
    }
    println!();
    let mut table = crate::table::Table::new(&["TABLE", "ROWS"]);
    for (name, rows) in &summary.tables {
        table.row(vec![name.clone(), rows.to_string()]);
    }
    table.print();
    Ok(())
}
