//! A task's stdout and stderr go straight into `<task dir>/<stream>.log`, opened in append mode
//! and handed to the process: no pipe through the agent, so a task keeps running (and logging)
//! while its agent is down. The agent rotates the files while it runs (copy, then truncate: the
//! task's append-mode descriptor keeps writing at the new end): at `MAX_FILE_BYTES` the content
//! moves to `<stream>.log.1` (`.1` to `.2`, ...), keeping `KEEP_ROTATED` old files.
//!
//! The task can write its own directory, so whatever the agent finds under these names may have
//! been put there by the task: a symlink to `/etc/shadow` or to a 1 GB file, a FIFO. The agent
//! opens them only with `O_NOFOLLOW` and uses them only if they are regular files, and creates
//! rotated files afresh rather than writing through what is there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
pub const KEEP_ROTATED: usize = 3;
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

pub fn log_path(task_dir: &Path, stream: &str) -> PathBuf {
    task_dir.join(format!("{stream}.log"))
}

/// Opens `path` with `options` only if it is a regular file itself, not a symlink (`O_NOFOLLOW`)
/// nor a FIFO or device (`O_NONBLOCK` keeps a FIFO from blocking the open; it changes nothing
/// for a regular file), with no other name (a hard link to a file outside the task directory).
/// Only the last component is checked: the directories above are the agent's, which a task
/// can change only while it runs as root (issue 14 makes tasks unprivileged).
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symbolic link, not a log file", path.display()),
            )
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    if std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
        let why = format!("{} has other names (a hard link), not a log file", path.display());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    Ok(file)
}

/// The file a task's stream is written to, in append mode.
pub fn open_for_task(task_dir: &Path, stream: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // The agent's and the servers' to read (a task writes through the descriptor it is given).
    open_regular(&log_path(task_dir, stream), OpenOptions::new().create(true).append(true).mode(0o640))
}

/// Rotates the task's log files that outgrew `MAX_FILE_BYTES`. Anything but a regular file
/// under a log's name is left alone (the task made it; the agent neither reads nor writes it).
pub fn rotate_if_large(task_dir: &Path) -> io::Result<()> {
    for stream in STREAMS {
        let path = log_path(task_dir, stream);
        let large = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() > MAX_FILE_BYTES);
        if large {
            rotate(&path)?;
        }
    }
    Ok(())
}

fn rotate(path: &Path) -> io::Result<()> {
    let mut current = open_regular(path, OpenOptions::new().read(true).write(true))?;
    let numbered = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
    // Removing and renaming act on the names (a symlink is moved, never followed).
    let _ = std::fs::remove_file(numbered(KEEP_ROTATED));
    for i in (1..KEEP_ROTATED).rev() {
        let _ = std::fs::rename(numbered(i), numbered(i + 1));
    }
    let _ = std::fs::remove_file(numbered(1));
    // Created new (O_EXCL: a name taken again meanwhile fails rather than being written through).
    let mut copy = OpenOptions::new().write(true).create_new(true).open(numbered(1))?;
    // Copy then truncate (not rename): the task still holds the file open.
    io::copy(&mut current, &mut copy)?;
    current.set_len(0)
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

    #[test]
    fn a_task_planted_symlink_is_neither_opened_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-file");
        std::fs::write(&host, vec![b'h'; MAX_FILE_BYTES as usize + 1]).unwrap();
        // stdout.log pointing at a large host file: not rotated (which would copy and truncate it).
        std::os::unix::fs::symlink(&host, log_path(dir.path(), "stdout")).unwrap();
        rotate_if_large(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&host).unwrap().len(), MAX_FILE_BYTES + 1);
        let err = open_for_task(dir.path(), "stdout").expect_err("a symlink is refused");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");

        // A real, large stderr.log with stderr.log.1 planted as a symlink: the copy goes to a new
        // file, and the host file is untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("stderr.log.1")).unwrap();
        std::fs::write(log_path(dir.path(), "stderr"), vec![b'e'; MAX_FILE_BYTES as usize + 1]).unwrap();
        rotate_if_large(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        let rotated = dir.path().join("stderr.log.1");
        assert!(std::fs::symlink_metadata(&rotated).unwrap().is_file());
        assert_eq!(std::fs::metadata(&rotated).unwrap().len(), MAX_FILE_BYTES + 1);
        assert_eq!(std::fs::metadata(log_path(dir.path(), "stderr")).unwrap().len(), 0);
    }

    #[test]
    fn a_hard_link_to_another_file_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("node.secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::hard_link(&secret, log_path(dir.path(), "stdout")).unwrap();
        let err = open_regular(&log_path(dir.path(), "stdout"), OpenOptions::new().read(true)).expect_err("refused");
        assert!(err.to_string().contains("hard link"), "{err}");
        open_for_task(dir.path(), "stdout").expect_err("not written either");
    }

    #[test]
    fn a_fifo_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = log_path(dir.path(), "stdout");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Without O_NONBLOCK either open would wait for the other end forever.
        open_for_task(dir.path(), "stdout").expect_err("a FIFO is not written to");
        let err = open_regular(&fifo, OpenOptions::new().read(true)).expect_err("a FIFO is not read");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
