//! The README's multi-node quick start with the real binaries: three servers, three agents given
//! server 1's address only (as the README writes them), the two `job run` commands, the output in
//! `job logs` from any server, and new work still run after server 1 is killed: the agents learned
//! the other servers from it. The server and agent binaries come from the same build (`cargo test
//! --workspace` builds them).

mod common;

use std::path::Path;

use common::{cli, eventually, free_port, sibling, spawn, DevCluster, KillGroup};

#[test]
fn the_readme_quick_start_runs_jobs_and_shows_their_output_from_any_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut args =
            vec!["--node-id".to_string(), (i + 1).to_string(), "--rpc-addr".into(), format!("127.0.0.1:{port}")];
        for peer in &peers {
            args.extend(["--peer".to_string(), peer.clone()]);
        }
        if i == 0 {
            args.push("--bootstrap".into());
        }
        servers.push(Some(spawn(&sibling("helios-server"), &args, dir.path(), &format!("server-{}.log", i + 1))));
    }
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    // Exactly the README's agents: server 1's address only.
    let agent_args = |i: usize| {
        let args = ["--node-id", &i.to_string(), "--server-addr", &url(0), "--client-rpc-addr"].map(String::from);
        [args.to_vec(), vec![format!("127.0.0.1:{}", free_port())]].concat()
    };
    let agent_dir = |i: usize| dir.path().join(format!("agent-{i}"));
    let mut agents = Vec::new();
    for i in 1..=3 {
        std::fs::create_dir_all(agent_dir(i)).expect("agent dir");
        agents.push(Some(spawn(&sibling("helios-client"), &agent_args(i), &agent_dir(i), "agent.log")));
    }
    eventually("three ready nodes", || {
        let out = cli(&["--server-addr", &url(0), "node", "list"]);
        String::from_utf8_lossy(&out.stdout).matches(" ready ").count() == 3
    });

    let run =
        cli(&["--server-addr", &url(0), "job", "run", "--name", "multi-node-test", "echo", "--", "It replicated!"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // Without --detach, job run watches the job until it has run.
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.ends_with("==> All 1 allocation(s) of version 0 completed\n"), "{out}");
    assert!(out.contains(" placed on node "), "{out}");
    let run = cli(&["--server-addr", &url(1), "job", "run", "--name", "final-test", "echo", "--", "IT LIVES!"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let logs = |server: usize, job: &str| {
        String::from_utf8_lossy(&cli(&["--server-addr", &url(server), "job", "logs", job]).stdout).into_owned()
    };
    eventually("It replicated! in the logs", || logs(2, "multi-node-test").ends_with(" It replicated!\n"));
    eventually("IT LIVES! in the logs", || logs(0, "final-test").ends_with(" IT LIVES!\n"));

    // A task that fails (with no restarts allowed) ends the watching with the reason.
    let doomed = dir.path().join("doomed.toml");
    let spec = "name = \"doomed\"\ntype = \"batch\"\n[[group]]\nname = \"doomed\"\n[group.restart]\nattempts = 0\n\
                [[group.task]]\nname = \"fail\"\ndriver = \"exec\"\nconfig = { command = \"sh\", args = [\"-c\", \"exit 3\"] }\n";
    std::fs::write(&doomed, spec).expect("job file");
    let run = cli(&["--server-addr", &url(0), "job", "run", doomed.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.starts_with("Error: allocation ") && err.contains(" failed: task fail: "), "{err}");
    assert!(err.contains("exit code 3"), "{err}");

    // Each agent learned every server from server 1's answers, and keeps the list in its data dir.
    for i in 1..=3 {
        let remembered = agent_dir(i).join(format!("helios-client-{i}.servers"));
        eventually("the agents to learn the servers", || {
            std::fs::read_to_string(&remembered).is_ok_and(|text| text.matches("server ").count() == 3)
        });
    }

    // Kill server 1 (SIGKILL), the only one the agents were given: the output stays readable
    // through the others, and new work still runs, so the agents moved to the servers they learned.
    drop(servers[0].take());
    eventually("logs after server 1 died", || logs(1, "multi-node-test").ends_with(" It replicated!\n"));
    // Given the dead server first, the CLI fails over to the next address.
    let both = format!("{},{}", url(0), url(1));
    // Detached, and its output awaited with a deadline: agents that never run it fail the test
    // instead of hanging it.
    let run = cli(&["--server-addr", &both, "job", "run", "--detach", "--name", "failed-over", "echo", "--", "over"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    eventually("an agent to run new work with server 1 dead", || logs(1, "failed-over").ends_with(" over\n"));

    // An agent restarted with the same command (server 1 still dead) finds the cluster from the
    // list it kept. With the other agents gone too, only it can run the next job.
    for agent in &mut agents {
        drop(agent.take());
    }
    agents[0] = Some(spawn(&sibling("helios-client"), &agent_args(1), &agent_dir(1), "agent-restarted.log"));
    // (Node 1 may still be ready from before; the job below is what proves the agent is back.)
    eventually("nodes 2 and 3 down, node 1 ready", || {
        let out = String::from_utf8_lossy(&cli(&["--server-addr", &url(1), "node", "list"]).stdout).into_owned();
        out.matches(" down ").count() == 2 && out.matches(" ready ").count() == 1
    });
    // Detached too, for the same reason.
    let run =
        cli(&["--server-addr", &url(2), "job", "run", "--detach", "--name", "after-restart", "echo", "--", "found"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    eventually("the restarted agent to run a new job", || logs(1, "after-restart").ends_with(" found\n"));
    drop(agents);
}

#[test]
fn a_task_keeps_running_and_logging_when_its_agent_is_killed_and_is_adopted_on_restart() {
    let mut cluster = DevCluster::start();
    let (url, agent_dir) = (cluster.url.clone(), cluster.agent_dir.clone());

    let script = "while true; do echo tick; sleep 0.1; done";
    let run =
        cli(&["--server-addr", &url, "job", "run", "--name", "ticker", "--type", "service", "sh", "--", "-c", script]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.ends_with("==> All 1 allocation(s) of version 0 are running\n"), "{out}");
    let pid_file = || {
        let allocs = std::fs::read_dir(agent_dir.join("allocs")).ok()?;
        let alloc = allocs.flatten().next()?;
        std::fs::read_to_string(alloc.path().join("ticker").join("pid")).ok()
    };
    let mut pid_line = None;
    eventually("the task started", || {
        pid_line = pid_file();
        pid_line.is_some()
    });
    let pid_line = pid_line.expect("pid file");
    let pid = pid_line.split_whitespace().next().expect("pid").to_string();
    // Whatever happens below, the task (which outlives agents by design) does not outlive the test.
    let _reaper = KillGroup(pid.clone());
    let log = || {
        let allocs = std::fs::read_dir(agent_dir.join("allocs")).expect("allocs");
        let alloc = allocs.flatten().next().expect("alloc");
        std::fs::read_to_string(alloc.path().join("ticker").join("stdout.log")).unwrap_or_default()
    };
    // Kill the agent outright: the task goes on, and so does its output.
    cluster.kill_agent();
    let before = log().len();
    eventually("the task to keep writing with its agent dead", || log().len() > before + 20);
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // A new agent adopts it: same process, no second copy.
    cluster.start_agent("agent-2.log");
    eventually("the task adopted", || {
        let out = cli(&["--server-addr", &url, "alloc", "list", "--job", "ticker"]);
        let id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next().map(str::to_string));
        id.is_some_and(|id| {
            String::from_utf8_lossy(&cli(&["--server-addr", &url, "alloc", "status", &id]).stdout).contains("Adopted")
        })
    });
    assert_eq!(pid_file().as_deref(), Some(pid_line.as_str()), "the same process");
    let allocs = String::from_utf8_lossy(&cli(&["--server-addr", &url, "alloc", "list"]).stdout).into_owned();
    assert_eq!(allocs.lines().count(), 2, "one allocation: {allocs}");

    // Stopping the job ends the process.
    assert!(cli(&["--server-addr", &url, "job", "stop", "ticker"]).status.success());
    eventually("the task process gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
}
