//! ACLs: with `--acl-enabled`, every public call needs a token whose policies grant it.
//! Anonymous callers are refused, a read-only token reads and does not write, a management token
//! does everything, and a deleted or expired token stops working at once on every server.

mod common;

use std::time::Duration;

use common::{wait_for, TestCluster};
use helios_api::acl::WithToken;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::acl_service_client::AclServiceClient;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_api::pb::node_service_client::NodeServiceClient;
use helios_core::Job;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Conn = InterceptedService<Channel, WithToken>;

/// A channel to server `id` whose every call carries `secret` (or no token).
async fn as_token(cluster: &TestCluster, id: u64, secret: Option<&str>) -> Conn {
    InterceptedService::new(cluster.channel(id).await, WithToken::new(secret).expect("token"))
}

fn submit_request(name: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest { job: Some(job_to_pb(&Job::exec(name, "echo", vec![name.into()]))), ..Default::default() }
}

fn token_request(name: &str, policy: &str, ttl_ms: u64) -> pb::CreateAclTokenRequest {
    pb::CreateAclTokenRequest { name: name.into(), r#type: String::new(), policies: vec![policy.into()], ttl_ms }
}

/// A client token holding `policy`, with its secret.
async fn create_token(acl: &mut AclServiceClient<Conn>, name: &str, policy: &str, ttl_ms: u64) -> pb::AclToken {
    let reply = acl.create_token(token_request(name, policy, ttl_ms)).await.expect("token");
    reply.into_inner().token.expect("token")
}

fn denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, capability: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(status.message().contains(capability), "{what}: {}", status.message());
    let reason = tonic_types::StatusExt::get_details_error_info(&status).map(|i| i.reason);
    assert_eq!(reason.as_deref(), Some("PERMISSION_DENIED"), "{what}: a typed error");
}

/// A level by its word; "" is no rule, and a word no level has is a number no `AclLevel` has.
fn level(word: &str) -> i32 {
    match word {
        "" => pb::AclLevel::Unspecified as i32,
        word => helios_api::acl::level_from_word(word).map_or(99, |level| level as i32),
    }
}

fn policy(name: &str, job: &str, node: &str) -> pb::UpsertAclPolicyRequest {
    pb::UpsertAclPolicyRequest {
        policy: Some(pb::AclPolicy {
            name: name.into(),
            rules: Some(pb::AclPolicyRules { job_policy: level(job), node: level(node), ..Default::default() }),
            source: format!("namespace \"default\" {{ policy = \"{job}\" }}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_policies_decide_every_call_on_every_server() {
    // No `cluster.leader()`: its member list needs a token too. Every call below waits out the
    // first election by itself.
    let cluster = TestCluster::start_acl(3).await;

    // Anonymous: refused, naming what was needed.
    let anon = as_token(&cluster, 1, None).await;
    denied(JobServiceClient::new(anon.clone()).submit_job(submit_request("a")).await, "submit-job", "anonymous submit");
    denied(
        JobServiceClient::new(anon.clone()).list_jobs(pb::ListJobsRequest::default()).await,
        "list-jobs",
        "anonymous list",
    );
    let stop = pb::StopJobRequest { name: "a".into(), purge: false, ..Default::default() };
    denied(JobServiceClient::new(anon.clone()).stop_job(stop.clone()).await, "submit-job", "anonymous stop");
    let drain = pb::DrainNodeRequest { id: "n1".into(), enable: true, ..Default::default() };
    denied(NodeServiceClient::new(anon.clone()).drain_node(drain.clone()).await, "node:write", "anonymous drain");
    let join = pb::AddServerRequest { id: 4, addr: "127.0.0.1:1".into() };
    denied(ClusterServiceClient::new(anon.clone()).add_server(join.clone()).await, "operator:write", "anonymous join");
    let logs = pb::AllocLogsRequest { id: "x".into(), task: String::new(), stderr: false, tail: None, follow: false };
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(anon.clone());
    denied(allocs.alloc_logs(logs).await.map(drop), "read-logs", "anonymous logs");
    denied(
        AclServiceClient::new(anon.clone()).list_tokens(pb::ListAclTokensRequest::default()).await,
        "management",
        "anonymous tokens",
    );

    // Bootstrap, once.
    let boot = AclServiceClient::new(anon.clone()).bootstrap(pb::AclBootstrapRequest {}).await.expect("bootstrap");
    let root = boot.into_inner().token.expect("token");
    assert_eq!(root.r#type(), pb::AclTokenType::Management);
    assert!(!root.secret_id.is_empty());
    let again = AclServiceClient::new(as_token(&cluster, 2, None).await).bootstrap(pb::AclBootstrapRequest {}).await;
    let refusal = again.expect_err("a second bootstrap");
    assert_eq!(refusal.code(), Code::FailedPrecondition);
    // The reset: the index the refusal names, in acl-bootstrap-reset in a server's data dir
    // (here every server shares one), and bootstrap works once more.
    let index: u64 = refusal
        .message()
        .split("reset index ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reset index in {}", refusal.message()));
    std::fs::write(cluster.data_dir().join("acl-bootstrap-reset"), format!("{}\n", index + 1)).expect("write");
    let wrong = AclServiceClient::new(anon.clone()).bootstrap(pb::AclBootstrapRequest {}).await;
    assert_eq!(wrong.expect_err("a wrong reset index").code(), Code::FailedPrecondition);
    std::fs::write(cluster.data_dir().join("acl-bootstrap-reset"), format!("{index}\n")).expect("write");
    let reset = AclServiceClient::new(anon.clone()).bootstrap(pb::AclBootstrapRequest {}).await.expect("reset");
    let second_root = reset.into_inner().token.expect("token");
    std::fs::remove_file(cluster.data_dir().join("acl-bootstrap-reset")).expect("remove");
    let with_second = as_token(&cluster, 3, Some(&second_root.secret_id)).await;
    JobServiceClient::new(with_second).list_jobs(pb::ListJobsRequest::default()).await.expect("the reset token works");

    // Management: everything.
    let admin = as_token(&cluster, 2, Some(&root.secret_id)).await;
    JobServiceClient::new(admin.clone()).submit_job(submit_request("by-admin")).await.expect("admin submits");
    let mut acl = AclServiceClient::new(admin.clone());
    acl.upsert_policy(policy("readonly", "read", "read")).await.expect("policy");
    let bad = acl.upsert_policy(policy("bad", "admin", "")).await.expect_err("an unknown level");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("policy.rules.job_policy"), "{}", bad.message());
    let reader = create_token(&mut acl, "reader", "readonly", 0).await;
    let missing = acl.create_token(token_request("x", "nope", 0)).await.expect_err("a token of a missing policy");
    assert_eq!(missing.code(), Code::NotFound);

    // Read-only: reads on any server, writes nowhere.
    for id in 1..=3 {
        let ro = as_token(&cluster, id, Some(&reader.secret_id)).await;
        let names =
            JobServiceClient::new(ro.clone()).list_jobs(pb::ListJobsRequest::default()).await.expect("reader lists");
        assert_eq!(names.into_inner().jobs.len(), 1);
        NodeServiceClient::new(ro.clone())
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .expect("reader lists nodes");
        denied(JobServiceClient::new(ro.clone()).submit_job(submit_request("r")).await, "submit-job", "reader submits");
        denied(NodeServiceClient::new(ro.clone()).drain_node(drain.clone()).await, "node:write", "reader drains");
        let me = AclServiceClient::new(ro.clone()).get_token_self(pb::GetAclTokenSelfRequest {}).await.expect("self");
        assert_eq!(me.into_inner().token.expect("token").accessor_id, reader.accessor_id);
        assert!(AclServiceClient::new(ro).list_tokens(pb::ListAclTokensRequest::default()).await.is_err());
    }
    // Tokens are listed without their secrets.
    let listed = acl.list_tokens(pb::ListAclTokensRequest::default()).await.expect("list").into_inner().tokens;
    assert_eq!(listed.len(), 3, "two bootstrap tokens and the reader");
    assert!(listed.iter().all(|t| t.secret_id.is_empty()));

    // Deleted through server 2: refused at once by every server.
    acl.delete_token(pb::DeleteAclTokenRequest { accessor_id: reader.accessor_id.clone(), ..Default::default() })
        .await
        .expect("delete");
    for id in 1..=3 {
        let ro = as_token(&cluster, id, Some(&reader.secret_id)).await;
        denied(
            NodeServiceClient::new(ro).list_nodes(pb::ListNodesRequest::default()).await,
            "node:read",
            "a deleted token",
        );
    }

    // An expiring token works until it expires, then nowhere.
    let brief = create_token(&mut acl, "brief", "readonly", 2_000).await;
    assert!(brief.expire_time.is_some());
    let on_three = as_token(&cluster, 3, Some(&brief.secret_id)).await;
    wait_for("the brief token to expire", || {
        let on_three = on_three.clone();
        async move { NodeServiceClient::new(on_three).list_nodes(pb::ListNodesRequest::default()).await.err() }
    })
    .await;
    for id in 1..=3 {
        let ro = as_token(&cluster, id, Some(&brief.secret_id)).await;
        denied(
            NodeServiceClient::new(ro).list_nodes(pb::ListNodesRequest::default()).await,
            "node:read",
            "an expired token",
        );
    }

    // Introducing a node needs a token granting node write (there is no TLS here).
    let node = common::fake_node("n9");
    let register = || pb::RegisterRequest { node: Some(node.clone()), secret: "s".into() };
    let mut agents = pb::agent_service_client::AgentServiceClient::new(anon.clone());
    denied(agents.register(register()).await, "node:write", "an unintroduced node");
    acl.upsert_policy(policy("node-intro", "", "write")).await.expect("policy");
    let intro = create_token(&mut acl, "intro", "node-intro", 0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent =
        common::start_agent_configured(&cluster, "n1", dir.path(), |c| c.node_token = Some(intro.secret_id.clone()))
            .await;
    let admin_nodes = NodeServiceClient::new(admin.clone());
    wait_for("the introduced agent's node to be ready", || {
        let mut nodes = admin_nodes.clone();
        async move {
            let listed = nodes.list_nodes(pb::ListNodesRequest::default()).await.ok()?.into_inner().nodes;
            listed.into_iter().find(|n| n.id == "n1" && n.status() == pb::NodeStatus::Ready)
        }
    })
    .await;
    agent.stop().await;

    // The anonymous policy, once written, is what callers without a token may do.
    acl.upsert_policy(policy("anonymous", "read", "")).await.expect("anonymous policy");
    JobServiceClient::new(anon.clone()).list_jobs(pb::ListJobsRequest::default()).await.expect("anonymous reads now");
    denied(
        JobServiceClient::new(anon).submit_job(submit_request("a")).await,
        "submit-job",
        "anonymous still cannot submit",
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_stream_needs_each_topics_capability_and_ends_when_its_token_is_deleted() {
    use pb::event_service_client::EventServiceClient;
    // (No `cluster.leader()`: it needs a token; the bootstrap waits out the election itself.)
    let cluster = TestCluster::start_acl(3).await;
    let anon = as_token(&cluster, 1, None).await;
    let boot = AclServiceClient::new(anon).bootstrap(pb::AclBootstrapRequest {}).await.expect("bootstrap");
    let management = boot.into_inner().token.expect("token").secret_id;
    let mut acl = AclServiceClient::new(as_token(&cluster, 2, Some(&management)).await);
    acl.upsert_policy(policy("jobs-only", "read", "")).await.expect("policy");
    let reader = create_token(&mut acl, "reader", "jobs-only", 0).await;
    let subscribe = |topics: Vec<pb::EventTopic>| {
        let topics = topics.into_iter().map(|t| pb::TopicFilter { topic: t as i32, keys: Vec::new() }).collect();
        pb::SubscribeRequest { topics, from_index: None }
    };
    let mut events = EventServiceClient::new(as_token(&cluster, 3, Some(&reader.secret_id)).await);
    let nodes = events.subscribe(subscribe(vec![pb::EventTopic::Node])).await;
    denied(nodes.map(drop), "node:read", "the node topic without node:read");
    denied(events.subscribe(subscribe(Vec::new())).await.map(drop), "node:read", "every topic without node:read");
    let unspecified = events.subscribe(subscribe(vec![pb::EventTopic::Unspecified])).await.expect_err("refused");
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    assert!(unspecified.message().contains("topics[0].topic"), "{}", unspecified.message());

    // Its job events arrive; once the token is deleted, the stream ends, refused.
    let mut stream = events.subscribe(subscribe(vec![pb::EventTopic::Job])).await.expect("jobs").into_inner();
    let mut jobs = JobServiceClient::new(as_token(&cluster, 1, Some(&management)).await);
    jobs.submit_job(submit_request("watched")).await.expect("submit");
    let start = stream.message().await.expect("stream").expect("the first message");
    assert!(start.events.is_empty(), "the first message only says where the stream starts");
    let batch = stream.message().await.expect("stream").expect("a batch");
    assert_eq!(batch.events[0].key, "watched");
    acl.delete_token(pb::DeleteAclTokenRequest { accessor_id: reader.accessor_id.clone(), ..Default::default() })
        .await
        .expect("delete");
    // A write after the deletion moves the stream on, and it checks the token again.
    jobs.submit_job(submit_request("after")).await.expect("submit");
    let ended = tokio::time::timeout(common::WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(batch)) => {
                    // Nothing logged after the deletion reaches the revoked token.
                    assert!(batch.events.iter().all(|e| e.key != "after"), "sent after the deletion: {batch:?}");
                }
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    denied(ended, "read-job", "a stream whose token was deleted");

    // A token that expires ends its stream too, with nothing changed in the ACLs.
    let created = std::time::Instant::now();
    let brief = create_token(&mut acl, "brief", "jobs-only", 1_500).await;
    let mut events = EventServiceClient::new(as_token(&cluster, 2, Some(&brief.secret_id)).await);
    let mut stream = events.subscribe(subscribe(vec![pb::EventTopic::Job])).await.expect("jobs").into_inner();
    let ended = tokio::time::timeout(common::WAIT, async {
        for n in 0.. {
            jobs.submit_job(submit_request(&format!("late-{n}"))).await.expect("submit");
            if let Ok(message) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                match message {
                    Ok(Some(_)) => {}
                    other => return other,
                }
            }
        }
        unreachable!()
    })
    .await
    .expect("the stream of an expired token ends");
    assert!(created.elapsed() >= Duration::from_millis(1_500), "ended before it expired: {:?}", created.elapsed());
    denied(ended, "read-job", "a stream whose token expired");
    cluster.shutdown().await;
}
