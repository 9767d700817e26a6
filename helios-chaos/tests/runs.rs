//! The reliability runs, short enough for CI: about two minutes of faults (servers killed,
//! paused and cut off in network namespaces, agents killed) under concurrent writers, and 100
//! server SIGKILLs during heavy writes. Each run's checker must find nothing: no acknowledged
//! write lost or duplicated, nothing run twice, no over-commit, identical state everywhere.
//! The long runs and their figures are in `docs/reliability.md`.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const CHAOS: &str = env!("CARGO_BIN_EXE_helios-chaos");

/// One run at a time: each loads both cores, and two at once would slow elections and
/// heartbeats enough to blur what is measured.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Longest a run may take before it is stopped (SIGTERM, on which it removes everything it
/// started) and the test fails.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs `helios-chaos` with `args`, echoing its report, and asserts that the run passed.
fn run_passes(args: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(CHAOS)
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(&out_path).expect("stdout file")))
        .stderr(Stdio::from(std::fs::File::create(&err_path).expect("stderr file")))
        .spawn()
        .expect("start helios-chaos");
    let pid = child.id();
    let (exited_tx, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited_tx.send(child.wait().expect("wait for helios-chaos")));
    let status = exited.recv_timeout(LIMIT).ok();
    if status.is_none() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let _ = exited.recv();
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");
    let status =
        status.unwrap_or_else(|| panic!("helios-chaos {} took over {LIMIT:?}:\n{stdout}\n{stderr}", args.join(" ")));
    assert!(status.success(), "helios-chaos {} failed ({status}):\n{stdout}\n{stderr}", args.join(" "));
    assert!(stdout.contains("\nPASSED"), "no verdict in the report:\n{stdout}");
}

#[test]
fn two_minutes_of_faults_lose_nothing_and_run_nothing_twice() {
    run_passes(&["faults", "--duration", "100s"]);
}

#[test]
fn a_hundred_server_kills_during_heavy_writes_lose_no_acknowledged_write() {
    run_passes(&["crash", "--kills", "100"]);
}
