//! A container's output, copied into the task's log files (the same rotated files as an exec
//! task's, `logs.rs`).
//!
//! The engine stamps every chunk it sends: a line, or a 16 KB piece of a longer one (each piece
//! of a line carries the line's stamp). Where copying got to is kept in the task's directory
//! (`LOG_CURSOR`): the last chunk's stamp and its place in the run of chunks in a row with that
//! stamp. An agent that restarts and adopts the container, or a copier whose stream broke, asks
//! the engine for the output again from a little before that stamp, replays it in the same
//! order, and skips up to and including that chunk. Everything after it is written, whatever
//! its stamp (stdout and stderr are stamped apart, so stamps are not strictly in order).

use std::collections::HashMap;
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

/// The last chunk written: its stamp, as (seconds, nanoseconds), and its place in the run of
/// chunks in a row with that stamp (1 for the first).
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

/// How many chunks of each recent stamp the output has had so far: a chunk's place among those
/// with its stamp identifies it (the pieces of a long line share one stamp, and may be
/// interleaved with the other stream's chunks).
#[derive(Default)]
struct Places {
    seen: HashMap<(u64, u32), u32>,
}

impl Places {
    fn place(&mut self, at: (u64, u32)) -> Cursor {
        if self.seen.len() > 4096 {
            let floor = at.0.saturating_sub(4 * RESUME_SLACK_SECS);
            self.seen.retain(|stamp, _| stamp.0 >= floor);
        }
        let count = self.seen.entry(at).or_default();
        *count += 1;
        Cursor { stamp: at, count: *count }
    }
}

/// Whether a replayed chunk was written before: everything up to and including the cursor's
/// chunk was (the engine replays in the order it first sent). Should that chunk never come (the
/// engine no longer has it), a chunk stamped well after it ends the skipping.
fn written_before(skipping: &mut Option<Cursor>, chunk: Cursor) -> bool {
    let Some(cursor) = *skipping else { return false };
    if chunk == cursor {
        *skipping = None;
        return true;
    }
    if chunk.stamp.0 > cursor.stamp.0 + RESUME_SLACK_SECS {
        *skipping = None;
        return false;
    }
    true
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
    let mut follow = true;
    loop {
        let since = resume.map_or(0, |c| c.stamp.0.saturating_sub(RESUME_SLACK_SECS));
        let since = i32::try_from(since).unwrap_or(i32::MAX);
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(since)
            .build();
        let mut stream = docker.logs(&name, Some(options));
        // A fresh count per read: the engine replays from `since`, which holds every chunk with
        // the cursor's stamp.
        let (mut places, mut skipping) = (Places::default(), resume);
        let mut broke = false;
        while let Some(next) = stream.next().await {
            let Ok(chunk) = next else {
                broke = true;
                break;
            };
            let (file, bytes): (&mut File, _) = match chunk {
                LogOutput::StdErr { message } => (&mut err, message),
                other => (&mut out, other.into_bytes()),
            };
            let (stamp, line) = split_stamp(&bytes);
            let at = stamp.and_then(helios_core::time::parse_rfc3339_nanos);
            let place = at.map(|at| places.place(at));
            if place.is_some_and(|p| written_before(&mut skipping, p)) {
                continue;
            }
            if let Err(e) = file.write_all(line) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write the task's log");
            }
            if let (Some(text), Some(place)) = (stamp, place) {
                resume = Some(place);
                let line = format!("{text} {}", place.count);
                let _ = cursor_file.write_at(format!("{line:<CURSOR_WIDTH$}").as_bytes(), 0);
            }
            if last_rotation.elapsed() > Duration::from_secs(2) {
                last_rotation = tokio::time::Instant::now();
                if let Err(e) = crate::logs::rotate_if_large(&dir) {
                    tracing::warn!(error = %e, dir = %dir.display(), "log rotation failed");
                }
            }
        }
        if !follow {
            return; // the last read after the container stopped
        }
        // The stream ends with the container. If the engine cannot say whether it still runs
        // (it restarted), ask again; if it stopped while the stream was broken, read what it
        // wrote meanwhile once more, without following.
        loop {
            match docker.inspect_container(&name, None).await {
                Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => break,
                Ok(_) if broke => {
                    follow = false;
                    break;
                }
                Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return,
                Err(e) => tracing::warn!(container = %name, error = %e, "the engine does not answer; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if follow {
            tracing::warn!(container = %name, "the container's log stream broke; opening it again");
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

    fn replay(cursor: Cursor, stamps: &[u64]) -> Vec<bool> {
        let (mut places, mut skipping) = (Places::default(), Some(cursor));
        stamps.iter().map(|s| !written_before(&mut skipping, places.place((*s, 0)))).collect()
    }

    #[test]
    fn the_replay_skips_up_to_and_including_the_cursors_chunk() {
        // Written: ..., 10, and two pieces of a long line stamped 12; the third piece is new, and
        // so is everything after it, even a chunk stamped earlier (the other stream's).
        let cursor = Cursor { stamp: (12, 0), count: 2 };
        assert_eq!(replay(cursor, &[9, 10, 12, 12, 12, 11, 13]), [false, false, false, false, true, true, true]);
        // Written up to O(12); E(11) came later from the other stream and was not written yet.
        assert_eq!(replay(Cursor { stamp: (12, 0), count: 1 }, &[10, 12, 11, 13]), [false, false, true, true]);
        // A(12) B(11) C(12), C written last: it is the second chunk stamped 12.
        assert_eq!(replay(Cursor { stamp: (12, 0), count: 2 }, &[12, 11, 12, 14]), [false, false, false, true]);
        // A chunk stamped after the cursor's may come before it (the other stream's): skipped.
        assert_eq!(replay(Cursor { stamp: (12, 0), count: 1 }, &[13, 12, 14]), [false, false, true]);
        // The cursor's chunk never comes: a chunk well after it ends the skipping.
        assert_eq!(replay(Cursor { stamp: (12, 0), count: 3 }, &[11, 12, 18, 12]), [false, false, true, true]);
        let mut places = Places::default();
        assert!(!written_before(&mut None, places.place((1, 0))), "without a cursor nothing is skipped");
    }
}
