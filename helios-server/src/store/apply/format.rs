//! Applying `RaiseFormat`: the cluster's stored format, which every replica writes rows for.

use helios_core::format::{FORMAT_VERSION, OLDEST_WRITTEN_FORMAT};
use helios_core::CommandResponse;

use super::{get, StateTable, StateTables};
use crate::store::codec::encode;
use crate::store::tables::STORED_FORMAT;

/// The cluster's stored format as `cluster` holds it.
pub fn stored_format(cluster: &StateTable<'_>) -> Result<u32, redb::Error> {
    Ok(get::<u32>(cluster, STORED_FORMAT)?.unwrap_or(OLDEST_WRITTEN_FORMAT))
}

impl StateTables<'_> {
    pub(super) fn raise_format(&mut self, format: u32) -> Result<CommandResponse, redb::Error> {
        if format > FORMAT_VERSION {
            // The leader raises only to a format every voter announced: this server is a
            // learner or a voter rolled back after the raise. Writing on would be writing rows
            // the others misread; the store's panic hook ends the process with this message.
            panic!(
                "the cluster's stored format was raised to {format}, but this server's build writes format \
                 {FORMAT_VERSION}: run a build of format {format} or later on it (docs/operations.md)"
            );
        }
        if format > self.format {
            // What the batch kept so far is written for the format it was applied under, as a
            // replica that applied this entry in a batch of its own would have.
            self.finish()?;
            self.cluster.insert(STORED_FORMAT, encode(&format).as_slice())?;
            self.format = format;
        }
        Ok(CommandResponse::FormatRaised)
    }
}
