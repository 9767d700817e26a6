//! The `helios-client` binary refuses bad flags, and a data dir another agent holds, with one
//! clear line.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_helios-client");

#[test]
fn bad_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(AGENT)
        .args(["--node-id", "bad id", "--client-rpc-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run helios-client");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Error: invalid --node-id \"bad id\": may contain only"), "{err}");

    let out = Command::new(AGENT).args(["--node-id", "n1", "--meta", "no-equals-sign"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));
}

/// An agent process of node `id` on `dir` whose servers do not answer (it keeps retrying),
/// killed when dropped.
struct Agent(Child);

impl Agent {
    /// Started, and past taking its place in the data dir: it has tried to register.
    fn start(id: &str, dir: &Path, log: &Path) -> Agent {
        let log_file = std::fs::File::create(log).expect("log");
        let child = agent(id, dir)
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start helios-client");
        let agent = Agent(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(log).unwrap_or_default().contains("registration failed") {
            let so_far = std::fs::read_to_string(log).unwrap_or_default();
            assert!(Instant::now() < deadline, "agent {id} never tried to register: {so_far}");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(id: &str, dir: &Path) -> Command {
    let mut command = Command::new(AGENT);
    command
        .args(["--node-id", id, "--server-addr", "http://127.0.0.1:1", "--client-rpc-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir);
    command
}

#[test]
fn one_agent_per_node_on_a_data_dir_and_other_nodes_may_share_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let first = Agent::start("n1", &data, &dir.path().join("n1.log"));
    // As in the README: agents of other nodes on one machine, from one directory.
    let _other = Agent::start("n2", &data, &dir.path().join("n2.log"));
    let child = agent("n1", &data).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start");
    let mut duplicate = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = duplicate.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "a second agent of node n1 kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut duplicate.0.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(err.contains("another agent of node \"n1\" is running on the data directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // SIGKILL leaves no stale lock: the node's next agent takes its place.
    drop(first);
    let _again = Agent::start("n1", &data, &dir.path().join("n1-again.log"));
}
