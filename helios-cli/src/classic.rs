//! Spotify Helios's workflow, as commands of their own: `hosts`, `jobs`, `status`, `create`,
//! `deploy`, `undeploy`, `history`, `remove`.
//!
//! A Helios job id, `NAME:VERSION`, is the job's name. `create` stores a system job with one
//! docker task, pinned to no host, so nothing runs; `deploy` adds hosts (node ids) to its pin
//! and `undeploy` takes them away. The pin is a job constraint on `node.id`, and the hosts are
//! also kept in the job's meta (`helios.hosts`) so they read back exactly.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use helios_api::convert::Label;
use helios_api::pages::every_page;
use helios_api::pb;
use helios_core::{Constraint, ConstraintOperator, DockerConfig, Job, JobType, PortMapping, TaskDriver};

use crate::connect::{status_error, Servers};
use crate::json::Output;
use crate::table::Table;

/// The job meta holding the hosts a Helios-style job is deployed to, comma-separated.
pub const HOSTS_META: &str = "helios.hosts";

#[derive(Subcommand, Debug)]
pub enum ClassicCommand {
    /// The client nodes (Helios's hosts): the same as `node list`.
    Hosts {
        #[command(flatten)]
        output: Output,
    },
    /// Every job: the same as `job list`.
    Jobs {
        #[command(flatten)]
        output: Output,
    },
    /// Where each job runs: one line per job and host.
    Status {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Store a job (NAME:VERSION) that runs IMAGE, without running it anywhere yet.
    Create(CreateArgs),
    /// Run a created job on these hosts (node ids), one container each.
    Deploy {
        id: String,
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Stop a job on these hosts, or on every host (-a).
    Undeploy {
        id: String,
        hosts: Vec<String>,
        #[arg(short = 'a', long = "all", conflicts_with = "hosts", required_unless_present = "hosts")]
        all: bool,
    },
    /// A job's versions and its containers' events: the same as `job history`.
    History {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Forget a job that is deployed nowhere.
    Remove { id: String },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The job id, NAME:VERSION.
    pub id: String,
    pub image: String,
    /// A container port, NAME=PORT[:HOSTPORT]; repeatable.
    #[arg(short = 'p', long = "port", value_parser = PortMapping::parse)]
    pub ports: Vec<PortMapping>,
    /// Environment variable, KEY=VALUE; repeatable.
    #[arg(long = "env", value_parser = crate::job::parse_env)]
    pub env: Vec<(String, String)>,
    /// The command to run instead of the image's (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `NAME:VERSION` checked: the name names the job's group and task (and so its containers).
fn parse_id(id: &str) -> Result<(&str, &str)> {
    let Some((name, version)) = id.split_once(':').filter(|(n, v)| !n.is_empty() && !v.is_empty()) else {
        bail!("a Helios job id is NAME:VERSION, got {id:?}");
    };
    helios_core::validate::check_name(name).map_err(|p| anyhow!("invalid job name {name:?} in {id:?}: {p}"))?;
    Ok((name, version))
}

pub async fn run(servers: &Servers, command: ClassicCommand) -> Result<()> {
    match command {
        ClassicCommand::Hosts { output: Output { json } } => {
            crate::node::run(servers, crate::node::NodeCommand::List { output: Output { json } }).await
        }
        ClassicCommand::Jobs { output: Output { json } } => {
            crate::job::run_query(servers, crate::job::JobCommand::List { output: Output { json } }).await
        }
        ClassicCommand::History { id, output: Output { json } } => {
            crate::job::run_query(servers, crate::job::JobCommand::History { name: id, output: Output { json } }).await
        }
        ClassicCommand::Status { job, output: Output { json } } => status(servers, job, json).await,
        ClassicCommand::Create(args) => create(servers, args).await,
        ClassicCommand::Deploy { id, hosts } => {
            let known = node_ids(servers).await?;
            if let Some(unknown) = hosts.iter().find(|h| !known.contains(*h)) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                bail!("unknown host {unknown:?} (hosts: {}; see helios-cli hosts)", known.join(", "));
            }
            repin(servers, &id, |pinned| pinned.extend(hosts.iter().cloned())).await
        }
        ClassicCommand::Undeploy { id, hosts, all } => {
            repin(servers, &id, |pinned| {
                if all {
                    pinned.clear();
                } else {
                    pinned.retain(|h| !hosts.contains(h));
                }
            })
            .await
        }
        ClassicCommand::Remove { id } => {
            let job = stored(servers, &id).await?;
            let deployed = hosts_of(&job);
            if !deployed.is_empty() {
                let hosts: Vec<&str> = deployed.iter().map(String::as_str).collect();
                bail!("job {id} is deployed on {}: undeploy it first (helios-cli undeploy {id} -a)", hosts.join(", "));
            }
            let mut jobs = crate::job::client(servers.connect().await?);
            jobs.stop_job(pb::StopJobRequest { name: id.clone(), purge: true, ..Default::default() })
                .await
                .map_err(status_error)?;
            println!("Removed job {id}");
            Ok(())
        }
    }
}

async fn create(servers: &Servers, args: CreateArgs) -> Result<()> {
    let (name, _) = parse_id(&args.id)?;
    let mut job = Job::exec(name, "", Vec::new());
    job.name = args.id.clone();
    job.set_type(JobType::System);
    job.task_groups[0].restart = helios_core::RestartPolicy::default_for(JobType::System);
    let task = &mut job.task_groups[0].tasks[0];
    let mut command = args.command.into_iter();
    task.driver = TaskDriver::Docker(DockerConfig {
        command: command.next(),
        args: command.collect(),
        ports: args.ports,
        ..DockerConfig::for_image(&args.image)
    });
    task.env = args.env.into_iter().collect();
    pin(&mut job, &BTreeSet::new());
    // Checked here too: a server of an older build (during an upgrade) ignores `create_only`.
    let mut jobs = crate::job::client(servers.connect().await?);
    match jobs.get_job(pb::GetJobRequest { name: args.id.clone(), ..Default::default() }).await {
        Ok(_) => bail!("job {} already exists (helios-cli jobs)", args.id),
        Err(status) if status.code() == tonic::Code::NotFound => {}
        Err(status) => return Err(status_error(status)),
    }
    let request = pb::SubmitJobRequest {
        job: Some(helios_api::convert::job_to_pb(&job)),
        create_only: true,
        ..Default::default()
    };
    match crate::job::send(servers, request).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::Aborted => {
            bail!("job {} already exists (helios-cli jobs)", args.id)
        }
        Err(status) => return Err(status_error(status)),
    }
    println!("Created job {}; deploy it with: helios-cli deploy {} HOST...", args.id, args.id);
    Ok(())
}

/// The stored job `id` (a Helios-style id).
async fn stored(servers: &Servers, id: &str) -> Result<Job> {
    parse_id(id)?;
    crate::job::read(servers, id).await
}

/// Changes the hosts job `id` is pinned to, submits it over the version read (made again if a
/// concurrent deploy or undeploy got in first), and watches it settle.
async fn repin(servers: &Servers, id: &str, change: impl Fn(&mut BTreeSet<String>)) -> Result<()> {
    parse_id(id)?;
    crate::job::change_stored(servers, id, |mut job| {
        let mut hosts = hosts_of(&job);
        change(&mut hosts);
        pin(&mut job, &hosts);
        // One container per host; watching a job deployed nowhere would wait for nothing.
        Ok(crate::job::Submission { job, detach: hosts.is_empty(), expected: Some(hosts.len() as u64) })
    })
    .await
}

fn hosts_of(job: &Job) -> BTreeSet<String> {
    job.meta
        .get(HOSTS_META)
        .map(|h| h.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Pins `job` to `hosts` (node ids): none means it runs nowhere.
fn pin(job: &mut Job, hosts: &BTreeSet<String>) {
    let alternatives: Vec<String> = hosts.iter().map(|h| regex_escape(h)).collect();
    job.constraints.retain(|c| c.attribute != "node.id");
    job.constraints.push(Constraint {
        attribute: "node.id".to_string(),
        operator: ConstraintOperator::Regexp,
        // `^$` matches no node: ids are never empty.
        value: if hosts.is_empty() { "^$".to_string() } else { format!("^({})$", alternatives.join("|")) },
    });
    job.meta.insert(HOSTS_META.to_string(), hosts.iter().cloned().collect::<Vec<_>>().join(","));
}

/// Node ids hold letters, digits, '-', '_' and '.': only '.' means something in a regex.
fn regex_escape(id: &str) -> String {
    id.replace('.', "\\.")
}

async fn node_ids(servers: &Servers) -> Result<BTreeSet<String>> {
    let nodes = pb::node_service_client::NodeServiceClient::new(servers.connect().await?)
        .max_decoding_message_size(crate::connect::MAX_RESPONSE);
    let listed = every_page(pb::ListNodesRequest::default(), |r| {
        let mut nodes = nodes.clone();
        async move { nodes.list_nodes(r).await }
    })
    .await
    .map_err(status_error)?;
    Ok(listed.into_iter().map(|n| n.id).collect())
}

/// One line per job and host: what the job should do there (its goal) and what it does.
async fn status(servers: &Servers, only: Option<String>, json: bool) -> Result<()> {
    let mut jobs = crate::job::client(servers.connect().await?);
    let names: Vec<String> = match only {
        Some(name) => vec![name],
        None => every_page(pb::ListJobsRequest::default(), |r| {
            let mut jobs = jobs.clone();
            async move { jobs.list_jobs(r).await }
        })
        .await
        .map_err(status_error)?
        .into_iter()
        .map(|j| j.name)
        .collect(),
    };
    let mut table = Table::new(&["JOB ID", "HOST", "GOAL", "STATE", "ALLOC", "PORTS"]);
    let mut rows = Vec::new();
    for name in names {
        let reply = jobs
            .get_job_status(pb::GetJobStatusRequest { name: name.clone(), ..Default::default() })
            .await
            .map_err(status_error)?;
        // What is deployed: allocations still running or stopping, and wanted ones that failed.
        use pb::{AllocationClientStatus as Client, AllocationDesiredStatus as Desired};
        let finished =
            |a: &pb::Allocation| matches!(a.client_status(), Client::Complete | Client::Failed | Client::Lost);
        let shown = |a: &&pb::Allocation| {
            !finished(a) || (a.desired_status() == Desired::Run && a.client_status() == Client::Failed)
        };
        let allocs = reply.into_inner().allocations;
        for alloc in allocs.iter().filter(shown) {
            let ports = alloc
                .task_states
                .values()
                .filter_map(|s| {
                    s.events.iter().rev().find_map(|e| e.message.split_once("; ports ").map(|(_, p)| p.to_string()))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let goal = if alloc.desired_status() == Desired::Run { "start" } else { "stop" };
            let state = alloc.client_status().label();
            rows.push(serde_json::json!({
                "job": name, "host": alloc.node_id, "goal": goal, "state": state,
                "alloc_id": alloc.id, "ports": ports,
            }));
            table.row(vec![
                name.clone(),
                alloc.node_id.clone(),
                goal.to_string(),
                state.to_string(),
                crate::alloc::short(&alloc.id),
                ports,
            ]);
        }
    }
    if json {
        return crate::json::print(&serde_json::Value::Array(rows));
    }
    table.print();
    Ok(())
}
