//! `helios-chaos crash`: SIGKILL servers at random points during heavy writes and restart them on
//! the same data; no acknowledged write may be lost, and every server must end with the same
//! state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use tokio::sync::watch;

use crate::api::{Servers, CALL_TIMEOUT};
use crate::check::Verdict;
use crate::cluster::{Cluster, Options};
use crate::report::{Latencies, Report};
use crate::rng::Rng;

#[derive(Args, Debug)]
pub struct CrashArgs {
    /// SIGKILLs to inject.
    #[arg(long, default_value_t = 100)]
    pub kills: u32,
    /// Concurrent writers, each keeping one submission in flight.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    #[command(flatten)]
    pub run: crate::RunOptions,
}

#[derive(Default)]
struct Writes {
    acked: BTreeSet<String>,
    unknown: u64,
}

pub async fn run(args: CrashArgs) -> Result<Report> {
    let seed = args.run.seed();
    println!("helios-chaos crash: seed {seed}, {} kills", args.kills);
    let args = &args;
    args.run.in_work_dir(|work| async move { run_in(args, seed, &work).await }).await
}

async fn run_in(args: &CrashArgs, seed: u64, work: &std::path::Path) -> Result<Report> {
    let mut rng = Rng::new(seed);
    let bin_dir = args.run.dirs.bin_dir();
    // Frequent snapshots, so kills also land during snapshot building and log purging.
    let opts = Options {
        bin_dir: &bin_dir,
        work_dir: work,
        servers: 3,
        namespaces: false,
        snapshot_every: 1_000,
        heartbeat_ttl_secs: 5,
    };
    let mut cluster = Cluster::start(opts).await?;
    let started = Instant::now();

    let writes = Arc::new(Mutex::new(Writes::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let writers: Vec<_> = (0..args.writers)
        .map(|w| tokio::spawn(writer(cluster.api.clone(), writes.clone(), w, rng.fork(w as u64), stop_rx.clone())))
        .collect();

    let mut starts = Latencies::default();
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    let mut crashed = Vec::new();
    for _ in 0..args.kills {
        tokio::time::sleep(rng.duration(Duration::from_millis(50), Duration::from_millis(800))).await;
        let ids: Vec<u64> = cluster.servers.keys().copied().collect();
        let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await?;
        let victim = if rng.chance(50) { leader } else { ids[rng.index(ids.len())] };
        let kind = if victim == leader { "kill-leader" } else { "kill-follower" };
        *kills.entry(kind.to_string()).or_default() += 1;
        for (id, member) in cluster.servers.iter_mut() {
            if let Some(status) = member.exited() {
                crashed.push(format!("server {id} exited on its own ({status})"));
                member.kill();
                member.start()?;
            }
        }
        let member = cluster.servers.get_mut(&victim).expect("known server");
        member.kill();
        tokio::time::sleep(rng.duration(Duration::ZERO, Duration::from_millis(300))).await;
        member.start()?;
        starts.record(crate::procs::wait_serving(&cluster.urls[&victim], Duration::from_secs(60)).await?);
    }
    let _ = stop_tx.send(true);
    for w in writers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let (leader, comparisons) = settle(&mut cluster).await?;

    let stored: BTreeSet<String> =
        cluster.api.state(leader).await?.1.into_iter().map(|j| j.name).collect::<BTreeSet<String>>();
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let verdict = Verdict {
        acknowledged_writes: writes.acked.len() as u64,
        unknown_outcomes: writes.unknown,
        lost: writes.acked.difference(&stored).map(|n| format!("acknowledged job {n} is not stored")).collect(),
        ..Verdict::default()
    };
    let report = Report {
        kind: "crash",
        seed,
        seconds: elapsed.as_secs_f64(),
        faults_total: kills.values().sum(),
        faults: kills,
        verdict,
        duplicates: Vec::new(),
        overcommits: Vec::new(),
        digest_mismatches: Vec::new(),
        digest_comparisons: comparisons,
        orphans: Vec::new(),
        state_samples: 0,
        process_samples: 0,
        most_task_processes: 0,
        process_overlap_samples: 0,
        process_overlap_peak: (0, 0),
        other_failures: crashed,
        slow_elections: Vec::new(),
        terms_raised_while_cut_off: None,
        timings: [("server start to serving".to_string(), starts.summary())].into_iter().collect(),
    };
    Ok(report)
}

/// Submits distinct jobs back to back to random servers, recording each acknowledged one.
async fn writer(servers: Servers, writes: Arc<Mutex<Writes>>, id: usize, mut rng: Rng, stop: watch::Receiver<bool>) {
    let ids = servers.ids();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let name = format!("crash-w{id}-{n}");
        let job = job_to_pb(&crate::workload::job_spec(&name, 1, 0));
        let server = ids[rng.index(ids.len())];
        let mut client = servers.jobs(server);
        let call = client.submit_job(pb::SubmitJobRequest { job: Some(job), ..Default::default() });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                writes.lock().unwrap().acked.insert(name);
            }
            _ => {
                writes.lock().unwrap().unknown += 1;
                // Its server is probably down: do not spin against it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits until every server is at the same applied index with the same digest; returns the
/// leader and how many digests were compared. Two servers at one index with different digests
/// fail the run at once.
async fn settle(cluster: &mut Cluster) -> Result<(u64, u64)> {
    let mut comparisons = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<u64> = cluster.servers.keys().copied().collect();
    loop {
        let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await?;
        let mut digests: HashMap<u64, (u64, String)> = HashMap::new();
        for &id in &ids {
            if let Ok(d) = cluster.api.digest(id).await {
                digests.insert(id, (d.applied_index, d.digest));
            }
        }
        let first = digests.get(&leader).cloned();
        if digests.len() == ids.len() && digests.values().all(|d| Some(d) == first.as_ref()) {
            return Ok((leader, comparisons + 1));
        }
        for (a, (index_a, digest_a)) in &digests {
            for (b, (index_b, digest_b)) in &digests {
                comparisons += u64::from(a < b && index_a == index_b);
                if index_a == index_b && digest_a != digest_b {
                    bail!("servers {a} and {b} hold different state at applied index {index_a}: {digests:?}");
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the servers did not converge within 120 s after the last kill: {digests:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
