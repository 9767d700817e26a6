//! Bad input gets a clear error naming the field; the server keeps serving; nothing stored
//! changes.

mod common;

use common::TestCluster;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_core::Job;
use tonic::Code;

async fn assert_refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    fragments: &[&str],
) {
    let status = result.expect_err("request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for f in fragments {
        assert!(status.message().contains(f), "{:?} lacks {f:?}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.submit(leader, "keeper").await;
    let mut jobs = cluster.jobs(follower).await;
    let before = jobs.list_jobs(pb::ListJobsRequest::default()).await.expect("list").into_inner();

    // Invalid fields, every one named with its path.
    let mut job = Job::exec("keeper", "echo", vec![]);
    let mut second = job.task_groups[0].tasks[0].clone();
    second.name = "second".into();
    second.resources.memory_mb = 0;
    job.task_groups[0].tasks.push(second);
    job.priority = 500;
    assert_refused(
        jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await,
        Code::InvalidArgument,
        &["task_groups[0].tasks[1].resources.memory_mb: must be > 0", "priority: must be between 1 and 100"],
    )
    .await;

    // Unknown enum values, a missing driver, control characters, absurd counts, a missing job.
    let mut raw = job_to_pb(&Job::exec("ok-name", "echo", vec![]));
    raw.r#type = 99;
    raw.task_groups[0].count = Some(u32::MAX);
    raw.task_groups[0].tasks[0].driver = None;
    raw.meta.insert("note".into(), "ring\u{7}".into());
    assert_refused(
        jobs.submit_job(pb::SubmitJobRequest { job: Some(raw), ..Default::default() }).await,
        Code::InvalidArgument,
        &[
            "type: unknown job type 99",
            "task_groups[0].count: must be at most",
            "task_groups[0].tasks[0].driver",
            "meta.note",
        ],
    )
    .await;
    assert_refused(
        jobs.submit_job(pb::SubmitJobRequest { job: None, ..Default::default() }).await,
        Code::InvalidArgument,
        &["job: must be set"],
    )
    .await;
    let mut control = job_to_pb(&Job::exec("x", "echo", vec![]));
    control.name = "evil\nname".into();
    assert_refused(
        jobs.submit_job(pb::SubmitJobRequest { job: Some(control), ..Default::default() }).await,
        Code::InvalidArgument,
        &["name:"],
    )
    .await;

    // Oversized messages are refused by the transport before any handler runs.
    let mut huge = job_to_pb(&Job::exec("huge", "echo", vec![]));
    huge.meta.insert("blob".into(), "x".repeat(5 * 1024 * 1024));
    let status =
        jobs.submit_job(pb::SubmitJobRequest { job: Some(huge), ..Default::default() }).await.expect_err("too large");
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");

    // Unknown names.
    assert_refused(
        jobs.get_job(pb::GetJobRequest { name: "nope".into(), ..Default::default() }).await,
        Code::NotFound,
        &["job \"nope\" not found"],
    )
    .await;
    assert_refused(
        jobs.stop_job(pb::StopJobRequest { name: "nope".into(), purge: false, ..Default::default() }).await,
        Code::NotFound,
        &["not found"],
    )
    .await;
    assert_refused(
        jobs.get_job_status(pb::GetJobStatusRequest { name: "no such/job".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        &["name:"],
    )
    .await;

    // Membership nonsense.
    let mut members = cluster.cluster_client(follower).await;
    assert_refused(
        members.add_server(pb::AddServerRequest { id: 0, addr: "127.0.0.1:1".into() }).await,
        Code::InvalidArgument,
        &["id: must be > 0"],
    )
    .await;
    assert_refused(
        members.add_server(pb::AddServerRequest { id: 9, addr: "nonsense".into() }).await,
        Code::InvalidArgument,
        &["addr: expected HOST:PORT"],
    )
    .await;

    // Allocations and nodes.
    let mut allocs =
        helios_api::pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(leader).await);
    assert_refused(
        allocs.get_allocation(pb::GetAllocationRequest { id: "zz!".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        &["id:"],
    )
    .await;
    assert_refused(
        allocs.get_allocation(pb::GetAllocationRequest { id: "abcd".into(), ..Default::default() }).await,
        Code::NotFound,
        &["abcd"],
    )
    .await;

    // Nothing stored changed, and the servers still serve writes.
    let after = jobs.list_jobs(pb::ListJobsRequest::default()).await.expect("list").into_inner();
    assert_eq!(before, after);
    assert!(cluster.submit(follower, "still-serving").await.changed);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_an_older_stored_format_is_refused_before_its_payload_is_read() {
    use helios_api::pb::raft_peer_client::RaftPeerClient;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let mut peer = RaftPeerClient::new(cluster.channel(1).await);
    // The oldest builds send no format; format 2 cannot read (nor write) versioned records.
    for (format, shown) in [(None, "none (an older build)"), (Some("2"), "2")] {
        let mut request = tonic::Request::new(pb::RaftPayload { data: vec![0xff; 16] });
        if let Some(f) = format {
            request.metadata_mut().insert("helios-stored-format", f.parse().expect("ascii"));
        }
        let refused = peer.append_entries(request).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().starts_with(&format!("the peer sends stored format {shown}, but this server (format ")),
            "{}",
            refused.message()
        );
    }
    // A newer build is heard (it writes what this one reads): its request gets past the format
    // check, to be refused here only for naming no sender.
    let mut request = tonic::Request::new(pb::RaftPayload { data: vec![0xff; 16] });
    request.metadata_mut().insert("helios-stored-format", "99".parse().expect("ascii"));
    let refused = peer.append_entries(request).await.expect_err("no sender");
    assert!(!refused.message().contains("stored format"), "{refused:?}");
    // The cluster keeps working.
    cluster.submit_job(1, &helios_core::Job::exec("after", "true", vec![])).await;
    cluster.shutdown().await;
}
