//! A task's stdout and stderr go straight into `<task dir>/<stream>.log`, opened in append mode
//! and handed to the process: no pipe through the agent, so a task keeps running (and logging)
//! while its agent is down. The agent rotates the files while it runs (copy, then truncate: the
//! task's append-mode descriptor keeps writing at the new end): at `MAX_FILE_BYTES` the content
//! moves to `<stream>.log.1` (`.1` to `.2`, ...), keeping `KEEP_ROTATED` old files.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
pub const KEEP_ROTATED: usize = 3;
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

pub fn log_path(task_dir: &Path, stream: &str) -> PathBuf {
    task_dir.join(format!("{stream}.log"))
}

/// The file a task's stream is written to, in append mode.
pub fn open_for_task(task_dir: &Path, stream: &str) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(log_path(task_dir, stream))
}

/// Rotates the task's log files that outgrew `MAX_FILE_BYTES`.
pub fn rotate_if_large(task_dir: &Path) -> std::io::Result<()> {
    for stream in STREAMS {
        let path = log_path(task_dir, stream);
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > MAX_FILE_BYTES {
            rotate(&path)?;
        }
    }
    Ok(())
}

fn rotate(path: &Path) -> std::io::Result<()> {
    let numbered = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
    let _ = std::fs::remove_file(numbered(KEEP_ROTATED));
    for i in (1..KEEP_ROTATED).rev() {
        let _ = std::fs::rename(numbered(i), numbered(i + 1));
    }
    // Copy then truncate (not rename): the task still holds the file open.
    std::fs::copy(path, numbered(1))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn logs_rotate_and_keep_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        // The writer keeps one append-mode descriptor, as a task does.
        let mut out = open_for_task(dir.path(), "stdout").unwrap();
        let chunk = vec![b'x'; MAX_FILE_BYTES as usize + 1];
        for _ in 0..(KEEP_ROTATED + 2) {
            out.write_all(&chunk).unwrap();
            rotate_if_large(dir.path()).unwrap();
        }
        out.write_all(b"tail\n").unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["stdout.log", "stdout.log.1", "stdout.log.2", "stdout.log.3"]);
        // After a truncation the descriptor writes at the start, not at a hole.
        assert_eq!(std::fs::read(dir.path().join("stdout.log")).unwrap(), b"tail\n");
    }
}
