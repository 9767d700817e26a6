//! A job file's shape, shared by every format: TOML and JSON deserialize into it directly, HCL is
//! read into it by `hcl.rs`. It follows Nomad's jobspec (job, group, task, config, env,
//! resources, constraint, affinity, spread, restart, reschedule, migrate, update, meta, network
//! ports, service and check: `services.rs`) so a Nomad user's file maps one to one.
//! Unknown fields are refused by name, never dropped.

use std::collections::BTreeMap;

use helios_core::job::DEFAULT_PRIORITY;
use helios_core::{
    Affinity, Constraint, ConstraintOperator, DelayFunction, DockerConfig, DockerDevice, ExecConfig, GroupPort,
    HealthCheck, Job, JobType, MigrateStrategy, PortMapping, ReschedulePolicy, Resources, RestartMode, RestartPolicy,
    Spread, SpreadTarget, Task, TaskDriver, TaskGroup, UpdateStrategy,
};
use serde::{Deserialize, Serialize};

pub use super::services::ServiceSpec;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub priority: Option<u32>,
    /// Accepted for Nomad files and ignored (with a note): Helios has one datacenter.
    pub datacenters: Option<Vec<String>>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub constraint: Vec<ConstraintSpec>,
    /// Every group's, unless the group sets its own (field by field, as Nomad merges them).
    pub reschedule: Option<RescheduleSpec>,
    /// The same, for draining nodes.
    pub migrate: Option<MigrateSpec>,
    /// The same, for new versions.
    pub update: Option<UpdateSpec>,
    #[serde(default)]
    pub affinity: Vec<AffinitySpec>,
    #[serde(default)]
    pub spread: Vec<SpreadSpec>,
    #[serde(default)]
    pub group: Vec<GroupSpec>,
}

/// Nomad's `migrate` block (service jobs): what it leaves out comes from the job's block, then
/// Nomad's defaults.
#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct MigrateSpec {
    pub max_parallel: Option<u32>,
    pub health_check: Option<String>,
    pub min_healthy_time: Option<String>,
    pub healthy_deadline: Option<String>,
}

impl MigrateSpec {
    fn to_strategy(&self, p: &mut Problems, path: &str, job_type: JobType) -> MigrateStrategy {
        if job_type != JobType::Service {
            p.add(
                path,
                format!(
                    "applies to service jobs: a {} job's allocations leave a draining node at once; leave migrate out",
                    job_type.as_str()
                ),
            );
            return MigrateStrategy::default();
        }
        let fields = (&self.max_parallel, &self.health_check, &self.min_healthy_time, &self.healthy_deadline);
        waves(p, path, fields, MigrateStrategy::default())
    }
}

/// Group `index`'s `block` over the job's, field by field (each a JSON object's fields), with
/// the path a problem is reported at (the group's block, else the job's); None with neither.
fn merged<S>(own: &Option<S>, job_wide: &Option<S>, index: usize, block: &str) -> Option<(S, String)>
where
    S: Clone + serde::Serialize + serde::de::DeserializeOwned,
{
    let at = if own.is_some() { format!("group[{index}].{block}") } else { block.to_string() };
    let spec = match (own, job_wide) {
        (None, None) => return None,
        (Some(one), None) | (None, Some(one)) => one.clone(),
        // Plain structs of options: their JSON is an object, and reads back.
        (Some(own), Some(job_wide)) => {
            let object = |spec: &S| match serde_json::to_value(spec).expect("a block is plain data") {
                serde_json::Value::Object(fields) => fields,
                _ => unreachable!("a block is a struct"),
            };
            let mut fields = object(job_wide);
            fields.extend(object(own).into_iter().filter(|(_, v)| !v.is_null()));
            serde_json::from_value(serde_json::Value::Object(fields)).expect("the merged fields are the block's")
        }
    };
    Some((spec, at))
}

/// The fields `migrate` and `update` share (a wave size and a health rule) over `start`.
fn waves(
    p: &mut Problems,
    path: &str,
    (max_parallel, health_check, min_healthy_time, healthy_deadline): WaveFields<'_>,
    start: MigrateStrategy,
) -> MigrateStrategy {
    let mut m = start;
    m.max_parallel = max_parallel.unwrap_or(m.max_parallel);
    if let Some(name) = health_check {
        match HealthCheck::parse(name) {
            Some(h) => m.health_check = h,
            None => p.add(&format!("{path}.health_check"), format!("must be checks or task_states, got {name:?}")),
        }
    }
    m.min_healthy_time_secs = secs(p, &format!("{path}.min_healthy_time"), min_healthy_time, m.min_healthy_time_secs);
    m.healthy_deadline_secs = secs(p, &format!("{path}.healthy_deadline"), healthy_deadline, m.healthy_deadline_secs);
    m
}

type WaveFields<'a> = (&'a Option<u32>, &'a Option<String>, &'a Option<String>, &'a Option<String>);

/// A duration field in whole seconds (`duration`, widened).
fn secs(p: &mut Problems, path: &str, text: &Option<String>, default: u64) -> u64 {
    u64::from(duration(p, path, text, u32::try_from(default).unwrap_or(u32::MAX)))
}

/// Nomad's `update` block (service jobs): rolling updates watched by a deployment, with
/// canaries, promotion, auto-revert and a progress deadline.
#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    pub max_parallel: Option<u32>,
    pub health_check: Option<String>,
    pub min_healthy_time: Option<String>,
    pub healthy_deadline: Option<String>,
    pub progress_deadline: Option<String>,
    pub auto_revert: Option<bool>,
    pub auto_promote: Option<bool>,
    pub canary: Option<u32>,
    pub stagger: Option<String>,
}

impl UpdateSpec {
    fn to_strategy(&self, p: &mut Problems, path: &str, job_type: JobType, notes: &mut Vec<String>) -> UpdateStrategy {
        if job_type == JobType::Batch {
            p.add(
                path,
                "rolling updates apply to service and system jobs: a batch job's allocations are replaced at once; leave update out",
            );
            return UpdateStrategy::default();
        }
        let system = job_type == JobType::System;
        if self.stagger.is_some() && !system {
            // Nomad paces only system jobs' updates by it; a service job's waves follow health.
            notes.push(format!("{path}.stagger is ignored, as Nomad ignores it for service jobs: each wave waits for the last to be healthy"));
        }
        if system {
            // Nomad rolls system jobs without health or deployments, and ignores these.
            let ignored = [
                ("health_check", self.health_check.as_deref().is_some_and(|h| h != "manual")),
                ("min_healthy_time", self.min_healthy_time.is_some()),
                ("healthy_deadline", self.healthy_deadline.is_some()),
                ("progress_deadline", self.progress_deadline.is_some()),
                ("auto_revert", self.auto_revert.is_some()),
            ];
            for (field, set) in ignored {
                if set {
                    notes.push(format!("{path}.{field} is ignored, as Nomad ignores it for system jobs: they roll by max_parallel and stagger"));
                }
            }
            let defaults = UpdateStrategy::nomad_block_defaults();
            let manual = self.health_check.as_deref() == Some("manual");
            return UpdateStrategy {
                max_parallel: self.max_parallel.unwrap_or(defaults.max_parallel),
                // (Refused by validation, by name: what a system job cannot do.)
                health_check: if manual { HealthCheck::Manual } else { defaults.health_check },
                auto_promote: self.auto_promote.unwrap_or(false),
                canary: self.canary.unwrap_or(0),
                stagger_secs: secs(p, &format!("{path}.stagger"), &self.stagger, defaults.stagger_secs),
                ..defaults
            };
        }
        let defaults = UpdateStrategy::nomad_block_defaults();
        // `manual` is the update's own (a drain has no deployment to ask).
        let manual = self.health_check.as_deref() == Some("manual");
        let health_check = if manual { &None } else { &self.health_check };
        if let Some(name) = health_check.as_deref().filter(|n| HealthCheck::parse(n).is_none()) {
            p.add(&format!("{path}.health_check"), format!("must be checks, task_states or manual, got {name:?}"));
        }
        let health_check =
            if health_check.as_deref().and_then(HealthCheck::parse).is_some() { health_check } else { &None };
        let fields = (&self.max_parallel, health_check, &self.min_healthy_time, &self.healthy_deadline);
        let m = waves(p, path, fields, defaults.health_rule());
        UpdateStrategy {
            max_parallel: m.max_parallel,
            health_check: if manual { HealthCheck::Manual } else { m.health_check },
            min_healthy_time_secs: m.min_healthy_time_secs,
            healthy_deadline_secs: m.healthy_deadline_secs,
            progress_deadline_secs: secs(
                p,
                &format!("{path}.progress_deadline"),
                &self.progress_deadline,
                defaults.progress_deadline_secs,
            ),
            auto_revert: self.auto_revert.unwrap_or(defaults.auto_revert),
            auto_promote: self.auto_promote.unwrap_or(defaults.auto_promote),
            canary: self.canary.unwrap_or(defaults.canary),
            // Stored only for system jobs, which use it (a service job keeps the default).
            stagger_secs: defaults.stagger_secs,
        }
    }
}

/// Nomad's `affinity`: `attribute`, `operator` (default `=`), `value`, `weight` (default 50).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AffinitySpec {
    #[serde(default)]
    pub attribute: String,
    #[serde(default = "equal")]
    pub operator: String,
    #[serde(default)]
    pub value: String,
    pub weight: Option<i64>,
}

/// Nomad's `spread`: `attribute`, `weight` (default 50), `target "VALUE" { percent }`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpreadSpec {
    #[serde(default)]
    pub attribute: String,
    pub weight: Option<u64>,
    #[serde(default)]
    pub target: BTreeMap<String, SpreadTargetSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpreadTargetSpec {
    pub percent: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub count: Option<u32>,
    #[serde(default)]
    pub constraint: Vec<ConstraintSpec>,
    pub restart: Option<RestartSpec>,
    pub reschedule: Option<RescheduleSpec>,
    pub migrate: Option<MigrateSpec>,
    pub update: Option<UpdateSpec>,
    #[serde(default)]
    pub affinity: Vec<AffinitySpec>,
    #[serde(default)]
    pub spread: Vec<SpreadSpec>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
    #[serde(default)]
    pub task: Vec<TaskSpec>,
}

/// Nomad's group network: named ports that tasks' `config.ports` refer to.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Accepted and ignored ("bridge"/"host" networking is the task's `network_mode`).
    pub mode: Option<String>,
    #[serde(default)]
    pub port: BTreeMap<String, PortSpec>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The host port; without it a free one is picked.
    #[serde(rename = "static")]
    pub static_port: Option<u16>,
    /// The container port.
    pub to: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub config: ConfigSpec,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub resources: Option<ResourcesSpec>,
    #[serde(default)]
    pub constraint: Vec<ConstraintSpec>,
    /// A duration: "5s", "1m".
    pub kill_timeout: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
}

/// The driver's config: `command` and `args` for exec; the rest for docker.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Helios style `NAME=PORT[:HOSTPORT]`, or Nomad style: the name of a group network port.
    #[serde(default)]
    pub ports: Vec<String>,
    pub work_dir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub network_mode: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub cpu_hard_limit: bool,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
}

/// A host device for a docker task, as Nomad writes it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub host_path: String,
    pub container_path: Option<String>,
    pub cgroup_permissions: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// MHz.
    pub cpu: Option<u32>,
    /// MB.
    pub memory: Option<u32>,
}

/// Nomad's `reschedule` block; what it leaves out comes from the job's block, then the job
/// type's defaults.
#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RescheduleSpec {
    pub attempts: Option<u32>,
    pub interval: Option<String>,
    pub delay: Option<String>,
    pub delay_function: Option<String>,
    pub max_delay: Option<String>,
    pub unlimited: Option<bool>,
}

impl RescheduleSpec {
    fn to_policy(&self, p: &mut Problems, path: &str, job_type: JobType) -> ReschedulePolicy {
        if job_type == JobType::System {
            p.add(path, "a system job is not rescheduled (it runs on every eligible node): leave reschedule out");
            return ReschedulePolicy::default_for(job_type);
        }
        let mut policy = ReschedulePolicy::default_for(job_type);
        if let Some(attempts) = self.attempts {
            policy.attempts = attempts;
            // Attempts given without `unlimited` mean a limit (a service's default is unlimited;
            // Nomad refuses the two together). `attempts = 0` alone changes nothing, as in Nomad:
            // rescheduling stops only with `unlimited = false` too.
            if attempts > 0 {
                policy.unlimited = false;
            }
        }
        policy.unlimited = self.unlimited.unwrap_or(policy.unlimited);
        policy.interval_secs = secs(p, &format!("{path}.interval"), &self.interval, policy.interval_secs);
        policy.delay_secs = secs(p, &format!("{path}.delay"), &self.delay, policy.delay_secs);
        policy.max_delay_secs = secs(p, &format!("{path}.max_delay"), &self.max_delay, policy.max_delay_secs);
        if let Some(name) = &self.delay_function {
            match DelayFunction::parse(name) {
                Some(f) => policy.delay_function = f,
                None => {
                    p.add(&format!("{path}.delay_function"), format!("must be {}, got {name:?}", DelayFunction::NAMES))
                }
            }
        }
        policy
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub attempts: Option<u32>,
    pub interval: Option<String>,
    pub delay: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    #[serde(default)]
    pub attribute: String,
    #[serde(default = "equal")]
    pub operator: String,
    #[serde(default)]
    pub value: String,
}

fn equal() -> String {
    "=".to_string()
}

/// Problems found while turning a spec into a job, each naming its field.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub(super) fn add(&mut self, field: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{field}: {problem}"));
    }
}

impl JobSpec {
    /// The job the spec declares, and notes about what was accepted but ignored.
    pub fn to_job(&self) -> Result<(Job, Vec<String>), Problems> {
        let mut p = Problems::default();
        let mut notes = Vec::new();
        if self.datacenters.is_some() {
            notes.push("datacenters is ignored: a Helios cluster is one datacenter".to_string());
        }
        let job_type = match self.job_type.as_deref().unwrap_or("service") {
            "service" => JobType::Service,
            "batch" => JobType::Batch,
            "system" => JobType::System,
            other => {
                p.add("type", format!("must be service, batch or system, got {other:?}"));
                JobType::Service
            }
        };
        if self.group.is_empty() {
            p.add("group", "a job needs at least one group");
        }
        let mut job = Job::exec(&self.name, "", Vec::new());
        job.set_type(job_type);
        job.priority = self.priority.unwrap_or(DEFAULT_PRIORITY);
        job.meta = self.meta.clone();
        job.constraints = constraints(&mut p, "constraint", &self.constraint);
        job.affinities = affinities(&mut p, "affinity", &self.affinity);
        job.spreads = spreads(&mut p, "spread", &self.spread);
        job.task_groups = self
            .group
            .iter()
            .enumerate()
            .map(|(i, g)| g.to_group(&mut p, &format!("group[{i}]"), job_type, &mut notes))
            .collect();
        for (i, (group, spec)) in job.task_groups.iter_mut().zip(&self.group).enumerate() {
            group.services = super::services::services(&mut p, &format!("group[{i}]"), &self.name, spec, &mut notes);
        }
        // A group's block over the job's, field by field, as Nomad merges them.
        for (i, (group, spec)) in job.task_groups.iter_mut().zip(&self.group).enumerate() {
            if let Some((merged, at)) = merged(&spec.reschedule, &self.reschedule, i, "reschedule") {
                group.reschedule = merged.to_policy(&mut p, &at, job_type);
            }
            if let Some((merged, at)) = merged(&spec.migrate, &self.migrate, i, "migrate") {
                group.migrate = merged.to_strategy(&mut p, &at, job_type);
            }
            if let Some((merged, at)) = merged(&spec.update, &self.update, i, "update") {
                group.update = merged.to_strategy(&mut p, &at, job_type, &mut notes);
            }
        }
        if p.0.is_empty() {
            Ok((job, notes))
        } else {
            Err(p)
        }
    }
}

impl GroupSpec {
    fn to_group(&self, p: &mut Problems, path: &str, job_type: JobType, notes: &mut Vec<String>) -> TaskGroup {
        if self.network.as_ref().is_some_and(|n| n.mode.is_some()) {
            notes.push(format!("{path}.network.mode is ignored: set the task's config.network_mode"));
        }
        let mut restart = RestartPolicy::default_for(job_type);
        if let Some(r) = &self.restart {
            restart.attempts = r.attempts.unwrap_or(restart.attempts);
            restart.interval_secs =
                duration(p, &format!("{path}.restart.interval"), &r.interval, restart.interval_secs);
            restart.delay_secs = duration(p, &format!("{path}.restart.delay"), &r.delay, restart.delay_secs);
            restart.mode = match r.mode.as_deref() {
                None | Some("fail") => RestartMode::Fail,
                Some("delay") => RestartMode::Delay,
                Some(other) => {
                    p.add(&format!("{path}.restart.mode"), format!("must be fail or delay, got {other:?}"));
                    RestartMode::Fail
                }
            };
        }
        if self.task.is_empty() {
            p.add(&format!("{path}.task"), "a group needs at least one task");
        }
        let ports = self.network.as_ref().map(|n| &n.port);
        // A port a docker task maps in `config.ports` is that container's; the others are the
        // group's own, which its exec and raw_exec tasks get. One neither would get is refused,
        // not dropped.
        let has_exec = self.task.iter().any(|t| t.driver == "exec" || t.driver == "raw_exec");
        let mut own = Vec::new();
        for (name, spec) in ports.into_iter().flatten() {
            let uses = |entry: &String| entry == name || entry.split_once('=').is_some_and(|(n, _)| n == name);
            let mapping = self.task.iter().flat_map(|t| &t.config.ports).find(|entry| uses(entry));
            let at = format!("{path}.network.port[{name}]");
            match mapping {
                Some(entry) if entry == name => {}
                Some(entry) => p.add(
                    &at,
                    format!("config.ports maps it inline ({entry:?}), so this block is not used: write ports = [{name:?}], or drop the block"),
                ),
                None if !has_exec => p.add(&at, "no docker task maps it in config.ports, and the group has no exec or raw_exec task to get it"),
                None if spec.to.is_some() && spec.to != spec.static_port => p.add(
                    &format!("{at}.to"),
                    "is a container's port: exec and raw_exec tasks listen on the host port itself (static, or the one picked)",
                ),
                None => own.push(GroupPort { label: name.clone(), static_port: spec.static_port }),
            }
        }
        let tasks: Vec<Task> =
            self.task.iter().enumerate().map(|(k, t)| t.to_task(p, &format!("{path}.task[{k}]"), ports)).collect();
        for (k, task) in tasks.iter().enumerate() {
            unexpanded_port_references(p, &format!("{path}.task[{k}]"), task, &own);
        }
        TaskGroup {
            name: self.name.clone(),
            count: self.count.unwrap_or(1),
            tasks,
            constraints: constraints(p, &format!("{path}.constraint"), &self.constraint),
            restart,
            reschedule: ReschedulePolicy::default_for(job_type),
            migrate: MigrateStrategy::default(),
            update: UpdateStrategy::default(),
            affinities: affinities(p, &format!("{path}.affinity"), &self.affinity),
            spreads: spreads(p, &format!("{path}.spread"), &self.spread),
            meta: self.meta.clone(),
            ports: own,
            services: Vec::new(),
        }
    }
}

impl TaskSpec {
    fn to_task(&self, p: &mut Problems, path: &str, network: Option<&BTreeMap<String, PortSpec>>) -> Task {
        let c = &self.config;
        let driver = match self.driver.as_str() {
            "exec" | "raw_exec" => {
                let docker_only = [
                    ("image", c.image.is_some()),
                    ("ports", !c.ports.is_empty()),
                    ("entrypoint", !c.entrypoint.is_empty()),
                    ("work_dir", c.work_dir.is_some()),
                    ("labels", !c.labels.is_empty()),
                    ("network_mode", c.network_mode.is_some()),
                    ("volumes", !c.volumes.is_empty()),
                    ("privileged", c.privileged),
                    ("cap_add", !c.cap_add.is_empty()),
                    ("cap_drop", !c.cap_drop.is_empty()),
                    ("devices", !c.devices.is_empty()),
                ];
                for (field, set) in docker_only {
                    if set {
                        p.add(&format!("{path}.config.{field}"), "is for the docker driver");
                    }
                }
                let command = c.command.clone().unwrap_or_else(|| {
                    p.add(&format!("{path}.config.command"), "an exec task needs a command");
                    String::new()
                });
                let config = ExecConfig { command, args: c.args.clone(), cpu_hard_limit: c.cpu_hard_limit };
                if self.driver == "exec" {
                    TaskDriver::Exec(config)
                } else {
                    TaskDriver::RawExec(config)
                }
            }
            "docker" => TaskDriver::Docker(DockerConfig {
                image: c.image.clone().unwrap_or_else(|| {
                    p.add(&format!("{path}.config.image"), "a docker task needs an image");
                    String::new()
                }),
                entrypoint: c.entrypoint.clone(),
                command: c.command.clone(),
                args: c.args.clone(),
                working_dir: c.work_dir.clone(),
                labels: c.labels.clone(),
                ports: c
                    .ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, port)| port_mapping(p, &format!("{path}.config.ports[{i}]"), port, network))
                    .collect(),
                network_mode: c.network_mode.clone(),
                volumes: c.volumes.clone(),
                cpu_hard_limit: c.cpu_hard_limit,
                privileged: c.privileged,
                cap_add: c.cap_add.clone(),
                cap_drop: c.cap_drop.clone(),
                devices: c
                    .devices
                    .iter()
                    .map(|d| DockerDevice {
                        host_path: d.host_path.clone(),
                        container_path: d.container_path.clone(),
                        cgroup_permissions: d.cgroup_permissions.clone(),
                    })
                    .collect(),
            }),
            other => {
                p.add(&format!("{path}.driver"), format!("must be exec, raw_exec or docker, got {other:?}"));
                TaskDriver::Exec(ExecConfig::new("", Vec::new()))
            }
        };
        let defaults = Resources::default();
        let resources = self.resources.unwrap_or_default();
        Task {
            name: self.name.clone(),
            driver,
            env: self.env.clone(),
            resources: Resources {
                cpu_mhz: resources.cpu.unwrap_or(defaults.cpu_mhz),
                memory_mb: resources.memory.unwrap_or(defaults.memory_mb),
            },
            constraints: constraints(p, &format!("{path}.constraint"), &self.constraint),
            kill_timeout_secs: duration(
                p,
                &format!("{path}.kill_timeout"),
                &self.kill_timeout,
                Task::DEFAULT_KILL_TIMEOUT_SECS,
            ),
            user: self.user.clone(),
        }
    }
}

/// The runtime variables that name a port label.
const PORT_VARIABLES: [&str; 5] = ["NOMAD_PORT_", "NOMAD_HOST_PORT_", "NOMAD_IP_", "NOMAD_ADDR_", "HELIOS_PORT_"];

/// Refuses a `${NOMAD_PORT_<label>}` (or the like) for a port the task is not given: it would
/// reach the task as written. A docker task is given the ports its `config.ports` maps; exec
/// and raw_exec tasks the group's own (`own`).
fn unexpanded_port_references(p: &mut Problems, path: &str, task: &Task, own: &[GroupPort]) {
    let mut texts: Vec<(String, &str)> = task.env.iter().map(|(k, v)| (format!("env.{k}"), v.as_str())).collect();
    let given: Vec<&str> = match &task.driver {
        TaskDriver::Docker(c) => {
            texts.push(("config.image".into(), &c.image));
            texts.extend(c.command.iter().map(|t| ("config.command".to_string(), t.as_str())));
            texts.extend(c.entrypoint.iter().enumerate().map(|(i, t)| (format!("config.entrypoint[{i}]"), t.as_str())));
            texts.extend(c.args.iter().enumerate().map(|(i, t)| (format!("config.args[{i}]"), t.as_str())));
            c.ports.iter().map(|port| port.name.as_str()).collect()
        }
        TaskDriver::Exec(c) | TaskDriver::RawExec(c) => {
            texts.push(("config.command".into(), &c.command));
            texts.extend(c.args.iter().enumerate().map(|(i, t)| (format!("config.args[{i}]"), t.as_str())));
            own.iter().map(|port| port.label.as_str()).collect()
        }
    };
    for (field, text) in texts {
        // Trimmed, as the agent reads them: `${ NOMAD_PORT_http }` is the same variable.
        let variables = text.split("${").skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.trim()));
        for variable in variables {
            let label = PORT_VARIABLES.iter().find_map(|prefix| variable.strip_prefix(prefix));
            if let Some(label) = label.filter(|label| !given.contains(label)) {
                let why = match &task.driver {
                    TaskDriver::Docker(_) => {
                        format!("names port {label:?}, which this task's config.ports does not map")
                    }
                    _ => {
                        format!("names port {label:?}, which is not one of the group's own network ports")
                    }
                };
                p.add(&format!("{path}.{field}"), format!("${{{variable}}} {why}"));
            }
        }
    }
}

/// `http=80:8080` (Helios), or `http` naming a group network port (Nomad: `to` is the container
/// port, `static` the host port).
fn port_mapping(
    p: &mut Problems,
    path: &str,
    port: &str,
    network: Option<&BTreeMap<String, PortSpec>>,
) -> Option<PortMapping> {
    if port.contains('=') {
        return PortMapping::parse(port).map_err(|e| p.add(path, e)).ok();
    }
    let Some(spec) = network.and_then(|n| n.get(port)) else {
        p.add(path, format!("no network port {port:?} in the group (or write NAME=PORT[:HOSTPORT])"));
        return None;
    };
    match (spec.to, spec.static_port) {
        (Some(to), host) | (None, host @ Some(to)) => {
            Some(PortMapping { name: port.to_string(), container_port: to, host_port: host })
        }
        (None, None) => {
            // Nomad would map the container to the host port the scheduler picks; Helios maps
            // container ports it knows when the job is submitted.
            p.add(
                path,
                format!(
                    "network port {port:?} needs `to` (the container port) or `static`: a docker task's \
                     container port cannot be the host port the scheduler picks"
                ),
            );
            None
        }
    }
}

fn constraints(p: &mut Problems, path: &str, specs: &[ConstraintSpec]) -> Vec<Constraint> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let operator = operator(p, &format!("{path}[{i}].operator"), &c.operator)?;
            Some(Constraint { attribute: attribute(&c.attribute), operator, value: c.value.clone() })
        })
        .collect()
}

fn operator(p: &mut Problems, path: &str, text: &str) -> Option<ConstraintOperator> {
    let operator = ConstraintOperator::parse(text);
    if operator.is_none() {
        p.add(path, format!("unknown operator {text:?}"));
    }
    operator
}

fn affinities(p: &mut Problems, path: &str, specs: &[AffinitySpec]) -> Vec<Affinity> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let operator = operator(p, &format!("{path}[{i}].operator"), &a.operator)?;
            let weight = a.weight.map_or(Some(Affinity::DEFAULT_WEIGHT), |w| i8::try_from(w).ok());
            let Some(weight) = weight else {
                p.add(
                    &format!("{path}[{i}].weight"),
                    format!("must be -100 to 100 and not 0, got {}", a.weight.unwrap_or(0)),
                );
                return None;
            };
            Some(Affinity { attribute: attribute(&a.attribute), operator, value: a.value.clone(), weight })
        })
        .collect()
}

fn spreads(p: &mut Problems, path: &str, specs: &[SpreadSpec]) -> Vec<Spread> {
    let percent = |p: &mut Problems, at: String, n: u64| {
        u8::try_from(n).ok().filter(|n| *n <= 100).unwrap_or_else(|| {
            p.add(&at, format!("must be 0 to 100, got {n}"));
            0
        })
    };
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| Spread {
            attribute: attribute(&s.attribute),
            weight: s.weight.map_or(Spread::DEFAULT_WEIGHT, |w| percent(p, format!("{path}[{i}].weight"), w)),
            targets: s
                .target
                .iter()
                .map(|(value, t)| SpreadTarget {
                    value: value.clone(),
                    percent: percent(p, format!("{path}[{i}].target[{value}].percent"), t.percent),
                })
                .collect(),
        })
        .collect()
}

/// Nomad writes `${attr.kernel.name}`, `${node.unique.name}`, `${meta.rack}`.
fn attribute(text: &str) -> String {
    let bare = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).unwrap_or(text);
    match bare {
        "node.unique.name" => "node.hostname".to_string(),
        "node.unique.id" => "node.id".to_string(),
        other => other.to_string(),
    }
}

/// `"30s"`, `"5m"`, `"1h"`, `"2h30m"`, `"250ms"` (rounded up to whole seconds), or plain seconds.
fn duration(p: &mut Problems, path: &str, text: &Option<String>, default: u32) -> u32 {
    let Some(text) = text else { return default };
    match parse_duration_secs(text) {
        Some(secs) => secs,
        None => {
            p.add(path, format!("expected a duration such as \"30s\", \"5m\" or \"1h\", got {text:?}"));
            default
        }
    }
}

pub fn parse_duration_secs(text: &str) -> Option<u32> {
    if let Ok(secs) = text.parse::<u32>() {
        return Some(secs);
    }
    u32::try_from(parse_duration_ms(text)?.div_ceil(1000)).ok()
}

/// A Go-style duration ("1m30s", "500ms") in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let (mut total_ms, mut rest) = (0u64, text.trim());
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total_ms = total_ms.checked_add(value.checked_mul(unit_ms)?)?;
        rest = &rest[unit_len..];
    }
    Some(total_ms)
}
