//! The docker driver: a task as a container, through the engine's API (bollard).
//!
//! A container is named after its allocation and task and labelled with them, so an agent that
//! restarts finds it again and adopts it instead of starting a second one. The agent follows the
//! container's output into the same log files as an exec task's (`logs.rs`), waits for it to
//! exit, reports the exit code (and an out-of-memory kill), and removes it. A stop is the
//! engine's stop with the task's kill timeout (SIGTERM, then SIGKILL).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;
use helios_api::pb;
use helios_core::job::DOCKER_ALLOW_CAPS_ATTRIBUTE;
use helios_core::{DockerConfig, DockerPrivilege, Task, TaskDriver, TaskEvent, TaskEventKind, TaskRunState, TaskState};
use tokio::sync::watch;

use crate::drivers::{Driver, Fingerprint, OnEvent, Started, TaskRun};
use crate::runner::{dead, event, now, running, stop_requested, Owner};
use crate::task_env::TaskPort;

/// Labels on every container the agent creates. The node's tells agents sharing an engine (tests,
/// or several agents on one machine) apart.
pub const LABEL_NODE: &str = "io.helios.node";
pub const LABEL_ALLOC: &str = "io.helios.alloc";
pub const LABEL_JOB: &str = "io.helios.job";
pub const LABEL_TASK: &str = "io.helios.task";

/// Written in the task's directory while its container exists: the agent has work on the node
/// even without a process of its own.
pub const CONTAINER_MARKER: &str = "container";

/// The capabilities the engine gives a container unless told otherwise (moby's defaults):
/// Nomad's default allow list, and NET_RAW.
fn engine_default_caps() -> impl Iterator<Item = &'static str> {
    helios_core::job::DOCKER_DEFAULT_ALLOWED_CAPS.into_iter().chain(["net_raw"])
}

/// A pull that has not finished by then fails the task: no registry may be reachable.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the engine may take to answer the fingerprint.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the engine listens: `unix:///path`, `tcp://host:port` or `http://host:port`; None for
/// `DOCKER_HOST` or the local default socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint(pub Option<String>);

/// Seconds bollard waits for an engine request (a container wait is a long request of its own).
const REQUEST_TIMEOUT_SECS: u64 = 120;

impl Endpoint {
    pub async fn connect(&self) -> Result<Docker, DockerError> {
        let docker = match self.0.as_deref() {
            None => Docker::connect_with_local_defaults()?,
            Some(unix) if unix.starts_with("unix://") || unix.starts_with('/') => {
                Docker::connect_with_unix(unix, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)?
            }
            Some(http) => Docker::connect_with_http(http, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)?,
        };
        // The engine may speak an older API than bollard's default.
        docker.negotiate_version().await
    }

    /// The engine's version, if an engine answers: then this node offers the docker driver.
    pub async fn engine_version(&self) -> Option<String> {
        let docker = tokio::time::timeout(PING_TIMEOUT, self.connect()).await.ok()?.ok()?;
        tokio::time::timeout(PING_TIMEOUT, docker.version()).await.ok()?.ok()?.version
    }
}

/// The engine a task's container runs on, and what the driver must know of the node to size it.
#[derive(Debug, Clone)]
pub struct Engine {
    pub endpoint: Endpoint,
    pub cpu: NodeCpu,
}

/// The node's CPU as the scheduler counts it (MHz, Nomad's unit) and as the engine does (cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCpu {
    pub total_mhz: u32,
    pub cores: u32,
}

impl NodeCpu {
    /// As the agent fingerprinted (or was told) its node.
    pub fn of(node: &pb::Node) -> NodeCpu {
        let cores = node.attributes.get("cpu.cores").and_then(|c| c.parse().ok()).unwrap_or(1);
        let total_mhz = node.resources.as_ref().map_or(1000, |r| r.cpu_mhz);
        NodeCpu { total_mhz: total_mhz.max(1), cores: cores.max(1) }
    }

    /// A hard limit of `mhz` in the engine's unit, billionths of a core: the same share of the
    /// node's cores as `mhz` is of its MHz. The engine accepts 0.01 cores up to every core.
    fn nano_cpus(self, mhz: u32) -> i64 {
        let all = i64::from(self.cores) * 1_000_000_000;
        let share = i64::from(mhz) * all / i64::from(self.total_mhz);
        share.clamp(10_000_000, all)
    }
}

pub fn container_name(alloc_id: &str, task: &str) -> String {
    format!("helios-{alloc_id}-{task}")
}

/// The docker driver, offered while the engine answers.
pub(crate) struct DockerDriver {
    pub engine: Engine,
    /// What docker tasks may ask for beyond their container here (`--docker-allow-*`).
    pub allowed: Vec<DockerPrivilege>,
    /// The capabilities they may add (`--docker-allow-caps`), in `capability_name` form.
    pub allowed_caps: Vec<String>,
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Box::pin(async {
            let mut fingerprint = Fingerprint::default();
            if let Some(version) = self.engine.endpoint.engine_version().await {
                fingerprint.offered = true;
                fingerprint.attributes.insert("driver.docker".into(), "1".into());
                fingerprint.attributes.insert("driver.docker.version".into(), version);
            }
            // What docker tasks may ask for here: the scheduler places such tasks only where
            // allowed.
            for privilege in &self.allowed {
                fingerprint.attributes.insert(privilege.attribute().into(), "1".into());
            }
            fingerprint.attributes.insert(DOCKER_ALLOW_CAPS_ATTRIBUTE.into(), self.allowed_caps.join(","));
            fingerprint
        })
    }

    fn recover<'a>(&'a self, run: TaskRun<'a>) -> BoxFuture<'a, Option<Started>> {
        Box::pin(self.recover_task(run))
    }

    fn remove_orphans(&self, node_id: &str, keep: &HashSet<String>) -> BoxFuture<'static, ()> {
        Box::pin(remove_orphans(self.engine.endpoint.clone(), node_id.to_string(), keep.clone()))
    }

    fn run_in_task<'a>(
        &'a self,
        run: TaskRun<'a>,
        command: &'a [String],
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<(i32, String), String>> {
        Box::pin(async move {
            let docker = self.connect().await?;
            let name = container_name(&run.owner.alloc_id, &run.task.name);
            super::docker_exec::run_in_container(&docker, &name, command, timeout).await
        })
    }

    fn start<'a>(&'a self, run: TaskRun<'a>, on_event: &'a OnEvent) -> BoxFuture<'a, Started> {
        Box::pin(async move {
            let TaskDriver::Docker(config) = &run.task.driver else {
                let why = format!("not a docker task: {}", run.task.driver.name());
                return (dead(vec![event(TaskEventKind::DriverFailure, why, None)], true), None);
            };
            self.start_task(run, config, on_event).await
        })
    }
}

fn failure(kind: TaskEventKind, why: String) -> Started {
    (dead(vec![event(kind, why, None)], true), None)
}

impl DockerDriver {
    async fn connect(&self) -> Result<Docker, String> {
        self.engine.endpoint.connect().await.map_err(|e| format!("the docker engine does not answer: {e}"))
    }

    /// The task's container from before an agent restart, followed rather than started again.
    /// One created but never started (an agent died between the two) is removed.
    async fn recover_task(&self, run: TaskRun<'_>) -> Option<Started> {
        let docker = match self.connect().await {
            Ok(d) => d,
            Err(why) => return Some(failure(TaskEventKind::DriverFailure, why)),
        };
        let name = container_name(&run.owner.alloc_id, &run.task.name);
        let dir = run.dir.to_path_buf();
        match docker.inspect_container(&name, None).await {
            Ok(found) if found.state.as_ref().and_then(|s| s.status) == Some(ContainerStateStatusEnum::CREATED) => {
                remove(&docker, &name, &dir).await;
                None
            }
            Ok(found) => {
                let resume = crate::drivers::docker_logs::read_cursor(&dir);
                let running_now = found.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let ports = found.host_config.and_then(|h| h.port_bindings).map(describe_bindings).unwrap_or_default();
                let message = format!("container {name} still there after an agent restart{ports}");
                let state = running(vec![event(TaskEventKind::Adopted, message, None)]);
                let initial = if running_now { state.clone() } else { running(Vec::new()) };
                let (kill_timeout, stop) = (run.task.kill_timeout_secs, run.stop.clone());
                let handle = tokio::spawn(supervise(docker, name, dir, kill_timeout, stop, state, resume));
                Some((initial, Some(handle)))
            }
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => None,
            Err(e) => Some(failure(TaskEventKind::DriverFailure, format!("cannot inspect container {name}: {e}"))),
        }
    }

    /// Why this agent will not run `config`, if it will not. The scheduler placed the task on
    /// an agent that allows what it asks; this one checks again (its flags may have changed).
    fn refusal(&self, config: &DockerConfig) -> Option<String> {
        if let Some(denied) = config.privileges().into_iter().find(|p| !self.allowed.contains(p)) {
            return Some(format!("{} not allowed on this node (its agent needs {})", denied.describe(), denied.flag()));
        }
        let allowed: Vec<&str> = self.allowed_caps.iter().map(String::as_str).collect();
        let refused = config.caps_not_allowed(&allowed);
        (!refused.is_empty())
            .then(|| format!("capabilities {} not allowed on this node (see --docker-allow-caps)", refused.join(",")))
    }

    /// What the container drops, in the engine's names: its own `cap_drop` and, unless it is
    /// privileged, the engine's defaults this agent does not allow: as Nomad's `allow_caps`,
    /// the list bounds what every container gets (by default, no NET_RAW).
    fn caps_to_drop(&self, config: &DockerConfig) -> Vec<String> {
        let mut drop = engine_capabilities(&config.cap_drop);
        let allowed = |cap: &&str| self.allowed_caps.iter().any(|a| a == cap || a == "all");
        if !config.privileged && !drop.iter().any(|c| c == "ALL") {
            drop.extend(engine_default_caps().filter(|c| !allowed(c)).map(|c| c.to_ascii_uppercase()));
        }
        drop.sort();
        drop.dedup();
        drop
    }

    /// Pulls the image if needed, then creates and starts the container.
    async fn start_task(&self, run: TaskRun<'_>, config: &DockerConfig, on_event: &OnEvent) -> Started {
        let (who, task, stop) = (run.owner, run.task, run.stop);
        if let Some(why) = self.refusal(config) {
            return failure(TaskEventKind::DriverFailure, why);
        }
        let docker = match self.connect().await {
            Ok(d) => d,
            Err(why) => return failure(TaskEventKind::DriverFailure, why),
        };
        let dir = run.dir.to_path_buf();
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            return failure(TaskEventKind::SetupFailure, format!("cannot create {}: {e}", dir.display()));
        }
        let name = container_name(&who.alloc_id, &task.name);
        let kill_timeout = task.kill_timeout_secs;
        let mut events = Vec::new();
        let mut stop_watch = stop.clone();
        let pulled = tokio::select! {
            pulled = ensure_image(&docker, &config.image, &mut events, on_event) => pulled,
            () = stop_requested(&mut stop_watch) => Err(String::new()),
        };
        if *stop.borrow() {
            events.push(event(TaskEventKind::NotStarted, "stopped before it started", None));
            return (dead(events, false), None);
        }
        if let Err(why) = pulled {
            events.push(event(TaskEventKind::DriverFailure, why, None));
            return (dead(events, true), None);
        }
        let (body, ports) = match container_body(who, task, config, self.engine.cpu, self.caps_to_drop(config)) {
            Ok(made) => made,
            Err(why) => {
                events.push(event(TaskEventKind::DriverFailure, why, None));
                return (dead(events, true), None);
            }
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        if let Err(e) = docker.create_container(Some(options), body).await {
            events.push(event(
                TaskEventKind::DriverFailure,
                format!("cannot create container from {}: {e}", config.image),
                None,
            ));
            return (dead(events, true), None);
        }
        let _ = std::fs::write(dir.join(CONTAINER_MARKER), &name);
        if let Err(e) = docker.start_container(&name, None).await {
            remove(&docker, &name, &dir).await;
            events.push(event(TaskEventKind::DriverFailure, format!("cannot start container {name}: {e}"), None));
            return (dead(events, true), None);
        }
        let ports = if ports.is_empty() { String::new() } else { format!("; ports {}", ports.join(", ")) };
        events.push(event(TaskEventKind::Started, format!("container {name}{ports}"), None));
        let state = running(events);
        let handle = tokio::spawn(supervise(docker, name, dir, kill_timeout, stop.clone(), state.clone(), None));
        (state, Some(handle))
    }
}

/// Uses the image if present, else pulls it (bounded by `PULL_TIMEOUT`), telling `on_event`
/// how the pull goes (the task is pending meanwhile).
async fn ensure_image(
    docker: &Docker,
    image: &str,
    events: &mut Vec<TaskEvent>,
    on_event: &OnEvent,
) -> Result<(), String> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let started = event(TaskEventKind::DownloadingImage, format!("pulling {image}"), None);
    on_event(started.clone());
    events.push(started);
    let (repo, tag) = split_image(image);
    let options = CreateImageOptionsBuilder::default().from_image(repo).tag(tag).build();
    let pull = async {
        let mut steps = docker.create_image(Some(options), None, None);
        let mut progress = PullProgress::default();
        while let Some(step) = steps.next().await {
            let step = step.map_err(|e| format!("cannot pull image {image}: {e}"))?;
            if let Some(message) = progress.observe(&step) {
                let e = event(TaskEventKind::DownloadingImage, message, None);
                on_event(e.clone());
                events.push(e);
            }
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(PULL_TIMEOUT, pull).await {
        Ok(Ok(())) => {
            events.push(event(TaskEventKind::ImagePulled, image.to_string(), None));
            Ok(())
        }
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("pulling image {image} did not finish within {PULL_TIMEOUT:?}")),
    }
}

/// Reports a pull's progress as layers complete: "3 of 5 layers pulled (41.2 of 80.0 MB)".
#[derive(Default)]
struct PullProgress {
    /// Layer id -> (bytes so far, total bytes, done).
    layers: BTreeMap<String, (i64, i64, bool)>,
}

impl PullProgress {
    /// Takes one step of the engine's pull stream; returns a message when a layer completed.
    fn observe(&mut self, step: &bollard::models::CreateImageInfo) -> Option<String> {
        let id = step.id.clone()?;
        let status = step.status.as_deref().unwrap_or_default();
        // Steps about a layer; others carry an id too ("Pulling from <repo>" has the tag's).
        const LAYER_STEPS: [&str; 8] = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying Checksum",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
        ];
        if !LAYER_STEPS.contains(&status) {
            return None;
        }
        let layer = self.layers.entry(id).or_insert((0, 0, false));
        if let Some(detail) = &step.progress_detail {
            if status == "Downloading" {
                layer.0 = detail.current.unwrap_or(layer.0);
                layer.1 = detail.total.unwrap_or(layer.1);
            }
        }
        if !matches!(status, "Pull complete" | "Already exists") || layer.2 {
            return None;
        }
        layer.2 = true;
        layer.0 = layer.1;
        let done = self.layers.values().filter(|l| l.2).count();
        let mb = |bytes: i64| bytes as f64 / 1_000_000.0;
        let (current, total) = self.layers.values().fold((0, 0), |(c, t), l| (c + l.0, t + l.1));
        Some(format!("{done} of {} layers pulled ({:.1} of {:.1} MB)", self.layers.len(), mb(current), mb(total)))
    }
}

/// `name[:tag]` (a registry host may carry a port: only a colon after the last '/' is a tag).
fn split_image(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) if !image.contains('@') => (&image[..slash + colon], &image[slash + colon + 1..]),
        _ => (image, "latest"),
    }
}

/// The container to create, and its port mappings as `name=host->container` (for the task's
/// events: a picked host port is known only here).
fn container_body(
    who: &Owner,
    task: &Task,
    config: &DockerConfig,
    cpu: NodeCpu,
    cap_drop: Vec<String>,
) -> Result<(ContainerCreateBody, Vec<String>), String> {
    let mut exposed = Vec::new();
    let mut bindings = HashMap::new();
    let mut mapped = Vec::new();
    let mut host_ports = BTreeMap::new();
    for port in &config.ports {
        let assigned = who.dynamic_ports.get(&(task.name.clone(), port.name.clone())).copied();
        let host_port = match (port.host_port, assigned) {
            (Some(p), _) | (None, Some(p)) => p,
            // Placed by a server of an older build, which chose none: as that build did.
            (None, None) => free_port().map_err(|e| format!("cannot pick a host port for {}: {e}", port.name))?,
        };
        let key = format!("{}/tcp", port.container_port);
        exposed.push(key.clone());
        bindings.insert(key, Some(vec![PortBinding { host_ip: None, host_port: Some(host_port.to_string()) }]));
        host_ports.insert(port.name.clone(), TaskPort { host: host_port, task: port.container_port });
        mapped.push(format!("{}={host_port}->{}", port.name, port.container_port));
    }
    // Nomad's runtime variables, but for the task directories: they are not mounted into
    // containers here, and a path that does not exist there would mislead.
    let dirs = crate::task_dir::TaskDir::new(Path::new("/"), &task.name);
    let mut runtime = crate::task_env::runtime(&who.identity(task, &host_ports), &dirs);
    for unmounted in ["NOMAD_ALLOC_DIR", "NOMAD_TASK_DIR", "NOMAD_SECRETS_DIR", "HELIOS_TASK_DIR", "TMPDIR"] {
        runtime.remove(unmounted);
    }
    let expand = |text: &String| crate::task_env::interpolate(text, &runtime, &who.node);
    let mut env: BTreeMap<String, String> = task.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
    env.extend(runtime.clone());
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut labels: HashMap<String, String> = config.labels.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
    labels.insert(LABEL_NODE.to_string(), who.node_id.clone());
    labels.insert(LABEL_ALLOC.to_string(), who.alloc_id.clone());
    labels.insert(LABEL_JOB.to_string(), who.job_name.clone());
    labels.insert(LABEL_TASK.to_string(), task.name.clone());
    let mut cmd: Vec<String> = config.command.iter().map(expand).collect();
    cmd.extend(config.args.iter().map(expand));
    let memory = i64::from(task.resources.memory_mb) * 1024 * 1024;
    let body = ContainerCreateBody {
        image: Some(expand(&config.image)),
        cmd: (!cmd.is_empty()).then_some(cmd),
        entrypoint: (!config.entrypoint.is_empty()).then(|| config.entrypoint.iter().map(expand).collect()),
        user: task.user.clone(),
        env: Some(env),
        working_dir: config.working_dir.as_ref().map(expand),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            // A hard limit: no swap beyond it.
            memory: Some(memory),
            memory_swap: Some(memory),
            // The engine's range is 2..=262144.
            cpu_shares: Some(i64::from(task.resources.cpu_mhz).clamp(2, 262_144)),
            nano_cpus: config.cpu_hard_limit.then(|| cpu.nano_cpus(task.resources.cpu_mhz)),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!config.volumes.is_empty()).then(|| config.volumes.clone()),
            network_mode: config.network_mode.clone(),
            privileged: config.privileged.then_some(true),
            // The engine's names: upper case, without CAP_ (ALL as is).
            cap_add: (!config.cap_add.is_empty()).then(|| engine_capabilities(&config.cap_add)),
            cap_drop: (!cap_drop.is_empty()).then_some(cap_drop),
            devices: (!config.devices.is_empty()).then(|| config.devices.iter().map(device_mapping).collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((body, mapped))
}

fn engine_capabilities(caps: &[String]) -> Vec<String> {
    caps.iter().map(|c| helios_core::job::capability_name(c).to_ascii_uppercase()).collect()
}

/// A device as the engine takes it: the host's path inside too unless told, `rwm` unless told.
fn device_mapping(device: &helios_core::DockerDevice) -> bollard::models::DeviceMapping {
    bollard::models::DeviceMapping {
        path_on_host: Some(device.host_path.clone()),
        path_in_container: Some(device.container_path.clone().unwrap_or_else(|| device.host_path.clone())),
        cgroup_permissions: Some(device.cgroup_permissions.clone().unwrap_or_else(|| "rwm".to_string())),
    }
}

/// `; ports 80/tcp->8080, ...` for an adopted container (its port names are not stored on it).
fn describe_bindings(bindings: bollard::models::PortMap) -> String {
    let mut mapped: Vec<String> = bindings
        .into_iter()
        .filter_map(|(container, hosts)| {
            let host = hosts?.into_iter().find_map(|b| b.host_port)?;
            Some(format!("{host}->{container}"))
        })
        .collect();
    mapped.sort();
    if mapped.is_empty() {
        String::new()
    } else {
        format!("; ports {}", mapped.join(", "))
    }
}

/// A free TCP port on this host, for a port mapping without one.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

/// Follows the container until it exits (stopping it when asked), then reports how it ended and
/// removes it.
async fn supervise(
    docker: Docker,
    name: String,
    dir: PathBuf,
    kill_timeout_secs: u32,
    mut stop: watch::Receiver<bool>,
    mut state: TaskState,
    resume_logs: Option<crate::drivers::docker_logs::Cursor>,
) -> TaskState {
    let logs = tokio::spawn(crate::drivers::docker_logs::copy(docker.clone(), name.clone(), dir.clone(), resume_logs));
    let stopped_by_us = tokio::select! {
        () = wait_for_exit(&docker, &name) => false,
        agent_alive = async { stop.wait_for(|s| *s).await.is_ok() } => {
            if !agent_alive {
                // The agent that started this is gone (an in-process restart): the container,
                // its log and its report are the next agent's, which adopts it.
                logs.abort();
                return state;
            }
            state.events.push(event(TaskEventKind::Killing, format!("stopping with a {kill_timeout_secs} s timeout"), None));
            let t = i32::try_from(kill_timeout_secs).unwrap_or(i32::MAX);
            let options = StopContainerOptionsBuilder::default().t(t).build();
            if let Err(e) = docker.stop_container(&name, Some(options)).await {
                tracing::warn!(container = %name, error = %e, "stopping the container failed");
            }
            wait_for_exit(&docker, &name).await;
            true
        }
    };
    // The log stream ends with the container; give it a moment to deliver the last lines.
    let _ = tokio::time::timeout(Duration::from_secs(5), logs).await;
    if stop.has_changed().is_err() {
        // The agent went away while the container exited: the next agent reports and removes it.
        return state;
    }
    let (code, oom_killed) = how_it_ended(&docker, &name, stopped_by_us).await;
    if oom_killed {
        state.events.push(event(TaskEventKind::OomKilled, "the container exceeded its memory limit", code));
    }
    let message = code.map_or_else(|| "exited (exit code unknown)".to_string(), |c| format!("exit code {c}"));
    state.events.push(event(TaskEventKind::Terminated, message, code));
    remove(&docker, &name, &dir).await;
    state.state = TaskRunState::Dead;
    state.finished_at = Some(now());
    state.failed = !stopped_by_us && code != Some(0);
    state
}

/// Returns once the container has exited (or is gone). A wait that ends any other way (the
/// engine restarted, the socket dropped) is not an exit: look, and wait again.
async fn wait_for_exit(docker: &Docker, name: &str) {
    loop {
        match docker.wait_container(name, None).next().await {
            Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. })) => return,
            other => {
                tracing::warn!(container = %name, result = ?other, "waiting for the container was interrupted");
                match docker.inspect_container(name, None).await {
                    Ok(c) if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) => return,
                    Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => return,
                    _ => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    }
}

/// The container's exit code, and whether the kernel killed it for memory. The engine can mark
/// an out-of-memory kill a moment after it reports the exit, so a SIGKILL we did not send
/// (137) is looked at again for up to a second.
async fn how_it_ended(docker: &Docker, name: &str, stopped_by_us: bool) -> (Option<i32>, bool) {
    let mut looks = 0;
    loop {
        let ended = docker.inspect_container(name, None).await.ok().and_then(|c| c.state);
        let code = ended.as_ref().and_then(|s| s.exit_code).map(|c| i32::try_from(c).unwrap_or(i32::MAX));
        let oom = ended.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        looks += 1;
        if oom || stopped_by_us || code != Some(137) || looks > 10 {
            return (code, oom);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn remove(docker: &Docker, name: &str, dir: &Path) {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
            let _ = std::fs::remove_file(dir.join(CONTAINER_MARKER));
        }
        Err(e) => tracing::warn!(container = %name, error = %e, "removing the container failed"),
    }
}

/// Stops and removes this node's containers whose allocation is no longer assigned here (they
/// belonged to work that went away while the agent was down).
async fn remove_orphans(endpoint: Endpoint, node_id: String, keep: HashSet<String>) {
    let Ok(docker) = endpoint.connect().await else { return };
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={node_id}")])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let Ok(containers) = docker.list_containers(Some(options)).await else { return };
    for container in containers {
        let alloc = container.labels.as_ref().and_then(|l| l.get(LABEL_ALLOC)).cloned().unwrap_or_default();
        if keep.contains(&alloc) {
            continue;
        }
        let Some(id) = container.id else { continue };
        tracing::info!(container = %id, alloc = %alloc, "removing a container whose allocation is gone");
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&id, Some(options)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, status: &str, current: i64, total: i64) -> bollard::models::CreateImageInfo {
        bollard::models::CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: Some(bollard::models::ProgressDetail { current: Some(current), total: Some(total) }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pull_reports_each_completed_layer_with_the_bytes_so_far() {
        let mut p = PullProgress::default();
        assert_eq!(p.observe(&step("v1", "Pulling from team/app", 0, 0)), None, "not a layer");
        assert_eq!(p.observe(&step("a", "Pulling fs layer", 0, 0)), None);
        assert_eq!(p.observe(&step("b", "Downloading", 1_000_000, 4_000_000)), None);
        assert_eq!(p.observe(&step("a", "Downloading", 500_000, 2_000_000)), None);
        let first = p.observe(&step("a", "Pull complete", 0, 0));
        assert_eq!(first.as_deref(), Some("1 of 2 layers pulled (3.0 of 6.0 MB)"));
        assert_eq!(p.observe(&step("a", "Pull complete", 0, 0)), None, "reported once");
        let second = p.observe(&step("b", "Pull complete", 0, 0));
        assert_eq!(second.as_deref(), Some("2 of 2 layers pulled (6.0 of 6.0 MB)"));
    }

    fn driver(allowed: Vec<DockerPrivilege>, caps: &[&str]) -> DockerDriver {
        DockerDriver {
            engine: Engine { endpoint: Endpoint::default(), cpu: NodeCpu { total_mhz: 1000, cores: 1 } },
            allowed,
            allowed_caps: caps.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn the_agent_refuses_what_its_flags_do_not_allow_before_asking_the_engine() {
        let defaults = helios_core::job::DOCKER_DEFAULT_ALLOWED_CAPS;
        let plain = driver(Vec::new(), &defaults);
        let mut privileged = DockerConfig::for_image("busybox");
        privileged.privileged = true;
        let why = plain.refusal(&privileged).expect("not allowed");
        assert!(why.contains("--docker-allow-privileged"), "{why}");
        assert_eq!(driver(vec![DockerPrivilege::Privileged], &defaults).refusal(&privileged), None);
        let mut admin = DockerConfig::for_image("busybox");
        admin.cap_add = vec!["CAP_NET_ADMIN".into(), "chown".into()];
        let why = plain.refusal(&admin).expect("net_admin is not a default");
        assert!(why.starts_with("capabilities net_admin not allowed"), "{why}");
        assert_eq!(driver(Vec::new(), &["net_admin", "chown"]).refusal(&admin), None);
        assert_eq!(driver(Vec::new(), &["all"]).refusal(&admin), None);
    }

    #[test]
    fn the_allow_list_bounds_the_engines_default_capabilities_too() {
        let defaults = helios_core::job::DOCKER_DEFAULT_ALLOWED_CAPS;
        let plain = DockerConfig::for_image("busybox");
        assert_eq!(driver(Vec::new(), &defaults).caps_to_drop(&plain), ["NET_RAW"], "Nomad's default");
        assert!(driver(Vec::new(), &["all"]).caps_to_drop(&plain).is_empty());
        let only_chown = driver(Vec::new(), &["chown"]).caps_to_drop(&plain);
        assert_eq!(only_chown.len(), 13, "{only_chown:?}");
        assert!(!only_chown.contains(&"CHOWN".to_string()));
        let mut dropping = DockerConfig::for_image("busybox");
        dropping.cap_drop = vec!["all".into()];
        assert_eq!(driver(Vec::new(), &defaults).caps_to_drop(&dropping), ["ALL"]);
        let mut privileged = DockerConfig::for_image("busybox");
        privileged.privileged = true;
        assert!(driver(Vec::new(), &["chown"]).caps_to_drop(&privileged).is_empty(), "privileged gets everything");
    }

    #[test]
    fn a_hard_cpu_limit_is_the_same_share_of_the_cores_as_of_the_mhz() {
        let cpu = NodeCpu { total_mhz: 8_000, cores: 4 };
        assert_eq!(cpu.nano_cpus(2_000), 1_000_000_000, "a quarter of 4 cores is one core");
        assert_eq!(cpu.nano_cpus(500), 250_000_000);
        assert_eq!(cpu.nano_cpus(1), 10_000_000, "the engine's floor is 0.01 cores");
        assert_eq!(cpu.nano_cpus(1_000_000), 4_000_000_000, "never more than every core");
    }

    #[test]
    fn image_names_split_into_repository_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_image("registry:5000/team/app"), ("registry:5000/team/app", "latest"));
        assert_eq!(split_image("registry:5000/team/app:v2"), ("registry:5000/team/app", "v2"));
    }
}
