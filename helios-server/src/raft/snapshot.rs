//! Snapshots are the state machine's tables themselves.
//!
//! A snapshot built on this server is a consistent read-only view of its database (a redb read
//! transaction): building one costs nothing but reading the applied index, and its bytes are only
//! produced, as a stream, when a peer or `operator snapshot save` needs them. A snapshot received
//! from a peer is those bytes, in a file.
//!
//! The stream (formats 3 and later) is `MAGIC`, then bincode frames: a header (the stored format
//! its rows are written for, and Raft metadata), then each table's name followed by its rows, then an end frame with the row count
//! and the SHA-256 of everything before it. Both sides hold one row at a time, so the memory a
//! snapshot takes does not grow with its size; a truncated or altered stream fails the checksum
//! before anything is committed. A stream without `MAGIC` is format 2's (one encoded body, its
//! rows untagged): read whole and converted, as only the files of that format are.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SnapshotMeta;
use crate::store::codec::{self, decode_from_reader};
use crate::store::convert::row_from_format_2;
use crate::store::tables::{FORMAT_VERSION, STATE_TABLES};
use helios_core::format::OLDEST_WRITTEN_FORMAT;

/// The first bytes of a snapshot stream of format 3 or later.
pub const MAGIC: &[u8; 8] = b"HELIOSsn";

#[derive(Clone)]
pub enum SnapshotData {
    /// A view of this server's tables, frozen at the snapshot's index.
    Local(Arc<ReadTransaction>),
    /// A snapshot stream in memory.
    Encoded(Arc<Vec<u8>>),
    /// A snapshot stream received from a peer (or read by a restore), in a file rather than in
    /// memory.
    Received(Arc<ReceivedFile>),
}

/// A file that is deleted when the last snapshot referring to it is dropped.
#[derive(Debug)]
pub struct ReceivedFile(pub PathBuf);

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not delete a received snapshot");
        }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Local(_) => f.write_str("SnapshotData::Local"),
            SnapshotData::Encoded(b) => write!(f, "SnapshotData::Encoded({} bytes)", b.len()),
            SnapshotData::Received(file) => write!(f, "SnapshotData::Received({})", file.0.display()),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Frame<'a> {
    Header { format: u32, meta: SnapshotMeta },
    Table { name: Cow<'a, str> },
    Row { key: Cow<'a, str>, value: Cow<'a, [u8]> },
    End { rows: u64, sha256: Vec<u8> },
}

/// One table's rows: key -> encoded value.
type TableRows = Vec<(String, Vec<u8>)>;

/// Format 2's snapshot: every state table's rows (untagged), by table name.
#[derive(Deserialize)]
struct Format2Body {
    tables: Vec<(String, TableRows)>,
}

/// What a snapshot stream holds, as `operator snapshot inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub format: u32,
    /// Absent from format 2's streams, which carried it beside the data.
    pub meta: Option<SnapshotMeta>,
    /// Rows per table, in stream order.
    pub tables: Vec<(String, u64)>,
    pub bytes: u64,
}

impl SnapshotData {
    /// Writes the snapshot stream to `out`. A local view is read table by table, so call it off
    /// the async threads.
    pub fn write_to(&self, meta: &SnapshotMeta, out: &mut impl Write) -> io::Result<()> {
        match self {
            SnapshotData::Local(txn) => write_tables(txn, meta, out),
            SnapshotData::Encoded(bytes) => out.write_all(bytes),
            SnapshotData::Received(file) => io::copy(&mut std::fs::File::open(&file.0)?, out).map(drop),
        }
    }

    fn reader(&self, meta: &SnapshotMeta) -> io::Result<Box<dyn BufRead + Send>> {
        Ok(match self {
            SnapshotData::Local(_) => {
                let mut bytes = Vec::new();
                self.write_to(meta, &mut bytes)?;
                Box::new(io::Cursor::new(bytes))
            }
            SnapshotData::Encoded(bytes) => Box::new(io::Cursor::new(bytes.as_ref().clone())),
            SnapshotData::Received(file) => Box::new(BufReader::new(std::fs::File::open(&file.0)?)),
        })
    }

    /// Replaces every state table in `txn` with the snapshot's rows. Nothing is written to the
    /// tables unless the whole stream checks out (the caller commits `txn` only on success).
    pub fn install_into(&self, meta: &SnapshotMeta, txn: &WriteTransaction) -> io::Result<Summary> {
        let summary = read_stream(self.reader(meta)?, Some(txn))?;
        match &summary.meta {
            Some(stated) if stated != meta => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the snapshot's data is of {stated:?}, not of {meta:?} as its sender said"),
            )),
            _ => Ok(summary),
        }
    }
}

/// Reads a whole snapshot stream and checks it, without installing it.
pub fn inspect(reader: impl BufRead) -> io::Result<Summary> {
    read_stream(reader, None)
}

/// Writes `txn`'s state tables as a snapshot stream.
fn write_tables(txn: &ReadTransaction, meta: &SnapshotMeta, out: &mut impl Write) -> io::Result<()> {
    let mut out = Hashing::new(io::BufWriter::with_capacity(256 * 1024, out));
    out.write_all(MAGIC)?;
    let frame = |out: &mut Hashing<_>, frame: &Frame| codec::encode_to_writer(frame, out);
    // The rows are written for the cluster's stored format, and the header says so: a server
    // of that format reads them, whatever build wrote the stream.
    let format = crate::store::read::stored_format(txn).map_err(io::Error::other)?;
    frame(&mut out, &Frame::Header { format, meta: meta.clone() })?;
    let mut rows = 0u64;
    for def in STATE_TABLES {
        let table = txn.open_table(def).map_err(io::Error::other)?;
        // A table the previous format lacks is sent only once it holds rows (which it cannot
        // before the cluster is raised to its format): a server of that format reads the stream.
        let name = redb::TableHandle::name(&def);
        if crate::store::tables::NEWER_TABLES.contains(&name)
            && redb::ReadableTableMetadata::is_empty(&table).map_err(io::Error::other)?
        {
            continue;
        }
        frame(&mut out, &Frame::Table { name: name.into() })?;
        for row in table.iter().map_err(io::Error::other)? {
            let (key, value) = row.map_err(io::Error::other)?;
            frame(&mut out, &Frame::Row { key: key.value().into(), value: value.value().into() })?;
            rows += 1;
        }
    }
    let sha256 = out.digest();
    codec::encode_to_writer(&Frame::End { rows, sha256 }, &mut out)?;
    out.into_inner().flush()
}

/// Where a snapshot's rows go as they are read: into a transaction (install), nowhere
/// (inspect), or into Raft commands (restore).
pub trait RowSink {
    /// The rows that follow are of state table `table` (one of `STATE_TABLES`).
    fn table(&mut self, table: TableDefinition<'static, &'static str, &'static [u8]>) -> io::Result<()>;
    /// One row, in this build's format.
    fn row(&mut self, key: &str, value: &[u8]) -> io::Result<()>;
}

/// Counts only.
struct Discard;

impl RowSink for Discard {
    fn table(&mut self, _: TableDefinition<'static, &'static str, &'static [u8]>) -> io::Result<()> {
        Ok(())
    }

    fn row(&mut self, _: &str, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Inserts into the tables of a transaction (whose state tables the caller emptied first).
struct Install<'txn> {
    txn: &'txn WriteTransaction,
    table: Option<redb::Table<'txn, &'static str, &'static [u8]>>,
}

impl RowSink for Install<'_> {
    fn table(&mut self, def: TableDefinition<'static, &'static str, &'static [u8]>) -> io::Result<()> {
        self.table = Some(self.txn.open_table(def).map_err(io::Error::other)?);
        Ok(())
    }

    fn row(&mut self, key: &str, value: &[u8]) -> io::Result<()> {
        let table = self.table.as_mut().ok_or_else(|| io::Error::other("a row before any table"))?;
        table.insert(key, value).map_err(io::Error::other).map(drop)
    }
}

fn read_stream(reader: impl BufRead, txn: Option<&WriteTransaction>) -> io::Result<Summary> {
    match txn {
        Some(txn) => {
            for def in STATE_TABLES {
                txn.open_table(def).map_err(io::Error::other)?.retain(|_, _| false).map_err(io::Error::other)?;
            }
            read_rows(reader, &mut Install { txn, table: None })
        }
        None => read_rows(reader, &mut Discard),
    }
}

/// Reads a whole snapshot stream, handing its rows to `sink`, and checks it. Rows reach the
/// sink before the checksum at the end is read: a sink that must not act on a damaged stream
/// keeps what it gets uncommitted until this returns `Ok`.
pub fn read_rows(mut reader: impl BufRead, sink: &mut dyn RowSink) -> io::Result<Summary> {
    let starts_with_magic = reader.fill_buf()?.starts_with(MAGIC);
    if !starts_with_magic {
        return read_format_2(reader, sink);
    }
    let mut reader = Hashing::new(reader);
    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic)?;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let (format, meta) = match decode_from_reader::<Frame>(&mut reader)? {
        Frame::Header { format, meta } => (format, meta),
        _ => return Err(invalid("the snapshot has no header".into())),
    };
    if !(OLDEST_WRITTEN_FORMAT..=FORMAT_VERSION).contains(&format) {
        return Err(invalid(format!(
            "the snapshot is of stored format {format}; this build reads formats 2 to {FORMAT_VERSION}{}",
            if format > FORMAT_VERSION { ": upgrade this server" } else { "" }
        )));
    }
    let mut tables: Vec<(String, u64)> = Vec::new();
    let mut rows = 0u64;
    loop {
        // The checksum covers everything before the end frame.
        let sha256 = reader.digest();
        match decode_from_reader::<Frame>(&mut reader)? {
            Frame::Header { .. } => return Err(invalid("the snapshot has a second header".into())),
            Frame::Table { name } => {
                let def =
                    state_table(&name).ok_or_else(|| invalid(format!("the snapshot holds unknown table {name:?}")))?;
                sink.table(def)?;
                tables.push((name.into_owned(), 0));
            }
            Frame::Row { key, value } => {
                let (_, count) = tables.last_mut().ok_or_else(|| invalid("a snapshot row before any table".into()))?;
                *count += 1;
                rows += 1;
                sink.row(&key, &value)?;
            }
            Frame::End { rows: expected, sha256: stated } => {
                if stated != sha256 || expected != rows {
                    return Err(invalid(format!(
                        "the snapshot is damaged: its checksum or row count ({expected}) does not match its data ({rows} rows)"
                    )));
                }
                return Ok(Summary { format, meta: Some(meta), tables, bytes: reader.bytes });
            }
        }
    }
}

fn read_format_2(mut reader: impl BufRead, sink: &mut dyn RowSink) -> io::Result<Summary> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    let body: Format2Body = crate::store::codec::decode(&bytes)?;
    let mut tables = Vec::new();
    for (name, rows) in body.tables {
        let def = state_table(&name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown table {name:?}")))?;
        tables.push((name.clone(), rows.len() as u64));
        sink.table(def)?;
        for (key, value) in rows {
            sink.row(&key, &row_from_format_2(&name, &value)?)?;
        }
    }
    Ok(Summary { format: 2, meta: None, tables, bytes: bytes.len() as u64 })
}

fn state_table(name: &str) -> Option<TableDefinition<'static, &'static str, &'static [u8]>> {
    STATE_TABLES.into_iter().find(|def| redb::TableHandle::name(def) == name)
}

/// Counts and hashes what passes through it.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }

    fn digest(&self) -> Vec<u8> {
        self.hasher.clone().finalize().to_vec()
    }

    fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How long the producer waits for a chunk to be taken: a receiver (a peer, an operator's
/// `snapshot save`) that stopped reading must not pin the snapshot's read transaction, whose
/// pages redb cannot reuse while it lives.
pub const CHUNK_TAKEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Produces the snapshot stream on a blocking thread, in chunks of `chunk_bytes`, a couple of
/// chunks ahead of whoever takes them: neither side holds more than that, however large the
/// state. A failure ends the stream with its error; a chunk not taken within `taken_within`
/// ends it silently (the receiver is gone or stuck).
pub fn stream_chunks(
    data: SnapshotData,
    meta: SnapshotMeta,
    chunk_bytes: usize,
    taken_within: std::time::Duration,
) -> tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Handle::current();
        let mut out = ChunkWriter { buf: Vec::with_capacity(chunk_bytes), chunk_bytes, taken_within, runtime, tx };
        if let Err(e) = data.write_to(&meta, &mut out).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "could not stream a snapshot");
            if e.kind() != io::ErrorKind::TimedOut {
                let _ = out.offer(Err(e));
            }
        }
    });
    rx
}

/// Cuts a snapshot stream into chunks for the task sending them; blocks while it is behind, up to
/// `taken_within` a chunk.
struct ChunkWriter {
    buf: Vec<u8>,
    chunk_bytes: usize,
    taken_within: std::time::Duration,
    runtime: tokio::runtime::Handle,
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
}

impl ChunkWriter {
    fn offer(&self, item: io::Result<Vec<u8>>) -> io::Result<()> {
        match self.runtime.block_on(tokio::time::timeout(self.taken_within, self.tx.send(item))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot transfer was abandoned")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no chunk of the snapshot was taken for {}s: transfer abandoned", self.taken_within.as_secs()),
            )),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_bytes));
        self.offer(Ok(chunk))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(self.chunk_bytes - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == self.chunk_bytes {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// Row counts of `txn`'s state tables (for comparing a restored state with its source).
pub fn table_sizes(txn: &ReadTransaction) -> io::Result<Vec<(String, u64)>> {
    STATE_TABLES
        .into_iter()
        .map(|def| {
            let table = txn.open_table(def).map_err(io::Error::other)?;
            Ok((redb::TableHandle::name(&def).to_string(), table.len().map_err(io::Error::other)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that stops reading (a stuck peer, a paused `snapshot save`) must not keep the
    /// producer, and its read transaction, alive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_nobody_reads_is_given_up_after_its_deadline() {
        let dir = tempfile::tempdir().expect("dir");
        let db = crate::store::open(dir.path(), 1).expect("open");
        let snapshot = crate::raft::state_machine::current_snapshot(&db).expect("snapshot");
        // Tiny chunks: many more than the channel holds.
        let rx = stream_chunks(snapshot.snapshot, snapshot.meta, 8, std::time::Duration::from_millis(50));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !rx.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "the producer still waits for its reader");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(rx.len(), 2, "what was sent before the reader stopped is still there");
    }
}
