//! Three (and four) real servers in one process, talking gRPC over loopback.

mod common;

use common::{wait_for, TestCluster};
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_elect_a_leader_and_accept_writes_on_a_follower() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");

    let reply = cluster.submit(follower, "from-follower").await;
    assert!(reply.changed);
    assert_eq!(reply.version, 0);

    // A read on any server after the acknowledged write sees it, from that server's own tables.
    for id in 1..=3 {
        let job = cluster
            .jobs(id)
            .await
            .get_job(pb::GetJobRequest { name: "from-follower".into(), ..Default::default() })
            .await
            .expect("job is visible")
            .into_inner()
            .job
            .expect("job");
        assert_eq!(job.version, 0);
    }

    // Submitting the same spec again changes nothing; a new spec is the next version.
    assert!(!cluster.submit(leader, "from-follower").await.changed);
    let mut changed = helios_core::Job::exec("from-follower", "echo", vec!["other".into()]);
    changed.priority = 70;
    let reply = cluster
        .jobs(follower)
        .await
        .submit_job(pb::SubmitJobRequest { job: Some(helios_api::convert::job_to_pb(&changed)), ..Default::default() })
        .await
        .expect("update")
        .into_inner();
    assert!(reply.changed);
    assert_eq!(reply.version, 1);
    let members = cluster.members(follower).await;
    assert_eq!(members.members.len(), 3);
    assert_eq!(members.members.iter().filter(|m| m.role() == pb::MemberRole::Leader).count(), 1);
    assert!(members.members.iter().all(|m| m.voter && m.term >= 1));
    // Its own view only, without asking the others.
    let local = cluster.cluster_client(follower).await.list_members(pb::ListMembersRequest { local: true }).await;
    let local = local.expect("local members").into_inner();
    assert_eq!(
        local.members.iter().map(|m| (m.id, m.role())).collect::<Vec<_>>(),
        [(follower, pb::MemberRole::Follower)]
    );
    assert_eq!(local.leader_id, members.members.iter().find(|m| m.role() == pb::MemberRole::Leader).map(|m| m.id));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_continue_without_the_leader_and_the_old_leader_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let old_leader = cluster.leader().await;
    cluster.submit(old_leader, "before").await;

    cluster.stop(old_leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let mut last_index = 0;
    for i in 0..5 {
        last_index = cluster.submit(new_leader, &format!("during-{i}")).await.index;
    }

    cluster.restart(old_leader).await;
    // It rejoins from its own data (no re-initialization) and replicates what it missed.
    let status = wait_for("the old leader to catch up", || async {
        let me = cluster.own_status(old_leader).await;
        (me.last_applied_index >= last_index).then_some(me)
    })
    .await;
    let leader_term = cluster.own_status(new_leader).await.term;
    assert_eq!(status.term, leader_term, "it follows the new leader's term: {status:?}");
    assert_eq!(status.role(), pb::MemberRole::Follower);
    let mut names = cluster.job_names(old_leader).await;
    names.sort();
    assert_eq!(names, ["before", "during-0", "during-1", "during-2", "during-3", "during-4"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_server_joins_from_a_snapshot_and_a_server_is_removed() {
    // Snapshot (and purge the log) every 20 entries, so a newcomer cannot catch up from the log.
    let mut cluster = TestCluster::start_with(3, 20).await;
    let leader = cluster.leader().await;
    for i in 0..60 {
        cluster.submit(leader, &format!("job-{i}")).await;
    }
    let purged = wait_for("the leader to purge its log behind a snapshot", || async {
        cluster.own_status(leader).await.purged_index.filter(|p| *p > 0)
    })
    .await;

    // An agent's node, to read what heartbeats tell agents about the servers (asking the leader:
    // a removed server need not learn of its removal).
    let mut agent = AgentServiceClient::new(cluster.channel(leader).await);
    let registered = agent
        .register(pb::RegisterRequest { node: Some(common::fake_node("n1")), secret: "s".into() })
        .await
        .expect("register")
        .into_inner();
    let mut three: Vec<String> = cluster.addrs.values().cloned().collect();
    three.sort();
    assert_eq!(sorted(registered.servers), three);

    let addr = cluster.start_new_server(4).await;
    let via = cluster.running_ids().into_iter().find(|id| *id != leader && *id != 4).expect("a follower");
    cluster
        .cluster_client(via)
        .await
        .add_server(pb::AddServerRequest { id: 4, addr: addr.clone() })
        .await
        .expect("join server 4");

    // Server 4 learns the new membership by replication, just after the leader commits it.
    let four = wait_for("server 4 to see itself as a voter", || async {
        cluster.members(4).await.members.into_iter().find(|m| m.id == 4 && m.voter)
    })
    .await;
    assert_eq!(four.addr, addr);
    // Agents hear of the new server in their next heartbeat.
    let heartbeat = || {
        let mut agent = agent.clone();
        async move {
            let request = pb::HeartbeatRequest { node_id: "n1".into(), secret: "s".into() };
            sorted(agent.heartbeat(request).await.expect("heartbeat").into_inner().servers)
        }
    };
    wait_for("heartbeats to list server 4", || async { heartbeat().await.contains(&addr).then_some(()) }).await;
    assert_eq!(heartbeat().await, sorted([three.clone(), vec![addr.clone()]].concat()));
    // Entries up to `purged` exist only in snapshots now: server 4 holding every job proves it
    // received and installed one.
    assert_eq!(cluster.job_names(4).await.len(), 60);
    let snapshot = cluster.own_status(4).await.snapshot_index.expect("server 4 has a snapshot");
    assert!(snapshot >= purged, "snapshot {snapshot} covers the purged log up to {purged}");
    // Installed from a snapshot (its indexes rebuilt), server 4's state is the others', byte for
    // byte: every server at the same applied index reports the same digest.
    let agreed = digests_at_one_index(&cluster).await;
    assert!(agreed.windows(2).all(|w| w[0].digest == w[1].digest), "{agreed:?}");
    assert!(agreed[0].entries > 60, "{agreed:?}");

    // Adding it twice is refused and changes nothing.
    let again = cluster.cluster_client(leader).await.add_server(pb::AddServerRequest { id: 4, addr }).await;
    assert_eq!(again.expect_err("duplicate join").code(), tonic::Code::FailedPrecondition);

    // Remove a follower that is not the leader; the cluster keeps working with the rest.
    let removed = cluster.running_ids().into_iter().find(|id| *id != leader && *id != 4).expect("a follower");
    cluster.cluster_client(4).await.remove_server(pb::RemoveServerRequest { id: removed }).await.expect("remove");
    let members = cluster.members(leader).await;
    let mut ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
    ids.sort();
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != removed).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let removed_addr = cluster.addrs[&removed].clone();
    let servers = wait_for("heartbeats to drop the removed server", || async {
        let servers = heartbeat().await;
        (!servers.contains(&removed_addr)).then_some(servers)
    })
    .await;
    assert_eq!(servers.len(), 3, "{servers:?}");
    cluster.stop(removed).await;
    cluster.submit(4, "after-removal").await;
    assert_eq!(cluster.job_names(leader).await.len(), 61);
    let after = digests_at_one_index(&cluster).await;
    assert!(after.windows(2).all(|w| w[0].digest == w[1].digest), "{after:?}");
    assert_ne!(after[0].digest, agreed[0].digest, "a write changes the digest");

    let unknown = cluster.cluster_client(leader).await.remove_server(pb::RemoveServerRequest { id: 99 }).await;
    assert_eq!(unknown.expect_err("unknown server").code(), tonic::Code::FailedPrecondition);
    cluster.shutdown().await;
}

/// Every running server's state digest, once they all report the same applied index.
async fn digests_at_one_index(cluster: &TestCluster) -> Vec<pb::StateDigestResponse> {
    wait_for("every server at one applied index", || async {
        let mut digests = Vec::new();
        for id in cluster.running_ids() {
            let mut client = cluster.cluster_client(id).await;
            digests.push(client.state_digest(pb::StateDigestRequest {}).await.ok()?.into_inner());
        }
        digests.windows(2).all(|w| w[0].applied_index == w[1].applied_index).then_some(digests)
    })
    .await
}

fn sorted(mut addrs: Vec<String>) -> Vec<String> {
    addrs.sort();
    addrs
}
