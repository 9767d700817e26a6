//! Client agents (the real `helios-client` library) against in-process servers: registration,
//! heartbeats, a silent node going down and coming back, leader failover, identity.

mod common;

use std::time::Duration;

use common::{node, start_agent, wait_status, TestCluster, HEARTBEAT_TTL};
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_api::pb::AllocationClientStatus;
use helios_chaos::proxy::FreezableProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_goes_down_and_comes_back_when_its_agent_restarts() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("follower");
    let agent_dir = tempfile::tempdir().expect("temp dir");

    let agent = start_agent(&cluster, "n1", agent_dir.path()).await;
    let registered = wait_status(&cluster, follower, "n1", "ready").await;
    assert_eq!(registered.meta["rack"], "r1");
    assert_eq!(registered.resources, Some(pb::Resources { cpu_mhz: 4000, memory_mb: 8192 }));
    // exec, and docker exactly when an engine answers here (issue 4 tests it against one).
    let (exec, others): (Vec<&String>, Vec<&String>) = registered.drivers.iter().partition(|d| *d == "exec");
    assert_eq!(exec, ["exec"], "{:?}", registered.drivers);
    assert!(others.is_empty() || others == ["docker"], "{:?}", registered.drivers);
    assert_eq!(registered.attributes["os"], std::env::consts::OS);

    agent.stop().await;
    wait_status(&cluster, follower, "n1", "down").await;

    // The same agent (same data dir, so the same secret) takes its node back.
    let agent = start_agent(&cluster, "n1", agent_dir.path()).await;
    let back = wait_status(&cluster, follower, "n1", "ready").await;
    assert_eq!(back.register_time, registered.register_time, "it is the same node");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_failover_never_marks_healthy_nodes_down() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_agent(&cluster, "a", dir.path()).await;
    let b = start_agent(&cluster, "b", dir.path()).await;
    let via = cluster.running_ids().into_iter().find(|id| *id != leader).expect("follower");
    let before = [wait_status(&cluster, via, "a", "ready").await, wait_status(&cluster, via, "b", "ready").await];

    cluster.stop(leader).await;
    cluster.leader().await;
    // Asserting that something does not happen needs a window: watch for three TTLs after the
    // new leader took over (a broken grace period marks nodes down within one), sampling every
    // 100 ms; a node marked down even once, or any status change, fails the test.
    let watch_until = tokio::time::Instant::now() + HEARTBEAT_TTL * 3;
    while tokio::time::Instant::now() < watch_until {
        for old in &before {
            let now = node(&cluster, via, &old.id).await.expect("node still known");
            assert_eq!(now.status(), pb::NodeStatus::Ready, "node {} was marked down by the failover", old.id);
            assert_eq!(now.status_update_time, old.status_update_time, "node {} changed status", old.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_cannot_take_another_nodes_identity() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let real = wait_status(&cluster, 1, "n1", "ready").await;
    let mut api = AgentServiceClient::new(cluster.channel(1).await);

    let impostor = pb::RegisterRequest { node: Some(real.clone()), secret: "not-the-secret".into() };
    let refused = api.register(impostor).await.expect_err("impostor registration");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("belongs to another agent"), "{}", refused.message());

    let spoofed = api.heartbeat(pb::HeartbeatRequest { node_id: "n1".into(), secret: "guess".into() }).await;
    assert_eq!(spoofed.expect_err("spoofed heartbeat").code(), tonic::Code::PermissionDenied);
    let unknown = api.heartbeat(pb::HeartbeatRequest { node_id: "ghost".into(), secret: "x".into() }).await;
    assert_eq!(unknown.expect_err("unknown node").code(), tonic::Code::NotFound);
    let report = |node_id: &str, secret: &str| pb::UpdateAllocationsRequest {
        node_id: node_id.into(),
        secret: secret.into(),
        updates: Vec::new(),
    };
    let spoofed = api.update_allocations(report("n1", "guess")).await;
    assert_eq!(spoofed.expect_err("spoofed report").code(), tonic::Code::PermissionDenied);
    let unknown = api.update_allocations(report("ghost", "x")).await;
    assert_eq!(unknown.expect_err("report from an unknown node").code(), tonic::Code::NotFound);
    let watch = pb::WatchAllocationsRequest { node_id: "n1".into(), secret: "guess".into(), paged: true };
    let spoofed = api.watch_allocations(watch).await.map(|_| ());
    assert_eq!(spoofed.expect_err("spoofed watch").code(), tonic::Code::PermissionDenied);

    let mut garbage = real.clone();
    garbage.id = "bad id".into();
    garbage.rpc_addr = "nowhere".into();
    garbage.drivers = vec!["qemu".into()];
    let invalid = api.register(pb::RegisterRequest { node: Some(garbage), secret: String::new() }).await;
    let status = invalid.expect_err("invalid registration");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for field in ["id:", "rpc_addr:", "drivers[0]:", "secret:"] {
        assert!(status.message().contains(field), "{field} missing from {}", status.message());
    }
    // Nothing changed for the real node.
    let after = node(&cluster, 1, "n1").await.expect("node");
    assert_eq!(after.status(), pb::NodeStatus::Ready);
    assert_eq!(after.rpc_addr, real.rpc_addr);
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_nodes_id_stays_its_own_until_an_operator_purges_it() {
    use helios_api::pb::node_service_client::NodeServiceClient;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let real = wait_status(&cluster, 1, "n1", "ready").await;
    let mut nodes = NodeServiceClient::new(cluster.channel(1).await);
    let live = nodes
        .purge_node(pb::PurgeNodeRequest { id: "n1".into(), ..Default::default() })
        .await
        .expect_err("purged a live node");
    assert_eq!(live.code(), tonic::Code::FailedPrecondition, "{live:?}");
    let ghost = nodes
        .purge_node(pb::PurgeNodeRequest { id: "ghost".into(), ..Default::default() })
        .await
        .expect_err("purged nothing");
    assert_eq!(ghost.code(), tonic::Code::NotFound, "{ghost:?}");

    agent.stop().await;
    wait_status(&cluster, 1, "n1", "down").await;
    let mut api = AgentServiceClient::new(cluster.channel(1).await);
    let claim = || pb::RegisterRequest { node: Some(real.clone()), secret: "another-agents-secret".into() };
    let refused = api.register(claim()).await.expect_err("a down node's id was taken");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("node purge"), "{}", refused.message());
    assert_eq!(node(&cluster, 1, "n1").await.expect("still known").status(), pb::NodeStatus::Down);

    nodes.purge_node(pb::PurgeNodeRequest { id: "n1".into(), ..Default::default() }).await.expect("purge a down node");
    assert!(node(&cluster, 1, "n1").await.is_none(), "purged node still listed");
    api.register(claim()).await.expect("the freed id is registered again");
    assert_eq!(node(&cluster, 1, "n1").await.expect("registered").status(), pb::NodeStatus::Ready);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_cannot_report_on_another_nodes_allocation() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let real = wait_status(&cluster, 1, "n1", "ready").await;
    let mut job = helios_core::Job::exec("sleeper", "sleep", vec!["600".into()]);
    job.set_type(helios_core::JobType::Service);
    cluster.submit_job(1, &job).await;
    let running = common::wait_for("the allocation running on n1", || async {
        cluster
            .job_status(1, "sleeper")
            .await
            .allocations
            .into_iter()
            .find(|a| a.client_status() == AllocationClientStatus::Running)
    })
    .await;

    // A second, properly registered node claims n1's allocation has failed.
    let mut api = AgentServiceClient::new(cluster.channel(1).await);
    let other = pb::Node { id: "n2".into(), ..real };
    api.register(pb::RegisterRequest { node: Some(other), secret: "n2-secret".into() }).await.expect("register n2");
    let forged = pb::AllocationUpdate {
        alloc_id: running.id.clone(),
        client_status: "failed".into(),
        client_description: "forged".into(),
        ..Default::default()
    };
    let request =
        pb::UpdateAllocationsRequest { node_id: "n2".into(), secret: "n2-secret".into(), updates: vec![forged] };
    let refused = api.update_allocations(request).await.expect_err("a report on another node's allocation");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("is not on node n2"), "{}", refused.message());

    let after = cluster.job_status(1, "sleeper").await.allocations;
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0].id.as_str(), after[0].client_status()),
        (running.id.as_str(), AllocationClientStatus::Running)
    );
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_server_does_not_get_a_healthy_node_marked_down() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let real = cluster.addrs.values().next().expect("a server").to_string();
    let proxy = FreezableProxy::start(real.clone()).await.expect("proxy");
    let dir = tempfile::tempdir().expect("temp dir");
    // The proxy first, so the agent registers and heartbeats through it.
    let agent = common::start_agent_configured(&cluster, "n1", dir.path(), |config| {
        config.servers = vec![format!("http://{}", proxy.addr), format!("http://{real}")];
    })
    .await;
    let ready = wait_status(&cluster, 1, "n1", "ready").await;

    // The server behind the proxy hangs: heartbeats must reach the other address in time. Over
    // several TTLs the node must never be marked down.
    proxy.freeze();
    let window = tokio::time::Instant::now() + HEARTBEAT_TTL * 4;
    while tokio::time::Instant::now() < window {
        let now = node(&cluster, 1, "n1").await.expect("node");
        assert_eq!(now.status(), pb::NodeStatus::Ready, "marked down while one of its servers hung");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node(&cluster, 1, "n1").await.expect("node").status_update_time, ready.status_update_time);
    proxy.thaw();
    agent.stop().await;
    cluster.shutdown().await;
}
