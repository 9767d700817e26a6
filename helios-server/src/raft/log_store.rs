//! The Raft log on redb, with group commit.
//!
//! Every write (append, vote, truncate, purge) goes to one writer thread in order. The thread
//! drains whatever has queued up while the previous fsync ran and commits it all in one durable
//! (`Durability::Immediate`) transaction, then acknowledges each write. Under load, one fsync covers
//! many client writes; with a single client, a write waits for exactly one fsync.
//!
//! Reads are served from an in-memory copy of the (unpurged) log, updated before the write is
//! queued: openraft only reads entries it has itself submitted, and the copy is bounded by the
//! snapshot policy, which purges the log behind each snapshot.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::{Entry, LogId, TypeConfig, Vote};
use crate::store::codec::{decode, encode};
use crate::store::tables::{META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_LOG, RAFT_META};

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Mutex<Cache>,
    writer: mpsc::Sender<WriteOp>,
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
}

enum WriteOp {
    Append { entries: Vec<(u64, Vec<u8>)>, done: IOFlushed<TypeConfig> },
    Meta { key: &'static str, value: Vec<u8>, done: Option<oneshot::Sender<io::Result<()>>> },
    TruncateFrom { index: u64, done: oneshot::Sender<io::Result<()>> },
    PurgeUpTo { index: u64, last_purged: Vec<u8>, done: oneshot::Sender<io::Result<()>> },
}

impl LogStore {
    /// Loads the log into memory and starts the writer thread, which ends when the last clone of
    /// the store is dropped.
    pub fn open(db: Arc<Database>) -> io::Result<LogStore> {
        let mut cache = Cache::default();
        {
            let txn = db.begin_read().map_err(io::Error::other)?;
            let log = txn.open_table(RAFT_LOG).map_err(io::Error::other)?;
            for row in log.iter().map_err(io::Error::other)? {
                let (index, bytes) = row.map_err(io::Error::other)?;
                cache.entries.insert(index.value(), decode(bytes.value())?);
            }
            let meta = txn.open_table(RAFT_META).map_err(io::Error::other)?;
            let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
                Ok(meta.get(key).map_err(io::Error::other)?.map(|v| v.value().to_vec()))
            };
            cache.vote = get(META_VOTE)?.map(|b| decode(&b)).transpose()?;
            cache.last_purged = get(META_LAST_PURGED)?.map(|b| decode(&b)).transpose()?;
            cache.committed = get(META_COMMITTED)?.map(|b| decode(&b)).transpose()?;
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || writer_loop(&db, &rx))?;
        Ok(LogStore { shared: Arc::new(Shared { cache: Mutex::new(cache), writer: tx }) })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // A poisoned lock means a panic while holding it, after which the cache may be half
        // updated; continuing would risk serving a wrong log.
        self.shared.cache.lock().expect("log cache lock poisoned")
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        self.shared.writer.send(op).map_err(|_| io::Error::other("raft log writer has stopped"))
    }

    async fn send_and_wait(&self, make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> WriteOp) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| io::Error::other("raft log writer has stopped"))?
    }
}

const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

fn writer_loop(db: &Database, rx: &mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = write_batch(db, &batch).map_err(|e| e.to_string());
        let took = started.elapsed();
        // Every acknowledged write waits on this commit: a slow disk shows up here first.
        if took > SLOW_COMMIT {
            tracing::warn!(ops = batch.len(), took_ms = took.as_millis(), "slow raft log commit");
        }
        for op in batch {
            let outcome = result.clone().map_err(io::Error::other);
            match op {
                WriteOp::Append { done, .. } => done.io_completed(outcome),
                WriteOp::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(outcome);
                    }
                }
                WriteOp::TruncateFrom { done, .. } | WriteOp::PurgeUpTo { done, .. } => {
                    let _ = done.send(outcome);
                }
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[WriteOp]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    {
        let mut log = txn.open_table(RAFT_LOG)?;
        let mut meta = txn.open_table(RAFT_META)?;
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                WriteOp::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
                WriteOp::TruncateFrom { index, .. } => {
                    log.retain_in(*index.., |_, _| false)?;
                }
                WriteOp::PurgeUpTo { index, last_purged, .. } => {
                    meta.insert(META_LAST_PURGED, last_purged.as_slice())?;
                    log.retain_in(..=*index, |_, _| false)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let cache = self.cache();
        Ok(cache.entries.range((start, end)).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.cache().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cache = self.cache();
        let last = cache.entries.values().next_back().map(|e| e.log_id());
        Ok(LogState { last_purged_log_id: cache.last_purged, last_log_id: last.or(cache.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let value = encode(vote);
        self.send_and_wait(|done| WriteOp::Meta { key: META_VOTE, value, done: Some(done) }).await?;
        self.cache().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Advisory (it lets a restarted server re-apply committed entries at once), so it rides
        // along with the next durable batch instead of waiting for its own fsync.
        if let Some(c) = &committed {
            self.send(WriteOp::Meta { key: META_COMMITTED, value: encode(c), done: None })?;
        }
        self.cache().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.cache().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut cache = self.cache();
            for entry in entries {
                let index = entry.index();
                encoded.push((index, encode(&entry)));
                cache.entries.insert(index, entry);
            }
        }
        self.send(WriteOp::Append { entries: encoded, done: callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.cache().entries.retain(|index, _| *index < from);
        self.send_and_wait(|done| WriteOp::TruncateFrom { index: from, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        {
            let mut cache = self.cache();
            cache.entries.retain(|index, _| *index > upto);
            cache.last_purged = Some(log_id);
        }
        let last_purged = encode(&log_id);
        self.send_and_wait(|done| WriteOp::PurgeUpTo { index: upto, last_purged, done }).await
    }
}
