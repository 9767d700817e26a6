//! `helios-cli alloc ...`, and the log streaming `job logs` shares.

use std::io::Write;

use crate::connect::Conn;
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use helios_api::convert::{seconds_of, time_of, timestamp_from_pb, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::allocation_service_client::AllocationServiceClient;
use helios_core::Timestamp;

use crate::connect::{status_error, Servers};
use crate::json::Output;
use crate::table::{now, Table};

#[derive(Subcommand, Debug)]
pub enum AllocCommand {
    /// Allocations, optionally of one job or on one node.
    List {
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// One allocation: where it runs and each task's events.
    Status {
        id: String,
        /// Also the scores that decided its node (Nomad's placement metrics).
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        output: Output,
    },
    /// A task's output.
    Logs(LogArgs),
    /// Stop an allocation; the scheduler places a replacement while its job wants it.
    Stop { id: String },
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Allocation id (or its first or last characters).
    pub id: String,
    /// The task (needed when the group has several).
    #[arg(long)]
    pub task: Option<String>,
    /// stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
    /// Keep streaming until the task exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

pub fn client(channel: Conn) -> AllocationServiceClient<Conn> {
    AllocationServiceClient::new(channel).max_decoding_message_size(crate::connect::MAX_RESPONSE)
}

pub fn short(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

pub async fn run(servers: &Servers, command: AllocCommand) -> Result<()> {
    let mut allocs = client(servers.connect().await?);
    match command {
        AllocCommand::List { job, node, output: Output { json } } => {
            let request = pb::ListAllocationsRequest { job_name: job, node_id: node, ..Default::default() };
            let allocations = every_page(request, |r| {
                let mut allocs = allocs.clone();
                async move { allocs.list_allocations(r).await }
            })
            .await
            .map_err(status_error)?;
            if json {
                return crate::json::print(&allocations.iter().map(crate::json::allocation).collect());
            }
            if allocations.is_empty() {
                println!("No allocations");
                return Ok(());
            }
            let now = now();
            let mut table = Table::new(&["ID", "NAME", "NODE", "VERSION", "DESIRED", "STATUS", "MODIFIED"]);
            for a in allocations {
                let (desired, client) = (a.desired_status().label(), a.client_status().label());
                let modified = time_of(a.update_time.as_ref()).ago(now);
                table.row(vec![
                    short(&a.id),
                    a.name,
                    a.node_id,
                    a.job_version.to_string(),
                    desired.to_string(),
                    client.to_string(),
                    modified,
                ]);
            }
            table.print();
        }
        AllocCommand::Stop { id } => {
            let reply = allocs.stop_allocation(pb::StopAllocationRequest { id }).await.map_err(status_error)?;
            let reply = reply.into_inner();
            println!(
                "Allocation {} stopping; evaluation {} places its replacement",
                short(&reply.alloc_id),
                short(&reply.eval_id)
            );
        }
        AllocCommand::Status { id, verbose, output: Output { json } } => {
            let a = allocs
                .get_allocation(pb::GetAllocationRequest { id, ..Default::default() })
                .await
                .map_err(status_error)?
                .into_inner()
                .allocation
                .ok_or_else(|| anyhow!("server returned no allocation"))?;
            if json {
                return crate::json::print(&crate::json::allocation(&a));
            }
            let now = now();
            println!("ID          = {}", a.id);
            println!("Name        = {}", a.name);
            println!("Job         = {} (version {})", a.job_name, a.job_version);
            println!("Node        = {}", a.node_id);
            if !a.deployment_id.is_empty() {
                let canary = if a.canary { " (canary)" } else { "" };
                println!("Deployment  = {}{canary}", a.deployment_id);
            }
            let why = |s: &str| if s.is_empty() { String::new() } else { format!(" ({s})") };
            println!("Desired     = {}{}", a.desired_status().label(), why(&a.desired_description));
            println!("Status      = {}{}", a.client_status().label(), why(&a.client_description));
            let created = time_of(a.create_time.as_ref());
            println!("Created     = {} ({})", created.to_rfc3339(), created.ago(now));
            print_reschedule(&a, now);
            print_services(&a);
            for (task, state) in &a.task_states {
                let failed = if state.failed { " (failed)" } else { "" };
                println!("\nTask {task:?} is {}{failed}", state.state().label());
                let mut events = Table::new(&["TIME", "TYPE", "DESCRIPTION"]);
                for e in &state.events {
                    let time = time_of(e.event_time.as_ref()).to_rfc3339();
                    events.row(vec![time, e.kind().label().to_string(), e.message.clone()]);
                }
                events.print();
            }
            if verbose {
                println!("\nPlacement metrics");
                match &a.metrics {
                    Some(m) => crate::placement::print(m),
                    None => println!("None kept (placed before stored format 7)"),
                }
            }
        }
        AllocCommand::Logs(args) => {
            let mut out = std::io::stdout().lock();
            stream_logs(
                &mut allocs,
                &args.id,
                args.task.unwrap_or_default(),
                args.stderr,
                args.tail,
                args.follow,
                |chunk| {
                    out.write_all(chunk)?;
                    out.flush()
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// The services its agent registered, with each check's status.
fn print_services(a: &pb::Allocation) {
    if a.services.is_empty() {
        return;
    }
    println!("\nServices");
    let mut table = Table::new(&["SERVICE", "ADDRESS", "CHECK", "STATUS", "OUTPUT"]);
    for r in &a.services {
        let address = format!("{}:{}", r.address, r.port);
        if r.checks.is_empty() {
            table.row(vec![r.service.clone(), address.clone(), "-".into(), "-".into(), String::new()]);
        }
        for c in &r.checks {
            table.row(vec![
                r.service.clone(),
                address.clone(),
                c.name.clone(),
                c.status().label().into(),
                c.output.clone(),
            ]);
        }
    }
    table.print();
}

/// What became of a failed allocation, and the reschedules that led to this one.
fn print_reschedule(a: &pb::Allocation, now: Timestamp) {
    if let Some(next) = &a.next_allocation {
        println!("Replaced by = {next}");
    }
    if let Some(at) = timestamp_from_pb(a.reschedule_time.as_ref()) {
        let wait = at.0.saturating_sub(now.0).div_ceil(1000);
        if wait == 0 {
            println!("Reschedule  = due since {}: waiting to be placed (job status says why)", at.to_rfc3339());
        } else {
            println!("Reschedule  = in {} ({})", helios_core::time::duration_text(wait), at.to_rfc3339());
        }
    }
    if !a.not_rescheduled.is_empty() {
        println!("Reschedule  = not rescheduled: {}", a.not_rescheduled);
    }
    if a.reschedule_events.is_empty() {
        return;
    }
    println!("\nRescheduled {} time(s), this allocation last:", a.reschedule_events.len());
    let mut history = Table::new(&["TIME", "REPLACED", "ON NODE", "AFTER"]);
    for e in &a.reschedule_events {
        history.row(vec![
            time_of(e.reschedule_time.as_ref()).to_rfc3339(),
            e.prev_alloc_id.clone(),
            e.prev_node_id.clone(),
            helios_core::time::duration_text(seconds_of(e.delay.as_ref())),
        ]);
    }
    history.print();
}

/// Streams one task's log, handing each chunk to `sink`.
pub async fn stream_logs(
    allocs: &mut AllocationServiceClient<Conn>,
    id: &str,
    task: String,
    stderr: bool,
    tail: Option<u32>,
    follow: bool,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let request = pb::AllocLogsRequest { id: id.to_string(), task, stderr, tail, follow };
    let mut stream = allocs.alloc_logs(request).await.map_err(status_error)?.into_inner();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        sink(&chunk.data)?;
    }
    Ok(())
}
