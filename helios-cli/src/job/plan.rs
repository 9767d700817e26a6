//! `helios-cli job plan FILE`: what submitting a job file would do, without doing it. Exit codes
//! follow Nomad's: 0 when nothing would change, 1 when allocations would be placed, stopped or
//! updated, 255 on an error.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use helios_api::convert::job_to_pb;
use helios_api::pb;

use crate::connect::{status_error, Servers};

/// The exit code `job plan` uses for an error (Nomad's).
pub const PLAN_ERROR: u8 = 255;

pub async fn plan(servers: &Servers, file: &Path, verbose: bool, json: bool) -> Result<ExitCode> {
    let loaded = crate::jobfile::load(file)?;
    for note in &loaded.notes {
        eprintln!("Note: {note}");
    }
    let mut jobs = super::client(servers.connect().await?);
    let request = pb::PlanJobRequest { job: Some(job_to_pb(&loaded.job)) };
    let plan = jobs.plan_job(request).await.map_err(status_error)?.into_inner();
    // Nomad's 1: the submission would change the job or its allocations.
    let changes = plan.changed || plan.groups.iter().any(|g| g.place + g.stop + g.in_place > 0);
    if json {
        println!("{}", serde_json::to_string_pretty(&plan_json(&loaded.job.name, &plan, changes))?);
    } else {
        print_plan(&loaded.job.name, &plan, file, verbose);
    }
    Ok(if changes { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The `--json` document: documented in docs/cli.md.
fn plan_json(name: &str, plan: &pb::PlanJobResponse, changes: bool) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = plan
        .groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "name": g.name, "place": g.place, "stop": g.stop, "in_place": g.in_place,
                "unchanged": g.unchanged, "unplaced": g.unplaced,
                "failure": (!g.failure.is_empty()).then_some(&g.failure),
                "placements": g.placements.iter().map(|p| serde_json::json!({
                    "name": p.name, "node_id": p.node_id,
                    "metrics": p.metrics.as_ref().map(crate::placement::to_json),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "job": name,
        "exists": plan.exists,
        "changed": plan.changed,
        "current_version": plan.exists.then_some(plan.current_version),
        "next_version": plan.next_version,
        "changes": changes,
        "fits": plan.groups.iter().all(|g| g.failure.is_empty() && g.unplaced == 0),
        "groups": groups,
        "index": plan.index,
    })
}

fn print_plan(name: &str, plan: &pb::PlanJobResponse, file: &Path, verbose: bool) {
    match (plan.exists, plan.changed) {
        (false, _) => println!("+ Job: {name:?} (new, version {})", plan.next_version),
        (true, true) => println!("+/- Job: {name:?} (version {} -> {})", plan.current_version, plan.next_version),
        (true, false) => println!("Job: {name:?} (version {}, unchanged)", plan.current_version),
    }
    for g in &plan.groups {
        let mut parts = Vec::new();
        let counts = [
            (g.place, "to place"),
            (g.stop, "to stop"),
            (g.in_place, "updated in place"),
            (g.unplaced, "cannot be placed"),
        ];
        for (n, what) in counts {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if g.unchanged > 0 || parts.is_empty() {
            parts.push(format!("{} unchanged", g.unchanged));
        }
        println!("  Task Group {:?}: {}", g.name, parts.join(", "));
    }
    println!();
    println!("Scheduler dry-run:");
    let failures: Vec<&pb::GroupPlan> =
        plan.groups.iter().filter(|g| !g.failure.is_empty() || g.unplaced > 0).collect();
    if failures.is_empty() {
        println!("- All allocations fit.");
    } else {
        println!("- WARNING: not every allocation fits.");
        for g in failures {
            println!("  Task Group {:?}: {}", g.name, g.failure);
        }
    }
    if verbose {
        for placement in plan.groups.iter().flat_map(|g| &g.placements) {
            println!();
            println!("{} on node {}:", placement.name, placement.node_id);
            if let Some(m) = &placement.metrics {
                crate::placement::print(m);
            }
        }
    }
    println!();
    println!("Planned at index {}. To submit it: helios-cli job run {}", plan.index, file.display());
}
