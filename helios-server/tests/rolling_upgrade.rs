//! A rolling upgrade, server by server, from the last build of the previous stored format (built
//! from this repository's history by `scripts/build-previous-format.sh`) to this one, as
//! docs/operations.md tells an operator to do it: real processes on one set of data dirs.
//!
//! While the builds are mixed, a server of this build leads servers of the previous one, which
//! apply its entries and install its snapshot; the cluster's stored format stays the previous
//! one until the last server is upgraded, and is then raised.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

use common::wait_for;
use helios_api::convert::agent::job_to_agent;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_chaos::ports::free_port;
use helios_core::format::FORMAT_VERSION;
use helios_core::Job;
use tonic::transport::Channel;

const CURRENT: &str = env!("CARGO_BIN_EXE_helios-server");
const PREVIOUS_FORMAT: u32 = FORMAT_VERSION - 1;
/// Small, so that a server kept down while others write misses a purged log and must be sent a
/// snapshot.
const SNAPSHOT_EVERY: &str = "20";

/// The previous format's `helios-server`, built (once; the script keeps it) if need be.
fn previous_build() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-previous-format.sh");
    let out = Command::new(script).stderr(Stdio::inherit()).output().expect("run build-previous-format.sh");
    assert!(out.status.success(), "scripts/build-previous-format.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim()).join("helios-server")
}

/// A server process, killed when dropped so a failing test leaves nothing behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cluster {
    dir: PathBuf,
    ports: [u16; 3],
    servers: [Option<Server>; 3],
    /// Which servers run the previous build (they read jobs in the previous wire format).
    previous: [bool; 3],
}

impl Cluster {
    fn start(&mut self, id: u64, binary: &Path) {
        let port = self.ports[id as usize - 1];
        let mut cmd = Command::new(binary);
        cmd.args(["--node-id", &id.to_string(), "--rpc-addr", &format!("127.0.0.1:{port}")]);
        for (i, port) in self.ports.iter().enumerate() {
            cmd.args(["--peer", &format!("{}=127.0.0.1:{port}", i + 1)]);
        }
        if id == 1 {
            cmd.arg("--bootstrap");
        }
        let data = self.dir.join(format!("server-{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        cmd.arg("--data-dir").arg(&data).args(["--snapshot-every", SNAPSHOT_EVERY]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("server-{id}.log")))
            .expect("log file");
        let child = cmd.stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("start helios-server");
        self.servers[id as usize - 1] = Some(Server(child));
        self.previous[id as usize - 1] = binary != Path::new(CURRENT);
    }

    fn stop(&mut self, id: u64) {
        self.servers[id as usize - 1] = None;
    }

    fn channel(&self, id: u64) -> Channel {
        let port = self.ports[id as usize - 1];
        Channel::from_shared(format!("http://127.0.0.1:{port}")).expect("url").connect_lazy()
    }

    async fn members(&self, via: u64) -> Option<pb::ListMembersResponse> {
        let mut client = ClusterServiceClient::new(self.channel(via));
        Some(client.list_members(pb::ListMembersRequest { local: false }).await.ok()?.into_inner())
    }

    /// The leader as every running server sees it.
    async fn leader(&self, running: &[u64]) -> u64 {
        wait_for("one leader seen by every running server", || async {
            let mut seen = Vec::new();
            for id in running {
                seen.push(self.members(*id).await?.leader_id?);
            }
            seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0])
        })
        .await
    }

    /// The stored format this build's server `via` reports for the cluster.
    async fn stored_format(&self, via: u64) -> u32 {
        self.members(via).await.expect("members").stored_format
    }

    async fn submit(&self, via: u64, name: &str) {
        self.submit_job(via, &Job::exec(name, "sleep", vec!["300".into()])).await;
    }

    /// Submits `job` through server `via`, in the wire format of the build it runs.
    async fn submit_job(&self, via: u64, job: &Job) {
        wait_for(&format!("job {} accepted through server {via}", job.name), || async {
            if self.previous[via as usize - 1] {
                return submit_to_previous(self.channel(via), job).await.ok();
            }
            let mut jobs = JobServiceClient::new(self.channel(via));
            jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(job)), ..Default::default() }).await.ok()?;
            Some(())
        })
        .await;
    }

    /// A submission with a client request id: only format 10 remembers one (so that a retry is
    /// answered, not applied again).
    fn needing_this_format(name: &str) -> pb::SubmitJobRequest {
        let job = Job::exec(name, "sleep", vec!["300".into()]);
        pb::SubmitJobRequest { job: Some(job_to_pb(&job)), request_id: format!("{name}-1"), ..Default::default() }
    }

    /// Waits until every server has applied the same index and holds the same state there.
    async fn wait_agreement(&self, what: &str) -> pb::StateDigestResponse {
        wait_for(what, || async {
            let mut digests = Vec::new();
            for id in 1..=3 {
                let mut client = ClusterServiceClient::new(self.channel(id));
                digests.push(client.state_digest(pb::StateDigestRequest {}).await.ok()?.into_inner());
            }
            let same =
                digests.windows(2).all(|w| (w[0].applied_index, &w[0].digest) == (w[1].applied_index, &w[1].digest));
            same.then(|| digests.swap_remove(0))
        })
        .await
    }

    async fn job_names(&self, via: u64) -> Vec<String> {
        let mut jobs = JobServiceClient::new(self.channel(via));
        let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await.expect("list jobs").into_inner();
        listed.jobs.into_iter().map(|j| j.name).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_upgraded_server_by_server_keeps_serving_and_raises_its_format_at_the_end() {
    let previous = previous_build();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        ports: [free_port(), free_port(), free_port()],
        servers: [None, None, None],
        previous: [false; 3],
    };
    for id in 1..=3 {
        cluster.start(id, &previous);
    }
    cluster.leader(&[1, 2, 3]).await;
    cluster.submit(1, "before-upgrade").await;
    // A node, so plans place allocations (it goes down unheard, and they are lost: more writes).
    let mut agents = AgentServiceClient::new(cluster.channel(1));
    let register = pb::RegisterRequest { node: Some(common::fake_node("n1")), secret: "s".into() };
    agents.register(register).await.expect("register a node");
    cluster.wait_agreement("the previous build's cluster to agree").await;

    // Server 1 runs this build; it announces its format but writes the cluster's.
    cluster.stop(1);
    cluster.start(1, Path::new(CURRENT));
    cluster.submit(1, "one-upgraded").await;
    cluster.wait_agreement("a mixed cluster to agree").await;
    assert_eq!(cluster.stored_format(1).await, PREVIOUS_FORMAT, "not raised while others run the previous build");

    // Server 2 too. If server 3, the last of the previous build, leads, it is restarted so that
    // one of this build leads the old one.
    cluster.stop(2);
    cluster.start(2, Path::new(CURRENT));
    if cluster.leader(&[1, 2, 3]).await == 3 {
        cluster.stop(3);
        cluster.leader(&[1, 2]).await;
        cluster.start(3, &previous);
    }
    // While server 3 is down, the leader purges its log past what server 3 holds: it catches up
    // from a snapshot this build's leader sends.
    let members = cluster.members(1).await.expect("members").members;
    let held = members.iter().find(|m| m.id == 3).expect("server 3").last_log_index;
    cluster.stop(3);
    let mut down_jobs = 0;
    loop {
        cluster.submit(1 + down_jobs % 2, &format!("while-3-is-down-{down_jobs}")).await;
        down_jobs += 1;
        let leader = cluster.leader(&[1, 2]).await;
        let purged = cluster.members(leader).await.and_then(|m| m.members.into_iter().find(|m| m.id == leader));
        if purged.and_then(|m| m.purged_index).is_some_and(|p| p > held) {
            break;
        }
        assert!(down_jobs < 500, "the leader never purged its log past index {held}");
    }
    cluster.start(3, &previous);
    let leader = cluster.leader(&[1, 2, 3]).await;
    assert_ne!(leader, 3, "server 3 missed entries: it cannot lead");
    cluster.submit(3, "mixed-led-by-current").await;
    // What the previous format cannot hold is refused while it runs, never stored half.
    let mut jobs = JobServiceClient::new(cluster.channel(leader));
    let refused = jobs.submit_job(Cluster::needing_this_format("needs-the-newer-format")).await.expect_err("refused");
    assert!(refused.message().contains("stored format"), "{refused:?}");
    cluster.wait_agreement("the previous build to follow this build's leader").await;
    assert_eq!(cluster.stored_format(1).await, PREVIOUS_FORMAT);
    let log = |id: u64| std::fs::read_to_string(dir.path().join(format!("server-{id}.log"))).expect("a log");
    assert!(
        log(3).contains("installed a snapshot"),
        "server 3 caught up from a snapshot:\n{}\n{}",
        log(3),
        log(leader)
    );

    // The last server: the leader raises the cluster's format, through Raft, everywhere.
    cluster.stop(3);
    cluster.start(3, Path::new(CURRENT));
    wait_for("the cluster's stored format to be raised on every server", || async {
        for id in 1..=3 {
            (cluster.members(id).await?.stored_format == FORMAT_VERSION).then_some(())?;
        }
        Some(())
    })
    .await;
    cluster.submit(3, "after-upgrade").await;
    let mut jobs = JobServiceClient::new(cluster.channel(3));
    let first =
        jobs.submit_job(Cluster::needing_this_format("needs-the-newer-format")).await.expect("accepted once raised");
    let mut other = JobServiceClient::new(cluster.channel(1));
    let retried = other.submit_job(Cluster::needing_this_format("needs-the-newer-format")).await.expect("a retry");
    assert_eq!(retried.into_inner().eval_id, first.into_inner().eval_id, "the retry got the first answer");
    cluster.wait_agreement("the upgraded cluster to agree").await;
    let names = cluster.job_names(2).await;
    for name in [
        "before-upgrade",
        "one-upgraded",
        "while-3-is-down-0",
        "mixed-led-by-current",
        "after-upgrade",
        "needs-the-newer-format",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(names.len(), 5 + down_jobs as usize);

    // A server of the previous build can no longer join: it could not read the cluster's rows.
    let port = free_port();
    let old_dir = dir.path().join("server-4");
    std::fs::create_dir_all(&old_dir).expect("data dir");
    let mut peers: Vec<String> =
        cluster.ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    peers.push(format!("4=127.0.0.1:{port}"));
    let mut cmd = Command::new(&previous);
    cmd.args(["--node-id", "4", "--rpc-addr", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(&old_dir);
    for peer in &peers {
        cmd.args(["--peer", peer]);
    }
    let _fourth = Server(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start server 4"));
    let refused = wait_for("server 4 to answer, and its join to be refused", || async {
        let mut client = ClusterServiceClient::new(cluster.channel(1));
        let join = pb::AddServerRequest { id: 4, addr: format!("127.0.0.1:{port}") };
        let status = client.add_server(join).await.expect_err("an older server joined a raised cluster");
        (!status.message().contains("no Helios server answers")).then_some(status)
    })
    .await;
    let expected = format!("runs stored format {PREVIOUS_FORMAT}, but this cluster's is {FORMAT_VERSION}");
    assert!(refused.message().contains(&expected), "{refused:?}");
    assert_eq!(cluster.members(1).await.expect("members").members.len(), 3, "not added");
}

/// Agents may be upgraded before or after the servers (docs/operations.md): an agent of this
/// build runs work for servers of the previous build, and one of the previous build for servers
/// of this build. Both report their task states in the agent protocol's own wire format, which
/// the public messages no longer share (statuses became enums there, times Timestamps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_either_build_run_work_for_servers_of_the_other() {
    let previous = previous_build();
    let previous_bin = previous.parent().expect("the previous build's directory").to_path_buf();
    let dir = tempfile::tempdir().expect("temp dir");

    // Servers of the previous build, an agent of this one (in-process).
    let mut old_servers = Cluster {
        dir: dir.path().join("old-servers"),
        ports: [free_port(), free_port(), free_port()],
        servers: [None, None, None],
        previous: [false; 3],
    };
    for id in 1..=3 {
        old_servers.start(id, &previous);
    }
    old_servers.leader(&[1, 2, 3]).await;
    let addrs = old_servers.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let agent = common::start_agent_on(addrs, "new-agent", &dir.path().join("new-agent"), |_| {}).await;
    old_servers.submit_job(1, &Job::exec("to-a-new-agent", "echo", vec!["across builds".into()])).await;
    // Read with the CLI of the build the servers run: this build reads their allocations'
    // statuses where the previous one wrote them no longer.
    let cli = previous_bin.join("helios-cli");
    let addr = format!("http://127.0.0.1:{}", old_servers.ports[0]);
    let status = wait_for("the new agent's task to complete, as the old servers see it", || async {
        let out =
            Command::new(&cli).args(["--server-addr", &addr, "job", "status", "to-a-new-agent", "--json"]).output();
        let status: serde_json::Value = serde_json::from_slice(&out.ok()?.stdout).ok()?;
        (status["allocations"][0]["client_status"] == "complete").then_some(status)
    })
    .await;
    let alloc = &status["allocations"][0];
    assert_eq!(alloc["node_id"], "new-agent");
    let task = &alloc["tasks"]["to-a-new-agent"];
    assert_eq!((task["state"].as_str(), task["failed"].as_bool()), (Some("dead"), Some(false)), "{task}");
    assert!(task["started_at_ms"].as_u64().is_some_and(|t| t > 0), "its start time arrived: {task}");
    agent.stop().await;
    for id in 1..=3 {
        old_servers.stop(id);
    }

    // Servers of this build, an agent of the previous one (a process).
    let mut new_servers = Cluster {
        dir: dir.path().join("new-servers"),
        ports: [free_port(), free_port(), free_port()],
        servers: [None, None, None],
        previous: [false; 3],
    };
    for id in 1..=3 {
        new_servers.start(id, Path::new(CURRENT));
    }
    new_servers.leader(&[1, 2, 3]).await;
    let agent_dir = dir.path().join("old-agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let log = std::fs::File::create(dir.path().join("old-agent.log")).expect("agent log");
    let mut old_agent = Command::new(previous_bin.join("helios-client"));
    old_agent.args(["--node-id", "old-agent", "--server-addr", &format!("http://127.0.0.1:{}", new_servers.ports[0])]);
    old_agent.args(["--client-rpc-addr", &format!("127.0.0.1:{}", free_port())]).arg("--data-dir").arg(&agent_dir);
    let _old_agent = Server(old_agent.stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("old agent"));
    new_servers.submit_job(1, &Job::exec("to-an-old-agent", "echo", vec!["across builds".into()])).await;
    // A job from a client of the previous build is refused, never stored with its lengths left
    // out (this build reads them under other fields, and a restart policy's unset interval is
    // no interval).
    let mut older = Job::exec("from-an-older-client", "echo", Vec::new());
    older.task_groups[0].restart.interval_secs = 120;
    let refused = wait_for("an answer from this build's servers", || async {
        submit_to_previous(new_servers.channel(1), &older).await.err().filter(|s| s.code() != tonic::Code::Unavailable)
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("restart.interval: must be more than 0"), "{refused:?}");
    let alloc = wait_for("the old agent's task to complete", || async {
        let mut jobs = JobServiceClient::new(new_servers.channel(1));
        let request = pb::GetJobStatusRequest { name: "to-an-old-agent".into(), ..Default::default() };
        let status = jobs.get_job_status(request).await.ok()?.into_inner();
        status.allocations.into_iter().find(|a| a.client_status() == pb::AllocationClientStatus::Complete)
    })
    .await;
    assert_eq!(alloc.node_id, "old-agent");
    let task = &alloc.task_states["to-an-old-agent"];
    assert_eq!((task.state(), task.failed), (pb::TaskRunState::Dead, false), "{task:?}");
    assert!(task.start_time.is_some() && task.finish_time.is_some(), "its times arrived: {task:?}");
    assert!(
        task.events.iter().any(|e| e.kind() == pb::TaskEventKind::Terminated && e.event_time.is_some()),
        "{task:?}"
    );
}

/// The previous build's `SubmitJobRequest`, as far as these tests fill it: its job is in the
/// wire format agents still read (`agent_pb::Job` is the public job's earlier format).
#[derive(Clone, PartialEq, prost::Message)]
struct PreviousSubmitJobRequest {
    #[prost(message, optional, tag = "1")]
    job: Option<helios_api::agent_pb::Job>,
}

/// `SubmitJob` on a server of the previous build, in its wire format.
async fn submit_to_previous(channel: Channel, job: &Job) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helios.v1.JobService/SubmitJob");
    let request = tonic::Request::new(PreviousSubmitJobRequest { job: Some(job_to_agent(job)) });
    let codec = tonic_prost::ProstCodec::<PreviousSubmitJobRequest, pb::SubmitJobResponse>::default();
    grpc.unary(request, path, codec).await?;
    Ok(())
}
