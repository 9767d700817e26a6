//! The redb database behind one server: table layout, encoding, command application and reads.
//!
//! One file, `helios-node-<id>.db`, holds both the Raft log and the state machine.

pub mod apply;
pub mod codec;
pub mod convert;
pub mod read;
pub mod tables;

mod stored_format;
pub use stored_format::StoredFormat;

use std::io;
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
    #[error("cannot open database {path}: {source}. {RECOVERY}")]
    Database { path: PathBuf, source: redb::DatabaseError },
    #[error("database {path} is damaged ({what}). {RECOVERY}")]
    Damaged { path: PathBuf, what: String },
    #[error("cannot initialize database {path}: {source}")]
    Init { path: PathBuf, source: redb::Error },
    #[error(
        "database {path} holds stored format {found}, but this build reads format {expected} and cannot convert it: \
         run the build that wrote it, or move the data dir away to start this server afresh"
    )]
    Format { path: PathBuf, found: u32, expected: u32 },
    #[error("cannot convert database {path} from format {found} to {expected}: {source}")]
    Convert { path: PathBuf, found: u32, expected: u32, source: convert::ConvertError },
}

/// What to do with a damaged database: a server's state is replicated, so its peers have it.
const RECOVERY: &str = "Move the file away and start the server again: it catches up from its peers \
     (in a one-server cluster, start afresh and `helios-cli operator snapshot restore` a saved snapshot)";

/// Beside a database that failed its integrity check: it stays refused (redb repairs what it
/// can while checking, so the next check could pass on a file that lost writes Raft relied on).
pub fn damaged_marker(data_dir: &Path, node_id: u64) -> PathBuf {
    data_dir.join(format!("helios-node-{node_id}.db.damaged"))
}

enum Checked {
    Failed(redb::DatabaseError),
    Damaged(String),
}

thread_local! {
    static CHECKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread checks a database: a panic then is redb meeting a damaged file, which
/// `open` reports (the server's panic hook, which otherwise ends the process, lets it).
pub fn checking_a_database() -> bool {
    CHECKING.with(std::cell::Cell::get)
}

/// Opens the file and runs redb's integrity check. A file changed behind redb's back (a disk
/// fault, a bad copy) must not be served from: Raft's promises (votes, acknowledged entries)
/// rest on what it holds. redb may panic on garbage rather than return an error.
fn open_checked(path: &Path) -> Result<Database, Checked> {
    CHECKING.with(|c| c.set(true));
    let opened = std::panic::catch_unwind(|| {
        let mut db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => Checked::Damaged(what),
            other => Checked::Failed(other),
        })?;
        match db.check_integrity() {
            Ok(true) => Ok(db),
            Ok(false) => Err(Checked::Damaged("it failed redb's integrity check".to_string())),
            Err(e) => Err(Checked::Damaged(format!("it failed redb's integrity check: {e}"))),
        }
    });
    CHECKING.with(|c| c.set(false));
    opened.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Checked::Damaged(format!("redb failed reading it: {what}")))
    })
}

/// redb's page cache (its default is 1 GiB). It bounds what a server holds in memory for its
/// database whatever the database's size: a snapshot installed or a format converted in one
/// transaction spills its pages to the file beyond half of it. The OS's page cache still keeps
/// the file's hot pages; see docs/performance.md ("Stored data") for what it costs. 32 MiB, not
/// 128: a full cache is most of what an idle server holds (the integrity check at start fills
/// it), and the smaller one measured the same submission and placement rates.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A failure reading or writing the state tables, with its cause kept: redb's own error, an I/O
/// error (`codec::decode` reports a value that does not decode as `InvalidData`), or a row that
/// breaks the tables' layout. (openraft's storage traits
/// take `io::Error`; the conversion happens there, at the boundary, wrapping this.)
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

macro_rules! store_error_from_redb {
    ($($e:ty),*) => {$(
        impl From<$e> for StoreError {
            fn from(e: $e) -> StoreError {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
store_error_from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        match e {
            StoreError::Io(e) => e,
            other => io::Error::other(other),
        }
    }
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
    let marker = damaged_marker(data_dir, node_id);
    if let Ok(what) = std::fs::read_to_string(&marker) {
        return Err(OpenError::Damaged { path, what: what.trim().to_string() });
    }
    let db = match open_checked(&path) {
        Ok(db) => db,
        Err(Checked::Failed(source)) => return Err(OpenError::Database { path, source }),
        Err(Checked::Damaged(what)) => {
            let _ = std::fs::write(&marker, &what);
            return Err(OpenError::Damaged { path, what });
        }
    };
    tables::create_all(&db).map_err(|source| OpenError::Init { path: path.clone(), source })?;
    let expected = tables::FORMAT_VERSION;
    match stored_format(&db).map_err(|source| OpenError::Init { path: path.clone(), source })? {
        found if found == expected => {}
        found if (helios_core::format::OLDEST_CONVERTED_FORMAT..expected).contains(&found) => {
            let started = std::time::Instant::now();
            let converted = (|| {
                let txn = db.begin_write().map_err(StoreError::from)?;
                convert::database(&txn, found)?;
                txn.commit().map_err(StoreError::from)?;
                Ok(())
            })();
            converted.map_err(|source| OpenError::Convert { path: path.clone(), found, expected, source })?;
            tracing::info!(
                path = %path.display(),
                from = found,
                to = expected,
                took_ms = started.elapsed().as_millis(),
                "converted the database to this build's stored format"
            );
        }
        found => return Err(OpenError::Format { path, found, expected }),
    }
    ensure_indexes(&db).map_err(|source| OpenError::Init { path, source })?;
    Ok(Arc::new(db))
}

/// The stored format of the database's contents. A database with nothing in it yet is marked
/// with this build's format; one with data but no marker predates markers (format 1).
fn stored_format(db: &Database) -> Result<u32, redb::Error> {
    use redb::{ReadableTable, ReadableTableMetadata};
    use tables::{FORMAT_VERSION, META_FORMAT, RAFT_LOG, RAFT_META, SM_META};
    let txn = db.begin_write()?;
    let marked: Option<u32> = match txn.open_table(RAFT_META)?.get(META_FORMAT)? {
        Some(v) => Some(codec::decode(v.value()).map_err(redb::StorageError::Io)?),
        None => None,
    };
    if let Some(format) = marked {
        txn.abort()?;
        return Ok(format);
    }
    let empty = txn.open_table(RAFT_LOG)?.is_empty()?
        && txn.open_table(RAFT_META)?.is_empty()?
        && txn.open_table(SM_META)?.is_empty()?;
    if !empty {
        txn.abort()?;
        return Ok(1);
    }
    txn.open_table(RAFT_META)?.insert(META_FORMAT, codec::encode(&FORMAT_VERSION).as_slice())?;
    txn.commit()?;
    Ok(FORMAT_VERSION)
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

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use tables::{FORMAT_VERSION, META_FORMAT, META_VOTE, RAFT_META};

    fn set_meta(dir: &Path, key: &str, value: Option<u32>) {
        let db = Database::open(db_path(dir, 1)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(RAFT_META).unwrap();
            match value {
                Some(v) => meta.insert(key, codec::encode(&v).as_slice()).unwrap(),
                None => meta.remove(key).unwrap(),
            };
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_new_database_is_marked_with_this_builds_format_and_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1).unwrap());
        let db = open(dir.path(), 1).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn.open_table(RAFT_META).unwrap().get(META_FORMAT).unwrap().map(|v| v.value().to_vec());
        assert_eq!(format, Some(codec::encode(&FORMAT_VERSION)));
    }

    #[test]
    fn a_database_of_another_format_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1).unwrap());
        set_meta(dir.path(), META_VOTE, Some(42));
        set_meta(dir.path(), META_FORMAT, Some(FORMAT_VERSION + 1));
        let err = open(dir.path(), 1).unwrap_err();
        assert!(matches!(err, OpenError::Format { found, .. } if found == FORMAT_VERSION + 1), "{err}");
        assert!(err.to_string().contains("cannot convert it"), "{err}");

        // Data from before formats were marked is format 1: refused, not re-marked.
        set_meta(dir.path(), META_FORMAT, None);
        let err = open(dir.path(), 1).unwrap_err();
        assert!(matches!(err, OpenError::Format { found: 1, .. }), "{err}");
        let db = Database::open(db_path(dir.path(), 1)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(RAFT_META).unwrap();
        assert!(meta.get(META_FORMAT).unwrap().is_none(), "not marked by the refused open");
        assert_eq!(meta.get(META_VOTE).unwrap().map(|v| v.value().to_vec()), Some(codec::encode(&42u32)));
    }

    /// A database with jobs, as a server leaves it.
    fn database_with_data(dir: &Path) {
        let db = open(dir, 1).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut tables = apply::StateTables::open(&txn).unwrap();
            for n in 0..200 {
                let job = helios_core::Job::exec(&format!("job-{n}"), "true", vec![]);
                let eval = helios_core::Evaluation::new(
                    format!("e{n}"),
                    &job.name,
                    50,
                    helios_core::EvalTrigger::JobRegister,
                    helios_core::Timestamp(1),
                );
                tables.apply(helios_core::Command::RegisterJob { job, eval }).unwrap();
            }
            tables.finish().unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_damaged_database_is_refused_until_it_is_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        database_with_data(dir.path());
        // A disk that returns garbage: 64 random bytes in every 4 KiB page after the header
        // (most of a small file is free space, so damage in one place could miss the data).
        let path = db_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for page in bytes.chunks_mut(4096).skip(1) {
            for b in page.iter_mut().skip(512).take(64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = open(dir.path(), 1).expect_err("a damaged file opened");
        assert!(matches!(err, OpenError::Damaged { .. } | OpenError::Database { .. }), "{err}");
        assert!(err.to_string().contains("Move the file away"), "{err}");
        // Still refused the second time, whatever redb repaired while checking.
        let again = open(dir.path(), 1).expect_err("refused again");
        assert!(matches!(again, OpenError::Damaged { .. }), "{again}");
        // Moved away (with its marker), the server starts empty and catches up from its peers.
        std::fs::rename(&path, dir.path().join("damaged.db")).unwrap();
        std::fs::remove_file(damaged_marker(dir.path(), 1)).unwrap();
        open(dir.path(), 1).expect("a fresh database");
    }

    /// The report: 64 KiB appended to a stopped follower's file, which then started,
    /// served stale reads and panicked inside redb on a digest request. redb finds such a tail
    /// outside its allocated regions and ignores it; what matters is that the state it serves
    /// is whole: every table reads (the digest walks them all), with the same contents as before.
    #[test]
    fn bytes_appended_to_a_database_leave_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        database_with_data(dir.path());
        let digest = |db: &Database| read::state_digest(&db.begin_read().unwrap()).unwrap().digest;
        let before = digest(&open(dir.path(), 1).unwrap());
        let path = db_path(dir.path(), 1);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &[0xA5; 64 * 1024]).unwrap();
        drop(file);
        let db = open(dir.path(), 1).expect("an appended tail is outside redb's regions");
        assert_eq!(digest(&db), before);
        assert_eq!(read::jobs(&db.begin_read().unwrap()).unwrap().len(), 200);
    }
}
