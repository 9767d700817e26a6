//! Day-two commands with the real binaries: scaling a job, stopping one allocation, reading a
//! job's history and its stored spec, reverting to an older version.

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
    let (_, json, _) = cluster.cli(&["alloc", "status", &victim, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert!(doc["id"].as_str().is_some_and(|id| id.ends_with(&victim)), "{doc}");
    assert_eq!((doc["client_status"].as_str(), doc["node_id"].as_str()), (Some("running"), Some("n1")));
    assert_eq!(doc["tasks"]["svc"]["state"], "running");
    let (_, json, _) = cluster.cli(&["alloc", "list", "--json", "--job", "svc"]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let (_, json, _) = cluster.cli(&["node", "status", "n1", "--json"]);
    let node: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!((node["status"].as_str(), node["drivers"][0].as_str()), (Some("ready"), Some("exec")));

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
    assert!(history.starts_with("Versions\nVERSION  STABLE  SUBMITTED"), "{history}");
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

    // Revert: an older version's spec again, as the next version, watched as job run is.
    let (code, out, err) = cluster.cli(&["job", "revert", "svc", "0"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("Job \"svc\" reverted to version 0: now version 2, evaluation "), "{out}");
    assert!(out.ends_with("==> All 1 allocation(s) of version 2 are running\n"), "{out}");
    let (code, _, err) = cluster.cli(&["job", "revert", "svc", "1", "--enforce-prior-version", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("job \"svc\" is at version 2, not 1 (enforce_prior_version)"), "{err}");
    let (_, _, err) = cluster.cli(&["job", "revert", "svc", "2"]);
    assert!(err.contains("version 2 is the current version of job \"svc\""), "{err}");
    let (_, _, err) = cluster.cli(&["job", "revert", "svc", "9"]);
    assert!(err.contains("job \"svc\" has no version 9 (kept: 0, 1, 2)"), "{err}");
    let (code, out, err) = cluster.cli(&["job", "revert", "svc", "1", "--enforce-prior-version", "2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("==> All 2 allocation(s) of version 3 are running\n"), "{out}");
    assert!(cluster.cli(&["job", "inspect", "svc"]).1.contains("\"count\": 2"));

    // Nodes: eligibility, then a drain that moves the work away (nowhere to go here) and back.
    let (_, out, _) = cluster.cli(&["node", "eligibility", "n1", "--disable"]);
    assert_eq!(out, "Node \"n1\" is ineligible for new work\n");
    assert!(cluster.cli(&["node", "status", "n1"]).1.contains("Eligibility = ineligible"));
    let (_, out, _) = cluster.cli(&["node", "eligibility", "n1", "--enable"]);
    assert_eq!(out, "Node \"n1\" is eligible for new work\n");
    let (_, out, _) = cluster.cli(&["node", "drain", "n1"]);
    assert_eq!(out, "Node \"n1\" is draining: its allocations move to other nodes\n");
    eventually("svc evicted", || cluster.cli(&["job", "status", "svc"]).1.contains("Placement   = waiting"));
    cluster.cli(&["node", "drain", "n1", "--disable"]);
    eventually("svc back on n1", || {
        cluster.cli(&["alloc", "list", "--job", "svc"]).1.matches(" running ").count() == 2
    });

    // A task's output, by allocation.
    let (code, _, err) = cluster.cli(&["job", "run", "--name", "hi", "echo", "--", "hello there"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, list, _) = cluster.cli(&["alloc", "list", "--job", "hi"]);
    let id = list.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("an allocation").to_string();
    assert_eq!(cluster.cli(&["alloc", "logs", &id]).1, "hello there\n");

    assert_eq!(cluster.cli(&["job", "stop", "svc"]).0, Some(0));
}

/// Whether the tests may use the Docker engine: with `HELIOS_REQUIRE_DOCKER=1` they must.
fn docker_available() -> bool {
    let answers = std::process::Command::new("docker").args(["version"]).output().is_ok_and(|o| o.status.success());
    if !answers {
        assert!(
            std::env::var("HELIOS_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "HELIOS_REQUIRE_DOCKER=1 but docker does not answer"
        );
        eprintln!("skipped: no Docker engine answers (set HELIOS_REQUIRE_DOCKER=1 to fail instead)");
    }
    answers
}

/// Removes every container of a job, and an image, when dropped (either may be empty: none).
struct DockerCleanup {
    image: String,
    job: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        if !self.job.is_empty() {
            let filter = format!("label=io.helios.job={}", self.job);
            let out = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
            let ids = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = std::process::Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        if !self.image.is_empty() {
            let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.image]).output();
        }
    }
}

#[test]
fn the_helios_workflow_from_create_to_remove() {
    if !docker_available() {
        return;
    }
    let image = format!("helios-test-classic:{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/busybox-image.sh");
    let built = std::process::Command::new(script).arg(&image).output().expect("run busybox-image.sh");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let _cleanup = DockerCleanup { image: image.clone(), job: "web:v1".into() };
    let cluster = DevCluster::start();
    eventually("the node offers docker", || cluster.cli(&["hosts"]).1.contains("docker"));

    let create = ["create", "web:v1", &image, "-p", "http=80", "--env", "GREETING=hi", "--", "sh", "-c"];
    let (code, out, err) = cluster.cli(&[&create[..], &["echo $GREETING; exec sleep 600"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Created job web:v1; deploy it with: helios-cli deploy web:v1 HOST...\n");
    assert!(cluster.cli(&["jobs"]).1.contains("\nweb:v1  system"), "{}", cluster.cli(&["jobs"]).1);
    assert_eq!(cluster.cli(&["status"]).1.lines().count(), 1, "created, not deployed: only the header");
    let (code, _, err) = cluster.cli(&["create", "web:v1", &image]);
    assert_eq!((code, err.as_str()), (Some(1), "Error: job web:v1 already exists (helios-cli jobs)\n"));

    let (code, _, err) = cluster.cli(&["deploy", "web:v1", "ghost"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "Error: unknown host \"ghost\" (hosts: n1; see helios-cli hosts)\n");
    let (code, out, err) = cluster.cli(&["deploy", "web:v1", "n1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("==> All 1 allocation(s) of version 1 are running\n"), "{out}");
    let (_, status, _) = cluster.cli(&["status"]);
    let line = status.lines().nth(1).expect("a line for web:v1 on n1");
    assert!(line.starts_with("web:v1  n1    start  running  "), "{status}");
    assert!(line.ends_with("->80"), "the picked host port: {status}");

    let (code, _, err) = cluster.cli(&["remove", "web:v1"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "Error: job web:v1 is deployed on n1: undeploy it first (helios-cli undeploy web:v1 -a)\n");

    let (code, out, err) = cluster.cli(&["undeploy", "web:v1", "-a"]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("the container stopped and gone", || {
        let (_, status, _) = cluster.cli(&["status", "--job", "web:v1"]);
        let filter = "label=io.helios.job=web:v1";
        let ps =
            std::process::Command::new("docker").args(["ps", "-aq", "--filter", filter]).output().expect("docker ps");
        status.lines().count() == 1 && ps.stdout.is_empty()
    });
    let (_, history, _) = cluster.cli(&["history", "web:v1"]);
    assert!(history.contains("\n2        "), "three versions: {history}");
    assert!(history.contains(" Started ") && history.contains(" Killing "), "{history}");

    let (code, out, err) = cluster.cli(&["remove", "web:v1"]);
    assert_eq!((code, out.as_str()), (Some(0), "Removed job web:v1\n"), "{err}");
    assert!(!cluster.cli(&["jobs"]).1.contains("web:v1"));
}

#[test]
fn every_example_job_file_runs() {
    if !docker_available() {
        return;
    }
    // The docker examples run `helios-busybox`, as the README builds it; built here only if
    // missing, and then removed again.
    let present = std::process::Command::new("docker").args(["image", "inspect", "helios-busybox"]).output();
    let built_here = !present.is_ok_and(|o| o.status.success());
    let _cleanup = built_here.then(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/busybox-image.sh");
        let built = std::process::Command::new(script).output().expect("run busybox-image.sh");
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
        DockerCleanup { image: "helios-busybox:latest".into(), job: String::new() }
    });
    // Declared before the cluster, so dropped after it: no agent is left to restart a container.
    let mut ran = Vec::new();
    let cluster = DevCluster::start();
    eventually("the node offers docker", || cluster.cli(&["hosts"]).1.contains("docker"));
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples");
    for entry in std::fs::read_dir(examples).expect("docs/examples") {
        let path = entry.expect("entry").path();
        let file = path.to_str().expect("utf-8");
        let (code, out, err) = cluster.cli(&["job", "run", file]);
        // Its containers are removed whatever happens next.
        let name = out.split('"').nth(1).unwrap_or_default().to_string();
        ran.push(DockerCleanup { image: String::new(), job: name.clone() });
        assert_eq!(code, Some(0), "{file}:\n{out}{err}");
        assert!(out.contains("==> All "), "{file}: {out}");
        assert_eq!(cluster.cli(&["job", "stop", "--purge", &name]).0, Some(0), "{name}");
    }
    assert_eq!(ran.len(), 4, "every example in docs/examples");
}

/// What a task leaves in its directory is served as its log only if it is a regular file, and a
/// huge one is streamed from disk: the agent's memory stays flat.
#[test]
fn a_huge_log_streams_in_bounded_memory_and_a_planted_symlink_is_refused() {
    let cluster = DevCluster::start();
    let (code, _, err) = cluster.cli(&["job", "run", "--name", "big", "echo", "--", "hello"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, list, _) = cluster.cli(&["alloc", "list", "--job", "big"]);
    let id = list.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("an allocation").to_string();
    let alloc_dir = std::fs::read_dir(cluster.agent_dir.join("allocs"))
        .expect("allocs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(id.as_str())))
        .expect("the allocation's directory");
    let task_dir = alloc_dir.join("big");

    // 1 GiB (sparse: it costs no disk), the task done, so nothing rotates it.
    let gib = 1 << 30;
    std::fs::OpenOptions::new().write(true).open(task_dir.join("stdout.log")).expect("log").set_len(gib).expect("grow");
    let mut logs = std::process::Command::new(common::CLI)
        .args(["--server-addr", &cluster.url, "alloc", "logs", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("alloc logs");
    let mut received = 0u64;
    let mut out = logs.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut out, &mut buf).expect("read the logs");
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    assert!(logs.wait().expect("alloc logs ends").success());
    assert_eq!(received, gib, "the whole log");
    let peak_kib = cluster.agent_peak_rss_kib();
    assert!(peak_kib < 64 * 1024, "the agent peaked at {} MiB serving a 1 GiB log", peak_kib / 1024);

    // stderr.log replaced by a symlink to a file the task may not read: refused, not served.
    let secret = cluster.dir.path().join("shadow");
    std::fs::write(&secret, "root:$6$secret-hash:\n").expect("secret");
    std::fs::remove_file(task_dir.join("stderr.log")).expect("remove stderr.log");
    std::os::unix::fs::symlink(&secret, task_dir.join("stderr.log")).expect("symlink");
    let (code, out, err) = cluster.cli(&["alloc", "logs", "--stderr", &id]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.starts_with("Error: ") && err.contains("is a symbolic link, not a log file"), "{err}");
    assert!(!out.contains("secret-hash") && !err.contains("secret-hash"), "{out}{err}");
}

/// `job scale` reads, changes and submits over the version it read: two users scaling two groups
/// of one job at the same time both get their change (before check-and-set, one overwrote the
/// other's count with the one it had read).
#[test]
fn concurrent_scales_of_two_groups_both_land() {
    let cluster = DevCluster::start();
    // Nothing needs to run: what is checked is the stored spec (and no task outlives the test).
    assert_eq!(cluster.cli(&["node", "eligibility", "n1", "--disable"]).0, Some(0));
    let file = cluster.dir.path().join("two.nomad.hcl");
    let group = |name: &str| {
        format!(
            "  group \"{name}\" {{\n    count = 1\n    task \"t\" {{\n      driver = \"exec\"\n      config {{\n        \
             command = \"sleep\"\n        args    = [\"600\"]\n      }}\n    }}\n  }}\n"
        )
    };
    std::fs::write(&file, format!("job \"two\" {{\n  type = \"service\"\n{}{}}}\n", group("a"), group("b")))
        .expect("job file");
    let (code, out, err) = cluster.cli(&["job", "run", "-d", file.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{out}{err}");
    let scaler = |group: &'static str| {
        let url = cluster.url.clone();
        std::thread::spawn(move || {
            for count in 2..=6 {
                let count = count.to_string();
                let out = common::cli(&["--server-addr", &url, "job", "scale", "two", group, &count, "-d"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        })
    };
    let (a, b) = (scaler("a"), scaler("b"));
    a.join().expect("scaling a");
    b.join().expect("scaling b");
    let (_, spec, _) = cluster.cli(&["job", "inspect", "two"]);
    let doc: serde_json::Value = serde_json::from_str(&spec).expect("a job document");
    let counts: Vec<(String, u64)> = doc["group"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["name"].as_str().unwrap_or_default().to_string(), g["count"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(counts, [("a".to_string(), 6), ("b".to_string(), 6)], "{spec}");
}
