//! protobuf <-> core conversions.
//!
//! Inbound conversions (`*_from_pb`) are strict: a value the core model cannot represent (an
//! unknown enum number, a port above 65535, a task without a driver) is reported with its field
//! path, together with everything `Job::validate` finds, so a caller gets every problem at once.

use std::collections::BTreeMap;

use helios_core::job::DEFAULT_PRIORITY;
use helios_core::placement::PlacementMetrics;
use helios_core::validate::FieldError;
use helios_core::{
    Affinity, Allocation, Constraint, ConstraintOperator, DelayFunction, DockerConfig, DockerDevice, Evaluation,
    ExecConfig, GroupPort, HealthCheck, Job, JobStatus, JobType, MigrateStrategy, Node, PortMapping, ReschedulePolicy,
    Resources, RestartMode, RestartPolicy, Spread, SpreadTarget, Task, TaskDriver, TaskGroup, TaskState, Timestamp,
    UpdateStrategy, ValidationErrors,
};

use crate::pb;

pub mod agent;
mod deployment;
mod events;
mod service;
mod states;
mod times;
pub use deployment::{deployment_status_to_pb, deployment_to_pb};
pub use events::{duration_from_pb, duration_to_pb, topic_from_pb, topic_to_pb};
pub use service::{check_state_to_pb, check_type_word, registration_to_pb};
pub use states::{
    address_mode_from_pb, address_mode_to_pb, alloc_client_status_to_pb, alloc_desired_status_to_pb,
    check_status_from_pb, check_status_to_pb, constraint_operator_from_pb, constraint_operator_to_pb,
    eval_status_to_pb, eval_trigger_to_pb, node_eligibility_to_pb, node_status_to_pb, task_event_kind_to_pb,
    task_event_word_to_pb, task_run_state_to_pb, token_type_to_pb, Label,
};
use times::{millis_from_pb, secs32_from_pb, secs_from_pb};
pub use times::{millis_to_pb, seconds_of, secs_to_pb, time_of, timestamp_from_pb, timestamp_to_pb};

pub type ConversionResult<T> = Result<T, ValidationErrors>;

/// The gRPC status for bad input in the request's own fields: `InvalidArgument`, naming every
/// field and its problem (`errors::invalid_fields` for a message nested in the request).
pub fn invalid_argument(errors: &ValidationErrors) -> tonic::Status {
    crate::errors::invalid_fields("", errors)
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), problem: problem.into() });
    }

    /// `value` if no problem was found, every problem otherwise.
    fn into_result<T>(self, value: T) -> ConversionResult<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Converts a submitted job, applies the documented defaults, and validates it.
pub fn job_from_pb(job: pb::Job) -> ConversionResult<Job> {
    let mut p = Problems::default();
    let job_type = match pb::JobType::try_from(job.r#type) {
        Ok(pb::JobType::Unspecified | pb::JobType::Service) => JobType::Service,
        Ok(pb::JobType::Batch) => JobType::Batch,
        Ok(pb::JobType::System) => JobType::System,
        Err(_) => {
            p.add("type", format!("unknown job type {}", job.r#type));
            JobType::Service
        }
    };
    let priority = if job.priority == 0 { DEFAULT_PRIORITY } else { job.priority };
    let constraints = constraints_from_pb(&mut p, "constraints", job.constraints);
    let task_groups = job
        .task_groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| group_from_pb(&mut p, &format!("task_groups[{i}]"), g, job_type))
        .collect();
    let core = Job {
        name: job.name,
        job_type,
        priority,
        task_groups,
        constraints,
        affinities: affinities_from_pb(&mut p, "affinities", job.affinities),
        spreads: spreads_from_pb(&mut p, "spreads", job.spreads),
        meta: job.meta,
        version: 0,
        status: JobStatus::Pending,
        stopped: false,
        submitted_at: Timestamp::default(),
        stable: false,
    };
    let mut errors = p.0;
    if let Err(e) = core.validate() {
        errors.extend(e.0);
    }
    if errors.is_empty() {
        return Ok(core);
    }
    for error in &mut errors {
        error.field = proto_path(&core, &error.field);
    }
    Err(ValidationErrors(errors))
}

/// A job's field path as `pb::Job` names it. A task's driver settings are `config` in job files
/// and the core model, but the driver's own field (`exec`, `raw_exec`, `docker`) of `pb::Task`.
fn proto_path(job: &Job, path: &str) -> String {
    const CONFIG: &str = "].config";
    let Some(at) = path.find(CONFIG) else { return path.to_string() };
    let (task_path, rest) = (&path[..=at], &path[at + CONFIG.len()..]);
    let indexes: Vec<usize> =
        task_path.split('[').skip(1).filter_map(|part| part.split(']').next()?.parse().ok()).collect();
    let task = match indexes[..] {
        [group, task] if task_path.starts_with("task_groups[") => {
            job.task_groups.get(group).and_then(|g| g.tasks.get(task))
        }
        _ => None,
    };
    let Some(task) = task else { return path.to_string() };
    let driver = match task.driver {
        TaskDriver::Exec(_) => "exec",
        TaskDriver::RawExec(_) => "raw_exec",
        TaskDriver::Docker(_) => "docker",
    };
    format!("{task_path}.{driver}{rest}")
}

fn group_from_pb(p: &mut Problems, path: &str, g: pb::TaskGroup, job_type: JobType) -> TaskGroup {
    let restart = match g.restart {
        None => RestartPolicy::default_for(job_type),
        Some(r) => RestartPolicy {
            attempts: r.attempts,
            interval_secs: secs32_from_pb(p, &format!("{path}.restart.interval"), r.interval).unwrap_or(0),
            delay_secs: secs32_from_pb(p, &format!("{path}.restart.delay"), r.delay).unwrap_or(0),
            mode: match pb::RestartMode::try_from(r.mode) {
                Ok(pb::RestartMode::Unspecified | pb::RestartMode::Fail) => RestartMode::Fail,
                Ok(pb::RestartMode::Delay) => RestartMode::Delay,
                Err(_) => {
                    p.add(format!("{path}.restart.mode"), format!("unknown restart mode {}", r.mode));
                    RestartMode::Fail
                }
            },
        },
    };
    TaskGroup {
        name: g.name,
        count: g.count.unwrap_or(1),
        constraints: constraints_from_pb(p, &format!("{path}.constraints"), g.constraints),
        tasks: g
            .tasks
            .into_iter()
            .enumerate()
            .map(|(j, t)| task_from_pb(p, &format!("{path}.tasks[{j}]"), t))
            .collect(),
        restart,
        reschedule: reschedule_from_pb(p, &format!("{path}.reschedule"), g.reschedule, job_type),
        affinities: affinities_from_pb(p, &format!("{path}.affinities"), g.affinities),
        spreads: spreads_from_pb(p, &format!("{path}.spreads"), g.spreads),
        migrate: migrate_from_pb(p, &format!("{path}.migrate"), g.migrate),
        update: update_from_pb(p, &format!("{path}.update"), g.update),
        services: service::services_from_pb(p, &format!("{path}.services"), g.services),
        meta: g.meta,
        ports: g
            .ports
            .into_iter()
            .enumerate()
            .map(|(k, port)| {
                let static_port = port.static_port.map(|n| {
                    u16::try_from(n).unwrap_or_else(|_| {
                        p.add(format!("{path}.ports[{k}].static_port"), format!("must be at most 65535, got {n}"));
                        0
                    })
                });
                GroupPort { label: port.label, static_port }
            })
            .collect(),
    }
}

fn task_from_pb(p: &mut Problems, path: &str, t: pb::Task) -> Task {
    let driver = match t.driver {
        Some(pb::task::Driver::Exec(e)) => {
            TaskDriver::Exec(ExecConfig { command: e.command, args: e.args, cpu_hard_limit: e.cpu_hard_limit })
        }
        Some(pb::task::Driver::RawExec(e)) => {
            TaskDriver::RawExec(ExecConfig { command: e.command, args: e.args, cpu_hard_limit: e.cpu_hard_limit })
        }
        Some(pb::task::Driver::Docker(d)) => TaskDriver::Docker(DockerConfig {
            image: d.image,
            entrypoint: d.entrypoint,
            command: d.command,
            args: d.args,
            working_dir: d.working_dir,
            labels: d.labels,
            ports: d
                .ports
                .into_iter()
                .enumerate()
                .map(|(k, port)| port_from_pb(p, &format!("{path}.config.ports[{k}]"), port))
                .collect(),
            network_mode: d.network_mode,
            volumes: d.volumes,
            cpu_hard_limit: d.cpu_hard_limit,
            privileged: d.privileged,
            cap_add: d.cap_add,
            cap_drop: d.cap_drop,
            devices: d
                .devices
                .into_iter()
                .map(|d| DockerDevice {
                    host_path: d.host_path,
                    container_path: d.container_path,
                    cgroup_permissions: d.cgroup_permissions,
                })
                .collect(),
        }),
        None => {
            p.add(format!("{path}.driver"), "must be set (exec, raw_exec or docker)");
            TaskDriver::Exec(ExecConfig::new("-", Vec::new()))
        }
    };
    Task {
        name: t.name,
        driver,
        env: t.env,
        resources: t
            .resources
            .map_or_else(Resources::default, |r| Resources { cpu_mhz: r.cpu_mhz, memory_mb: r.memory_mb }),
        constraints: constraints_from_pb(p, &format!("{path}.constraints"), t.constraints),
        kill_timeout_secs: match secs32_from_pb(p, &format!("{path}.kill_timeout"), t.kill_timeout) {
            None | Some(0) => Task::DEFAULT_KILL_TIMEOUT_SECS,
            Some(secs) => secs,
        },
        user: t.user,
    }
}

fn port_from_pb(p: &mut Problems, path: &str, port: pb::PortMapping) -> PortMapping {
    let mut narrow = |field: &str, value: u32| -> u16 {
        u16::try_from(value).unwrap_or_else(|_| {
            p.add(format!("{path}.{field}"), format!("must be at most 65535, got {value}"));
            1
        })
    };
    PortMapping {
        container_port: narrow("container_port", port.container_port),
        host_port: port.host_port.map(|h| narrow("host_port", h)),
        name: port.name,
    }
}

fn health_check_to_pb(h: HealthCheck) -> pb::HealthCheck {
    match h {
        HealthCheck::Checks => pb::HealthCheck::Checks,
        HealthCheck::TaskStates => pb::HealthCheck::TaskStates,
        HealthCheck::Manual => pb::HealthCheck::Manual,
    }
}

fn health_check_from_pb(p: &mut Problems, path: &str, value: i32) -> HealthCheck {
    match pb::HealthCheck::try_from(value) {
        Ok(pb::HealthCheck::Unspecified | pb::HealthCheck::Checks) => HealthCheck::Checks,
        Ok(pb::HealthCheck::TaskStates) => HealthCheck::TaskStates,
        Ok(pb::HealthCheck::Manual) => HealthCheck::Manual,
        Err(_) => {
            p.add(path.to_string(), format!("unknown health check {value}"));
            HealthCheck::Checks
        }
    }
}

fn update_from_pb(p: &mut Problems, path: &str, u: Option<pb::UpdateStrategy>) -> UpdateStrategy {
    let Some(u) = u else { return UpdateStrategy::default() };
    let default = UpdateStrategy::default();
    let at = |field: &str| format!("{path}.{field}");
    UpdateStrategy {
        max_parallel: u.max_parallel,
        min_healthy_time_secs: secs_from_pb(p, &at("min_healthy_time"), u.min_healthy_time).unwrap_or(0),
        healthy_deadline_secs: secs_from_pb(p, &at("healthy_deadline"), u.healthy_deadline).unwrap_or(0),
        // Unset means the default here; zero is a length of its own (no deadline).
        progress_deadline_secs: secs_from_pb(p, &at("progress_deadline"), u.progress_deadline)
            .unwrap_or(default.progress_deadline_secs),
        stagger_secs: secs_from_pb(p, &at("stagger"), u.stagger).unwrap_or(default.stagger_secs),
        health_check: health_check_from_pb(p, &format!("{path}.health_check"), u.health_check),
        auto_revert: u.auto_revert,
        auto_promote: u.auto_promote,
        canary: u.canary,
    }
}

fn migrate_from_pb(p: &mut Problems, path: &str, m: Option<pb::MigrateStrategy>) -> MigrateStrategy {
    let Some(m) = m else { return MigrateStrategy::default() };
    // (Manual is refused by validation: a drain has no deployment to set health on.)
    let health_check = health_check_from_pb(p, &format!("{path}.health_check"), m.health_check);
    MigrateStrategy {
        max_parallel: m.max_parallel,
        health_check,
        min_healthy_time_secs: secs_from_pb(p, &format!("{path}.min_healthy_time"), m.min_healthy_time).unwrap_or(0),
        healthy_deadline_secs: secs_from_pb(p, &format!("{path}.healthy_deadline"), m.healthy_deadline).unwrap_or(0),
    }
}

fn affinities_from_pb(p: &mut Problems, path: &str, affinities: Vec<pb::Affinity>) -> Vec<Affinity> {
    affinities
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let operator = constraint_operator_from_pb(a.operator).unwrap_or_else(|| {
                let why = format!("must be equal, not equal, regexp or version, got {}", a.operator);
                p.add(format!("{path}[{i}].operator"), why);
                ConstraintOperator::Equal
            });
            let weight = match a.weight {
                None => Affinity::DEFAULT_WEIGHT,
                Some(w) => i8::try_from(w).unwrap_or_else(|_| {
                    p.add(format!("{path}[{i}].weight"), format!("must be -100 to 100 and not 0, got {w}"));
                    Affinity::DEFAULT_WEIGHT
                }),
            };
            Affinity { attribute: a.attribute, operator, value: a.value, weight }
        })
        .collect()
}

fn spreads_from_pb(p: &mut Problems, path: &str, spreads: Vec<pb::Spread>) -> Vec<Spread> {
    let small = |p: &mut Problems, field: String, n: u32| {
        u8::try_from(n).unwrap_or_else(|_| {
            p.add(field, format!("must be at most 100, got {n}"));
            0
        })
    };
    spreads
        .into_iter()
        .enumerate()
        .map(|(i, s)| Spread {
            attribute: s.attribute,
            weight: s.weight.map_or(Spread::DEFAULT_WEIGHT, |w| small(p, format!("{path}[{i}].weight"), w)),
            targets: s
                .targets
                .into_iter()
                .enumerate()
                .map(|(k, t)| SpreadTarget {
                    percent: small(p, format!("{path}[{i}].targets[{k}].percent"), t.percent),
                    value: t.value,
                })
                .collect(),
        })
        .collect()
}

fn affinities_to_pb(affinities: &[Affinity]) -> Vec<pb::Affinity> {
    affinities
        .iter()
        .map(|a| pb::Affinity {
            attribute: a.attribute.clone(),
            operator: constraint_operator_to_pb(a.operator).into(),
            value: a.value.clone(),
            weight: Some(i32::from(a.weight)),
        })
        .collect()
}

fn spreads_to_pb(spreads: &[Spread]) -> Vec<pb::Spread> {
    spreads
        .iter()
        .map(|s| pb::Spread {
            attribute: s.attribute.clone(),
            weight: Some(u32::from(s.weight)),
            targets: s
                .targets
                .iter()
                .map(|t| pb::SpreadTarget { value: t.value.clone(), percent: u32::from(t.percent) })
                .collect(),
        })
        .collect()
}

pub fn metrics_to_pb(m: &PlacementMetrics) -> pb::PlacementMetrics {
    let score = |milli: i32| f64::from(milli) / 1000.0;
    pb::PlacementMetrics {
        nodes_evaluated: m.nodes_evaluated,
        nodes_filtered: m.nodes_filtered.clone().into_iter().collect(),
        scores: m
            .scores
            .iter()
            .map(|s| pb::NodeScore {
                node_id: s.node_id.clone(),
                parts: s.parts.iter().map(|(kind, v)| (kind.as_str().to_string(), score(*v))).collect(),
                total: score(s.total),
            })
            .collect(),
    }
}

fn constraints_from_pb(p: &mut Problems, path: &str, constraints: Vec<pb::Constraint>) -> Vec<Constraint> {
    constraints
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let operator = constraint_operator_from_pb(c.operator).unwrap_or_else(|| {
                p.add(format!("{path}[{i}].operator"), format!("must be set to a known operator, got {}", c.operator));
                ConstraintOperator::Equal
            });
            Constraint { attribute: c.attribute, operator, value: c.value }
        })
        .collect()
}

pub fn job_type_to_pb(t: JobType) -> pb::JobType {
    match t {
        JobType::Service => pb::JobType::Service,
        JobType::Batch => pb::JobType::Batch,
        JobType::System => pb::JobType::System,
    }
}

pub fn job_type_from_pb(t: i32) -> Option<JobType> {
    match pb::JobType::try_from(t).ok()? {
        pb::JobType::Unspecified => None,
        pb::JobType::Service => Some(JobType::Service),
        pb::JobType::Batch => Some(JobType::Batch),
        pb::JobType::System => Some(JobType::System),
    }
}

pub fn job_status_to_pb(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Dead => pb::JobStatus::Dead,
    }
}

pub fn job_to_pb(job: &Job) -> pb::Job {
    pb::Job {
        name: job.name.clone(),
        r#type: job_type_to_pb(job.job_type) as i32,
        priority: job.priority,
        task_groups: job.task_groups.iter().map(group_to_pb).collect(),
        constraints: constraints_to_pb(&job.constraints),
        affinities: affinities_to_pb(&job.affinities),
        spreads: spreads_to_pb(&job.spreads),
        meta: job.meta.clone(),
        version: job.version,
        status: job_status_to_pb(job.status) as i32,
        stopped: job.stopped,
        submit_time: Some(timestamp_to_pb(job.submitted_at)),
        stable: job.stable,
    }
}

fn group_to_pb(g: &TaskGroup) -> pb::TaskGroup {
    pb::TaskGroup {
        name: g.name.clone(),
        count: Some(g.count),
        tasks: g.tasks.iter().map(task_to_pb).collect(),
        constraints: constraints_to_pb(&g.constraints),
        ports: g
            .ports
            .iter()
            .map(|port| pb::GroupPort { label: port.label.clone(), static_port: port.static_port.map(u32::from) })
            .collect(),
        restart: Some(pb::RestartPolicy {
            attempts: g.restart.attempts,
            interval: Some(secs_to_pb(u64::from(g.restart.interval_secs))),
            delay: Some(secs_to_pb(u64::from(g.restart.delay_secs))),
            mode: match g.restart.mode {
                RestartMode::Fail => pb::RestartMode::Fail,
                RestartMode::Delay => pb::RestartMode::Delay,
            } as i32,
        }),
        reschedule: Some(reschedule_to_pb(&g.reschedule)),
        services: service::services_to_pb(&g.services),
        affinities: affinities_to_pb(&g.affinities),
        spreads: spreads_to_pb(&g.spreads),
        update: Some(pb::UpdateStrategy {
            max_parallel: g.update.max_parallel,
            health_check: health_check_to_pb(g.update.health_check) as i32,
            min_healthy_time: Some(secs_to_pb(g.update.min_healthy_time_secs)),
            healthy_deadline: Some(secs_to_pb(g.update.healthy_deadline_secs)),
            progress_deadline: Some(secs_to_pb(g.update.progress_deadline_secs)),
            auto_revert: g.update.auto_revert,
            auto_promote: g.update.auto_promote,
            canary: g.update.canary,
            stagger: Some(secs_to_pb(g.update.stagger_secs)),
        }),
        migrate: Some(pb::MigrateStrategy {
            max_parallel: g.migrate.max_parallel,
            health_check: health_check_to_pb(g.migrate.health_check) as i32,
            min_healthy_time: Some(secs_to_pb(g.migrate.min_healthy_time_secs)),
            healthy_deadline: Some(secs_to_pb(g.migrate.healthy_deadline_secs)),
        }),
        meta: g.meta.clone(),
    }
}

fn reschedule_to_pb(r: &ReschedulePolicy) -> pb::ReschedulePolicy {
    pb::ReschedulePolicy {
        attempts: r.attempts,
        interval: Some(secs_to_pb(r.interval_secs)),
        delay: Some(secs_to_pb(r.delay_secs)),
        delay_function: match r.delay_function {
            DelayFunction::Constant => pb::DelayFunction::Constant,
            DelayFunction::Exponential => pb::DelayFunction::Exponential,
            DelayFunction::Fibonacci => pb::DelayFunction::Fibonacci,
        } as i32,
        max_delay: Some(secs_to_pb(r.max_delay_secs)),
        unlimited: r.unlimited,
    }
}

fn reschedule_from_pb(
    p: &mut Problems,
    path: &str,
    r: Option<pb::ReschedulePolicy>,
    job_type: JobType,
) -> ReschedulePolicy {
    let Some(r) = r else { return ReschedulePolicy::default_for(job_type) };
    let delay_function = match pb::DelayFunction::try_from(r.delay_function) {
        Ok(pb::DelayFunction::Unspecified | pb::DelayFunction::Constant) => DelayFunction::Constant,
        Ok(pb::DelayFunction::Exponential) => DelayFunction::Exponential,
        Ok(pb::DelayFunction::Fibonacci) => DelayFunction::Fibonacci,
        Err(_) => {
            p.add(format!("{path}.delay_function"), format!("unknown delay function {}", r.delay_function));
            DelayFunction::Constant
        }
    };
    let mut secs =
        |field: &str, d: Option<prost_types::Duration>| secs_from_pb(p, &format!("{path}.{field}"), d).unwrap_or(0);
    ReschedulePolicy {
        attempts: r.attempts,
        interval_secs: secs("interval", r.interval),
        delay_secs: secs("delay", r.delay),
        delay_function,
        max_delay_secs: secs("max_delay", r.max_delay),
        unlimited: r.unlimited,
    }
}

fn exec_to_pb(e: &ExecConfig) -> pb::ExecConfig {
    pb::ExecConfig { command: e.command.clone(), args: e.args.clone(), cpu_hard_limit: e.cpu_hard_limit }
}

fn task_to_pb(t: &Task) -> pb::Task {
    let driver = match &t.driver {
        TaskDriver::Exec(e) => pb::task::Driver::Exec(exec_to_pb(e)),
        TaskDriver::RawExec(e) => pb::task::Driver::RawExec(exec_to_pb(e)),
        TaskDriver::Docker(d) => pb::task::Driver::Docker(pb::DockerConfig {
            image: d.image.clone(),
            entrypoint: d.entrypoint.clone(),
            command: d.command.clone(),
            args: d.args.clone(),
            working_dir: d.working_dir.clone(),
            labels: d.labels.clone(),
            ports: d
                .ports
                .iter()
                .map(|port| pb::PortMapping {
                    name: port.name.clone(),
                    container_port: u32::from(port.container_port),
                    host_port: port.host_port.map(u32::from),
                })
                .collect(),
            network_mode: d.network_mode.clone(),
            volumes: d.volumes.clone(),
            cpu_hard_limit: d.cpu_hard_limit,
            privileged: d.privileged,
            cap_add: d.cap_add.clone(),
            cap_drop: d.cap_drop.clone(),
            devices: d
                .devices
                .iter()
                .map(|d| pb::DockerDevice {
                    host_path: d.host_path.clone(),
                    container_path: d.container_path.clone(),
                    cgroup_permissions: d.cgroup_permissions.clone(),
                })
                .collect(),
        }),
    };
    pb::Task {
        name: t.name.clone(),
        driver: Some(driver),
        env: t.env.clone(),
        resources: Some(resources_to_pb(t.resources)),
        constraints: constraints_to_pb(&t.constraints),
        kill_timeout: Some(secs_to_pb(u64::from(t.kill_timeout_secs))),
        user: t.user.clone(),
    }
}

fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources { cpu_mhz: r.cpu_mhz, memory_mb: r.memory_mb }
}

fn constraints_to_pb(constraints: &[Constraint]) -> Vec<pb::Constraint> {
    constraints
        .iter()
        .map(|c| pb::Constraint {
            attribute: c.attribute.clone(),
            operator: constraint_operator_to_pb(c.operator).into(),
            value: c.value.clone(),
        })
        .collect()
}

pub fn alloc_to_pb(a: &Allocation) -> pb::Allocation {
    pb::Allocation {
        id: a.id.clone(),
        name: a.name.clone(),
        eval_id: a.eval_id.clone(),
        job_name: a.job_name.clone(),
        job_version: a.job_version,
        task_group: a.task_group.clone(),
        node_id: a.node_id.clone(),
        resources: Some(resources_to_pb(a.resources)),
        desired_status: alloc_desired_status_to_pb(a.desired_status).into(),
        desired_description: a.desired_description.clone(),
        client_status: alloc_client_status_to_pb(a.client_status).into(),
        client_description: a.client_description.clone(),
        task_states: a.task_states.iter().map(|(k, v)| (k.clone(), task_state_to_pb(v))).collect::<BTreeMap<_, _>>(),
        create_time: Some(timestamp_to_pb(a.created_at)),
        update_time: Some(timestamp_to_pb(a.modified_at)),
        host_ports: a.host_ports.iter().map(|p| u32::from(*p)).collect(),
        reschedule_events: a
            .reschedule_events
            .iter()
            .map(|e| pb::RescheduleEvent {
                reschedule_time: Some(timestamp_to_pb(e.at)),
                prev_alloc_id: e.prev_alloc_id.clone(),
                prev_node_id: e.prev_node_id.clone(),
                delay: Some(duration_to_pb(std::time::Duration::from_secs(e.delay_secs))),
            })
            .collect(),
        next_allocation: a.next_allocation.clone(),
        // Filled in by the server that reads it (`helios_core::reschedule::followup`).
        reschedule_time: None,
        not_rescheduled: String::new(),
        metrics: (a.metrics != PlacementMetrics::default()).then(|| metrics_to_pb(&a.metrics)),
        services: a.services.iter().map(registration_to_pb).collect(),
        deployment_id: a.deployment_id.clone().unwrap_or_default(),
        canary: a.canary,
    }
}

fn task_state_to_pb(s: &TaskState) -> pb::TaskState {
    pb::TaskState {
        state: task_run_state_to_pb(s.state).into(),
        failed: s.failed,
        restarts: s.restarts,
        start_time: s.started_at.map(timestamp_to_pb),
        finish_time: s.finished_at.map(timestamp_to_pb),
        events: s
            .events
            .iter()
            .map(|e| pb::TaskEvent {
                event_time: Some(timestamp_to_pb(e.time)),
                kind: task_event_word_to_pb(&e.kind).into(),
                message: e.message.clone(),
                exit_code: e.exit_code,
            })
            .collect(),
    }
}

pub fn node_to_pb(n: &Node) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        rpc_addr: n.rpc_addr.clone(),
        attributes: n.attributes.clone(),
        meta: n.meta.clone(),
        drivers: n.drivers.clone(),
        resources: Some(resources_to_pb(n.resources)),
        status: node_status_to_pb(n.status) as i32,
        eligibility: node_eligibility_to_pb(n.eligibility) as i32,
        drain: n.drain,
        register_time: Some(timestamp_to_pb(n.registered_at)),
        status_update_time: Some(timestamp_to_pb(n.status_updated_at)),
    }
}

/// The node an agent registers, with its secret, validated. Status and timestamps are the
/// server's to set.
pub fn node_from_pb(node: pb::Node, secret: String, now: Timestamp) -> ConversionResult<Node> {
    let resources = node.resources.unwrap_or_default();
    let core = Node {
        id: node.id,
        hostname: node.hostname,
        rpc_addr: node.rpc_addr,
        attributes: node.attributes,
        meta: node.meta,
        drivers: node.drivers,
        resources: Resources { cpu_mhz: resources.cpu_mhz, memory_mb: resources.memory_mb },
        status: helios_core::NodeStatus::Ready,
        eligibility: helios_core::NodeEligibility::Eligible,
        drain: false,
        registered_at: now,
        status_updated_at: now,
        secret_id: secret,
    };
    core.validate()?;
    Ok(core)
}

pub fn eval_to_pb(e: &Evaluation) -> pb::Evaluation {
    pb::Evaluation {
        id: e.id.clone(),
        job_name: e.job_name.clone(),
        priority: e.priority,
        trigger: eval_trigger_to_pb(e.trigger) as i32,
        node_id: e.node_id.clone(),
        status: eval_status_to_pb(e.status) as i32,
        status_description: e.status_description.clone(),
        failed_placements: e.failed_placements.clone(),
        create_time: Some(timestamp_to_pb(e.created_at)),
        update_time: Some(timestamp_to_pb(e.modified_at)),
        wait_until: e.wait_until.map(timestamp_to_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_job() -> pb::Job {
        job_to_pb(&Job::exec("web", "echo", vec!["hi".into()]))
    }

    #[test]
    fn a_job_survives_the_round_trip() {
        let mut job = Job::exec("web", "echo", vec!["hi".into()]);
        job.constraints.push(Constraint {
            attribute: "attr.os".into(),
            operator: ConstraintOperator::Regexp,
            value: "lin.*".into(),
        });
        let back = job_from_pb(job_to_pb(&job)).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn defaults_fill_unset_fields() {
        let mut pb_job = exec_job();
        pb_job.r#type = 0;
        pb_job.priority = 0;
        pb_job.task_groups[0].count = None;
        pb_job.task_groups[0].restart = None;
        pb_job.task_groups[0].tasks[0].resources = None;
        pb_job.task_groups[0].tasks[0].kill_timeout = None;
        let job = job_from_pb(pb_job).unwrap();
        assert_eq!(job.job_type, JobType::Service);
        assert_eq!(job.priority, DEFAULT_PRIORITY);
        assert_eq!(job.task_groups[0].count, 1);
        assert_eq!(job.task_groups[0].restart, RestartPolicy::default_for(JobType::Service));
        assert_eq!(job.task_groups[0].tasks[0].resources, Resources::default());
        assert_eq!(job.task_groups[0].tasks[0].kill_timeout_secs, Task::DEFAULT_KILL_TIMEOUT_SECS);
    }

    #[test]
    fn unrepresentable_values_are_reported_with_validation_problems() {
        let mut pb_job = exec_job();
        pb_job.r#type = 42;
        pb_job.name = String::new();
        pb_job.task_groups[0].tasks[0].driver = None;
        pb_job.constraints.push(pb::Constraint { attribute: "attr.os".into(), operator: 42, value: "x".into() });
        pb_job.constraints.push(pb::Constraint { attribute: "attr.os".into(), operator: 0, value: "x".into() });
        let half_a_second = prost_types::Duration { seconds: 0, nanos: 500_000_000 };
        pb_job.task_groups[0].tasks[0].kill_timeout = Some(half_a_second);
        let err = job_from_pb(pb_job).unwrap_err().to_string();
        assert!(err.contains("type: unknown job type 42"), "{err}");
        assert!(err.contains("task_groups[0].tasks[0].driver: must be set"), "{err}");
        assert!(err.contains("constraints[0].operator: must be set to a known operator, got 42"), "{err}");
        assert!(err.contains("constraints[1].operator: must be set to a known operator, got 0"), "{err}");
        assert!(err.contains("task_groups[0].tasks[0].kill_timeout: must be whole seconds"), "{err}");
        assert!(err.contains("name: must not be empty"), "{err}");
    }

    #[test]
    fn oversized_ports_are_refused() {
        let mut pb_job = exec_job();
        pb_job.task_groups[0].tasks[0].driver = Some(pb::task::Driver::Docker(pb::DockerConfig {
            image: "busybox".into(),
            ports: vec![pb::PortMapping { name: "http".into(), container_port: 70_000, host_port: Some(80) }],
            ..Default::default()
        }));
        let err = job_from_pb(pb_job).unwrap_err().to_string();
        assert_eq!(err, "task_groups[0].tasks[0].docker.ports[0].container_port: must be at most 65535, got 70000");
    }

    #[test]
    fn problems_are_named_by_their_proto_paths() {
        let mut pb_job = exec_job();
        let raw = pb::task::Driver::RawExec(pb::ExecConfig { command: String::new(), ..Default::default() });
        pb_job.task_groups[0].tasks.push(pb::Task { name: "raw".into(), driver: Some(raw), ..Default::default() });
        if let Some(pb::task::Driver::Exec(exec)) = &mut pb_job.task_groups[0].tasks[0].driver {
            exec.command.clear();
        }
        let err = job_from_pb(pb_job).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"task_groups[0].tasks[0].exec.command"), "{fields:?}");
        assert!(fields.contains(&"task_groups[0].tasks[1].raw_exec.command"), "{fields:?}");
        assert!(fields.iter().all(|f| !f.contains("config")), "{fields:?}");
    }
}
