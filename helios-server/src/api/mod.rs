//! The public gRPC services. Handlers validate input, stamp IDs and timestamps, and go through
//! `Cluster` for every write and current read; they hold no state of their own.

pub mod cluster_service;
pub mod errors;
pub mod jobs;
pub mod nodes;

use std::time::{SystemTime, UNIX_EPOCH};

use helios_core::Timestamp;

/// The wall clock, read here (in the handler) and nowhere in the state machine.
pub fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// A fresh unique id for an evaluation or allocation. Version 7 UUIDs start with the time, so new
/// ids sort last: inserts append to the end of redb's B-trees instead of dirtying a random page
/// each, and listings come out in creation order.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
