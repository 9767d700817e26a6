//! How much a server trusts the network it listens on: the cluster key that authenticates
//! peers, and the refusal to serve plaintext beyond loopback unless told to (`--insecure`).

use std::io::Write;
use std::path::Path;

use crate::config::ServerConfig;
use crate::raft::peer_auth::{ClusterKey, KEY_FILE_NAME};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "--rpc-addr {0} can be reached from other machines, and this server has no TLS: anyone who \
         reaches it could run anything on every client. Give it --tls-ca, --tls-cert and --tls-key, \
         listen on 127.0.0.1, or pass --insecure to accept that (on a network you trust; give every \
         server the same cluster key)"
    )]
    PlaintextBeyondLoopback(std::net::SocketAddr),
    #[error(
        "this server listens beyond loopback and needs the cluster's key to talk to its peers: copy \
         {KEY_FILE_NAME} from the bootstrap server's --data-dir into {0}, or pass --cluster-key-file \
         or --cluster-key (HELIOS_CLUSTER_KEY)"
    )]
    MissingKey(String),
    #[error("the cluster key in {path}: {problem}")]
    BadKeyFile { path: String, problem: String },
    #[error("cannot write the cluster key to {path}: {source}")]
    WriteKey { path: String, source: std::io::Error },
    #[error("{0}")]
    NoRandomness(String),
    #[error(
        "--acl-enabled protects nothing while servers do not authenticate each other (any process \
         could speak for a server): give every server TLS certificates or the same cluster key \
         (`helios-cli operator keygen` > helios-cluster.key in each --data-dir, or --cluster-key-file)"
    )]
    AclsWithoutPeerAuth,
}

/// The cluster key this server uses, in order: the one given (`--cluster-key[-file]`), the one
/// in its data dir, none with TLS (a server certificate identifies a peer), a new one if it
/// bootstraps beyond loopback, or none on loopback (peers then name themselves unverified; the
/// log says so once).
/// Call it once the data dir is known to be usable (`store::open`).
pub fn resolve_cluster_key(config: &ServerConfig) -> Result<Option<ClusterKey>, SecurityError> {
    check_listen_addr(config)?;
    let beyond_loopback = !config.rpc_addr.ip().is_loopback();
    if let Some(key) = &config.cluster_key {
        return Ok(Some(key.clone()));
    }
    let path = config.data_dir.join(KEY_FILE_NAME);
    if let Some(key) = read_key_file(&path)? {
        tracing::info!(path = %path.display(), "peers are authenticated with the cluster key in the data dir");
        return Ok(Some(key));
    }
    if config.tls.is_some() {
        return Ok(None);
    }
    if config.acl_enabled {
        return Err(SecurityError::AclsWithoutPeerAuth);
    }
    if !beyond_loopback {
        tracing::warn!(
            "no cluster key: servers do not authenticate each other, so any process on this machine can act \
             as one (fine for trying Helios out; see docs/security.md)"
        );
        return Ok(None);
    }
    if !config.bootstrap {
        return Err(SecurityError::MissingKey(config.data_dir.display().to_string()));
    }
    let key = ClusterKey::generate().map_err(SecurityError::NoRandomness)?;
    write_key_file(&path, &key)?;
    tracing::warn!(
        path = %path.display(),
        "generated a cluster key: copy this file into every other server's --data-dir (or pass it with \
         --cluster-key-file) before starting them"
    );
    Ok(Some(key))
}

/// Plaintext is served beyond loopback only with `--insecure`. Checked before anything is
/// written to disk.
pub fn check_listen_addr(config: &ServerConfig) -> Result<(), SecurityError> {
    if !config.rpc_addr.ip().is_loopback() && !config.insecure && config.tls.is_none() {
        return Err(SecurityError::PlaintextBeyondLoopback(config.rpc_addr));
    }
    Ok(())
}

/// Reads a key file (`--cluster-key-file`, or the one in a data dir); `None` if there is none.
pub fn read_key_file(path: &Path) -> Result<Option<ClusterKey>, SecurityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => ClusterKey::parse(&text)
            .map(Some)
            .map_err(|problem| SecurityError::BadKeyFile { path: path.display().to_string(), problem }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecurityError::BadKeyFile { path: path.display().to_string(), problem: e.to_string() }),
    }
}

/// Writes a key readable by its owner only, all at once (a crash leaves no half key).
pub fn write_key_file(path: &Path, key: &ClusterKey) -> Result<(), SecurityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| SecurityError::WriteKey { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("key.tmp");
    // A stale temporary file would keep its old mode: `mode` applies only to new files.
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str, bootstrap: bool, dir: &Path) -> ServerConfig {
        let addr: std::net::SocketAddr = addr.parse().expect("addr");
        let peers = if bootstrap { vec![(1, addr.to_string())] } else { vec![] };
        ServerConfig::new(1, addr, peers, bootstrap, dir.to_path_buf()).expect("config")
    }

    #[test]
    fn loopback_runs_without_a_key_and_beyond_it_needs_insecure() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(resolve_cluster_key(&config("127.0.0.1:7001", true, dir.path())).expect("loopback").is_none());
        let open = config("0.0.0.0:7001", true, dir.path());
        assert!(matches!(resolve_cluster_key(&open), Err(SecurityError::PlaintextBeyondLoopback(_))));
    }

    #[test]
    fn a_bootstrap_server_beyond_loopback_makes_a_key_the_others_must_be_given() {
        let dir = tempfile::tempdir().expect("dir");
        let mut first = config("0.0.0.0:7001", true, dir.path());
        first.insecure = true;
        let key = resolve_cluster_key(&first).expect("generated").expect("a key");
        let path = dir.path().join(KEY_FILE_NAME);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("written").permissions().mode() & 0o777, 0o600);
        // Restarted, it reads the same key back.
        assert_eq!(resolve_cluster_key(&first).expect("read").expect("a key"), key);

        let other_dir = tempfile::tempdir().expect("dir");
        let mut second = config("0.0.0.0:7002", false, other_dir.path());
        second.insecure = true;
        let missing = resolve_cluster_key(&second).expect_err("no key");
        assert!(missing.to_string().contains(KEY_FILE_NAME), "{missing}");
        std::fs::copy(&path, other_dir.path().join(KEY_FILE_NAME)).expect("copy");
        assert_eq!(resolve_cluster_key(&second).expect("copied").expect("a key"), key);
    }

    #[test]
    fn acls_need_servers_that_authenticate_each_other() {
        let dir = tempfile::tempdir().expect("dir");
        let mut open = config("127.0.0.1:7001", true, dir.path());
        open.acl_enabled = true;
        assert!(matches!(resolve_cluster_key(&open), Err(SecurityError::AclsWithoutPeerAuth)));
        open.cluster_key = Some(ClusterKey::generate().expect("randomness"));
        assert!(resolve_cluster_key(&open).expect("keyed").is_some());
    }

    #[test]
    fn a_malformed_key_file_is_an_error_not_no_key() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(KEY_FILE_NAME), "not hex").expect("write");
        let err = resolve_cluster_key(&config("127.0.0.1:7001", true, dir.path())).expect_err("malformed");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}
