//! Figures for docs/performance.md ("Stored data"): opening (and converting) a large database,
//! saving its snapshot to a file, installing that snapshot into an empty server, and collecting
//! its garbage, each with its time and the peak memory it added.
//!
//! ```sh
//! cargo run --release -p helios-server --example store_figures -- DIR 1000000
//! ```
//!
//! With no database in DIR it first writes one of that many allocations (jobs of 1,000, half of
//! them finished); with one (say a copy of a format-2 database) it opens that instead. The saved
//! snapshot stays in DIR/figures.snap (for `helios-cli operator snapshot restore`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use helios_core::gc::Thresholds;
use helios_core::{
    AllocClientStatus, AllocDesiredStatus, Allocation, Command, EvalStatus, EvalTrigger, Evaluation, Job, Node,
    NodeEligibility, NodeStatus, Plan, Proposal, Resources, Timestamp,
};
use helios_server::raft::snapshot::{ReceivedFile, SnapshotData};
use helios_server::raft::state_machine::{current_snapshot, StateMachine};
use helios_server::signals::NodeSignals;
use helios_server::store::{self, apply::StateTables};
use openraft::storage::RaftStateMachine;
use redb::ReadableDatabase;

/// Resident memory now, and the peak since the last `reset_peak`, in MiB (Linux).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `phase`, printing its time and the peak memory it added above what was resident before.
fn measure<T>(name: &str, phase: impl FnOnce() -> T) -> T {
    reset_peak();
    let (before, _) = memory();
    let started = Instant::now();
    let out = phase();
    let took = started.elapsed();
    let (after, peak) = memory();
    println!(
        "{name:<34} {:>8.1} s   peak +{:>5} MiB   (resident {before} -> {after} MiB)",
        took.as_secs_f64(),
        peak.saturating_sub(before)
    );
    out
}

fn write_database(dir: &Path, allocations: usize) {
    let db = store::open(dir, 1).expect("open");
    let mut index = 0u64;
    let mut apply = |commands: Vec<Command>| {
        let txn = db.begin_write().expect("write");
        {
            let mut tables = StateTables::open(&txn).expect("tables");
            for command in commands {
                index += 1;
                tables.index = index;
                let proposal = Proposal::new(format!("r{index}"), Timestamp(index), command);
                tables.apply_once(proposal).expect("apply");
            }
            tables.finish().expect("finish");
        }
        txn.commit().expect("commit");
    };
    let node = Node {
        id: "n".into(),
        hostname: "n".into(),
        rpc_addr: "127.0.0.1:9".into(),
        attributes: Default::default(),
        meta: Default::default(),
        drivers: vec!["exec".into()],
        resources: Resources { cpu_mhz: u32::MAX, memory_mb: u32::MAX },
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: false,
        registered_at: Timestamp(1),
        status_updated_at: Timestamp(1),
        secret_id: "secret".into(),
    };
    apply(vec![Command::RegisterNode { node, evals: vec![] }]);
    for j in 0..allocations / 1_000 {
        let job = format!("job-{j:05}");
        let mut spec = Job::exec(&job, "true", vec![]);
        spec.task_groups[0].count = 1_000;
        let eval = Evaluation::new(format!("{job}-e"), &job, 50, EvalTrigger::JobRegister, Timestamp(1));
        let placements = (0..1_000)
            .map(|i| Allocation {
                id: format!("{job}-{i:04}"),
                name: format!("{job}.{job}[{i}]"),
                eval_id: eval.id.clone(),
                job_name: job.clone(),
                job_version: 0,
                task_group: job.clone(),
                group_fingerprint: 0,
                node_id: "n".into(),
                resources: Resources { cpu_mhz: 1, memory_mb: 1 },
                host_ports: vec![],
                desired_status: AllocDesiredStatus::Run,
                desired_description: String::new(),
                client_status: if i % 2 == 0 { AllocClientStatus::Complete } else { AllocClientStatus::Running },
                client_description: String::new(),
                task_states: Default::default(),
                created_at: Timestamp(1),
                modified_at: Timestamp(1),
                reschedule_events: Vec::new(),
                next_allocation: None,
                metrics: Default::default(),
                services: Vec::new(),
                deployment_id: None,
                canary: false,
            })
            .collect();
        let plan = Plan {
            eval_id: eval.id.clone(),
            job_name: job.clone(),
            planned_at_index: 0,
            placements,
            stops: vec![],
            in_place: vec![],
            job_version: 0,
            failed_placements: Default::default(),
            revisit_at: None,
            revisit_reason: String::new(),
            final_failures: Default::default(),
        };
        let mut done = eval.clone();
        done.status = EvalStatus::Complete;
        apply(vec![Command::RegisterJob { job: spec, eval }, Command::ApplyPlan { plan, eval: done }]);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: store_figures DIR ALLOCATIONS"));
    let allocations: usize = args.next().and_then(|n| n.parse().ok()).expect("usage: store_figures DIR ALLOCATIONS");
    if !store::db_path(&dir, 1).exists() {
        measure(&format!("write {allocations} allocations"), || write_database(&dir, allocations));
    }
    let db = measure("open (integrity check, conversion)", || store::open(&dir, 1).expect("open"));
    let file_size = std::fs::metadata(store::db_path(&dir, 1)).map_or(0, |m| m.len());
    println!("database file                      {:>8} MiB", file_size / (1024 * 1024));

    let snapshot_path = dir.join("figures.snap");
    let snapshot = current_snapshot(&db).expect("snapshot");
    measure("snapshot save to a file", || {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&snapshot_path).expect("create"));
        snapshot.snapshot.write_to(&snapshot.meta, &mut out).expect("save");
        std::io::Write::flush(&mut out).expect("flush");
    });
    drop(snapshot);
    let snapshot_size = std::fs::metadata(&snapshot_path).map_or(0, |m| m.len());
    println!("snapshot file                      {:>8} MiB", snapshot_size / (1024 * 1024));

    let target = tempfile::tempdir_in(&dir).expect("temp dir");
    let installed = store::open(target.path(), 1).expect("open target");
    let mut sm = StateMachine::new(installed.clone(), NodeSignals::default());
    let meta = current_snapshot(&db).expect("meta").meta;
    // A received file is deleted once installed: install a copy, keeping the saved file (for
    // `operator snapshot restore` figures).
    let copy = dir.join("figures.install.snap");
    std::fs::copy(&snapshot_path, &copy).expect("copy the snapshot");
    let received = SnapshotData::Received(Arc::new(ReceivedFile(copy)));
    let install = sm.install_snapshot(&meta, received);
    reset_peak();
    let (before, _) = memory();
    let started = Instant::now();
    install.await.expect("install");
    let (after, peak) = memory();
    println!(
        "{:<34} {:>8.1} s   peak +{:>5} MiB   (resident {before} -> {after} MiB)",
        "snapshot install from the file",
        started.elapsed().as_secs_f64(),
        peak.saturating_sub(before)
    );
    drop(installed);
    drop(sm);

    let cutoffs = Thresholds::default().forced(Timestamp(u64::MAX / 2));
    let collected = measure("garbage collection (find + apply)", || {
        let batches = helios_server::gc::find(&db.begin_read().expect("read"), &cutoffs).expect("find");
        let mut total = helios_core::gc::Collected::default();
        for garbage in batches {
            let txn = db.begin_write().expect("write");
            {
                let mut tables = StateTables::open(&txn).expect("tables");
                let command = Command::CollectGarbage { cutoffs, garbage };
                let proposal = Proposal::new(helios_server::clock::new_id(), Timestamp(1), command);
                if let helios_core::CommandResponse::GarbageCollected(c) = tables.apply_once(proposal).expect("apply") {
                    total.add(c);
                }
                tables.finish().expect("finish");
            }
            txn.commit().expect("commit");
        }
        total
    });
    println!("collected                          {collected:?}");
}
