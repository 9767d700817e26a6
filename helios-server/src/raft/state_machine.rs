//! The replicated state machine: Helios's tables in redb.
//!
//! Each batch of committed entries is applied in one write transaction. Those commits use
//! `Durability::None`: the Raft log holds the entries durably, every log write is an `Immediate`
//! commit that also makes all earlier `None` commits durable, and after a crash openraft re-applies
//! whatever the state machine had not yet made durable. The log is only purged (an `Immediate`
//! commit) behind a snapshot, i.e. behind state that commit makes durable.
//!
//! A snapshot is a read-only view of the tables (see `snapshot.rs`), so building one is nearly
//! free and writes nothing but a marker. Installing one replaces the tables, durably.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use helios_core::CommandResponse;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use super::{Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::events::Change;
use crate::signals::NodeSignals;
use crate::store::apply::StateTables;
use crate::store::codec::{decode, encode};
use crate::store::tables::{SM_HAS_SNAPSHOT, SM_LAST_APPLIED, SM_MEMBERSHIP, SM_META};

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    signals: NodeSignals,
}

impl StateMachine {
    pub fn new(db: Arc<Database>, signals: NodeSignals) -> StateMachine {
        StateMachine { db, signals }
    }
}

/// What applying a batch produced: each entry's response, and the allocations it wrote by node.
struct Applied {
    responses: Vec<CommandResponse>,
    touched: BTreeMap<String, BTreeSet<String>>,
    /// The batch held an ACL command (see `NodeSignals::acl_changed`).
    acl_changed: bool,
    /// The batch committed a snapshot restore: every watch and cache starts over.
    restored: bool,
    /// The cluster's stored format after the batch.
    format: u32,
    /// The rows of evented tables the batch wrote (`crate::events`).
    changes: Vec<Change>,
    /// The batch's last index.
    last_index: u64,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

fn read_meta<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    match table.get(key).map_err(io::Error::other)? {
        None => Ok(None),
        Some(v) => decode(v.value()).map(Some),
    }
}

fn apply_batch(db: &Database, entries: Vec<Entry>) -> io::Result<Applied> {
    let mut txn = db.begin_write().map_err(io::Error::other)?;
    txn.set_durability(redb::Durability::None).map_err(io::Error::other)?;
    let mut responses = Vec::with_capacity(entries.len());
    let mut last: Option<LogId> = None;
    let mut membership: Option<StoredMembership> = None;
    let touched;
    let restored;
    let format;
    let changes;
    let mut acl_changed = false;
    {
        let mut tables = StateTables::open(&txn).map_err(io::Error::other)?;
        for entry in entries {
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Normal(proposal) => {
                    acl_changed |= proposal.command.is_acl();
                    tables.index = log_id.index();
                    tracing::debug!(proposal = %proposal.request_id, index = log_id.index(), "applying");
                    let span = crate::telemetry::apply_span(&proposal.request_id, log_id.index());
                    let _applying = span.as_ref().map(tracing::Span::enter);
                    tables.apply_once(proposal).map_err(io::Error::other)?
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    CommandResponse::Empty
                }
            };
            responses.push(response);
            last = Some(log_id);
        }
        tables.finish().map_err(io::Error::other)?;
        touched = std::mem::take(&mut tables.touched);
        changes = std::mem::take(&mut tables.changes);
        restored = tables.restored;
        format = tables.format();
    }
    {
        let mut meta = txn.open_table(SM_META).map_err(io::Error::other)?;
        if let Some(last) = &last {
            meta.insert(SM_LAST_APPLIED, encode(last).as_slice()).map_err(io::Error::other)?;
        }
        if let Some(m) = &membership {
            meta.insert(SM_MEMBERSHIP, encode(m).as_slice()).map_err(io::Error::other)?;
        }
    }
    txn.commit().map_err(io::Error::other)?;
    let last_index = last.map_or(0, |l| l.index());
    Ok(Applied { responses, touched, acl_changed, restored, format, changes, last_index })
}

/// The snapshot as of now: the applied index and membership, and a view of the tables from the
/// same read transaction, so the three agree.
pub fn current_snapshot(db: &Database) -> io::Result<Snapshot> {
    let txn: ReadTransaction = db.begin_read().map_err(io::Error::other)?;
    let meta = {
        let sm = txn.open_table(SM_META).map_err(io::Error::other)?;
        SnapshotMeta {
            last_log_id: read_meta(&sm, SM_LAST_APPLIED)?,
            last_membership: read_meta(&sm, SM_MEMBERSHIP)?.unwrap_or_default(),
        }
    };
    Ok(Snapshot { meta, snapshot: SnapshotData::Local(Arc::new(txn)) })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(io::Error::other)?;
            let meta = txn.open_table(SM_META).map_err(io::Error::other)?;
            let last: Option<LogId> = read_meta(&meta, SM_LAST_APPLIED)?;
            let membership = read_meta(&meta, SM_MEMBERSHIP)?.unwrap_or_default();
            let format = crate::store::read::stored_format(&txn).map_err(io::Error::other)?;
            Ok((last, membership, format))
        })
        .await
        .map(|(last, membership, format)| {
            self.signals.stored_format.set(format);
            // What came before the tables as they are is not known here.
            self.signals.events.reset(last.map_or(0, |l| l.index()));
            (last, membership)
        })
    }

    async fn apply<Strm>(&mut self, mut stream: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut entries = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = stream.try_next().await? {
            entries.push(entry);
            responders.push(responder);
        }
        if entries.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let count = entries.len();
        let started = std::time::Instant::now();
        let Applied { responses, touched, acl_changed, restored, format, changes, last_index } =
            blocking(move || apply_batch(&db, entries)).await?;
        self.signals.stored_format.set(format);
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(20) {
            tracing::warn!(entries = count, took_ms = took.as_millis(), "slow state machine apply");
        }
        // ACLs first: an event stream that sees this batch then knows to check its token again
        // before sending anything the batch wrote.
        if acl_changed || restored {
            self.signals.acl_changed();
        }
        self.signals.notify(&touched);
        if restored {
            self.signals.notify_all();
            self.signals.events.reset(last_index);
        } else {
            self.signals.events.applied(changes, last_index);
        }
        // Answer callers only after the batch is committed, so a reply implies the state is
        // visible to reads on this server.
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let db = self.db.clone();
        let meta = meta.clone();
        let installed = meta.last_log_id.as_ref().map_or(0, |l| l.index());
        let format = blocking(move || {
            let mut txn = db.begin_write().map_err(io::Error::other)?;
            // The log behind this snapshot may be purged next: the state must be on disk first.
            txn.set_durability(redb::Durability::Immediate).map_err(io::Error::other)?;
            // Rows are written as they are read; a stream that fails its checks drops `txn`
            // uncommitted, leaving the tables as they were.
            let summary = snapshot.install_into(&meta, &txn)?;
            tracing::info!(format = summary.format, bytes = summary.bytes, "installed a snapshot");
            metrics::gauge!("helios_raft_snapshot_installed_bytes").set(summary.bytes as f64);
            {
                let mut sm = txn.open_table(SM_META).map_err(io::Error::other)?;
                match &meta.last_log_id {
                    Some(last) => sm.insert(SM_LAST_APPLIED, encode(last).as_slice()),
                    None => sm.remove(SM_LAST_APPLIED).map(|_| None),
                }
                .map_err(io::Error::other)?;
                sm.insert(SM_MEMBERSHIP, encode(&meta.last_membership).as_slice()).map_err(io::Error::other)?;
                sm.insert(SM_HAS_SNAPSHOT, [].as_slice()).map_err(io::Error::other)?;
            }
            // A snapshot from a server that predates the indexes lacks them; rebuilding also
            // guarantees they match the tables they index.
            crate::store::rebuild_indexes(&txn).map_err(io::Error::other)?;
            txn.commit().map_err(io::Error::other)?;
            let txn = db.begin_read().map_err(io::Error::other)?;
            crate::store::read::stored_format(&txn).map_err(io::Error::other)
        })
        .await?;
        self.signals.stored_format.set(format);
        self.signals.notify_all();
        self.signals.acl_changed();
        self.signals.events.reset(installed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let has_snapshot = {
                let txn = db.begin_read().map_err(io::Error::other)?;
                let sm = txn.open_table(SM_META).map_err(io::Error::other)?;
                sm.get(SM_HAS_SNAPSHOT).map_err(io::Error::other)?.is_some()
            };
            // The tables only ever move forward, so the current view is at least as new as the
            // last snapshot built: hand out the newest.
            if has_snapshot {
                current_snapshot(&db).map(Some)
            } else {
                Ok(None)
            }
        })
        .await
    }
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let snapshot = current_snapshot(&db)?;
            // Only a marker is written. `None` suffices: the log is purged behind this snapshot
            // by an `Immediate` commit, which makes this one (and the state it covers) durable.
            let mut txn = db.begin_write().map_err(io::Error::other)?;
            txn.set_durability(redb::Durability::None).map_err(io::Error::other)?;
            txn.open_table(SM_META)
                .map_err(io::Error::other)?
                .insert(SM_HAS_SNAPSHOT, [].as_slice())
                .map_err(io::Error::other)?;
            txn.commit().map_err(io::Error::other)?;
            metrics::counter!("helios_raft_snapshots_built_total").increment(1);
            Ok(snapshot)
        })
        .await
    }
}
