//! The server's only sources of time and identity. Handlers stamp these into commands before
//! proposing them, so the state machine never reads a clock or makes an id (every replica must
//! apply identical values).

use std::time::{SystemTime, UNIX_EPOCH};

use helios_core::Timestamp;

/// The wall clock.
pub fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// A fresh unique id (evaluations, allocations, requests). Version 7 UUIDs start with the time, so
/// new ids sort last: inserts append to the end of redb's B-trees instead of dirtying a random
/// page each, and listings come out in creation order.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
