//! `job history` and `job inspect`: a job's versions and what happened to its allocations.

use crate::connect::Conn;
use anyhow::{anyhow, Result};
use helios_api::convert::{job_from_pb, time_of, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::job_service_client::JobServiceClient;
use serde_json::json;

use crate::connect::status_error;
use crate::table::{now, Table};

/// One task event of one allocation, for the timeline.
struct Event<'a> {
    alloc: &'a pb::Allocation,
    task: &'a str,
    event: &'a pb::TaskEvent,
}

/// Every stored version of job `name`, oldest first.
async fn versions(jobs: &JobServiceClient<Conn>, name: &str) -> Result<Vec<pb::Job>> {
    let request = pb::GetJobVersionsRequest { name: name.to_string(), ..Default::default() };
    every_page(request, |r| {
        let mut jobs = jobs.clone();
        async move { jobs.get_job_versions(r).await }
    })
    .await
    .map_err(status_error)
}

pub async fn history(jobs: &mut JobServiceClient<Conn>, name: &str, json: bool) -> Result<()> {
    let versions = versions(jobs, name).await?;
    let status = jobs.get_job_status(pb::GetJobStatusRequest { name: name.to_string(), ..Default::default() });
    let status = status.await.map_err(status_error)?.into_inner();
    let mut events: Vec<Event> = status
        .allocations
        .iter()
        .flat_map(|alloc| {
            alloc.task_states.iter().flat_map(move |(task, state)| {
                state.events.iter().map(move |event| Event { alloc, task: task.as_str(), event })
            })
        })
        .collect();
    events.sort_by_key(|e| (time_of(e.event.event_time.as_ref()), e.alloc.id.clone()));
    if json {
        let doc = json!({
            "job": name,
            "versions": versions.iter().map(|v| json!({
                "version": v.version, "submitted_at_ms": time_of(v.submit_time.as_ref()).0, "stable": v.stable,
                "groups": v.task_groups.iter().map(|g| json!({"name": g.name, "count": g.count.unwrap_or(1)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "events": events.iter().map(|e| json!({
                "time_ms": time_of(e.event.event_time.as_ref()).0, "alloc_id": e.alloc.id, "node_id": e.alloc.node_id,
                "alloc_version": e.alloc.job_version, "task": e.task, "kind": e.event.kind().label(),
                "message": e.event.message, "exit_code": e.event.exit_code,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let now = now();
    println!("Versions");
    // Stable: its deployment succeeded (what auto_revert goes back to).
    let mut table = Table::new(&["VERSION", "STABLE", "SUBMITTED", "GROUPS"]);
    for v in &versions {
        let groups: Vec<String> =
            v.task_groups.iter().map(|g| format!("{} x{}", g.name, g.count.unwrap_or(1))).collect();
        let submitted = time_of(v.submit_time.as_ref());
        table.row(vec![
            v.version.to_string(),
            v.stable.to_string(),
            format!("{} ({})", submitted.to_rfc3339(), submitted.ago(now)),
            groups.join(", "),
        ]);
    }
    table.print();
    println!("\nTask events");
    if events.is_empty() {
        println!("No task has started yet");
        return Ok(());
    }
    // An allocation's version is its version now (one updated in place moves to the new one),
    // so events are listed by allocation, not by version.
    let mut table = Table::new(&["TIME", "ALLOC", "NODE", "TASK", "EVENT", "MESSAGE"]);
    for e in &events {
        table.row(vec![
            time_of(e.event.event_time.as_ref()).to_rfc3339(),
            crate::alloc::short(&e.alloc.id),
            e.alloc.node_id.clone(),
            e.task.to_string(),
            e.event.kind().label().to_string(),
            e.event.message.clone(),
        ]);
    }
    table.print();
    Ok(())
}

/// The stored spec as a JSON job file (`job run FILE` takes it back unchanged).
pub async fn inspect(jobs: &mut JobServiceClient<Conn>, name: &str, version: Option<u64>) -> Result<()> {
    let versions = versions(jobs, name).await?;
    let wanted = match version {
        Some(v) => versions.into_iter().find(|j| j.version == v),
        None => versions.into_iter().last(),
    };
    let job = wanted.ok_or_else(|| anyhow!("job {name:?} has no version {}", version.unwrap_or_default()))?;
    let job = job_from_pb(job).map_err(|e| anyhow!("the server returned a job this CLI cannot read: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&crate::jobfile::export::to_file_json(&job))?);
    Ok(())
}
