//! Real agents run real processes: a batch job's output lands in its log file, a service runs
//! until stopped (SIGTERM to its process group), a failing task is reported with its exit code,
//! an agent that restarts adopts its running task instead of starting a second copy, and one
//! that returns after its node was marked down stops the tasks of its lost allocations.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{start_agent, wait_for, TestCluster};
use helios_api::convert::{time_of, Label};
use helios_api::pb;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus};
use helios_core::{Job, JobType, TaskDriver};

async fn submit(cluster: &TestCluster, job: &Job) {
    cluster.submit_job(1, job).await;
}

async fn allocations(cluster: &TestCluster, job: &str) -> Vec<pb::Allocation> {
    cluster.job_status(1, job).await.allocations
}

async fn wait_alloc(cluster: &TestCluster, job: &str, status: &str) -> pb::Allocation {
    wait_for(&format!("an allocation of {job} to be {status}"), || async {
        allocations(cluster, job).await.into_iter().find(|a| a.client_status().label() == status)
    })
    .await
}

/// A task's stdout through `AllocationService.AllocLogs`.
async fn logs(cluster: &TestCluster, alloc_id: &str, follow: bool) -> String {
    let mut allocs = pb::allocation_service_client::AllocationServiceClient::new(cluster.channel(1).await);
    let request =
        pb::AllocLogsRequest { id: alloc_id.to_string(), task: String::new(), stderr: false, tail: None, follow };
    let mut stream = allocs.alloc_logs(request).await.expect("logs").into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8(out).expect("utf-8")
}

fn pid_of(alloc: &pb::Allocation, task: &str) -> i32 {
    let started = alloc.task_states[task]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::Started)
        .expect("a Started event");
    let pid = started.message.trim_start_matches("process ").split_whitespace().next();
    pid.and_then(|p| p.parse().ok()).expect("pid")
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_task_runs_and_its_output_is_in_its_log() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    submit(&cluster, &Job::exec("hello", "echo", vec!["It replicated!".into()])).await;
    let done = wait_alloc(&cluster, "hello", "complete").await;
    let task = &done.task_states["hello"];
    let kinds: Vec<&str> = task.events.iter().map(|e| e.kind().label()).collect();
    assert_eq!(kinds, ["Received", "Started", "Terminated"]);
    let time = |e: &pb::TaskEvent| time_of(e.event_time.as_ref());
    assert!(task.events.windows(2).all(|w| time(&w[0]) <= time(&w[1])), "events in time order");
    let exit = task.events.iter().find(|e| e.kind() == pb::TaskEventKind::Terminated).expect("terminated");
    assert_eq!(exit.exit_code, Some(0));
    assert!(!task.failed);
    let log = dir.path().join("allocs").join(&done.id).join("hello").join("stdout.log");
    assert_eq!(std::fs::read_to_string(&log).expect("stdout log"), "It replicated!\n");
    // Through the servers' API, relayed from the agent, by the id's last characters.
    assert_eq!(logs(&cluster, &done.id[done.id.len() - 8..], false).await, "It replicated!\n");
    // A finished batch job is dead, and says so.
    let status = wait_for("the job to be dead", || async {
        let s = cluster.job_status(1, "hello").await;
        (s.job.as_ref().is_some_and(|j| j.status == pb::JobStatus::Dead as i32)).then_some(s)
    })
    .await;
    assert_eq!(status.placement, "finished: all 1 allocations completed");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exec_task_gets_its_groups_ports_as_the_scheduler_chose_them() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut job = Job::exec(
        "ported",
        "sh",
        vec!["-c".into(), "echo $NOMAD_PORT_http ${NOMAD_ADDR_http} $NOMAD_PORT_admin".into()],
    );
    job.task_groups[0].ports = vec![
        helios_core::GroupPort { label: "http".into(), static_port: None },
        helios_core::GroupPort { label: "admin".into(), static_port: Some(19_100) },
    ];
    submit(&cluster, &job).await;
    let done = wait_alloc(&cluster, "ported", "complete").await;
    // Held by the allocation, the fixed one first, then the one picked from the node's range.
    let [admin, http] = done.host_ports[..] else { panic!("two ports: {:?}", done.host_ports) };
    assert_eq!(admin, 19_100);
    assert!((20_000..=32_000).contains(&http), "{http}");
    let log = dir.path().join("allocs").join(&done.id).join("ported").join("stdout.log");
    // NOMAD_ADDR: the node's address (the agent listens on loopback: its default route's).
    let ip = common::node(&cluster, 1, "n1").await.expect("node").attributes["unique.network.ip-address"].clone();
    assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
    assert_eq!(std::fs::read_to_string(&log).expect("stdout log"), format!("{http} {ip}:{http} 19100\n"));
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_task_reports_its_exit_code() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut broken = Job::exec("broken", "sh", vec!["-c".into(), "echo oops >&2; exit 3".into()]);
    // No restarts on the node: this test is about the report.
    broken.task_groups[0].restart.attempts = 0;
    submit(&cluster, &broken).await;
    let failed = wait_alloc(&cluster, "broken", "failed").await;
    let exit = failed.task_states["broken"]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::Terminated)
        .expect("terminated");
    assert_eq!(exit.exit_code, Some(3));
    let log = dir.path().join("allocs").join(&failed.id).join("broken").join("stderr.log");
    assert_eq!(std::fs::read_to_string(&log).expect("stderr log"), "oops\n");
    // The scheduler places a replacement for the failed allocation.
    wait_for("a replacement", || async { (allocations(&cluster, "broken").await.len() >= 2).then_some(()) }).await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_runs_until_stopped_and_survives_an_agent_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cluster, agent, running, pid) = sleeper_running(dir.path()).await;
    assert!(alive(pid));
    let status = cluster
        .jobs(1)
        .await
        .get_job(pb::GetJobRequest { name: "sleeper".into(), ..Default::default() })
        .await
        .expect("job");
    assert_eq!(status.into_inner().job.expect("job").status, pb::JobStatus::Running as i32);

    // The agent restarts; the task keeps running and is adopted, not started twice.
    agent.stop().await;
    assert!(alive(pid), "a task outlives its agent");
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let adopted = wait_for("the task adopted", || async {
        allocations(&cluster, "sleeper").await.into_iter().find(|a| {
            a.task_states
                .get("sleeper")
                .is_some_and(|t| t.events.iter().any(|e| e.kind() == pb::TaskEventKind::Adopted))
        })
    })
    .await;
    assert_eq!(adopted.id, running.id);
    assert_eq!(allocations(&cluster, "sleeper").await.len(), 1, "no second allocation");
    assert!(alive(pid));

    // Stopping the job stops the process.
    cluster
        .jobs(1)
        .await
        .stop_job(pb::StopJobRequest { name: "sleeper".into(), purge: false, ..Default::default() })
        .await
        .expect("stop");
    wait_for("the process to be gone", || async { (!alive(pid)).then_some(()) }).await;
    wait_alloc(&cluster, "sleeper", "complete").await;
    agent.stop().await;
    cluster.shutdown().await;
}

/// A one-server cluster whose agent `n1` (data in `dir`) runs a `sleep` service: the cluster,
/// the agent, the running allocation and its task's pid.
async fn sleeper_running(dir: &Path) -> (TestCluster, common::Agent, pb::Allocation, i32) {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let agent = start_agent(&cluster, "n1", dir).await;
    let mut job = Job::exec("sleeper", "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    submit(&cluster, &job).await;
    let running = wait_alloc(&cluster, "sleeper", "running").await;
    let pid = pid_of(&running, "sleeper");
    (cluster, agent, running, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_back_after_its_node_was_marked_down_stops_its_lost_tasks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cluster, agent, first, pid) = sleeper_running(dir.path()).await;

    // The agent goes away long enough for its node to be marked down: the allocation is lost
    // (its replacement waits for a node), but its process, outliving the agent, still runs.
    agent.stop().await;
    common::wait_status(&cluster, 1, "n1", "down").await;
    wait_alloc(&cluster, "sleeper", "lost").await;
    assert!(alive(pid), "a task outlives its agent");

    // Back, the agent is no longer assigned the lost allocation: it stops that process, and runs
    // the replacement instead; one copy of the service, not two.
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    wait_for("the lost allocation's process to be stopped", || async { (!alive(pid)).then_some(()) }).await;
    let replacement = wait_alloc(&cluster, "sleeper", "running").await;
    assert_ne!(replacement.id, first.id);
    assert!(alive(pid_of(&replacement, "sleeper")));
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_died_before_writing_a_pid_file_still_stops_that_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cluster, agent, running, pid) = sleeper_running(dir.path()).await;

    // As if the agent had been killed between starting the task and recording its pid; the job
    // is stopped while no agent runs.
    agent.stop().await;
    std::fs::remove_file(dir.path().join("allocs").join(&running.id).join("sleeper").join("pid")).expect("pid file");
    cluster
        .jobs(1)
        .await
        .stop_job(pb::StopJobRequest { name: "sleeper".into(), purge: false, ..Default::default() })
        .await
        .expect("stop");

    // The next agent finds the process anyway and stops it.
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    wait_for("the process to be gone", || async { (!alive(pid)).then_some(()) }).await;
    wait_alloc(&cluster, "sleeper", "complete").await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn following_a_log_streams_until_the_task_exits() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let script = "echo one; sleep 1; echo two";
    submit(&cluster, &Job::exec("talker", "sh", vec!["-c".into(), script.into()])).await;
    let running = wait_alloc(&cluster, "talker", "running").await;
    // Starts while the task runs, ends by itself when it exits, and misses nothing.
    assert_eq!(logs(&cluster, &running.id, true).await, "one\ntwo\n");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_moves_its_work_and_stops_its_processes() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let a = start_agent(&cluster, "a", &dir.path().join("a")).await;
    common::wait_status(&cluster, 1, "a", "ready").await;
    let mut job = Job::exec("web", "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    submit(&cluster, &job).await;
    let first = wait_alloc(&cluster, "web", "running").await;
    assert_eq!(first.node_id, "a");
    let pid = pid_of(&first, "web");
    let b = start_agent(&cluster, "b", &dir.path().join("b")).await;
    common::wait_status(&cluster, 1, "b", "ready").await;

    let mut nodes = pb::node_service_client::NodeServiceClient::new(cluster.channel(1).await);
    nodes.drain_node(pb::DrainNodeRequest { id: "a".into(), enable: true, ..Default::default() }).await.expect("drain");
    let moved = wait_for("the allocation running on b", || async {
        allocations(&cluster, "web")
            .await
            .into_iter()
            .find(|al| al.node_id == "b" && al.client_status() == AllocationClientStatus::Running)
    })
    .await;
    assert_eq!(moved.name, first.name, "the replacement keeps the slot");
    wait_for("the process on a stopped", || async { (!alive(pid)).then_some(()) }).await;
    let evicted = allocations(&cluster, "web").await.into_iter().find(|al| al.id == first.id).expect("first");
    assert_eq!(evicted.desired_status(), AllocationDesiredStatus::Evict);

    // Ending the drain makes a eligible again; nothing moves back by itself.
    nodes
        .drain_node(pb::DrainNodeRequest { id: "a".into(), enable: false, ..Default::default() })
        .await
        .expect("undrain");
    let node = common::node(&cluster, 1, "a").await.expect("node a");
    assert!(!node.drain);
    assert_eq!(node.eligibility(), pb::NodeEligibility::Eligible);
    a.stop().await;
    b.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_task_is_restarted_per_its_policy_then_fails() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut job = Job::exec("flaky", "sh", vec!["-c".into(), "echo attempt; exit 1".into()]);
    job.task_groups[0].restart = helios_core::RestartPolicy {
        attempts: 2,
        interval_secs: 600,
        delay_secs: 0,
        mode: helios_core::RestartMode::Fail,
    };
    submit(&cluster, &job).await;
    let failed = wait_alloc(&cluster, "flaky", "failed").await;
    let task = &failed.task_states["flaky"];
    assert_eq!(task.restarts, 2);
    let kinds: Vec<&str> = task.events.iter().map(|e| e.kind().label()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Started").count(), 3, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"Not Restarting"), "{kinds:?}");
    // The same log file across restarts.
    assert_eq!(logs(&cluster, &failed.id, false).await, "attempt\nattempt\nattempt\n");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn following_a_log_continues_across_restarts() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut job = Job::exec("phoenix", "sh", vec!["-c".into(), "echo rise; sleep 0.2; exit 1".into()]);
    job.task_groups[0].restart = helios_core::RestartPolicy {
        attempts: 2,
        interval_secs: 600,
        delay_secs: 1,
        mode: helios_core::RestartMode::Fail,
    };
    submit(&cluster, &job).await;
    let running = wait_alloc(&cluster, "phoenix", "running").await;
    // A second between runs, with no process at all, does not end the stream.
    assert_eq!(logs(&cluster, &running.id, true).await, "rise\nrise\nrise\n");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_failover_leaves_running_tasks_untouched() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let via = cluster.running_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agents = [
        start_agent(&cluster, "a", &dir.path().join("a")).await,
        start_agent(&cluster, "b", &dir.path().join("b")).await,
    ];
    common::wait_status(&cluster, via, "a", "ready").await;
    common::wait_status(&cluster, via, "b", "ready").await;
    let mut job = Job::exec("steady", "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    job.task_groups[0].count = 2;
    cluster.submit_job(via, &job).await;
    let before = wait_for("both allocations running", || async {
        let allocs = cluster.job_status(via, "steady").await.allocations;
        let all_running =
            allocs.len() == 2 && allocs.iter().all(|a| a.client_status() == AllocationClientStatus::Running);
        all_running.then_some(allocs)
    })
    .await;
    let pids: Vec<i32> = before.iter().map(|a| pid_of(a, "steady")).collect();

    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    // Watch for three heartbeat TTLs after the new leader took over (a failover that judged
    // nodes or work wrongly would act within one): the same two allocations keep running, their
    // tasks are never restarted, and their processes stay the same.
    let watch_until = tokio::time::Instant::now() + common::HEARTBEAT_TTL * 3;
    while tokio::time::Instant::now() < watch_until {
        let now = cluster.job_status(new_leader, "steady").await.allocations;
        assert_eq!(now.len(), 2, "no allocation was added or replaced: {now:?}");
        for (old, new) in before.iter().zip(&now) {
            assert_eq!((&new.id, new.client_status()), (&old.id, AllocationClientStatus::Running));
            assert_eq!(new.task_states["steady"].restarts, 0);
            assert_eq!(new.task_states["steady"].start_time, old.task_states["steady"].start_time);
        }
        assert!(pids.iter().all(|pid| alive(*pid)), "a task process died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new leader schedules: more work lands next to the old.
    cluster.submit_job(new_leader, &Job::exec("after", "true", Vec::new())).await;
    wait_for("the new job to complete", || async {
        let allocs = cluster.job_status(new_leader, "after").await.allocations;
        allocs.iter().any(|a| a.client_status() == AllocationClientStatus::Complete).then_some(())
    })
    .await;
    for agent in agents {
        agent.stop().await;
    }
    cluster.shutdown().await;
}

/// A failure shows as it happens, with the restart it waits for: not only when the restarts run
/// out (before, a missing binary showed `pending` with no events through every restart delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_is_reported_as_it_happens_while_the_restart_waits() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    // Restart delays far longer than any wait below: what is seen, is seen before the restart.
    let policy = helios_core::RestartPolicy {
        attempts: 3,
        interval_secs: 7200,
        delay_secs: 3600,
        mode: helios_core::RestartMode::Fail,
    };
    let mut missing = Job::exec("missing", "/nonexistent/helios-no-such-binary", vec![]);
    missing.task_groups[0].restart = policy.clone();
    let mut exits = Job::exec("exits", "sh", vec!["-c".into(), "exit 3".into()]);
    exits.task_groups[0].restart = policy;
    submit(&cluster, &missing).await;
    submit(&cluster, &exits).await;
    for (job, failure) in [("missing", "Driver Failure"), ("exits", "Terminated")] {
        let alloc = wait_for(&format!("{job}'s failure and restart shown"), || async {
            allocations(&cluster, job).await.into_iter().find(|a| {
                a.task_states
                    .get(job)
                    .is_some_and(|t| t.events.last().is_some_and(|e| e.kind() == pb::TaskEventKind::Restarting))
            })
        })
        .await;
        assert_eq!(alloc.client_status(), AllocationClientStatus::Pending, "{alloc:?}");
        let events = &alloc.task_states[job].events;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind().label()).collect();
        assert!(kinds.ends_with(&[failure, "Restarting"]), "{job}: {kinds:?}");
        assert_eq!(events.last().map(|e| e.message.as_str()), Some("restart 1 in 3600s"), "{kinds:?}");
        if job == "exits" {
            assert_eq!(events[events.len() - 2].exit_code, Some(3));
        }
    }
    agent.stop().await;
    cluster.shutdown().await;
}

/// A service of `count` sleeping tasks whose job is about 650 KB (its arguments).
fn big_job(name: &str, count: u32) -> Job {
    let mut args = vec!["-c".to_string(), "exec sleep 600".to_string()];
    args.extend((0..11u8).map(|i| char::from(b'a' + i).to_string().repeat(60_000)));
    let mut job = Job::exec(name, "sh", args);
    job.set_type(JobType::Service);
    job.task_groups[0].count = count;
    job.task_groups[0].tasks[0].resources.memory_mb = 64;
    job
}

/// Issue 14: one node's watch messages stay bounded however big its jobs are. A job version is
/// sent once per stream (16 allocations of one 650 KB job made a 10.4 MB message, over the
/// agent's limit, and the node got no work nor stop orders), and a whole set larger than one
/// message (after an agent restart: six such jobs, 3.9 MB) comes in pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_big_jobs_gets_its_work_and_its_stop_orders() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    submit(&cluster, &big_job("wide", 16)).await;
    for i in 0..5 {
        submit(&cluster, &big_job(&format!("big-{i}"), 1)).await;
    }
    let running = |job: String, count: usize| {
        let cluster = &cluster;
        async move {
            wait_for(&format!("{count} allocations of {job} running"), || async {
                let allocs = allocations(cluster, &job).await;
                (allocs.iter().filter(|a| a.client_status() == AllocationClientStatus::Running).count() == count)
                    .then_some(())
            })
            .await
        }
    };
    running("wide".into(), 16).await;
    for i in 0..5 {
        running(format!("big-{i}"), 1).await;
    }
    // A new stream starts with the whole set: 21 allocations of six 650 KB job versions.
    agent.stop().await;
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    wait_for("every task adopted", || async {
        let mut all = allocations(&cluster, "wide").await;
        for i in 0..5 {
            all.extend(allocations(&cluster, &format!("big-{i}")).await);
        }
        let adopted = |a: &pb::Allocation| {
            a.task_states.values().any(|t| t.events.iter().any(|e| e.kind() == pb::TaskEventKind::Adopted))
        };
        (all.len() == 21 && all.iter().all(adopted)).then_some(())
    })
    .await;
    for job in std::iter::once("wide".to_string()).chain((0..5).map(|i| format!("big-{i}"))) {
        cluster
            .jobs(1)
            .await
            .stop_job(pb::StopJobRequest { name: job.clone(), purge: false, ..Default::default() })
            .await
            .expect("stop");
        wait_for(&format!("{job} stopped"), || async {
            let allocs = allocations(&cluster, &job).await;
            allocs.iter().all(|a| a.client_status() == AllocationClientStatus::Complete).then_some(())
        })
        .await;
    }
    agent.stop().await;
    cluster.shutdown().await;
}

/// A batch task that finishes while its agent is down is reported with its exit code by the
/// next agent, and never run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_ends_while_its_agent_is_down_is_reported_not_run_again() {
    ends_while_its_agent_is_down(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raw_exec_task_that_ends_while_its_agent_is_down_is_reported_with_its_exit_code() {
    ends_while_its_agent_is_down(true).await;
}

/// An exec (or raw_exec) task exits 7 while no agent runs: the next agent reports that, from
/// the exit file its launcher wrote, and does not run it again.
async fn ends_while_its_agent_is_down(raw: bool) {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let start = || common::start_agent_configured(&cluster, "n1", dir.path(), |c| c.drivers.enable_raw_exec = raw);
    let agent = start().await;
    // The gate is in the allocation's shared dir: the task sees nothing else of the data dir.
    let script = "echo ran; while [ ! -e \"$NOMAD_ALLOC_DIR/gate\" ]; do sleep 0.05; done; exit 7";
    let mut job = Job::exec("once", "sh", vec!["-c".into(), script.into()]);
    job.task_groups[0].restart.attempts = 0;
    if raw {
        let TaskDriver::Exec(config) = job.task_groups[0].tasks[0].driver.clone() else { unreachable!() };
        job.task_groups[0].tasks[0].driver = TaskDriver::RawExec(config);
    }
    submit(&cluster, &job).await;
    let running = wait_alloc(&cluster, "once", "running").await;
    let gate = dir.path().join("allocs").join(&running.id).join(".alloc").join("gate");
    let pid = pid_of(&running, "once");
    agent.stop().await;
    // The test opens the gate (as root) while no agent runs: the task exits 7.
    std::fs::write(&gate, b"").expect("open the gate");
    wait_for("the task to end", || async { (!alive(pid)).then_some(()) }).await;
    let agent = start().await;
    let failed = wait_alloc(&cluster, "once", "failed").await;
    let exit = failed.task_states["once"]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::Terminated)
        .expect("terminated");
    assert_eq!(exit.exit_code, Some(7), "{:?}", failed.task_states["once"].events);
    let log = dir.path().join("allocs").join(&failed.id).join("once").join("stdout.log");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "ran\n", "run once");
    agent.stop().await;
    cluster.shutdown().await;
}
