use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
///
/// Pure logic never reads the clock: callers pass `now` in, and the server stamps it into a Raft
/// command before proposing it, so every replica applies the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn as_millis(self) -> u64 {
        self.0
    }
}
