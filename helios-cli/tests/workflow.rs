//! Day-two commands with the real binaries: scaling a job, stopping one allocation, reading a
//! job's history and its stored spec.

mod common;

use common::{eventually, DevCluster};

#[test]
fn scale_alloc_stop_history_and_inspect() {
    let cluster = DevCluster::start();
    let (code, out, err) = cluster.cli(&["job", "run", "--name", "svc", "--type", "service", "sleep", "--", "600"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("==> All 1 allocation(s) of version 0 are running\n"), "{out}");

    // Scale: a new version, the running allocation kept, one more placed.
    let (code, out, err) = cluster.cli(&["job", "scale", "svc", "svc", "2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("Job \"svc\" submitted: version 1"), "{out}");
    assert!(out.ends_with("==> All 2 allocation(s) of version 1 are running\n"), "{out}");
    let (_, _, err) = cluster.cli(&["job", "scale", "svc", "web", "3"]);
    assert_eq!(err, "Error: job \"svc\" has no group \"web\" (its groups: svc)\n");

    // Stop one allocation: it ends and a replacement takes its place.
    let (_, list, _) = cluster.cli(&["alloc", "list", "--job", "svc"]);
    let victim = list.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("an allocation").to_string();
    let (code, out, err) = cluster.cli(&["alloc", "stop", &victim]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("Allocation {victim} stopping; evaluation ")), "{out}");
    eventually("the stopped allocation replaced", || {
        let (_, list, _) = cluster.cli(&["alloc", "list", "--job", "svc"]);
        let running = list.lines().filter(|l| l.contains(" run ") && l.contains(" running ")).count();
        let stopped = list.lines().any(|l| l.starts_with(&victim) && l.contains(" stop ") && l.contains(" complete "));
        running == 2 && stopped
    });
    let (code, _, err) = cluster.cli(&["alloc", "stop", &victim]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("Error: ") && err.contains("is already complete"), "{err}");

    // History: both versions, and the task events in time order.
    let (code, history, err) = cluster.cli(&["job", "history", "svc"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(history.starts_with("Versions\nVERSION  SUBMITTED"), "{history}");
    assert!(history.contains("\n0        ") && history.contains("\n1        "), "{history}");
    assert!(history.contains("svc x1") && history.contains("svc x2"), "{history}");
    assert!(history.contains("Task events\nTIME") && history.contains(" Started ") && history.contains(" Killing "));
    let (_, json, _) = cluster.cli(&["job", "history", "svc", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(doc["versions"].as_array().map(Vec::len), Some(2));
    let times: Vec<u64> =
        doc["events"].as_array().expect("events").iter().filter_map(|e| e["time_ms"].as_u64()).collect();
    assert!(times.len() >= 4 && times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Inspect: the stored spec as a job file that submits back unchanged.
    let (code, spec, err) = cluster.cli(&["job", "inspect", "svc"]);
    assert_eq!(code, Some(0), "{err}");
    let file = cluster.dir.path().join("svc.json");
    std::fs::write(&file, &spec).expect("save the spec");
    let (_, out, _) = cluster.cli(&["job", "run", file.to_str().expect("utf-8")]);
    assert_eq!(out, "Job \"svc\" unchanged (version 1); nothing to do\n");
    let (_, first, _) = cluster.cli(&["job", "inspect", "svc", "--version", "0"]);
    assert!(first.contains("\"count\": 1"), "{first}");

    assert_eq!(cluster.cli(&["job", "stop", "svc"]).0, Some(0));
}
