//! The agent's secret: made at the first start, kept in the data dir, so a restarted agent is
//! recognised as the same node and no other agent can take its id while it lives. And the
//! agent's hold on its data dir, which no second agent may share.

use std::path::Path;

use crate::ClientError;

/// Takes this node's place in the data dir: a lock on `<data_dir>/helios-client-<node_id>.lock`,
/// held until the returned file is dropped or the process dies (a SIGKILLed agent leaves no
/// stale lock). Agents of different nodes may share a directory; two agents of one node would
/// each take the other's tasks for orphans and stop them.
pub fn lock_data_dir(data_dir: &Path, node_id: &str) -> Result<std::fs::File, ClientError> {
    let path = data_dir.join(format!("helios-client-{node_id}.lock"));
    let fail = |source| ClientError::DataDir { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(fail)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ClientError::DataDirInUse { dir: data_dir.to_path_buf(), node_id: node_id.to_string() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

pub fn load_or_create(data_dir: &Path, node_id: &str) -> Result<String, ClientError> {
    let path = data_dir.join(format!("helios-client-{node_id}.secret"));
    let fail = |source| ClientError::Identity { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => {
            // A secret written by an older agent with the default mode is tightened (best effort:
            // a read-only file of another user is still a usable secret).
            if let Err(e) = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)) {
                tracing::warn!(path = %path.display(), error = %e, "could not make the node secret private");
            }
            return Ok(secret.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let secret = uuid::Uuid::new_v4().to_string();
    // Write then rename: a crash never leaves a half-written secret behind. Readable by the
    // agent's user only: whoever reads it can report as this node.
    let tmp = path.with_extension("tmp");
    // A stale temporary file would keep its old mode: `mode` applies only to new files.
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
        file.write_all(secret.as_bytes()).map_err(fail)?;
    }
    std::fs::rename(&tmp, &path).map_err(fail)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_survives_a_restart_and_differs_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "1").unwrap();
        assert_eq!(load_or_create(dir.path(), "1").unwrap(), first);
        assert_ne!(load_or_create(dir.path(), "2").unwrap(), first);
    }

    #[test]
    fn only_the_agents_user_can_read_the_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), "1").unwrap();
        let path = dir.path().join("helios-client-1.secret");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // One left readable by an older agent is tightened when read.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(dir.path(), "1").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn one_agent_per_node_holds_a_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path(), "n1").expect("free");
        let second = lock_data_dir(dir.path(), "n1").expect_err("held");
        assert!(matches!(second, ClientError::DataDirInUse { dir: ref held, .. } if held == dir.path()), "{second}");
        let _other_node = lock_data_dir(dir.path(), "n2").expect("another node shares the directory");
        drop(first);
        lock_data_dir(dir.path(), "n1").expect("free again once the first is gone");
    }
}
