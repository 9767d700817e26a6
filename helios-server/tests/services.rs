//! Services and checks with real agents and real listeners in their tasks: registration in the
//! catalog through Raft, http/tcp/grpc checks and script checks inside the task, `service info` listing the healthy
//! instances, `check_restart`, a rolling update held by a check that fails, and a version whose
//! check fails rolled back by `auto_revert`.

mod common;

use std::collections::BTreeMap;

use common::{wait_for, Reaper, TestCluster};
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::service_catalog_client::ServiceCatalogClient;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus};
use helios_core::service::{AddressMode, Check, CheckKind, CheckRestart, CheckStatus, Service};
use helios_core::{ExecConfig, GroupPort, Job, JobType, TaskDriver};

/// A service job of `count` busybox web servers on the group's port "http", each serving its
/// task directory, where it writes `health` first: a check of `/health` passes until the file
/// is removed.
fn web(name: &str, count: u32, checks: Vec<Check>) -> Job {
    // Also a file in its private /tmp, which only a command inside the task sees.
    let script = "echo ok > \"$NOMAD_TASK_DIR/health\" && touch /tmp/serving && exec busybox httpd -f -p \"$NOMAD_PORT_http\" -h \"$NOMAD_TASK_DIR\"";
    let mut job = Job::exec(name, "/bin/sh", vec!["-c".into(), script.into()]);
    job.set_type(JobType::Service);
    let group = &mut job.task_groups[0];
    group.count = count;
    group.ports = vec![GroupPort { label: "http".into(), static_port: None }];
    group.services = vec![Service {
        name: format!("{name}-web"),
        task: None,
        port: Some("http".into()),
        tags: vec!["v1".into()],
        meta: BTreeMap::new(),
        address_mode: AddressMode::Auto,
        checks,
    }];
    job
}

fn check(name: &str, kind: CheckKind) -> Check {
    Check {
        name: name.into(),
        kind,
        port: None,
        interval_ms: 1_000,
        timeout_ms: 1_000,
        initial_status: CheckStatus::Critical,
        success_before_passing: 0,
        failures_before_critical: 0,
        check_restart: None,
    }
}

fn http_check() -> Check {
    check("health", CheckKind::Http { path: "/health".into(), method: "GET".into(), headers: BTreeMap::new() })
}

async fn catalog(cluster: &TestCluster, via: u64) -> ServiceCatalogClient<tonic::transport::Channel> {
    ServiceCatalogClient::new(cluster.channel(via).await)
}

/// The service's instances (all, or only the healthy ones); none when it is not registered.
async fn instances(cluster: &TestCluster, via: u64, name: &str, healthy_only: bool) -> Vec<pb::ServiceInstance> {
    let request = pb::GetServiceRequest { name: name.into(), healthy_only, ..Default::default() };
    match catalog(cluster, via).await.get_service(request).await {
        Ok(reply) => reply.into_inner().instances,
        Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
        Err(status) => panic!("get_service: {status}"),
    }
}

/// An agent that gives out its own thousand dynamic ports: the test's agents share one host,
/// where separate machines would not collide. Each test takes its own slices (tests run at once
/// in one process): a shared slice let two tests' tasks pick the same port, and one's check
/// never passed. The slices lie below the kernel's ephemeral ports (32768 and up here): when
/// they were at 40000, a task's port was now and then the local port of one of the tests' own
/// gRPC connections, its web server could not bind, and its instance never became healthy.
async fn agent(cluster: &TestCluster, id: &str, dir: &std::path::Path, slice: u16) -> common::Agent {
    let low = 10_000 + slice * 1_000;
    common::start_agent_configured(cluster, id, &dir.join(id), |config| {
        config.drivers.dynamic_ports = Some((low, low + 999));
    })
    .await
}

async fn raised_cluster() -> (TestCluster, u64) {
    let cluster = TestCluster::start(1).await;
    let leader = cluster.leader().await;
    cluster.format_raised().await;
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_register_with_their_checks_and_only_healthy_ones_are_listed_as_such() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _a = agent(&cluster, "a", dir.path(), 0).await;
    let _b = agent(&cluster, "b", dir.path(), 1).await;
    for node in ["a", "b"] {
        common::wait_status(&cluster, via, node, "ready").await;
    }
    let checks = vec![
        http_check(),
        check("port", CheckKind::Tcp),
        check(
            "file",
            CheckKind::Script {
                task: Some("shop".into()),
                command: "/bin/sh".into(),
                // Exit 1 would be a warning (Consul's reading): 2 is critical.
                // Inside the task: its private /tmp, and its PID namespace (pid 1 is its init).
                args: vec![
                    "-c".into(),
                    "test -f /tmp/serving && grep -qa task-init /proc/1/cmdline && test -f \"$NOMAD_TASK_DIR/health\" || exit 2"
                        .into(),
                ],
            },
        ),
    ];
    let mut job = web("shop", 2, checks);
    job.task_groups[0].restart.delay_secs = 3;
    cluster.submit_job(via, &job).await;
    let healthy = wait_for("two healthy instances", || async {
        let found = instances(&cluster, via, "shop-web", true).await;
        (found.len() == 2).then_some(found)
    })
    .await;
    for instance in &healthy {
        assert_eq!(instance.tags, ["v1"]);
        assert_eq!(instance.checks.len(), 3);
        assert!(instance.checks.iter().all(|c| c.status() == pb::CheckStatus::Passing), "{:?}", instance.checks);
        // The registered address reaches the instance.
        let (status, _) =
            helios_client_checks_http(&instance.address, u16::try_from(instance.port).expect("port")).await;
        assert_eq!(status, 200);
    }
    let listed = catalog(&cluster, via).await.list_services(pb::ListServicesRequest::default()).await.expect("list");
    let summary = &listed.into_inner().services[0];
    assert_eq!((summary.name.as_str(), summary.instances, summary.healthy), ("shop-web", 2, 2));

    // One instance loses its health file: its http and script checks go critical, and only the
    // other is listed as healthy.
    let sick = &healthy[0];
    let health = dir.path().join(&sick.node_id).join("allocs").join(&sick.alloc_id).join("shop/local/health");
    std::fs::remove_file(&health).expect("remove the health file");
    let unhealthy = wait_for("its http and script checks critical", || async {
        let all = instances(&cluster, via, "shop-web", false).await;
        let critical =
            |i: &pb::ServiceInstance| i.checks.iter().filter(|c| c.status() == pb::CheckStatus::Critical).count() == 2;
        all.into_iter().find(|i| i.alloc_id == sick.alloc_id && critical(i))
    })
    .await;
    assert!(!unhealthy.healthy);
    let status = |name: &str| unhealthy.checks.iter().find(|c| c.name == name).map(|c| c.status().label());
    assert_eq!(status("health"), Some("critical"));
    assert_eq!(status("file"), Some("critical"));
    assert_eq!(status("port"), Some("passing"), "the server still listens");
    let output = &unhealthy.checks.iter().find(|c| c.name == "health").expect("health").output;
    assert!(output.contains("404"), "{output}");
    let only_healthy = instances(&cluster, via, "shop-web", true).await;
    assert_eq!(only_healthy.iter().map(|i| &i.alloc_id).collect::<Vec<_>>(), [&healthy[1].alloc_id]);

    // Its task is killed: while it waits to restart, the instance is not listed at all; once it
    // runs again it registers again, and passes.
    let killed = &healthy[1];
    let pid_file = dir.path().join(&killed.node_id).join("allocs").join(&killed.alloc_id).join("shop/pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let pid = pid.split_whitespace().next().expect("a pid").to_string();
    let status = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    assert!(status.expect("kill").success());
    wait_for("the killed instance deregistered", || async {
        let all = instances(&cluster, via, "shop-web", false).await;
        all.iter().all(|i| i.alloc_id != killed.alloc_id).then_some(())
    })
    .await;
    assert!(instances(&cluster, via, "shop-web", true).await.is_empty(), "the other one is the sick one");
    wait_for("the restarted instance healthy again", || async {
        let found = instances(&cluster, via, "shop-web", true).await;
        found.iter().any(|i| i.alloc_id == killed.alloc_id).then_some(())
    })
    .await;

    // Stopped: its instance leaves the catalog; the replacement registers.
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(via).await);
    allocs.stop_allocation(pb::StopAllocationRequest { id: sick.alloc_id.clone() }).await.expect("stop");
    wait_for("the stopped instance deregistered and replaced", || async {
        let found = instances(&cluster, via, "shop-web", true).await;
        (found.len() == 2 && found.iter().all(|i| i.alloc_id != sick.alloc_id)).then_some(())
    })
    .await;

    // The job stops: the service is gone.
    let mut jobs = cluster.jobs(via).await;
    jobs.stop_job(pb::StopJobRequest { name: "shop".into(), purge: false, ..Default::default() })
        .await
        .expect("stop job");
    wait_for("no instance left", || async {
        instances(&cluster, via, "shop-web", false).await.is_empty().then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// A plain HTTP GET of `/health`: the status code and the answer.
async fn helios_client_checks_http(address: &str, port: u16) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((address, port)).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_restart_restarts_a_task_whose_check_stays_critical() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _a = agent(&cluster, "a", dir.path(), 5).await;
    // Nothing listens on the port the check probes.
    let mut dead_port = check("port", CheckKind::Tcp);
    dead_port.check_restart = Some(CheckRestart { limit: 2, grace_ms: 1_000, ignore_warnings: false });
    let mut job = web("idle", 1, vec![dead_port]);
    job.task_groups[0].tasks[0].driver = TaskDriver::Exec(ExecConfig::new("sleep", vec!["600".into()]));
    job.task_groups[0].restart.delay_secs = 1;
    cluster.submit_job(via, &job).await;
    let restarted = wait_for("a restart signaled by the check", || async {
        let status = cluster.job_status(via, "idle").await;
        let task = status.allocations.first()?.task_states.get("idle")?.clone();
        (task.restarts >= 1).then_some(task)
    })
    .await;
    let signaled = restarted
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::RestartSignaled)
        .expect("a Restart Signaled event");
    assert_eq!(signaled.message, "check \"port\" unhealthy");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_asks_a_real_server_in_the_task() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _a = agent(&cluster, "a", dir.path(), 6).await;
    // The task is a one-node helios-server: it serves grpc.health.v1 on its port.
    let server = common::task_launcher().with_file_name("helios-server");
    let mut job = web("inner", 1, Vec::new());
    let args = [
        "--node-id",
        "1",
        "--rpc-addr",
        "${NOMAD_ADDR_http}",
        "--peer",
        "1=${NOMAD_ADDR_http}",
        "--data-dir",
        "${NOMAD_TASK_DIR}/data",
        "--bootstrap",
        // It listens at the node's address, as a service should; nothing else uses it.
        "--insecure",
    ];
    job.task_groups[0].tasks[0].driver = TaskDriver::Exec(ExecConfig::new(
        server.to_str().expect("utf-8 path"),
        args.iter().map(|a| a.to_string()).collect(),
    ));
    let serving = check("serving", CheckKind::Grpc { service: "helios.v1.JobService".into() });
    let missing = check("missing", CheckKind::Grpc { service: "no.such.Service".into() });
    job.task_groups[0].services[0].checks = vec![serving, missing];
    cluster.submit_job(via, &job).await;
    let instance = wait_for("the grpc check passing", || async {
        let found = instances(&cluster, via, "inner-web", false).await;
        found
            .into_iter()
            .find(|i| i.checks.iter().any(|c| c.name == "serving" && c.status() == pb::CheckStatus::Passing))
    })
    .await;
    let missing = wait_for("the missing service's answer", || async {
        let found = instances(&cluster, via, "inner-web", false).await;
        let check = found.into_iter().next()?.checks.into_iter().find(|c| c.name == "missing")?;
        (!check.output.is_empty()).then_some(check)
    })
    .await;
    assert_eq!(missing.status(), pb::CheckStatus::Critical);
    assert!(missing.output.contains("NotFound"), "the server answered: {}", missing.output);
    assert!(!instance.healthy);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_waits_for_the_new_versions_checks() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _a = agent(&cluster, "a", dir.path(), 2).await;
    let mut job = web("roll", 3, vec![http_check()]);
    // Versions that pass have a minute to (a loaded machine is slow to start them); the one
    // that never passes is unhealthy after 5 s.
    job.task_groups[0].update = helios_core::UpdateStrategy {
        max_parallel: 1,
        health_check: helios_core::HealthCheck::Checks,
        min_healthy_time_secs: 1,
        healthy_deadline_secs: 60,
        ..helios_core::UpdateStrategy::nomad_block_defaults()
    };
    cluster.submit_job(via, &job).await;
    wait_for("three healthy instances", || async {
        (instances(&cluster, via, "roll-web", true).await.len() == 3).then_some(())
    })
    .await;
    // Version 1 serves, but writes no health file: its check never passes.
    let serve_only = "exec busybox httpd -f -p \"$NOMAD_PORT_http\" -h \"$NOMAD_TASK_DIR\"";
    let mut v1 = job.clone();
    v1.task_groups[0].tasks[0].driver =
        TaskDriver::Exec(ExecConfig::new("/bin/sh", vec!["-c".into(), serve_only.into()]));
    v1.task_groups[0].update.healthy_deadline_secs = 5;
    cluster.submit_job(via, &v1).await;
    // Unhealthy, it holds the rollout (its deployment fails only at its progress deadline).
    let held = wait_for("the rollout held by the failing check", || async {
        let status = cluster.job_status(via, "roll").await;
        status.placement.contains("1 not healthy by their healthy_deadline").then_some(status)
    })
    .await;
    // Wanted and running (the one replaced may still be stopping).
    let running = |s: &pb::GetJobStatusResponse, version: u64| {
        let wanted = |a: &&pb::Allocation| {
            a.desired_status() == AllocationDesiredStatus::Run && a.client_status() == AllocationClientStatus::Running
        };
        s.allocations.iter().filter(|a| a.job_version == version).filter(wanted).count()
    };
    assert_eq!((running(&held, 0), running(&held, 1)), (2, 1), "{}", held.placement);
    assert_eq!(instances(&cluster, via, "roll-web", true).await.len(), 2, "two healthy while it is held");
    // The fix: version 2 replaces the unhealthy one first, then the rest in waves.
    let mut v2 = job.clone();
    v2.task_groups[0].tasks[0].env.insert("FIXED".into(), "1".into());
    // A rollout judges the older allocations by the new version's rule: with the minute of
    // version 0, version 1's unhealthy allocation would hold the first wave for up to a minute.
    v2.task_groups[0].update.healthy_deadline_secs = 15;
    cluster.submit_job(via, &v2).await;
    // Wave by wave (each within the usual wait: a loaded machine slows every wave).
    for placed in 1..=3 {
        wait_for(&format!("{placed} of version 2 running"), || async {
            (running(&cluster.job_status(via, "roll").await, 2) >= placed).then_some(())
        })
        .await;
    }
    wait_for("only version 2 wanted, all healthy", || async {
        let status = cluster.job_status(via, "roll").await;
        let only_v2 =
            status.allocations.iter().all(|a| a.job_version == 2 || a.desired_status() != AllocationDesiredStatus::Run);
        (only_v2 && instances(&cluster, via, "roll-web", true).await.len() == 3).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_check_fails_is_rolled_back_by_auto_revert() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _a = agent(&cluster, "a", dir.path(), 3).await;
    let mut job = web("revert", 2, vec![http_check()]);
    // A minute to be healthy (a loaded machine is slow to start them) for the versions that pass.
    job.task_groups[0].update = helios_core::UpdateStrategy {
        max_parallel: 1,
        health_check: helios_core::HealthCheck::Checks,
        min_healthy_time_secs: 1,
        healthy_deadline_secs: 60,
        progress_deadline_secs: 120,
        auto_revert: true,
        ..helios_core::UpdateStrategy::nomad_block_defaults()
    };
    let deployments = || async {
        let mut client = pb::deployment_service_client::DeploymentServiceClient::new(cluster.channel(via).await);
        let request = pb::ListDeploymentsRequest { job_name: Some("revert".into()), ..Default::default() };
        client.list_deployments(request).await.expect("deployments").into_inner().deployments
    };
    let status_of = |list: &[pb::Deployment], version: u64| {
        list.iter().find(|d| d.job_version == version).map(|d| (d.status, d.status_description.clone()))
    };
    let successful = pb::DeploymentStatus::Successful as i32;
    cluster.submit_job(via, &job).await;
    wait_for("version 0's deployment successful", || async {
        status_of(&deployments().await, 0).filter(|(s, _)| *s == successful)
    })
    .await;
    // Version 1 serves, but writes no health file: its check never passes, so its allocation is
    // unhealthy after its healthy_deadline (3 s), which without a progress deadline fails the
    // deployment at once; it reverts.
    let serve_only = "exec busybox httpd -f -p \"$NOMAD_PORT_http\" -h \"$NOMAD_TASK_DIR\"";
    let mut v1 = job.clone();
    v1.task_groups[0].tasks[0].driver =
        TaskDriver::Exec(ExecConfig::new("/bin/sh", vec!["-c".into(), serve_only.into()]));
    v1.task_groups[0].update.healthy_deadline_secs = 3;
    v1.task_groups[0].update.progress_deadline_secs = 0;
    cluster.submit_job(via, &v1).await;
    let (_, failed) = wait_for("version 1's deployment failed", || async {
        status_of(&deployments().await, 1).filter(|(s, _)| *s == pb::DeploymentStatus::Failed as i32)
    })
    .await;
    assert_eq!(failed, "Failed due to unhealthy allocations - rolling back to job version 0");
    // Version 2 is version 0's spec: its deployment succeeds and every instance is healthy again.
    wait_for("version 2's deployment successful, both instances healthy", || async {
        let done = status_of(&deployments().await, 2).is_some_and(|(s, _)| s == successful);
        (done && instances(&cluster, via, "revert-web", true).await.len() == 2).then_some(())
    })
    .await;
    let mut jobs = pb::job_service_client::JobServiceClient::new(cluster.channel(via).await);
    let request = pb::GetJobVersionsRequest { name: "revert".into(), ..Default::default() };
    let versions = jobs.get_job_versions(request).await.expect("versions").into_inner().versions;
    let stable: Vec<u64> = versions.iter().filter(|v| v.stable).map(|v| v.version).collect();
    assert_eq!(stable, [0, 2]);
    let status = cluster.job_status(via, "revert").await;
    let live_v1 = status
        .allocations
        .iter()
        .filter(|a| a.job_version == 1 && a.desired_status() == AllocationDesiredStatus::Run)
        .count();
    assert_eq!(live_v1, 0, "the failing version no longer runs");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_its_adopted_instances_healthy() {
    let (cluster, via) = raised_cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let first = agent(&cluster, "a", dir.path(), 4).await;
    // Five passes in a row before passing: an instance registered afresh is critical for 4 s.
    let mut check = http_check();
    check.success_before_passing = 5;
    cluster.submit_job(via, &web("keep", 1, vec![check])).await;
    let before = wait_for("a healthy instance", || async {
        instances(&cluster, via, "keep-web", true).await.into_iter().next()
    })
    .await;
    let since = before.checks[0].since;
    first.stop().await;
    let _second = agent(&cluster, "a", dir.path(), 4).await;
    // Sampled from the restart until 6 s after the new agent adopted the task: healthy with
    // the same check state throughout (a fresh registration would be critical for 4 s).
    let mut adopted_at = None;
    while adopted_at.is_none_or(|at: tokio::time::Instant| at.elapsed() < std::time::Duration::from_secs(6)) {
        let found = instances(&cluster, via, "keep-web", false).await;
        let instance = found.first().expect("still registered");
        assert!(instance.healthy && instance.checks[0].since == since, "{:?}", instance.checks);
        if adopted_at.is_none() {
            let status = cluster.job_status(via, "keep").await;
            let adopted = status.allocations.iter().any(|a| {
                a.task_states
                    .get("keep")
                    .is_some_and(|t| t.events.iter().any(|e| e.kind() == pb::TaskEventKind::Adopted))
            });
            adopted_at = adopted.then(tokio::time::Instant::now);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}
