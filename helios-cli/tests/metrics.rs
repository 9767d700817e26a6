//! Prometheus metrics from real processes: a server and an agent started with
//! `--metrics-addr` run a job, and their scrapes hold exactly the metrics docs/metrics.md lists
//! (every one, no other), with values that follow what happened.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use common::{cli, eventually, free_port, sibling, spawn};

/// The metric names docs/metrics.md lists under `heading`.
fn documented(heading: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).expect("docs");
    let section = doc.split("\n## ").find(|s| s.starts_with(heading)).expect("the section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The text exposition served on `addr`.
fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics port answers");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The `helios_` metric names in a scrape (a histogram's series under its own name).
fn names(scraped: &str) -> BTreeSet<String> {
    scraped
        .lines()
        .filter(|l| l.starts_with("helios_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_string())
        .collect()
}

/// The value of the series `series` (name and labels, as scraped).
fn value(scraped: &str, series: &str) -> Option<f64> {
    scraped.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_server_and_an_agent_export_every_documented_metric_and_no_other() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rpc, server_metrics, agent_metrics) = (free_port(), free_port(), free_port());
    let (server_metrics, agent_metrics) = (format!("127.0.0.1:{server_metrics}"), format!("127.0.0.1:{agent_metrics}"));
    let url = format!("http://127.0.0.1:{rpc}");
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let _server = spawn(
        &sibling("helios-server"),
        &args(&["--dev", "--rpc-addr", &format!("127.0.0.1:{rpc}"), "--metrics-addr", &server_metrics]),
        dir.path(),
        "server.log",
    );
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let agent_rpc = format!("127.0.0.1:{}", free_port());
    let _agent = spawn(
        &sibling("helios-client"),
        &args(&[
            "--node-id",
            "n1",
            "--server-addr",
            &url,
            "--client-rpc-addr",
            &agent_rpc,
            "--metrics-addr",
            &agent_metrics,
        ]),
        &agent_dir,
        "agent.log",
    );
    let helios = |list: &[&str]| {
        let mut all = vec!["--server-addr", url.as_str()];
        all.extend_from_slice(list);
        cli(&all)
    };
    eventually("a ready node", || String::from_utf8_lossy(&helios(&["node", "list"]).stdout).contains(" ready "));
    let ran = helios(&["job", "run", "--name", "metered", "echo", "--", "counted"]);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let logs = helios(&["job", "logs", "metered"]);
    assert!(String::from_utf8_lossy(&logs.stdout).ends_with(" counted\n"), "{logs:?}");

    // The node shows as ready once sampled (every 5 s).
    eventually("the node counted ready", || {
        value(&scrape(&server_metrics), "helios_nodes{status=\"ready\"}") == Some(1.0)
    });
    let server = scrape(&server_metrics);
    assert_eq!(names(&server), documented("Servers"), "the server's metrics and docs/metrics.md differ");
    assert_eq!(value(&server, "helios_raft_is_leader"), Some(1.0));
    assert!(value(&server, "helios_scheduler_placements_total").is_some_and(|v| v >= 1.0), "{server}");
    assert!(value(&server, "helios_scheduler_evaluations_total{status=\"complete\"}").is_some_and(|v| v >= 1.0));
    let submits = "helios_api_requests_total{method=\"/helios.v1.JobService/SubmitJob\",code=\"OK\"}";
    assert_eq!(value(&server, submits), Some(1.0), "{server}");
    assert!(server.contains("# HELP helios_raft_log_fsync_seconds"), "described");

    let agent = scrape(&agent_metrics);
    assert_eq!(names(&agent), documented("Agents"), "the agent's metrics and docs/metrics.md differ");
    let started: f64 = ["exec", "raw_exec"]
        .iter()
        .filter_map(|d| value(&agent, &format!("helios_agent_task_starts_total{{driver=\"{d}\"}}")))
        .sum();
    assert_eq!(started, 1.0, "{agent}");
    assert_eq!(value(&agent, "helios_agent_tasks_running"), Some(0.0));
    assert_eq!(value(&agent, "helios_agent_log_bytes_sent_total"), Some("counted\n".len() as f64));
}
