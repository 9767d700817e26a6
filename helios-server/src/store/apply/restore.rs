//! Applying a snapshot restore: rows are staged by several small entries, then one entry swaps
//! them in for every state table, so no replica ever holds half of a restore.

use helios_core::command::Restored;
use helios_core::{CommandResponse, RejectionKind};
use redb::ReadableTable;

use super::{get, StateTable, StateTables};
use crate::store::codec::encode;
use crate::store::tables::{self, index_key, RESTORE_ID};

impl<'txn> StateTables<'txn> {
    pub(super) fn restore_begin(&mut self, restore_id: &str) -> Result<CommandResponse, redb::Error> {
        self.restore_staging.retain(|_, _| false)?;
        self.cluster.insert(RESTORE_ID, encode(restore_id).as_slice())?;
        Ok(CommandResponse::RestoreStaged)
    }

    pub(super) fn restore_rows(
        &mut self,
        restore_id: &str,
        table: &str,
        rows: Vec<(String, Vec<u8>)>,
    ) -> Result<CommandResponse, redb::Error> {
        if let Some(refusal) = self.not_restoring(restore_id)? {
            return Ok(refusal);
        }
        if table == redb::TableHandle::name(&tables::RESTORE_STAGING) || self.table_named(table).is_none() {
            return Ok(CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!("{table:?} is not a state table"),
            ));
        }
        for (key, value) in rows {
            self.restore_staging.insert(index_key(table, &key).as_str(), value.as_slice())?;
        }
        Ok(CommandResponse::RestoreStaged)
    }

    pub(super) fn restore_commit(&mut self, restore_id: &str, rows: u64) -> Result<CommandResponse, redb::Error> {
        if let Some(refusal) = self.not_restoring(restore_id)? {
            return Ok(refusal);
        }
        let staged = redb::ReadableTableMetadata::len(&self.restore_staging)?;
        if staged != rows {
            return Ok(CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!("restore {restore_id} staged {staged} rows, not the snapshot's {rows}"),
            ));
        }
        let staged: Vec<String> = tables::STATE_TABLES
            .iter()
            .map(|def| redb::TableHandle::name(def).to_string())
            .filter(|name| name != redb::TableHandle::name(&tables::RESTORE_STAGING))
            .collect();
        for name in &staged {
            if let Some(table) = self.table_named(name) {
                table.retain(|_, _| false)?;
            }
        }
        // Moved in key order, a table at a time, without holding the staged rows in memory.
        let mut from: Option<String> = None;
        loop {
            let batch: Vec<(String, Vec<u8>)> = {
                let range = match &from {
                    Some(key) => {
                        let mut rows = self.restore_staging.range(key.as_str()..)?;
                        rows.next().transpose()?;
                        rows
                    }
                    None => self.restore_staging.range::<&str>(..)?,
                };
                range
                    .take(10_000)
                    .map(|row| row.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
                    .collect::<Result<_, _>>()?
            };
            let Some((last, _)) = batch.last() else { break };
            from = Some(last.clone());
            for (key, value) in batch {
                let Some((table, key)) = key.split_once('\0') else { continue };
                if let Some(table) = self.table_named(table) {
                    table.insert(key, value.as_slice())?;
                }
            }
        }
        self.restore_staging.retain(|_, _| false)?;
        // What this batch kept in memory describes the old state. The indexes are rebuilt, as
        // after a snapshot install: a format-2 file's may lack rows or hold zeros this format
        // stores as none (invariant 18).
        self.touched.clear();
        self.rebuild_indexes()?;
        // Positions in the source's log mean nothing in this one. Left as they were, a restore
        // into a cluster whose log is shorter made every blocked plan look decided on old nodes
        // until this log passed the source's index: planned again, one entry each, in a loop.
        for key in tables::LOG_POSITIONS {
            let at: Option<u64> = get(&self.cluster, key)?;
            if at.is_some_and(|at| at > self.index) {
                self.cluster.insert(key, encode(&self.index).as_slice())?;
            }
        }
        // The stored format is this cluster's: the snapshot's rows are of it or older (a newer
        // snapshot is refused before the restore begins), and servers read older rows.
        match self.format {
            helios_core::format::OLDEST_WRITTEN_FORMAT => self.cluster.remove(tables::STORED_FORMAT)?,
            format => self.cluster.insert(tables::STORED_FORMAT, encode(&format).as_slice())?,
        };
        self.restored = true;
        Ok(CommandResponse::Restored(Restored { rows }))
    }

    fn not_restoring(&self, restore_id: &str) -> Result<Option<CommandResponse>, redb::Error> {
        let current: Option<String> = get(&self.cluster, RESTORE_ID)?;
        Ok((current.as_deref() != Some(restore_id)).then(|| {
            CommandResponse::rejected(
                RejectionKind::FailedPrecondition,
                format!("restore {restore_id} is not in progress (finished, or another restore began since)"),
            )
        }))
    }

    /// The open state table of that name.
    fn table_named(&mut self, name: &str) -> Option<&mut StateTable<'txn>> {
        Some(match name {
            "jobs" => &mut self.jobs,
            "job_versions" => &mut self.job_versions,
            "allocations" => &mut self.allocations,
            "nodes" => &mut self.nodes,
            "evaluations" => &mut self.evaluations,
            "requests" => &mut self.requests,
            "pending_evaluations" => &mut self.pending_evaluations,
            "blocked_jobs" => &mut self.blocked_jobs,
            "cluster" => &mut self.cluster,
            "allocs_by_job" => &mut self.allocs_by_job,
            "allocs_by_node" => &mut self.allocs_by_node,
            "evals_by_job" => &mut self.evals_by_job,
            "node_usage" => &mut self.node_usage,
            "job_alloc_counts" => &mut self.job_alloc_counts,
            "node_ports" => &mut self.node_ports,
            "acl_policies" => &mut self.acl_policies,
            "acl_tokens" => &mut self.acl_tokens,
            "acl_token_secrets" => &mut self.acl_token_secrets,
            "deployments" => &mut self.deployments,
            "client_requests" => &mut self.client_requests,
            "client_requests_by_time" => &mut self.client_requests_by_time,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    /// Every state table but the staging one can be restored into (a table added to
    /// `STATE_TABLES` must be added to `table_named` too).
    #[test]
    fn every_state_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path(), 1).unwrap();
        let txn = db.begin_write().unwrap();
        let mut tables = super::StateTables::open(&txn).unwrap();
        for def in crate::store::tables::STATE_TABLES {
            let name = redb::TableHandle::name(&def);
            let named = tables.table_named(name).is_some();
            assert_eq!(named, name != "restore_staging", "{name}");
        }
    }
}
