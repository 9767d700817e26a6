//! The README's multi-node quick start with the real binaries: three servers, three agents, the
//! two `job run` commands, the output in `job logs` from any server, also after the leader is
//! killed. The server and agent binaries come from the same build (`cargo test --workspace`
//! builds them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_helios-cli");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(CLI).with_file_name(name);
    assert!(path.exists(), "{} is missing: run the README's test command (cargo test --workspace)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn(program: &Path, args: &[String], dir: &Path, log: &str) -> Proc {
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start process");
    Proc(child)
}

fn cli(args: &[&str]) -> Output {
    Command::new(CLI).args(args).env_remove("HELIOS_ADDR").output().expect("run helios-cli")
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
    let all = (0..3).map(url).collect::<Vec<_>>().join(",");
    let mut agents = Vec::new();
    for i in 1..=3 {
        let agent_dir = dir.path().join(format!("agent-{i}"));
        std::fs::create_dir_all(&agent_dir).expect("agent dir");
        let args = vec![
            "--node-id".to_string(),
            i.to_string(),
            "--server-addr".into(),
            all.clone(),
            "--client-rpc-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        agents.push(spawn(&sibling("helios-client"), &args, &agent_dir, "agent.log"));
    }
    eventually("three ready nodes", || {
        let out = cli(&["--server-addr", &url(0), "node", "list"]);
        String::from_utf8_lossy(&out.stdout).matches(" ready ").count() == 3
    });

    let run =
        cli(&["--server-addr", &url(0), "job", "run", "--name", "multi-node-test", "echo", "--", "It replicated!"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = cli(&["--server-addr", &url(1), "job", "run", "--name", "final-test", "echo", "--", "IT LIVES!"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let logs = |server: usize, job: &str| {
        String::from_utf8_lossy(&cli(&["--server-addr", &url(server), "job", "logs", job]).stdout).into_owned()
    };
    eventually("It replicated! in the logs", || logs(2, "multi-node-test").ends_with(" It replicated!\n"));
    eventually("IT LIVES! in the logs", || logs(0, "final-test").ends_with(" IT LIVES!\n"));

    // Kill the leader (SIGKILL): the output stays readable through the others.
    let members = String::from_utf8_lossy(&cli(&["--server-addr", &all, "server", "members"]).stdout).into_owned();
    let leader: usize = members
        .lines()
        .find(|l| l.contains(" leader "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a leader");
    drop(servers[leader - 1].take());
    let survivor = (0..3).find(|i| i + 1 != leader).expect("a survivor");
    eventually("logs after the leader died", || logs(survivor, "multi-node-test").ends_with(" It replicated!\n"));
    drop(agents);
}
