//! A stored job written back in the job-file shape (`job inspect`): what it prints can be saved
//! as a `.json` file and submitted again unchanged.

use helios_core::service::{Check, CheckKind, Service};
use helios_core::{
    Affinity, Constraint, Job, JobType, MigrateStrategy, ReschedulePolicy, RestartMode, Spread, Task, TaskDriver,
    TaskGroup, UpdateStrategy,
};
use serde_json::{json, Value};

pub fn to_file_json(job: &Job) -> Value {
    json!({
        "name": job.name,
        "type": job.job_type.as_str(),
        "priority": job.priority,
        "meta": job.meta,
        "constraint": constraints(&job.constraints),
        "affinity": affinities(&job.affinities),
        "spread": spreads(&job.spreads),
        "group": job.task_groups.iter().map(|g| group(g, job.job_type)).collect::<Vec<_>>(),
    })
}

fn group(g: &TaskGroup, job_type: JobType) -> Value {
    let mode = match g.restart.mode {
        RestartMode::Fail => "fail",
        RestartMode::Delay => "delay",
    };
    let mut group = json!({
        "name": g.name,
        "count": g.count,
        "restart": {
            "attempts": g.restart.attempts,
            "interval": format!("{}s", g.restart.interval_secs),
            "delay": format!("{}s", g.restart.delay_secs),
            "mode": mode,
        },
        "meta": g.meta,
        "constraint": constraints(&g.constraints),
        "task": g.tasks.iter().map(task).collect::<Vec<_>>(),
    });
    // Both blocks are a wave size and a health rule.
    let waves = |m: &MigrateStrategy| {
        json!({
            "max_parallel": m.max_parallel,
            "health_check": m.health_check.as_str(),
            "min_healthy_time": format!("{}s", m.min_healthy_time_secs),
            "healthy_deadline": format!("{}s", m.healthy_deadline_secs),
        })
    };
    if g.migrate != MigrateStrategy::default() {
        group["migrate"] = waves(&g.migrate);
    }
    if g.update != UpdateStrategy::default() {
        let u = &g.update;
        group["update"] = if job_type == JobType::System {
            // All a system job's update has (Nomad's).
            json!({"max_parallel": u.max_parallel, "stagger": format!("{}s", u.stagger_secs)})
        } else {
            let mut update = waves(&u.health_rule());
            update["progress_deadline"] = json!(format!("{}s", u.progress_deadline_secs));
            update["auto_revert"] = json!(u.auto_revert);
            update["auto_promote"] = json!(u.auto_promote);
            update["canary"] = json!(u.canary);
            update
        };
    }
    if !g.affinities.is_empty() {
        group["affinity"] = affinities(&g.affinities);
    }
    if !g.spreads.is_empty() {
        group["spread"] = spreads(&g.spreads);
    }
    if g.reschedule != ReschedulePolicy::default_for(job_type) {
        let r = &g.reschedule;
        group["reschedule"] = json!({
            "attempts": r.attempts,
            "interval": format!("{}s", r.interval_secs),
            "delay": format!("{}s", r.delay_secs),
            "delay_function": r.delay_function.as_str(),
            "max_delay": format!("{}s", r.max_delay_secs),
            "unlimited": r.unlimited,
        });
    }
    if !g.ports.is_empty() {
        let port = |p: &helios_core::GroupPort| match p.static_port {
            Some(port) => json!({ "static": port }),
            None => json!({}),
        };
        let ports: serde_json::Map<String, Value> = g.ports.iter().map(|p| (p.label.clone(), port(p))).collect();
        group["network"] = json!({ "port": ports });
    }
    let services_of = |task: Option<&str>| -> Vec<Value> {
        g.services.iter().filter(|s| s.task.as_deref() == task).map(service).collect()
    };
    group["service"] = json!(services_of(None));
    for (t, spec) in g.tasks.iter().zip(group["task"].as_array_mut().into_iter().flatten()) {
        spec["service"] = json!(services_of(Some(&t.name)));
    }
    group
}

fn service(s: &Service) -> Value {
    let mut out = json!({
        "name": s.name,
        "tags": s.tags,
        "meta": s.meta,
        "address_mode": s.address_mode.as_str(),
        "provider": "nomad",
        "check": s.checks.iter().map(check).collect::<Vec<_>>(),
    });
    if let Some(port) = &s.port {
        out["port"] = json!(port);
    }
    out
}

fn check(c: &Check) -> Value {
    let mut out = json!({
        "name": c.name,
        "type": c.kind.as_str(),
        "interval": format!("{}ms", c.interval_ms),
        "timeout": format!("{}ms", c.timeout_ms),
        "initial_status": c.initial_status.as_str(),
        "success_before_passing": c.success_before_passing,
        "failures_before_critical": c.failures_before_critical,
    });
    if let Some(port) = &c.port {
        out["port"] = json!(port);
    }
    match &c.kind {
        CheckKind::Http { path, method, headers } => {
            out["path"] = json!(path);
            out["method"] = json!(method);
            out["header"] = json!(headers);
        }
        CheckKind::Tcp => {}
        CheckKind::Grpc { service } => out["grpc_service"] = json!(service),
        CheckKind::Script { task, command, args } => {
            out["task"] = json!(task);
            out["command"] = json!(command);
            out["args"] = json!(args);
        }
    }
    if let Some(r) = &c.check_restart {
        out["check_restart"] = json!({
            "limit": r.limit,
            "grace": format!("{}ms", r.grace_ms),
            "ignore_warnings": r.ignore_warnings,
        });
    }
    out
}

fn task(t: &Task) -> Value {
    let config = match &t.driver {
        TaskDriver::Exec(e) | TaskDriver::RawExec(e) => {
            let mut config = json!({ "command": e.command, "args": e.args });
            if e.cpu_hard_limit {
                config["cpu_hard_limit"] = json!(true);
            }
            config
        }
        TaskDriver::Docker(d) => {
            let ports: Vec<String> = d
                .ports
                .iter()
                .map(|p| match p.host_port {
                    Some(host) => format!("{}={}:{host}", p.name, p.container_port),
                    None => format!("{}={}", p.name, p.container_port),
                })
                .collect();
            let mut config = json!({
                "image": d.image,
                "entrypoint": d.entrypoint,
                "args": d.args,
                "ports": ports,
                "labels": d.labels,
                "volumes": d.volumes,
                "cpu_hard_limit": d.cpu_hard_limit,
            });
            for (key, value) in
                [("command", &d.command), ("work_dir", &d.working_dir), ("network_mode", &d.network_mode)]
            {
                if let Some(value) = value {
                    config[key] = json!(value);
                }
            }
            if d.privileged {
                config["privileged"] = json!(true);
            }
            for (key, caps) in [("cap_add", &d.cap_add), ("cap_drop", &d.cap_drop)] {
                if !caps.is_empty() {
                    config[key] = json!(caps);
                }
            }
            if !d.devices.is_empty() {
                let device = |d: &helios_core::DockerDevice| {
                    let mut device = json!({ "host_path": d.host_path });
                    for (key, value) in
                        [("container_path", &d.container_path), ("cgroup_permissions", &d.cgroup_permissions)]
                    {
                        if let Some(value) = value {
                            device[key] = json!(value);
                        }
                    }
                    device
                };
                config["devices"] = d.devices.iter().map(device).collect();
            }
            config
        }
    };
    let mut task = json!({
        "name": t.name,
        "driver": t.driver.name(),
        "config": config,
        "env": t.env,
        "resources": { "cpu": t.resources.cpu_mhz, "memory": t.resources.memory_mb },
        "constraint": constraints(&t.constraints),
        "kill_timeout": format!("{}s", t.kill_timeout_secs),
    });
    if let Some(user) = &t.user {
        task["user"] = json!(user);
    }
    task
}

fn constraints(list: &[Constraint]) -> Vec<Value> {
    list.iter()
        .map(|c| json!({ "attribute": c.attribute, "operator": c.operator.as_str(), "value": c.value }))
        .collect()
}

fn affinities(affinities: &[Affinity]) -> Value {
    let each = |a: &Affinity| json!({ "attribute": a.attribute, "operator": a.operator.as_str(), "value": a.value, "weight": a.weight });
    Value::Array(affinities.iter().map(each).collect())
}

fn spreads(spreads: &[Spread]) -> Value {
    let each = |s: &Spread| {
        let targets: serde_json::Map<String, Value> =
            s.targets.iter().map(|t| (t.value.clone(), json!({ "percent": t.percent }))).collect();
        json!({ "attribute": s.attribute, "weight": s.weight, "target": targets })
    };
    Value::Array(spreads.iter().map(each).collect())
}
