//! What any gRPC client may rely on, on a real three-server cluster: List calls in pages that
//! cover the list once in a stable order while it changes, follow from any server, refuse a bad
//! size or a foreign token by name, and stop short of a default client's 4 MiB limit (six
//! 0.85 MB job versions once exceeded it); a deadline that passes on the server is
//! DEADLINE_EXCEEDED (it was CANCELLED, which retry policies miss).

mod common;

use std::time::Duration;

use common::TestCluster;
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::allocation_service_client::AllocationServiceClient;
use helios_core::Job;
use tonic::Code;
use tonic_types::StatusExt;

fn job(name: &str) -> Job {
    Job::exec(name, "/bin/true", Vec::new())
}

fn list(page_size: u32, page_token: &str) -> pb::ListJobsRequest {
    pb::ListJobsRequest { page_size, page_token: page_token.to_string(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_cover_a_changing_list_once_in_order_from_any_server() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    for i in 0..7 {
        cluster.submit_job(1, &job(&format!("job-{i}"))).await;
    }
    let mut jobs = cluster.jobs(2).await;
    let first = jobs.list_jobs(list(3, "")).await.expect("page 1").into_inner();
    let names = |page: &pb::ListJobsResponse| page.jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), ["job-0", "job-1", "job-2"]);
    assert!(!first.next_page_token.is_empty());
    // Between pages: a job that sorts before the token's place, one after, and one removed.
    cluster.submit_job(1, &job("a-late")).await;
    cluster.submit_job(1, &job("zz-late")).await;
    let mut leader = cluster.jobs(1).await;
    leader
        .stop_job(pb::StopJobRequest { name: "job-4".into(), purge: true, ..Default::default() })
        .await
        .expect("purge");
    // The next page is asked of another server.
    let mut other = cluster.jobs(3).await;
    let second = other.list_jobs(list(3, &first.next_page_token)).await.expect("page 2").into_inner();
    assert_eq!(names(&second), ["job-3", "job-5", "job-6"]);
    let third = jobs.list_jobs(list(3, &second.next_page_token)).await.expect("page 3").into_inner();
    assert_eq!(names(&third), ["zz-late"]);
    assert!(third.next_page_token.is_empty(), "the last page has no token");

    // Refused by name: a size past the maximum, garbage, and a token of another list.
    let too_big = jobs.list_jobs(list(5001, "")).await.expect_err("refused");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(too_big.message().contains("page_size"), "{}", too_big.message());
    let garbage = jobs.list_jobs(list(0, "not a token")).await.expect_err("refused");
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(garbage.message().contains("page_token"), "{}", garbage.message());
    let mut allocs = AllocationServiceClient::new(cluster.channel(2).await);
    let request = pb::ListAllocationsRequest { page_token: first.next_page_token.clone(), ..Default::default() };
    let foreign = allocs.list_allocations(request).await.expect_err("refused");
    assert_eq!(foreign.code(), Code::InvalidArgument);
    assert!(foreign.message().contains("page_token"), "{}", foreign.message());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_job_versions_come_in_pages_a_default_client_accepts() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    // Six versions of about 0.85 MB each: 5.1 MB in all, past a default client's 4 MiB.
    let mut big = Job::exec("big", "/bin/true", vec!["x".repeat(60 * 1024); 14]);
    for version in 0..6 {
        big.meta.insert("release".into(), version.to_string());
        cluster.submit_job(1, &big).await;
    }
    // `cluster.jobs` is a client with tonic's default 4 MiB limit on what it decodes.
    let mut jobs = cluster.jobs(2).await;
    let request = pb::GetJobVersionsRequest { name: "big".into(), ..Default::default() };
    let first = jobs.get_job_versions(request.clone()).await.expect("the first page fits").into_inner();
    assert!(first.versions.len() < 6 && !first.next_page_token.is_empty(), "{} versions", first.versions.len());
    let all = every_page(request, |r| {
        let mut jobs = jobs.clone();
        async move { jobs.get_job_versions(r).await }
    })
    .await
    .expect("every page");
    assert_eq!(all.iter().map(|v| v.version).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_that_passes_on_the_server_is_deadline_exceeded() {
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await;
    // With two of three servers gone a write cannot commit: it waits past its deadline.
    cluster.stop(2).await;
    cluster.stop(3).await;
    let mut jobs = cluster.jobs(1).await;
    let mut request = tonic::Request::new(pb::SubmitJobRequest {
        job: Some(helios_api::convert::job_to_pb(&job("late"))),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(2));
    let expired = jobs.submit_job(request).await.expect_err("no quorum");
    assert_eq!(expired.code(), Code::DeadlineExceeded, "{expired:?}");
    assert_eq!(expired.get_details_error_info().map(|i| i.reason).as_deref(), Some("DEADLINE_EXCEEDED"));
    cluster.shutdown().await;
}

/// Errors are typed (AIP-193): an `ErrorInfo` with a stable reason on every error, and bad input
/// also a `BadRequest` whose paths are the request's own proto fields (a task's driver settings
/// were once named `config`, as in job files, where the proto has `exec`, `raw_exec`, `docker`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_carry_a_stable_reason_and_bad_fields_their_proto_paths() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    let mut jobs = cluster.jobs(2).await;
    let mut bad = helios_api::convert::job_to_pb(&job("bad"));
    if let Some(pb::task::Driver::Exec(exec)) = &mut bad.task_groups[0].tasks[0].driver {
        exec.command.clear();
    }
    bad.task_groups[0].tasks[0].resources = Some(pb::Resources { memory_mb: 0, cpu_mhz: 100 });
    let request = pb::SubmitJobRequest { job: Some(bad), ..Default::default() };
    let refused = jobs.submit_job(request).await.expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let details = refused.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_FIELD", "helios.v1"));
    let fields: Vec<&str> =
        details.bad_request().expect("bad request").field_violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"job.task_groups[0].tasks[0].exec.command"), "{fields:?}");
    assert!(fields.contains(&"job.task_groups[0].tasks[0].resources.memory_mb"), "{fields:?}");

    let request = pb::GetJobRequest { name: "absent".into(), ..Default::default() };
    let missing = jobs.get_job(request).await.expect_err("not found");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.get_details_error_info().map(|i| i.reason).as_deref(), Some("NOT_FOUND"));
    cluster.shutdown().await;
}
