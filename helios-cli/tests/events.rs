//! `helios-cli events` against real binaries: it prints the cluster's changes live, filtered by
//! topic and key, as lines or JSON, and replays them from an index.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{DevCluster, Proc, CLI};

/// `helios-cli events ARGS` running, its stdout lines sent to the receiver as they come.
fn follow(cluster: &DevCluster, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(CLI)
        .args([&["--server-addr", cluster.url.as_str(), "events"], args].concat())
        .env_remove("HELIOS_ADDR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start helios-cli events");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

/// Lines until one satisfies `wanted` (which is returned last).
fn lines_until(rx: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no such line in {lines:#?}"));
        let done = wanted(&line);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[test]
fn events_prints_a_jobs_changes_live_and_replays_them_from_an_index() {
    let cluster = DevCluster::start();
    // From index 1, the new cluster's first: whenever the subscriptions start, they miss nothing.
    let (_lines, plain) =
        follow(&cluster, &["--topic", "Job:watched", "--topic", "allocation:watched", "--from-index", "1"]);
    let (_json, json) = follow(&cluster, &["--topic", "job", "--json", "--from-index", "1"]);
    for name in ["ignored", "watched"] {
        let (code, _, err) =
            cluster.cli(&["job", "run", "--detach", "--type", "service", "--name", name, "sleep", "--", "300"]);
        assert_eq!(code, Some(0), "{err}");
    }

    let seen = lines_until(&plain, |l| l.contains("Allocation") && l.contains("desired run, running"));
    assert!(seen.iter().all(|l| !l.contains("ignored")), "filtered by key: {seen:#?}");
    let job_line = seen.iter().find(|l| l.contains(" Job ")).expect("the job's event");
    let fields: Vec<&str> = job_line.split_whitespace().collect();
    assert_eq!(&fields[1..5], ["Job", "upserted", "watched", "version"], "{job_line}");
    let index: u64 = fields[0].parse().expect("the index first");

    let docs = lines_until(&json, |l| l.contains("\"watched\""));
    let doc: serde_json::Value = serde_json::from_str(docs.last().expect("a line")).expect("one JSON document a line");
    assert_eq!(doc["topic"], "Job");
    assert_eq!(doc["job"]["name"], "watched");
    assert_eq!(doc["index"], index);
    assert!(docs.iter().any(|l| l.contains("\"ignored\"")), "every job without a key: {docs:#?}");

    // From the job's index: its event again, first.
    let from = index.to_string();
    let (_replay, replay) = follow(&cluster, &["--topic", "Job:watched", "--from-index", &from]);
    let again = lines_until(&replay, |_| true);
    assert_eq!(again[0], *job_line);

    // Garbage is refused before connecting, naming the problem.
    let (code, _, err) = cluster.cli(&["events", "--topic", "jobs"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown topic \"jobs\""), "{err}");
    let (code, _, err) = cluster.cli(&["job", "stop", "watched"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cluster.cli(&["job", "stop", "ignored"]);
    assert_eq!(code, Some(0), "{err}");
}
