//! Every public and agent request, generated with hostile fields (control characters, slashes,
//! over-long and empty names, huge counts, absurd resources, unknown enum values, random
//! secrets), sent to a real server over gRPC while a real agent runs a job on it. Each request
//! is answered, a refusal carries a clear code and message (never `Internal` or `Unknown`), the
//! server keeps serving, and the stored jobs, allocations and nodes are exactly as before.
//! Peer (Raft) requests get random payloads.

mod common;

use common::{start_agent, wait_for, TestCluster};
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::AllocationClientStatus;
use helios_core::limits::{MAX_GROUP_COUNT, MAX_MEMORY_MB, MAX_NAME_LEN};
use helios_core::{Job, JobType};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;

/// A name no request may accept: empty, with a control character or a separator, or too long.
fn bad_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{0,6}[\\x00-\\x1f\\x7f][a-z]{0,6}",
        "[a-z]{0,6}[ /\\\\@#*!?$%]+[a-z]{0,6}",
        proptest::string::string_regex(&format!("[a-z]{{{},{}}}", MAX_NAME_LEN + 1, MAX_NAME_LEN + 200))
            .expect("regex"),
        "\\PC{0,8}[\\x00-\\x1f]\\PC{0,8}",
    ]
}

/// Any text at all, for requests that only read.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![bad_name(), "[a-z0-9-]{1,12}", any::<String>()]
}

/// A job no server may store: a bad name, or the real job's name with one absurd field.
fn bad_job() -> impl Strategy<Value = pb::Job> {
    let keeper = || job_to_pb(&keeper_job());
    prop_oneof![
        bad_name().prop_map(move |name| pb::Job { name, ..keeper() }),
        (MAX_GROUP_COUNT + 1..=u32::MAX).prop_map(move |count| {
            let mut job = keeper();
            job.task_groups[0].count = Some(count);
            job
        }),
        prop_oneof![Just(0u32), MAX_MEMORY_MB + 1..=u32::MAX].prop_map(move |memory| {
            let mut job = keeper();
            job.task_groups[0].tasks[0].resources.as_mut().expect("resources").memory_mb = memory;
            job
        }),
        (4i32..).prop_map(move |kind| pb::Job { r#type: kind, ..keeper() }),
        (101u32..).prop_map(move |priority| pb::Job { priority, ..keeper() }),
        Just(pb::Job { task_groups: Vec::new(), ..keeper() }),
    ]
}

#[derive(Debug, Clone)]
enum Request {
    Submit(pb::Job),
    Plan(pb::Job),
    GetJob(String),
    Status(String),
    Versions(String),
    Stop(String, bool),
    ListAllocs(Option<String>, Option<String>),
    GetAlloc(String),
    StopAlloc(String),
    Logs(String, String, Option<u32>),
    GetNode(String),
    Drain(String, bool),
    Eligibility(String, bool),
    AddServer(u64, String),
    RemoveServer(u64),
    Members(bool),
    Digest,
    Register(String, String),
    Heartbeat(String, String),
    Report(String, String, Vec<(String, String)>),
    Watch(String, String),
}

fn request() -> impl Strategy<Value = Request> {
    let node = || prop_oneof![Just("n1".to_string()), any_text()];
    prop_oneof![
        bad_job().prop_map(Request::Submit),
        bad_job().prop_map(Request::Plan),
        any_text().prop_map(Request::GetJob),
        any_text().prop_map(Request::Status),
        any_text().prop_map(Request::Versions),
        (bad_name(), any::<bool>()).prop_map(|(n, p)| Request::Stop(n, p)),
        (proptest::option::of(any_text()), proptest::option::of(any_text()))
            .prop_map(|(j, n)| Request::ListAllocs(j, n)),
        any_text().prop_map(Request::GetAlloc),
        bad_name().prop_map(Request::StopAlloc),
        (any_text(), any_text(), proptest::option::of(any::<u32>())).prop_map(|(a, t, n)| Request::Logs(a, t, n)),
        any_text().prop_map(Request::GetNode),
        (bad_name(), any::<bool>()).prop_map(|(n, e)| Request::Drain(n, e)),
        (bad_name(), any::<bool>()).prop_map(|(n, e)| Request::Eligibility(n, e)),
        (2u64.., bad_name()).prop_map(|(id, addr)| Request::AddServer(id, addr)),
        (2u64..).prop_map(Request::RemoveServer),
        any::<bool>().prop_map(Request::Members),
        Just(Request::Digest),
        (prop_oneof![Just("n1".to_string()), bad_name()], any_text()).prop_map(|(n, s)| Request::Register(n, s)),
        (node(), any_text()).prop_map(|(n, s)| Request::Heartbeat(n, s)),
        (node(), any_text(), proptest::collection::vec((any_text(), any_text()), 0..4))
            .prop_map(|(n, s, u)| Request::Report(n, s, u)),
        (node(), any_text()).prop_map(|(n, s)| Request::Watch(n, s)),
    ]
}

fn keeper_job() -> Job {
    let mut job = Job::exec("keeper", "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    job
}

/// What must not change: every job with its versions, every allocation, every node.
async fn stored(cluster: &TestCluster) -> (Vec<pb::JobSummary>, Vec<pb::Job>, Vec<pb::Allocation>, Vec<pb::Node>) {
    let channel = cluster.channel(1).await;
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(channel.clone());
    let mut nodes = pb::node_service_client::NodeServiceClient::new(channel);
    let summaries = jobs.list_jobs(pb::ListJobsRequest::default()).await.expect("list jobs").into_inner().jobs;
    let versions = jobs
        .get_job_versions(pb::GetJobVersionsRequest { name: "keeper".into(), ..Default::default() })
        .await
        .expect("versions")
        .into_inner();
    let all = pb::ListAllocationsRequest { job_name: None, node_id: None, ..Default::default() };
    let allocations = allocs.list_allocations(all).await.expect("list allocations").into_inner().allocations;
    let node_list = nodes.list_nodes(pb::ListNodesRequest::default()).await.expect("list nodes").into_inner().nodes;
    (summaries, versions.versions, allocations, node_list)
}

/// Sends one request; a refusal must be one a client can act on, with a message.
async fn send(cluster: &TestCluster, request: Request) -> Result<(), TestCaseError> {
    let channel = cluster.channel(1).await;
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(channel.clone());
    let mut nodes = pb::node_service_client::NodeServiceClient::new(channel.clone());
    let mut members = pb::cluster_service_client::ClusterServiceClient::new(channel.clone());
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let must_refuse = matches!(
        request,
        Request::Submit(_)
            | Request::Stop(..)
            | Request::StopAlloc(_)
            | Request::Drain(..)
            | Request::Eligibility(..)
            | Request::AddServer(..)
            | Request::Register(..)
            | Request::Heartbeat(..)
            | Request::Report(..)
            | Request::Watch(..)
    );
    let outcome: Result<(), tonic::Status> = match request.clone() {
        Request::Submit(job) => {
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job), ..Default::default() }).await.map(drop)
        }
        Request::Plan(job) => jobs.plan_job(pb::PlanJobRequest { job: Some(job) }).await.map(drop),
        Request::GetJob(name) => jobs.get_job(pb::GetJobRequest { name, ..Default::default() }).await.map(drop),
        Request::Status(name) => {
            jobs.get_job_status(pb::GetJobStatusRequest { name, ..Default::default() }).await.map(drop)
        }
        Request::Versions(name) => {
            jobs.get_job_versions(pb::GetJobVersionsRequest { name, ..Default::default() }).await.map(drop)
        }
        Request::Stop(name, purge) => {
            jobs.stop_job(pb::StopJobRequest { name, purge, ..Default::default() }).await.map(drop)
        }
        Request::ListAllocs(job_name, node_id) => allocs
            .list_allocations(pb::ListAllocationsRequest { job_name, node_id, ..Default::default() })
            .await
            .map(drop),
        Request::GetAlloc(id) => {
            allocs.get_allocation(pb::GetAllocationRequest { id, ..Default::default() }).await.map(drop)
        }
        Request::StopAlloc(id) => allocs.stop_allocation(pb::StopAllocationRequest { id }).await.map(drop),
        Request::Logs(alloc_id, task, tail) => {
            let request = pb::AllocLogsRequest { id: alloc_id, task, stderr: false, tail, follow: false };
            allocs.alloc_logs(request).await.map(drop)
        }
        Request::GetNode(id) => nodes.get_node(pb::GetNodeRequest { id, ..Default::default() }).await.map(drop),
        Request::Drain(id, enable) => {
            nodes.drain_node(pb::DrainNodeRequest { id, enable, ..Default::default() }).await.map(drop)
        }
        Request::Eligibility(id, eligible) => {
            nodes.set_eligibility(pb::SetEligibilityRequest { id, eligible, ..Default::default() }).await.map(drop)
        }
        Request::AddServer(id, addr) => members.add_server(pb::AddServerRequest { id, addr }).await.map(drop),
        Request::RemoveServer(id) => members.remove_server(pb::RemoveServerRequest { id }).await.map(drop),
        Request::Members(local) => members.list_members(pb::ListMembersRequest { local }).await.map(drop),
        Request::Digest => members.state_digest(pb::StateDigestRequest {}).await.map(drop),
        Request::Register(id, secret) => {
            // n1 is alive with another secret; any other id here is not a valid node id.
            let node = pb::Node { id, hostname: "h".into(), rpc_addr: "127.0.0.1:1".into(), ..Default::default() };
            agent.register(pb::RegisterRequest { node: Some(node), secret }).await.map(drop)
        }
        Request::Heartbeat(node_id, secret) => {
            agent.heartbeat(pb::HeartbeatRequest { node_id, secret }).await.map(drop)
        }
        Request::Report(node_id, secret, updates) => {
            let updates = updates
                .into_iter()
                .map(|(alloc_id, client_status)| pb::AllocationUpdate { alloc_id, client_status, ..Default::default() })
                .collect();
            agent.update_allocations(pb::UpdateAllocationsRequest { node_id, secret, updates }).await.map(drop)
        }
        Request::Watch(node_id, secret) => {
            agent.watch_allocations(pb::WatchAllocationsRequest { node_id, secret, paged: true }).await.map(drop)
        }
    };
    match outcome {
        Ok(()) => prop_assert!(!must_refuse, "{request:?} was accepted"),
        Err(status) => {
            let clear = [
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
                Code::PermissionDenied,
                Code::OutOfRange,
                Code::AlreadyExists,
            ];
            prop_assert!(clear.contains(&status.code()), "{request:?} got {status:?}");
            prop_assert!(!status.message().is_empty(), "{request:?} got an empty message");
        }
    }
    Ok(())
}

#[test]
fn hostile_requests_are_refused_clearly_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let cluster = rt.block_on(TestCluster::start(1));
    let agent = rt.block_on(async {
        cluster.leader().await;
        let agent = start_agent(&cluster, "n1", dir.path()).await;
        cluster.submit_job(1, &keeper_job()).await;
        wait_for("the keeper job running", || async {
            let status = cluster.job_status(1, "keeper").await;
            status.allocations.iter().any(|a| a.client_status() == AllocationClientStatus::Running).then_some(())
        })
        .await;
        agent
    });
    let before = rt.block_on(stored(&cluster));

    let config = Config { cases: 400, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&request(), |request| rt.block_on(send(&cluster, request)));

    // Still serving, and nothing stored changed (the agent's node and task are untouched).
    let after = rt.block_on(stored(&cluster));
    let still = rt.block_on(cluster.submit(1, "still-serving"));
    rt.block_on(async {
        agent.stop().await;
        cluster.shutdown().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(before, after, "hostile requests changed the stored state");
    assert!(still.changed);
}

/// Random bytes as the payload of every peer (Raft) request, sent with the right format stamp:
/// each is answered (an undecodable payload is `InvalidArgument`) and the server keeps serving.
/// Stored state is not compared here: bytes that happen to decode are a valid Raft message from a
/// member (tests/peer_api.rs covers what a non-member or a forged member is refused).
#[test]
fn garbage_between_servers_is_refused_and_the_server_keeps_serving() {
    use helios_api::pb::raft_peer_client::RaftPeerClient;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cluster = rt.block_on(TestCluster::start(1));
    rt.block_on(cluster.leader());
    let config = Config { cases: 300, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let strategy = (0usize..5, proptest::collection::vec(any::<u8>(), 0..2048));
    let result = runner.run(&strategy, |(rpc, data)| {
        rt.block_on(async {
            let mut peer = RaftPeerClient::new(cluster.channel(1).await);
            let mut request = tonic::Request::new(pb::RaftPayload { data });
            // Named as the server itself, a member, so the bytes reach the decoder.
            request.metadata_mut().insert(helios_server::raft::peer_auth::PEER_ID_HEADER, 1u64.into());
            let format = helios_server::store::tables::FORMAT_VERSION.to_string();
            request.metadata_mut().insert("helios-stored-format", format.parse().expect("ascii"));
            let answer = match rpc {
                0 => peer.append_entries(request).await,
                1 => peer.vote(request).await,
                2 => peer.pre_vote(request).await,
                3 => peer.forward(request).await,
                _ => peer.status(request).await,
            };
            if let Err(status) = answer {
                let clear = [
                    Code::InvalidArgument,
                    Code::FailedPrecondition,
                    Code::NotFound,
                    Code::Unavailable,
                    Code::PermissionDenied,
                ];
                prop_assert!(clear.contains(&status.code()), "peer rpc {rpc} got {status:?}");
                prop_assert!(!status.message().is_empty());
            }
            Ok(())
        })
    });
    let still = rt.block_on(async {
        cluster.leader().await;
        cluster.submit(1, "after-garbage").await
    });
    rt.block_on(cluster.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(still.changed);
}
