//! Everything openraft: the type configuration, the redb-backed log store and state machine, the
//! gRPC network between servers, and the peer service that receives Raft traffic.
//!
//! openraft is pinned to an alpha; keeping it behind this module means an upgrade touches only
//! these files.

pub mod log_store;
pub mod network;
pub mod peer_auth;
pub mod peer_service;
pub mod snapshot;
pub mod state_machine;

use std::sync::Arc;

use helios_core::{CommandResponse, Proposal};

openraft::declare_raft_types!(
    /// Helios's Raft types: proposals (commands) from `helios_core`, servers addressed by `host:port`.
    pub TypeConfig:
        D = Proposal,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub use snapshot::SnapshotData;

/// Raft timing (openraft's defaults). A follower that stops hearing from the leader waits out
/// the leader's lease (`election_timeout_max`) and then its own random election timeout
/// (`election_timeout_min..max`) before it campaigns, so a lost leader is replaced 450-600 ms
/// after its last heartbeat (measured in `docs/reliability.md`). Heartbeats every 50 ms: a
/// leader must stall for nine of them before anyone campaigns. A snapshot is taken every
/// `snapshot_every` entries and the log behind it is purged, keeping at most that many (and at
/// most 1,000) entries for followers that lag a little; one further behind gets the snapshot.
pub fn raft_config(snapshot_every: u64) -> Arc<openraft::Config> {
    let keep = snapshot_every.min(1_000);
    let config = openraft::Config {
        cluster_name: "helios".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: keep,
        purge_batch_size: keep.clamp(1, 256),
        // Bounded so that a batch of the largest entries still fits one peer message.
        max_payload_entries: helios_core::limits::MAX_ENTRIES_PER_APPEND,
        // A leader replicates entries before its own log write is flushed, so a majority of
        // followers can commit entries that a SIGKILLed leader loses from its own log. Restored
        // as leader in the same term (openraft's default), it would write different entries
        // under the same (term, index) ids, and followers holding the old ones would keep them:
        // replicas diverge (found by `helios-chaos crash`). A restarted leader must win a new
        // election, which only a server holding every committed entry can.
        enable_leader_restore: Some(false),
        // A server cut off from the others campaigns in vain, raising its term each time. Once
        // back, that term outranks the leader's: it refuses the leader's entries, and when the
        // leader is lost it outbids every candidate with a longer log, round after round, so
        // elections took seconds (found by `helios-chaos faults`). With pre-vote it first asks
        // whether it could win, and raises its term only if a majority says yes.
        enable_pre_vote: Some(true),
        // A server whose damaged database was moved away (docs/operations.md) comes back with an
        // empty log. openraft's leader otherwise refuses (panics on) a follower whose log went
        // backwards, so that server could never catch up; allowed, the leader starts its
        // replication over, and a snapshot brings it back.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    // validate() only fails for inconsistent timings, which the constants above are not.
    Arc::new(config.validate().expect("static raft config is valid"))
}
