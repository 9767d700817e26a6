//! Exec tasks are isolated (issue 14): they run as an unprivileged user, with an environment of
//! their own, limited by cgroups, unable to read the agent's data dir or another allocation's
//! files, or to signal the agent; raw_exec runs without isolation only where the agent allows it.
//! Each test tries what an attacking task would and checks that it fails.

mod common;

use common::{start_agent, start_agent_configured, wait_for, TestCluster};
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::AllocationClientStatus;
use helios_core::{Job, TaskDriver};

fn shell(name: &str, script: &str) -> Job {
    let mut job = Job::exec(name, "sh", vec!["-c".into(), script.into()]);
    job.task_groups[0].restart.attempts = 0;
    job
}

async fn finished(cluster: &TestCluster, job: &str) -> pb::Allocation {
    wait_for(&format!("{job} to finish"), || async {
        let allocs = cluster.job_status(1, job).await.allocations;
        allocs.into_iter().find(|a| {
            a.client_status() == AllocationClientStatus::Complete || a.client_status() == AllocationClientStatus::Failed
        })
    })
    .await
}

fn log(dir: &std::path::Path, alloc: &pb::Allocation, task: &str, stream: &str) -> String {
    std::fs::read_to_string(dir.join("allocs").join(&alloc.id).join(task).join(format!("{stream}.log")))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exec_task_runs_as_nobody_with_its_own_environment_and_cannot_reach_the_agent() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    // As a data dir is in production (the temp dir is private, which would hide more).
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let secret = dir.path().join("helios-client-n1.secret");
    wait_for("the agent's secret", || async { secret.is_file().then_some(()) }).await;
    // Whatever the task tries is printed; the test reads the outcome from its log.
    let script = format!(
        "echo uid=$(id -u); env | sort; \
         cat {secret} >/dev/null 2>&1 && echo READ-SECRET; \
         echo data-dir: $(ls -A {data}); \
         kill -9 {agent} 2>/dev/null && echo KILLED-AGENT; \
         echo processes: $(ls /proc | grep -c '^[0-9]'); \
         ln -s /etc/shadow ../planted 2>/dev/null && echo PLANTED-LINK; \
         echo alloc-dir: $(ls -A ../..); \
         cat ../../../../helios-client-n1.secret >/dev/null 2>&1 && echo READ-SECRET-BY-PATH; \
         cat /etc/shadow >/dev/null 2>&1 && echo READ-SHADOW; \
         echo $NOMAD_TASK_DIR > \"$NOMAD_TASK_DIR/written\" && echo wrote-task-dir; \
         echo args: \"$0\" \"$1\"",
        secret = secret.display(),
        data = dir.path().display(),
        agent = std::process::id(),
    );
    let mut job =
        Job::exec("probe", "sh", vec!["-c".into(), script, "${NOMAD_ALLOC_ID}".into(), "${node.unique.id}".into()]);
    job.task_groups[0].tasks[0].env.insert("GREETING".into(), "from ${NOMAD_JOB_NAME}".into());
    job.task_groups[0].restart.attempts = 0;
    cluster.submit_job(1, &job).await;
    let alloc = finished(&cluster, "probe").await;
    let out = log(dir.path(), &alloc, "probe", "stdout");
    assert!(out.contains("uid=65534\n"), "runs as nobody: {out}");
    for forbidden in ["READ-SECRET", "KILLED-AGENT", "PLANTED-LINK", "READ-SHADOW", "READ-SECRET-BY-PATH"] {
        assert!(!out.contains(forbidden), "{forbidden}: {out}");
    }
    // Of the agent's data dir it sees only the way to its own allocation, and of that only its
    // own directory and the shared one.
    assert!(out.contains("data-dir: allocs\n"), "{out}");
    assert!(out.contains("alloc-dir: .alloc probe\n"), "{out}");
    // Its own PID namespace: its init, the shell, and the shell's pipeline.
    let processes = out.lines().find_map(|l| l.strip_prefix("processes: ")).expect("counted");
    assert!(processes.parse::<u32>().expect("a number") <= 5, "{out}");
    let task_dir =
        dir.path().canonicalize().expect("canonical").join("allocs").join(&alloc.id).join("probe").join("local");
    assert!(out.contains("wrote-task-dir"), "{out}");
    assert_eq!(
        std::fs::read_to_string(task_dir.join("written")).expect("written").trim(),
        task_dir.to_str().expect("utf-8")
    );
    // Its environment: PATH, the job's env, the runtime variables; nothing of the agent's.
    let vars: Vec<&str> = out.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    for var in vars.iter().filter(|v| **v != "uid") {
        let allowed = [
            "PATH",
            "GREETING",
            "TMPDIR",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
            "data-dir: allocs",
            "alloc-dir: .alloc probe",
        ]
        .contains(var)
            || var.starts_with("NOMAD_")
            || var.starts_with("HELIOS_");
        assert!(allowed, "{var} leaked into the task's environment: {out}");
    }
    assert!(out.contains("GREETING=from probe\n"), "interpolated env: {out}");
    assert!(out.contains(&format!("NOMAD_ALLOC_ID={}\n", alloc.id)), "{out}");
    assert!(out.contains(&format!("args: {} n1\n", alloc.id)), "interpolated args: {out}");
    assert_eq!(
        alloc.client_status(),
        AllocationClientStatus::Complete,
        "{out}\n{}",
        log(dir.path(), &alloc, "probe", "stderr")
    );
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_cannot_read_another_allocations_files() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut holder = shell("holder", "echo s3cret > \"$NOMAD_TASK_DIR/key\"; exec sleep 600");
    holder.set_type(helios_core::JobType::Service);
    cluster.submit_job(1, &holder).await;
    let running = wait_for("the holder to run", || async {
        let allocs = cluster.job_status(1, "holder").await.allocations;
        allocs.into_iter().find(|a| a.client_status() == AllocationClientStatus::Running)
    })
    .await;
    let key = dir.path().canonicalize().expect("canonical").join("allocs").join(&running.id).join("holder/local/key");
    wait_for("the key to be written", || async { key.is_file().then_some(()) }).await;
    // The holder runs as nobody too: only the PID namespace keeps the snoop from signalling it.
    let started =
        running.task_states["holder"].events.iter().find(|e| e.kind() == pb::TaskEventKind::Started).expect("started");
    let launcher: i32 = started.message.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("pid");
    let holder_task = wait_for("the holder's program", || async {
        let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
        let init: i32 = children.split_whitespace().next()?.parse().ok()?;
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
        children.split_whitespace().next()?.parse::<i32>().ok()
    })
    .await;
    let script = format!(
        "cat {} && echo READ-OTHER; kill -9 {holder_task} 2>/dev/null && echo KILLED-OTHER; echo done",
        key.display()
    );
    cluster.submit_job(1, &shell("snoop", &script)).await;
    let alloc = finished(&cluster, "snoop").await;
    let out = log(dir.path(), &alloc, "snoop", "stdout");
    assert!(out.contains("done") && !out.contains("s3cret") && !out.contains("READ-OTHER"), "{out}");
    assert!(!out.contains("KILLED-OTHER"), "{out}");
    let status = std::fs::read_to_string(format!("/proc/{holder_task}/status")).expect("the holder's task lives");
    assert!(status.lines().any(|l| l == "Uid:\t65534\t65534\t65534\t65534"), "{status}");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_over_its_memory_limit_is_oom_killed_and_a_fork_bomb_stops_at_the_pids_limit() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent_configured(&cluster, "n1", dir.path(), |c| c.drivers.pids_max = Some(16)).await;
    // 200 MB in a shell variable, against a 32 MB limit.
    let mut hog = shell("hog", "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo SURVIVED");
    hog.task_groups[0].tasks[0].resources.memory_mb = 32;
    cluster.submit_job(1, &hog).await;
    let alloc = finished(&cluster, "hog").await;
    let events: Vec<&str> = alloc.task_states["hog"].events.iter().map(|e| e.kind().label()).collect();
    assert!(events.contains(&"OOM Killed"), "{:?}", alloc.task_states["hog"].events);
    assert_eq!(alloc.client_status(), AllocationClientStatus::Failed);
    assert!(!log(dir.path(), &alloc, "hog", "stdout").contains("SURVIVED"));

    let bomb = "i=0; while [ $i -lt 40 ]; do sleep 600 & i=$((i+1)); done; echo started $i";
    cluster.submit_job(1, &shell("bomb", bomb)).await;
    let alloc = finished(&cluster, "bomb").await;
    let err = log(dir.path(), &alloc, "bomb", "stderr");
    assert!(err.to_lowercase().contains("fork"), "forks refused at the limit: {err}");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_refuses_root_unless_allowed_and_raw_exec_runs_only_where_enabled() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let agent = start_agent(&cluster, "n1", dir.path()).await;
    let mut as_root = shell("as-root", "id -u");
    as_root.task_groups[0].tasks[0].user = Some("root".into());
    cluster.submit_job(1, &as_root).await;
    let alloc = finished(&cluster, "as-root").await;
    let setup = alloc.task_states["as-root"]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::SetupFailure)
        .expect("refused");
    assert!(setup.message.contains("--allowed-users"), "{}", setup.message);

    // The job's environment reaches the task alone, never the root launcher or init.
    let mut preload = shell("preload", "true");
    preload.task_groups[0].tasks[0].env.insert("LD_PRELOAD".into(), "/nonexistent/x.so".into());
    cluster.submit_job(1, &preload).await;
    let alloc = finished(&cluster, "preload").await;
    let err = log(dir.path(), &alloc, "preload", "stderr");
    assert_eq!(err.matches("cannot be preloaded").count(), 1, "the task's shell only: {err}");

    // raw_exec: not offered by this agent, so never placed, and the scheduler says why.
    let mut raw = shell("raw", "id -u");
    let TaskDriver::Exec(config) = raw.task_groups[0].tasks[0].driver.clone() else { unreachable!() };
    raw.task_groups[0].tasks[0].driver = TaskDriver::RawExec(config);
    cluster.submit_job(1, &raw).await;
    common::wait_unplaced(&cluster, "raw", "missing driver raw_exec").await;
    agent.stop().await;

    let enabled = start_agent_configured(&cluster, "n2", dir.path(), |c| {
        c.drivers.enable_raw_exec = true;
        c.drivers.allowed_users = Some(vec!["root".into()]);
    })
    .await;
    let alloc = finished(&cluster, "raw").await;
    assert_eq!(log(dir.path(), &alloc, "raw", "stdout"), "0\n", "raw_exec runs as the agent's user");
    // Root, listed in --allowed-users, runs an exec task (still isolated).
    let mut listed = shell("listed-root", "id -u");
    listed.task_groups[0].tasks[0].user = Some("root".into());
    cluster.submit_job(1, &listed).await;
    let alloc = finished(&cluster, "listed-root").await;
    assert_eq!(log(dir.path(), &alloc, "listed-root", "stdout"), "0\n");
    enabled.stop().await;
    cluster.shutdown().await;
}
