//! `scripts/local-cluster.sh start --secure` with the real binaries: it makes a CA, role
//! certificates and a cluster key, starts three servers (ACLs on, bootstrapped) and three agents
//! over mutual TLS, and the README's job runs through it with the variables it prints; without
//! the certificates, or without the token, the CLI is refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{free_port, sibling, CLI};

/// Runs the script with its test knobs; `stop` on drop, so a failing test leaves nothing.
struct Script {
    env: Vec<(String, String)>,
}

impl Script {
    fn run(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-cluster.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script).args(args).env_remove("HELIOS_ADDR");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run local-cluster.sh")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // The job's tasks are echo commands that end on their own.
        let _ = self.run(&["stop"]);
    }
}

fn cli_with(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(CLI);
    cmd.args(args).env_remove("HELIOS_ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run helios-cli")
}

#[test]
fn the_secure_local_cluster_runs_the_readme_job_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let ports = |n: usize| (0..n).map(|_| free_port().to_string()).collect::<Vec<_>>();
    let (server_ports, agent_ports) = (ports(3), ports(3));
    let bin = sibling("helios-server").parent().expect("bin dir").to_path_buf();
    let script = Script {
        env: vec![
            ("HELIOS_LOCAL_DIR".into(), state.display().to_string()),
            ("HELIOS_BIN".into(), bin.display().to_string()),
            ("SERVER_PORTS".into(), server_ports.join(" ")),
            ("AGENT_PORTS".into(), agent_ports.join(" ")),
        ],
    };
    let started = script.run(&["start", "--secure"]);
    let stdout = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(started.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&started.stderr));
    assert!(stdout.contains("Mutual TLS and ACLs are on"), "{stdout}");

    // The exports the script printed, as a user would paste them.
    let exported: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(exported.len(), 5, "{stdout}");
    let run = cli_with(&exported, &["job", "run", "--name", "multi-node-test", "echo", "--", "It replicated!"]);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{out}{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.ends_with("==> All 1 allocation(s) of version 0 completed\n"), "{out}");
    // Logs come from an agent, through a server that reaches it over TLS too.
    let logs = cli_with(&exported, &["job", "logs", "multi-node-test"]);
    let text = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(logs.status.success() && text.ends_with(" It replicated!\n"), "{text}");

    // Without the certificates, the same servers refuse the CLI.
    let addrs: Vec<(String, String)> = exported.iter().filter(|(k, _)| k == "HELIOS_ADDR").cloned().collect();
    let refused = cli_with(&addrs, &["job", "list"]);
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stdout));
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("cannot reach a Helios server"), "refused for another reason: {why}");
    // With the certificates but without the token: TLS lets it in, ACLs turn it away.
    let no_token: Vec<(String, String)> = exported.iter().filter(|(k, _)| k != "HELIOS_TOKEN").cloned().collect();
    let refused = cli_with(&no_token, &["job", "run", "--name", "anonymous", "echo", "--", "no"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs submit-job"), "{:?}", refused);
    // The key and private keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for secret in
        ["helios-cluster.key", "bootstrap.token", "tls/helios-agent-ca-key.pem", "tls/global-server-helios-key.pem"]
    {
        let mode = std::fs::metadata(state.join(secret)).expect("secret").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }

    // Stopped and started again, without --secure: it stays secure, and keeps its jobs and token.
    let stopped = script.run(&["stop"]);
    assert!(stopped.status.success());
    let restarted = script.run(&["start"]);
    let again = String::from_utf8_lossy(&restarted.stdout).into_owned();
    assert!(restarted.status.success(), "{again}\n{}", String::from_utf8_lossy(&restarted.stderr));
    assert!(again.contains("Mutual TLS and ACLs are on"), "{again}");
    let logs = cli_with(&exported, &["job", "logs", "multi-node-test"]);
    assert!(String::from_utf8_lossy(&logs.stdout).ends_with(" It replicated!\n"), "{logs:?}");
    drop(script);
}
