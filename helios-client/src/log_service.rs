//! The agent's gRPC service: task logs, read from the rotated log files the runner writes.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use helios_api::pb;
use helios_api::pb::client_service_server::ClientService;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status};

use crate::logs::log_path;

pub struct LogService {
    pub allocs_dir: PathBuf,
}

const CHUNK: usize = 64 * 1024;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The last `lines` lines of `data`.
fn tail(data: &[u8], lines: u32) -> &[u8] {
    if lines == 0 {
        return &[];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &data[i + 1..];
            }
        }
    }
    data
}

#[tonic::async_trait]
impl ClientService for LogService {
    type TaskLogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

    async fn task_logs(&self, request: Request<pb::TaskLogsRequest>) -> Result<Response<Self::TaskLogsStream>, Status> {
        let req = request.into_inner();
        if !valid_id(&req.alloc_id) {
            return Err(Status::invalid_argument("alloc_id: must be an allocation id"));
        }
        let alloc_dir = self.allocs_dir.join(&req.alloc_id);
        let mut tasks: Vec<String> = match std::fs::read_dir(&alloc_dir) {
            // Each task is a directory (beside files of the allocation's own, like `.node`).
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
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
        let mut first = tokio::fs::read(&path).await.unwrap_or_default();
        // Follow on from exactly what was read, not from a later size.
        let offset = first.len() as u64;
        if let Some(lines) = req.tail {
            first = tail(&first, lines).to_vec();
        }
        let follow = req.follow;
        // First what is there, then (following) what is appended, until the task is done for
        // good (its supervisor's marker: restarts in between keep the stream open) and nothing
        // more arrives.
        let stream = futures::stream::unfold(
            (Some(first), offset, path, task_dir),
            move |(first, mut offset, path, task_dir)| async move {
                if let Some(mut first) = first {
                    if first.len() > CHUNK {
                        // Large logs go out in pieces, well under any message size limit.
                        let rest = first.split_off(CHUNK);
                        return Some((Ok(pb::LogChunk { data: first }), (Some(rest), offset, path, task_dir)));
                    }
                    if !first.is_empty() || follow {
                        return Some((Ok(pb::LogChunk { data: first }), (None, offset, path, task_dir)));
                    }
                }
                if !follow {
                    return None;
                }
                loop {
                    let len = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                    if len < offset {
                        offset = 0; // rotated: the new file starts over
                    }
                    if len > offset {
                        let mut file = match tokio::fs::File::open(&path).await {
                            Ok(f) => f,
                            Err(e) => {
                                return Some((Err(Status::internal(e.to_string())), (None, offset, path, task_dir)))
                            }
                        };
                        let _ = file.seek(std::io::SeekFrom::Start(offset)).await;
                        let mut buf = vec![0u8; CHUNK.min(usize::try_from(len - offset).unwrap_or(CHUNK))];
                        let n = file.read(&mut buf).await.unwrap_or(0);
                        buf.truncate(n);
                        offset += n as u64;
                        return Some((Ok(pb::LogChunk { data: buf }), (None, offset, path, task_dir)));
                    }
                    if task_dir.join(crate::runner::DONE_MARKER).exists() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        )
        .filter(|chunk| futures::future::ready(chunk.as_ref().map_or(true, |c| !c.data.is_empty())));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn the_only_task_is_the_only_directory() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = "0123-abcd";
        let task_dir = dir.path().join(alloc).join("web");
        std::fs::create_dir_all(&task_dir).unwrap();
        std::fs::write(dir.path().join(alloc).join(".node"), "n1").unwrap();
        std::fs::write(log_path(&task_dir, "stdout"), "hello\n").unwrap();
        let service = LogService { allocs_dir: dir.path().to_path_buf() };
        let request = pb::TaskLogsRequest { alloc_id: alloc.into(), ..Default::default() };
        let stream = service.task_logs(Request::new(request)).await.expect("the only task's logs").into_inner();
        let chunks: Vec<_> = stream.collect().await;
        let data: Vec<u8> = chunks.into_iter().flat_map(|c| c.expect("a chunk").data).collect();
        assert_eq!(data, b"hello\n");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\n", 5), b"a\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
