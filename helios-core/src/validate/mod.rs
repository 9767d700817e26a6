//! Validation of user input. Every problem is reported, each with the path of its field, so a user
//! fixes a job file in one round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::job::{Affinity, Constraint, ConstraintOperator, Job, Resources, Spread, Task, TaskDriver, TaskGroup};
use crate::limits::*;

mod docker;
mod service;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `task_groups[0].tasks[1].resources.memory_mb`
    pub field: String,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// All the problems found in one input; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl ValidationErrors {
    pub fn single(field: &str, problem: impl Into<String>) -> ValidationErrors {
        ValidationErrors(vec![FieldError { field: field.to_string(), problem: problem.into() }])
    }
}

/// Collects problems while walking a structure.
#[derive(Default)]
struct Report {
    errors: Vec<FieldError>,
}

impl Report {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), problem: problem.into() });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errors))
        }
    }
}

/// Checks a name used as a key (job, group, task): non-empty, bounded, printable and free of
/// characters that would break paths, labels or shell output.
pub fn check_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} bytes, got {}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("may contain only letters, digits, '-', '_' and '.', found {c:?}"));
    }
    if value.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    Ok(())
}

/// Checks a job's name: a name (`check_name`) that may also hold ':', so Spotify Helios's job ids
/// (`NAME:VERSION`) are names as they are. Groups and tasks, which name containers and
/// directories, may not.
pub fn check_job_name(value: &str) -> Result<(), String> {
    if value.starts_with(':') {
        return Err("must not start with ':'".into());
    }
    let without_colons = value.replace(':', "-");
    check_name(&without_colons).map_err(|p| p.replace("'-', '_' and '.'", "'-', '_', '.' and ':'"))
}

fn check_text(r: &mut Report, field: &str, value: &str, max: usize) {
    if value.len() > max {
        r.add(field, format!("must be at most {max} bytes, got {}", value.len()));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        r.add(field, "must not contain control characters");
    }
}

impl Job {
    /// Checks the user-supplied part of a job. The fields the cluster assigns (version, status,
    /// submitted_at) are not looked at.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut r = Report::default();
        if let Err(p) = check_job_name(&self.name) {
            r.add("name", p);
        }
        if self.priority == 0 || self.priority > MAX_PRIORITY {
            r.add("priority", format!("must be between 1 and {MAX_PRIORITY}, got {}", self.priority));
        }
        if self.task_groups.is_empty() {
            r.add("task_groups", "must contain at least one task group");
        }
        if self.task_groups.len() > MAX_TASK_GROUPS {
            r.add(
                "task_groups",
                format!("must contain at most {MAX_TASK_GROUPS} groups, got {}", self.task_groups.len()),
            );
        }
        check_constraints(&mut r, "constraints", &self.constraints);
        check_affinities(&mut r, "affinities", &self.affinities);
        check_spreads(&mut r, "spreads", &self.spreads);
        if self.job_type == crate::job::JobType::System {
            // A system job runs on every eligible node: nothing to prefer or spread.
            let system =
                "a system job runs on every eligible node, so it has no placement to prefer or spread: leave it out";
            if !self.affinities.is_empty() {
                r.add("affinities", system);
            }
            if !self.spreads.is_empty() {
                r.add("spreads", system);
            }
            for (i, group) in self.task_groups.iter().enumerate() {
                if !group.affinities.is_empty() {
                    r.add(format!("task_groups[{i}].affinities"), system);
                }
                if !group.spreads.is_empty() {
                    r.add(format!("task_groups[{i}].spreads"), system);
                }
            }
        }
        check_map(&mut r, "meta", &self.meta, MAX_META_ENTRIES);
        let mut seen = BTreeSet::new();
        for (i, group) in self.task_groups.iter().enumerate().take(MAX_TASK_GROUPS) {
            let path = format!("task_groups[{i}]");
            if !seen.insert(group.name.as_str()) {
                r.add(format!("{path}.name"), format!("duplicate task group name {:?}", group.name));
            }
            check_group(&mut r, &path, group);
            if self.job_type != crate::job::JobType::Service
                && group.migrate != crate::migrate::MigrateStrategy::default()
            {
                r.add(
                    format!("{path}.migrate"),
                    format!(
                        "applies to service jobs: a {} job's allocations leave a draining node at once; leave migrate out",
                        self.job_type.as_str()
                    ),
                );
            }
            if self.job_type == crate::job::JobType::System {
                // Rolled by max_parallel and stagger: the health timings do not apply.
                for (field, problem) in group.update.system_problems() {
                    r.add(format!("{path}.update.{field}"), problem);
                }
            } else {
                for (field, problem) in group.update.problems() {
                    r.add(format!("{path}.update.{field}"), problem);
                }
                if group.update.canary > group.count {
                    // Canaries take the slots of the allocations they replace.
                    r.add(
                        format!("{path}.update.canary"),
                        format!("must be at most the group's count ({}), got {}", group.count, group.update.canary),
                    );
                }
            }
            if self.job_type == crate::job::JobType::Batch && group.update != crate::update::UpdateStrategy::default() {
                r.add(
                    format!("{path}.update"),
                    format!(
                        "rolling updates apply to service and system jobs: a {} job's allocations are replaced at once; leave update out",
                        self.job_type.as_str()
                    ),
                );
            }
            if self.job_type == crate::job::JobType::System && !group.reschedule.is_disabled() {
                r.add(
                    format!("{path}.reschedule"),
                    "a system job is not rescheduled (it runs on every eligible node): leave reschedule out",
                );
            }
        }
        r.finish()
    }
}

impl crate::node::Node {
    /// Checks what an agent reports about its node when it registers.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut r = Report::default();
        if let Err(p) = check_name(&self.id) {
            r.add("id", p);
        }
        if self.hostname.is_empty() {
            r.add("hostname", "must not be empty");
        }
        check_text(&mut r, "hostname", &self.hostname, MAX_NAME_LEN * 2);
        match self.rpc_addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => r.add("rpc_addr", format!("expected HOST:PORT, got {:?}", self.rpc_addr)),
        }
        check_text(&mut r, "rpc_addr", &self.rpc_addr, MAX_NAME_LEN * 2);
        for (i, driver) in self.drivers.iter().enumerate() {
            if !matches!(driver.as_str(), "exec" | "docker" | "raw_exec") {
                r.add(format!("drivers[{i}]"), format!("unknown driver {driver:?}"));
            }
        }
        check_resources(&mut r, "resources", &self.resources);
        check_map(&mut r, "attributes", &self.attributes, MAX_META_ENTRIES);
        check_map(&mut r, "meta", &self.meta, MAX_META_ENTRIES);
        if self.secret_id.is_empty() || self.secret_id.len() > MAX_NAME_LEN {
            r.add("secret", format!("must be 1 to {MAX_NAME_LEN} bytes"));
        }
        r.finish()
    }
}

fn check_group(r: &mut Report, path: &str, group: &TaskGroup) {
    if let Err(p) = check_name(&group.name) {
        r.add(format!("{path}.name"), p);
    }
    if group.count > MAX_GROUP_COUNT {
        r.add(format!("{path}.count"), format!("must be at most {MAX_GROUP_COUNT}, got {}", group.count));
    }
    if group.tasks.is_empty() {
        r.add(format!("{path}.tasks"), "must contain at least one task");
    }
    if group.tasks.len() > MAX_TASKS_PER_GROUP {
        r.add(
            format!("{path}.tasks"),
            format!("must contain at most {MAX_TASKS_PER_GROUP} tasks, got {}", group.tasks.len()),
        );
    }
    if group.restart.attempts > MAX_RESTART_ATTEMPTS {
        r.add(
            format!("{path}.restart.attempts"),
            format!("must be at most {MAX_RESTART_ATTEMPTS}, got {}", group.restart.attempts),
        );
    }
    if group.restart.interval_secs == 0 && group.restart.attempts > 0 {
        r.add(format!("{path}.restart.interval"), "must be more than 0 when attempts is more than 0");
    }
    for (field, problem) in group.reschedule.problems() {
        r.add(format!("{path}.reschedule.{field}"), problem);
    }
    for (field, problem) in group.migrate.problems() {
        r.add(format!("{path}.migrate.{field}"), problem);
    }
    if group.migrate.health_check == crate::migrate::HealthCheck::Manual {
        // Nobody would be asked: a drain has no deployment to set health on.
        r.add(format!("{path}.migrate.health_check"), "must be checks or task_states (manual is only for update)");
    }
    check_constraints(r, &format!("{path}.constraints"), &group.constraints);
    check_affinities(r, &format!("{path}.affinities"), &group.affinities);
    check_spreads(r, &format!("{path}.spreads"), &group.spreads);
    check_map(r, &format!("{path}.meta"), &group.meta, MAX_META_ENTRIES);
    // The group's allocation holds all of its tasks' fixed host ports on one node.
    let ports = group.published_host_ports();
    if let Some(twice) = ports.windows(2).find(|w| w[0] == w[1]) {
        r.add(format!("{path}.tasks"), format!("host port {} is published by more than one task", twice[0]));
    }
    check_group_ports(r, path, group);
    service::check_services(r, path, group);
    let mut seen = BTreeSet::new();
    for (j, task) in group.tasks.iter().enumerate().take(MAX_TASKS_PER_GROUP) {
        let tpath = format!("{path}.tasks[{j}]");
        if !seen.insert(task.name.as_str()) {
            r.add(format!("{tpath}.name"), format!("duplicate task name {:?}", task.name));
        }
        check_task(r, &tpath, task);
    }
}

/// The group's own ports: labels that name variables (`NOMAD_PORT_<label>`), each once and
/// not also a docker task's port (one label, two host ports), for an exec or raw_exec task.
fn check_group_ports(r: &mut Report, path: &str, group: &TaskGroup) {
    if group.ports.len() > MAX_PORTS {
        r.add(format!("{path}.ports"), format!("must have at most {MAX_PORTS} ports"));
        return;
    }
    let docker_ports: BTreeSet<&str> = group
        .tasks
        .iter()
        .filter_map(|t| match &t.driver {
            TaskDriver::Docker(d) => Some(d.ports.iter().map(|p| p.name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    let mut seen = BTreeSet::new();
    for (k, port) in group.ports.iter().enumerate() {
        let at = format!("{path}.ports[{k}]");
        if check_name(&port.label).is_err() || !is_env_name(&port.label) {
            r.add(
                format!("{at}.label"),
                format!("must be letters, digits and '_', not starting with a digit (it names NOMAD_PORT_<label>), got {:?}", port.label),
            );
        }
        if !seen.insert(port.label.as_str()) {
            r.add(format!("{at}.label"), format!("duplicate port label {:?}", port.label));
        }
        if docker_ports.contains(port.label.as_str()) {
            r.add(
                format!("{at}.label"),
                format!("a docker task of the group maps a port {:?} too (one label, two host ports)", port.label),
            );
        }
        if port.static_port == Some(0) {
            r.add(format!("{at}.static_port"), "must be > 0");
        }
    }
    let exec = group.tasks.iter().any(|t| matches!(t.driver, TaskDriver::Exec(_) | TaskDriver::RawExec(_)));
    if !group.ports.is_empty() && !exec {
        r.add(
            format!("{path}.ports"),
            "no exec or raw_exec task of the group would get them (docker tasks map theirs in config.ports)",
        );
    }
}

fn check_task(r: &mut Report, path: &str, task: &Task) {
    if let Err(p) = check_name(&task.name) {
        r.add(format!("{path}.name"), p);
    }
    match &task.driver {
        TaskDriver::Exec(exec) | TaskDriver::RawExec(exec) => {
            if exec.command.trim().is_empty() {
                r.add(format!("{path}.config.command"), "must not be empty");
            }
            check_text(r, &format!("{path}.config.command"), &exec.command, MAX_ARG_LEN);
            check_args(r, &format!("{path}.config.args"), &exec.args);
        }
        TaskDriver::Docker(docker) => docker::check(r, path, docker, &task.resources),
    }
    if let TaskDriver::RawExec(exec) = &task.driver {
        if exec.cpu_hard_limit {
            r.add(format!("{path}.config.cpu_hard_limit"), "raw_exec does not isolate tasks: use the exec driver");
        }
    }
    if let Some(user) = &task.user {
        if !is_user_name(user) {
            r.add(
                format!("{path}.user"),
                format!("must be a user name (letters, digits, '_', '-', '.', at most 32, not starting with a digit or '-'), got {user:?}"),
            );
        }
    }
    check_env(r, &format!("{path}.env"), &task.env);
    check_resources(r, &format!("{path}.resources"), &task.resources);
    check_constraints(r, &format!("{path}.constraints"), &task.constraints);
    if task.kill_timeout_secs > MAX_KILL_TIMEOUT_SECS {
        r.add(
            format!("{path}.kill_timeout_secs"),
            format!("must be at most {MAX_KILL_TIMEOUT_SECS}, got {}", task.kill_timeout_secs),
        );
    }
}

/// A name `useradd` would take (and so one `getpwnam` can find).
fn is_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn check_args(r: &mut Report, path: &str, args: &[String]) {
    if args.len() > MAX_ARGS {
        r.add(path, format!("must have at most {MAX_ARGS} entries, got {}", args.len()));
        return;
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_LEN {
            r.add(format!("{path}[{i}]"), format!("must be at most {MAX_ARG_LEN} bytes"));
        }
        if arg.contains('\0') {
            r.add(format!("{path}[{i}]"), "must not contain NUL bytes");
        }
    }
}

fn check_env(r: &mut Report, path: &str, env: &BTreeMap<String, String>) {
    if env.len() > MAX_ENV_ENTRIES {
        r.add(path, format!("must have at most {MAX_ENV_ENTRIES} entries, got {}", env.len()));
        return;
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        r.add(path, format!("must total at most {MAX_ENV_BYTES} bytes, got {total}"));
    }
    for (key, value) in env {
        if !is_env_name(key) {
            r.add(format!("{path}.{key:?}"), "name must be letters, digits and '_', not starting with a digit");
        }
        if value.contains('\0') {
            r.add(format!("{path}.{key}"), "value must not contain NUL bytes");
        }
    }
}

/// A name a shell can read as a variable: letters, digits and '_', not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_map(r: &mut Report, path: &str, map: &BTreeMap<String, String>, max: usize) {
    if map.len() > max {
        r.add(path, format!("must have at most {max} entries, got {}", map.len()));
        return;
    }
    for (key, value) in map {
        if key.is_empty() {
            r.add(path, "keys must not be empty");
        }
        check_text(r, &format!("{path}.{key}"), value, MAX_ARG_LEN);
    }
}

fn check_resources(r: &mut Report, path: &str, res: &Resources) {
    if res.cpu_mhz == 0 || res.cpu_mhz > MAX_CPU_MHZ {
        r.add(format!("{path}.cpu_mhz"), format!("must be > 0 and at most {MAX_CPU_MHZ}, got {}", res.cpu_mhz));
    }
    if res.memory_mb == 0 || res.memory_mb > MAX_MEMORY_MB {
        r.add(format!("{path}.memory_mb"), format!("must be > 0 and at most {MAX_MEMORY_MB}, got {}", res.memory_mb));
    }
}

const CONSTRAINT_ATTRIBUTE_PREFIXES: [&str; 2] = ["attr.", "meta."];

fn check_constraints(r: &mut Report, path: &str, constraints: &[Constraint]) {
    if too_many(r, path, constraints.len()) {
        return;
    }
    for (i, c) in constraints.iter().enumerate() {
        let cpath = format!("{path}[{i}]");
        if c.operator == ConstraintOperator::DistinctHosts {
            continue;
        }
        check_attribute(r, &format!("{cpath}.attribute"), &c.attribute);
        check_text(r, &format!("{cpath}.value"), &c.value, MAX_ARG_LEN);
        if c.operator == ConstraintOperator::DistinctProperty {
            let limit = c.value.trim();
            if !limit.is_empty() && !limit.parse::<u32>().is_ok_and(|n| n > 0) {
                r.add(
                    format!("{cpath}.value"),
                    format!("is how many allocations a value may have: a number above 0, got {:?}", c.value),
                );
            }
            continue;
        }
        check_operand(r, &cpath, c.operator, &c.value);
    }
}

/// True (and reported) when a list of constraints, affinities or spreads is over the limit.
fn too_many(r: &mut Report, path: &str, len: usize) -> bool {
    if len > MAX_CONSTRAINTS {
        r.add(path, format!("must have at most {MAX_CONSTRAINTS} entries, got {len}"));
    }
    len > MAX_CONSTRAINTS
}

/// `node.id`, `node.hostname`, `attr.<name>` or `meta.<name>`.
fn check_attribute(r: &mut Report, path: &str, attribute: &str) {
    let known = attribute == "node.id"
        || attribute == "node.hostname"
        || CONSTRAINT_ATTRIBUTE_PREFIXES.iter().any(|p| attribute.len() > p.len() && attribute.starts_with(p));
    if !known {
        r.add(path, format!("must be node.id, node.hostname, attr.<name> or meta.<name>, got {attribute:?}"));
    }
}

/// A regular expression or a version requirement must parse.
fn check_operand(r: &mut Report, path: &str, operator: ConstraintOperator, value: &str) {
    match operator {
        ConstraintOperator::Regexp => {
            if let Err(e) = regex::Regex::new(value) {
                r.add(format!("{path}.value"), format!("invalid regular expression: {e}"));
            }
        }
        ConstraintOperator::Version => {
            if let Err(e) = crate::validate::parse_version_requirement(value) {
                r.add(format!("{path}.value"), e);
            }
        }
        _ => {}
    }
}

fn check_affinities(r: &mut Report, path: &str, affinities: &[Affinity]) {
    if too_many(r, path, affinities.len()) {
        return;
    }
    for (i, a) in affinities.iter().enumerate() {
        let apath = format!("{path}[{i}]");
        check_attribute(r, &format!("{apath}.attribute"), &a.attribute);
        check_text(r, &format!("{apath}.value"), &a.value, MAX_ARG_LEN);
        match a.operator {
            ConstraintOperator::Equal
            | ConstraintOperator::NotEqual
            | ConstraintOperator::Regexp
            | ConstraintOperator::Version => check_operand(r, &apath, a.operator, &a.value),
            other => r.add(
                format!("{apath}.operator"),
                format!("must be =, !=, regexp or version for an affinity, got {}", other.as_str()),
            ),
        }
        if a.weight == 0 || !(-100..=100).contains(&a.weight) {
            r.add(format!("{apath}.weight"), format!("must be -100 to 100 and not 0, got {}", a.weight));
        }
    }
}

fn check_spreads(r: &mut Report, path: &str, spreads: &[Spread]) {
    if too_many(r, path, spreads.len()) {
        return;
    }
    for (i, s) in spreads.iter().enumerate() {
        let spath = format!("{path}[{i}]");
        check_attribute(r, &format!("{spath}.attribute"), &s.attribute);
        if !(1..=100).contains(&s.weight) {
            r.add(format!("{spath}.weight"), format!("must be 1 to 100, got {}", s.weight));
        }
        if s.targets.len() > MAX_CONSTRAINTS {
            r.add(format!("{spath}.targets"), format!("must have at most {MAX_CONSTRAINTS} entries"));
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut sum = 0u32;
        for (k, t) in s.targets.iter().enumerate() {
            let tpath = format!("{spath}.targets[{k}]");
            check_text(r, &format!("{tpath}.value"), &t.value, MAX_ARG_LEN);
            if t.value.is_empty() || !seen.insert(t.value.as_str()) {
                r.add(format!("{tpath}.value"), format!("must be a value named once, got {:?}", t.value));
            }
            if t.percent > 100 {
                r.add(format!("{tpath}.percent"), format!("must be 0 to 100, got {}", t.percent));
            }
            sum += u32::from(t.percent);
        }
        if sum > 100 {
            r.add(format!("{spath}.targets"), format!("percentages add up to {sum}, more than 100"));
        }
    }
}

/// A version requirement: comma-separated `OP VERSION` terms, OP one of `=`, `!=`, `>`, `>=`,
/// `<`, `<=` (default `=`), VERSION dotted numbers.
pub fn parse_version_requirement(text: &str) -> Result<Vec<(String, Vec<u64>)>, String> {
    let mut terms = Vec::new();
    for term in text.split(',') {
        let term = term.trim();
        if term.is_empty() {
            return Err(format!("invalid version requirement {text:?}: empty term"));
        }
        let op_len = term.find(|c: char| c.is_ascii_digit()).unwrap_or(term.len());
        let (op, version) = term.split_at(op_len);
        let op = match op.trim() {
            "" => "=",
            o @ ("=" | "!=" | ">" | ">=" | "<" | "<=") => o,
            other => return Err(format!("invalid version requirement {text:?}: unknown operator {other:?}")),
        };
        let parts: Result<Vec<u64>, _> = version.trim().split('.').map(str::parse::<u64>).collect();
        match parts {
            Ok(p) if !p.is_empty() => terms.push((op.to_string(), p)),
            _ => return Err(format!("invalid version requirement {text:?}: bad version {version:?}")),
        }
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ConstraintOperator;

    fn fields(job: &Job) -> Vec<String> {
        match job.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn a_groups_own_ports_are_for_exec_tasks_by_unique_labels() {
        use crate::job::{DockerConfig, GroupPort, PortMapping};
        let mut job = Job::exec("ok", "echo", vec![]);
        let port = |label: &str, static_port| GroupPort { label: label.into(), static_port };
        job.task_groups[0].ports = vec![port("http", None), port("admin", Some(9000))];
        assert_eq!(job.validate(), Ok(()));
        job.task_groups[0].ports =
            vec![port("http", None), port("http", Some(0)), port("9lives", None), port("web", None)];
        let mut docker = job.task_groups[0].tasks[0].clone();
        docker.name = "proxy".into();
        docker.resources.memory_mb = 64;
        let mut config = DockerConfig::for_image("busybox");
        config.ports.push(PortMapping { name: "web".into(), container_port: 80, host_port: None });
        docker.driver = TaskDriver::Docker(config);
        job.task_groups[0].tasks.push(docker);
        let err = job.validate().unwrap_err().to_string();
        for problem in [
            "task_groups[0].ports[1].label: duplicate port label \"http\"",
            "task_groups[0].ports[1].static_port: must be > 0",
            "task_groups[0].ports[2].label: must be letters, digits and '_'",
            "task_groups[0].ports[3].label: a docker task of the group maps a port \"web\" too",
        ] {
            assert!(err.contains(problem), "{problem}: {err}");
        }
        job.task_groups[0].tasks.remove(0);
        job.task_groups[0].ports = vec![port("http", None)];
        let err = job.validate().unwrap_err().to_string();
        assert!(err.contains("task_groups[0].ports: no exec or raw_exec task of the group would get them"), "{err}");
    }

    #[test]
    fn a_plain_exec_job_is_valid() {
        assert_eq!(fields(&Job::exec("web", "echo", vec!["hi".into()])), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut job = Job::exec("bad name!", "", vec![]);
        job.priority = 0;
        let second = job.task_groups[0].tasks[0].clone();
        job.task_groups[0].tasks.push(Task { name: "second".into(), ..second });
        job.task_groups[0].tasks[1].resources.memory_mb = 0;
        let got = fields(&job);
        assert!(got.iter().any(|e| e.starts_with("name: may contain only")), "{got:?}");
        assert!(got.contains(&"priority: must be between 1 and 100, got 0".to_string()), "{got:?}");
        assert!(got.iter().any(|e| e.starts_with("task_groups[0].tasks[0].config.command: must not be empty")));
        assert!(
            got.contains(
                &"task_groups[0].tasks[1].resources.memory_mb: must be > 0 and at most 16777216, got 0".to_string()
            ),
            "{got:?}"
        );
    }

    #[test]
    fn control_characters_and_oversize_values_are_refused() {
        let mut job = Job::exec("ok", "echo", vec!["a\0b".into()]);
        job.meta.insert("k".into(), "bell\u{7}".into());
        job.task_groups[0].count = MAX_GROUP_COUNT + 1;
        let got = fields(&job);
        assert!(got.iter().any(|e| e.starts_with("task_groups[0].tasks[0].config.args[0]: must not contain NUL")));
        assert!(got.iter().any(|e| e.starts_with("meta.k: must not contain control characters")));
        assert!(got.iter().any(|e| e.starts_with("task_groups[0].count: must be at most 10000")));
    }

    #[test]
    fn duplicate_names_and_empty_groups_are_refused() {
        let mut job = Job::exec("ok", "echo", vec![]);
        job.task_groups.push(job.task_groups[0].clone());
        job.task_groups[1].tasks.clear();
        let got = fields(&job);
        assert!(got.iter().any(|e| e.starts_with("task_groups[1].name: duplicate")), "{got:?}");
        assert!(got.iter().any(|e| e.starts_with("task_groups[1].tasks: must contain at least one")));
        job.task_groups.clear();
        assert_eq!(fields(&job), vec!["task_groups: must contain at least one task group".to_string()]);
    }

    #[test]
    fn constraints_are_checked() {
        let mut job = Job::exec("ok", "echo", vec![]);
        job.constraints = vec![
            Constraint { attribute: "attr.os".into(), operator: ConstraintOperator::Regexp, value: "(".into() },
            Constraint { attribute: "os".into(), operator: ConstraintOperator::Equal, value: "linux".into() },
            Constraint {
                attribute: "attr.kernel".into(),
                operator: ConstraintOperator::Version,
                value: ">= 5.x".into(),
            },
            Constraint { attribute: String::new(), operator: ConstraintOperator::DistinctHosts, value: String::new() },
        ];
        let got = fields(&job);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("constraints[0].value: invalid regular expression"));
        assert!(got[1].starts_with("constraints[1].attribute: must be node.id"));
        assert!(got[2].starts_with("constraints[2].value: invalid version requirement"));
    }

    #[test]
    fn job_names_may_be_helios_job_ids_but_groups_and_tasks_may_not() {
        assert_eq!(check_job_name("nginx:1.25"), Ok(()));
        assert_eq!(check_job_name(":v1"), Err("must not start with ':'".to_string()));
        let bad = check_job_name("nginx v1").unwrap_err();
        assert_eq!(bad, "may contain only letters, digits, '-', '_', '.' and ':', found ' '");
        assert!(check_name("nginx:1.25").is_err(), "a group or task name names containers and directories");
        let mut job = Job::exec("ok", "echo", vec![]);
        job.name = "web:v2".into();
        assert_eq!(fields(&job), Vec::<String>::new());
    }

    #[test]
    fn version_requirements_parse() {
        assert_eq!(
            parse_version_requirement(">= 1.2, < 2").unwrap(),
            vec![(">=".to_string(), vec![1, 2]), ("<".to_string(), vec![2])]
        );
        assert_eq!(parse_version_requirement("3").unwrap(), vec![("=".to_string(), vec![3])]);
        assert!(parse_version_requirement("~> 1").is_err());
        assert!(parse_version_requirement("").is_err());
    }

    #[test]
    fn env_names_are_checked() {
        let mut job = Job::exec("ok", "echo", vec![]);
        job.task_groups[0].tasks[0].env.insert("1BAD".into(), "x".into());
        job.task_groups[0].tasks[0].env.insert("GOOD_1".into(), "x".into());
        let got = fields(&job);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("name must be letters"));
    }
}
