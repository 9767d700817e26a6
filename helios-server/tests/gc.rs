//! Garbage collection: what goes, through Raft, alike on every server; and what it gives back
//! (rows, file pages, snapshot size).

mod common;

use common::{wait_for, TestCluster};
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::AllocationDesiredStatus;
use helios_core::gc::{Collected, Thresholds};
use helios_core::{
    AllocClientStatus, AllocDesiredStatus, AllocUpdate, Allocation, Command, CommandResponse, EvalStatus, EvalTrigger,
    Evaluation, Job, Node, NodeEligibility, NodeStatus, Plan, Proposal, Resources, Timestamp,
};
use helios_server::raft::snapshot::SnapshotData;
use helios_server::raft::SnapshotMeta;
use helios_server::store::apply::StateTables;
use helios_server::store::{self, read, tables};
use redb::{ReadableDatabase, ReadableTableMetadata};

/// Applies commands in one transaction, as the state machine applies one batch.
fn apply(db: &redb::Database, index: &mut u64, commands: Vec<Command>) -> Vec<CommandResponse> {
    let txn = db.begin_write().expect("write");
    let responses = {
        let mut tables = StateTables::open(&txn).expect("tables");
        let out = commands
            .into_iter()
            .map(|command| {
                *index += 1;
                tables.index = *index;
                let proposal = Proposal::new(format!("r{index}"), Timestamp(*index), command);
                tables.apply_once(proposal).expect("apply")
            })
            .collect();
        tables.finish().expect("finish");
        out
    };
    txn.commit().expect("commit");
    responses
}

fn big_node() -> Node {
    Node {
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
    }
}

fn placement(job: &str, i: usize) -> Allocation {
    Allocation {
        id: format!("{job}-{i:06}"),
        name: format!("{job}.{job}[{i}]"),
        eval_id: format!("{job}-eval"),
        job_name: job.into(),
        job_version: 0,
        task_group: job.into(),
        group_fingerprint: 0,
        node_id: "n".into(),
        resources: Resources { cpu_mhz: 1, memory_mb: 1 },
        host_ports: vec![],
        desired_status: AllocDesiredStatus::Run,
        desired_description: String::new(),
        client_status: AllocClientStatus::Pending,
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
    }
}

/// A batch job of `count` allocations, placed and reported complete.
fn finished_batch_job(db: &redb::Database, index: &mut u64, job: &str, count: usize) {
    let mut spec = Job::exec(job, "true", vec![]);
    spec.task_groups[0].count = count as u32;
    let eval = Evaluation::new(format!("{job}-eval"), job, 50, EvalTrigger::JobRegister, Timestamp(1));
    apply(db, index, vec![Command::RegisterJob { job: spec, eval: eval.clone() }]);
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(1_000) {
        let plan = Plan {
            eval_id: eval.id.clone(),
            job_name: job.into(),
            planned_at_index: 0,
            placements: chunk.iter().map(|i| placement(job, *i)).collect(),
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
        let updates = chunk
            .iter()
            .map(|i| AllocUpdate {
                alloc_id: placement(job, *i).id,
                client_status: AllocClientStatus::Complete,
                client_description: "done".into(),
                task_states: Default::default(),
            })
            .collect();
        let report = Command::ReportAllocations {
            node_id: "n".into(),
            secret: "secret".into(),
            updates,
            now: Timestamp(2),
            evals: vec![],
        };
        let responses = apply(db, index, vec![Command::ApplyPlan { plan, eval: done }, report]);
        assert!(matches!(responses[0], CommandResponse::PlanApplied { .. }), "{responses:?}");
        assert_eq!(responses[1], CommandResponse::AllocationsUpdated);
    }
}

fn snapshot_bytes(db: &redb::Database) -> usize {
    let mut out = Vec::new();
    let txn = std::sync::Arc::new(db.begin_read().expect("read"));
    SnapshotData::Local(txn).write_to(&SnapshotMeta::default(), &mut out).expect("snapshot");
    out.len()
}

fn rows(db: &redb::Database, table: redb::TableDefinition<&str, &[u8]>) -> u64 {
    db.begin_read().expect("read").open_table(table).expect("table").len().expect("len")
}

fn collect_all(db: &redb::Database, index: &mut u64) -> Collected {
    let cutoffs = Thresholds::default().forced(Timestamp(u64::MAX / 2));
    let batches = helios_server::gc::find(&db.begin_read().expect("read"), &cutoffs).expect("find");
    let mut total = Collected::default();
    for garbage in batches {
        assert!(garbage.len() <= helios_server::gc::BATCH);
        match &apply(db, index, vec![Command::CollectGarbage { cutoffs, garbage }])[0] {
            CommandResponse::GarbageCollected(c) => total.add(*c),
            other => panic!("{other:?}"),
        }
    }
    total
}

/// Finished batch jobs of 1,000 allocations each, `COUNT` allocations in all.
fn finished_batch_jobs(db: &redb::Database, index: &mut u64, prefix: &str) {
    for j in 0..COUNT / 1_000 {
        finished_batch_job(db, index, &format!("{prefix}{j:03}"), 1_000);
    }
}

const COUNT: usize = 100_000;

#[test]
fn collecting_100_000_finished_allocations_empties_their_tables_reuses_pages_and_shrinks_snapshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = store::open(dir.path(), 1).expect("open");
    let mut index = 0;
    apply(&db, &mut index, vec![Command::RegisterNode { node: big_node(), evals: vec![] }]);
    let empty_snapshot = snapshot_bytes(&db);
    finished_batch_jobs(&db, &mut index, "bulk");
    assert_eq!(rows(&db, tables::ALLOCATIONS), COUNT as u64);
    let full_snapshot = snapshot_bytes(&db);
    let full_file = std::fs::metadata(store::db_path(dir.path(), 1)).expect("file").len();

    let collected = collect_all(&db, &mut index);
    assert_eq!((collected.jobs, collected.allocs), ((COUNT / 1_000) as u64, COUNT as u64), "{collected:?}");
    for table in [tables::ALLOCATIONS, tables::ALLOCS_BY_JOB, tables::ALLOCS_BY_NODE, tables::EVALUATIONS, tables::JOBS]
    {
        assert_eq!(rows(&db, table), 0, "{}", redb::TableHandle::name(&table));
    }
    assert!(read::allocations(&db.begin_read().expect("read"), None, Some("n")).expect("read").is_empty());
    let collected_snapshot = snapshot_bytes(&db);
    assert!(
        collected_snapshot < empty_snapshot + full_snapshot / 100,
        "snapshot {full_snapshot} bytes full, {collected_snapshot} after collection ({empty_snapshot} empty)"
    );

    // The same work again fits in the pages the first round freed.
    finished_batch_jobs(&db, &mut index, "again");
    let refilled_file = std::fs::metadata(store::db_path(dir.path(), 1)).expect("file").len();
    assert!(
        refilled_file <= full_file + full_file / 10,
        "the file grew from {full_file} to {refilled_file} bytes: freed pages were not reused"
    );
    assert_eq!(collect_all(&db, &mut index).allocs, COUNT as u64);
    assert_eq!(collect_all(&db, &mut index), Collected::default(), "a second pass finds nothing");
}

/// A node with no agent behind it: what is placed there stays pending.
async fn register_node(cluster: &TestCluster, id: &str) {
    let mut agents = AgentServiceClient::new(cluster.channel(1).await);
    let request = pb::RegisterRequest { node: Some(common::fake_node(id)), secret: "s".into() };
    agents.register(request).await.expect("register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_gc_forgets_finished_work_and_old_versions_alike_on_every_server() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    register_node(&cluster, "n1").await;
    let mut jobs = cluster.jobs(leader).await;
    // A stopped job, a purged one, and one with eight versions; all placed on n1 first.
    for name in ["stopped", "purged"] {
        cluster.submit(leader, name).await;
    }
    for v in 0..8 {
        let mut job = Job::exec("versions", "sleep", vec![format!("{}", 100 + v)]);
        job.set_type(helios_core::JobType::Service);
        cluster.submit_job(leader, &job).await;
    }
    for name in ["stopped", "purged", "versions"] {
        wait_for("placed", || async {
            let status = cluster.job_status(leader, name).await;
            status.allocations.iter().any(|a| a.desired_status() == AllocationDesiredStatus::Run).then_some(())
        })
        .await;
    }
    jobs.stop_job(pb::StopJobRequest { name: "stopped".into(), purge: false, ..Default::default() })
        .await
        .expect("stop");
    jobs.stop_job(pb::StopJobRequest { name: "purged".into(), purge: true, ..Default::default() })
        .await
        .expect("purge");
    // Until the scheduler has stopped their allocations, they are not finished.
    for name in ["stopped", "versions"] {
        wait_for("the replaced and stopped allocations stopped", || async {
            let allocs = cluster.job_status(leader, name).await.allocations;
            let running = allocs.iter().filter(|a| a.desired_status() == AllocationDesiredStatus::Run).count();
            (running == usize::from(name == "versions")).then_some(())
        })
        .await;
    }
    let before = cluster.job_status(leader, "versions").await.allocations.len();
    assert!(before >= 2, "replaced versions left stopped allocations");

    // Through a follower: forwarded, and applied by every server.
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let mut admin = ClusterServiceClient::new(cluster.channel(follower).await);
    let collected = admin.collect_garbage(pb::CollectGarbageRequest {}).await.expect("gc").into_inner();
    assert_eq!(collected.jobs, 1, "the stopped job: {collected:?}");
    assert_eq!(collected.job_versions, 1 + 2, "the stopped job's one, and two of eight: {collected:?}");
    assert!(collected.allocations >= 3, "{collected:?}");

    let names = cluster.job_names(leader).await;
    assert_eq!(names, ["versions"]);
    let versions = jobs
        .get_job_versions(pb::GetJobVersionsRequest { name: "versions".into(), ..Default::default() })
        .await
        .expect("versions");
    let numbers: Vec<u64> = versions.into_inner().versions.iter().map(|j| j.version).collect();
    assert_eq!(numbers, [2, 3, 4, 5, 6, 7], "the newest six");
    let allocs = cluster.job_status(leader, "versions").await.allocations;
    assert!(
        allocs.iter().all(|a| a.desired_status() == AllocationDesiredStatus::Run),
        "only the running allocation is left: {allocs:?}"
    );

    // Every server holds the same state at the same index.
    let digests = wait_for("every server at the same index with the same digest", || async {
        let mut seen = Vec::new();
        for id in cluster.running_ids() {
            let mut c = ClusterServiceClient::new(cluster.channel(id).await);
            let d = c.state_digest(pb::StateDigestRequest {}).await.ok()?.into_inner();
            seen.push((d.applied_index, d.digest));
        }
        seen.windows(2).all(|w| w[0] == w[1]).then_some(seen)
    })
    .await;
    assert_eq!(digests.len(), 3);
    assert_eq!(admin.collect_garbage(pb::CollectGarbageRequest {}).await.expect("gc").into_inner().jobs, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_collects_what_has_been_finished_longer_than_its_thresholds() {
    let thresholds = Thresholds { eval_ms: 1_000, job_ms: 1_000, node_ms: 1_000, job_max_versions: 6 };
    let cluster = TestCluster::start_collecting(3, thresholds, std::time::Duration::from_millis(500)).await;
    let leader = cluster.leader().await;
    register_node(&cluster, "n1").await;
    cluster.submit(leader, "short-lived").await;
    let mut jobs = cluster.jobs(leader).await;
    jobs.stop_job(pb::StopJobRequest { name: "short-lived".into(), purge: false, ..Default::default() })
        .await
        .expect("stop");
    // Nobody asks: the leader's own pass forgets the job once it has been dead a second.
    wait_for("the dead job collected", || async { cluster.job_names(leader).await.is_empty().then_some(()) }).await;
    let mut admin = ClusterServiceClient::new(cluster.channel(leader).await);
    let left = admin.collect_garbage(pb::CollectGarbageRequest {}).await.expect("gc").into_inner();
    assert_eq!((left.jobs, left.allocations), (0, 0), "the periodic pass left work behind: {left:?}");
    cluster.shutdown().await;
}
