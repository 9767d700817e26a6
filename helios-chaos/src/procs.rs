//! The servers and agents under test, as real processes: started, SIGKILLed, paused and
//! restarted on the same data directory. Everything started is killed when dropped, including
//! the tasks the agents left running.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where `helios-server` and `helios-client` are: beside this executable by default (cargo puts
/// every binary of the workspace in one directory).
pub fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.exists() {
        bail!("{} is missing: build the workspace first (cargo build --workspace), or pass --bin-dir", path.display());
    }
    Ok(path)
}

pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
}

/// One process we can kill and start again with the same command line.
pub struct Member {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`, which execs in place, so the pid is
    /// the program's own).
    netns: Option<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    pub started_at: Option<Instant>,
}

impl Member {
    pub fn new(name: &str, program: PathBuf, args: Vec<String>, netns: Option<String>, log: PathBuf) -> Member {
        Member { name: name.to_string(), program, args, netns, log, child: None, paused: false, started_at: None }
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log).context("opening a log file")?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).env("RUST_LOG", "info");
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", self.name))?);
        self.started_at = Some(Instant::now());
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGKILL, and reap it.
    /// SIGKILL (a paused process too), and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it is reaped already, which `take` rules out.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<()> {
        if self.paused {
            self.signal(Signal::SIGCONT)?;
            self.paused = false;
        }
        Ok(())
    }

    /// True if it exited on its own (a crash): the run reports it rather than restarting it.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills every process whose environment places it under `dir` (`HELIOS_TASK_DIR`): the tasks
/// agents started, which outlive their agent by design.
pub fn kill_tasks_under(dir: &Path) {
    for task in crate::observe::task_processes(dir) {
        let _ = kill(Pid::from_raw(-(task.pid as i32)), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(task.pid as i32), Signal::SIGKILL);
    }
}

/// Waits until `url`'s gRPC health check answers SERVING, returning how long that took.
pub async fn wait_serving(url: &str, patience: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if serving(url).await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > patience {
            bail!("{url} did not report SERVING within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn serving(url: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_string()) else { return false };
    let endpoint = endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_millis(500));
    let Ok(channel) = endpoint.connect().await else { return false };
    let request = HealthCheckRequest { service: "helios.v1.JobService".to_string() };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(reply) if reply.get_ref().status == ServingStatus::Serving as i32
    )
}
