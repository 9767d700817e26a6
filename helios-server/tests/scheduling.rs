//! The leader's scheduling loop with real agents: placements committed through Raft, failures
//! explained and retried when the cluster changes, lost nodes replaced, system jobs following
//! the nodes, stops.

mod common;

use common::{start_agent, start_agent_with, wait_for, TestCluster};
use helios_api::convert::{seconds_of, time_of, timestamp_from_pb};
use helios_api::pb;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus};
use helios_core::{Constraint, ConstraintOperator, Job, JobType, Resources};

fn service(name: &str, count: u32, cpu_mhz: u32) -> Job {
    let mut job = Job::exec(name, "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    job.task_groups[0].count = count;
    job.task_groups[0].tasks[0].resources = Resources { cpu_mhz, memory_mb: 128 };
    job
}

async fn submit(cluster: &TestCluster, via: u64, job: &Job) {
    cluster.submit_job(via, job).await;
}

async fn status(cluster: &TestCluster, via: u64, name: &str) -> pb::GetJobStatusResponse {
    cluster.job_status(via, name).await
}

/// A directory for agents' data; the tasks they leave are reaped with it.
struct AgentsDir {
    _reaper: common::Reaper,
    dir: tempfile::TempDir,
}

impl AgentsDir {
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A cluster of `n` servers with its leader, raised to this build's stored format (waiting
/// evaluations, for reschedule delays and waves, need it; a fresh cluster raises it at once).
async fn raised_cluster(n: u64) -> (TestCluster, u64, AgentsDir) {
    let cluster = TestCluster::start(n).await;
    let leader = cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    (cluster, leader, AgentsDir { _reaper: common::Reaper(dir.path().to_path_buf()), dir })
}

/// Allocations of `version` of job "web" that run.
fn running(s: &pb::GetJobStatusResponse, version: u64) -> usize {
    s.allocations
        .iter()
        .filter(|a| a.job_version == version && a.client_status() == AllocationClientStatus::Running)
        .count()
}

/// Runs "web" with `count` allocations and a rolling update, waits for them, then submits its
/// next version (another argument) through server `via`.
async fn roll_out(cluster: &TestCluster, via: u64, count: u32, max_parallel: u32, min_healthy: u64, deadline: u64) {
    let mut job = service("web", count, 100);
    job.task_groups[0].update = helios_core::UpdateStrategy {
        max_parallel,
        health_check: helios_core::HealthCheck::TaskStates,
        min_healthy_time_secs: min_healthy,
        healthy_deadline_secs: deadline,
        ..helios_core::UpdateStrategy::nomad_block_defaults()
    };
    submit(cluster, via, &job).await;
    wait_for("version 0 running", || async {
        (running(&status(cluster, via, "web").await, 0) == count as usize).then_some(())
    })
    .await;
    job.task_groups[0].tasks[0].driver =
        helios_core::TaskDriver::Exec(helios_core::ExecConfig::new("sleep", vec!["601".into()]));
    submit(cluster, via, &job).await;
}

/// Agents "a", "b" and "c", each ready.
async fn three_ready_agents(cluster: &TestCluster, dir: &std::path::Path) -> Vec<common::Agent> {
    let mut agents = Vec::new();
    for id in ["a", "b", "c"] {
        agents.push(start_agent(cluster, id, &dir.join(id)).await);
        common::wait_status(cluster, 1, id, "ready").await;
    }
    agents
}

async fn get_allocation(cluster: &TestCluster, id: &str) -> pb::Allocation {
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(1).await);
    let reply = allocs
        .get_allocation(pb::GetAllocationRequest { id: id.to_string(), ..Default::default() })
        .await
        .expect("get allocation");
    reply.into_inner().allocation.expect("allocation")
}

/// Live allocations (desired run, not finished): (name, node).
fn live(status: &pb::GetJobStatusResponse) -> Vec<(String, String)> {
    let mut out: Vec<_> = status
        .allocations
        .iter()
        .filter(|a| {
            a.desired_status() == AllocationDesiredStatus::Run
                && matches!(a.client_status(), AllocationClientStatus::Pending | AllocationClientStatus::Running)
        })
        .map(|a| (a.name.clone(), a.node_id.clone()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocations_are_placed_replaced_when_a_node_dies_and_retried_when_one_joins() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let via = cluster.running_ids().into_iter().find(|id| *id != leader).expect("follower");
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent(&cluster, "a", &dir.path().join("a")).await;
    let b = start_agent(&cluster, "b", &dir.path().join("b")).await;
    common::wait_status(&cluster, via, "a", "ready").await;
    common::wait_status(&cluster, via, "b", "ready").await;

    let mut web = service("web", 2, 100);
    web.constraints.push(Constraint {
        attribute: String::new(),
        operator: ConstraintOperator::DistinctHosts,
        value: String::new(),
    });
    submit(&cluster, via, &web).await;
    let placed = wait_for("two allocations on two nodes", || async {
        let s = status(&cluster, via, "web").await;
        (live(&s).len() == 2).then_some(s)
    })
    .await;
    let mut nodes: Vec<String> = live(&placed).into_iter().map(|(_, n)| n).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"]);
    assert_eq!(placed.evaluations.last().expect("eval").status(), pb::EvaluationStatus::Complete);

    // Node a dies: its allocation is lost; the replacement has nowhere to go (distinct hosts).
    a.stop().await;
    let blocked = wait_for("the lost allocation and a blocked replacement", || async {
        let s = status(&cluster, via, "web").await;
        let lost =
            s.allocations.iter().any(|al| al.node_id == "a" && al.client_status() == AllocationClientStatus::Lost);
        (lost && s.placement.contains("distinct_hosts")).then_some(s)
    })
    .await;
    let running: Vec<String> = live(&blocked).into_iter().map(|(_, n)| n).collect();
    assert_eq!(running, ["b"], "only b's allocation runs");

    // A new node joins: the blocked evaluation is retried and the slot is filled there.
    let c = start_agent(&cluster, "c", &dir.path().join("c")).await;
    let healed = wait_for("the replacement on the new node", || async {
        let s = status(&cluster, via, "web").await;
        let on: Vec<String> = live(&s).into_iter().map(|(_, n)| n).collect();
        (on.len() == 2 && on.contains(&"c".to_string())).then_some(s)
    })
    .await;
    let names: Vec<String> = live(&healed).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["web.web[0]", "web.web[1]"], "the replacement keeps its slot's name");
    b.stop().await;
    c.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_copy_service_lands_on_three_nodes_when_they_fit() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agents = three_ready_agents(&cluster, dir.path()).await;
    // No distinct_hosts: the scheduler's job anti-affinity spreads them, as Nomad's does.
    submit(&cluster, 1, &service("web", 3, 100)).await;
    let placed = wait_for("three running allocations", || async {
        let s = status(&cluster, 1, "web").await;
        (live(&s).len() == 3).then_some(s)
    })
    .await;
    let mut nodes: Vec<String> = live(&placed).into_iter().map(|(_, n)| n).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c"], "one machine's loss takes one copy, not all");
    for agent in agents {
        agent.stop().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_task_is_rescheduled_on_other_nodes_with_growing_delays() {
    let (cluster, _, dir) = raised_cluster(1).await;
    let agents = three_ready_agents(&cluster, dir.path()).await;
    let mut job = service("crashy", 1, 100);
    job.task_groups[0].tasks[0].driver =
        helios_core::TaskDriver::Exec(helios_core::ExecConfig::new("sh", vec!["-c".into(), "exit 1".into()]));
    job.task_groups[0].restart.attempts = 0;
    job.task_groups[0].reschedule = helios_core::ReschedulePolicy {
        attempts: 0,
        interval_secs: 0,
        delay_secs: 5,
        delay_function: helios_core::DelayFunction::Exponential,
        max_delay_secs: 20,
        unlimited: true,
    };
    submit(&cluster, 1, &job).await;
    // Three failures: the first placement and two reschedules.
    let failed = wait_for("three failed allocations", || async {
        let s = status(&cluster, 1, "crashy").await;
        let mut failed: Vec<pb::Allocation> =
            s.allocations.into_iter().filter(|a| a.client_status() == AllocationClientStatus::Failed).collect();
        failed.sort_by_key(|a| time_of(a.create_time.as_ref()));
        (failed.len() >= 3).then_some(failed)
    })
    .await;
    let third = get_allocation(&cluster, &failed[2].id).await;
    let delays: Vec<u64> = third.reschedule_events.iter().map(|e| seconds_of(e.delay.as_ref())).collect();
    assert_eq!(delays, [5, 10], "exponential from 5 s");
    let replaced: Vec<&str> = third.reschedule_events.iter().map(|e| e.prev_alloc_id.as_str()).collect();
    assert_eq!(replaced, [failed[0].id.as_str(), failed[1].id.as_str()]);
    // Each waited its delay after the failure it replaced.
    for (i, event) in third.reschedule_events.iter().enumerate() {
        let failed_at =
            failed[i].task_states.values().filter_map(|t| ms(t.finish_time.as_ref())).max().expect("finished");
        assert!(
            ms(event.reschedule_time.as_ref()).expect("a time") >= failed_at + seconds_of(event.delay.as_ref()) * 1000,
            "event {i} came early: {event:?}"
        );
    }
    let nodes: std::collections::BTreeSet<&str> = failed[..3].iter().map(|a| a.node_id.as_str()).collect();
    assert_eq!(nodes.len(), 3, "each replacement avoided the nodes that failed before: {failed:?}");
    // What becomes of each: the first was replaced, the latest waits for its 20 s delay.
    let first = get_allocation(&cluster, &failed[0].id).await;
    assert_eq!(first.next_allocation.as_deref(), Some(failed[1].id.as_str()));
    let third_failed_at =
        third.task_states.values().filter_map(|t| ms(t.finish_time.as_ref())).max().expect("finished");
    assert_eq!(ms(third.reschedule_time.as_ref()), Some(third_failed_at + 20_000), "next: 20 s, the ceiling");
    for agent in agents {
        agent.stop().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_moves_a_service_one_allocation_at_a_time_each_after_the_last_is_healthy() {
    let (cluster, _, dir) = raised_cluster(1).await;
    let a = start_agent(&cluster, "a", &dir.path().join("a")).await;
    common::wait_status(&cluster, 1, "a", "ready").await;
    let mut job = service("web", 3, 100);
    job.task_groups[0].migrate = helios_core::MigrateStrategy {
        max_parallel: 1,
        health_check: helios_core::HealthCheck::TaskStates,
        min_healthy_time_secs: 2,
        healthy_deadline_secs: 60,
    };
    submit(&cluster, 1, &job).await;
    wait_for("three allocations running on a", || async {
        let s = status(&cluster, 1, "web").await;
        (s.allocations.iter().filter(|al| al.client_status() == AllocationClientStatus::Running).count() == 3)
            .then_some(())
    })
    .await;
    let b = start_agent(&cluster, "b", &dir.path().join("b")).await;
    common::wait_status(&cluster, 1, "b", "ready").await;

    let mut nodes = pb::node_service_client::NodeServiceClient::new(cluster.channel(1).await);
    nodes.drain_node(pb::DrainNodeRequest { id: "a".into(), enable: true, ..Default::default() }).await.expect("drain");
    let moved = wait_for("all three running on b", || async {
        let s = status(&cluster, 1, "web").await;
        let on_b: Vec<pb::Allocation> = s
            .allocations
            .into_iter()
            .filter(|al| al.node_id == "b" && al.client_status() == AllocationClientStatus::Running)
            .collect();
        (on_b.len() == 3).then_some(on_b)
    })
    .await;
    // Each wave was placed only once the last wave's replacement had run for min_healthy_time.
    let mut waves: Vec<(u64, u64)> = moved
        .iter()
        .map(|al| {
            let started = al.task_states.values().filter_map(|t| ms(t.start_time.as_ref())).max().expect("started");
            (time_of(al.create_time.as_ref()).0, started)
        })
        .collect();
    waves.sort();
    for pair in waves.windows(2) {
        let ((_, last_started), (next_placed, _)) = (pair[0], pair[1]);
        assert!(next_placed >= last_started + 2_000, "a wave moved before the last was healthy: {waves:?}");
    }
    let evicted = status(&cluster, 1, "web")
        .await
        .allocations
        .into_iter()
        .filter(|al| al.desired_status() == AllocationDesiredStatus::Evict);
    assert_eq!(evicted.count(), 3);
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_of_ten_with_max_parallel_two_never_has_fewer_than_eight_healthy() {
    let (cluster, _, dir) = raised_cluster(1).await;
    let agents = three_ready_agents(&cluster, dir.path()).await;
    roll_out(&cluster, 1, 10, 2, 1, 30).await;
    // Sampled throughout: a healthy instance is an old one still wanted and running, or a new
    // one running for min_healthy_time (1 s) by the time of the sample.
    let mut samples = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(std::time::Instant::now() < deadline, "the update did not finish in 2 minutes");
        let s = status(&cluster, 1, "web").await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
        let healthy = s
            .allocations
            .iter()
            .filter(|a| {
                a.desired_status() == AllocationDesiredStatus::Run
                    && a.client_status() == AllocationClientStatus::Running
            })
            .filter(|a| {
                let started =
                    a.task_states.values().filter_map(|t| ms(t.start_time.as_ref())).max().unwrap_or(u64::MAX);
                a.job_version == 0 || started.saturating_add(1_000) <= now
            })
            .count();
        assert!(healthy >= 8, "only {healthy} healthy during the update: {:?}", s.allocations);
        samples += 1;
        if running(&s, 1) == 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(samples > 10, "the update was sampled throughout ({samples} samples)");
    for agent in agents {
        agent.stop().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_whose_leader_stops_mid_way_completes_under_the_new_leader() {
    let (mut cluster, leader, dir) = raised_cluster(3).await;
    let agents = three_ready_agents(&cluster, dir.path()).await;
    let via = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    roll_out(&cluster, via, 6, 2, 2, 60).await;
    // Mid-way: the first wave of the new version runs, the rest waits for it to be healthy.
    wait_for("the first wave running", || async {
        let s = status(&cluster, via, "web").await;
        (running(&s, 1) >= 2 && running(&s, 0) >= 2).then_some(())
    })
    .await;
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // The waiting evaluation is replicated: the new leader rolls on when it is due.
    wait_for("all six of version 1 running under the new leader", || async {
        let s = status(&cluster, new_leader, "web").await;
        let old_live = s
            .allocations
            .iter()
            .filter(|a| a.job_version == 0 && a.desired_status() == AllocationDesiredStatus::Run)
            .count();
        (running(&s, 1) == 6 && old_live == 0).then_some(())
    })
    .await;
    // Its deployment is replicated too: the new leader's watcher finds it healthy, and the
    // version stable.
    let deployments = pb::deployment_service_client::DeploymentServiceClient::new(cluster.channel(new_leader).await);
    wait_for("version 1's deployment successful", || async {
        let request = pb::ListDeploymentsRequest { job_name: Some("web".into()), ..Default::default() };
        let list = deployments.clone().list_deployments(request).await.expect("list").into_inner().deployments;
        let v1 = list.iter().find(|d| d.job_version == 1)?;
        (v1.status == pb::DeploymentStatus::Successful as i32).then_some(())
    })
    .await;
    let mut jobs = pb::job_service_client::JobServiceClient::new(cluster.channel(new_leader).await);
    let versions = jobs
        .get_job_versions(pb::GetJobVersionsRequest { name: "web".into(), ..Default::default() })
        .await
        .expect("versions");
    let stable: Vec<u64> = versions.into_inner().versions.iter().filter(|j| j.stable).map(|j| j.version).collect();
    // (Version 0's may have been cancelled by version 1 before it could succeed.)
    assert_eq!(stable.last(), Some(&1), "version 1 is stable: {stable:?}");
    for agent in agents {
        agent.stop().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_failures_are_explained_and_nodes_never_over_committed() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent_with(&cluster, "a", &dir.path().join("a"), 1000, 1024).await;
    common::wait_status(&cluster, 1, "a", "ready").await;

    submit(&cluster, 1, &service("big", 3, 400)).await;
    let s = wait_for("a blocked evaluation", || async {
        let s = status(&cluster, 1, "big").await;
        (s.evaluations.last().is_some_and(|e| e.status() == pb::EvaluationStatus::Blocked)).then_some(s)
    })
    .await;
    assert_eq!(live(&s).len(), 2, "1000 MHz holds two 400 MHz allocations");
    assert!(s.placement.contains("not enough free cpu"), "{}", s.placement);

    // More room: a second node takes the third.
    let b = start_agent_with(&cluster, "b", &dir.path().join("b"), 1000, 1024).await;
    wait_for("the third allocation", || async { (live(&status(&cluster, 1, "big").await).len() == 3).then_some(()) })
        .await;

    // Stopping the job stops them all.
    let mut jobs = cluster.jobs(1).await;
    jobs.stop_job(pb::StopJobRequest { name: "big".into(), purge: false, ..Default::default() }).await.expect("stop");
    wait_for("every allocation stopped", || async {
        let s = status(&cluster, 1, "big").await;
        (s.allocations.iter().all(|al| al.desired_status() == AllocationDesiredStatus::Stop)
            && !s.allocations.is_empty())
        .then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_jobs_run_on_every_node_including_new_ones() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent(&cluster, "a", &dir.path().join("a")).await;
    common::wait_status(&cluster, 1, "a", "ready").await;
    let mut agent = service("agent", 1, 50);
    agent.set_type(JobType::System);
    submit(&cluster, 1, &agent).await;
    wait_for("one allocation on a", || async { (live(&status(&cluster, 1, "agent").await).len() == 1).then_some(()) })
        .await;
    let b = start_agent(&cluster, "b", &dir.path().join("b")).await;
    let s = wait_for("an allocation on the new node", || async {
        let s = status(&cluster, 1, "agent").await;
        (live(&s).len() == 2).then_some(s)
    })
    .await;
    let nodes: Vec<String> = live(&s).into_iter().map(|(_, n)| n).collect();
    assert_eq!(nodes, ["a", "b"]);
    // An allocation is found by the last characters the CLI shows (time-ordered ids share their
    // first ones).
    let id = s.allocations[0].id.clone();
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(1).await);
    let by_tail = pb::GetAllocationRequest { id: id[id.len() - 8..].to_string(), ..Default::default() };
    let found = allocs.get_allocation(by_tail).await.expect("lookup by tail").into_inner().allocation.expect("alloc");
    assert_eq!(found.id, id);
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_job_is_placed_when_another_job_frees_room() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent_with(&cluster, "a", dir.path(), 1000, 1024).await;
    common::wait_status(&cluster, 1, "a", "ready").await;
    submit(&cluster, 1, &service("filler", 1, 600)).await;
    wait_for("filler placed", || async { (live(&status(&cluster, 1, "filler").await).len() == 1).then_some(()) }).await;
    submit(&cluster, 1, &service("web", 1, 600)).await;
    wait_for("web blocked", || async {
        let s = status(&cluster, 1, "web").await;
        s.evaluations.last().is_some_and(|e| e.status() == pb::EvaluationStatus::Blocked).then_some(())
    })
    .await;

    let mut jobs = cluster.jobs(1).await;
    jobs.stop_job(pb::StopJobRequest { name: "filler".into(), purge: false, ..Default::default() })
        .await
        .expect("stop filler");
    let s = wait_for("web placed in the freed room", || async {
        let s = status(&cluster, 1, "web").await;
        (live(&s).len() == 1).then_some(s)
    })
    .await;
    // The blocked evaluation itself was planned again once room was freed: no new one.
    let evals: Vec<_> = s.evaluations.iter().map(|e| (e.trigger(), e.status())).collect();
    assert_eq!(evals, [(pb::EvaluationTrigger::JobRegister, pb::EvaluationStatus::Complete)]);
    a.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_counts_what_a_submission_would_place_stop_and_update_without_doing_it() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent_with(&cluster, "a", dir.path(), 1000, 4096).await;
    common::wait_status(&cluster, 1, "a", "ready").await;
    submit(&cluster, 1, &service("web", 2, 100)).await;
    wait_for("web placed", || async { (live(&status(&cluster, 1, "web").await).len() == 2).then_some(()) }).await;

    let plan = |job: Job| {
        let cluster = &cluster;
        async move {
            let request = pb::PlanJobRequest { job: Some(helios_api::convert::job_to_pb(&job)) };
            cluster.jobs(1).await.plan_job(request).await.expect("plan").into_inner()
        }
    };
    let counts = |p: &pb::PlanJobResponse| {
        p.groups
            .iter()
            .map(|g| (g.name.clone(), g.place, g.stop, g.in_place, g.unchanged, g.unplaced))
            .collect::<Vec<_>>()
    };
    let same = plan(service("web", 2, 100)).await;
    assert_eq!((same.exists, same.changed, same.current_version), (true, false, 0));
    assert_eq!(counts(&same), [("web".to_string(), 0, 0, 0, 2, 0)]);
    // Only the count changes: the two stay (updated in place), one more is placed.
    let scaled = plan(service("web", 3, 100)).await;
    assert_eq!((scaled.changed, scaled.next_version), (true, 1));
    assert_eq!(counts(&scaled), [("web".to_string(), 1, 0, 2, 0, 0)]);
    // The task changes: both are replaced; and 11 x 100 MHz does not fit in 1,000.
    let mut changed = service("web", 11, 100);
    changed.task_groups[0].tasks[0].env.insert("V".into(), "2".into());
    let replaced = plan(changed).await;
    let (name, place, stop, in_place, unchanged, unplaced) = counts(&replaced)[0].clone();
    assert_eq!((name.as_str(), stop, in_place, unchanged), ("web", 2, 0, 0));
    assert_eq!(place + unplaced, 11, "{replaced:?}");
    assert!(unplaced > 0 && replaced.groups[0].failure.contains("not enough free cpu"), "{replaced:?}");
    // Planning changed nothing.
    let s = status(&cluster, 1, "web").await;
    assert_eq!((s.job.as_ref().expect("job").version, live(&s).len()), (0, 2));
    a.stop().await;
    cluster.shutdown().await;
}

/// A time the API gave, in milliseconds since the epoch.
fn ms(t: Option<&helios_api::prost_types::Timestamp>) -> Option<u64> {
    timestamp_from_pb(t).map(|t| t.0)
}
