//! The leader watches each follower's replication. openraft retries a follower that does not
//! take entries, and sends it a snapshot once the entries it needs are purged; but a follower
//! that keeps failing (a broken disk, a refused snapshot) would otherwise fall behind in silence.
//! One whose matched index stays put for `STALL_AFTER` while the leader's log moves on is logged
//! as stalled, and logged again when it catches up. `server members` shows every follower's lag.
//! A follower applies the same rule to itself against the cluster's commit index as the leader
//! last reported it, so the stall is logged on both sides.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::cluster::Cluster;
use crate::raft::NodeId;

/// A follower that takes no entry for this long while there are entries to take is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// What changed in a follower's replication.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Stalled { follower: NodeId, matched: u64, leader_last: u64, since: Duration },
    Recovered { follower: NodeId, matched: u64 },
}

/// Each follower's last matched index, since when, and whether it was reported stalled.
#[derive(Default)]
pub struct Watch {
    followers: BTreeMap<NodeId, (u64, Instant, bool)>,
}

impl Watch {
    /// Takes the leader's view at `now` (its last log index, each follower's matched index).
    pub fn observe(&mut self, now: Instant, leader_last: u64, matched: &BTreeMap<NodeId, u64>) -> Vec<Change> {
        self.followers.retain(|id, _| matched.contains_key(id));
        let mut changes = Vec::new();
        for (&follower, &index) in matched {
            let entry = self.followers.entry(follower).or_insert((index, now, false));
            if index != entry.0 || index >= leader_last {
                if entry.2 {
                    changes.push(Change::Recovered { follower, matched: index });
                }
                *entry = (index, now, false);
                continue;
            }
            let since = now.saturating_duration_since(entry.1);
            if !entry.2 && since >= STALL_AFTER {
                entry.2 = true;
                changes.push(Change::Stalled { follower, matched: index, leader_last, since });
            }
        }
        changes
    }
}

/// Watches the followers while this server leads, and its own log while it follows; a new
/// leader starts with a fresh view.
pub async fn run(cluster: Cluster) {
    let mut followers = Watch::default();
    let mut own = Watch::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let (leading, last, matched, cluster_committed) = {
            let metrics = cluster.raft.metrics();
            let m = metrics.borrow_watched();
            let matched: BTreeMap<NodeId, u64> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .filter(|(id, _)| **id != cluster.node_id)
                        .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index())))
                        .collect()
                })
                .unwrap_or_default();
            let cluster_committed = m.cluster_committed.as_ref().map_or(0, |c| c.index());
            (m.state == ServerState::Leader, m.last_log_index.unwrap_or(0), matched, cluster_committed)
        };
        if leading {
            own = Watch::default();
            report_followers(followers.observe(Instant::now(), last, &matched));
        } else {
            followers = Watch::default();
            // The cluster's commit index, as the leader last reported it (openraft's
            // `cluster_committed`), is where this server's log should get to; the same rule as
            // the leader's applies to its own log.
            report_own(own.observe(Instant::now(), cluster_committed, &BTreeMap::from([(cluster.node_id, last)])));
        }
    }
}

fn report_followers(changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Stalled { follower, matched, leader_last, since } => tracing::warn!(
                follower,
                matched,
                leader_last,
                stalled_s = since.as_secs(),
                "a follower takes no entries while the log moves on; openraft keeps retrying (see its log, and `server members`)"
            ),
            Change::Recovered { follower, matched } => {
                tracing::info!(follower, matched, "a stalled follower takes entries again")
            }
        }
    }
}

fn report_own(changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Stalled { matched, leader_last, since, .. } => tracing::warn!(
                last_log = matched,
                leader_commit = leader_last,
                stalled_s = since.as_secs(),
                "this server takes no entries while the leader's log moves on (see this log for failed appends or snapshots, and `server members` on the leader)"
            ),
            Change::Recovered { matched, .. } => tracing::info!(last_log = matched, "this server takes entries again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_reported_once_when_stalled_and_once_when_it_recovers() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = Watch::default();
        // Follower 3 keeps up with the leader; follower 2 stops at 50.
        let view = |two: u64, last: u64| BTreeMap::from([(2, two), (3, last)]);
        assert!(watch.observe(at(0), 100, &view(50, 100)).is_empty());
        assert!(watch.observe(at(9), 120, &view(50, 120)).is_empty(), "not yet");
        let stalled = watch.observe(at(10), 120, &view(50, 120));
        assert_eq!(stalled, [Change::Stalled { follower: 2, matched: 50, leader_last: 120, since: STALL_AFTER }]);
        assert!(watch.observe(at(30), 130, &view(50, 130)).is_empty(), "reported once");
        assert_eq!(watch.observe(at(31), 130, &view(60, 130)), [Change::Recovered { follower: 2, matched: 60 }]);
    }

    #[test]
    fn a_follower_behind_the_commit_it_hears_reports_itself() {
        // As `run` uses it on a follower: its own last log index against the leader's commit.
        let start = Instant::now();
        let mut own = Watch::default();
        let me = |last: u64| BTreeMap::from([(2, last)]);
        assert!(own.observe(start, 80, &me(40)).is_empty());
        let stalled = own.observe(start + STALL_AFTER, 90, &me(40));
        assert!(matches!(stalled[..], [Change::Stalled { matched: 40, leader_last: 90, .. }]), "{stalled:?}");
        let caught_up = own.observe(start + STALL_AFTER * 2, 90, &me(90));
        assert_eq!(caught_up, [Change::Recovered { follower: 2, matched: 90 }]);
    }

    #[test]
    fn an_idle_cluster_is_not_a_stall() {
        let start = Instant::now();
        let mut watch = Watch::default();
        let caught_up = BTreeMap::from([(2, 100)]);
        assert!(watch.observe(start, 100, &caught_up).is_empty());
        assert!(watch.observe(start + Duration::from_secs(60), 100, &caught_up).is_empty());
    }
}
