//! A server whose disk returns garbage: refused at start, reported by the leader as lagging
//! rather than silently stuck, and caught up once its file is moved away.

mod common;

use common::{wait_for, TestCluster};
use helios_server::store;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_with_a_damaged_database_is_refused_shown_lagging_and_recovers_from_its_peers() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.submit(leader, "before").await;
    cluster.stop(follower).await;

    // What a failing disk does to the stopped follower's file (every server of the test
    // cluster shares the data dir, each with its own file).
    let path = store::db_path(&cluster.data_dir(), follower);
    let mut bytes = std::fs::read(&path).expect("read");
    for page in bytes.chunks_mut(4096).skip(1) {
        page.iter_mut().skip(256).take(256).for_each(|b| *b ^= 0x5A);
    }
    std::fs::write(&path, bytes).expect("write");
    cluster.restart(follower).await;
    let refused = cluster.exited(follower).await.expect_err("a damaged database was served");
    assert!(refused.to_string().contains("is damaged"), "{refused}");

    // The cluster goes on with two; the leader shows the third behind, not as a healthy member.
    for n in 0..5 {
        cluster.submit(leader, &format!("during-{n}")).await;
    }
    let members = cluster.members(leader).await;
    let lagging = members.members.iter().find(|m| m.id == follower).expect("listed");
    assert_eq!(lagging.role(), helios_api::pb::MemberRole::Unreachable);
    assert!(lagging.lag.is_some_and(|lag| lag >= 5), "{lagging:?}");

    // Moved away (as the error says), it starts empty and catches up from its peers.
    std::fs::rename(&path, path.with_extension("db.broken")).expect("move");
    std::fs::remove_file(store::damaged_marker(&cluster.data_dir(), follower)).expect("marker");
    cluster.restart(follower).await;
    wait_for("the follower caught up", || async {
        let members = cluster.members(leader).await;
        let m = members.members.into_iter().find(|m| m.id == follower)?;
        (m.role() == helios_api::pb::MemberRole::Follower && m.lag == Some(0)).then_some(())
    })
    .await;
    let names = cluster.job_names(follower).await;
    assert_eq!(names.len(), 6, "{names:?}");
    cluster.shutdown().await;
}
