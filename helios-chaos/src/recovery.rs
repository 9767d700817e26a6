//! `helios-chaos recovery`: how long a SIGKILLed server takes to come back with many
//! allocations stored. Fills a three-server cluster with `helios-cli bench place` (simulated
//! agents, real Raft), then SIGKILLs a follower and the leader in turn and times each restart:
//! process start to serving, and to having applied everything the leader had.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cluster::{self, Cluster, Options};
use crate::report::Latencies;

#[derive(Args, Debug)]
pub struct RecoveryArgs {
    /// Allocations to store before the kills (multiples of 1,000).
    #[arg(long, default_value_t = 10_000)]
    pub allocations: u64,
    /// Kill-and-restart rounds (each kills a follower, then the leader).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[command(flatten)]
    pub dirs: crate::Dirs,
}

pub async fn run(args: RecoveryArgs) -> Result<()> {
    if args.allocations == 0 || !args.allocations.is_multiple_of(1_000) {
        bail!("--allocations must be a positive multiple of 1000, got {}", args.allocations);
    }
    let (work, _tmp) = cluster::work_dir(args.dirs.work_dir.as_deref())?;
    let bin_dir = args.dirs.bin_dir();
    // Simulated agents stop heartbeating when the fill ends: a long TTL keeps their nodes (and
    // allocations) as they are, so no churn overlaps the measurement.
    let opts = Options {
        bin_dir: &bin_dir,
        work_dir: &work,
        servers: 3,
        namespaces: false,
        snapshot_every: 10_000,
        heartbeat_ttl_secs: 3_600,
    };
    let mut cluster = Cluster::start(opts).await?;
    fill(&cluster, &bin_dir, args.allocations)?;
    let ids: Vec<u64> = cluster.servers.keys().copied().collect();
    let bytes = ids.iter().map(|i| dir_size(&work.join(format!("server-{i}")))).max().unwrap_or(0);
    println!("stored {} allocations; largest data directory {} MiB", args.allocations, bytes >> 20);

    let (mut serving, mut caught_up) = (Latencies::default(), Latencies::default());
    for _ in 0..args.rounds {
        for kill_leader in [false, true] {
            let leader = cluster.wait_for_leader(&ids, Duration::from_secs(60)).await?;
            let victim = if kill_leader { leader } else { *ids.iter().find(|&&i| i != leader).expect("3 servers") };
            let target = cluster.api.digest(leader).await?.applied_index;
            let member = cluster.servers.get_mut(&victim).expect("known server");
            member.kill();
            member.start()?;
            let start = Instant::now();
            serving.record(crate::procs::wait_serving(&cluster.urls[&victim], Duration::from_secs(600)).await?);
            loop {
                if cluster.api.digest(victim).await.is_ok_and(|d| d.applied_index >= target) {
                    caught_up.record(start.elapsed());
                    break;
                }
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("server {victim} did not catch up within 10 minutes");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    for (what, l) in [("start to serving", serving), ("start to applied up to the leader", caught_up)] {
        let s = l.summary();
        println!(
            "{what}: {} restarts, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            s.count, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    Ok(())
}

/// Stores `allocations` allocations with `helios-cli bench place`: 1,000 simulated agents, jobs
/// of 1,000 allocations each.
fn fill(cluster: &Cluster, bin_dir: &std::path::Path, allocations: u64) -> Result<()> {
    let cli = crate::procs::binary(bin_dir, "helios-cli")?;
    let jobs = allocations / 1_000;
    // A quarter more room than the allocations need, so an uneven spread still fits.
    let per_node = (allocations / 1_000 * 5 / 4).max(16);
    let status = Command::new(cli)
        .args(["--server-addr", &cluster.urls.values().cloned().collect::<Vec<_>>().join(",")])
        .args(["bench", "place", "--agents", "1000", "--count", "1000", "--jobs", &jobs.to_string()])
        .args(["--node-cpu-mhz", &(per_node * 100).to_string(), "--node-memory-mb", &(per_node * 64).to_string()])
        .status()
        .context("running helios-cli bench place")?;
    if !status.success() {
        bail!("helios-cli bench place failed ({status})");
    }
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}
