//! Following one request through the servers' logs, with real processes: a call sent to a
//! follower with an `x-request-id` gets it back, and `RUST_LOG=helios_server=debug` shows the
//! chain: on the follower, the call's `request` span with that id and the id of the proposal it
//! made; on the leader, the `forwarded` proposal and its `applying` line.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{eventually, free_port, sibling, Proc};
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;

fn start(id: u64, ports: &[u16; 3], dir: &Path) -> Proc {
    let data = dir.join(format!("server-{id}"));
    std::fs::create_dir_all(&data).expect("data dir");
    let log = std::fs::File::create(dir.join(format!("server-{id}.log"))).expect("log");
    let mut cmd = Command::new(sibling("helios-server"));
    cmd.args(["--node-id", &id.to_string(), "--rpc-addr", &format!("127.0.0.1:{}", ports[id as usize - 1])]);
    for (i, port) in ports.iter().enumerate() {
        cmd.args(["--peer", &format!("{}=127.0.0.1:{port}", i + 1)]);
    }
    if id == 1 {
        cmd.arg("--bootstrap");
    }
    cmd.arg("--data-dir").arg(&data).env("RUST_LOG", "info,helios_server=debug,openraft=warn");
    Proc(cmd.stdout(log.try_clone().expect("log")).stderr(log).stdin(Stdio::null()).spawn().expect("a server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_answered_back_and_names_the_call_through_forwarding_and_apply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = [free_port(), free_port(), free_port()];
    let _servers: Vec<Proc> = (1..=3).map(|id| start(id, &ports, dir.path())).collect();
    let url = |id: u64| format!("http://127.0.0.1:{}", ports[id as usize - 1]);
    let mut leader = None;
    for _ in 0..600 {
        let members = async {
            let mut cluster = ClusterServiceClient::connect(url(1)).await.ok()?;
            cluster.list_members(pb::ListMembersRequest { local: false }).await.ok()?.into_inner().leader_id
        };
        leader = members.await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let leader = leader.expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let mut jobs = JobServiceClient::connect(url(follower)).await.expect("connect");
    let job = helios_core::Job::exec("traced", "/bin/true", Vec::new());
    let mut request = tonic::Request::new(pb::SubmitJobRequest {
        job: Some(helios_api::convert::job_to_pb(&job)),
        ..Default::default()
    });
    request.metadata_mut().insert("x-request-id", "trace-me-1".parse().expect("ascii"));
    let reply = jobs.submit_job(request).await.expect("submitted");
    assert_eq!(reply.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-1"));
    // Without one, the server names the call itself.
    let reply = jobs.get_job(pb::GetJobRequest { name: "traced".into(), ..Default::default() }).await.expect("get");
    assert!(reply.metadata().get("x-request-id").is_some_and(|v| v.len() == 36), "a new id is answered");

    let log = |id: u64| std::fs::read_to_string(dir.path().join(format!("server-{id}.log"))).unwrap_or_default();
    let proposing = |text: &str| {
        text.lines()
            .find(|l| l.contains("request_id=trace-me-1") && l.contains("proposing"))
            .and_then(|l| l.split("proposal=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    let mut proposal = None;
    eventually("the follower's log to name the call's proposal", || {
        proposal = proposing(&log(follower));
        proposal.is_some()
    });
    let proposal = proposal.expect("found");
    eventually("the leader's log to show it forwarded and applied", || {
        let leader_log = log(leader);
        let forwarded =
            leader_log.lines().any(|l| l.contains("forwarded") && l.contains(&format!("proposal={proposal}")));
        let applied = leader_log.lines().any(|l| l.contains("applying") && l.contains(&format!("proposal={proposal}")));
        forwarded && applied
    });
}
