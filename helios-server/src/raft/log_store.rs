//! The Raft log on redb, with group commit.
//!
//! Every write (append, vote, truncate, purge) goes to one writer thread in order. The thread
//! drains whatever has queued up while the previous fsync ran and commits it all in one durable
//! (`Durability::Immediate`) transaction, then acknowledges each write. Under load, one fsync covers
//! many client writes; with a single client, a write waits for exactly one fsync.
//!
//! Reads are served from an in-memory copy of the log's tail, updated before the write is
//! queued: openraft only reads entries it has itself submitted. The copy is bounded by bytes
//! (`CACHE_BYTES`): beyond it, the oldest entries that are both committed (never truncated) and
//! written are dropped from memory and read back from redb when asked for (a follower far
//! behind; recent pages are in redb's own cache, so that costs a decode). The snapshot policy
//! alone bounded it by entry count, and 4,400 entries carrying 100,000 placements kept a leader
//! at ~400 MiB until the next snapshot. The bound is small because decoded entries take several
//! times their encoded size: 32 MiB of encoded tail held ~150 MiB on every server after a burst,
//! and 1 MiB costs no throughput (docs/performance.md, "Leader memory after 100,000 placements").

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The log entries kept in memory at most, by encoded size (the newest entry is always kept).
pub const CACHE_BYTES: usize = 1024 * 1024;

struct Shared {
    cache: Mutex<Cache>,
    writer: mpsc::Sender<WriteOp>,
    db: Arc<Database>,
    /// The highest index the writer thread has committed to redb: only entries up to it may be
    /// dropped from memory.
    written: Arc<AtomicU64>,
}

#[derive(Default)]
struct Cache {
    /// The log's tail: each entry with its encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
    limit: usize,
    /// The newest entry dropped from memory (still in redb, unless purged since).
    last_dropped: Option<LogId>,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
}

impl Cache {
    fn insert(&mut self, index: u64, entry: Entry, size: usize) {
        if let Some((_, old)) = self.entries.insert(index, (entry, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn remove_where(&mut self, mut remove: impl FnMut(u64) -> bool) {
        let mut freed = 0;
        self.entries.retain(|index, (_, size)| {
            let gone = remove(*index);
            if gone {
                freed += *size;
            }
            !gone
        });
        self.bytes -= freed;
    }

    /// Drops the oldest entries beyond the limit that are committed and written up to `written`.
    fn shrink(&mut self, written: u64) {
        let droppable = self.committed.map_or(0, |c| c.index()).min(written);
        while self.bytes > self.limit && self.entries.len() > 1 {
            let Some(entry) = self.entries.first_entry() else { break };
            if *entry.key() > droppable {
                break;
            }
            let (dropped, size) = entry.remove();
            self.bytes -= size;
            self.last_dropped = Some(dropped.log_id());
        }
    }

    /// The first index held in memory; entries before it (after the purged ones) are in redb.
    fn first_cached(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }
}

enum WriteOp {
    Append { entries: Vec<(u64, Vec<u8>)>, done: IOFlushed<TypeConfig> },
    Meta { key: &'static str, value: Vec<u8>, done: Option<oneshot::Sender<io::Result<()>>> },
    TruncateFrom { index: u64, done: oneshot::Sender<io::Result<()>> },
    PurgeUpTo { index: u64, last_purged: Vec<u8>, done: oneshot::Sender<io::Result<()>> },
}

impl LogStore {
    /// Loads the log's tail into memory and starts the writer thread, which ends when the last
    /// clone of the store is dropped.
    pub fn open(db: Arc<Database>) -> io::Result<LogStore> {
        LogStore::open_with_limit(db, CACHE_BYTES)
    }

    /// `open` with another memory limit (tests use a small one).
    pub fn open_with_limit(db: Arc<Database>, limit: usize) -> io::Result<LogStore> {
        let mut cache = Cache { limit, ..Cache::default() };
        let mut last_index = 0;
        {
            let txn = db.begin_read().map_err(io::Error::other)?;
            let meta = txn.open_table(RAFT_META).map_err(io::Error::other)?;
            let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
                Ok(meta.get(key).map_err(io::Error::other)?.map(|v| v.value().to_vec()))
            };
            cache.vote = get(META_VOTE)?.map(|b| decode(&b)).transpose()?;
            cache.last_purged = get(META_LAST_PURGED)?.map(|b| decode(&b)).transpose()?;
            cache.committed = get(META_COMMITTED)?.map(|b| decode(&b)).transpose()?;
            let log = txn.open_table(RAFT_LOG).map_err(io::Error::other)?;
            for row in log.iter().map_err(io::Error::other)? {
                let (index, bytes) = row.map_err(io::Error::other)?;
                let bytes = bytes.value();
                cache.insert(index.value(), decode(bytes)?, bytes.len());
                last_index = index.value();
                // Everything here is written; keep memory bounded while loading a long log.
                cache.shrink(last_index);
            }
        }
        let written = Arc::new(AtomicU64::new(last_index));
        let (tx, rx) = mpsc::channel();
        let (writer_db, writer_written) = (db.clone(), written.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx, &writer_written))?;
        Ok(LogStore { shared: Arc::new(Shared { cache: Mutex::new(cache), writer: tx, db, written }) })
    }

    /// Entries `from..to` read back from redb (those dropped from memory).
    fn read_written(db: &Database, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        let txn = db.begin_read().map_err(io::Error::other)?;
        let log = txn.open_table(RAFT_LOG).map_err(io::Error::other)?;
        let mut entries = Vec::new();
        for row in log.range(from..to).map_err(io::Error::other)? {
            entries.push(decode(row.map_err(io::Error::other)?.1.value())?);
        }
        Ok(entries)
    }

    /// Bytes of entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cache().bytes
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

fn writer_loop(db: &Database, rx: &mpsc::Receiver<WriteOp>, written: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = write_batch(db, &batch).map_err(|e| e.to_string());
        if result.is_ok() {
            let appended = batch.iter().filter_map(|op| match op {
                WriteOp::Append { entries, .. } => entries.last().map(|(index, _)| *index),
                _ => None,
            });
            if let Some(last) = appended.max() {
                written.fetch_max(last, Ordering::Release);
            }
        }
        let took = started.elapsed();
        metrics::histogram!("helios_raft_log_fsync_seconds").record(took.as_secs_f64());
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
        use std::ops::Bound;
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let (from_disk, cached) = {
            let cache = self.cache();
            let cached: Vec<Entry> = cache.entries.range((start, end)).map(|(_, (e, _))| e.clone()).collect();
            // The part of the range before the first cached entry was dropped from memory.
            let first = cache.first_cached().unwrap_or(u64::MAX);
            let from = match start {
                Bound::Included(i) => i,
                Bound::Excluded(i) => i + 1,
                Bound::Unbounded => 0,
            };
            let to = match end {
                Bound::Included(i) => i.saturating_add(1),
                Bound::Excluded(i) => i,
                Bound::Unbounded => u64::MAX,
            }
            .min(first);
            ((from < to).then_some((from, to)), cached)
        };
        let Some((from, to)) = from_disk else { return Ok(cached) };
        let db = self.shared.db.clone();
        let mut entries = tokio::task::spawn_blocking(move || LogStore::read_written(&db, from, to))
            .await
            .map_err(io::Error::other)??;
        entries.extend(cached);
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.cache().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cache = self.cache();
        let last = cache.entries.values().next_back().map(|(e, _)| e.log_id());
        // The newest entry is never dropped, so `last_dropped` stands in only for a log whose
        // tail was truncated below it, which committed entries never are.
        let last = last.or(cache.last_dropped).filter(|l| Some(l.index()) > cache.last_purged.map(|p| p.index()));
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
        let mut cache = self.cache();
        cache.committed = committed;
        cache.shrink(self.shared.written.load(Ordering::Acquire));
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
                let bytes = encode(&entry);
                cache.insert(index, entry, bytes.len());
                encoded.push((index, bytes));
            }
            cache.shrink(self.shared.written.load(Ordering::Acquire));
        }
        self.send(WriteOp::Append { entries: encoded, done: callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.cache().remove_where(|index| index >= from);
        self.send_and_wait(|done| WriteOp::TruncateFrom { index: from, done }).await?;
        // Entries appended at these indexes from now on are not written yet, whatever was
        // written there before. Every earlier write has been committed (the truncation waited
        // for it), and openraft appends nothing while this call runs.
        self.shared.written.fetch_min(from.saturating_sub(1), Ordering::AcqRel);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        {
            let mut cache = self.cache();
            cache.remove_where(|index| index <= upto);
            cache.last_purged = Some(log_id);
            if cache.last_dropped.is_some_and(|d| d.index() <= upto) {
                cache.last_dropped = None;
            }
        }
        let last_purged = encode(&log_id);
        self.send_and_wait(|done| WriteOp::PurgeUpTo { index: upto, last_purged, done }).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1), index)
    }

    /// An entry of about `size` bytes (a blank entry carries nothing).
    fn entry(index: u64, size: usize) -> Entry {
        let command = helios_core::Command::CreateEvaluations { evals: vec![] };
        let proposal = helios_core::Proposal::new("x".repeat(size), helios_core::Timestamp(index), command);
        Entry::new_normal(log_id(index), proposal)
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("flushed").expect("written");
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    #[tokio::test]
    async fn memory_stays_bounded_and_dropped_entries_are_read_back_from_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let db = crate::store::open(dir.path(), 1).expect("open");
        let mut store = LogStore::open_with_limit(db.clone(), 10_000).expect("log");
        for batch in 0..10u64 {
            append(&mut store, (1..=10).map(|i| entry(batch * 10 + i, 1_000)).collect()).await;
        }
        // Nothing is committed yet: every entry could still be truncated, so all stay.
        assert!(store.cached_bytes() > 100_000, "{}", store.cached_bytes());

        store.save_committed(Some(log_id(95))).await.expect("commit");
        assert!(store.cached_bytes() <= 10_000 + 1_100, "bounded: {}", store.cached_bytes());
        let all = store.try_get_log_entries(1..=100).await.expect("read");
        assert_eq!(indexes(&all), (1..=100).collect::<Vec<_>>(), "memory and disk together");
        assert_eq!(indexes(&store.try_get_log_entries(3..7).await.expect("read")), [3, 4, 5, 6]);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(100)));

        // Uncommitted entries stay in memory and can be truncated; purged ones are gone.
        store.truncate_after(Some(log_id(97))).await.expect("truncate");
        assert_eq!(store.shared.written.load(Ordering::Acquire), 97, "what comes next is not written yet");
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(97)));
        store.purge(log_id(50)).await.expect("purge");
        assert_eq!(indexes(&store.try_get_log_entries(51..=97).await.expect("read")), (51..=97).collect::<Vec<_>>());

        // A restart loads only the tail into memory, and reads the rest from disk.
        drop(store);
        let mut reopened = LogStore::open_with_limit(db, 10_000).expect("reopen");
        assert!(reopened.cached_bytes() <= 10_000 + 1_100, "{}", reopened.cached_bytes());
        let state = reopened.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(50)), Some(log_id(97))));
        assert_eq!(indexes(&reopened.try_get_log_entries(51..).await.expect("read")), (51..=97).collect::<Vec<_>>());
    }
}
