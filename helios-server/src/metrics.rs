//! Prometheus metrics, scraped from `--metrics-addr` (docs/metrics.md lists every one).
//!
//! Recorded through the `metrics` facade where things happen (API calls in `api::status_codes`,
//! log commits in `raft::log_store`, snapshots, scheduling rounds); without `--metrics-addr` no
//! recorder is installed and recording costs nothing. `watch` samples what is a state rather
//! than an event: Raft's term, role and indexes, and the nodes and pending evaluations.

use std::net::SocketAddr;
use std::time::Duration;

use helios_core::EvalStatus;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;
use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::cluster::Cluster;
use crate::store::read;

/// Histogram buckets, in seconds: from a fast fsync to a slow scheduling round.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often `watch` samples the state (the nodes, the pending evaluations).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What a metric is.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric a server exports: name, kind, whether it has labels, help. docs/metrics.md lists
/// the same (helios-cli/tests/metrics.rs holds the two together).
pub const METRICS: [(&str, Kind, bool, &str); 18] = [
    ("helios_api_requests_total", Kind::Counter, true, "gRPC calls answered, by method and status code"),
    (
        "helios_api_request_duration_seconds",
        Kind::Histogram,
        true,
        "time to answer a gRPC call (a stream: its first message), by method",
    ),
    ("helios_raft_term", Kind::Gauge, false, "this server's Raft term"),
    ("helios_raft_is_leader", Kind::Gauge, false, "1 while this server leads"),
    (
        "helios_raft_leader_changes_total",
        Kind::Counter,
        false,
        "times this server saw the leader change to another server",
    ),
    ("helios_raft_last_log_index", Kind::Gauge, false, "the last index in this server's Raft log"),
    ("helios_raft_commit_index", Kind::Gauge, false, "the last index this server knows committed"),
    ("helios_raft_applied_index", Kind::Gauge, false, "the last index this server applied to its state"),
    ("helios_raft_apply_lag_entries", Kind::Gauge, false, "committed log entries not yet applied here"),
    ("helios_raft_log_fsync_seconds", Kind::Histogram, false, "time to write and fsync a batch of Raft log writes"),
    ("helios_raft_snapshots_built_total", Kind::Counter, false, "snapshots this server built"),
    ("helios_raft_snapshot_installed_bytes", Kind::Gauge, false, "size of the last snapshot this server installed"),
    (
        "helios_scheduler_evaluations_total",
        Kind::Counter,
        true,
        "evaluations planned (leader), by the status their plan left",
    ),
    ("helios_scheduler_placements_total", Kind::Counter, false, "allocations placed by applied plans (leader)"),
    (
        "helios_scheduler_plan_rejections_total",
        Kind::Counter,
        false,
        "plans refused at apply because the state changed (leader)",
    ),
    ("helios_scheduler_pending_evaluations", Kind::Gauge, false, "evaluations waiting for the scheduler"),
    ("helios_scheduler_round_seconds", Kind::Histogram, false, "time of a scheduling round that had work (leader)"),
    ("helios_nodes", Kind::Gauge, true, "client nodes by status"),
];

/// Serves the Prometheus text exposition on `addr` (any path) for this process's metrics.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    declare(&METRICS);
    for status in [EvalStatus::Complete, EvalStatus::Blocked, EvalStatus::Pending] {
        drop(counter!("helios_scheduler_evaluations_total", "status" => status.as_str()));
    }
    Ok(())
}

/// Describes every metric, and shows the unlabelled ones from the start (at zero until
/// recorded), so a dashboard finds each before its first event.
fn declare(metrics: &[(&'static str, Kind, bool, &'static str)]) {
    for &(name, kind, labelled, help) in metrics {
        match kind {
            Kind::Counter => {
                describe_counter!(name, help);
                (!labelled).then(|| counter!(name));
            }
            Kind::Gauge => {
                describe_gauge!(name, help);
                (!labelled).then(|| gauge!(name));
            }
            Kind::Histogram => {
                describe_histogram!(name, help);
                (!labelled).then(|| histogram!(name));
            }
        }
    }
}

/// Samples Raft's metrics as they change, and the state every `SAMPLE_EVERY`, for the server's
/// lifetime.
pub async fn watch(cluster: Cluster) {
    let mut raft = cluster.raft.metrics();
    // The last leader seen (never forgotten during an election): a change is a different one.
    let mut leader = None;
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    loop {
        {
            let m = raft.borrow_watched();
            gauge!("helios_raft_term").set(m.current_term as f64);
            gauge!("helios_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
            let committed = m.local_committed.as_ref().map_or(0, |l| l.index());
            let applied = m.last_applied.as_ref().map_or(0, |l| l.index());
            gauge!("helios_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
            gauge!("helios_raft_commit_index").set(committed as f64);
            gauge!("helios_raft_applied_index").set(applied as f64);
            gauge!("helios_raft_apply_lag_entries").set(committed.saturating_sub(applied) as f64);
            if let Some(now) = m.current_leader {
                if leader.is_some_and(|before| before != now) {
                    counter!("helios_raft_leader_changes_total").increment(1);
                }
                leader = Some(now);
            }
        }
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            _ = sample.tick() => sample_state(&cluster).await,
        }
    }
}

/// The nodes by status and the evaluations waiting for the scheduler, as this server holds them.
async fn sample_state(cluster: &Cluster) {
    let counted = cluster.read_local(|txn| Ok((read::nodes(txn)?, read::pending_evaluation_count(txn)?))).await;
    let Ok((nodes, pending)) = counted else { return };
    for status in helios_core::NodeStatus::ALL {
        let count = nodes.iter().filter(|n| n.status == status).count();
        gauge!("helios_nodes", "status" => status.as_str()).set(count as f64);
    }
    gauge!("helios_scheduler_pending_evaluations").set(pending as f64);
}
