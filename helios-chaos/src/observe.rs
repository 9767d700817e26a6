//! What the run watches while faults happen: the task processes really running on the machine,
//! and the replicated state as the leader reads it. Every breach is recorded with when it was
//! seen; the checker fails the run if there is any.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus};
use tokio::sync::watch;

use crate::api::Servers;

/// A task process started by one of the run's agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskProcess {
    pub pid: u32,
    pub alloc_id: String,
    pub task: String,
    /// The node (agent) whose data directory the task runs in.
    pub node: String,
}

/// Every live process whose `HELIOS_TASK_DIR` lies under `dir` (`<dir>/<node>/allocs/...`).
pub fn task_processes(dir: &Path) -> Vec<TaskProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // Gone already, or not ours to read: either way not one of our tasks.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let mut alloc_id = None;
        let mut task_dir = None;
        let mut task = None;
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix("HELIOS_ALLOC_ID=") {
                alloc_id = Some(v.to_string());
            } else if let Some(v) = var.strip_prefix("HELIOS_TASK_DIR=") {
                task_dir = Some(PathBuf::from(v));
            } else if let Some(v) = var.strip_prefix("HELIOS_TASK_NAME=") {
                task = Some(v.to_string());
            }
        }
        let (Some(alloc_id), Some(task_dir), Some(task)) = (alloc_id, task_dir, task) else { continue };
        let Ok(below) = task_dir.strip_prefix(dir) else { continue };
        let Some(node) = below.components().next().and_then(|c| c.as_os_str().to_str()) else { continue };
        out.push(TaskProcess { pid, alloc_id, task, node: node.to_string() });
    }
    out
}

/// Breaches seen, by kind, each with a description.
#[derive(Default, Debug)]
pub struct Findings {
    /// An allocation slot (`job.group[i]`) wanted twice at once, or an allocation's task running
    /// twice or on two nodes.
    pub duplicates: Vec<String>,
    pub overcommits: Vec<String>,
    pub digest_mismatches: Vec<String>,
    /// A task process still running long after the state stopped wanting it, its agent up.
    pub orphans: Vec<String>,
    pub state_samples: u64,
    pub process_samples: u64,
    pub digest_comparisons: u64,
    pub most_processes: usize,
    /// Samples in which the task processes alive on a node (stopping ones included) asked for
    /// more than it offers, and the largest excess seen (MHz, MB). Not a failure: a stop frees
    /// its room when decided, before its process has exited (see docs/reliability.md).
    pub process_overlap_samples: u64,
    pub process_overlap_peak: (u64, u64),
}

pub type SharedFindings = Arc<Mutex<Findings>>;

/// Which agents are up (not killed) and since when, kept by the fault schedule.
pub type AgentsUp = Arc<Mutex<HashMap<String, Option<Instant>>>>;

/// A process of an unwanted allocation may take this long to be stopped by its (running) agent:
/// the agent hears of the stop, sends SIGTERM and waits the task's 2 s kill timeout.
const ORPHAN_GRACE: Duration = Duration::from_secs(20);

/// Samples the task processes every 100 ms until `stop`: a task must never run twice. On its
/// own loop, so that a slow server cannot slow it down.
pub async fn watch_processes(tasks_dir: PathBuf, findings: SharedFindings, mut stop: watch::Receiver<bool>) {
    let mut reported = BTreeSet::new();
    while !*stop.borrow() {
        check_processes(&task_processes(&tasks_dir), &findings, &mut reported);
        let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
    }
}

/// Samples the leader's state, with the processes at that moment, until `stop`.
pub async fn watch_state(
    servers: Servers,
    tasks_dir: PathBuf,
    agents_up: AgentsUp,
    findings: SharedFindings,
    mut stop: watch::Receiver<bool>,
) {
    let mut capacity: HashMap<String, pb::Resources> = HashMap::new();
    let mut unwanted_since: HashMap<(String, u32), Instant> = HashMap::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    while !*stop.borrow() {
        let ids = servers.ids();
        if let Some(leader) = servers.agreed_leader(&ids).await {
            if capacity.len() < 3 {
                if let Ok(nodes) = servers.nodes_of(leader).await {
                    capacity = nodes.into_iter().filter_map(|n| Some((n.id, n.resources?))).collect();
                }
            }
            if let Ok((allocs, _)) = servers.state(leader).await {
                // After the read: a process placed since the read is judged next time.
                let processes = task_processes(&tasks_dir);
                let mut f = findings.lock().unwrap();
                f.state_samples += 1;
                check_slots(&allocs, &mut f, &mut reported);
                check_placement(&processes, &allocs, &mut f, &mut reported);
                check_capacity(&allocs, &capacity, &mut f, &mut reported);
                measure_process_overlap(&processes, &allocs, &capacity, &mut f);
                let up = agents_up.lock().unwrap().clone();
                check_orphans(&processes, &allocs, &up, &mut unwanted_since, &mut f, &mut reported);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(300), stop.changed()).await;
    }
}

fn check_processes(processes: &[TaskProcess], findings: &SharedFindings, reported: &mut BTreeSet<String>) {
    let mut by_task: BTreeMap<(&str, &str), Vec<&TaskProcess>> = BTreeMap::new();
    for p in processes {
        by_task.entry((&p.alloc_id, &p.task)).or_default().push(p);
    }
    let mut f = findings.lock().unwrap();
    f.process_samples += 1;
    f.most_processes = f.most_processes.max(processes.len());
    for ((alloc, task), running) in by_task {
        if running.len() > 1 {
            let nodes: Vec<String> = running.iter().map(|p| format!("pid {} on {}", p.pid, p.node)).collect();
            let what =
                format!("allocation {alloc} task {task} running {} times at once: {}", running.len(), nodes.join(", "));
            if reported.insert(format!("proc {alloc} {task}")) {
                f.duplicates.push(what);
            }
        }
    }
}

fn wanted(a: &pb::Allocation) -> bool {
    a.desired_status() == AllocationDesiredStatus::Run
        && !matches!(
            a.client_status(),
            AllocationClientStatus::Complete | AllocationClientStatus::Failed | AllocationClientStatus::Lost
        )
}

/// No allocation slot of a job is wanted twice at once: every replacement stops (or loses) what
/// it replaces in the same plan.
fn check_slots(allocs: &[pb::Allocation], f: &mut Findings, reported: &mut BTreeSet<String>) {
    let mut slots: BTreeMap<&str, Vec<&pb::Allocation>> = BTreeMap::new();
    for a in allocs.iter().filter(|a| wanted(a)) {
        slots.entry(&a.name).or_default().push(a);
    }
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for a in allocs.iter().filter(|a| wanted(a)) {
        *per_job.entry(&a.job_name).or_default() += 1;
    }
    // No version of any job asks for more than MAX_COUNT.
    for (job, n) in per_job.into_iter().filter(|(_, n)| *n as u64 > crate::workload::MAX_COUNT) {
        if reported.insert(format!("count {job} {n}")) {
            f.duplicates.push(format!(
                "job {job} had {n} allocations wanted at once (no version asks for more than {})",
                crate::workload::MAX_COUNT
            ));
        }
    }
    for (slot, holders) in slots.into_iter().filter(|(_, h)| h.len() > 1) {
        let ids: Vec<String> = holders.iter().map(|a| format!("{} on {}", a.id, a.node_id)).collect();
        if reported.insert(format!("slot {slot} {}", ids.join(","))) {
            f.duplicates.push(format!("slot {slot} wanted {} times at once: {}", holders.len(), ids.join(", ")));
        }
    }
}

/// A task runs on the node its allocation was placed on.
fn check_placement(
    processes: &[TaskProcess],
    allocs: &[pb::Allocation],
    f: &mut Findings,
    reported: &mut BTreeSet<String>,
) {
    let by_id: HashMap<&str, &pb::Allocation> = allocs.iter().map(|a| (a.id.as_str(), a)).collect();
    for p in processes {
        let Some(alloc) = by_id.get(p.alloc_id.as_str()) else { continue };
        if alloc.node_id != p.node && reported.insert(format!("node {} {}", p.alloc_id, p.node)) {
            f.duplicates
                .push(format!("allocation {} of node {} runs on {} (pid {})", alloc.id, alloc.node_id, p.node, p.pid));
        }
    }
}

/// What the allocations wanted on a node never exceeds what the node offers.
fn check_capacity(
    allocs: &[pb::Allocation],
    capacity: &HashMap<String, pb::Resources>,
    f: &mut Findings,
    reported: &mut BTreeSet<String>,
) {
    let used = per_node(allocs.iter().filter(|a| wanted(a)).map(|a| (a.node_id.as_str(), a)));
    for (node, (cpu, mem)) in used {
        let Some(cap) = capacity.get(node) else { continue };
        if cpu > u64::from(cap.cpu_mhz) || mem > u64::from(cap.memory_mb) {
            let what =
                format!("node {node}: {cpu} MHz / {mem} MB wanted of {} MHz / {} MB", cap.cpu_mhz, cap.memory_mb);
            if reported.insert(what.clone()) {
                f.overcommits.push(what);
            }
        }
    }
}

/// What the live task processes on each node asked for, against what the node offers.
fn measure_process_overlap(
    processes: &[TaskProcess],
    allocs: &[pb::Allocation],
    capacity: &HashMap<String, pb::Resources>,
    f: &mut Findings,
) {
    let by_id: HashMap<&str, &pb::Allocation> = allocs.iter().map(|a| (a.id.as_str(), a)).collect();
    // Each allocation once, however many processes its task has.
    let mut counted = BTreeSet::new();
    let running = processes.iter().filter_map(|p| {
        let alloc = by_id.get(p.alloc_id.as_str())?;
        counted.insert(alloc.id.as_str()).then_some((p.node.as_str(), *alloc))
    });
    let used = per_node(running);
    let mut over = false;
    for (node, (cpu, mem)) in used {
        let Some(cap) = capacity.get(node) else { continue };
        let excess = (cpu.saturating_sub(u64::from(cap.cpu_mhz)), mem.saturating_sub(u64::from(cap.memory_mb)));
        if excess != (0, 0) {
            over = true;
            f.process_overlap_peak = (f.process_overlap_peak.0.max(excess.0), f.process_overlap_peak.1.max(excess.1));
        }
    }
    f.process_overlap_samples += u64::from(over);
}

/// The cpu (MHz) and memory (MB) that allocations ask for, summed per node.
fn per_node<'a>(allocs: impl Iterator<Item = (&'a str, &'a pb::Allocation)>) -> HashMap<&'a str, (u64, u64)> {
    let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
    for (node, alloc) in allocs {
        let r = alloc.resources.unwrap_or_default();
        let entry = used.entry(node).or_default();
        entry.0 += u64::from(r.cpu_mhz);
        entry.1 += u64::from(r.memory_mb);
    }
    used
}

fn check_orphans(
    processes: &[TaskProcess],
    allocs: &[pb::Allocation],
    agents_up: &HashMap<String, Option<Instant>>,
    unwanted_since: &mut HashMap<(String, u32), Instant>,
    f: &mut Findings,
    reported: &mut BTreeSet<String>,
) {
    let by_id: HashMap<&str, &pb::Allocation> = allocs.iter().map(|a| (a.id.as_str(), a)).collect();
    let now = Instant::now();
    let mut still = HashMap::new();
    for p in processes {
        // Unknown to this read (placed after it): judged at the next sample.
        let Some(alloc) = by_id.get(p.alloc_id.as_str()) else { continue };
        let agent_up_since = agents_up.get(&p.node).copied().flatten();
        let (Some(up_since), false) = (agent_up_since, wanted(alloc)) else { continue };
        let key = (p.alloc_id.clone(), p.pid);
        let since = unwanted_since.get(&key).copied().unwrap_or(now).max(up_since);
        if now.duration_since(since) > ORPHAN_GRACE {
            if !reported.insert(format!("orphan {} {}", p.alloc_id, p.pid)) {
                continue;
            }
            f.orphans.push(format!(
                "pid {} of allocation {} ({}, desired {}, client {}) still running on {} {:?} after it stopped being wanted",
                p.pid,
                alloc.id,
                alloc.name,
                alloc.desired_status().label(),
                alloc.client_status().label(),
                p.node,
                ORPHAN_GRACE
            ));
            continue;
        }
        still.insert(key, since);
    }
    *unwanted_since = still;
}

/// Compares the servers' state digests every few seconds: servers at the same applied index
/// must hold the same state.
pub async fn watch_digests(servers: Servers, findings: SharedFindings, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let mut at: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
        for id in servers.ids() {
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(1), servers.digest(id)).await {
                at.entry(d.applied_index).or_default().push((id, d.digest));
            }
        }
        {
            let mut f = findings.lock().unwrap();
            for (index, digests) in at.into_iter().filter(|(_, d)| d.len() > 1) {
                f.digest_comparisons += 1;
                if digests.iter().any(|(_, d)| *d != digests[0].1) {
                    f.digest_mismatches.push(format!("at applied index {index}: {digests:?}"));
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), stop.changed()).await;
    }
}
