//! Safe retries and check-and-set on a real three-server cluster (issue 16): a write whose
//! answer was lost (its deadline passed while the cluster had no quorum: stored in one run, not in
//! another) is retried with its `request_id` through another server and applied exactly once; an
//! id reused for another request is refused; a read-modify-write that lost a race is ABORTED
//! instead of overwriting the winner's change.

mod common;

use std::time::Duration;

use common::TestCluster;
use helios_api::convert::{job_from_pb, job_to_pb};
use helios_api::pb;
use helios_core::Job;
use tonic::Code;
use tonic_types::StatusExt;

fn submit(job: &Job, request_id: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest { job: Some(job_to_pb(job)), request_id: request_id.into(), ..Default::default() }
}

async fn versions(cluster: &TestCluster, via: u64, name: &str) -> Vec<u64> {
    let request = pb::GetJobVersionsRequest { name: name.into(), ..Default::default() };
    let reply = cluster.jobs(via).await.get_job_versions(request).await.expect("versions").into_inner();
    reply.versions.iter().map(|v| v.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_answer_was_lost_is_retried_through_another_server_and_applied_once() {
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let leader = cluster.leader().await;
    let (a, b) = match leader {
        1 => (2, 3),
        2 => (1, 3),
        _ => (1, 2),
    };
    // Without a quorum the write cannot commit before the caller's deadline: its fate is
    // unknown to the caller (the entry may commit once the servers are back).
    cluster.stop(a).await;
    cluster.stop(b).await;
    let job = Job::exec("lost-answer", "/bin/true", Vec::new());
    let mut first = tonic::Request::new(submit(&job, "retry-1"));
    first.set_timeout(Duration::from_secs(2));
    let lost = cluster.jobs(leader).await.submit_job(first).await.expect_err("no quorum");
    assert_eq!(lost.code(), Code::DeadlineExceeded, "{lost:?}");
    cluster.restart(a).await;
    cluster.restart(b).await;
    cluster.leader().await;

    // The retry goes through another server: one version, whatever the first attempt did.
    let retried = cluster.jobs(a).await.submit_job(submit(&job, "retry-1")).await.expect("retry").into_inner();
    let again = cluster.jobs(b).await.submit_job(submit(&job, "retry-1")).await.expect("again").into_inner();
    assert_eq!((retried.version, retried.changed), (0, true), "{retried:?}");
    assert_eq!((again.version, again.changed, &again.eval_id), (0, true, &retried.eval_id), "the first answer again");
    assert_eq!(versions(&cluster, a, "lost-answer").await, [0]);
    let status = cluster.job_status(b, "lost-answer").await;
    assert_eq!(status.evaluations.len(), 1, "one evaluation: {:?}", status.evaluations);
    assert_eq!(status.evaluations[0].id, retried.eval_id);

    // The same id for a different request is refused, by name, and changes nothing.
    let mut changed = job.clone();
    changed.meta.insert("release".into(), "2".into());
    let reused = cluster.jobs(a).await.submit_job(submit(&changed, "retry-1")).await.expect_err("reused");
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert!(reused.message().contains("request_id \"retry-1\""), "{}", reused.message());
    assert_eq!(reused.get_details_error_info().map(|i| i.reason).as_deref(), Some("REQUEST_ID_REUSED"));
    assert_eq!(versions(&cluster, b, "lost-answer").await, [0]);

    // A stop retried after it purged the job gets its answer, not NOT_FOUND.
    let stop = pb::StopJobRequest { name: "lost-answer".into(), purge: true, request_id: "stop-1".into() };
    let stopped = cluster.jobs(a).await.stop_job(stop.clone()).await.expect("stop").into_inner();
    let repeated = cluster.jobs(b).await.stop_job(stop).await.expect("the retry is answered").into_inner();
    assert_eq!(repeated.eval_id, stopped.eval_id);

    // A request id is short printable ASCII.
    let bad = cluster.jobs(a).await.submit_job(submit(&job, "not an id")).await.expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("request_id"), "{}", bad.message());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_modify_write_that_lost_a_race_is_aborted_not_lost() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let mut job = Job::exec("raced", "/bin/true", Vec::new());
    job.task_groups[0].count = 1;
    let create = pb::SubmitJobRequest { job: Some(job_to_pb(&job)), create_only: true, ..Default::default() };
    cluster.jobs(1).await.submit_job(create.clone()).await.expect("created");
    let exists = cluster.jobs(2).await.submit_job(create).await.expect_err("create-only over a stored job");
    assert_eq!(exists.code(), Code::Aborted, "{exists:?}");
    assert!(exists.message().contains("already exists"), "{}", exists.message());

    // Two writers read version 0 and each change one thing.
    let read = |via| {
        let cluster = &cluster;
        async move {
            let request = pb::GetJobRequest { name: "raced".into(), ..Default::default() };
            let stored = cluster.jobs(via).await.get_job(request).await.expect("get").into_inner().job.expect("job");
            let version = stored.version;
            Job { version, ..job_from_pb(stored).expect("a job") }
        }
    };
    let (mut scaled, mut labelled) = (read(1).await, read(3).await);
    scaled.task_groups[0].count = 3;
    labelled.meta.insert("owner".into(), "team-b".into());
    let over = |job: &Job, version| pb::SubmitJobRequest {
        job: Some(job_to_pb(job)),
        expected_version: Some(version),
        ..Default::default()
    };
    let won = cluster.jobs(2).await.submit_job(over(&scaled, 0)).await.expect("first writer").into_inner();
    assert_eq!(won.version, 1);
    let lost = cluster.jobs(3).await.submit_job(over(&labelled, 0)).await.expect_err("second writer");
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert!(lost.message().contains("version 1, not the expected 0"), "{}", lost.message());
    assert_eq!(lost.get_details_error_info().map(|i| i.reason).as_deref(), Some("VERSION_CONFLICT"));
    let stored = read(1).await;
    assert_eq!((stored.version, stored.task_groups[0].count), (1, 3), "the winner's change stands");
    assert!(!stored.meta.contains_key("owner"));

    // Read again, change again: both changes land.
    let mut labelled = read(3).await;
    labelled.meta.insert("owner".into(), "team-b".into());
    cluster.jobs(3).await.submit_job(over(&labelled, 1)).await.expect("after a fresh read");
    let stored = read(2).await;
    assert_eq!((stored.task_groups[0].count, stored.meta.get("owner").map(String::as_str)), (3, Some("team-b")));

    // Both conditions at once is a contradiction, named.
    let both = pb::SubmitJobRequest { expected_version: Some(2), create_only: true, ..over(&stored, 2) };
    let refused = cluster.jobs(1).await.submit_job(both).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("create_only"), "{}", refused.message());
    cluster.shutdown().await;
}
