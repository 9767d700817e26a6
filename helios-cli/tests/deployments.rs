//! Deployments with the real binaries, as a Nomad user drives them: `job run` watching a
//! rollout to its end, a failing version reverted to the last stable one (and `job run`
//! failing), `job history` marking stable versions, and canaries waiting for
//! `deployment promote`.

mod common;

use common::{eventually, DevCluster};

/// A service job file of two `sleep` allocations rolled one at a time; `task` is its task's
/// command and arguments as HCL, `update` extra lines of the update block.
fn job_file(cluster: &DevCluster, name: &str, command: &str, args: &str, update: &str) -> String {
    let text = format!(
        r#"
job "web" {{
  type = "service"
  group "web" {{
    count = 2
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    update {{
      max_parallel      = 1
      min_healthy_time  = "1s"
      healthy_deadline  = "20s"
      {update}
    }}
    task "web" {{
      driver = "exec"
      config {{
        command = "{command}"
        args    = {args}
      }}
    }}
  }}
}}
"#
    );
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, text).expect("write the job file");
    path.to_string_lossy().into_owned()
}

fn deployments(cluster: &DevCluster) -> serde_json::Value {
    let (code, json, err) = cluster.cli(&["deployment", "list", "--job", "web", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&json).expect("one JSON document")
}

fn stable_versions(cluster: &DevCluster) -> Vec<u64> {
    let (_, json, _) = cluster.cli(&["job", "history", "web", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let versions = doc["versions"].as_array().cloned().unwrap_or_default();
    versions.iter().filter(|v| v["stable"] == true).filter_map(|v| v["version"].as_u64()).collect()
}

#[test]
fn a_failing_version_is_reverted_to_the_last_stable_one_and_canaries_wait_for_promotion() {
    let cluster = DevCluster::start();
    let good =
        job_file(&cluster, "good.hcl", "sleep", r#"["600"]"#, "auto_revert = true\n progress_deadline = \"30s\"");
    let (code, out, err) = cluster.cli(&["job", "run", &good]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Task Group  Desired  Placed  Healthy  Unhealthy  Progress Deadline"), "{out}");
    assert!(out.contains(" successful: Deployment completed successfully\nTask Group"), "{out}");
    assert_eq!(stable_versions(&cluster), [0]);

    // Version 1's task exits at once: its allocation fails, and with no progress deadline the
    // deployment fails at once (Nomad's rule); the servers register version 0's spec again as
    // version 2.
    let bad =
        job_file(&cluster, "bad.hcl", "sh", r#"["-c", "exit 3"]"#, "auto_revert = true\n progress_deadline = \"0s\"");
    let (code, out, err) = cluster.cli(&["job", "run", &bad]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("failed: Failed due to unhealthy allocations - rolling back to job version 0"), "{out}{err}");
    eventually("version 2 (version 0's spec) rolled out and stable", || stable_versions(&cluster) == [0, 2]);
    let list = deployments(&cluster);
    let statuses: Vec<(u64, &str)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| (d["job_version"].as_u64().unwrap_or(99), d["status"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(statuses, [(2, "successful"), (1, "failed"), (0, "successful")], "newest first");
    let (_, status, _) = cluster.cli(&["job", "status", "web"]);
    assert!(status.contains("sleep"), "version 0's command runs again: {status}");
    let (_, history, _) = cluster.cli(&["job", "history", "web"]);
    assert!(history.starts_with("Versions\nVERSION  STABLE  SUBMITTED"), "{history}");

    // A canary: one new allocation beside the two old ones until promoted.
    let canary = job_file(&cluster, "canary.hcl", "sleep", r#"["601"]"#, "canary = 1");
    let (code, out, err) = cluster.cli(&["job", "run", &canary]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Promoted  Desired  Canaries"), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("waits for promotion: helios-cli deployment promote "), "{out}");
    let id = last.rsplit(' ').next().expect("the deployment's id").to_string();
    let (_, allocs, _) = cluster.cli(&["alloc", "list", "--job", "web", "--json"]);
    let allocs: serde_json::Value = serde_json::from_str(&allocs).expect("one JSON document");
    let running = |version: u64| {
        allocs
            .as_array()
            .expect("a list")
            .iter()
            .filter(|a| a["job_version"] == version && a["client_status"] == "running" && a["desired_status"] == "run")
            .count()
    };
    assert_eq!((running(2), running(3)), (2, 1), "the old version serves beside the canary");

    let (code, _, err) = cluster.cli(&["deployment", "promote", &id, "--group", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("has no group \"nope\""), "{err}");
    let (code, out, err) = cluster.cli(&["deployment", "promote", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("the promoted deployment successful", || {
        let (_, status, _) = cluster.cli(&["deployment", "status", &id]);
        status.contains("Status      = successful")
    });
    assert_eq!(stable_versions(&cluster), [0, 2, 3]);
    let (code, _, err) = cluster.cli(&["deployment", "pause", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is successful: it can no longer change"), "{err}");
}
