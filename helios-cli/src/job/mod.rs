//! `helios-cli job ...`

mod history;
mod monitor;
mod plan;
mod write;

pub use write::{change_stored, read, send, submit, Submission};

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand, ValueEnum};
use helios_api::convert::{time_of, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_core::{DockerConfig, ExecConfig, Job, JobType, PortMapping, Resources, RestartPolicy, TaskDriver};
use std::collections::BTreeMap;

use crate::connect::{status_error, Servers, MAX_MESSAGE, MAX_RESPONSE};
use crate::json::Output;
use crate::table::{now, Table};

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job file (TOML or JSON), or a job that runs CMD with ARGS (give --name, and
    /// ARGS after `--`).
    Run(RunArgs),
    /// Check a job file (TOML, JSON or HCL) as the servers would, without submitting it.
    Validate { file: std::path::PathBuf },
    /// Show what submitting a job file would change, and whether it fits, without doing it.
    /// Exit code 0: no change; 1: allocations would change; 255: an error.
    Plan {
        file: std::path::PathBuf,
        /// Also where each new allocation would go, with the scores that chose its node.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List every job.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Show a job, its allocations and evaluations, and why anything is not placed.
    Status {
        /// The job; without it, every job (as `job list`).
        name: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// The output of every allocation of a job, each line prefixed with its allocation.
    Logs {
        name: String,
        #[arg(long)]
        stderr: bool,
        /// Keep streaming until the tasks exit.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// A job's versions, and every task event of its allocations with its time.
    History {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// The stored spec of a job (its latest version, or --version N), as a JSON job file that
    /// `job run` takes back.
    Inspect {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Change how many allocations a group of a job runs (a new version of the job).
    Scale {
        name: String,
        group: String,
        count: u32,
        /// Return at once instead of watching the change settle.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Submit an older version's spec again, as the next version (Nomad's `job revert`); watch
    /// it as `job run` does.
    Revert {
        name: String,
        /// The version to go back to (`job history` lists those kept).
        version: u64,
        /// Only if the job is still at this version (another change meanwhile refuses it).
        #[arg(long)]
        enforce_prior_version: Option<u64>,
        /// Return at once instead of watching the change settle.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Stop a job's allocations; the job stays visible (use --purge to forget it).
    Stop {
        name: String,
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job's name (letters, digits, '-', '_', '.'); without it, the first argument is a
    /// job file. The flags below, but --detach, describe an inline job: a job file says all
    /// that itself, so they need --name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Batch, requires = "name")]
    pub job_type: TypeArg,
    /// How many copies to run.
    #[arg(long, default_value_t = 1, requires = "name")]
    pub count: u32,
    #[arg(long, default_value_t = 50, requires = "name")]
    pub priority: u32,
    #[arg(long, default_value_t = Resources::default().cpu_mhz, requires = "name")]
    pub cpu_mhz: u32,
    #[arg(long, default_value_t = Resources::default().memory_mb, requires = "name")]
    pub memory_mb: u32,
    /// Environment variable for the task, KEY=VALUE; repeatable.
    #[arg(long = "env", value_parser = parse_env, requires = "name")]
    pub env: Vec<(String, String)>,
    /// How the task runs: an isolated process (exec), a container (docker), or a process with
    /// no isolation (raw_exec, only on agents started with --enable-raw-exec).
    #[arg(long, value_enum, default_value_t = DriverArg::Exec, requires = "name")]
    pub driver: DriverArg,
    /// The user the task runs as (exec: default nobody; raw_exec: the agent's user; docker: the
    /// image's user).
    #[arg(long, requires = "name")]
    pub user: Option<String>,
    /// The container image (with --driver docker).
    #[arg(long, requires = "name")]
    pub image: Option<String>,
    /// A container port, NAME=PORT[:HOSTPORT] (without HOSTPORT the scheduler picks one from the
    /// node's dynamic range); the task gets NOMAD_PORT_<NAME> (the container's port) and
    /// NOMAD_HOST_PORT_<NAME>; repeatable, with --driver docker.
    #[arg(short = 'p', long = "port", value_parser = PortMapping::parse, requires = "name")]
    pub ports: Vec<PortMapping>,
    /// Cap the task at --cpu-mhz instead of only weighting it (--driver exec or docker).
    #[arg(long, requires = "name")]
    pub cpu_hard_limit: bool,
    /// Submit and return at once, instead of watching the job until it runs (or finishes).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The command to run (with docker: instead of the image's command).
    pub command: Option<String>,
    /// Its arguments.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverArg {
    Exec,
    Docker,
    #[value(name = "raw_exec")]
    RawExec,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TypeArg {
    Service,
    Batch,
    System,
}

pub fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

impl RunArgs {
    /// The job to submit: from a job file, or from the flags.
    pub fn to_job(&self) -> anyhow::Result<Job> {
        let Some(name) = &self.name else {
            let Some(file) = &self.command else {
                anyhow::bail!("give a job file, or --name NAME and a command to run");
            };
            if !self.args.is_empty() {
                anyhow::bail!("a job file takes no arguments after `--`");
            }
            let loaded = crate::jobfile::load(std::path::Path::new(file))?;
            for note in &loaded.notes {
                eprintln!("Note: {note}");
            }
            return Ok(loaded.job);
        };
        // The inline form names the group and task after the job: check the name once here
        // rather than hear the same problem three times from the server.
        helios_core::validate::check_name(name).map_err(|p| anyhow!("invalid --name {name:?}: {p}"))?;
        let job_type = match self.job_type {
            TypeArg::Service => JobType::Service,
            TypeArg::Batch => JobType::Batch,
            TypeArg::System => JobType::System,
        };
        let exec = |command: &String| ExecConfig {
            command: command.clone(),
            args: self.args.clone(),
            cpu_hard_limit: self.cpu_hard_limit,
        };
        let driver = match (self.driver, &self.image, &self.command) {
            (DriverArg::Exec, None, Some(command)) if self.ports.is_empty() => TaskDriver::Exec(exec(command)),
            (DriverArg::RawExec, None, Some(command)) if self.ports.is_empty() && !self.cpu_hard_limit => {
                TaskDriver::RawExec(exec(command))
            }
            (DriverArg::Exec | DriverArg::RawExec, None, None) => {
                anyhow::bail!("a command to run is required (or --driver docker --image)")
            }
            (DriverArg::Exec, _, _) => anyhow::bail!("--image and -p need --driver docker"),
            (DriverArg::RawExec, _, _) => {
                anyhow::bail!("--image and -p need --driver docker; --cpu-hard-limit needs exec or docker")
            }
            (DriverArg::Docker, None, _) => anyhow::bail!("--driver docker needs --image IMAGE"),
            (DriverArg::Docker, Some(image), command) => TaskDriver::Docker(DockerConfig {
                command: command.clone(),
                args: self.args.clone(),
                ports: self.ports.clone(),
                cpu_hard_limit: self.cpu_hard_limit,
                ..DockerConfig::for_image(image)
            }),
        };
        let mut job = Job::exec(name, "", Vec::new());
        job.set_type(job_type);
        job.priority = self.priority;
        let group = &mut job.task_groups[0];
        group.count = self.count;
        group.restart = RestartPolicy::default_for(job_type);
        let task = &mut group.tasks[0];
        task.resources = Resources { cpu_mhz: self.cpu_mhz, memory_mb: self.memory_mb };
        task.env = self.env.iter().cloned().collect::<BTreeMap<_, _>>();
        task.driver = driver;
        task.user = self.user.clone();
        Ok(job)
    }
}

pub fn client(channel: crate::connect::Conn) -> JobServiceClient<crate::connect::Conn> {
    JobServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE).max_encoding_message_size(MAX_MESSAGE)
}

pub async fn run(servers: &Servers, command: JobCommand) -> Result<std::process::ExitCode> {
    let done = |r: Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    match command {
        // Offline: no server needed.
        JobCommand::Validate { file } => done(validate_file(&file)),
        // The job is built (and a file checked) before any server is contacted.
        JobCommand::Run(args) => {
            let job = args.to_job()?;
            let expected = counted(&job);
            done(submit(servers, job, args.detach, expected).await)
        }
        JobCommand::Scale { name, group, count, detach } => done(scale(servers, &name, &group, count, detach).await),
        JobCommand::Revert { name, version, enforce_prior_version, detach } => {
            done(revert(servers, &name, version, enforce_prior_version, detach).await)
        }
        JobCommand::Plan { file, verbose, output: Output { json } } => {
            match plan::plan(servers, &file, verbose, json).await {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    Ok(std::process::ExitCode::from(plan::PLAN_ERROR))
                }
            }
        }
        other => done(run_query(servers, other).await),
    }
}

/// Submits the job with `group`'s count changed.
async fn scale(servers: &Servers, name: &str, group: &str, count: u32, detach: bool) -> Result<()> {
    change_stored(servers, name, |mut job| {
        let names: Vec<String> = job.task_groups.iter().map(|g| g.name.clone()).collect();
        let Some(target) = job.task_groups.iter_mut().find(|g| g.name == group) else {
            anyhow::bail!("job {name:?} has no group {group:?} (its groups: {})", names.join(", "));
        };
        target.count = count;
        let expected = counted(&job);
        Ok(Submission { job, detach, expected })
    })
    .await
}

/// Submits version `version` of the job again (the servers copy it), then watches it.
async fn revert(
    servers: &Servers,
    name: &str,
    version: u64,
    enforce_prior_version: Option<u64>,
    detach: bool,
) -> Result<()> {
    let conn = servers.connect().await?;
    let mut jobs = client(conn.clone());
    let request = pb::RevertJobRequest { name: name.to_string(), version, enforce_prior_version, ..Default::default() };
    let reply = jobs.revert_job(request).await.map_err(status_error)?.into_inner();
    if !reply.changed {
        println!("Job {name:?} already runs the spec of version {version} (version {}); nothing to do", reply.version);
        return Ok(());
    }
    println!(
        "Job {name:?} reverted to version {version}: now version {}, evaluation {}",
        reply.version,
        short(&reply.eval_id)
    );
    if detach {
        return Ok(());
    }
    let stored =
        jobs.get_job(pb::GetJobRequest { name: name.to_string(), ..Default::default() }).await.map_err(status_error)?;
    let stored = stored.into_inner().job.ok_or_else(|| anyhow!("the server returned no job"))?;
    let job = helios_api::convert::job_from_pb(stored).map_err(|e| anyhow!("cannot read job {name:?}: {e}"))?;
    let expected = counted(&job);
    monitor::watch(conn, name, reply.version, &reply.eval_id, &job, expected).await
}

/// How many allocations `job` asks for, when that does not depend on the nodes (not a system
/// job's): what watching it waits for.
pub fn counted(job: &Job) -> Option<u64> {
    (job.job_type != JobType::System).then(|| job.desired_allocations())
}

/// The commands that read or change a stored job.
pub async fn run_query(servers: &Servers, command: JobCommand) -> Result<()> {
    let mut jobs = client(servers.connect().await?);
    match command {
        JobCommand::Run(_)
        | JobCommand::Validate { .. }
        | JobCommand::Plan { .. }
        | JobCommand::Scale { .. }
        | JobCommand::Revert { .. } => {
            unreachable!("handled by `run`")
        }
        JobCommand::History { name, output: Output { json } } => history::history(&mut jobs, &name, json).await?,
        JobCommand::Inspect { name, version } => history::inspect(&mut jobs, &name, version).await?,
        JobCommand::List { output: Output { json } } => {
            let listed = every_page(pb::ListJobsRequest::default(), |r| {
                let mut jobs = jobs.clone();
                async move { jobs.list_jobs(r).await }
            })
            .await
            .map_err(status_error)?;
            if json {
                return crate::json::print(&listed.iter().map(crate::json::job_summary).collect());
            }
            if listed.is_empty() {
                println!("No jobs");
                return Ok(());
            }
            let now = now();
            let mut table = Table::new(&["NAME", "TYPE", "PRIORITY", "VERSION", "STATUS", "RUNNING", "SUBMITTED"]);
            for j in listed {
                table.row(vec![
                    j.name,
                    type_name(j.r#type),
                    j.priority.to_string(),
                    j.version.to_string(),
                    status_name(j.status, j.stopped),
                    format!("{}/{}", j.running, j.desired),
                    time_of(j.submit_time.as_ref()).ago(now),
                ]);
            }
            table.print();
        }
        JobCommand::Status { name: None, output: Output { json } } => {
            return Box::pin(run_query(servers, JobCommand::List { output: Output { json } })).await
        }
        JobCommand::Status { name: Some(name), output: Output { json } } => {
            let reply = jobs
                .get_job_status(pb::GetJobStatusRequest { name, ..Default::default() })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                return crate::json::print(&crate::json::job_status(&reply));
            }
            print_status(reply)?;
        }
        JobCommand::Logs { name, stderr, follow } => {
            let channel = servers.connect().await?;
            let reply = jobs
                .get_job_status(pb::GetJobStatusRequest { name: name.clone(), ..Default::default() })
                .await
                .map_err(status_error)?
                .into_inner();
            if reply.allocations.is_empty() {
                println!("Job {name:?} has no allocations yet");
                return Ok(());
            }
            // All allocations at once, so following one does not hold up the others.
            let mut streams = Vec::new();
            for a in reply.allocations {
                let mut allocs = crate::alloc::client(channel.clone());
                streams.push(tokio::spawn(async move {
                    let prefix = crate::alloc::short(&a.id);
                    let mut partial = Vec::new();
                    crate::alloc::stream_logs(&mut allocs, &a.id, String::new(), stderr, None, follow, |chunk| {
                        partial.extend_from_slice(chunk);
                        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = partial.drain(..=end).collect();
                            print!("{prefix} {}", String::from_utf8_lossy(&line));
                        }
                        Ok(())
                    })
                    .await
                    .map(|()| {
                        if !partial.is_empty() {
                            println!("{prefix} {}", String::from_utf8_lossy(&partial));
                        }
                    })
                }));
            }
            for s in streams {
                if let Err(e) = s.await? {
                    eprintln!("Error: {e:#}");
                }
            }
        }
        JobCommand::Stop { name, purge } => {
            let reply = jobs
                .stop_job(pb::StopJobRequest { name: name.clone(), purge, ..Default::default() })
                .await
                .map_err(status_error)?;
            let verb = if purge { "stopped and purged" } else { "stopped" };
            println!("Job {name:?} {verb}: evaluation {}", short(&reply.into_inner().eval_id));
        }
    }
    Ok(())
}

fn validate_file(file: &std::path::Path) -> Result<()> {
    let loaded = crate::jobfile::load(file)?;
    for note in &loaded.notes {
        eprintln!("Note: {note}");
    }
    let job = loaded.job;
    let (groups, allocations) = (job.task_groups.len(), job.desired_allocations());
    println!(
        "Job {:?} is valid: a {} job, {groups} group(s), {allocations} allocation(s)",
        job.name,
        job.job_type.as_str()
    );
    Ok(())
}

fn print_status(reply: pb::GetJobStatusResponse) -> Result<()> {
    let job = reply.job.ok_or_else(|| anyhow!("server returned a status without its job"))?;
    let now = now();
    let submitted = time_of(job.submit_time.as_ref());
    println!("Name        = {}", job.name);
    println!("Type        = {}", type_name(job.r#type));
    println!("Priority    = {}", job.priority);
    println!("Version     = {}", job.version);
    println!("Status      = {}", status_name(job.status, job.stopped));
    println!("Submitted   = {} ({})", submitted.to_rfc3339(), submitted.ago(now));
    println!("Ready nodes = {}", reply.ready_nodes);
    println!("Placement   = {}", reply.placement);

    println!("\nTask Groups");
    let mut groups = Table::new(&["GROUP", "COUNT", "TASK", "DRIVER", "COMMAND", "CPU", "MEMORY"]);
    let core = helios_api::convert::job_from_pb(job.clone()).ok();
    for group in core.iter().flat_map(|j| j.task_groups.iter()) {
        for task in &group.tasks {
            let (driver, command) = match &task.driver {
                TaskDriver::Exec(e) => ("exec", shell_words(&e.command, &e.args)),
                TaskDriver::RawExec(e) => ("raw_exec", shell_words(&e.command, &e.args)),
                TaskDriver::Docker(d) => ("docker", d.image.clone()),
            };
            groups.row(vec![
                group.name.clone(),
                group.count.to_string(),
                task.name.clone(),
                driver.to_string(),
                command,
                format!("{} MHz", task.resources.cpu_mhz),
                format!("{} MB", task.resources.memory_mb),
            ]);
        }
    }
    groups.print();

    println!("\nAllocations");
    if reply.allocations.is_empty() {
        println!("No allocations placed");
    } else {
        let mut allocs = Table::new(&["ID", "NODE", "GROUP", "VERSION", "DESIRED", "STATUS", "CREATED"]);
        for a in &reply.allocations {
            allocs.row(vec![
                short(&a.id),
                a.node_id.clone(),
                a.task_group.clone(),
                a.job_version.to_string(),
                a.desired_status().label().to_string(),
                a.client_status().label().to_string(),
                helios_api::convert::time_of(a.create_time.as_ref()).ago(now),
            ]);
        }
        allocs.print();
    }

    println!("\nEvaluations");
    let mut evals = Table::new(&["ID", "TRIGGER", "STATUS", "CREATED"]);
    for e in &reply.evaluations {
        let (trigger, status) = (e.trigger().label().to_string(), e.status().label().to_string());
        evals.row(vec![short(&e.id), trigger, status, time_of(e.create_time.as_ref()).ago(now)]);
    }
    evals.print();
    Ok(())
}

fn shell_words(command: &str, args: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(quote(command)).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

/// The last 8 characters: ids are time-ordered UUIDs (v7), whose leading characters are the
/// time and repeat between ids made close together; the tail is random.
fn short(id: &str) -> String {
    crate::alloc::short(id)
}

pub fn type_name(t: i32) -> String {
    helios_api::convert::job_type_from_pb(t).map_or("unknown", JobType::as_str).to_string()
}

pub fn status_name(status: i32, stopped: bool) -> String {
    let name = match pb::JobStatus::try_from(status) {
        Ok(pb::JobStatus::Pending) => "pending",
        Ok(pb::JobStatus::Running) => "running",
        Ok(pb::JobStatus::Dead) => "dead",
        _ => "unknown",
    };
    if stopped && name != "dead" {
        format!("{name} (stopping)")
    } else {
        name.to_string()
    }
}
