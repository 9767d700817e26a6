//! The peer API hears only members: forged Raft messages, forwarded commands no server builds,
//! and servers without the cluster's key are refused, and the cluster goes on as before.

mod common;

use common::{wait_for, TestCluster};
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_api::pb::raft_peer_client::RaftPeerClient;
use helios_api::pb::AllocationClientStatus;
use helios_api::pb::{snapshot_chunk, SnapshotChunk};
use helios_core::{AllocClientStatus, Command, NodeStatus, Proposal, Timestamp};
use helios_server::cluster::ForwardRequest;
use helios_server::raft::network::methods;
use helios_server::raft::peer_auth::{ClusterKey, PeerAuth};
use helios_server::raft::{TypeConfig, Vote};
use helios_server::store::codec::encode;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::Code;

/// Sends `body` to server `to`'s peer `method`, signed as server `as_id` with `key`.
async fn peer_call(
    cluster: &TestCluster,
    to: u64,
    method: &str,
    as_id: u64,
    key: Option<ClusterKey>,
    body: Vec<u8>,
) -> Result<pb::RaftPayload, tonic::Status> {
    let mut client = RaftPeerClient::new(cluster.channel(to).await);
    let mut metadata = tonic::metadata::MetadataMap::new();
    PeerAuth::new(as_id, key).sign_request(method, &body, &mut metadata);
    let mut request = tonic::Request::new(pb::RaftPayload { data: body });
    *request.metadata_mut() = metadata;
    let format = helios_server::store::tables::FORMAT_VERSION.to_string();
    request.metadata_mut().insert("helios-stored-format", format.parse().expect("ascii"));
    let reply = match method {
        methods::VOTE => client.vote(request).await,
        methods::PRE_VOTE => client.pre_vote(request).await,
        methods::APPEND_ENTRIES => client.append_entries(request).await,
        methods::FORWARD => client.forward(request).await,
        other => panic!("no such method {other}"),
    };
    reply.map(tonic::Response::into_inner)
}

fn vote_request(term: u64, candidate: u64, transfer: bool) -> Vec<u8> {
    let mut rpc = VoteRequest::<TypeConfig>::new(Vote::new(term, candidate), None);
    rpc.leadership_transfer = transfer;
    encode(&rpc)
}

fn heartbeat(term: u64, leader: u64) -> Vec<u8> {
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    encode(&rpc)
}

/// Every server's term, with the leader they agree on.
async fn terms(cluster: &TestCluster) -> (u64, Vec<u64>) {
    let leader = cluster.leader().await;
    let mut terms = Vec::new();
    for id in cluster.running_ids() {
        terms.push(cluster.own_status(id).await.term);
    }
    (leader, terms)
}

fn refused(result: Result<pb::RaftPayload, tonic::Status>, codes: &[Code], what: &str) {
    let status = result.expect_err(what);
    assert!(codes.contains(&status.code()), "{what}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_raft_messages_change_no_leader_and_no_term() {
    let cluster = TestCluster::start(3).await;
    cluster.submit(1, "before").await;
    let before = terms(&cluster).await;
    let denied = [Code::PermissionDenied];
    for to in cluster.running_ids() {
        // A non-member: a vote with the largest term, one claiming a leadership transfer, a
        // pre-vote, and a leader's heartbeat in a higher term.
        let max_vote = vote_request(u64::MAX, 99, false);
        refused(peer_call(&cluster, to, methods::VOTE, 99, None, max_vote).await, &denied, "u64::MAX vote");
        let transfer = vote_request(before.1[0] + 100, 99, true);
        refused(peer_call(&cluster, to, methods::VOTE, 99, None, transfer).await, &denied, "transfer vote");
        let pre = vote_request(before.1[0] + 100, 99, false);
        refused(peer_call(&cluster, to, methods::PRE_VOTE, 99, None, pre).await, &denied, "pre-vote");
        let beat = heartbeat(before.1[0] + 1, 99);
        refused(peer_call(&cluster, to, methods::APPEND_ENTRIES, 99, None, beat).await, &denied, "heartbeat");
        // A member's name on a message carrying another's vote, or a term that would overflow.
        let other = if to == 1 { 2 } else { 1 };
        let spoofed = heartbeat(before.1[0] + 1, 99);
        let result = peer_call(&cluster, to, methods::APPEND_ENTRIES, other, None, spoofed).await;
        refused(result, &denied, "a member's name on another's vote");
        let overflow = vote_request(u64::MAX, other, false);
        let result = peer_call(&cluster, to, methods::VOTE, other, None, overflow).await;
        refused(result, &[Code::InvalidArgument], "a member's u64::MAX vote");
        // A member's leadership transfer: Helios never transfers, so nobody may claim one.
        let transfer = vote_request(before.1[0] + 100, other, true);
        let result = peer_call(&cluster, to, methods::VOTE, other, None, transfer).await;
        refused(result, &denied, "a member's transfer vote");
    }
    assert_eq!(terms(&cluster).await, before, "the leader or a term changed");
    assert!(cluster.submit(2, "after").await.changed, "writes go on");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_refuses_forwarded_commands_no_server_builds() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    // A node (no agent behind it) and a job placed on it.
    let mut agents = AgentServiceClient::new(cluster.channel(1).await);
    let node = common::fake_node("n1");
    agents.register(pb::RegisterRequest { node: Some(node), secret: "the-secret".into() }).await.expect("register");
    cluster.submit(1, "victim").await;
    let alloc = wait_for("the allocation placed", || async {
        cluster.job_status(1, "victim").await.allocations.into_iter().next()
    })
    .await;

    let forge = |command: Command| {
        let proposal = Proposal::new("forged".into(), Timestamp(1), command);
        encode(&ForwardRequest::Write(Box::new(proposal)))
    };
    let down = forge(Command::SetNodeStatus {
        node_id: "n1".into(),
        status: NodeStatus::Down,
        now: Timestamp(1),
        evals: Vec::new(),
    });
    let result = peer_call(&cluster, leader, methods::FORWARD, follower, None, down).await;
    refused(result, &[Code::PermissionDenied], "a node status change");
    // An "alloc stop" plan that also marks the allocation complete: a report without the secret.
    let eval =
        helios_core::Evaluation::new("e-stop".into(), "victim", 50, helios_core::EvalTrigger::AllocStop, Timestamp(1));
    let plan = helios_core::Plan {
        eval_id: eval.id.clone(),
        job_name: "victim".into(),
        planned_at_index: 0,
        placements: Vec::new(),
        stops: vec![helios_core::plan::AllocStop {
            alloc_id: alloc.id.clone(),
            desired_status: helios_core::AllocDesiredStatus::Stop,
            client_status: Some(AllocClientStatus::Complete),
            description: "forged".into(),
        }],
        in_place: Vec::new(),
        job_version: 0,
        failed_placements: Default::default(),
        revisit_at: None,
        revisit_reason: String::new(),
        final_failures: Default::default(),
    };
    let stop_plan = forge(Command::ApplyPlan { plan, eval });
    let result = peer_call(&cluster, leader, methods::FORWARD, follower, None, stop_plan).await;
    refused(result, &[Code::PermissionDenied], "a plan that sets a client status");
    let mut bad_job = helios_core::Job::exec("", "echo", vec![]);
    bad_job.priority = 0;
    let eval = helios_core::Evaluation::new("e".into(), "", 1, helios_core::EvalTrigger::JobRegister, Timestamp(1));
    let invalid = forge(Command::RegisterJob { job: bad_job, eval });
    let result = peer_call(&cluster, leader, methods::FORWARD, follower, None, invalid).await;
    refused(result, &[Code::InvalidArgument], "an invalid job");
    // From a non-member, even a command servers do build is refused.
    let stop = forge(Command::SetNodeScheduling {
        node_id: "n1".into(),
        drain: true,
        eligibility: helios_core::NodeEligibility::Ineligible,
        now: Timestamp(1),
        evals: Vec::new(),
    });
    let result = peer_call(&cluster, leader, methods::FORWARD, 99, None, stop).await;
    refused(result, &[Code::PermissionDenied], "a non-member's forward");

    let after = cluster.job_status(2, "victim").await.allocations;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].client_status(), AllocationClientStatus::Pending, "the forged report was applied");
    let node = common::node(&cluster, 2, "n1").await.expect("node");
    assert_eq!((node.status(), node.drain), (pb::NodeStatus::Ready, false));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_cluster_key_only_its_holders_are_heard_or_joined() {
    let key = ClusterKey::generate().expect("randomness");
    let mut cluster = TestCluster::start_keyed(3, key.clone()).await;
    // The cluster replicates with signed messages.
    cluster.submit(1, "signed").await;
    let before = terms(&cluster).await;
    let leader = before.0;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let unauthenticated = [Code::Unauthenticated];
    // A member's id without the key, or with another key: a heartbeat that would depose the
    // leader, and a vote.
    let beat = || heartbeat(before.1[0] + 1, leader);
    let unsigned = peer_call(&cluster, follower, methods::APPEND_ENTRIES, leader, None, beat()).await;
    refused(unsigned, &unauthenticated, "unsigned heartbeat");
    let stranger = ClusterKey::generate().expect("randomness");
    let forged = peer_call(&cluster, follower, methods::APPEND_ENTRIES, leader, Some(stranger.clone()), beat()).await;
    refused(forged, &unauthenticated, "heartbeat signed with another key");
    let vote = vote_request(before.1[0] + 5, follower, false);
    let forged = peer_call(&cluster, leader, methods::VOTE, follower, Some(stranger.clone()), vote).await;
    refused(forged, &unauthenticated, "vote signed with another key");
    assert_eq!(terms(&cluster).await, before, "the leader or a term changed");

    // A server with another key, or none, is not joined and is sent nothing.
    for (id, key) in [(4, Some(stranger)), (5, None)] {
        let addr = cluster.start_new_server_with_key(id, key).await;
        let join = cluster.cluster_client(leader).await.add_server(pb::AddServerRequest { id, addr }).await;
        let status = join.expect_err("a server without the key joined");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("does not hold this cluster's key"), "{}", status.message());
        let members = cluster.members(leader).await;
        assert!(members.members.iter().all(|m| m.id != id), "server {id} became a member");
        let outsider = cluster.cluster_client(id).await.state_digest(pb::StateDigestRequest {}).await;
        let outsider = outsider.expect("digest").into_inner();
        assert_eq!((outsider.applied_index, outsider.entries), (0, 0), "server {id} was sent the state");
        cluster.stop(id).await;
    }
    // One with the key joins.
    let addr = cluster.start_new_server(6).await;
    cluster.cluster_client(leader).await.add_server(pb::AddServerRequest { id: 6, addr }).await.expect("join");
    assert!(cluster.submit(6, "after").await.changed);
    cluster.shutdown().await;
}

/// Streams a snapshot to server `to` as server `as_id`: the header (vote, meta), then `chunks`.
async fn snapshot_call(
    cluster: &TestCluster,
    to: u64,
    as_id: u64,
    key: Option<ClusterKey>,
    vote: Vote,
    last_log: (u64, u64),
    chunks: Vec<SnapshotChunk>,
) -> Result<pb::RaftPayload, tonic::Status> {
    use openraft::vote::RaftLeaderId;
    let leader = openraft::impls::leader_id_adv::LeaderId::new(last_log.0, as_id);
    let meta = helios_server::raft::SnapshotMeta {
        last_log_id: Some(openraft::LogId::new(leader, last_log.1)),
        last_membership: Default::default(),
    };
    let header = encode(&(vote, meta));
    let mut metadata = tonic::metadata::MetadataMap::new();
    PeerAuth::new(as_id, key).sign_request(methods::INSTALL_SNAPSHOT, &header, &mut metadata);
    metadata.insert(
        "helios-stored-format",
        helios_server::store::tables::FORMAT_VERSION.to_string().parse().expect("ascii"),
    );
    let first = SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(header)) };
    let mut request = tonic::Request::new(futures::stream::iter(std::iter::once(first).chain(chunks)));
    *request.metadata_mut() = metadata;
    let mut client = RaftPeerClient::new(cluster.channel(to).await);
    client.install_snapshot(request).await.map(tonic::Response::into_inner)
}

fn data(bytes: &[u8]) -> SnapshotChunk {
    SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Data(bytes.to_vec())) }
}

fn half_received_snapshots(cluster: &TestCluster) -> Vec<String> {
    std::fs::read_dir(cluster.data_dir())
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incoming"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_snapshots_are_refused_before_or_after_their_data_and_leave_nothing() {
    let key = ClusterKey::generate().expect("randomness");
    let cluster = TestCluster::start_keyed(3, key.clone()).await;
    cluster.submit(1, "before").await;
    let before = terms(&cluster).await;
    let (leader, term) = (before.0, before.1[0]);
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let vote = |term: u64, id: u64| Vote::new_committed(term, id);
    let big = vec![data(&[7u8; 1024]); 4];

    // Not signed with the key, though it names the leader.
    let unsigned =
        snapshot_call(&cluster, follower, leader, None, vote(term, leader), (term, 1_000), big.clone()).await;
    refused(unsigned, &[Code::Unauthenticated], "an unsigned snapshot");
    // Signed, but its vote is older than the follower's, or it ends beyond its own vote.
    let stale = snapshot_call(
        &cluster,
        follower,
        leader,
        Some(key.clone()),
        vote(term - 1, leader),
        (term - 1, 1_000),
        big.clone(),
    )
    .await;
    refused(stale, &[Code::FailedPrecondition], "a stale snapshot");
    let beyond = snapshot_call(
        &cluster,
        follower,
        leader,
        Some(key.clone()),
        vote(term, leader),
        (term + 1, 1_000),
        big.clone(),
    )
    .await;
    refused(beyond, &[Code::InvalidArgument], "a snapshot beyond its vote");
    // Signed, but the data is not what its closing MAC covers, or there is no MAC.
    let mut tampered = big.clone();
    tampered.push(SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Mac(vec![0; 32])) });
    let bad_mac =
        snapshot_call(&cluster, follower, leader, Some(key.clone()), vote(term, leader), (term, 1_000), tampered).await;
    refused(bad_mac, &[Code::Unauthenticated], "a snapshot with a wrong MAC");
    let no_mac =
        snapshot_call(&cluster, follower, leader, Some(key.clone()), vote(term, leader), (term, 1_000), big).await;
    refused(no_mac, &[Code::Unauthenticated], "a snapshot without its MAC");

    assert!(half_received_snapshots(&cluster).is_empty(), "{:?}", half_received_snapshots(&cluster));
    assert_eq!(terms(&cluster).await, before, "the leader or a term changed");
    assert!(cluster.submit(follower, "after").await.changed, "writes go on");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_cluster_catches_a_new_server_up_by_snapshot() {
    // Snapshot every 20 entries, so the newcomer cannot catch up from the log alone.
    let key = ClusterKey::generate().expect("randomness");
    let mut cluster = TestCluster::start_configured(3, 20, Some(key)).await;
    for i in 0..60 {
        cluster.submit(1, &format!("job-{i}")).await;
    }
    let leader = cluster.leader().await;
    let addr = cluster.start_new_server(4).await;
    cluster.cluster_client(leader).await.add_server(pb::AddServerRequest { id: 4, addr }).await.expect("join");
    let names = cluster.job_names(4).await;
    assert!(names.contains(&"job-0".to_string()) && names.contains(&"job-59".to_string()), "{names:?}");
    assert!(half_received_snapshots(&cluster).is_empty());
    cluster.shutdown().await;
}
