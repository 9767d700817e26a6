//! A container's output, copied into the task's log files (the same rotated files as an exec
//! task's, `logs.rs`).
//!
//! The engine stamps every chunk it sends: a line, or a 16 KB piece of a longer one (each piece
//! of a line carries the line's stamp). Where copying got to is kept in the task's directory
//! (`LOG_CURSOR`): the last stamp written and how many chunks in a row carried it. An agent that
//! restarts and adopts the container, or a copier whose stream broke, asks the engine for the
//! output again from a little before that stamp and skips exactly what was written: the chunks
//! before the stamp and the first `count` chunks with it. Everything after is written, whatever
//! its stamp (stdout and stderr are stamped apart, so stamps are not strictly in order).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

/// Where copying got to, in the task's directory.
pub const LOG_CURSOR: &str = "docker-log.cursor";
/// The cursor file is overwritten in place with its text padded to this width (a shorter text
/// must not leave the end of a longer one behind).
const CURSOR_WIDTH: usize = 64;
/// Output is asked for again from this long before the cursor's stamp: a chunk stamped a little
/// earlier may have been written after it.
const RESUME_SLACK_SECS: u64 = 5;

/// The last stamp written, as (seconds, nanoseconds), and how many chunks in a row carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub stamp: (u64, u32),
    pub count: u32,
}

/// The cursor left by an earlier agent in `dir`. Without one, but with output already copied (an
/// older agent), the log files' modification time stands in: at worst a second of output is
/// copied twice.
pub fn read_cursor(dir: &Path) -> Option<Cursor> {
    if let Ok(text) = std::fs::read_to_string(dir.join(LOG_CURSOR)) {
        let mut words = text.split_whitespace();
        let stamp = helios_core::time::parse_rfc3339_nanos(words.next()?)?;
        let count = words.next().and_then(|c| c.parse().ok()).unwrap_or(1);
        return Some(Cursor { stamp, count });
    }
    let newest = crate::logs::STREAMS
        .iter()
        .filter_map(|s| std::fs::metadata(crate::logs::log_path(dir, s)).ok())
        .filter(|m| m.len() > 0)
        .filter_map(|m| m.modified().ok())
        .max()?;
    let secs = newest.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Cursor { stamp: (secs, 0), count: 0 })
}

/// Skips what an earlier copier wrote: the chunks up to its cursor, in the order the engine
/// sends them again.
struct Skipper {
    resume: Option<Cursor>,
    seen_at_stamp: u32,
}

impl Skipper {
    /// True when the chunk stamped `at` was written before.
    fn written_before(&mut self, at: Option<(u64, u32)>) -> bool {
        let (Some(cursor), Some(at)) = (self.resume, at) else { return false };
        if at < cursor.stamp {
            return true;
        }
        if at == cursor.stamp && self.seen_at_stamp < cursor.count {
            self.seen_at_stamp += 1;
            return true;
        }
        // Past the cursor: from here on everything is new.
        self.resume = None;
        false
    }
}

/// Appends the container's stdout and stderr to the task's log files until the container stops,
/// rotating them as the exec driver's are; with `resume`, after what was written up to there.
/// A stream that breaks while the container runs (the engine restarted) is opened again.
pub async fn copy(docker: Docker, name: String, dir: PathBuf, mut resume: Option<Cursor>) {
    let opened = (
        crate::logs::open_for_task(&dir, "stdout"),
        crate::logs::open_for_task(&dir, "stderr"),
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOG_CURSOR)),
    );
    let (Ok(mut out), Ok(mut err), Ok(cursor_file)) = opened else {
        tracing::warn!(dir = %dir.display(), "cannot open the task's log files");
        return;
    };
    let mut last_rotation = tokio::time::Instant::now();
    loop {
        let since = resume.map_or(0, |c| c.stamp.0.saturating_sub(RESUME_SLACK_SECS));
        let since = i32::try_from(since).unwrap_or(i32::MAX);
        let options =
            LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).timestamps(true).since(since).build();
        let mut stream = docker.logs(&name, Some(options));
        let mut skipper = Skipper { resume, seen_at_stamp: 0 };
        while let Some(Ok(chunk)) = stream.next().await {
            let (file, bytes): (&mut File, _) = match chunk {
                LogOutput::StdErr { message } => (&mut err, message),
                other => (&mut out, other.into_bytes()),
            };
            let (stamp, line) = split_stamp(&bytes);
            let at = stamp.and_then(helios_core::time::parse_rfc3339_nanos);
            if skipper.written_before(at) {
                continue;
            }
            if let Err(e) = file.write_all(line) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write the task's log");
            }
            if let (Some(text), Some(at)) = (stamp, at) {
                let count = match resume {
                    Some(c) if c.stamp == at => c.count + 1,
                    _ => 1,
                };
                resume = Some(Cursor { stamp: at, count });
                let _ = cursor_file.write_at(format!("{:<CURSOR_WIDTH$}", format!("{text} {count}")).as_bytes(), 0);
            }
            if last_rotation.elapsed() > Duration::from_secs(2) {
                last_rotation = tokio::time::Instant::now();
                if let Err(e) = crate::logs::rotate_if_large(&dir) {
                    tracing::warn!(error = %e, dir = %dir.display(), "log rotation failed");
                }
            }
        }
        // The stream ends with the container; if the container still runs, it broke.
        let running = docker.inspect_container(&name, None).await.ok().and_then(|c| c.state?.running);
        if running != Some(true) {
            return;
        }
        tracing::warn!(container = %name, "the container's log stream broke; opening it again");
        tokio::time::sleep(Duration::from_secs(1)).await;
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
    fn the_cursor_reads_back_after_a_shorter_text_overwrote_a_longer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.path().join(LOG_CURSOR)).unwrap();
        file.write_at(format!("{:<CURSOR_WIDTH$}", "2026-11-21T05:55:03.123456789Z 12").as_bytes(), 0).unwrap();
        file.write_at(format!("{:<CURSOR_WIDTH$}", "2026-11-21T05:55:04Z 1").as_bytes(), 0).unwrap();
        assert_eq!(read_cursor(dir.path()), Some(Cursor { stamp: (1_795_240_504, 0), count: 1 }));
        assert_eq!(read_cursor(&dir.path().join("missing")), None);
    }

    #[test]
    fn without_a_cursor_copied_output_resumes_from_the_logs_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cursor(dir.path()), None, "nothing copied yet");
        std::fs::write(crate::logs::log_path(dir.path(), "stdout"), "old\n").unwrap();
        let cursor = read_cursor(dir.path()).expect("a cursor from the mtime");
        assert_eq!(cursor.count, 0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(cursor.stamp.0) < 60, "{cursor:?}");
    }

    #[test]
    fn only_the_prefix_up_to_the_cursor_is_skipped() {
        // Written before: ..., (10,0), and two pieces of a long line stamped (12,0).
        let mut skip = Skipper { resume: Some(Cursor { stamp: (12, 0), count: 2 }), seen_at_stamp: 0 };
        let replay = [(9, 0), (10, 0), (12, 0), (12, 0), (12, 0), (11, 0), (13, 0)];
        let written: Vec<bool> = replay.iter().map(|at| !skip.written_before(Some(*at))).collect();
        // The third piece of the long line is new, and so is everything after it, even a chunk
        // stamped earlier (the other stream's).
        assert_eq!(written, [false, false, false, false, true, true, true]);
        let mut fresh = Skipper { resume: None, seen_at_stamp: 0 };
        assert!(!fresh.written_before(Some((1, 0))));
        let mut unstamped = Skipper { resume: Some(Cursor { stamp: (12, 0), count: 1 }), seen_at_stamp: 0 };
        assert!(!unstamped.written_before(None), "a chunk without a stamp is never skipped");
    }
}
