//! The `helios-client` binary refuses bad flags with one clear line.

use std::process::Command;

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
