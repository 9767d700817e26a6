//! The agent's secret: made at the first start, kept in the data dir, so a restarted agent is
//! recognised as the same node and no other agent can take its id while it lives.

use std::path::Path;

use crate::ClientError;

pub fn load_or_create(data_dir: &Path, node_id: &str) -> Result<String, ClientError> {
    let path = data_dir.join(format!("helios-client-{node_id}.secret"));
    let fail = |source| ClientError::Identity { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let secret = uuid::Uuid::new_v4().to_string();
    // Write then rename: a crash never leaves a half-written secret behind.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &secret).map_err(fail)?;
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
}
