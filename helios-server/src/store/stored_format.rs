//! The cluster's stored format as this server last applied it (`Command::RaiseFormat`), shared
//! by the state machine (which sets it), the leader's format checks and the peer network (which
//! write for it).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use helios_core::format::OLDEST_WRITTEN_FORMAT;

#[derive(Clone, Debug)]
pub struct StoredFormat(Arc<AtomicU32>);

impl Default for StoredFormat {
    fn default() -> StoredFormat {
        StoredFormat(Arc::new(AtomicU32::new(OLDEST_WRITTEN_FORMAT)))
    }
}

impl StoredFormat {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    /// Records what the state machine holds (a snapshot install may replace it by any value).
    pub fn set(&self, format: u32) {
        self.0.store(format, Ordering::SeqCst);
    }
}
