//! Services, checks and registrations to and from protobuf.

use helios_core::service::{
    AddressMode, Check, CheckKind, CheckRestart, CheckState, CheckStatus, Service, ServiceRegistration,
};

use super::Problems;
use crate::pb;

pub(super) fn services_from_pb(p: &mut Problems, path: &str, services: Vec<pb::Service>) -> Vec<Service> {
    services
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("{path}[{i}]");
            let address_mode = super::address_mode_from_pb(s.address_mode).unwrap_or_else(|| {
                p.add(format!("{at}.address_mode"), format!("must be auto or host, got {}", s.address_mode));
                AddressMode::Auto
            });
            let checks = s
                .checks
                .into_iter()
                .enumerate()
                .map(|(k, c)| check_from_pb(p, &format!("{at}.checks[{k}]"), c))
                .collect();
            Service {
                name: s.name,
                task: non_empty(s.task),
                port: non_empty(s.port),
                tags: s.tags,
                meta: s.meta.into_iter().collect(),
                address_mode,
                checks,
            }
        })
        .collect()
}

pub(super) fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A check type's word (as job files and agents name it); empty for unset or unknown.
pub fn check_type_word(value: i32) -> &'static str {
    match pb::CheckType::try_from(value) {
        Ok(pb::CheckType::Http) => "http",
        Ok(pb::CheckType::Tcp) => "tcp",
        Ok(pb::CheckType::Grpc) => "grpc",
        Ok(pb::CheckType::Script) => "script",
        Ok(pb::CheckType::Unspecified) | Err(_) => "",
    }
}

fn check_from_pb(p: &mut Problems, at: &str, c: pb::Check) -> Check {
    // A field of another type of check is refused, never dropped.
    let check_type = check_type_word(c.r#type);
    let set = [
        ("path", !c.path.is_empty(), "http"),
        ("method", !c.method.is_empty(), "http"),
        ("headers", !c.headers.is_empty(), "http"),
        ("grpc_service", !c.grpc_service.is_empty(), "grpc"),
        ("script_task", !c.script_task.is_empty(), "script"),
        ("command", !c.command.is_empty(), "script"),
        ("args", !c.args.is_empty(), "script"),
    ];
    for (field, used, kind) in set {
        if used && check_type != kind {
            p.add(format!("{at}.{field}"), format!("is for {kind} checks only"));
        }
    }
    let kind = match check_type {
        "http" => CheckKind::Http {
            path: c.path,
            method: if c.method.is_empty() { "GET".into() } else { c.method },
            headers: c.headers.into_iter().map(|(k, v)| (k, v.values)).collect(),
        },
        "tcp" => CheckKind::Tcp,
        "grpc" => CheckKind::Grpc { service: c.grpc_service },
        "script" => CheckKind::Script { task: non_empty(c.script_task), command: c.command, args: c.args },
        _ => {
            p.add(format!("{at}.type"), format!("must be http, tcp, grpc or script, got {}", c.r#type));
            CheckKind::Tcp
        }
    };
    let initial_status = match c.initial_status {
        0 => CheckStatus::Critical,
        other => super::check_status_from_pb(other).unwrap_or_else(|| {
            p.add(format!("{at}.initial_status"), format!("must be passing, warning or critical, got {other}"));
            CheckStatus::Critical
        }),
    };
    Check {
        name: c.name,
        kind,
        port: non_empty(c.port),
        interval_ms: super::millis_from_pb(p, &format!("{at}.interval"), c.interval).unwrap_or(0),
        timeout_ms: super::millis_from_pb(p, &format!("{at}.timeout"), c.timeout).unwrap_or(0),
        initial_status,
        success_before_passing: c.success_before_passing,
        failures_before_critical: c.failures_before_critical,
        check_restart: c.check_restart.map(|r| CheckRestart {
            limit: r.limit,
            grace_ms: super::millis_from_pb(p, &format!("{at}.check_restart.grace"), r.grace).unwrap_or(0),
            ignore_warnings: r.ignore_warnings,
        }),
    }
}

pub(super) fn services_to_pb(services: &[Service]) -> Vec<pb::Service> {
    services
        .iter()
        .map(|s| pb::Service {
            name: s.name.clone(),
            task: s.task.clone().unwrap_or_default(),
            port: s.port.clone().unwrap_or_default(),
            tags: s.tags.clone(),
            meta: s.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            address_mode: super::address_mode_to_pb(s.address_mode).into(),
            checks: s.checks.iter().map(check_to_pb).collect(),
        })
        .collect()
}

fn check_to_pb(c: &Check) -> pb::Check {
    let mut out = pb::Check {
        name: c.name.clone(),
        r#type: match c.kind {
            CheckKind::Http { .. } => pb::CheckType::Http,
            CheckKind::Tcp => pb::CheckType::Tcp,
            CheckKind::Grpc { .. } => pb::CheckType::Grpc,
            CheckKind::Script { .. } => pb::CheckType::Script,
        }
        .into(),
        port: c.port.clone().unwrap_or_default(),
        interval: Some(super::millis_to_pb(c.interval_ms)),
        timeout: Some(super::millis_to_pb(c.timeout_ms)),
        initial_status: super::check_status_to_pb(c.initial_status).into(),
        success_before_passing: c.success_before_passing,
        failures_before_critical: c.failures_before_critical,
        check_restart: c.check_restart.as_ref().map(|r| pb::CheckRestart {
            limit: r.limit,
            grace: Some(super::millis_to_pb(r.grace_ms)),
            ignore_warnings: r.ignore_warnings,
        }),
        ..Default::default()
    };
    match &c.kind {
        CheckKind::Http { path, method, headers } => {
            out.path.clone_from(path);
            out.method.clone_from(method);
            out.headers = headers.iter().map(|(k, v)| (k.clone(), pb::HeaderValues { values: v.clone() })).collect();
        }
        CheckKind::Tcp => {}
        CheckKind::Grpc { service } => out.grpc_service.clone_from(service),
        CheckKind::Script { task, command, args } => {
            out.script_task = task.clone().unwrap_or_default();
            out.command.clone_from(command);
            out.args.clone_from(args);
        }
    }
    out
}

pub fn registration_to_pb(r: &ServiceRegistration) -> pb::ServiceRegistration {
    pb::ServiceRegistration {
        service: r.service.clone(),
        task: r.task.clone().unwrap_or_default(),
        address: r.address.clone(),
        port: u32::from(r.port),
        checks: r.checks.iter().map(check_state_to_pb).collect(),
    }
}

pub fn check_state_to_pb(c: &CheckState) -> pb::CheckState {
    pb::CheckState {
        name: c.name.clone(),
        status: super::check_status_to_pb(c.status).into(),
        output: c.output.clone(),
        since: Some(super::timestamp_to_pb(c.since)),
    }
}
