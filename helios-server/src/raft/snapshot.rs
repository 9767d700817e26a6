//! Snapshots are the state machine's tables themselves.
//!
//! A snapshot built on this server is a consistent read-only view of its database (a redb read
//! transaction): building one costs nothing but reading the applied index, and the bytes are only
//! produced when a peer needs them. A snapshot received from a peer is those bytes, in a file.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, decode_from_reader, encode};
use crate::store::tables::STATE_TABLES;

#[derive(Clone)]
pub enum SnapshotData {
    /// A view of this server's tables, frozen at the snapshot's index.
    Local(Arc<ReadTransaction>),
    /// An encoded `SnapshotBody`, as it travels between servers.
    Encoded(Vec<u8>),
    /// An encoded `SnapshotBody` received from a peer, streamed to a file rather than held in
    /// memory while it arrives.
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

/// One table's rows: key -> encoded value.
pub type TableRows = Vec<(String, Vec<u8>)>;

/// The wire form of a snapshot: every state table's rows, by table name.
#[derive(Serialize, Deserialize)]
pub struct SnapshotBody {
    pub tables: Vec<(String, TableRows)>,
}

impl SnapshotData {
    /// The encoded snapshot. For a local view this reads every state table, so call it off the
    /// async threads.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        match self {
            SnapshotData::Encoded(bytes) => Ok(bytes.clone()),
            SnapshotData::Received(file) => std::fs::read(&file.0),
            SnapshotData::Local(txn) => {
                let mut body = SnapshotBody { tables: Vec::new() };
                for def in STATE_TABLES {
                    let table = txn.open_table(def).map_err(io::Error::other)?;
                    let mut rows = Vec::new();
                    for row in table.iter().map_err(io::Error::other)? {
                        let (k, v) = row.map_err(io::Error::other)?;
                        rows.push((k.value().to_string(), v.value().to_vec()));
                    }
                    body.tables.push((redb::TableHandle::name(&def).to_string(), rows));
                }
                Ok(encode(&body))
            }
        }
    }

    pub fn into_body(self) -> io::Result<SnapshotBody> {
        match self {
            SnapshotData::Encoded(bytes) => decode(&bytes),
            SnapshotData::Received(file) => decode_from_reader(std::io::BufReader::new(std::fs::File::open(&file.0)?)),
            local @ SnapshotData::Local(_) => decode(&local.to_bytes()?),
        }
    }
}
