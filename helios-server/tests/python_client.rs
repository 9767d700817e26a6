//! The proto is the contract other teams build on, so it is tested from another language: a
//! Python grpcio client whose stubs are generated from `proto/` alone (tests/python/client.py)
//! submits through a follower, retries with a request id, follows the event stream, reads a
//! task's log, pages a list and reads a typed error, against three servers and an agent.
//!
//! It needs a Python with grpcio-tools and grpcio-status (`HELIOS_PYTHON`), which
//! scripts/test.sh installs from PyPI into target/python-venv; without one it is skipped, unless
//! `HELIOS_REQUIRE_PYTHON=1` (scripts/test.sh sets it), when that is a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::{start_agent, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_client_generated_from_the_proto_drives_the_cluster() {
    let Some(python) = std::env::var_os("HELIOS_PYTHON") else {
        assert!(std::env::var("HELIOS_REQUIRE_PYTHON").as_deref() != Ok("1"), "HELIOS_PYTHON is not set");
        eprintln!("skipped: set HELIOS_PYTHON to a Python with grpcio-tools and grpcio-status (scripts/test.sh does)");
        return;
    };
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let agent_dir = tempfile::tempdir().expect("agent dir");
    let agent = start_agent(&cluster, "py-node", agent_dir.path()).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root.join("tests/python/client.py"))
            .arg(root.join("proto"))
            .args(addrs)
            .output()
            .expect("run the Python client")
    });
    let out = run.await.expect("the Python client's thread");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    agent.stop().await;
    cluster.shutdown().await;
    assert!(out.status.success(), "the Python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: a Python client generated from proto/ drove the cluster"), "{stdout}");
}
