//! A group's services and checks: names Nomad accepts, ports the group has, checks the agent can
//! run (a port to reach, a task to run a script in, Nomad's minimum interval and timeout).

use std::collections::BTreeSet;

use super::{check_args, check_map, check_text, Report};
use crate::job::{TaskDriver, TaskGroup};
use crate::limits::{MAX_ARG_LEN, MAX_META_ENTRIES, MAX_NAME_LEN};
use crate::service::{Check, CheckKind, Service};

pub const MAX_SERVICES: usize = 32;
pub const MAX_CHECKS: usize = 16;
pub const MAX_TAGS: usize = 64;
/// Nomad's minimum check interval and timeout.
pub const MIN_CHECK_MS: u64 = 1_000;
/// A check's interval and timeout are at most a day.
pub const MAX_CHECK_MS: u64 = 24 * 60 * 60 * 1000;

pub(super) fn check_services(r: &mut Report, path: &str, group: &TaskGroup) {
    if group.services.len() > MAX_SERVICES {
        r.add(format!("{path}.services"), format!("must have at most {MAX_SERVICES} services"));
        return;
    }
    let tasks: BTreeSet<&str> = group.tasks.iter().map(|t| t.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (i, service) in group.services.iter().enumerate() {
        let at = format!("{path}.services[{i}]");
        if let Err(p) = service_name(&service.name) {
            r.add(format!("{at}.name"), p);
        }
        if !seen.insert((service.task.as_deref(), service.name.as_str(), service.port.as_deref())) {
            r.add(format!("{at}.name"), format!("service {:?} is declared twice on the same port", service.name));
        }
        if let Some(task) = &service.task {
            if !tasks.contains(task.as_str()) {
                r.add(format!("{at}.task"), format!("the group has no task {task:?}"));
            }
        }
        if let Some(port) = &service.port {
            check_port(r, &format!("{at}.port"), port, group, service.task.as_deref());
        }
        if service.tags.len() > MAX_TAGS {
            r.add(format!("{at}.tags"), format!("must have at most {MAX_TAGS} tags"));
        }
        for (k, tag) in service.tags.iter().enumerate() {
            check_text(r, &format!("{at}.tags[{k}]"), tag, MAX_NAME_LEN * 2);
        }
        check_map(r, &format!("{at}.meta"), &service.meta, MAX_META_ENTRIES);
        if service.checks.len() > MAX_CHECKS {
            r.add(format!("{at}.checks"), format!("must have at most {MAX_CHECKS} checks"));
            continue;
        }
        let mut names = BTreeSet::new();
        for (k, check) in service.checks.iter().enumerate() {
            let cat = format!("{at}.checks[{k}]");
            if !names.insert(check.name.as_str()) {
                r.add(
                    format!("{cat}.name"),
                    format!("duplicate check name {:?} in the service: name them", check.name),
                );
            }
            check_check(r, &cat, check, service, group, &tasks);
        }
    }
}

/// Nomad's rule: RFC 1123 labels, letters, digits and dashes.
fn service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("must be 1 to 63 letters, digits and dashes, not starting or ending with a dash, got {name:?}"))
    }
}

/// A label of the group's own ports or of a docker task's (the service's task's, for a task
/// service), or a port number.
fn check_port(r: &mut Report, field: &str, port: &str, group: &TaskGroup, task: Option<&str>) {
    if port.parse::<u16>().is_ok_and(|p| p > 0) {
        return;
    }
    let docker =
        group.tasks.iter().filter(|t| task.is_none_or(|name| t.name == name)).filter_map(|t| match &t.driver {
            TaskDriver::Docker(d) => Some(d.ports.iter().map(|p| p.name.as_str())),
            _ => None,
        });
    let mut labels: BTreeSet<&str> = group.ports.iter().map(|p| p.label.as_str()).collect();
    labels.extend(docker.flatten());
    if !labels.contains(port) {
        let known: Vec<&str> = labels.into_iter().collect();
        r.add(
            field,
            format!("{port:?} is neither a port number nor a port label of the group (labels: {})", known.join(", ")),
        );
    }
}

fn check_check(r: &mut Report, at: &str, check: &Check, service: &Service, group: &TaskGroup, tasks: &BTreeSet<&str>) {
    if check.name.is_empty() {
        r.add(format!("{at}.name"), "must not be empty");
    }
    check_text(r, &format!("{at}.name"), &check.name, MAX_NAME_LEN * 2);
    for (field, ms) in [("interval", check.interval_ms), ("timeout", check.timeout_ms)] {
        if !(MIN_CHECK_MS..=MAX_CHECK_MS).contains(&ms) {
            r.add(format!("{at}.{field}"), format!("must be between 1s and 24h, got {ms}ms"));
        }
    }
    if let Some(port) = &check.port {
        check_port(r, &format!("{at}.port"), port, group, service.task.as_deref());
    }
    let reaches_port = !matches!(check.kind, CheckKind::Script { .. });
    if reaches_port && check.port.is_none() && service.port.is_none() {
        r.add(
            format!("{at}.port"),
            format!("a {} check needs a port: set the service's port or the check's", check.kind.as_str()),
        );
    }
    match &check.kind {
        CheckKind::Http { path, method, headers } => {
            if !path.starts_with('/') {
                r.add(format!("{at}.path"), format!("must start with '/', got {path:?}"));
            }
            check_text(r, &format!("{at}.path"), path, MAX_ARG_LEN);
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                r.add(
                    format!("{at}.method"),
                    format!("must be an HTTP method in capitals (GET, POST, ...), got {method:?}"),
                );
            }
            for (name, values) in headers {
                let token = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !token {
                    r.add(format!("{at}.header"), format!("{name:?} is not a header name"));
                }
                if values.iter().any(|v| v.contains(['\r', '\n'])) {
                    r.add(format!("{at}.header.{name}"), "must not contain line breaks");
                }
            }
        }
        CheckKind::Tcp | CheckKind::Grpc { .. } => {}
        CheckKind::Script { task, command, args } => {
            if command.trim().is_empty() {
                r.add(format!("{at}.command"), "must not be empty");
            }
            check_text(r, &format!("{at}.command"), command, MAX_ARG_LEN);
            check_args(r, &format!("{at}.args"), args);
            match (service.task.as_deref(), task.as_deref()) {
                (_, Some(task)) if !tasks.contains(task) => {
                    r.add(format!("{at}.task"), format!("the group has no task {task:?}"));
                }
                (Some(own), Some(task)) if own != task => {
                    r.add(format!("{at}.task"), format!("a task service's script runs in its own task {own:?}"));
                }
                (None, None) => {
                    r.add(format!("{at}.task"), "a script check of a group service must name the task it runs in")
                }
                _ => {}
            }
        }
    }
    if let Some(restart) = &check.check_restart {
        if restart.limit == 0 {
            r.add(format!("{at}.check_restart.limit"), "must be at least 1 (leave check_restart out to never restart)");
        }
        if restart.grace_ms > MAX_CHECK_MS {
            r.add(format!("{at}.check_restart.grace"), "must be at most 24h");
        }
        let task = match &check.kind {
            CheckKind::Script { task: Some(task), .. } => Some(task),
            _ => service.task.as_ref(),
        };
        if task.is_none() && group.tasks.len() > 1 {
            r.add(
                format!("{at}.check_restart"),
                "restarts a task: put the service in a task, or the check_restart on a check of one",
            );
        }
    }
}
