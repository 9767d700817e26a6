//! A container's output, copied into the task's log files (the same rotated files as an exec
//! task's, `logs.rs`).
//!
//! The engine stamps every line. The stamp of the last line written is kept in the task's
//! directory (`LOG_CURSOR`), so an agent that restarts and adopts the container resumes right
//! after it: no line written twice, none skipped, however long the agent was away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

/// The engine's stamp of the last line written, in the task's directory.
pub const LOG_CURSOR: &str = "docker-log.cursor";
/// The cursor file is overwritten in place with the stamp padded to this width (a shorter stamp
/// must not leave the end of a longer one behind).
const CURSOR_WIDTH: usize = 64;

/// Where copying stopped: the engine's stamp of a line, as (seconds, nanoseconds).
pub type Cursor = (u64, u32);

/// The cursor left by an earlier agent in `dir`, if any.
pub fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = std::fs::read_to_string(dir.join(LOG_CURSOR)).ok()?;
    helios_core::time::parse_rfc3339_nanos(text.trim())
}

/// Appends the container's stdout and stderr to the task's log files until the container stops,
/// rotating them as the exec driver's are; with `resume`, skips the lines up to that cursor.
pub async fn copy(docker: Docker, name: String, dir: PathBuf, resume: Option<Cursor>) {
    let since = resume.map_or(0, |(secs, _)| i32::try_from(secs).unwrap_or(i32::MAX));
    let options =
        LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).timestamps(true).since(since).build();
    let opened = (
        crate::logs::open_for_task(&dir, "stdout"),
        crate::logs::open_for_task(&dir, "stderr"),
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOG_CURSOR)),
    );
    let (Ok(mut out), Ok(mut err), Ok(cursor)) = opened else {
        tracing::warn!(dir = %dir.display(), "cannot open the task's log files");
        return;
    };
    let mut stream = docker.logs(&name, Some(options));
    let mut last_rotation = tokio::time::Instant::now();
    while let Some(Ok(chunk)) = stream.next().await {
        let (file, bytes): (&mut File, _) = match chunk {
            LogOutput::StdErr { message } => (&mut err, message),
            other => (&mut out, other.into_bytes()),
        };
        let (stamp, line) = split_stamp(&bytes);
        let at = stamp.and_then(|s| helios_core::time::parse_rfc3339_nanos(s).map(|c| (s, c)));
        if let (Some(resume), Some((_, at))) = (resume, at) {
            if at <= resume {
                continue; // written before the agent restarted
            }
        }
        if let Err(e) = file.write_all(line) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the task's log");
        }
        if let Some((text, _)) = at {
            let _ = cursor.write_at(format!("{text:<CURSOR_WIDTH$}").as_bytes(), 0);
        }
        if last_rotation.elapsed() > Duration::from_secs(2) {
            last_rotation = tokio::time::Instant::now();
            if let Err(e) = crate::logs::rotate_if_large(&dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "log rotation failed");
            }
        }
    }
}

/// `<stamp> <line>` as the engine sends it with timestamps: the stamp (if the chunk has one) and
/// the line as the container wrote it.
fn split_stamp(chunk: &[u8]) -> (Option<&str>, &[u8]) {
    match chunk.iter().position(|b| *b == b' ') {
        Some(space) => match std::str::from_utf8(&chunk[..space]) {
            Ok(stamp) if helios_core::time::parse_rfc3339_nanos(stamp).is_some() => (Some(stamp), &chunk[space + 1..]),
            _ => (None, chunk),
        },
        None => (None, chunk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_chunk_splits_into_its_stamp_and_the_line_as_written() {
        let (stamp, line) = split_stamp(b"2026-11-21T05:55:03.123456789Z hello world\n");
        assert_eq!(stamp, Some("2026-11-21T05:55:03.123456789Z"));
        assert_eq!(line, b"hello world\n");
        assert_eq!(split_stamp(b"no stamp here\n"), (None, &b"no stamp here\n"[..]));
        assert_eq!(split_stamp(b"nospace"), (None, &b"nospace"[..]));
    }

    #[test]
    fn the_cursor_reads_back_after_a_shorter_stamp_overwrote_a_longer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.path().join(LOG_CURSOR)).unwrap();
        file.write_at(format!("{:<CURSOR_WIDTH$}", "2026-11-21T05:55:03.123456789Z").as_bytes(), 0).unwrap();
        file.write_at(format!("{:<CURSOR_WIDTH$}", "2026-11-21T05:55:04Z").as_bytes(), 0).unwrap();
        assert_eq!(read_cursor(dir.path()), Some((1_795_240_504, 0)));
        assert_eq!(read_cursor(&dir.path().join("missing")), None);
    }
}
