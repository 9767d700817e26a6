//! Converting stored values of an older format to this build's (`helios_core::format`).
//!
//! Format 2 stored every record as its version-1 body without a version tag. Converting reads
//! each such value (`read_untagged`) and writes it back tagged, migrating it on the way (a Raft
//! entry's proposal drops the commands format 3 removed). From format 3 on every record carries
//! its own version and is migrated whenever it is read, so later record changes need no pass
//! over the database; a pass is only needed if the table layout itself changes.

use std::io;

use helios_core::acl::{AclPolicy, AclToken};
use helios_core::format::read_untagged;
use helios_core::{Allocation, CommandResponse, Evaluation, Job, Node, Resources};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, encode};
use super::tables::{self, FORMAT_VERSION, META_FORMAT, RAFT_LOG, RAFT_META};
use super::StoreError;
use crate::raft::Entry;

/// Rows converted per batch: bounds the memory a conversion holds, whatever the table's size.
const BATCH: usize = 10_000;

/// Converts a whole database of `format` to this build's, inside `txn` (all or nothing: a crash
/// part way leaves the old format, which the next open converts again).
pub fn database(txn: &WriteTransaction, format: u32) -> Result<(), ConvertError> {
    match format {
        // Rewritten for a cluster that has not raised its format (as a converted one has not).
        2 => Ok(helios_core::format::write_for(helios_core::format::OLDEST_WRITTEN_FORMAT, || from_format_2(txn))?),
        // Tagged records are read as they are: only the marker changes.
        3.. if format < FORMAT_VERSION => Ok(mark(txn)?),
        _ => Err(ConvertError::Unsupported(format)),
    }
}

fn mark(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(RAFT_META)?.insert(META_FORMAT, encode(&FORMAT_VERSION).as_slice())?;
    Ok(())
}

fn from_format_2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut log = txn.open_table(RAFT_LOG)?;
    let mut last: Option<u64> = None;
    loop {
        let batch: Vec<(u64, Vec<u8>)> = {
            let range = match last {
                Some(after) => log.range(after + 1..)?,
                None => log.range(0..)?,
            };
            range
                .take(BATCH)
                .map(|row| -> Result<_, StoreError> {
                    let (index, bytes) = row?;
                    Ok((index.value(), retag::<Entry>(bytes.value())?))
                })
                .collect::<Result<_, _>>()?
        };
        let Some((index, _)) = batch.last() else { break };
        last = Some(*index);
        for (index, bytes) in batch {
            log.insert(index, bytes.as_slice())?;
        }
    }
    for def in tables::STATE_TABLES {
        let name = redb::TableHandle::name(&def).to_string();
        let mut table = txn.open_table(def)?;
        let mut after: Option<String> = None;
        loop {
            let batch: Vec<(String, Vec<u8>)> = {
                let range = match &after {
                    Some(key) => {
                        let mut rows = table.range(key.as_str()..)?;
                        rows.next().transpose()?; // the last key of the previous batch
                        rows
                    }
                    None => table.range::<&str>(..)?,
                };
                range
                    .take(BATCH)
                    .map(|row| -> Result<_, StoreError> {
                        let (key, value) = row?;
                        Ok((key.value().to_string(), row_from_format_2(&name, value.value())?))
                    })
                    .collect::<Result<_, _>>()?
            };
            let Some((key, _)) = batch.last() else { break };
            after = Some(key.clone());
            for (key, value) in batch {
                table.insert(key.as_str(), value.as_slice())?;
            }
        }
    }
    // Format 2 kept a zero where a rebuild of the indexes writes no row (see
    // `StateTables::finish`); format 3 is the same bytes either way.
    txn.open_table(tables::NODE_USAGE)?.retain(|_, v| decode::<Resources>(v).ok() != Some(Resources::ZERO))?;
    txn.open_table(tables::JOB_ALLOC_COUNTS)?
        .retain(|_, v| decode::<tables::AllocCounts>(v).ok() != Some(tables::AllocCounts::default()))?;
    mark(txn)
}

/// One state-table row of format 2, in this build's format. Tables of plain values (ids,
/// indexes, counters) are unchanged: only records carry versions.
pub fn row_from_format_2(table: &str, value: &[u8]) -> io::Result<Vec<u8>> {
    let is = |def: TableDefinition<&str, &[u8]>| redb::TableHandle::name(&def) == table;
    if is(tables::JOBS) || is(tables::JOB_VERSIONS) {
        retag::<Job>(value)
    } else if is(tables::ALLOCATIONS) {
        retag::<Allocation>(value)
    } else if is(tables::NODES) {
        retag::<Node>(value)
    } else if is(tables::EVALUATIONS) {
        retag::<Evaluation>(value)
    } else if is(tables::REQUESTS) {
        retag::<CommandResponse>(value)
    } else if is(tables::ACL_POLICIES) {
        retag::<AclPolicy>(value)
    } else if is(tables::ACL_TOKENS) {
        retag::<AclToken>(value)
    } else {
        Ok(value.to_vec())
    }
}

fn retag<T: Serialize + DeserializeOwned>(untagged: &[u8]) -> io::Result<Vec<u8>> {
    let value: T = read_untagged(|| decode(untagged))?;
    // Format 2's records are what a cluster of the oldest written format holds.
    Ok(helios_core::format::write_for(helios_core::format::OLDEST_WRITTEN_FORMAT, || encode(&value)))
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("format {0} cannot be converted by this build (it converts formats 2 and 3)")]
    Unsupported(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}
