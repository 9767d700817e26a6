//! The docker driver against the machine's real Docker engine. No registry is reachable, so each
//! test builds its own tiny image (`FROM scratch` with a static busybox) and removes it, and every
//! container it makes. Without an engine the tests print a notice and pass, unless
//! `HELIOS_REQUIRE_DOCKER=1` (CI), where they fail.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use common::{start_agent, wait_for, TestCluster};
use futures::StreamExt;
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::AllocationClientStatus;
use helios_core::{DockerConfig, Job, JobType, PortMapping, TaskDriver};
use registry::{Layer, Registry};

const JOB_LABEL: &str = "io.helios.job";
const NODE_LABEL: &str = "io.helios.node";

/// The engine, or None (with a notice) when there is none and none is required.
async fn engine() -> Option<Docker> {
    let found = match Docker::connect_with_local_defaults() {
        Ok(d) => match d.negotiate_version().await {
            Ok(d) => d.version().await.map(|_| d).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match found {
        Ok(docker) => Some(docker),
        Err(e) if std::env::var("HELIOS_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("HELIOS_REQUIRE_DOCKER=1 but no Docker engine answers: {e}")
        }
        Err(e) => {
            eprintln!("skipping a Docker test: no Docker engine answers ({e})");
            None
        }
    }
}

/// A local image holding only a static busybox (and links to the applets the tests use). Removed
/// on drop, with every container of the test's jobs.
struct Sandbox {
    docker: Docker,
    image: String,
    /// Removed on drop: the sandbox's image, and any the test pulled.
    images: Vec<String>,
    /// The test's node: its containers carry it, unlike anything else on this engine.
    node: String,
    jobs: Vec<String>,
}

impl Sandbox {
    async fn new(docker: Docker, name: &str, node: &str, jobs: &[&str]) -> Sandbox {
        let image = format!("helios-test-{name}:{}", std::process::id());
        let mut context = tar::Builder::new(Vec::new());
        let dockerfile = b"FROM scratch\nCOPY rootfs/ /\n";
        append_file(&mut context, "Dockerfile", dockerfile, 0o644);
        append_file(&mut context, "rootfs/bin/busybox", &busybox(), 0o755);
        for applet in ["sh", "echo", "sleep", "head", "tr", "cat", "env"] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            context.append_link(&mut header, format!("rootfs/bin/{applet}"), "busybox").expect("link");
        }
        let context = context.into_inner().expect("tar");
        let options = BuildImageOptionsBuilder::default().t(&image).rm(true).build();
        {
            let mut build = docker.build_image(options, None, Some(bollard::body_full(bytes::Bytes::from(context))));
            while let Some(step) = build.next().await {
                step.expect("building the test image");
            }
        }
        let jobs = jobs.iter().map(|j| j.to_string()).collect();
        Sandbox { docker, images: vec![image.clone()], image, node: node.to_string(), jobs }
    }

    /// The containers of `job`, running or not.
    async fn containers(&self, job: &str) -> Vec<bollard::models::ContainerSummary> {
        let labels = vec![format!("{JOB_LABEL}={job}"), format!("{NODE_LABEL}={}", self.node)];
        let filters = HashMap::from([("label".to_string(), labels)]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        self.docker.list_containers(Some(options)).await.expect("list containers")
    }
}

/// Debian's static busybox (`apt-get install busybox-static`, done by `scripts/test.sh`).
fn busybox() -> Vec<u8> {
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a static busybox (apt-get install busybox-static)");
    std::fs::read(path).expect("read busybox")
}

fn append_file(context: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    context.append_data(&mut header, path, data).expect("tar entry");
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let (docker, images, jobs, node) =
            (self.docker.clone(), self.images.clone(), self.jobs.clone(), self.node.clone());
        // Drop cannot await: clean up on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                for job in jobs {
                    let labels = vec![format!("{JOB_LABEL}={job}"), format!("{NODE_LABEL}={node}")];
                    let filters = HashMap::from([("label".to_string(), labels)]);
                    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
                    for c in docker.list_containers(Some(options)).await.unwrap_or_default() {
                        let force = RemoveContainerOptionsBuilder::default().force(true).build();
                        let _ = docker.remove_container(&c.id.unwrap_or_default(), Some(force)).await;
                    }
                }
                for image in images {
                    let _ =
                        docker.remove_image(&image, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn docker_job(name: &str, image: &str, job_type: JobType, command: &str) -> Job {
    let mut job = Job::exec(name, "", Vec::new());
    job.set_type(job_type);
    let group = &mut job.task_groups[0];
    group.restart.attempts = 0;
    let task = &mut group.tasks[0];
    task.resources.memory_mb = 64;
    task.kill_timeout_secs = 1;
    task.driver = TaskDriver::Docker(DockerConfig {
        command: Some("sh".into()),
        args: vec!["-c".into(), command.into()],
        ..DockerConfig::for_image(image)
    });
    job
}

/// Prints its port, then counts up, a number every 50 ms.
const COUNTING: &str = "echo port $HELIOS_PORT_http; i=0; while true; do echo $i; i=$((i+1)); sleep 0.05; done";

/// The last number in `COUNTING`'s output, checking that the output is exactly its port line and
/// then 0, 1, 2, ... with nothing repeated or left out.
fn counted(output: &str, host_port: &str) -> Option<u64> {
    let mut lines = output.lines();
    assert_eq!(lines.next()?, format!("port {host_port}"), "{output}");
    let mut last = None;
    for (expected, line) in lines.enumerate() {
        assert_eq!(line, expected.to_string(), "line {} of the output:\n{output}", expected + 2);
        last = Some(expected as u64);
    }
    last
}

async fn wait_alloc(cluster: &TestCluster, job: &str, status: &str) -> pb::Allocation {
    wait_for(&format!("an allocation of {job} to be {status}"), || async {
        cluster.job_status(1, job).await.allocations.into_iter().find(|a| a.client_status().label() == status)
    })
    .await
}

/// Stops a job (the scheduler replaces failed batch allocations, so a failing job keeps
/// starting containers) and waits until every allocation of it has finished, so no agent is
/// still creating a container for it, and every container of it is removed.
async fn stop_and_clear(cluster: &TestCluster, sandbox: &Sandbox, job: &str) {
    cluster
        .jobs(1)
        .await
        .stop_job(pb::StopJobRequest { name: job.into(), purge: false, ..Default::default() })
        .await
        .expect("stop");
    wait_for(&format!("{job}'s allocations finished and containers removed"), || async {
        let allocs = cluster.job_status(1, job).await.allocations;
        let finished = allocs.iter().all(|a| {
            matches!(
                a.client_status(),
                AllocationClientStatus::Complete | AllocationClientStatus::Failed | AllocationClientStatus::Lost
            )
        });
        (finished && sandbox.containers(job).await.is_empty()).then_some(())
    })
    .await;
}

fn kinds(alloc: &pb::Allocation, task: &str) -> Vec<String> {
    alloc.task_states[task].events.iter().map(|e| e.kind().label().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_logs_its_output_and_reports_its_exit_code_and_an_out_of_memory_kill() {
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker, "exit", "docker-exit", &["talker", "hog"]).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-exit", dir.path()).await;
    let node = common::wait_status(&cluster, 1, "docker-exit", "ready").await;
    assert!(node.drivers.contains(&"docker".to_string()), "{:?}", node.drivers);
    assert!(node.attributes.contains_key("driver.docker.version"));

    let talker =
        docker_job("talker", &sandbox.image, JobType::Batch, "echo hello from a container; echo oops >&2; exit 3");
    cluster.submit_job(1, &talker).await;
    let failed = wait_alloc(&cluster, "talker", "failed").await;
    let task = &failed.task_states["talker"];
    let exit = task.events.iter().find(|e| e.kind() == pb::TaskEventKind::Terminated).expect("terminated");
    assert_eq!(exit.exit_code, Some(3));
    let task_dir = dir.path().join("allocs").join(&failed.id).join("talker");
    assert_eq!(std::fs::read_to_string(task_dir.join("stdout.log")).expect("stdout"), "hello from a container\n");
    assert_eq!(std::fs::read_to_string(task_dir.join("stderr.log")).expect("stderr"), "oops\n");
    wait_for("the container removed", || async {
        let left = sandbox.containers("talker").await;
        // Only the failed allocation's: the scheduler may already run a replacement.
        (!left.iter().any(|c| c.labels.as_ref().is_some_and(|l| l.get("io.helios.alloc") == Some(&failed.id))))
            .then_some(())
    })
    .await;

    // 64 MB of memory, a shell that wants far more: killed by the kernel, and reported so.
    let hog = docker_job(
        "hog",
        &sandbox.image,
        JobType::Batch,
        "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived",
    );
    cluster.submit_job(1, &hog).await;
    let killed = wait_alloc(&cluster, "hog", "failed").await;
    assert!(kinds(&killed, "hog").contains(&"OOM Killed".to_string()), "{:?}", kinds(&killed, "hog"));
    stop_and_clear(&cluster, &sandbox, "talker").await;
    stop_and_clear(&cluster, &sandbox, "hog").await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_image_fails_the_task_with_a_clear_event() {
    let Some(_docker) = engine().await else { return };
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-ghost", dir.path()).await;
    // A registry address nothing listens on: the pull fails at once, without leaving the machine.
    let job = docker_job("ghost", "127.0.0.1:1/helios-test-no-such-image:never", JobType::Batch, "true");
    cluster.submit_job(1, &job).await;
    let failed = wait_alloc(&cluster, "ghost", "failed").await;
    let failure = failed.task_states["ghost"]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::DriverFailure)
        .expect("failure");
    assert!(
        failure.message.contains("cannot pull image 127.0.0.1:1/helios-test-no-such-image:never"),
        "{}",
        failure.message
    );
    let events = kinds(&failed, "ghost");
    assert_eq!(events[..2], ["Received", "Downloading Image"], "{events:?}");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_missing_locally_is_pulled_with_its_progress_in_the_task_events() {
    let Some(docker) = engine().await else { return };
    let mut sandbox = Sandbox::new(docker.clone(), "pull", "docker-pull", &["pulled"]).await;
    // Two layers, so the progress has something to count.
    let layers = [
        Layer { files: vec![("bin/busybox".into(), busybox(), 0o755)], links: vec![] },
        Layer { files: vec![], links: vec![("bin/sh".into(), "busybox".into())] },
    ];
    let registry = Registry::serve("helios-test-pull", &format!("t{}", std::process::id()), &layers).await;
    sandbox.images.push(registry.image.clone());
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-pull", dir.path()).await;
    cluster.submit_job(1, &docker_job("pulled", &registry.image, JobType::Batch, "echo pulled")).await;
    let done = wait_alloc(&cluster, "pulled", "complete").await;
    let events = &done.task_states["pulled"].events;
    let messages: Vec<String> = events.iter().map(|e| format!("{}: {}", e.kind().label(), e.message)).collect();
    let expected = [
        "Received: ".to_string(),
        format!("Downloading Image: pulling {}", registry.image),
        "Downloading Image: 1 of 2 layers pulled (".into(),
        "Downloading Image: 2 of 2 layers pulled (".into(),
        format!("Image Pulled: {}", registry.image),
        "Started: ".into(),
        "Terminated: exit code 0".into(),
    ];
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
    for (got, want) in messages.iter().zip(&expected) {
        assert!(got.starts_with(want.as_str()), "{got:?} should start with {want:?}: {messages:#?}");
    }
    let log = dir.path().join("allocs").join(&done.id).join("pulled").join("stdout.log");
    assert_eq!(std::fs::read_to_string(log).expect("log"), "pulled\n");
    docker.inspect_image(&registry.image).await.expect("the pulled image is kept for the next task");
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_container_maps_ports_survives_an_agent_restart_and_stops_with_its_job() {
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker.clone(), "service", "docker-web", &["web"]).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-web", dir.path()).await;
    let mut job = docker_job("web", &sandbox.image, JobType::Service, COUNTING);
    if let TaskDriver::Docker(config) = &mut job.task_groups[0].tasks[0].driver {
        config.ports.push(PortMapping { name: "http".into(), container_port: 80, host_port: None });
        config.cpu_hard_limit = true;
        config.labels.insert("alloc".into(), "${NOMAD_ALLOC_ID}".into());
    }
    job.task_groups[0].tasks[0].resources.cpu_mhz = 1000;
    job.task_groups[0].tasks[0].env.insert("LISTEN".into(), "0.0.0.0:${NOMAD_PORT_http}".into());
    job.task_groups[0].tasks[0].env.insert("REACHED_AT".into(), "${NOMAD_ADDR_http}".into());
    cluster.submit_job(1, &job).await;
    let running = wait_alloc(&cluster, "web", "running").await;
    let containers = sandbox.containers("web").await;
    assert_eq!(containers.len(), 1);
    let id = containers[0].id.clone().expect("id");
    let inspected = docker.inspect_container(&id, None).await.expect("inspect");
    let host_config = inspected.host_config.expect("host config");
    // The agent offers 4,000 MHz over this machine's cores: 1,000 MHz is a quarter of them.
    let cores = std::thread::available_parallelism().expect("cores").get() as i64;
    assert_eq!(host_config.nano_cpus, Some(cores * 250_000_000), "a hard CPU limit");
    assert_eq!(host_config.cpu_shares, Some(1000));
    assert_eq!(host_config.memory, Some(64 * 1024 * 1024), "a hard memory limit");
    let bindings = host_config.port_bindings.expect("port bindings");
    let host_port = bindings["80/tcp"].as_ref().expect("80/tcp")[0].host_port.clone().expect("host port");
    // The scheduler chose the host port from the node's dynamic range, and the allocation holds it.
    let chosen: u16 = host_port.parse().expect("a port");
    assert!((20_000..=32_000).contains(&chosen), "{chosen}");
    assert_eq!(running.host_ports, [u32::from(chosen)], "held by the allocation");
    // Nomad's runtime variables, interpolated into the job's env and labels.
    let labels = inspected.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
    assert_eq!(labels.get("alloc"), Some(&running.id), "{labels:?}");
    let env = inspected.config.and_then(|c| c.env).unwrap_or_default();
    // As in Nomad: the task listens on NOMAD_PORT (the container's side of the mapping) and is
    // reached at NOMAD_ADDR (the host's).
    assert!(env.contains(&"LISTEN=0.0.0.0:80".to_string()), "{env:?}");
    let node = common::node(&cluster, 1, "docker-web").await.expect("node");
    let ip = &node.attributes["unique.network.ip-address"];
    assert!(env.contains(&format!("REACHED_AT={ip}:{host_port}")), "{env:?}");
    assert!(env.contains(&format!("NOMAD_HOST_PORT_http={host_port}")), "{env:?}");
    assert!(env.contains(&format!("NOMAD_ALLOC_ID={}", running.id)), "{env:?}");
    let started =
        running.task_states["web"].events.iter().find(|e| e.kind() == pb::TaskEventKind::Started).expect("started");
    assert!(started.message.ends_with(&format!("; ports http={host_port}->80")), "{}", started.message);
    let log = dir.path().join("allocs").join(&running.id).join("web").join("stdout.log");
    let copied = || counted(&std::fs::read_to_string(&log).unwrap_or_default(), &host_port);
    wait_for("the task to log its port and count", || async { (copied() >= Some(5)).then_some(()) }).await;

    // The agent restarts: the container keeps running and is adopted, not started again. It
    // keeps counting meanwhile, past what the agent had copied (for less than the heartbeat TTL:
    // the node must not be marked down).
    agent.stop().await;
    let before = copied().expect("counted before");
    wait_for("the container to count on while its agent is down", || async {
        let options = LogsOptionsBuilder::default().stdout(true).build();
        let output: Vec<_> = docker.logs(&id, Some(options)).collect().await;
        let text: String = output.into_iter().filter_map(Result::ok).map(|o| o.to_string()).collect();
        (counted(&text, &host_port) >= Some(before + 10)).then_some(())
    })
    .await;
    let agent = start_agent(&cluster, "docker-web", dir.path()).await;
    let adopted = wait_for("the container adopted", || async {
        let alloc = wait_alloc(&cluster, "web", "running").await;
        alloc.task_states["web"].events.iter().find(|e| e.kind() == pb::TaskEventKind::Adopted).cloned()
    })
    .await;
    // The picked host port stays visible in alloc status.
    assert!(adopted.message.ends_with(&format!("; ports {host_port}->80/tcp")), "{}", adopted.message);
    let after = sandbox.containers("web").await;
    assert_eq!(after.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![Some(id)], "the same single container");
    // Its log goes on where the old agent stopped: no line twice, none missing (`counted`).
    wait_for("the log to continue after the adoption", || async { (copied() >= Some(before + 20)).then_some(()) })
        .await;

    // Stopping the job stops the container (sleep as pid 1 ignores SIGTERM: killed after 1 s).
    cluster
        .jobs(1)
        .await
        .stop_job(pb::StopJobRequest { name: "web".into(), purge: false, ..Default::default() })
        .await
        .expect("stop");
    let stopped = wait_alloc(&cluster, "web", "complete").await;
    assert!(kinds(&stopped, "web").contains(&"Killing".to_string()), "{:?}", kinds(&stopped, "web"));
    wait_for("the container removed", || async { sandbox.containers("web").await.is_empty().then_some(()) }).await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_takes_over_a_fixed_host_port_once_the_old_container_is_gone() {
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker, "replace", "docker-replace", &["fixed"]).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-replace", dir.path()).await;
    let host_port = helios_chaos::ports::free_port();
    let version = |v: &str| {
        // sh as pid 1 ignores SIGTERM: the old container holds the port through its kill timeout.
        let mut job = docker_job("fixed", &sandbox.image, JobType::Service, "sleep 600");
        let task = &mut job.task_groups[0].tasks[0];
        task.env.insert("V".into(), v.into());
        if let TaskDriver::Docker(config) = &mut task.driver {
            config.ports.push(PortMapping { name: "http".into(), container_port: 80, host_port: Some(host_port) });
        }
        job
    };
    cluster.submit_job(1, &version("0")).await;
    wait_alloc(&cluster, "fixed", "running").await;
    cluster.submit_job(1, &version("1")).await;
    let replaced = wait_for("version 1 running", || async {
        let allocs = cluster.job_status(1, "fixed").await.allocations;
        let new = allocs.iter().find(|a| a.job_version == 1 && a.client_status() == AllocationClientStatus::Running)?;
        Some((new.clone(), allocs))
    })
    .await;
    let (new, allocs) = replaced;
    assert_eq!(new.host_ports, vec![u32::from(host_port)]);
    let old = allocs.iter().find(|a| a.job_version == 0).expect("the old allocation");
    assert_eq!(old.client_status(), AllocationClientStatus::Complete, "stopped before its replacement started");
    for a in &allocs {
        let kinds = kinds(a, "fixed");
        assert!(!kinds.contains(&"Driver Failure".to_string()), "no port clash: {kinds:?}");
    }
    stop_and_clear(&cluster, &sandbox, "fixed").await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_of_gone_allocations_are_removed_and_binds_mount_host_paths_only_where_allowed() {
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker.clone(), "orphan", "docker-orphan", &["orphan", "writer"]).await;
    // A container this node's agent made for an allocation the servers no longer know.
    let labels = HashMap::from([
        (NODE_LABEL.to_string(), "docker-orphan".to_string()),
        ("io.helios.alloc".to_string(), "gone".to_string()),
        (JOB_LABEL.to_string(), "orphan".to_string()),
    ]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(sandbox.image.clone()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    let created = docker.create_container(None, body).await.expect("create the orphan");
    docker.start_container(&created.id, None).await.expect("start the orphan");

    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-orphan", dir.path()).await;
    wait_for("the orphan removed", || async { sandbox.containers("orphan").await.is_empty().then_some(()) }).await;

    let shared = tempfile::tempdir().expect("shared dir");
    let mut job = docker_job("writer", &sandbox.image, JobType::Batch, "echo written > /data/out");
    if let TaskDriver::Docker(config) = &mut job.task_groups[0].tasks[0].driver {
        config.volumes.push(format!("{}:/data", shared.path().display()));
    }
    cluster.submit_job(1, &job).await;
    // A host bind mount is refused where the agent does not allow it, and the scheduler says why.
    common::wait_unplaced(&cluster, "writer", "--docker-allow-volumes").await;
    agent.stop().await;
    let agent = allowing_volumes(&cluster, "docker-orphan", dir.path()).await;
    wait_alloc(&cluster, "writer", "complete").await;
    assert_eq!(std::fs::read_to_string(shared.path().join("out")).expect("out"), "written\n");
    agent.stop().await;
    cluster.shutdown().await;
}

/// An agent that lets docker tasks bind-mount host paths (`--docker-allow-volumes`).
async fn allowing_volumes(cluster: &TestCluster, node: &str, dir: &Path) -> common::Agent {
    common::start_agent_configured(cluster, node, dir, |c| {
        c.drivers.docker_allowed = vec![helios_core::DockerPrivilege::Volumes];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_that_exits_while_its_agent_is_down_is_reported_after_the_restart() {
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker.clone(), "offline", "docker-offline", &["brief"]).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = allowing_volumes(&cluster, "docker-offline", dir.path()).await;
    // Runs until the test lets it finish, then fails with 4.
    let gate = tempfile::tempdir().expect("gate dir");
    let mut job =
        docker_job("brief", &sandbox.image, JobType::Batch, "until [ -e /gate/open ]; do sleep 0.1; done; exit 4");
    if let TaskDriver::Docker(config) = &mut job.task_groups[0].tasks[0].driver {
        config.volumes.push(format!("{}:/gate", gate.path().display()));
    }
    cluster.submit_job(1, &job).await;
    let running = wait_alloc(&cluster, "brief", "running").await;

    agent.stop().await;
    std::fs::write(gate.path().join("open"), b"").expect("open the gate");
    wait_for("the container to exit", || async {
        let c = sandbox.containers("brief").await;
        c.first().is_some_and(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::EXITED)).then_some(())
    })
    .await;
    let agent = allowing_volumes(&cluster, "docker-offline", dir.path()).await;
    let failed = wait_alloc(&cluster, "brief", "failed").await;
    assert_eq!(failed.id, running.id);
    let exit = failed.task_states["brief"]
        .events
        .iter()
        .find(|e| e.kind() == pb::TaskEventKind::Terminated)
        .expect("terminated");
    assert_eq!(exit.exit_code, Some(4));
    stop_and_clear(&cluster, &sandbox, "brief").await;
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_offers_docker_once_its_engine_comes_up() {
    let Some(_docker) = engine().await else { return };
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("engine.sock");
    let endpoint = format!("unix://{}", socket.display());
    let agent = common::start_agent_configured(&cluster, "docker-late", dir.path(), |c| {
        c.docker_endpoint = Some(endpoint);
    })
    .await;
    let before = common::wait_status(&cluster, 1, "docker-late", "ready").await;
    assert_eq!(before.drivers, ["exec"], "no engine answers at {}", socket.display());

    // The engine comes up: a relay to the machine's engine appears at the agent's endpoint.
    let real = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the relay");
    let relay = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let real = real.clone();
            tokio::spawn(async move {
                if let Ok(mut engine) = tokio::net::UnixStream::connect(&real).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                }
            });
        }
    });
    let after = wait_for("the node to offer docker", || async {
        common::node(&cluster, 1, "docker-late").await.filter(|n| n.drivers.contains(&"docker".to_string()))
    })
    .await;
    assert!(after.attributes.contains_key("driver.docker.version"));
    relay.abort();
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privileged_containers_capabilities_and_devices_run_only_on_agents_that_allow_them() {
    let Some(docker) = engine().await else { return };
    let jobs = ["plain", "caps", "devices", "powers"];
    let sandbox = Sandbox::new(docker.clone(), "powers", "docker-powers", &jobs).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-powers", dir.path()).await;

    let job = |name: &str, command: &str, configure: fn(&mut DockerConfig)| {
        let mut job = docker_job(name, &sandbox.image, JobType::Batch, command);
        if let TaskDriver::Docker(config) = &mut job.task_groups[0].tasks[0].driver {
            configure(config);
        }
        job
    };
    // Only NET_ADMIN, nothing of the engine's defaults: the task's effective set says so.
    let caps = job("caps", "cat /proc/self/status", |c| {
        c.cap_drop = vec!["ALL".into()];
        c.cap_add = vec!["net_admin".into()];
    });
    // /dev/null as a device of another name.
    let devices = job("devices", "[ -c /dev/helios-null ] && echo device ok", |c| {
        c.devices = vec![helios_core::DockerDevice {
            host_path: "/dev/null".into(),
            container_path: Some("/dev/helios-null".into()),
            cgroup_permissions: Some("rw".into()),
        }];
    });
    let powers = job("powers", "cat /proc/self/status", |c| c.privileged = true);
    let plain = job("plain", "cat /proc/self/status", |_| {});
    for job in [&plain, &caps, &devices, &powers] {
        cluster.submit_job(1, job).await;
    }
    // A default agent allows none of them, and the scheduler says which flag would.
    common::wait_unplaced(&cluster, "caps", "net_admin not allowed (not in the agent's --docker-allow-caps)").await;
    common::wait_unplaced(&cluster, "devices", "--docker-allow-devices").await;
    common::wait_unplaced(&cluster, "powers", "--docker-allow-privileged").await;
    let output = |alloc: &pb::Allocation, task: &str| {
        let log = dir.path().join("allocs").join(&alloc.id).join(task).join("stdout.log");
        std::fs::read_to_string(log).expect("the task's output")
    };
    let effective = |status: &str| {
        let line = status.lines().find(|l| l.starts_with("CapEff:")).expect("CapEff in /proc/self/status");
        u64::from_str_radix(line["CapEff:".len()..].trim(), 16).expect("hex")
    };
    // A plain container gets the engine's defaults but NET_RAW (bit 13), as under Nomad.
    let done = wait_alloc(&cluster, "plain", "complete").await;
    let nomads_defaults = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29, 31].iter().fold(0u64, |set, bit| set | 1 << bit);
    assert_eq!(effective(&output(&done, "plain")), nomads_defaults);

    agent.stop().await;
    let agent = common::start_agent_configured(&cluster, "docker-powers", dir.path(), |c| {
        c.drivers.docker_allowed =
            vec![helios_core::DockerPrivilege::Privileged, helios_core::DockerPrivilege::Devices];
        c.drivers.docker_allow_caps = Some(vec!["NET_ADMIN".into()]);
    })
    .await;
    let finished = |job: &'static str| {
        let cluster = &cluster;
        async move {
            wait_for(&format!("{job} to finish"), || async {
                let allocs = cluster.job_status(1, job).await.allocations;
                allocs.into_iter().find(|a| {
                    a.client_status() == AllocationClientStatus::Complete
                        || a.client_status() == AllocationClientStatus::Failed
                })
            })
            .await
        }
    };
    let done = finished("caps").await;
    assert_eq!(done.client_status(), AllocationClientStatus::Complete, "{:?}", done.task_states);
    assert_eq!(effective(&output(&done, "caps")), 1 << 12, "CAP_NET_ADMIN (bit 12) alone");
    let done = finished("devices").await;
    assert_eq!(done.client_status(), AllocationClientStatus::Complete, "{:?}", done.task_states);
    assert_eq!(output(&done, "devices"), "device ok\n");

    // Privileged: every capability the kernel has. The engine can grant that only if it holds
    // them all itself; where its bounding set lacks some (as on some VMs), runc refuses to start
    // the container, and that refusal is what shows the engine was asked for them.
    let done = finished("powers").await;
    let bounding = std::fs::read_to_string("/proc/self/status").expect("status");
    let bounding = bounding.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd");
    let bounding = u64::from_str_radix(bounding.trim(), 16).expect("hex");
    let last: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").expect("cap_last_cap").trim().parse().expect("n");
    if bounding.count_ones() == last + 1 {
        assert_eq!(done.client_status(), AllocationClientStatus::Complete, "{:?}", done.task_states);
        assert_eq!(effective(&output(&done, "powers")).count_ones(), last + 1);
    } else {
        let events = &done.task_states["powers"].events;
        let failure = events.iter().find(|e| e.kind() == pb::TaskEventKind::DriverFailure).expect("the engine refused");
        assert!(failure.message.contains("unable to apply caps"), "{}", failure.message);
    }
    agent.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_script_check_runs_inside_the_container() {
    use helios_core::service::{AddressMode, Check, CheckKind, CheckStatus, Service};
    let Some(docker) = engine().await else { return };
    let sandbox = Sandbox::new(docker, "script", "docker-script", &["probed"]).await;
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    cluster.format_raised().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = start_agent(&cluster, "docker-script", dir.path()).await;
    common::wait_status(&cluster, 1, "docker-script", "ready").await;
    // The container writes a file only it has; one check reads it, the other a missing one.
    let mut job = docker_job("probed", &sandbox.image, JobType::Service, "echo ready > /ready; sleep 600");
    let script = |name: &str, command: &str| Check {
        name: name.into(),
        kind: CheckKind::Script {
            task: Some("probed".into()),
            command: "sh".into(),
            args: vec!["-c".into(), command.into()],
        },
        port: None,
        interval_ms: 1_000,
        timeout_ms: 2_000,
        initial_status: CheckStatus::Critical,
        success_before_passing: 0,
        failures_before_critical: 0,
        check_restart: None,
    };
    job.task_groups[0].services = vec![Service {
        name: "probed".into(),
        task: Some("probed".into()),
        port: None,
        tags: Vec::new(),
        meta: Default::default(),
        address_mode: AddressMode::Auto,
        checks: vec![script("ready", "cat /ready"), script("missing", "cat /missing || exit 2")],
    }];
    cluster.submit_job(1, &job).await;
    let catalog = pb::service_catalog_client::ServiceCatalogClient::new(cluster.channel(1).await);
    let checks = wait_for("both script checks answered", || {
        let mut catalog = catalog.clone();
        async move {
            let request = pb::GetServiceRequest { name: "probed".into(), healthy_only: false, ..Default::default() };
            let instance = catalog.get_service(request).await.ok()?.into_inner().instances.into_iter().next()?;
            let answered = |c: &pb::CheckState| !c.output.is_empty();
            (instance.checks.iter().all(answered) && instance.checks[0].status() == pb::CheckStatus::Passing)
                .then_some(instance.checks)
        }
    })
    .await;
    assert_eq!(checks[0].output, "exit 0: ready");
    assert_eq!(checks[1].status(), pb::CheckStatus::Critical);
    assert!(checks[1].output.starts_with("exit 2:") && checks[1].output.contains("missing"), "{}", checks[1].output);
    stop_and_clear(&cluster, &sandbox, "probed").await;
    agent.stop().await;
    cluster.shutdown().await;
}
