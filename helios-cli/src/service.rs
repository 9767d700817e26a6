//! `helios-cli service list|info`: the service catalog (Nomad's `nomad service list|info`).

use anyhow::Result;
use clap::Subcommand;
use helios_api::convert::Label;
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::service_catalog_client::ServiceCatalogClient;
use serde_json::{json, Value};

use crate::connect::{status_error, Servers};
use crate::json::Output;
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Every registered service, with its instances and how many are healthy.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Each instance of a service: address, port, tags, health.
    Info {
        name: String,
        /// Only the instances whose every check passes.
        #[arg(long)]
        healthy: bool,
        /// Every check's status and last output too.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        output: Output,
    },
}

pub async fn run(servers: &Servers, command: ServiceCommand) -> Result<()> {
    let mut catalog =
        ServiceCatalogClient::new(servers.connect().await?).max_decoding_message_size(crate::connect::MAX_RESPONSE);
    match command {
        ServiceCommand::List { output: Output { json } } => {
            let listed = every_page(pb::ListServicesRequest::default(), |r| {
                let mut catalog = catalog.clone();
                async move { catalog.list_services(r).await }
            })
            .await
            .map_err(status_error)?;
            if json {
                let all = listed.iter().map(|s| {
                    json!({"name": s.name, "tags": s.tags, "instances": s.instances, "healthy": s.healthy, "jobs": s.jobs})
                });
                return crate::json::print(&Value::Array(all.collect()));
            }
            if listed.is_empty() {
                println!("No services are registered");
                return Ok(());
            }
            let mut table = Table::new(&["SERVICE", "HEALTHY", "JOBS", "TAGS"]);
            for s in listed {
                table.row(vec![s.name, format!("{}/{}", s.healthy, s.instances), s.jobs.join(","), s.tags.join(",")]);
            }
            table.print();
        }
        ServiceCommand::Info { name, healthy, verbose, output: Output { json } } => {
            let request = pb::GetServiceRequest { name, healthy_only: healthy, ..Default::default() };
            let reply = catalog.get_service(request).await.map_err(status_error)?.into_inner();
            if json {
                return crate::json::print(&Value::Array(reply.instances.iter().map(instance_json).collect()));
            }
            if reply.instances.is_empty() {
                println!("No healthy instances");
                return Ok(());
            }
            let mut table = Table::new(&["ALLOCATION", "JOB", "NODE", "ADDRESS", "TAGS", "HEALTH"]);
            for i in &reply.instances {
                table.row(vec![
                    crate::alloc::short(&i.alloc_id),
                    i.job_name.clone(),
                    i.node_id.clone(),
                    format!("{}:{}", i.address, i.port),
                    i.tags.join(","),
                    health(i).to_string(),
                ]);
            }
            table.print();
            if verbose {
                for i in &reply.instances {
                    println!("\nAllocation {} ({}:{})", i.alloc_id, i.address, i.port);
                    for c in &i.checks {
                        println!("  {} {}: {}", c.status().label(), c.name, c.output);
                    }
                }
            }
        }
    }
    Ok(())
}

fn health(i: &pb::ServiceInstance) -> &'static str {
    match (i.healthy, i.checks.is_empty()) {
        (true, true) => "running (no checks)",
        (true, false) => "passing",
        (false, _) if i.checks.iter().any(|c| c.status() == pb::CheckStatus::Critical) => "critical",
        (false, _) => "warning",
    }
}

fn instance_json(i: &pb::ServiceInstance) -> Value {
    json!({
        "service": i.service,
        "alloc_id": i.alloc_id,
        "job": i.job_name,
        "group": i.task_group,
        "task": i.task,
        "node_id": i.node_id,
        "address": i.address,
        "port": i.port,
        "tags": i.tags,
        "meta": i.meta,
        "healthy": i.healthy,
        "checks": i.checks.iter().map(|c| json!({
            "name": c.name, "status": c.status().label(), "output": c.output,
            "since_ms": crate::json::millis(c.since.as_ref()),
        })).collect::<Vec<_>>(),
    })
}
