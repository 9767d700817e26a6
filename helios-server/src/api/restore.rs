//! `RestoreSnapshot`: an operator's snapshot file replaces the replicated state, through Raft.
//!
//! The file is received into the data dir and checked whole (format, checksum) before anything
//! is proposed. Its rows then go to the leader in entries of at most `ROWS_BYTES`, read from the
//! file as they are sent, and one `RestoreCommit` swaps them in on every server at once.

use std::io::{self, Write};

use futures::StreamExt;
use helios_api::pb;
use helios_core::command::answer::{RestoreStaged, Restored};
use helios_core::Command;
use redb::TableDefinition;
use tonic::{Status, Streaming};

use super::errors::cluster_status;
use crate::cluster::Cluster;
use crate::raft::snapshot::{self, ReceivedFile, RowSink};

/// One `RestoreRows`: a table's name and some of its rows.
type RowBatch = (String, Vec<(String, Vec<u8>)>);

/// Row bytes per `RestoreRows` entry: well inside one Raft message.
const ROWS_BYTES: usize = 512 * 1024;
/// A restore file larger than this is refused.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024 * 1024;

pub async fn restore(
    cluster: &Cluster,
    mut chunks: Streaming<pb::RestoreSnapshotRequest>,
) -> Result<pb::RestoreSnapshotResponse, Status> {
    let file = receive(cluster, &mut chunks).await?;
    let path = file.0.clone();
    let summary =
        tokio::task::spawn_blocking(move || snapshot::inspect(io::BufReader::new(std::fs::File::open(&path)?)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("the snapshot file cannot be restored: {e}")))?;
    // Rows are restored as they are: every server must read the format they were written for.
    let stored = cluster.stored_format();
    if summary.format > stored {
        return Err(Status::failed_precondition(format!(
            "the snapshot's rows are of stored format {}, but this cluster's is {stored}: some of its servers \
             could not read them; restore it once every server runs a build of that format and `server members` \
             shows the cluster's stored format raised",
            summary.format
        )));
    }
    let staging = redb::TableHandle::name(&crate::store::tables::RESTORE_STAGING);
    let rows: u64 = summary.tables.iter().filter(|(t, _)| t != staging).map(|(_, n)| n).sum();
    let restore_id = crate::clock::new_id();
    tracing::info!(%restore_id, rows, format = summary.format, "restoring a snapshot");
    propose(cluster, Command::RestoreBegin { restore_id: restore_id.clone() }).await?;
    // Read on a blocking thread a batch ahead of the proposals.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<RowBatch>>(2);
    let path = file.0.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = Batches { tx: tx.clone(), table: String::new(), rows: Vec::new(), bytes: 0 };
        let read = io::BufReader::new(std::fs::File::open(&path)?);
        let result = snapshot::read_rows(read, &mut sink).and_then(|_| sink.send());
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
        io::Result::Ok(())
    });
    while let Some(batch) = rx.recv().await {
        let (table, rows) = batch.map_err(|e| Status::internal(format!("reading the snapshot file: {e}")))?;
        propose(cluster, Command::RestoreRows { restore_id: restore_id.clone(), table, rows }).await?;
    }
    let (index, Restored { rows }) =
        cluster.propose(Command::RestoreCommit { restore_id, rows }).await.map_err(cluster_status)?;
    Ok(pb::RestoreSnapshotResponse { rows, index })
}

async fn propose(cluster: &Cluster, command: Command) -> Result<(), Status> {
    let (_, RestoreStaged) = cluster.propose(command).await.map_err(cluster_status)?;
    Ok(())
}

/// Receives the file into the data dir (deleted when done).
async fn receive(
    cluster: &Cluster,
    chunks: &mut Streaming<pb::RestoreSnapshotRequest>,
) -> Result<ReceivedFile, Status> {
    let path = cluster.data_dir.join(format!("restore-{}.incoming", crate::clock::new_id()));
    let file =
        std::fs::File::create(&path).map_err(|e| Status::internal(format!("cannot create {}: {e}", path.display())))?;
    let received = ReceivedFile(path);
    let mut out = io::BufWriter::new(file);
    let mut size = 0u64;
    loop {
        let next = tokio::time::timeout(crate::raft::peer_service::SNAPSHOT_CHUNK_TIMEOUT, chunks.next())
            .await
            .map_err(|_| Status::deadline_exceeded("the snapshot upload stalled"))?;
        let Some(chunk) = next else { break };
        let data = chunk?.data;
        size += data.len() as u64;
        if size > MAX_FILE_BYTES {
            return Err(Status::resource_exhausted(format!("a snapshot file is at most {MAX_FILE_BYTES} bytes")));
        }
        out.write_all(&data).map_err(|e| Status::internal(format!("writing the snapshot file: {e}")))?;
    }
    out.flush().map_err(|e| Status::internal(format!("writing the snapshot file: {e}")))?;
    Ok(received)
}

/// Cuts the file's rows into `RestoreRows` batches of one table each.
struct Batches {
    tx: tokio::sync::mpsc::Sender<io::Result<RowBatch>>,
    table: String,
    rows: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

impl Batches {
    fn send(&mut self) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let batch = (self.table.clone(), std::mem::take(&mut self.rows));
        self.tx
            .blocking_send(Ok(batch))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the restore was abandoned"))
    }
}

impl RowSink for Batches {
    fn table(&mut self, table: TableDefinition<'static, &'static str, &'static [u8]>) -> io::Result<()> {
        self.send()?;
        self.table = redb::TableHandle::name(&table).to_string();
        Ok(())
    }

    fn row(&mut self, key: &str, value: &[u8]) -> io::Result<()> {
        // A restore file's staging rows are the source's own restore in progress: not state.
        if self.table == redb::TableHandle::name(&crate::store::tables::RESTORE_STAGING) {
            return Ok(());
        }
        if self.bytes + key.len() + value.len() > ROWS_BYTES {
            self.send()?;
        }
        self.bytes += key.len() + value.len();
        self.rows.push((key.to_string(), value.to_vec()));
        Ok(())
    }
}
