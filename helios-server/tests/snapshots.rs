//! Operator snapshots: saved from one cluster, restored into another through Raft.

mod common;

use std::path::Path;

use common::{wait_for, TestCluster};
use futures::StreamExt;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;

async fn save(cluster: &TestCluster, via: u64) -> Vec<u8> {
    let mut client = ClusterServiceClient::new(cluster.channel(via).await);
    let mut stream = client.save_snapshot(pb::SaveSnapshotRequest {}).await.expect("save").into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk.expect("chunk").data);
    }
    bytes
}

async fn restore(
    cluster: &TestCluster,
    via: u64,
    bytes: Vec<u8>,
) -> Result<pb::RestoreSnapshotResponse, tonic::Status> {
    let chunks: Vec<pb::RestoreSnapshotRequest> =
        bytes.chunks(64 * 1024).map(|c| pb::RestoreSnapshotRequest { data: c.to_vec() }).collect();
    let mut client = ClusterServiceClient::new(cluster.channel(via).await);
    client.restore_snapshot(futures::stream::iter(chunks)).await.map(tonic::Response::into_inner)
}

/// Waits until the scheduler has decided `job`'s evaluations (blocked, with no nodes).
async fn quiet(cluster: &TestCluster, via: u64, job: &str) {
    wait_for("the job's evaluations decided", || async {
        let status = cluster.job_status(via, job).await;
        status.evaluations.iter().all(|e| e.status() != pb::EvaluationStatus::Pending).then_some(())
    })
    .await;
}

async fn digest(cluster: &TestCluster, id: u64) -> pb::StateDigestResponse {
    let mut client = ClusterServiceClient::new(cluster.channel(id).await);
    client.state_digest(pb::StateDigestRequest {}).await.expect("digest").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_cluster_holds_exactly_the_saved_state_on_every_server() {
    let source = TestCluster::start(1).await;
    source.leader().await;
    // No nodes: the jobs wait (blocked), so neither cluster changes its state by itself.
    for name in ["web", "batch", "cron"] {
        source.submit(1, name).await;
        quiet(&source, 1, name).await;
    }
    let saved = save(&source, 1).await;
    let source_digest = digest(&source, 1).await;

    let target = TestCluster::start(3).await;
    let leader = target.leader().await;
    target.submit(leader, "replaced").await;
    quiet(&target, leader, "replaced").await;
    let follower = target.running_ids().into_iter().find(|id| *id != leader).expect("a follower");

    // A damaged file is refused before anything changes.
    let mut damaged = saved.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let before = digest(&target, leader).await;
    let refused = restore(&target, follower, damaged).await.expect_err("a damaged file restored");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("damaged"), "{refused:?}");
    assert_eq!(digest(&target, leader).await.digest, before.digest);

    // Through a follower: forwarded to the leader, and applied by every server.
    let restored = restore(&target, follower, saved).await.expect("restore");
    assert!(restored.rows > 0);
    for id in target.running_ids() {
        let d = wait_for("the restore applied", || async {
            let d = digest(&target, id).await;
            (d.applied_index >= restored.index).then_some(d)
        })
        .await;
        assert_eq!(d.digest, source_digest.digest, "server {id} after the restore");
    }
    let mut names = target.job_names(leader).await;
    names.sort();
    assert_eq!(names, ["batch", "cron", "web"]);
    // And it goes on from there.
    assert!(target.submit(leader, "after").await.changed);
    source.shutdown().await;
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_format_2_snapshot_file_restores_into_a_new_cluster() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2/snapshot.bin");
    let bytes = std::fs::read(fixture).expect("fixture");
    let target = TestCluster::start(1).await;
    target.leader().await;
    restore(&target, 1, bytes).await.expect("restore");
    let mut names = target.job_names(1).await;
    names.sort();
    assert_eq!(names, ["fixture-batch", "fixture-service", "fixture-stopped", "fixture-versions"]);
    target.shutdown().await;
}
