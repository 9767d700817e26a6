//! Finishing a rolling upgrade: once every voter announces a newer stored format than the
//! cluster's, the leader raises the cluster's format through Raft (`Command::RaiseFormat`).
//! From that entry on, every replica writes rows and messages for the new format and commands
//! that need it may be proposed. Until then a newer server writes what the older ones read.

use std::time::Duration;

use helios_core::command::answer::FormatRaised;
use helios_core::Command;
use openraft::type_config::async_runtime::watch::WatchReceiver;

use crate::cluster::{expect_answer, Cluster};

/// A raise that failed (no quorum, leadership lost) is tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Checks whenever a peer announces a new format and whenever Raft's view changes (this server
/// gains leadership, the membership changes): the moment the last voter runs the newer build,
/// or a leader of a finished upgrade is elected, the raise is proposed.
pub async fn run(cluster: Cluster) {
    let mut metrics = cluster.raft.metrics();
    loop {
        if let Err(e) = raise_if_every_voter_announces(&cluster).await {
            tracing::warn!(error = %e, "could not raise the cluster's stored format; retrying");
        }
        tokio::select! {
            _ = cluster.channels.formats.changed() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // Raft stopped
                }
            }
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

async fn raise_if_every_voter_announces(cluster: &Cluster) -> Result<(), crate::cluster::ClusterError> {
    let (stored, announced) = (cluster.stored_format(), cluster.announced_format());
    if !cluster.is_leader() || announced <= stored {
        return Ok(());
    }
    let response = cluster.propose_as_leader(Command::RaiseFormat { format: announced }).await?;
    if let Err(rejection) = expect_answer::<FormatRaised>(response)? {
        return Err(crate::cluster::ClusterError::Rejected(rejection));
    }
    tracing::info!(
        from = stored,
        to = announced,
        "every server runs the newer build: raised the cluster's stored format"
    );
    Ok(())
}
