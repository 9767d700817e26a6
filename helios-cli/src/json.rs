//! The `--json` documents of the read commands: one shape per kind of thing, shared by every
//! command that shows it, documented in docs/cli.md. Fields are only ever added.

use anyhow::Result;
use helios_api::convert::{seconds_of, timestamp_from_pb, Label};
use helios_api::pb;
use serde_json::{json, Value};

/// The `--json` flag of the read commands.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Output {
    /// Print one JSON document (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

/// Prints `doc` as the command's one JSON document.
pub fn print(doc: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(doc)?);
    Ok(())
}

pub fn job_summary(j: &pb::JobSummary) -> Value {
    json!({
        "name": j.name,
        "type": crate::job::type_name(j.r#type),
        "priority": j.priority,
        "version": j.version,
        "status": crate::job::status_name(j.status, false),
        "stopped": j.stopped,
        "desired": j.desired,
        "running": j.running,
        "submitted_at_ms": millis(j.submit_time.as_ref()),
    })
}

/// A job as an event carries it: its identity and state (`job inspect` shows the spec).
pub fn job(j: &pb::Job) -> Value {
    json!({
        "name": j.name,
        "type": crate::job::type_name(j.r#type),
        "version": j.version,
        "status": crate::job::status_name(j.status, false),
        "stopped": j.stopped,
        "stable": j.stable,
        "submitted_at_ms": millis(j.submit_time.as_ref()),
    })
}

pub fn job_status(s: &pb::GetJobStatusResponse) -> Value {
    let job = s.job.as_ref();
    let spec = job.and_then(|j| helios_api::convert::job_from_pb(j.clone()).ok());
    json!({
        "name": job.map(|j| j.name.clone()),
        "version": job.map(|j| j.version),
        "status": job.map(|j| crate::job::status_name(j.status, false)),
        "stopped": job.map(|j| j.stopped),
        "submitted_at_ms": job.and_then(|j| millis(j.submit_time.as_ref())),
        "ready_nodes": s.ready_nodes,
        "placement": s.placement,
        "spec": spec.as_ref().map(crate::jobfile::export::to_file_json),
        "allocations": s.allocations.iter().map(allocation).collect::<Vec<_>>(),
        "evaluations": s.evaluations.iter().map(evaluation).collect::<Vec<_>>(),
    })
}

pub fn allocation(a: &pb::Allocation) -> Value {
    let resources = a.resources.unwrap_or_default();
    let tasks: serde_json::Map<String, Value> = a
        .task_states
        .iter()
        .map(|(name, s)| {
            let events: Vec<Value> = s
                .events
                .iter()
                .map(|e| json!({"time_ms": millis(e.event_time.as_ref()), "kind": e.kind().label(), "message": e.message, "exit_code": e.exit_code}))
                .collect();
            let task = json!({
                "state": s.state().label(), "failed": s.failed, "restarts": s.restarts,
                "started_at_ms": millis(s.start_time.as_ref()), "finished_at_ms": millis(s.finish_time.as_ref()),
                "events": events,
            });
            (name.clone(), task)
        })
        .collect();
    json!({
        "id": a.id,
        "name": a.name,
        "job": a.job_name,
        "job_version": a.job_version,
        "group": a.task_group,
        "node_id": a.node_id,
        "desired_status": a.desired_status().label(),
        "desired_description": a.desired_description,
        "client_status": a.client_status().label(),
        "client_description": a.client_description,
        "resources": {"cpu_mhz": resources.cpu_mhz, "memory_mb": resources.memory_mb},
        "host_ports": a.host_ports,
        "tasks": tasks,
        "created_at_ms": millis(a.create_time.as_ref()),
        "modified_at_ms": millis(a.update_time.as_ref()),
        "reschedule_events": a.reschedule_events.iter().map(|e| json!({
            "at_ms": millis(e.reschedule_time.as_ref()), "prev_alloc_id": e.prev_alloc_id,
            "prev_node_id": e.prev_node_id, "delay_secs": seconds_of(e.delay.as_ref()),
        })).collect::<Vec<_>>(),
        "next_allocation": a.next_allocation,
        "deployment_id": (!a.deployment_id.is_empty()).then_some(&a.deployment_id),
        "canary": a.canary,
        "reschedule_at_ms": millis(a.reschedule_time.as_ref()),
        "not_rescheduled": a.not_rescheduled,
        "metrics": a.metrics.as_ref().map(crate::placement::to_json),
        "services": a.services.iter().map(|r| json!({
            "service": r.service, "task": r.task, "address": r.address, "port": r.port,
            "checks": r.checks.iter().map(|c| json!({
                "name": c.name, "status": c.status().label(), "output": c.output, "since_ms": millis(c.since.as_ref()),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn evaluation(e: &pb::Evaluation) -> Value {
    json!({
        "id": e.id,
        "trigger": e.trigger().label(),
        "status": e.status().label(),
        "description": e.status_description,
        "failed_placements": e.failed_placements,
        "node_id": e.node_id,
        "created_at_ms": millis(e.create_time.as_ref()),
        "modified_at_ms": millis(e.update_time.as_ref()),
        "wait_until_ms": millis(e.wait_until.as_ref()),
    })
}

pub fn node(n: &pb::Node) -> Value {
    let resources = n.resources.unwrap_or_default();
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "address": n.rpc_addr,
        "status": n.status().label(),
        "eligibility": n.eligibility().label(),
        "draining": n.drain,
        "drivers": n.drivers,
        "resources": {"cpu_mhz": resources.cpu_mhz, "memory_mb": resources.memory_mb},
        "attributes": n.attributes,
        "meta": n.meta,
        "registered_at_ms": millis(n.register_time.as_ref()),
        "status_updated_at_ms": millis(n.status_update_time.as_ref()),
    })
}

pub fn members(reply: &pb::ListMembersResponse) -> Value {
    let members: Vec<Value> = reply
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "address": m.addr, "role": m.role().label(), "voter": m.voter, "term": m.term,
                "last_applied_index": m.last_applied_index, "last_log_index": m.last_log_index,
                "snapshot_index": m.snapshot_index, "purged_index": m.purged_index,
                "format": m.format, "lag": m.lag,
            })
        })
        .collect();
    json!({ "leader_id": reply.leader_id, "members": members, "stored_format": reply.stored_format })
}

/// A time the API gave, as the milliseconds since the epoch this output has always shown
/// (`null` when unset).
pub fn millis(t: Option<&helios_api::prost_types::Timestamp>) -> Option<u64> {
    timestamp_from_pb(t).map(|t| t.as_millis())
}
