//! Nomad's `service` and `check` blocks (on groups and tasks), read into a group's services.
//! Helios has one catalog, its own: `provider = "nomad"` (or `"helios"`) as Nomad's native
//! service discovery; Consul's provider and its Consul-only fields are refused by name.

use std::collections::BTreeMap;

use helios_core::service::{AddressMode, Check, CheckKind, CheckRestart, CheckStatus, Service};
use serde::Deserialize;

use super::spec::{parse_duration_ms, GroupSpec, Problems};

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: Option<String>,
    /// A port label, or a number.
    pub port: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub address_mode: Option<String>,
    pub provider: Option<String>,
    /// A group service: the task its script checks run in.
    pub task: Option<String>,
    /// For every check of the service that has none of its own.
    pub check_restart: Option<CheckRestartSpec>,
    #[serde(default)]
    pub check: Vec<CheckSpec>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub check_type: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    #[serde(default)]
    pub header: BTreeMap<String, Vec<String>>,
    pub protocol: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub initial_status: Option<String>,
    pub success_before_passing: Option<u32>,
    pub failures_before_critical: Option<u32>,
    pub grpc_service: Option<String>,
    pub grpc_use_tls: Option<bool>,
    pub tls_skip_verify: Option<bool>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub task: Option<String>,
    pub address_mode: Option<String>,
    pub on_update: Option<String>,
    pub expose: Option<bool>,
    pub check_restart: Option<CheckRestartSpec>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CheckRestartSpec {
    pub limit: Option<u32>,
    pub grace: Option<String>,
    pub ignore_warnings: Option<bool>,
}

/// The group's own services, then each task's, in the file's order.
pub(super) fn services(
    p: &mut Problems,
    path: &str,
    job: &str,
    group: &GroupSpec,
    notes: &mut Vec<String>,
) -> Vec<Service> {
    let group_name = group.name.as_str();
    let own = group
        .service
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{path}.service[{i}]"), s, Names { job, group: group_name, task: None }));
    let tasks = group.task.iter().enumerate().flat_map(|(k, t)| {
        t.service.iter().enumerate().map(move |(i, s)| {
            (format!("{path}.task[{k}].service[{i}]"), s, Names { job, group: group_name, task: Some(t.name.as_str()) })
        })
    });
    own.chain(tasks).map(|(at, spec, names)| spec.to_service(p, &at, &names, notes)).collect::<Vec<_>>()
}

/// What a service's name and tags may name (`${NOMAD_JOB_NAME}`, Nomad's older `${JOB}`, ...).
struct Names<'a> {
    job: &'a str,
    group: &'a str,
    task: Option<&'a str>,
}

impl Names<'_> {
    /// Nomad's default name: `JOB-GROUP` for a group's service, `JOB-GROUP-TASK` for a task's.
    fn default_name(&self) -> String {
        match self.task {
            Some(task) => format!("{}-{}-{task}", self.job, self.group),
            None => format!("{}-{}", self.job, self.group),
        }
    }

    fn fill(&self, p: &mut Problems, at: &str, text: &str) -> String {
        let mut out = text.to_string();
        let mut pairs = vec![
            ("NOMAD_JOB_NAME", self.job),
            ("JOB", self.job),
            ("NOMAD_GROUP_NAME", self.group),
            ("TASKGROUP", self.group),
        ];
        if let Some(task) = self.task {
            pairs.extend([("NOMAD_TASK_NAME", task), ("TASK", task)]);
        }
        for (name, value) in pairs {
            out = out.replace(&format!("${{{name}}}"), value);
        }
        if out.contains("${") {
            p.add(
                at,
                format!("{text:?}: a service's name and tags may name only ${{NOMAD_JOB_NAME}}, ${{NOMAD_GROUP_NAME}} and ${{NOMAD_TASK_NAME}}"),
            );
        }
        out
    }
}

impl ServiceSpec {
    fn to_service(&self, p: &mut Problems, at: &str, names: &Names<'_>, notes: &mut Vec<String>) -> Service {
        match self.provider.as_deref() {
            Some("nomad" | "helios") => {}
            None => notes.push(format!(
                "{at}: no provider: registered in Helios's own catalog (provider \"nomad\"); Nomad's default is Consul"
            )),
            Some(other) => p.add(
                &format!("{at}.provider"),
                format!(
                    "{other:?} is not available: Helios has its own catalog only, provider = \"nomad\" (or \"helios\")"
                ),
            ),
        }
        let address_mode = address_mode(p, &format!("{at}.address_mode"), &self.address_mode);
        if names.task.is_some() && self.task.is_some() {
            p.add(&format!("{at}.task"), "is for a group's service: a task's service belongs to its task");
        }
        let scripts = self.check.iter().any(|c| c.check_type.as_deref() == Some("script") && c.task.is_none());
        if names.task.is_none() && self.task.is_some() && !scripts {
            p.add(
                &format!("{at}.task"),
                "names the task a group service's script checks run in, and this service has none (Consul Connect, its other use, is not available)",
            );
        }
        let name =
            self.name.as_deref().map_or_else(|| names.default_name(), |n| names.fill(p, &format!("{at}.name"), n));
        let mut checks: Vec<Check> = self
            .check
            .iter()
            .enumerate()
            .map(|(k, c)| c.to_check(p, &format!("{at}.check[{k}]"), (&name, names), self.check_restart.as_ref()))
            .collect();
        // A script check runs in the service's task: a task service's own, or the one a
        // group service names (unless the check names its own).
        let script_task = names.task.or(self.task.as_deref());
        for check in &mut checks {
            if let CheckKind::Script { task: task @ None, .. } = &mut check.kind {
                *task = script_task.map(str::to_string);
            }
        }
        Service {
            name,
            task: names.task.map(str::to_string),
            port: self.port.clone(),
            tags: self.tags.iter().enumerate().map(|(i, t)| names.fill(p, &format!("{at}.tags[{i}]"), t)).collect(),
            meta: self.meta.clone(),
            address_mode,
            checks,
        }
    }
}

fn address_mode(p: &mut Problems, at: &str, text: &Option<String>) -> AddressMode {
    match text.as_deref() {
        None => AddressMode::Auto,
        Some(name) => AddressMode::parse(name).unwrap_or_else(|| {
            p.add(at, format!("must be auto or host, got {name:?} (Helios tasks are reached at their host's address)"));
            AddressMode::Auto
        }),
    }
}

impl CheckSpec {
    fn to_check(
        &self,
        p: &mut Problems,
        at: &str,
        (service, names): (&str, &Names<'_>),
        inherited: Option<&CheckRestartSpec>,
    ) -> Check {
        let refuse = |p: &mut Problems, field: &str, why: &str| p.add(&format!("{at}.{field}"), why);
        if self.protocol.as_deref().is_some_and(|v| v != "http") {
            refuse(p, "protocol", "only \"http\": the agent's checks do not speak TLS");
        }
        if self.grpc_use_tls == Some(true) {
            refuse(p, "grpc_use_tls", "the agent's checks do not speak TLS");
        }
        if self.tls_skip_verify == Some(true) {
            refuse(p, "tls_skip_verify", "the agent's checks do not speak TLS");
        }
        if self.expose == Some(true) {
            refuse(p, "expose", "is for Consul Connect, which Helios does not have");
        }
        if self.on_update.as_deref().is_some_and(|v| v != "require_healthy") {
            refuse(p, "on_update", "only \"require_healthy\": every check counts in an update");
        }
        if self.address_mode.is_some() {
            address_mode(p, &format!("{at}.address_mode"), &self.address_mode);
        }
        let check_type = self.check_type.as_deref().unwrap_or_default();
        let only_for = |p: &mut Problems, field: &str, set: bool, kinds: &str| {
            if set {
                p.add(&format!("{at}.{field}"), format!("is for {kinds} checks, not {check_type}"));
            }
        };
        only_for(p, "path", self.path.is_some() && check_type != "http", "http");
        only_for(p, "method", self.method.is_some() && check_type != "http", "http");
        only_for(p, "header", !self.header.is_empty() && check_type != "http", "http");
        only_for(p, "grpc_service", self.grpc_service.is_some() && check_type != "grpc", "grpc");
        only_for(p, "command", self.command.is_some() && check_type != "script", "script");
        only_for(p, "args", !self.args.is_empty() && check_type != "script", "script");
        only_for(p, "task", self.task.is_some() && check_type != "script", "script");
        let kind = match check_type {
            "http" => CheckKind::Http {
                path: self.path.clone().unwrap_or_else(|| {
                    p.add(&format!("{at}.path"), "an http check needs a path");
                    "/".into()
                }),
                method: self.method.clone().unwrap_or_else(|| "GET".into()),
                headers: self.header.clone(),
            },
            "tcp" => CheckKind::Tcp,
            "grpc" => CheckKind::Grpc { service: self.grpc_service.clone().unwrap_or_default() },
            "script" => CheckKind::Script {
                task: self.task.clone(),
                command: self.command.clone().unwrap_or_else(|| {
                    p.add(&format!("{at}.command"), "a script check needs a command");
                    String::new()
                }),
                args: self.args.clone(),
            },
            "" => {
                p.add(&format!("{at}.type"), "a check needs a type: http, tcp, grpc or script");
                CheckKind::Tcp
            }
            other => {
                p.add(&format!("{at}.type"), format!("must be http, tcp, grpc or script, got {other:?}"));
                CheckKind::Tcp
            }
        };
        let mut ms = |field: &str, text: &Option<String>| match text {
            None => {
                p.add(&format!("{at}.{field}"), format!("a check needs an {field} (Nomad requires one too)"));
                0
            }
            Some(text) => parse_duration_ms(text).unwrap_or_else(|| {
                p.add(&format!("{at}.{field}"), format!("expected a duration such as \"10s\", got {text:?}"));
                0
            }),
        };
        let interval_ms = ms("interval", &self.interval);
        let timeout_ms = ms("timeout", &self.timeout);
        let initial_status = match self.initial_status.as_deref() {
            None | Some("") => CheckStatus::Critical,
            Some(name) => CheckStatus::parse(name).unwrap_or_else(|| {
                p.add(&format!("{at}.initial_status"), format!("must be passing, warning or critical, got {name:?}"));
                CheckStatus::Critical
            }),
        };
        // The check's own fields over the service's, as Nomad merges them.
        let restart = match (&self.check_restart, inherited) {
            (Some(own), Some(service)) => Some(CheckRestartSpec {
                limit: own.limit.or(service.limit),
                grace: own.grace.clone().or(service.grace.clone()),
                ignore_warnings: own.ignore_warnings.or(service.ignore_warnings),
            }),
            (own, service) => own.clone().or(service.cloned()),
        };
        let restart = restart.as_ref();
        Check {
            name: self
                .name
                .as_deref()
                .map_or_else(|| format!("service: {service:?} check"), |n| names.fill(p, &format!("{at}.name"), n)),
            kind,
            port: self.port.clone(),
            interval_ms,
            timeout_ms,
            initial_status,
            success_before_passing: self.success_before_passing.unwrap_or(0),
            failures_before_critical: self.failures_before_critical.unwrap_or(0),
            check_restart: restart.and_then(|r| r.to_policy(p, &format!("{at}.check_restart"))),
        }
    }
}

impl CheckRestartSpec {
    /// Nomad's: `limit = 0` (its default) never restarts.
    fn to_policy(&self, p: &mut Problems, at: &str) -> Option<CheckRestart> {
        let limit = self.limit.unwrap_or(0);
        let grace_ms = match &self.grace {
            None => CheckRestart::DEFAULT_GRACE_MS,
            Some(text) => parse_duration_ms(text).unwrap_or_else(|| {
                p.add(&format!("{at}.grace"), format!("expected a duration such as \"10s\", got {text:?}"));
                0
            }),
        };
        (limit > 0).then_some(CheckRestart { limit, grace_ms, ignore_warnings: self.ignore_warnings.unwrap_or(false) })
    }
}
