//! The built `helios-server` binary, started exactly as the README says (on free ports), killed
//! with SIGKILL and restarted on the same data.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{wait_for, WAIT};
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_chaos::ports::free_port;
use helios_core::Job;
use tonic::transport::Channel;

const BINARY: &str = env!("CARGO_BIN_EXE_helios-server");

/// A server process that is killed when dropped, so a failing test leaves nothing behind.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `helios-server --node-id N --rpc-addr A --peer 1=.. --peer 2=.. --peer 3=.. [--bootstrap]`,
/// run in `dir` (the data dir defaults to the working directory, as in the README).
fn start(dir: &Path, id: u64, ports: &[u16; 3]) -> Server {
    let mut cmd = Command::new(BINARY);
    cmd.args(["--node-id", &id.to_string(), "--rpc-addr", &format!("127.0.0.1:{}", ports[id as usize - 1])]);
    for (i, port) in ports.iter().enumerate() {
        cmd.args(["--peer", &format!("{}=127.0.0.1:{port}", i + 1)]);
    }
    if id == 1 {
        cmd.arg("--bootstrap");
    }
    let log = std::fs::File::create(dir.join(format!("server-{id}.log"))).expect("log file");
    let child = cmd
        .current_dir(dir)
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start helios-server");
    Server { child }
}

fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}")).expect("url").connect_lazy()
}

async fn leader(ports: &[u16; 3]) -> u64 {
    wait_for("a leader", || async {
        for port in ports {
            let mut client = ClusterServiceClient::new(channel(*port));
            if let Ok(reply) = client.list_members(pb::ListMembersRequest { local: false }).await {
                let reply = reply.into_inner();
                let leader = reply.leader_id?;
                if reply.members.iter().any(|m| m.id == leader && m.role() == pb::MemberRole::Leader) {
                    return Some(leader);
                }
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_under_writes_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = [free_port(), free_port(), free_port()];
    let mut servers: Vec<Option<Server>> = (1..=3).map(|id| Some(start(dir.path(), id, &ports))).collect();
    let first_leader = leader(&ports).await;

    // Writers keep submitting distinct jobs, moving to the next server whenever one fails.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let clients: Vec<_> = ports.iter().map(|p| JobServiceClient::new(channel(*p))).collect();
            let mut target = usize::try_from(w).expect("small") % clients.len();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                i += 1;
                let job = Job::exec(&name, "echo", vec![name.clone()]);
                let mut request =
                    tonic::Request::new(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() });
                request.set_timeout(Duration::from_secs(20));
                match clients[target].clone().submit_job(request).await {
                    Ok(_) => {
                        acked.lock().expect("lock").insert(name);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => target = (target + 1) % clients.len(),
                }
            }
        }));
    }

    let acked_at_least = |n: u64| {
        let count = count.clone();
        move || {
            let count = count.clone();
            async move { (count.load(Ordering::Relaxed) >= n).then_some(()) }
        }
    };
    wait_for("writes before the kill", acked_at_least(50)).await;
    // SIGKILL: no shutdown path runs.
    drop(servers[first_leader as usize - 1].take());
    let before_restart = count.load(Ordering::Relaxed);
    wait_for("writes on the new leader", acked_at_least(before_restart + 50)).await;
    let new_leader = leader(&ports).await;
    assert_ne!(new_leader, first_leader);

    // The same command line again, on the same data: it must rejoin, not re-initialize.
    servers[first_leader as usize - 1] = Some(start(dir.path(), first_leader, &ports));
    let after_restart = count.load(Ordering::Relaxed);
    wait_for("writes after the restart", acked_at_least(after_restart + 50)).await;
    // Then every server dies at once, mid-write (a power cut): what was acknowledged must be on
    // disk on a majority, and each server must recover it from its own log and state.
    for server in &mut servers {
        drop(server.take());
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    for id in 1..=3u64 {
        servers[id as usize - 1] = Some(start(dir.path(), id, &ports));
    }
    leader(&ports).await;

    let acked = acked.lock().expect("lock").clone();
    for (i, port) in ports.iter().enumerate() {
        let client = JobServiceClient::new(channel(*port));
        let stored: BTreeSet<String> = wait_for("server to answer a read", || {
            let mut client = client.clone();
            async move { client.list_jobs(pb::ListJobsRequest::default()).await.ok() }
        })
        .await
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.name)
        .collect();
        let missing: Vec<_> = acked.difference(&stored).collect();
        assert!(missing.is_empty(), "server {} lost acknowledged jobs: {missing:?}", i + 1);
    }
    let log = std::fs::read_to_string(dir.path().join(format!("server-{first_leader}.log"))).expect("log");
    assert!(log.contains("rejoining the cluster from stored state"), "restart must not re-initialize:\n{log}");
}

/// The job's deployment of `version`, as server `port` has it.
async fn deployment_of(port: u16, version: u64) -> Option<pb::Deployment> {
    let mut deployments = pb::deployment_service_client::DeploymentServiceClient::new(channel(port));
    let request = pb::ListDeploymentsRequest { job_name: Some("roll".into()), ..Default::default() };
    let list = deployments.list_deployments(request).await.ok()?.into_inner().deployments;
    list.into_iter().find(|d| d.job_version == version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_goes_on_when_its_leader_is_sigkilled_mid_rollout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().join("agent"));
    let ports = [free_port(), free_port(), free_port()];
    let mut servers: Vec<Option<Server>> = (1..=3).map(|id| Some(start(dir.path(), id, &ports))).collect();
    let first_leader = leader(&ports).await;
    wait_for("the cluster's stored format raised to this build's", || async {
        let mut cluster = ClusterServiceClient::new(channel(ports[0]));
        let members = cluster.list_members(pb::ListMembersRequest { local: false }).await.ok()?.into_inner();
        (members.stored_format == helios_core::format::FORMAT_VERSION).then_some(())
    })
    .await;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let agent = common::start_agent_on(addrs, "a", &dir.path().join("agent"), |_| {}).await;

    // Three copies rolled one at a time, each new one healthy after 2 s of running.
    let mut job = Job::exec("roll", "sleep", vec!["600".into()]);
    job.set_type(helios_core::JobType::Service);
    job.task_groups[0].count = 3;
    job.task_groups[0].update = helios_core::UpdateStrategy {
        health_check: helios_core::HealthCheck::TaskStates,
        min_healthy_time_secs: 2,
        healthy_deadline_secs: 60,
        progress_deadline_secs: 120,
        ..helios_core::UpdateStrategy::nomad_block_defaults()
    };
    let submit = |job: Job| async move {
        wait_for("the job accepted", || async {
            let mut jobs = JobServiceClient::new(channel(ports[0]));
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await.ok()
        })
        .await
    };
    let successful = pb::DeploymentStatus::Successful as i32;
    submit(job.clone()).await;
    wait_for("version 0's deployment successful", || async {
        deployment_of(ports[0], 0).await.filter(|d| d.status == successful)
    })
    .await;
    job.task_groups[0].tasks[0].driver =
        helios_core::TaskDriver::Exec(helios_core::ExecConfig::new("sleep", vec!["601".into()]));
    submit(job).await;
    // Mid-way (one new copy placed, not all healthy: the leader's own view), the leader dies
    // without a word.
    let leader_port = ports[first_leader as usize - 1];
    let mid_way = wait_for("version 1's rollout under way", || async {
        let d = deployment_of(leader_port, 1).await?;
        (d.status == pb::DeploymentStatus::Running as i32 && d.groups[0].placed >= 1).then_some(d)
    })
    .await;
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    drop(servers[first_leader as usize - 1].take());
    let survivor = ports[if first_leader == 1 { 1 } else { 0 }];
    let new_leader = leader(&ports).await;
    assert_ne!(new_leader, first_leader);
    // The new leader's watcher goes on from the replicated record: every copy replaced and healthy.
    let done = wait_for("version 1's deployment successful under the new leader", || async {
        deployment_of(survivor, 1).await.filter(|d| d.status == successful)
    })
    .await;
    assert_eq!((done.groups[0].healthy, done.groups[0].unhealthy), (3, 0), "{done:?}");
    // Ended by the new leader's watcher (this machine's one clock stamps both).
    assert!(
        u128::from(helios_api::convert::time_of(done.update_time.as_ref()).as_millis()) > killed_at,
        "ended after the kill: {mid_way:?} then {done:?}"
    );
    let mut jobs = JobServiceClient::new(channel(survivor));
    let versions = jobs
        .get_job_versions(pb::GetJobVersionsRequest { name: "roll".into(), ..Default::default() })
        .await
        .expect("versions");
    let stable: Vec<u64> = versions.into_inner().versions.iter().filter(|v| v.stable).map(|v| v.version).collect();
    assert_eq!(stable, [0, 1]);
    agent.stop().await;
}

fn run_to_exit(args: &[&str], dir: &Path) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start helios-server");
    // Each of these must exit on its own; a hang is a failure, not a wait forever.
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "helios-server {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn bad_flags_and_data_dirs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");

    let out = run_to_exit(&["--node-id", "1", "--rpc-addr", &addr, "--peer", "1127.0.0.1:1"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer") && err.contains("expected ID=HOST:PORT"), "{err}");

    for ttl in ["0.1", "soon"] {
        let out = run_to_exit(&["--dev", "--rpc-addr", &addr, "--heartbeat-ttl", ttl], dir.path());
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--heartbeat-ttl") && err.contains(ttl), "{err}");
    }

    let out = run_to_exit(&["--node-id", "3", "--rpc-addr", &addr, "--peer", &format!("1={addr}")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer list must include this server (--node-id 3)"));

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").expect("write file");
    let peer = format!("1={addr}");
    let out = run_to_exit(
        &[
            "--node-id",
            "1",
            "--rpc-addr",
            &addr,
            "--peer",
            &peer,
            "--bootstrap",
            "--data-dir",
            file.to_str().expect("utf8"),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"), "{out:?}");

    // A directory that exists but refuses new files, even to root.
    let out = run_to_exit(
        &["--node-id", "1", "--rpc-addr", &addr, "--peer", &peer, "--bootstrap", "--data-dir", "/proc/self"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data dir /proc/self is not writable"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("Error:")).count(), 1, "{err}");
}

#[test]
fn a_damaged_database_is_refused_with_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let peer = format!("1={addr}");
    let args = ["--node-id", "1", "--rpc-addr", &addr, "--peer", &peer, "--data-dir", "data"];
    drop(helios_server::store::open(&data, 1).expect("a database"));
    // Garbage over every page but the header, as a failing disk would return.
    let path = helios_server::store::db_path(&data, 1);
    let mut bytes = std::fs::read(&path).expect("read");
    for page in bytes.chunks_mut(4096).skip(1) {
        page.iter_mut().skip(256).take(256).for_each(|b| *b ^= 0x5A);
    }
    std::fs::write(&path, bytes).expect("write");
    for attempt in ["first", "second"] {
        let out = run_to_exit(&args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{attempt} start: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("Error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains("is damaged") && errors[0].contains("Move the file away"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_contradicting_peers_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let peer = format!("1={addr}");
    let server = Command::new(BINARY)
        .args(["--node-id", "1", "--rpc-addr", &addr, "--peer", &peer, "--bootstrap"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let server = Server { child: server };
    let jobs = JobServiceClient::new(channel(port));
    wait_for("the single-server cluster to accept a write", || {
        let mut jobs = jobs.clone();
        async move {
            let job = Job::exec("one", "echo", vec![]);
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await.ok()
        }
    })
    .await;
    // SIGTERM shuts down cleanly.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let mut server = server;
    let status = server.child.wait().expect("exit");
    assert!(status.success(), "SIGTERM exit: {status:?}");

    let moved = format!("127.0.0.1:{}", free_port());
    let out = run_to_exit(&["--node-id", "1", "--rpc-addr", &moved, "--peer", &format!("1={moved}")], dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("contradicts --peer") && err.contains(&addr), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_is_a_working_single_server_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(BINARY)
        .args(["--dev", "--rpc-addr", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start --dev");
    let _server = Server { child };
    let jobs = JobServiceClient::new(channel(port));
    let reply = wait_for("the dev server to accept a write", || {
        let mut jobs = jobs.clone();
        async move {
            let job = Job::exec("dev-job", "echo", vec![]);
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() }).await.ok()
        }
    })
    .await;
    assert!(reply.into_inner().changed);
    let members = ClusterServiceClient::new(channel(port))
        .list_members(pb::ListMembersRequest { local: false })
        .await
        .expect("members")
        .into_inner();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].role(), pb::MemberRole::Leader);
    assert!(dir.path().join("helios-node-1.db").exists(), "data in the working directory");
}
