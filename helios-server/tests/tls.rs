//! Mutual TLS: a cluster whose servers, agent and callers all hold certificates of one CA runs a
//! job end to end (servers to servers, agent to servers, servers to the agent for logs), and
//! refuses plaintext, other CAs, expired certificates and certificates of the wrong role.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{start_agent_configured, wait_for, TestCluster, TestTls};
use helios_api::pb;
use helios_api::pb::AllocationClientStatus;
use helios_api::tls::generate::{self, Names, Pem, Validity};
use helios_api::tls::{Role, Tls, TlsFiles};
use helios_core::Job;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// Writes `pem` and the CA into `dir` and loads them as `role`'s TLS.
fn tls_of(dir: &Path, name: &str, ca: &Pem, pem: &Pem) -> Tls {
    let files = TlsFiles {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, &ca.cert).expect("write");
    std::fs::write(&files.cert, &pem.cert).expect("write");
    std::fs::write(&files.key, &pem.key).expect("write");
    Tls::load(&files, "global").expect("load")
}

fn cert(ca: &Pem, role: Role) -> Pem {
    generate::new_cert(ca, role, "global", &Names::default(), Validity::from_now(1)).expect("cert")
}

/// A channel to `addr` presenting `pem` and trusting `ca`, with no checks of our own (so an
/// expired certificate or one of another CA reaches the server).
async fn raw_channel(addr: &str, ca: &Pem, pem: &Pem) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert))
        .identity(Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(Role::Server.san("global"));
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(config)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A public call through `channel`: the job list.
async fn list_jobs(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    pb::job_service_client::JobServiceClient::new(channel).list_jobs(pb::ListJobsRequest::default()).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutual_tls_cluster_runs_a_job_and_refuses_strangers_and_wrong_roles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let (server, client, cli) = (cert(&ca, Role::Server), cert(&ca, Role::Client), cert(&ca, Role::Cli));
    let tls =
        TestTls { server: tls_of(dir.path(), "server", &ca, &server), caller: tls_of(dir.path(), "cli", &ca, &cli) };
    let cluster = TestCluster::start_tls(3, tls).await;
    // Servers elect a leader and replicate over TLS; the CLI certificate reads and writes.
    cluster.leader().await;
    let job = Job::exec("over-tls", "echo", vec!["It replicated!".into()]);
    assert!(cluster.submit_job(2, &job).await.changed);

    // An agent with a client certificate registers, runs the job, and its log reaches us
    // through a server, which dials the agent over TLS.
    let agent_dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(agent_dir.path().to_path_buf());
    let agent_tls = tls_of(dir.path(), "client", &ca, &client);
    let agent = start_agent_configured(&cluster, "n1", agent_dir.path(), |c| c.tls = Some(agent_tls.clone())).await;
    let done = wait_for("the job to complete", || async {
        cluster
            .job_status(1, "over-tls")
            .await
            .allocations
            .into_iter()
            .find(|a| a.client_status() == AllocationClientStatus::Complete)
    })
    .await;
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(3).await);
    let request =
        pb::AllocLogsRequest { id: done.id.clone(), task: String::new(), stderr: false, tail: None, follow: false };
    let mut stream = allocs.alloc_logs(request).await.expect("logs").into_inner();
    let mut log = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        log.extend_from_slice(&chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&log), "It replicated!\n");

    let addr = cluster.addrs[&1].clone();
    // Plaintext, another CA, an expired certificate: no call gets through.
    let plain = Endpoint::from_shared(format!("http://{addr}")).expect("url").connect().await;
    if let Ok(channel) = plain {
        assert!(list_jobs(channel).await.is_err(), "a plaintext call was answered");
    }
    let other_ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let stranger = cert(&other_ca, Role::Cli);
    if let Ok(channel) = raw_channel(&addr, &ca, &stranger).await {
        assert!(list_jobs(channel).await.is_err(), "a certificate of another CA was accepted");
    }
    let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * 86_400);
    let expired =
        generate::new_cert(&ca, Role::Cli, "global", &Names::default(), Validity { not_before: ten_days_ago, days: 1 })
            .expect("cert");
    if let Ok(channel) = raw_channel(&addr, &ca, &expired).await {
        assert!(list_jobs(channel).await.is_err(), "an expired certificate was accepted");
    }
    let expired_files = dir.path().join("expired");
    std::fs::create_dir_all(&expired_files).expect("dir");
    let files = TlsFiles {
        ca: dir.path().join("cli-ca.pem"),
        cert: expired_files.join("c.pem"),
        key: expired_files.join("k.pem"),
    };
    std::fs::write(&files.cert, &expired.cert).expect("write");
    std::fs::write(&files.key, &expired.key).expect("write");
    let refused = Tls::load(&files, "global").expect_err("an expired certificate loads");
    assert!(refused.to_string().contains("not now"), "{refused}");

    // Certificates of the cluster's CA, used outside their role.
    let with = |pem: &Pem| {
        let (addr, ca, pem) = (addr.clone(), ca.clone(), pem.clone());
        async move { raw_channel(&addr, &ca, &pem).await.expect("connect") }
    };
    let denied = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    };
    let peer_status = |channel| async move {
        let mut peer = pb::raft_peer_client::RaftPeerClient::new(channel);
        let mut request = tonic::Request::new(pb::RaftPayload { data: Vec::new() });
        let format = helios_server::store::tables::FORMAT_VERSION.to_string();
        request.metadata_mut().insert("helios-stored-format", format.parse().expect("ascii"));
        request.metadata_mut().insert("helios-peer-id", "2".parse().expect("ascii"));
        peer.status(request).await.map(drop)
    };
    denied(peer_status(with(&client).await).await, "a client certificate on the peer API");
    denied(peer_status(with(&cli).await).await, "a CLI certificate on the peer API");
    peer_status(with(&server).await).await.expect("a server certificate on the peer API");
    let heartbeat = |channel| async move {
        let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
        agents.heartbeat(pb::HeartbeatRequest { node_id: "n1".into(), secret: "x".into() }).await.map(drop)
    };
    denied(heartbeat(with(&cli).await).await, "a CLI certificate on the agent API");
    // The agent serves task logs to servers only.
    let node = common::node(&cluster, 1, "n1").await.expect("node");
    // A server proves itself with the node's secret too (helios_api::node_proof).
    let secret = std::fs::read_to_string(agent_dir.path().join("helios-client-n1.secret")).expect("secret");
    let task_logs = |pem: Pem| {
        let (rpc_addr, ca, alloc_id) = (node.rpc_addr.clone(), ca.clone(), done.id.clone());
        let secret = secret.trim().to_string();
        async move {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca.cert))
                .identity(Identity::from_pem(&pem.cert, &pem.key))
                .domain_name(Role::Client.san("global"));
            let channel = Endpoint::from_shared(format!("https://{rpc_addr}"))
                .expect("url")
                .tls_config(config)
                .expect("tls")
                .connect()
                .await
                .expect("connect to the agent");
            let mut logs = pb::client_service_client::ClientServiceClient::new(channel);
            let time_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let proof = helios_api::node_proof::prove(&secret, &alloc_id, "", time_ms);
            let request = pb::TaskLogsRequest { alloc_id, proof_time_ms: time_ms, proof, ..Default::default() };
            logs.task_logs(request).await.map(drop)
        }
    };
    denied(task_logs(cli.clone()).await, "a CLI certificate on the agent's log service");
    task_logs(server.clone()).await.expect("a server certificate reads an agent's logs");

    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_serves_new_certificates_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old_ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let server_tls = tls_of(dir.path(), "server", &old_ca, &cert(&old_ca, Role::Server));
    let caller = tls_of(dir.path(), "cli", &old_ca, &cert(&old_ca, Role::Cli));
    let files = server_tls.files.clone();
    let cluster = TestCluster::start_tls(1, TestTls { server: server_tls, caller }).await;
    cluster.leader().await;
    let addr = cluster.addrs[&1].clone();
    let new_ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let new_cli = cert(&new_ca, Role::Cli);
    let works = |ca: Pem, pem: Pem| {
        let addr = addr.clone();
        async move {
            match raw_channel(&addr, &ca, &pem).await {
                Ok(channel) => list_jobs(channel).await.is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(!works(new_ca.clone(), new_cli.clone()).await, "the new CA is trusted before the rotation");

    // Rotate: the new CA's server certificate, and both CAs trusted while clients move over.
    let new_server = cert(&new_ca, Role::Server);
    std::fs::write(&files.ca, format!("{}{}", old_ca.cert, new_ca.cert)).expect("write");
    std::fs::write(&files.cert, &new_server.cert).expect("write");
    std::fs::write(&files.key, &new_server.key).expect("write");
    cluster.reloads[&1].request_and_wait().await;
    // New connections get the new certificates (the channel to the old server may take a moment
    // to be turned away).
    wait_for("the reloaded certificates", || {
        let attempt = works(new_ca.clone(), new_cli.clone());
        async move { attempt.await.then_some(()) }
    })
    .await;
    // Clients still holding a certificate of the old CA get in while both are trusted.
    assert!(works(new_ca.clone(), cert(&old_ca, Role::Cli)).await, "an old-CA certificate during the rotation");

    // A broken file is not taken: the server keeps what it has.
    std::fs::write(&files.cert, "not a certificate").expect("write");
    cluster.reloads[&1].request_and_wait().await;
    assert!(works(new_ca.clone(), new_cli.clone()).await, "a bad reload replaced the certificates");
    // Nor is a good certificate with a key that is not one (checked only when the TLS
    // configuration is built): the server stays up with what it has.
    std::fs::write(&files.cert, &new_server.cert).expect("write");
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        .expect("write");
    cluster.reloads[&1].request_and_wait().await;
    assert!(works(new_ca.clone(), new_cli.clone()).await, "a bad key stopped the server");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_reloads_its_certificates_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let tls = TestTls {
        server: tls_of(dir.path(), "server", &ca, &cert(&ca, Role::Server)),
        caller: tls_of(dir.path(), "cli", &ca, &cert(&ca, Role::Cli)),
    };
    let cluster = TestCluster::start_tls(1, tls).await;
    cluster.leader().await;
    let agent_dir = tempfile::tempdir().expect("temp dir");
    let agent_tls = tls_of(dir.path(), "client", &ca, &cert(&ca, Role::Client));
    let files = agent_tls.files.clone();
    let reload = helios_api::tls::Reload::default();
    let agent = start_agent_configured(&cluster, "n1", agent_dir.path(), |c| {
        c.tls = Some(agent_tls.clone());
        c.reload = reload.clone();
    })
    .await;
    let node = wait_for("the agent's node", || async {
        common::node(&cluster, 1, "n1").await.filter(|n| n.status() == pb::NodeStatus::Ready)
    })
    .await;
    // What a server sees when it dials the agent, trusting only `trust`.
    let server_pem = cert(&ca, Role::Server);
    let agent_answers = |trust: Pem| {
        let (rpc_addr, server_pem) = (node.rpc_addr.clone(), server_pem.clone());
        async move {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&trust.cert))
                .identity(Identity::from_pem(&server_pem.cert, &server_pem.key))
                .domain_name(Role::Client.san("global"));
            let Ok(channel) = Endpoint::from_shared(format!("https://{rpc_addr}"))
                .expect("url")
                .tls_config(config)
                .expect("tls")
                .connect()
                .await
            else {
                return false;
            };
            let mut logs = pb::client_service_client::ClientServiceClient::new(channel);
            let request = pb::TaskLogsRequest { alloc_id: "none".into(), ..Default::default() };
            // Any answer of the log service (here a refusal: no proof) means TLS got through.
            match logs.task_logs(request).await {
                Ok(_) => true,
                Err(status) => !matches!(status.code(), Code::Unavailable | Code::Unknown),
            }
        }
    };
    let new_ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    assert!(agent_answers(ca.clone()).await);
    assert!(!agent_answers(new_ca.clone()).await, "the new CA before the rotation");
    let renewed = cert(&new_ca, Role::Client);
    std::fs::write(&files.ca, format!("{}{}", ca.cert, new_ca.cert)).expect("write");
    std::fs::write(&files.cert, &renewed.cert).expect("write");
    std::fs::write(&files.key, &renewed.key).expect("write");
    reload.request_and_wait().await;
    wait_for("the agent's new certificate", || {
        let attempt = agent_answers(new_ca.clone());
        async move { attempt.await.then_some(()) }
    })
    .await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[test]
fn a_process_refuses_a_certificate_of_the_wrong_role_or_region() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = generate::new_ca(Validity::from_now(10)).expect("ca");
    let cli = tls_of(dir.path(), "cli", &ca, &cert(&ca, Role::Cli));
    let err = cli.require_own_role(Role::Server).expect_err("a CLI certificate runs a server");
    assert!(err.to_string().contains("tls cert create --server"), "{err}");
    let files = TlsFiles {
        ca: dir.path().join("cli-ca.pem"),
        cert: dir.path().join("cli.pem"),
        key: dir.path().join("cli-key.pem"),
    };
    let err = Tls::load(&files, "eu").expect_err("a global certificate in region eu");
    assert!(err.to_string().contains("no Helios role in region \"eu\""), "{err}");
    let missing = TlsFiles::from_flags(Some("ca".into()), None, Some("k".into())).expect_err("two of three");
    assert!(missing.to_string().contains("--tls-cert is missing"), "{missing}");
}
