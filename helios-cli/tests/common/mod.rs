//! Helpers for the tests that run the real binaries (servers, agents, the CLI) as processes.
#![allow(dead_code)] // each test file uses its own share

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub use helios_chaos::ports::free_port;

pub const CLI: &str = env!("CARGO_BIN_EXE_helios-cli");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct KillGroup(pub String);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // Quietly: the group may be gone already.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub fn sibling(name: &str) -> PathBuf {
    let path = Path::new(CLI).with_file_name(name);
    assert!(path.exists(), "{} is missing: run the README's test command (scripts/test.sh)", path.display());
    path
}

pub fn spawn(program: &Path, args: &[String], dir: &Path, log: &str) -> Proc {
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

pub fn cli(args: &[&str]) -> Output {
    Command::new(CLI).args(args).env_remove("HELIOS_ADDR").output().expect("run helios-cli")
}

pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `--dev` server and one agent (node `n1`), as processes, ready for jobs.
pub struct DevCluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub agent_dir: PathBuf,
    _server: Proc,
    agent: Option<Proc>,
}

impl DevCluster {
    pub fn start() -> DevCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let server_args: Vec<String> =
            ["--dev", "--rpc-addr", &format!("127.0.0.1:{port}")].iter().map(|s| s.to_string()).collect();
        let server = spawn(&sibling("helios-server"), &server_args, dir.path(), "server.log");
        let url = format!("http://127.0.0.1:{port}");
        let agent_dir = dir.path().join("agent");
        std::fs::create_dir_all(&agent_dir).expect("agent dir");
        let mut cluster = DevCluster { dir, url, agent_dir, _server: server, agent: None };
        cluster.start_agent("agent.log");
        let url = cluster.url.clone();
        eventually("a ready node", || {
            String::from_utf8_lossy(&cli(&["--server-addr", &url, "node", "list"]).stdout).contains(" ready ")
        });
        cluster
    }

    /// Starts the agent (again), logging to `log` in its data dir.
    pub fn start_agent(&mut self, log: &str) {
        let rpc = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = ["--node-id", "n1", "--server-addr", &self.url, "--client-rpc-addr", &rpc]
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.agent = Some(spawn(&sibling("helios-client"), &args, &self.agent_dir, log));
    }

    /// SIGKILL to the agent (its tasks go on).
    pub fn kill_agent(&mut self) {
        drop(self.agent.take());
    }

    /// The agent's peak resident memory so far (`VmHWM`), in KiB.
    pub fn agent_peak_rss_kib(&self) -> u64 {
        let pid = self.agent.as_ref().expect("the agent runs").0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
        let peak = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
        peak.and_then(|v| v.split_whitespace().next()?.parse().ok()).expect("VmHWM in /proc/PID/status")
    }

    /// The server's and the agent's logs, to stderr: a failed test shows why.
    fn print_logs(&self) {
        let logs = [self.dir.path().join("server.log")]
            .into_iter()
            .chain(std::fs::read_dir(&self.agent_dir).into_iter().flatten().flatten().map(|e| e.path()));
        for log in logs.filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("----- {} -----\n{text}", log.display());
        }
    }

    /// helios-cli against this cluster: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = cli(&[&["--server-addr", self.url.as_str()], args].concat());
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for DevCluster {
    /// Task processes outlive their agent by design: kill every one this cluster started.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let Ok(allocs) = std::fs::read_dir(self.agent_dir.join("allocs")) else { return };
        for task in allocs.flatten().flat_map(|a| std::fs::read_dir(a.path()).into_iter().flatten().flatten()) {
            if let Ok(pid) = std::fs::read_to_string(task.path().join("pid")) {
                if let Some(pid) = pid.split_whitespace().next() {
                    drop(KillGroup(pid.to_string()));
                }
            }
        }
    }
}
