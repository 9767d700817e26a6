//! A command run in a docker task's container (`docker exec`), for script checks: the
//! container's environment, user and files, as the task has them.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;

/// Output kept from a command (the rest is read and dropped).
const MAX_OUTPUT: usize = 4096;

/// The command's exit code and the first bytes of its output. After `timeout` the answer is
/// "timed out"; the engine offers no way to kill an exec, so the command itself ends with the
/// container at the latest.
pub(crate) async fn run_in_container(
    docker: &Docker,
    container: &str,
    command: &[String],
    timeout: Duration,
) -> Result<(i32, String), String> {
    let options = CreateExecOptions {
        cmd: Some(command.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let run = async {
        let exec =
            docker.create_exec(container, options).await.map_err(|e| format!("cannot exec in {container}: {e}"))?;
        let mut output = String::new();
        if let StartExecResults::Attached { output: mut stream, .. } =
            docker.start_exec(&exec.id, None).await.map_err(|e| format!("cannot start the command: {e}"))?
        {
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                if output.len() < MAX_OUTPUT {
                    output.push_str(&chunk.to_string());
                }
            }
        }
        let inspected =
            docker.inspect_exec(&exec.id).await.map_err(|e| format!("cannot read how the command ended: {e}"))?;
        let code = inspected.exit_code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1);
        Ok((code, output))
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| format!("timed out after {timeout:?}"))?
}
