//! A task's stdout or stderr, written to `<task dir>/<stream>.log` and rotated: at
//! `MAX_FILE_BYTES` the file moves to `<stream>.log.1` (and `.1` to `.2`, ...), keeping
//! `KEEP_ROTATED` old files, so a chatty task cannot fill the disk.

use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
pub const KEEP_ROTATED: usize = 3;

pub fn log_path(task_dir: &Path, stream: &str) -> PathBuf {
    task_dir.join(format!("{stream}.log"))
}

/// Copies `source` into the stream's log file until it closes.
pub async fn copy_to_log(
    mut source: impl AsyncRead + Unpin,
    task_dir: PathBuf,
    stream: &'static str,
) -> std::io::Result<()> {
    let path = log_path(&task_dir, stream);
    let mut file = open_append(&path).await?;
    let mut written = file.metadata().await?.len();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            file.flush().await?;
            return Ok(());
        }
        if written + n as u64 > MAX_FILE_BYTES && written > 0 {
            file.flush().await?;
            rotate(&path).await?;
            file = open_append(&path).await?;
            written = 0;
        }
        file.write_all(&buf[..n]).await?;
        written += n as u64;
    }
}

async fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path).await
}

async fn rotate(path: &Path) -> std::io::Result<()> {
    let numbered = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
    let _ = tokio::fs::remove_file(numbered(KEEP_ROTATED)).await;
    for i in (1..KEEP_ROTATED).rev() {
        let _ = tokio::fs::rename(numbered(i), numbered(i + 1)).await;
    }
    tokio::fs::rename(path, numbered(1)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_rotate_and_keep_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = vec![b'x'; (MAX_FILE_BYTES / 2) as usize + 1];
        for _ in 0..(KEEP_ROTATED + 3) {
            copy_to_log(chunk.as_slice(), dir.path().to_path_buf(), "stdout").await.unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["stdout.log", "stdout.log.1", "stdout.log.2", "stdout.log.3"]);
        for name in names {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= MAX_FILE_BYTES);
        }
    }
}
