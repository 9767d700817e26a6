//! `helios-chaos faults`: three servers in network namespaces of their own, three agents,
//! concurrent writers, and faults on a seeded schedule; then the cluster settles and the checker
//! runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus};
use tokio::sync::watch;

use crate::check::{self, Partition};
use crate::cluster::{Cluster, Options};
use crate::observe::{self, AgentsUp, SharedFindings};
use crate::report::{Latencies, Report};
use crate::rng::Rng;
use crate::workload::{self, SharedLedger};

#[derive(Args, Debug)]
pub struct FaultArgs {
    /// How long to inject faults (then the cluster settles and is checked): `90s`, `30m`.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Concurrent writers, each with 4 jobs of its own.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    #[command(flatten)]
    pub run: crate::RunOptions,
}

const JOBS_PER_WRITER: usize = 4;
const AGENTS: usize = 3;
/// Agents of a fault run heartbeat fast so that a killed one is noticed within seconds.
const HEARTBEAT_TTL_SECS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    IsolateLeader,
    IsolateFollower,
    KillAgent,
}

const FAULTS: [Fault; 6] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::PauseLeader,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::KillAgent,
];

/// What the schedule measured while injecting faults.
#[derive(Default)]
struct Measured {
    faults: BTreeMap<Fault, u64>,
    /// Leader lost (killed, paused, cut off) -> the others agree on a new one.
    elections: Latencies,
    /// Those over a second: what, when (wall clock, to find in the servers' logs), how long.
    slow_elections: Vec<String>,
    /// Cut-off followers that raised their term while cut off (with pre-vote they must not:
    /// back in the cluster, a raised term forces an election), of those whose term was read.
    terms_raised_while_cut_off: (u64, u64),
    /// Agent killed -> every allocation it ran wanted and running on another node.
    replacements: Latencies,
    /// Server process started -> its health check answers SERVING.
    server_starts: Latencies,
    partitions: Vec<Partition>,
    /// Members that exited on their own, faults that could not be carried out, a cluster that
    /// did not settle.
    failures: Vec<String>,
}

impl Measured {
    /// Records an election that took `took` after `fault` hit the leader `old` at `at`.
    fn election(&mut self, fault: Fault, old: u64, at: Instant, took: Duration) {
        self.elections.record(took);
        if took > Duration::from_secs(1) {
            let wall = std::time::SystemTime::now() - at.elapsed();
            let unix = wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let slow = format!("{fault:?} of server {old} at unix time {unix:.3}: {took:.2?}");
            println!("slow election: {slow}");
            self.slow_elections.push(slow);
        }
    }
}

pub async fn run(args: FaultArgs) -> Result<Report> {
    let seed = args.run.seed();
    println!("helios-chaos faults: seed {seed}, {:?} of faults", args.duration);
    let args = &args;
    args.run.in_work_dir(|work| async move { run_in(args, seed, &work).await }).await
}

async fn run_in(args: &FaultArgs, seed: u64, work: &std::path::Path) -> Result<Report> {
    let mut rng = Rng::new(seed);
    let bin_dir = args.run.dirs.bin_dir();
    let opts = Options {
        bin_dir: &bin_dir,
        work_dir: work,
        servers: 3,
        namespaces: true,
        snapshot_every: 500,
        heartbeat_ttl_secs: HEARTBEAT_TTL_SECS,
    };
    let mut cluster = Cluster::start(opts).await?;
    // Two agents must hold the largest workload, so that one may be down.
    let tasks = (args.writers * JOBS_PER_WRITER) as u32 * workload::MAX_COUNT as u32;
    let per_agent = tasks.div_ceil(2).max(20);
    let room = (per_agent * workload::TASK_CPU_MHZ, per_agent * workload::TASK_MEMORY_MB);
    cluster.start_agents(&bin_dir, AGENTS, room).await?;
    let started = Instant::now();

    let ledger = SharedLedger::default();
    let findings = SharedFindings::default();
    let agents_up: AgentsUp = Arc::new(Mutex::new(cluster.agents.keys().map(|n| (n.clone(), Some(started))).collect()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (isolated_tx, isolated_rx) = watch::channel(None);
    let mut workers = Vec::new();
    for w in 0..args.writers {
        let worker = workload::writer(
            cluster.api.clone(),
            ledger.clone(),
            w,
            JOBS_PER_WRITER,
            rng.fork(w as u64),
            stop_rx.clone(),
        );
        workers.push(tokio::spawn(worker));
    }
    workers.push(tokio::spawn(workload::prober(cluster.api.clone(), ledger.clone(), isolated_rx, stop_rx.clone())));
    let (watch_stop_tx, watch_stop_rx) = watch::channel(false);
    let watchers = [
        tokio::spawn(observe::watch_processes(cluster.tasks_dir.clone(), findings.clone(), watch_stop_rx.clone())),
        tokio::spawn(observe::watch_state(
            cluster.api.clone(),
            cluster.tasks_dir.clone(),
            agents_up.clone(),
            findings.clone(),
            watch_stop_rx.clone(),
        )),
        tokio::spawn(observe::watch_digests(cluster.api.clone(), findings.clone(), watch_stop_rx)),
    ];

    let mut measured = Measured::default();
    let mut schedule = rng.fork(1_000);
    let faults_until = Instant::now() + args.duration;
    while Instant::now() < faults_until {
        tokio::time::sleep(schedule.duration(Duration::from_millis(500), Duration::from_secs(3))).await;
        let fault = FAULTS[schedule.index(FAULTS.len())];
        // A fault that cannot be carried out (no leader within 30 s, work never replaced) is a
        // failure; the run still restores the cluster and checks what happened.
        if let Err(e) = inject(&mut cluster, fault, &mut schedule, &mut measured, &agents_up, &isolated_tx).await {
            measured.failures.push(format!("{fault:?}: {e:#}"));
            break;
        }
        for member in cluster.servers.values_mut().chain(cluster.agents.values_mut()) {
            if let Some(status) = member.exited() {
                measured.failures.push(format!("{} exited on its own ({status})", member.name));
                member.kill();
                member.start()?;
            }
        }
    }
    let _ = isolated_tx.send(None);
    cluster.restore_all()?;
    for up in agents_up.lock().unwrap().values_mut() {
        up.get_or_insert_with(Instant::now);
    }
    let _ = stop_tx.send(true);
    for worker in workers {
        if let Err(e) = worker.await {
            measured.failures.push(format!("a writer failed: {e}"));
        }
    }
    let fault_time = started.elapsed();

    let settled = settle(&cluster, &ledger).await;
    let _ = watch_stop_tx.send(true);
    for watcher in watchers {
        if let Err(e) = watcher.await {
            measured.failures.push(format!("a watcher failed: {e}"));
        }
    }
    // A cluster that never settles is a failure, but the checker still has much to say.
    let leader = match settled {
        Ok(leader) => leader,
        Err(e) => {
            measured.failures.push(e.to_string());
            let ids: Vec<u64> = cluster.servers.keys().copied().collect();
            cluster.wait_for_leader(&ids, Duration::from_secs(30)).await?
        }
    };
    // The writers are done: the ledger is final.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let verdict = check::check(&cluster.api, leader, &ledger, &measured.partitions).await?;
    let findings = std::mem::take(&mut *findings.lock().unwrap());
    // Checks that never ran prove nothing.
    let isolations = measured.faults.get(&Fault::IsolateLeader).copied().unwrap_or(0)
        + measured.faults.get(&Fault::IsolateFollower).copied().unwrap_or(0);
    for (ran, what) in [
        (findings.state_samples, "state samples"),
        (findings.process_samples, "process samples"),
        (findings.digest_comparisons, "digest comparisons"),
        (verdict.acknowledged_writes, "acknowledged writes"),
        (if isolations > 0 { verdict.probes_sent } else { 1 }, "probes of cut-off servers"),
    ] {
        if ran == 0 {
            measured.failures.push(format!("no {what}: that check never ran"));
        }
    }
    let mut report = Report::faults(
        seed,
        fault_time,
        &measured.faults,
        verdict,
        findings,
        measured.failures,
        [
            ("election after losing the leader", measured.elections),
            ("killed agent's work running elsewhere", measured.replacements),
            ("server start to serving", measured.server_starts),
        ],
    );
    report.slow_elections = measured.slow_elections;
    report.terms_raised_while_cut_off = Some(measured.terms_raised_while_cut_off);
    Ok(report)
}

async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    rng: &mut Rng,
    m: &mut Measured,
    agents_up: &AgentsUp,
    isolated: &watch::Sender<Option<(u64, Instant)>>,
) -> Result<()> {
    let servers: Vec<u64> = cluster.servers.keys().copied().collect();
    let leader = cluster.wait_for_leader(&servers, Duration::from_secs(30)).await?;
    let follower = {
        let others: Vec<u64> = servers.iter().copied().filter(|&s| s != leader).collect();
        others[rng.index(others.len())]
    };
    *m.faults.entry(fault).or_default() += 1;
    let hold = rng.duration(Duration::from_millis(500), Duration::from_secs(4));
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let victim = if fault == Fault::KillLeader { leader } else { follower };
            let member = cluster.servers.get_mut(&victim).expect("known server");
            member.kill();
            let at = Instant::now();
            if fault == Fault::KillLeader {
                m.election(fault, leader, at, new_leader(cluster, leader, at).await?);
            }
            sleep_until(at + hold).await;
            let member = cluster.servers.get_mut(&victim).expect("known server");
            member.start()?;
            m.server_starts.record(crate::procs::wait_serving(&cluster.urls[&victim], Duration::from_secs(60)).await?);
        }
        Fault::PauseLeader => {
            cluster.servers.get_mut(&leader).expect("known server").pause()?;
            let at = Instant::now();
            m.election(fault, leader, at, new_leader(cluster, leader, at).await?);
            sleep_until(at + hold).await;
            cluster.servers.get_mut(&leader).expect("known server").resume()?;
        }
        Fault::IsolateLeader | Fault::IsolateFollower => {
            let victim = if fault == Fault::IsolateLeader { leader } else { follower };
            let mesh = cluster.mesh.as_mut().expect("fault runs use namespaces");
            mesh.partition(&[victim])?;
            let from = Instant::now();
            let _ = isolated.send(Some((victim, from)));
            if fault == Fault::IsolateLeader {
                m.election(fault, leader, from, new_leader(cluster, leader, from).await?);
                sleep_until(from + hold.max(Duration::from_secs(2))).await;
            } else {
                // A cut-off leader never campaigns; a follower would, without pre-vote.
                let term_at_cut = cluster.api.term_of(victim).await;
                sleep_until(from + hold.max(Duration::from_secs(2))).await;
                if let (Some(before), Some(after)) = (term_at_cut, cluster.api.term_of(victim).await) {
                    m.terms_raised_while_cut_off.0 += u64::from(after > before);
                    m.terms_raised_while_cut_off.1 += 1;
                }
            }
            let _ = isolated.send(None);
            m.partitions.push(Partition { server: victim, from, until: Instant::now() });
            cluster.mesh.as_mut().expect("fault runs use namespaces").heal()?;
        }
        Fault::KillAgent => kill_agent(cluster, leader, rng, m, agents_up).await?,
    }
    Ok(())
}

async fn sleep_until(when: Instant) {
    tokio::time::sleep(when.saturating_duration_since(Instant::now())).await;
}

/// How long until the servers other than `old` agree on a new leader.
async fn new_leader(cluster: &Cluster, old: u64, since: Instant) -> Result<Duration> {
    let others: Vec<u64> = cluster.servers.keys().copied().filter(|&s| s != old).collect();
    let deadline = since + Duration::from_secs(30);
    loop {
        if cluster.api.agreed_leader(&others).await.is_some() {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("no new leader within 30 s of losing server {old}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs an agent. Sometimes it comes back quickly (before it is marked down: its tasks,
/// still running, are adopted); otherwise it stays away until everything it ran is running
/// elsewhere, which is timed.
async fn kill_agent(
    cluster: &mut Cluster,
    leader: u64,
    rng: &mut Rng,
    m: &mut Measured,
    agents_up: &AgentsUp,
) -> Result<()> {
    let names: Vec<String> = cluster.agents.keys().cloned().collect();
    let node = names[rng.index(names.len())].clone();
    let running_there = slots_running(&cluster.api.state(leader).await?.0, Some(&node), None);
    cluster.agents.get_mut(&node).expect("known agent").kill();
    let at = Instant::now();
    agents_up.lock().unwrap().insert(node.clone(), None);
    if rng.chance(40) {
        sleep_until(at + rng.duration(Duration::from_millis(200), Duration::from_millis(1500))).await;
    } else {
        let deadline = at + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if Instant::now() > deadline {
                cluster.agents.get_mut(&node).expect("known agent").start()?;
                agents_up.lock().unwrap().insert(node.clone(), Some(Instant::now()));
                bail!("the work of killed agent {node} was not running elsewhere within 30 s");
            }
            let ids = cluster.api.ids();
            let Some(now_leader) = cluster.api.agreed_leader(&ids).await else { continue };
            let Ok((allocs, _)) = cluster.api.state(now_leader).await else { continue };
            let elsewhere = slots_running(&allocs, None, Some(&node));
            let still_wanted = slots_wanted(&allocs);
            let waiting = running_there.iter().any(|slot| still_wanted.contains(slot) && !elsewhere.contains(slot));
            if !waiting {
                if !running_there.is_empty() {
                    m.replacements.record(at.elapsed());
                }
                break;
            }
        }
    }
    cluster.agents.get_mut(&node).expect("known agent").start()?;
    agents_up.lock().unwrap().insert(node, Some(Instant::now()));
    Ok(())
}

/// Slots (`job.group[i]`) with a running allocation, on `on` or on any node but `not_on`.
fn slots_running(allocs: &[pb::Allocation], on: Option<&str>, not_on: Option<&str>) -> Vec<String> {
    allocs
        .iter()
        .filter(|a| {
            a.client_status() == AllocationClientStatus::Running && a.desired_status() == AllocationDesiredStatus::Run
        })
        .filter(|a| on.is_none_or(|n| a.node_id == n) && not_on.is_none_or(|n| a.node_id != n))
        .map(|a| a.name.clone())
        .collect()
}

/// Slots the jobs still want filled.
fn slots_wanted(allocs: &[pb::Allocation]) -> Vec<String> {
    allocs.iter().filter(|a| a.desired_status() == AllocationDesiredStatus::Run).map(|a| a.name.clone()).collect()
}

/// Waits until the cluster is quiet and consistent: every server at the same applied index with
/// the same digest, every job's allocations running as it asks, and the processes on the machine
/// exactly those allocations. Returns the leader.
async fn settle(cluster: &Cluster, ledger: &SharedLedger) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut why = String::from("not checked yet");
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ids = cluster.api.ids();
        let Some(leader) = cluster.api.agreed_leader(&ids).await else {
            why = "no agreed leader".to_string();
            continue;
        };
        let Ok((allocs, jobs)) = cluster.api.state(leader).await else { continue };
        let known: Vec<String> = ledger.lock().unwrap().jobs.keys().cloned().collect();
        if let Some(job) = jobs.iter().filter(|j| known.contains(&j.name)).find(|j| {
            let want = if j.stopped { 0 } else { j.desired };
            j.running != want
        }) {
            why = format!("job {} has {} of {} running (stopped: {})", job.name, job.running, job.desired, job.stopped);
            continue;
        }
        let mut running: Vec<(String, String)> = allocs
            .iter()
            .filter(|a| a.client_status() == AllocationClientStatus::Running)
            .map(|a| (a.id.clone(), a.node_id.clone()))
            .collect();
        let mut processes: Vec<(String, String)> =
            observe::task_processes(&cluster.tasks_dir).into_iter().map(|p| (p.alloc_id, p.node)).collect();
        running.sort();
        processes.sort();
        if running != processes {
            let extra: Vec<String> = processes
                .iter()
                .filter(|p| !running.contains(p))
                .map(|(id, node)| {
                    let alloc = allocs.iter().find(|a| &a.id == id);
                    let state = alloc.map_or("unknown".to_string(), |a| {
                        format!(
                            "{} desired {} client {} ({})",
                            a.name,
                            a.desired_status().label(),
                            a.client_status().label(),
                            a.client_description
                        )
                    });
                    format!("{id} on {node}: {state}")
                })
                .collect();
            let missing: Vec<&(String, String)> = running.iter().filter(|r| !processes.contains(r)).collect();
            why = format!(
                "{} allocations running but {} task processes; processes not running per the state: {extra:?}; running without a process: {missing:?}",
                running.len(),
                processes.len()
            );
            continue;
        }
        let mut digests = HashMap::new();
        for id in &ids {
            if let Ok(d) = cluster.api.digest(*id).await {
                digests.insert(*id, (d.applied_index, d.digest));
            }
        }
        let first = digests.get(&leader).cloned();
        if digests.len() == ids.len() && digests.values().all(|d| Some(d) == first.as_ref()) {
            return Ok(leader);
        }
        why = format!("digests differ: {digests:?}");
    }
    bail!("the cluster did not settle within 180 s of the last fault: {why}")
}
