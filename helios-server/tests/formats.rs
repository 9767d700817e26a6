//! Stored-format fixtures (tests/fixtures/format-N, written by the build that introduced format
//! N) open in this build: converted, migrated and served. Each format change adds its fixture
//! and a test here, so the whole chain stays tested.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::wait_for;
use futures::StreamExt;
use helios_api::pb;
use helios_api::pb::allocation_service_client::AllocationServiceClient;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_api::pb::node_service_client::NodeServiceClient;
use helios_api::pb::AllocationClientStatus;
use helios_core::{Command, Job};
use helios_server::raft::log_store::LogStore;
use helios_server::raft::snapshot::{self, SnapshotData};
use helios_server::raft::state_machine::StateMachine;
use helios_server::raft::{Entry, SnapshotMeta};
use helios_server::signals::NodeSignals;
use helios_server::store::{self, read, tables};
use helios_server::ServerConfig;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftStateMachine};
use openraft::EntryPayload;
use redb::ReadableDatabase;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The address the fixture cluster ran on (its stored membership names it).
const FIXTURE_ADDR: &str = "127.0.0.1:64151";

fn fixture(format: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{format}"));
    for file in ["helios-node-1.db", "snapshot.bin"] {
        std::fs::copy(from.join(file), dir.path().join(file)).expect("copy the fixture");
    }
    dir
}

fn stored_format(dir: &Path) -> u32 {
    let db = redb::Database::open(store::db_path(dir, 1)).expect("open");
    let txn = db.begin_read().expect("read");
    let meta = txn.open_table(tables::RAFT_META).expect("meta");
    let bytes = meta.get(tables::META_FORMAT).expect("get").expect("marked").value().to_vec();
    store::codec::decode(&bytes).expect("a number")
}

/// What the fixture script made in `format`, read through the store.
fn assert_fixture_state(db: &redb::Database, format: u32) {
    let txn = db.begin_read().expect("read");
    let jobs: BTreeMap<String, Job> =
        read::jobs(&txn).expect("jobs").into_iter().map(|j| (j.name.clone(), j)).collect();
    let mut expected = vec!["fixture-batch", "fixture-service", "fixture-stopped", "fixture-versions"];
    if format >= 7 {
        expected.insert(1, "fixture-rolling");
    }
    if format >= 8 {
        expected.insert(3, "fixture-services");
    }
    if format >= 9 {
        expected.insert(1, "fixture-canary");
    }
    assert_eq!(jobs.keys().collect::<Vec<_>>(), expected, "the purged job is gone, the others kept");
    assert!(jobs["fixture-stopped"].stopped);
    // From format 5 the service has a task user (a version-2 job), older ones none.
    let user = jobs["fixture-service"].task_groups[0].tasks[0].user.as_deref();
    assert_eq!(user, (format >= 5).then_some("nobody"));
    // Every format before 7 rescheduled by one rule: groups read back with their type's default.
    let newer = ["fixture-rolling", "fixture-services", "fixture-canary"];
    for job in jobs.values().filter(|j| !newer.contains(&j.name.as_str())) {
        let default = helios_core::ReschedulePolicy::default_for(job.job_type);
        assert!(job.task_groups.iter().all(|g| g.reschedule == default), "{}", job.name);
    }
    if format >= 7 {
        // A version-4 job: what format 7 added reads back, and it has no services.
        let group = &jobs["fixture-rolling"].task_groups[0];
        assert_eq!((group.reschedule.delay_secs, group.reschedule.unlimited), (10, true));
        assert_eq!((group.update.max_parallel, group.update.min_healthy_time_secs), (1, 1));
        assert_eq!(group.affinities.len(), 1);
        assert!(group.services.is_empty());
        // Format 9's update fields read back as Nomad's defaults; before it, no version was
        // ever stable.
        assert_eq!((group.update.canary, group.update.progress_deadline_secs), (0, 600));
        assert!(format >= 9 || jobs.values().all(|j| !j.stable));
    }
    if format >= 8 {
        // A version-5 job with a service and its check, and an allocation holding its registration.
        let group = &jobs["fixture-services"].task_groups[0];
        assert_eq!(group.services.len(), 1);
        assert_eq!((group.services[0].name.as_str(), group.services[0].checks.len()), ("fixture-web", 1));
        let allocs = read::allocations(&txn, Some("fixture-services"), None).expect("allocations");
        assert!(allocs.iter().any(|a| a.services.iter().any(|r| r.service == "fixture-web")), "{allocs:?}");
        if format == 8 {
            assert!(read::deployments(&txn, None).expect("deployments").is_empty(), "format 8 had none");
        }
    }
    if format >= 9 {
        // A version-6 job with a canary, and its deployments (the second version's waits for
        // promotion with its canary placed).
        let canary = &jobs["fixture-canary"];
        assert_eq!((canary.version, canary.task_groups[0].update.canary), (1, 1));
        let deployments = read::deployments(&txn, Some("fixture-canary")).expect("deployments");
        assert!(deployments.iter().any(|d| d.job_version == 1), "{deployments:?}");
    }
    if format >= 10 {
        // Submissions with request ids, remembered with their answers.
        let remembered = txn.open_table(tables::CLIENT_REQUESTS).expect("client requests");
        assert!(redb::ReadableTableMetadata::len(&remembered).expect("rows") > 0);
    }
    assert_eq!(jobs["fixture-versions"].version, 1);
    let versions = read::job_versions(&txn, "fixture-versions").expect("versions");
    assert_eq!(versions.iter().map(|j| j.version).collect::<Vec<_>>(), [0, 1]);
    let service = read::allocations(&txn, Some("fixture-service"), None).expect("allocations");
    assert_eq!(service.len(), 2);
    let batch = read::allocations(&txn, Some("fixture-batch"), None).expect("allocations");
    assert_eq!(batch.len(), 1);
    assert!(batch[0].is_terminal(), "the batch allocation finished: {:?}", batch[0].client_status);
    let nodes = read::nodes(&txn).expect("nodes");
    assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["fixture-node"]);
    assert!(!read::evaluations_for_job(&txn, "fixture-service").expect("evals").is_empty());
    assert_eq!(read::acl_policies(&txn).expect("policies").len(), 1);
    assert_eq!(read::acl_tokens(&txn).expect("tokens").len(), 3, "bootstrap and two tokens");
    assert!(read::acl_bootstrap_index(&txn).expect("bootstrap").is_some());
}

#[test]
fn a_format_2_database_is_converted_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(2);
}

#[test]
fn a_format_3_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(3);
}

#[test]
fn a_format_4_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(4);
}

#[test]
fn a_format_5_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(5);
}

#[test]
fn a_format_6_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(6);
}

#[test]
fn a_format_7_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(7);
}

#[test]
fn a_format_8_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(8);
}

#[test]
fn a_format_9_database_is_marked_once_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(9);
}

#[test]
fn a_format_10_database_opens_and_reads_back_every_record() {
    database_opens_once_and_reads_back_every_record(10);
}

fn database_opens_once_and_reads_back_every_record(format: u32) {
    let dir = fixture(format);
    assert_eq!(stored_format(dir.path()), format);
    let db = store::open(dir.path(), 1).expect("the older database opens");
    assert_fixture_state(&db, format);
    let digest = read::state_digest(&db.begin_read().expect("read")).expect("digest");
    drop(db);
    assert_eq!(stored_format(dir.path()), tables::FORMAT_VERSION);
    // Opened again: already converted, nothing changes.
    let db = store::open(dir.path(), 1).expect("opens again");
    assert_eq!(read::state_digest(&db.begin_read().expect("read")).expect("digest"), digest);
}

/// Applies `entries` to a fresh state machine and returns its database.
async fn replay(entries: Vec<Entry>) -> (tempfile::TempDir, std::sync::Arc<redb::Database>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = store::open(dir.path(), 1).expect("open");
    let mut sm = StateMachine::new(db.clone(), NodeSignals::default());
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream.boxed()).await.expect("apply");
    (dir, db)
}

#[tokio::test]
async fn the_converted_format_2_raft_log_replays_to_the_converted_state() {
    raft_log_replays_to_the_opened_state(2).await;
}

#[tokio::test]
async fn the_format_3_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(3).await;
}

#[tokio::test]
async fn the_format_4_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(4).await;
}

#[tokio::test]
async fn the_format_6_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(6).await;
}

#[tokio::test]
async fn the_format_7_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(7).await;
}

#[tokio::test]
async fn the_format_8_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(8).await;
}

#[tokio::test]
async fn the_format_9_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(9).await;
}

#[tokio::test]
async fn the_format_10_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(10).await;
}

#[tokio::test]
async fn the_format_5_raft_log_replays_to_the_opened_state() {
    raft_log_replays_to_the_opened_state(5).await;
}

async fn raft_log_replays_to_the_opened_state(format: u32) {
    let dir = fixture(format);
    let db = store::open(dir.path(), 1).expect("open");
    let mut log = LogStore::open(db.clone()).expect("the converted log reads");
    let entries = log.try_get_log_entries(0..u64::MAX).await.expect("entries");
    assert_eq!(entries.first().map(|e| e.log_id().index()), Some(0), "the fixture's log is whole");
    let commands: Vec<&Command> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(p) => Some(&p.command),
            _ => None,
        })
        .collect();
    assert!(commands.iter().any(|c| matches!(c, Command::RegisterJob { job, .. } if job.name == "fixture-purged")));
    assert!(commands.iter().any(|c| matches!(c, Command::ApplyPlan { .. })));
    assert!(commands.iter().any(|c| matches!(c, Command::ReportAllocations { .. })));
    assert!(commands.iter().any(|c| matches!(c, Command::AclBootstrap { .. })));

    // Every entry the fixture applied, replayed by this build, gives the state it converted.
    let applied = read::applied_index(&db.begin_read().expect("read")).expect("applied");
    let applied_entries: Vec<Entry> = entries.into_iter().filter(|e| e.log_id().index() <= applied).collect();
    let (_replayed_dir, replayed) = replay(applied_entries).await;
    assert_fixture_state(&replayed, format);
    let digest = |db: &redb::Database| read::state_digest(&db.begin_read().expect("read")).expect("digest").digest;
    assert_eq!(digest(&replayed), digest(&db), "replaying the migrated log reproduces the converted tables");
}

#[tokio::test]
async fn a_format_2_snapshot_installs_as_the_converted_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(2).await;
}

#[tokio::test]
async fn a_format_3_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(3).await;
}

#[tokio::test]
async fn a_format_4_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(4).await;
}

#[tokio::test]
async fn a_format_6_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(6).await;
}

#[tokio::test]
async fn a_format_7_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(7).await;
}

#[tokio::test]
async fn a_format_8_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(8).await;
}

#[tokio::test]
async fn a_format_9_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(9).await;
}

#[tokio::test]
async fn a_format_10_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(10).await;
}

#[tokio::test]
async fn a_format_5_snapshot_installs_as_the_opened_state_and_saves_in_this_format() {
    snapshot_installs_as_the_opened_state(5).await;
}

async fn snapshot_installs_as_the_opened_state(format: u32) {
    let dir = fixture(format);
    let bytes = std::fs::read(dir.path().join("snapshot.bin")).expect("snapshot fixture");
    let summary = snapshot::inspect(std::io::Cursor::new(bytes.clone())).expect("inspect");
    assert_eq!((summary.format, summary.meta.is_none()), (format, format == 2), "format 2 kept its meta apart");
    let jobs = 4 + u64::from(format >= 7) + u64::from(format >= 8) + u64::from(format >= 9);
    assert_eq!(summary.tables.iter().find(|(t, _)| t == "jobs").map(|(_, n)| *n), Some(jobs));

    let converted = store::open(dir.path(), 1).expect("open");
    let digest = |db: &redb::Database| read::state_digest(&db.begin_read().expect("read")).expect("digest").digest;
    let meta: SnapshotMeta = summary.meta.clone().unwrap_or_default();
    let target = tempfile::tempdir().expect("temp dir");
    let installed = store::open(target.path(), 1).expect("open");
    let mut sm = StateMachine::new(installed.clone(), NodeSignals::default());
    sm.install_snapshot(&meta, SnapshotData::Encoded(std::sync::Arc::new(bytes))).await.expect("install");
    assert_fixture_state(&installed, format);
    assert_eq!(digest(&installed), digest(&converted));

    // Saved again, it is this format's stream, and installs to the same state.
    let mut saved = Vec::new();
    SnapshotData::Local(std::sync::Arc::new(installed.begin_read().expect("read")))
        .write_to(&meta, &mut saved)
        .expect("save");
    assert!(saved.starts_with(snapshot::MAGIC));
    let again = tempfile::tempdir().expect("temp dir");
    let db = store::open(again.path(), 1).expect("open");
    let mut sm = StateMachine::new(db.clone(), NodeSignals::default());
    sm.install_snapshot(&meta, SnapshotData::Encoded(std::sync::Arc::new(saved.clone()))).await.expect("install");
    assert_eq!(digest(&db), digest(&converted));

    // One flipped byte, or a cut, is refused, and the tables stay as they were.
    for damaged in [flip(&saved, saved.len() / 2), saved[..saved.len() - 10].to_vec()] {
        let result = sm.install_snapshot(&meta, SnapshotData::Encoded(std::sync::Arc::new(damaged))).await;
        assert!(result.is_err(), "a damaged snapshot installed");
        assert_eq!(digest(&db), digest(&converted), "a refused snapshot changed the state");
    }
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0x40;
    bytes
}

/// One test for every fixture, one after the other: their databases name the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_an_older_data_dir_serves_it_raises_its_format_and_takes_new_jobs() {
    for format in [2, 3, 4, 5, 6, 7, 8, 9, 10] {
        server_serves_an_older_data_dir(format).await;
    }
}

async fn server_serves_an_older_data_dir(format: u32) {
    let dir = fixture(format);
    let addr: std::net::SocketAddr = FIXTURE_ADDR.parse().expect("address");
    let listener = TcpListener::bind(addr).await.expect("the fixture's port is free");
    let config = ServerConfig::new(1, addr, vec![(1, FIXTURE_ADDR.to_string())], false, dir.path().to_path_buf())
        .expect("config");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(helios_server::run_on(config, listener, async move {
        let _ = stopped.await;
    }));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{FIXTURE_ADDR}")).expect("endpoint").connect_lazy();
    let cluster = ClusterServiceClient::new(channel.clone());
    wait_for("the converted server to lead", || {
        let mut cluster = cluster.clone();
        async move { cluster.list_members(pb::ListMembersRequest { local: false }).await.ok()?.into_inner().leader_id }
    })
    .await;

    let members = cluster.clone().list_members(pb::ListMembersRequest { local: false }).await.expect("members");
    let member = &members.into_inner().members[0];
    assert_eq!((member.format, member.lag), (tables::FORMAT_VERSION, Some(0)));
    // Alone, every voter runs this build: the cluster's stored format is raised to it.
    wait_for("the cluster's stored format to be raised", || {
        let mut cluster = cluster.clone();
        async move {
            let members = cluster.list_members(pb::ListMembersRequest { local: false }).await.ok()?.into_inner();
            (members.stored_format == tables::FORMAT_VERSION).then_some(())
        }
    })
    .await;

    let mut jobs = JobServiceClient::new(channel.clone());
    let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await.expect("list jobs").into_inner();
    let newer = ["fixture-rolling", "fixture-services", "fixture-canary"];
    let names: Vec<String> =
        listed.jobs.iter().map(|j| j.name.clone()).filter(|n| !newer.contains(&n.as_str())).collect();
    assert_eq!(names, ["fixture-batch", "fixture-service", "fixture-stopped", "fixture-versions"]);
    let versions = jobs
        .get_job_versions(pb::GetJobVersionsRequest { name: "fixture-versions".into(), ..Default::default() })
        .await
        .expect("versions")
        .into_inner();
    assert_eq!(versions.versions.len(), 2);
    let mut allocs = AllocationServiceClient::new(channel.clone());
    let all = allocs
        .list_allocations(pb::ListAllocationsRequest { job_name: None, node_id: None, ..Default::default() })
        .await
        .expect("allocations")
        .into_inner();
    assert!(all
        .allocations
        .iter()
        .any(|a| a.job_name == "fixture-batch" && a.client_status() == AllocationClientStatus::Complete));
    let nodes =
        NodeServiceClient::new(channel.clone()).list_nodes(pb::ListNodesRequest::default()).await.expect("nodes");
    assert_eq!(nodes.into_inner().nodes.len(), 1);

    // The log goes on in this build's format.
    let job = Job::exec("after-upgrade", "echo", vec!["hi".into()]);
    let reply = jobs
        .submit_job(pb::SubmitJobRequest { job: Some(helios_api::convert::job_to_pb(&job)), ..Default::default() })
        .await
        .expect("submit after the conversion")
        .into_inner();
    assert!(reply.changed);
    let _ = stop.send(());
    server.await.expect("server task").expect("server ran cleanly");
    assert_eq!(stored_format(dir.path()), tables::FORMAT_VERSION);
    let db = store::open(dir.path(), 1).expect("reopen");
    assert!(read::job(&db.begin_read().expect("read"), "after-upgrade").expect("read").is_some());
}
