//! The agent's gRPC service: task logs, read from the log files the runner writes.
//!
//! Only the task's own `<stream>.log`, and only if it is a regular file (`logs::open_regular`: a
//! task could leave a symlink to any file there). Read from disk `CHUNK` bytes at a time, so
//! serving a 1 GB log takes no more memory than a small one; `tail` finds its start by reading
//! backwards the same way.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use helios_api::pb;
use helios_api::pb::client_service_server::ClientService;
use tonic::{Request, Response, Status};

use crate::logs::{log_path, open_regular};

pub struct LogService {
    pub allocs_dir: PathBuf,
    /// The node's secret: servers prove with it that a request is theirs (`node_proof`).
    pub secret: String,
}

const CHUNK: usize = 64 * 1024;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Where the last `lines` lines of the file's first `len` bytes start, reading backwards `chunk`
/// bytes at a time (a trailing newline ends the last line; it does not start another).
fn tail_start(file: &std::fs::File, len: u64, lines: u32, chunk: usize) -> std::io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut seen = 0;
    let mut end = len;
    let mut buf = vec![0u8; chunk];
    while end > 0 {
        let start = end.saturating_sub(chunk as u64);
        let piece = &mut buf[..usize::try_from(end - start).unwrap_or(chunk)];
        file.read_exact_at(piece, start)?;
        for (i, b) in piece.iter().enumerate().rev() {
            let at = start + i as u64;
            if *b == b'\n' && at + 1 != len {
                seen += 1;
                if seen == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Where a stream of one log file is.
struct Reading {
    path: PathBuf,
    task_dir: PathBuf,
    /// The log as opened (checked to be a regular file), read until it has nothing more; then,
    /// following, the name is opened again, for a file that was not there yet or was replaced.
    /// Rotation truncates the same file, which this handle sees.
    file: Option<std::fs::File>,
    offset: u64,
    /// Without follow: the file's length when asked (what is written later is not sent).
    stop_at: Option<u64>,
    ended: bool,
}

impl Reading {
    /// The next chunk: `None` when the stream ends (without follow: at `stop_at`; following: once
    /// the task is done for good and nothing more arrives).
    async fn next(&mut self) -> Option<Result<Vec<u8>, Status>> {
        if self.ended {
            return None;
        }
        loop {
            match self.read_chunk().await {
                Ok(Some(data)) => return Some(Ok(data)),
                Ok(None) => {}
                Err(status) => {
                    self.ended = true;
                    return Some(Err(status));
                }
            }
            if self.stop_at.is_some() || self.task_dir.join(crate::runner::DONE_MARKER).exists() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Up to `CHUNK` bytes from the offset.
    async fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, Status> {
        let (path, file, offset, stop_at) = (self.path.clone(), self.file.take(), self.offset, self.stop_at);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Option<std::fs::File>, u64, Vec<u8>)> {
            if let Some(file) = file {
                let (offset, data) = read_at(&file, offset, stop_at)?;
                if !data.is_empty() || stop_at.is_some() {
                    return Ok((Some(file), offset, data));
                }
            }
            let file = match open_regular(&path, OpenOptions::new().read(true)) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, offset, Vec::new())),
                Err(e) => return Err(e),
            };
            let (offset, data) = read_at(&file, offset, stop_at)?;
            Ok((Some(file), offset, data))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let (file, offset, data) = read;
        self.file = file;
        self.offset = offset + data.len() as u64;
        Ok((!data.is_empty()).then_some(data))
    }
}

/// Up to `CHUNK` bytes of `file` from `offset` (not beyond `stop_at`), and the offset they were
/// read from: 0 when the file is shorter than the offset (rotated: it starts over).
fn read_at(file: &std::fs::File, offset: u64, stop_at: Option<u64>) -> std::io::Result<(u64, Vec<u8>)> {
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    let end = stop_at.map_or(len, |stop| stop.min(len));
    let mut buf = vec![0u8; usize::try_from(end.saturating_sub(offset)).unwrap_or(CHUNK).min(CHUNK)];
    let n = file.read_at(&mut buf, offset)?;
    buf.truncate(n);
    Ok((offset, buf))
}

/// Opens the log for a first look: the file, its length, and where a tail starts. A log that is
/// not there yet is empty.
fn open_log(path: &Path, tail: Option<u32>) -> Result<(Option<std::fs::File>, u64, u64), Status> {
    match open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => {
            let len = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
            let start = match tail {
                Some(lines) => tail_start(&file, len, lines, CHUNK).map_err(|e| Status::internal(e.to_string()))?,
                None => 0,
            };
            Ok((Some(file), len, start))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, 0, 0)),
        Err(e) => Err(Status::failed_precondition(e.to_string())),
    }
}

#[tonic::async_trait]
impl ClientService for LogService {
    type TaskLogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

    async fn task_logs(&self, request: Request<pb::TaskLogsRequest>) -> Result<Response<Self::TaskLogsStream>, Status> {
        let req = request.into_inner();
        // Servers only (a task on this machine reaches this port too), with TLS or without.
        let now = crate::runner::now().as_millis();
        helios_api::node_proof::check(&self.secret, &req.alloc_id, &req.task, req.proof_time_ms, &req.proof, now)
            .map_err(|why| {
                Status::permission_denied(format!("only the cluster's servers may read logs here: {why}"))
            })?;
        if !valid_id(&req.alloc_id) {
            return Err(Status::invalid_argument("alloc_id: must be an allocation id"));
        }
        let alloc_dir = self.allocs_dir.join(&req.alloc_id);
        let mut tasks: Vec<String> = match std::fs::read_dir(&alloc_dir) {
            // Each task is a directory (beside files of the allocation's own, like `.node`);
            // a symlink is not one (the entry's own type, not its target's).
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                // Not a task (names cannot start with a dot): the shared `.alloc`.
                .filter(|name| !name.starts_with('.'))
                .collect(),
            Err(_) => return Err(Status::not_found(format!("allocation {} has no logs on this node", req.alloc_id))),
        };
        tasks.sort();
        let task = if req.task.is_empty() {
            match tasks.as_slice() {
                [only] => only.clone(),
                _ => return Err(Status::invalid_argument(format!("task: name one of {}", tasks.join(", ")))),
            }
        } else if tasks.contains(&req.task) {
            req.task.clone()
        } else {
            return Err(Status::not_found(format!("task {:?} not found; tasks: {}", req.task, tasks.join(", "))));
        };
        let task_dir = alloc_dir.join(&task);
        let path = log_path(&task_dir, if req.stderr { "stderr" } else { "stdout" });
        let (first_path, tail) = (path.clone(), req.tail);
        let (file, len, start) = tokio::task::spawn_blocking(move || open_log(&first_path, tail))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        // Following goes on from exactly what was there when asked, not from a later size.
        let stop_at = (!req.follow).then_some(len);
        let reading = Reading { path, task_dir, file, offset: start, stop_at, ended: false };
        let stream = futures::stream::unfold(reading, |mut reading| async move {
            let chunk = reading.next().await?;
            if let Ok(data) = &chunk {
                metrics::counter!("helios_agent_log_bytes_sent_total").increment(data.len() as u64);
            }
            Some((chunk.map(|data| pb::LogChunk { data }), reading))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    const ALLOC: &str = "0123-abcd";

    const SECRET: &str = "node-secret";

    fn service_on(allocs_dir: &std::path::Path) -> LogService {
        LogService { allocs_dir: allocs_dir.to_path_buf(), secret: SECRET.into() }
    }

    /// `request` with a server's proof.
    fn proven(mut request: pb::TaskLogsRequest) -> pb::TaskLogsRequest {
        request.proof_time_ms = crate::runner::now().as_millis();
        request.proof = helios_api::node_proof::prove(SECRET, &request.alloc_id, &request.task, request.proof_time_ms);
        request
    }

    #[tokio::test]
    async fn only_a_request_proven_with_the_nodes_secret_is_answered() {
        let (dir, alloc, task_dir) = one_task();
        std::fs::write(log_path(&task_dir, "stdout"), "private\n").unwrap();
        let service = service_on(dir.path());
        let bare = pb::TaskLogsRequest { alloc_id: alloc.into(), ..Default::default() };
        let mut forged = proven(bare.clone());
        forged.proof = helios_api::node_proof::prove("guess", alloc, "", forged.proof_time_ms);
        let mut other_task = proven(bare.clone());
        other_task.task = "web".into();
        for request in [bare.clone(), forged, other_task] {
            let refused = service.task_logs(Request::new(request)).await.err().expect("refused");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        }
        assert!(service.task_logs(Request::new(proven(bare))).await.is_ok());
    }

    /// An allocations dir holding allocation `ALLOC` with one task, `web`, whose directory it returns.
    fn one_task() -> (tempfile::TempDir, &'static str, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let task_dir = dir.path().join(ALLOC).join("web");
        std::fs::create_dir_all(&task_dir).unwrap();
        (dir, ALLOC, task_dir)
    }

    #[tokio::test]
    async fn the_only_task_is_the_only_directory() {
        let (dir, alloc, task_dir) = one_task();
        std::fs::write(dir.path().join(alloc).join(".node"), "n1").unwrap();
        std::fs::write(log_path(&task_dir, "stdout"), "hello\n").unwrap();
        let service = service_on(dir.path());
        let request = proven(pb::TaskLogsRequest { alloc_id: alloc.into(), ..Default::default() });
        let stream = service.task_logs(Request::new(request)).await.expect("the only task's logs").into_inner();
        let chunks: Vec<_> = stream.collect().await;
        let data: Vec<u8> = chunks.into_iter().flat_map(|c| c.expect("a chunk").data).collect();
        assert_eq!(data, b"hello\n");
    }

    /// The last `lines` lines of `data`, read back through `tail_start` in pieces of `chunk` bytes.
    fn tail(data: &[u8], lines: u32, chunk: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let start = tail_start(&file, data.len() as u64, lines, chunk).unwrap();
        data[usize::try_from(start).unwrap()..].to_vec()
    }

    #[test]
    fn tail_keeps_the_last_lines_whatever_the_piece_size() {
        for chunk in [1, 2, 3, 64 * 1024] {
            assert_eq!(tail(b"a\nb\nc\n", 2, chunk), b"b\nc\n");
            assert_eq!(tail(b"a\nb\nc", 2, chunk), b"b\nc");
            assert_eq!(tail(b"a\n", 5, chunk), b"a\n");
            assert_eq!(tail(b"a\nb\n", 0, chunk), b"");
            assert_eq!(tail(b"one\ntwo\nthree\n", 1, chunk), b"three\n");
            assert_eq!(tail(b"", 3, chunk), b"");
        }
    }

    async fn logs_of(service: &LogService, alloc: &str, follow: bool) -> Result<Vec<u8>, tonic::Status> {
        let request = proven(pb::TaskLogsRequest { alloc_id: alloc.into(), follow, ..Default::default() });
        let stream = service.task_logs(Request::new(request)).await?.into_inner();
        let mut data = Vec::new();
        for chunk in stream.collect::<Vec<_>>().await {
            data.extend(chunk?.data);
        }
        Ok(data)
    }

    #[tokio::test]
    async fn a_log_that_is_a_symlink_is_refused_and_its_target_never_served() {
        let (dir, alloc, task_dir) = one_task();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "root:secret-hash\n").unwrap();
        std::os::unix::fs::symlink(&secret, log_path(&task_dir, "stdout")).unwrap();
        let service = service_on(dir.path());
        let refused = logs_of(&service, alloc, false).await.expect_err("a symlinked log");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("is a symbolic link"), "{refused:?}");
        assert!(!refused.message().contains("secret-hash"));
        // Nor when it appears while the log is followed: the stream ends with the error.
        std::fs::remove_file(log_path(&task_dir, "stdout")).unwrap();
        std::fs::write(log_path(&task_dir, "stdout"), "first\n").unwrap();
        let request = proven(pb::TaskLogsRequest { alloc_id: alloc.into(), follow: true, ..Default::default() });
        let mut stream = service.task_logs(Request::new(request)).await.unwrap().into_inner();
        assert_eq!(stream.next().await.unwrap().unwrap().data, b"first\n");
        std::fs::remove_file(log_path(&task_dir, "stdout")).unwrap();
        std::os::unix::fs::symlink(&secret, log_path(&task_dir, "stdout")).unwrap();
        let err = stream.next().await.unwrap().expect_err("the symlink is refused mid-stream");
        assert!(err.message().contains("is a symbolic link"), "{err:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_large_log_is_sent_whole_in_bounded_pieces() {
        let (dir, alloc, task_dir) = one_task();
        let data: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(log_path(&task_dir, "stdout"), &data).unwrap();
        let service = service_on(dir.path());
        let request = proven(pb::TaskLogsRequest { alloc_id: alloc.into(), ..Default::default() });
        let stream = service.task_logs(Request::new(request)).await.unwrap().into_inner();
        let chunks: Vec<Vec<u8>> = stream.map(|c| c.unwrap().data).collect().await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK), "{:?}", chunks.iter().map(Vec::len).collect::<Vec<_>>());
        assert_eq!(chunks.concat(), data);
        assert_eq!(logs_of(&service, alloc, false).await.unwrap(), data);
    }
}
