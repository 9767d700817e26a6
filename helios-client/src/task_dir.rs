//! A task's directories. The agent's part (logs, pid and exit files, markers) is owned by root
//! and not writable by the task, so a task cannot plant links where the agent reads or writes;
//! the task writes only in its own `local/`, `secrets/` and `tmp/`, and the allocation's shared
//! `.alloc/`, much as in Nomad's layout:
//!
//! ```text
//! <data dir>/allocs/<alloc id>/          root 0711
//!     .alloc/                             shared by the group's tasks: 1777 (NOMAD_ALLOC_DIR;
//!                                         Nomad's `alloc/`, but task names cannot start with '.')
//!     <task>/                             root 0711: stdout.log, stderr.log, pid, exit, done
//!         local/                          the task's user, 0755: its working dir (NOMAD_TASK_DIR)
//!         secrets/                        the task's user, 0700 (NOMAD_SECRETS_DIR)
//!         tmp/                            the task's user, 0700 (TMPDIR)
//! ```

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Gid, Uid};

/// The allocation's shared directory, by its name in the allocation's.
pub const SHARED: &str = ".alloc";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    /// The allocation's directory.
    pub alloc: PathBuf,
    /// The task's own (agent-owned) directory.
    pub dir: PathBuf,
}

impl TaskDir {
    pub fn new(alloc: &Path, task: &str) -> TaskDir {
        TaskDir { alloc: alloc.to_path_buf(), dir: alloc.join(task) }
    }

    pub fn shared(&self) -> PathBuf {
        self.alloc.join(SHARED)
    }

    /// The task's environment for the launcher (`sandbox::write_env_file`), root's alone.
    pub fn env_file(&self) -> PathBuf {
        self.dir.join("env")
    }

    pub fn local(&self) -> PathBuf {
        self.dir.join("local")
    }

    pub fn secrets(&self) -> PathBuf {
        self.dir.join("secrets")
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where the launcher records how an exec task ended.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit")
    }

    /// Creates the directories, the task's own given to `owner` (None: the agent's user).
    pub fn build(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        let mode = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        for (path, bits) in [(&self.alloc, 0o711), (&self.dir, 0o711)] {
            std::fs::create_dir_all(path)?;
            mode(path, bits)?;
        }
        let shared = self.shared();
        std::fs::create_dir_all(&shared)?;
        mode(&shared, 0o1777)?;
        for (path, bits) in [(self.local(), 0o755), (self.secrets(), 0o700), (self.tmp(), 0o700)] {
            // A directory (not a link a previous run of the task left: it could not write here).
            std::fs::create_dir_all(&path)?;
            if let Some((uid, gid)) = owner {
                chown(&path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io::Error::from)?;
            }
            mode(&path, bits)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_task_owns_only_its_own_directories() {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = TaskDir::new(&root.path().join("a1"), "web");
        dirs.build(Some((65534, 65534))).expect("built");
        let meta = |p: &Path| std::fs::metadata(p).expect("exists");
        for agents in [&dirs.alloc, &dirs.dir] {
            assert_eq!((meta(agents).uid(), meta(agents).mode() & 0o7777), (0, 0o711), "{}", agents.display());
        }
        for tasks in [dirs.local(), dirs.secrets(), dirs.tmp()] {
            assert_eq!(meta(&tasks).uid(), 65534, "{}", tasks.display());
        }
        assert_eq!(meta(&dirs.shared()).mode() & 0o7777, 0o1777);
        dirs.build(Some((65534, 65534))).expect("building again is harmless");
    }
}
