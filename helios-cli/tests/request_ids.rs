//! Following one request through the servers, with real processes: a call sent to a follower
//! with an `x-request-id` gets it back, and `RUST_LOG=helios_server=debug` shows the chain: on
//! the follower, the call's `request` span with that id and the id of the proposal it made; on
//! the leader, the `forwarded` proposal and its `applying` line. With `--otlp-endpoint`, the
//! same chain is one trace at an OpenTelemetry collector (tests/python/otlp_collector.py, which
//! decodes with OpenTelemetry's own Python classes; skipped without `HELIOS_PYTHON`, unless
//! `HELIOS_REQUIRE_PYTHON=1`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{eventually, free_port, sibling, Proc};
use helios_api::pb;
use helios_api::pb::cluster_service_client::ClusterServiceClient;
use helios_api::pb::job_service_client::JobServiceClient;

fn start(id: u64, ports: &[u16; 3], dir: &Path, extra: &[String], log_filter: &str) -> Proc {
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
    cmd.arg("--data-dir").arg(&data).args(extra).env("RUST_LOG", log_filter);
    Proc(cmd.stdout(log.try_clone().expect("log")).stderr(log).stdin(Stdio::null()).spawn().expect("a server"))
}

/// Three servers started with `extra` flags and `RUST_LOG=log_filter`; their ports, and the
/// leader's and a follower's ids.
async fn cluster(dir: &Path, extra: &[String], log_filter: &str) -> (Vec<Proc>, [u16; 3], u64, u64) {
    let ports = [free_port(), free_port(), free_port()];
    let servers: Vec<Proc> = (1..=3).map(|id| start(id, &ports, dir, extra, log_filter)).collect();
    let url = format!("http://127.0.0.1:{}", ports[0]);
    let mut leader = None;
    for _ in 0..600 {
        let members = async {
            let mut cluster = ClusterServiceClient::connect(url.clone()).await.ok()?;
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
    (servers, ports, leader, follower)
}

/// A job submitted through `url` with request id `id`.
async fn submit_with_id(url: String, name: &str, id: &str) -> tonic::Response<pb::SubmitJobResponse> {
    let mut jobs = JobServiceClient::connect(url).await.expect("connect");
    let job = helios_core::Job::exec(name, "/bin/true", Vec::new());
    let mut request = tonic::Request::new(pb::SubmitJobRequest {
        job: Some(helios_api::convert::job_to_pb(&job)),
        ..Default::default()
    });
    request.metadata_mut().insert("x-request-id", id.parse().expect("ascii"));
    jobs.submit_job(request).await.expect("submitted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_answered_back_and_names_the_call_through_forwarding_and_apply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_servers, ports, leader, follower) = cluster(dir.path(), &[], "info,helios_server=debug,openraft=warn").await;
    let url = |id: u64| format!("http://127.0.0.1:{}", ports[id as usize - 1]);

    let reply = submit_with_id(url(follower), "traced", "trace-me-1").await;
    assert_eq!(reply.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-1"));
    // Without one, the server names the call itself.
    let mut jobs = JobServiceClient::connect(url(follower)).await.expect("connect");
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

/// A span as the collector wrote it (tests/python/otlp_collector.py).
fn spans(file: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_otlp_endpoint_a_forwarded_write_is_one_trace_from_the_follower_to_the_leaders_apply() {
    let Some(python) = std::env::var_os("HELIOS_PYTHON") else {
        assert!(std::env::var("HELIOS_REQUIRE_PYTHON").as_deref() != Ok("1"), "HELIOS_PYTHON is not set");
        eprintln!("skipped: set HELIOS_PYTHON to a Python with opentelemetry-proto (scripts/test.sh does)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (port_file, span_file) = (dir.path().join("collector.port"), dir.path().join("spans.jsonl"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/otlp_collector.py");
    let log = std::fs::File::create(dir.path().join("collector.log")).expect("log");
    let _collector = Proc(
        Command::new(python)
            .arg(script)
            .args([&port_file, &span_file])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the collector"),
    );
    eventually("the collector to listen", || port_file.exists());
    let port = std::fs::read_to_string(&port_file).expect("port");
    let endpoint = vec!["--otlp-endpoint".to_string(), format!("http://127.0.0.1:{}", port.trim())];
    // Logs quiet: spans are exported whatever RUST_LOG says.
    let (_servers, ports, _, follower) = cluster(dir.path(), &endpoint, "warn").await;
    let url = |id: u64| format!("http://127.0.0.1:{}", ports[id as usize - 1]);

    submit_with_id(url(follower), "traced", "otlp-trace-1").await;
    let mut jobs = JobServiceClient::connect(url(follower)).await.expect("connect");
    let call = |name: &str, id: &str, traceparent: Option<&str>| {
        let mut request = tonic::Request::new(pb::GetJobRequest { name: name.into(), ..Default::default() });
        request.metadata_mut().insert("x-request-id", id.parse().expect("ascii"));
        if let Some(traceparent) = traceparent {
            request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
        }
        request
    };
    // A caller's mistake is an answer, not the server's error (OpenTelemetry's gRPC conventions).
    let missing = jobs.get_job(call("no-such-job", "otlp-trace-2", None)).await;
    assert_eq!(missing.expect_err("no such job").code(), tonic::Code::NotFound);
    // A method the server does not have is its error (UNIMPLEMENTED).
    let mut grpc =
        tonic::client::Grpc::new(tonic::transport::Channel::from_shared(url(follower)).expect("url").connect_lazy());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<pb::GetJobRequest, pb::GetJobResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helios.v1.JobService/NoSuchMethod");
    let unknown = grpc.unary(call("traced", "otlp-trace-3", None), path, codec).await;
    assert_eq!(unknown.expect_err("no such method").code(), tonic::Code::Unimplemented);
    // A caller's trace: recorded when its sampled flag is set, not when it is unset.
    let (unsampled, sampled) = (
        "00-11111111111111111111111111111111-2222222222222222-00",
        "00-33333333333333333333333333333333-4444444444444444-01",
    );
    jobs.get_job(call("traced", "otlp-unsampled", Some(unsampled))).await.expect("read");
    jobs.get_job(call("traced", "otlp-sampled", Some(sampled))).await.expect("read");

    let on = |span: &serde_json::Value, server: u64| {
        span["resource"]["service.instance.id"].as_str().and_then(|id| id.parse().ok()) == Some(server)
    };
    let named = |span: &serde_json::Value, name: &str, kind: &str, request_id: &str| {
        span["name"] == name && span["kind"] == kind && span["attributes"]["request_id"] == request_id
    };
    let child = |span: &serde_json::Value, parent: &serde_json::Value| {
        span["trace_id"] == parent["trace_id"] && span["parent_span_id"] == parent["span_id"]
    };
    eventually("the forwarded write's trace at the collector", || {
        let all = spans(&span_file);
        // The follower's call, its forward to the leader, the leader's forwarded call, and the
        // leader's apply of the entry, each with the call's request id. (The leader is whichever
        // server took the forward.)
        all.iter().filter(|s| on(s, follower) && named(s, "request", "SPAN_KIND_SERVER", "otlp-trace-1")).any(|call| {
            let root = call["parent_span_id"] == "" && call["resource"]["service.name"] == "helios-server";
            let forwards =
                all.iter().filter(|s| on(s, follower) && named(s, "forward", "SPAN_KIND_CLIENT", "otlp-trace-1"));
            root && forwards.filter(|f| child(f, call)).any(|forward| {
                let forwarded = all
                    .iter()
                    .filter(|s| !on(s, follower) && named(s, "request", "SPAN_KIND_SERVER", "otlp-trace-1"))
                    .filter(|s| child(s, forward) && s["attributes"]["method"] == "/helios.v1.RaftPeer/Forward");
                forwarded.into_iter().any(|at_leader| {
                    let leader = &at_leader["resource"]["service.instance.id"];
                    all.iter().any(|s| {
                        s["resource"]["service.instance.id"] == *leader
                            && named(s, "apply", "SPAN_KIND_INTERNAL", "otlp-trace-1")
                            && child(s, at_leader)
                    })
                })
            })
        })
    });
    let code = |s: &serde_json::Value, code: tonic::Code| s["attributes"]["rpc.grpc.status_code"] == code as i64;
    eventually("the calls' spans, with their codes, the server's error marked", || {
        let all = spans(&span_file);
        let mine = |id: &str| all.iter().find(|s| on(s, follower) && named(s, "request", "SPAN_KIND_SERVER", id));
        let answered =
            mine("otlp-trace-2").is_some_and(|s| code(s, tonic::Code::NotFound) && s["status"] == "STATUS_CODE_UNSET");
        let failed = mine("otlp-trace-3").is_some_and(|s| {
            code(s, tonic::Code::Unimplemented) && s["status"] == "STATUS_CODE_ERROR" && s["status_message"] != ""
        });
        let joined = mine("otlp-sampled").is_some_and(|s| {
            s["trace_id"] == "33333333333333333333333333333333" && s["parent_span_id"] == "4444444444444444"
        });
        answered && failed && joined
    });
    // The unsampled call ended before the sampled one, so it would have been queued first.
    let unrecorded = spans(&span_file)
        .into_iter()
        .filter(|s| {
            s["attributes"]["request_id"] == "otlp-unsampled" || s["trace_id"] == "11111111111111111111111111111111"
        })
        .count();
    assert_eq!(unrecorded, 0, "a trace its caller does not record is not exported");
    // Raft's own calls are not exported: only a forwarded write's peer call is.
    let peer_calls: Vec<_> = spans(&span_file)
        .into_iter()
        .filter(|s| s["attributes"]["method"].as_str().is_some_and(|m| m.starts_with("/helios.v1.RaftPeer/")))
        .filter(|s| s["attributes"]["method"] != "/helios.v1.RaftPeer/Forward")
        .collect();
    assert!(peer_calls.is_empty(), "replication calls were exported: {peer_calls:?}");
}
