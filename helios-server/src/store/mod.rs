//! The redb database behind one server: table layout, encoding, command application and reads.
//!
//! One file, `helios-node-<id>.db`, holds both the Raft log and the state machine.

pub mod apply;
pub mod codec;
pub mod read;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot create data dir {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("data dir {path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: std::io::Error },
    #[error("cannot open database {path}: {source}")]
    Database { path: PathBuf, source: redb::DatabaseError },
    #[error("cannot initialize database {path}: {source}")]
    Init { path: PathBuf, source: redb::Error },
}

/// The database file of server `node_id` inside `data_dir`.
pub fn db_path(data_dir: &Path, node_id: u64) -> PathBuf {
    data_dir.join(format!("helios-node-{node_id}.db"))
}

/// Opens (creating if needed) the server's database, with every table present.
pub fn open(data_dir: &Path, node_id: u64) -> Result<Arc<Database>, OpenError> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(OpenError::NotADirectory { path: data_dir.to_path_buf() });
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|source| OpenError::CreateDir { path: data_dir.to_path_buf(), source })?;
    // Probe writability first: redb's own error for a read-only directory is less clear.
    let probe = data_dir.join(format!(".helios-node-{node_id}.probe"));
    std::fs::write(&probe, b"ok").map_err(|source| OpenError::NotWritable { path: data_dir.to_path_buf(), source })?;
    let _ = std::fs::remove_file(&probe);
    let path = db_path(data_dir, node_id);
    let db = Database::create(&path).map_err(|source| OpenError::Database { path: path.clone(), source })?;
    tables::create_all(&db).map_err(|source| OpenError::Init { path: path.clone(), source })?;
    ensure_indexes(&db).map_err(|source| OpenError::Init { path, source })?;
    Ok(Arc::new(db))
}

/// Builds the indexes over allocations and evaluations if this database predates them.
fn ensure_indexes(db: &Database) -> Result<(), redb::Error> {
    use redb::ReadableTable;
    use tables::{INDEXES_VERSION, SM_INDEXES, SM_META};
    let txn = db.begin_write()?;
    let current: Option<u32> = match txn.open_table(SM_META)?.get(SM_INDEXES)? {
        Some(v) => Some(codec::decode(v.value()).map_err(redb::StorageError::Io)?),
        None => None,
    };
    if current == Some(INDEXES_VERSION) {
        return Ok(txn.abort()?);
    }
    rebuild_indexes(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Rebuilds the indexes in `txn` and records their version.
pub fn rebuild_indexes(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    {
        let mut state = apply::StateTables::open(txn)?;
        state.rebuild_indexes()?;
        state.finish()?;
    }
    let mut meta = txn.open_table(tables::SM_META)?;
    meta.insert(tables::SM_INDEXES, codec::encode(&tables::INDEXES_VERSION).as_slice())?;
    Ok(())
}
