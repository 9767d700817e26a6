use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::migrate::MigrateStrategy;
use crate::reschedule::ReschedulePolicy;
use crate::service::Service;
use crate::time::Timestamp;
use crate::update::UpdateStrategy;

/// A job as the user declared it, plus the fields the cluster assigns (`version`, `status`,
/// `submitted_at`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Job {
    pub name: String,
    pub job_type: JobType,
    /// 1..=100; higher runs first when the scheduler has a backlog.
    pub priority: u32,
    pub task_groups: Vec<TaskGroup>,
    pub constraints: Vec<Constraint>,
    /// Soft preferences for every group's placements (Nomad's job-level `affinity`).
    pub affinities: Vec<Affinity>,
    /// How every group's allocations spread over an attribute's values (job-level `spread`).
    pub spreads: Vec<Spread>,
    pub meta: BTreeMap<String, String>,
    /// Assigned by the state machine: 0 for the first submission, +1 for each changed spec.
    pub version: u64,
    pub status: JobStatus,
    /// Set by `job stop`: the job stays stored (and visible) but nothing of it should run.
    pub stopped: bool,
    pub submitted_at: Timestamp,
    /// Set by the state machine when this version's deployment succeeded (Nomad's `Stable`):
    /// what `auto_revert` and `job history` look for.
    pub stable: bool,
}

// Version 2 (stored format 5): tasks name their user, the raw_exec driver, exec's
// `cpu_hard_limit` (`job_v2`). Version 3 (stored format 6): docker's `privileged`, `cap_add`,
// `cap_drop` and `devices`. Version 4 (stored format 7): each group's reschedule policy and
// migrate and update strategies, affinities and spreads at job and group level, `distinct_property`
// constraints (`job_v3`). Version 5 (stored format 8): each group's services (`job_v4`).
// Version 6 (stored format 9): deployments' update fields (canary, auto_revert, auto_promote,
// progress_deadline, manual health) and the stable mark (`job_v5`).
// Written as the older version for older readers when none of what the newer one added is used.
crate::versioned!(Job = 6, since format 9, previous crate::job_v5::Job);

pub const DEFAULT_PRIORITY: u32 = 50;

impl Job {
    /// A single-group, single-task exec job, as `helios-cli job run --name NAME CMD -- ARGS` makes.
    pub fn exec(name: &str, command: &str, args: Vec<String>) -> Job {
        Job {
            name: name.to_string(),
            job_type: JobType::Batch,
            priority: DEFAULT_PRIORITY,
            task_groups: vec![TaskGroup {
                name: name.to_string(),
                count: 1,
                tasks: vec![Task {
                    name: name.to_string(),
                    driver: TaskDriver::Exec(ExecConfig::new(command, args)),
                    env: BTreeMap::new(),
                    resources: Resources::default(),
                    constraints: Vec::new(),
                    kill_timeout_secs: Task::DEFAULT_KILL_TIMEOUT_SECS,
                    user: None,
                }],
                constraints: Vec::new(),
                ports: Vec::new(),
                restart: RestartPolicy::default_for(JobType::Batch),
                reschedule: ReschedulePolicy::default_for(JobType::Batch),
                migrate: MigrateStrategy::default(),
                update: UpdateStrategy::default(),
                affinities: Vec::new(),
                spreads: Vec::new(),
                meta: BTreeMap::new(),
                services: Vec::new(),
            }],
            constraints: Vec::new(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            meta: BTreeMap::new(),
            version: 0,
            status: JobStatus::Pending,
            stopped: false,
            submitted_at: Timestamp::default(),
            stable: false,
        }
    }

    /// Makes it a job of `job_type`, with that type's reschedule policy in every group (a system
    /// job is never rescheduled; services and batch jobs have Nomad's defaults).
    pub fn set_type(&mut self, job_type: JobType) {
        self.job_type = job_type;
        for group in &mut self.task_groups {
            group.reschedule = ReschedulePolicy::default_for(job_type);
        }
    }

    /// True when `other` declares the same workload: the fields the cluster assigns (version,
    /// status, stable mark, times) are ignored.
    /// Re-submitting an unchanged spec therefore creates no new version.
    pub fn same_spec(&self, other: &Job) -> bool {
        self.job_type == other.job_type
            && self.priority == other.priority
            && self.task_groups == other.task_groups
            && self.constraints == other.constraints
            && self.affinities == other.affinities
            && self.spreads == other.spreads
            && self.meta == other.meta
    }

    /// Total allocations the job asks for.
    pub fn desired_allocations(&self) -> u64 {
        self.task_groups.iter().map(|g| u64::from(g.count)).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobType {
    /// Long-running: the scheduler keeps `count` allocations running.
    Service,
    /// Runs to completion; failures are retried per the restart policy.
    Batch,
    /// One allocation on every eligible node.
    System,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    /// Submitted; not every allocation is placed yet.
    Pending,
    /// At least one allocation runs.
    Running,
    /// Stopped, or a batch job whose allocations all finished.
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub tasks: Vec<Task>,
    pub constraints: Vec<Constraint>,
    pub restart: RestartPolicy,
    /// What the scheduler does once an allocation has failed (after the restarts).
    pub reschedule: ReschedulePolicy,
    /// How a service group's allocations leave a draining node (`crate::migrate`).
    pub migrate: MigrateStrategy,
    /// How a service group's allocations are replaced by a new version (`crate::update`).
    pub update: UpdateStrategy,
    /// Soft preferences for its placements, with the job's (`scheduler::preferences`).
    pub affinities: Vec<Affinity>,
    /// How its allocations spread over an attribute's values, with the job's.
    pub spreads: Vec<Spread>,
    pub meta: BTreeMap<String, String>,
    /// The group's own host ports (Nomad's `network { port }` on the host's network): every
    /// exec and raw_exec task of the group gets each one. Docker tasks map theirs in
    /// `DockerConfig::ports` instead.
    pub ports: Vec<GroupPort>,
    /// The services it offers (its own and its tasks'), which its agent registers while it runs.
    pub services: Vec<Service>,
}

/// A host port of a group, by label: fixed, or picked by the scheduler from the node's range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupPort {
    pub label: String,
    pub static_port: Option<u16>,
}

/// The "task" the group's own dynamic ports are listed under in `TaskGroup::dynamic_ports`
/// (task names are never empty).
pub const GROUP_PORTS: &str = "";

/// The node attribute ("1") of agents that give exec tasks their group's ports: one of an
/// older build would drop them unseen, so such groups are never placed there.
pub const GROUP_PORTS_ATTRIBUTE: &str = "helios.group_ports";

/// What the client agent does when a task exits unexpectedly, before the scheduler reschedules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed within `interval_secs`.
    pub attempts: u32,
    pub interval_secs: u32,
    /// Wait between a task's exit and its restart.
    pub delay_secs: u32,
    pub mode: RestartMode,
}

impl TaskGroup {
    /// The fixed host ports the group's docker tasks publish, sorted, each once: what an
    /// allocation of the group holds on its node.
    pub fn static_host_ports(&self) -> Vec<u16> {
        let mut ports = self.published_host_ports();
        // Validation refuses a port published twice; a duplicate must still not make a plan
        // that the applier refuses forever.
        ports.dedup();
        ports
    }

    /// The docker port mappings without a fixed host port, as (task, port name), in the group's
    /// order, then the group's own ports without one, as (`GROUP_PORTS`, label): the scheduler
    /// gives each a host port from its node's dynamic range, after the fixed ones in the
    /// allocation's `host_ports` (`Allocation::host_port_of`).
    pub fn dynamic_ports(&self) -> Vec<(String, String)> {
        let mut ports = Vec::new();
        for task in &self.tasks {
            if let TaskDriver::Docker(d) = &task.driver {
                ports.extend(
                    d.ports.iter().filter(|p| p.host_port.is_none()).map(|p| (task.name.clone(), p.name.clone())),
                );
            }
        }
        let own = self.ports.iter().filter(|p| p.static_port.is_none());
        ports.extend(own.map(|p| (GROUP_PORTS.to_string(), p.label.clone())));
        ports
    }

    /// The host port of each of the group's own ports, by label, for an allocation holding
    /// `host_ports`.
    pub fn assigned_group_ports(&self, host_ports: &[u16]) -> BTreeMap<String, u16> {
        let dynamic = self.assigned_dynamic_ports(host_ports);
        let port =
            |p: &GroupPort| p.static_port.or_else(|| dynamic.get(&(GROUP_PORTS.to_string(), p.label.clone())).copied());
        self.ports.iter().filter_map(|p| Some((p.label.clone(), port(p)?))).collect()
    }

    /// The host port given to each of `dynamic_ports`, read from an allocation's `host_ports`
    /// (the fixed ones first, then the dynamic ones in order).
    pub fn assigned_dynamic_ports(&self, host_ports: &[u16]) -> BTreeMap<(String, String), u16> {
        let fixed = self.static_host_ports().len();
        self.dynamic_ports().into_iter().zip(host_ports.iter().skip(fixed).copied()).collect()
    }

    /// Every fixed host port of every docker task of the group, and the group's own, sorted,
    /// repeats included.
    pub fn published_host_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .tasks
            .iter()
            .filter_map(|t| match &t.driver {
                TaskDriver::Docker(d) => Some(d.ports.iter().filter_map(|p| p.host_port)),
                TaskDriver::Exec(_) | TaskDriver::RawExec(_) => None,
            })
            .flatten()
            .chain(self.ports.iter().filter_map(|p| p.static_port))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// A digest of everything about the group but its count and its reschedule, migrate and
    /// update policies. Allocations carry the digest of the
    /// group they were placed for: when a new job version changes only counts, they are updated
    /// in place instead of replaced. Computed by the leader and stored, never recomputed in the
    /// state machine, so it need not be stable across builds.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = Fnv1a(0xcbf2_9ce4_8422_2325);
        // How it is rescheduled, drained and rolled is no reason to replace what runs (Nomad
        // updates those in place too).
        let what_runs = TaskGroup {
            count: 0,
            reschedule: ReschedulePolicy::disabled(),
            migrate: MigrateStrategy::default(),
            update: UpdateStrategy::default(),
            ..self.clone()
        };
        what_runs.hash(&mut hasher);
        hasher.finish()
    }
}

/// A tiny deterministic hasher (the standard one is seeded at random per process).
struct Fnv1a(u64);

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl RestartPolicy {
    /// Nomad's defaults: services retry more, batch jobs fewer.
    pub fn default_for(job_type: JobType) -> RestartPolicy {
        match job_type {
            JobType::Service | JobType::System => {
                RestartPolicy { attempts: 2, interval_secs: 30 * 60, delay_secs: 15, mode: RestartMode::Fail }
            }
            JobType::Batch => {
                RestartPolicy { attempts: 3, interval_secs: 24 * 60 * 60, delay_secs: 15, mode: RestartMode::Fail }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartMode {
    /// Out of attempts: the task fails and the scheduler may place it elsewhere.
    Fail,
    /// Out of attempts: wait out the interval, then try again on the same node.
    Delay,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub driver: TaskDriver,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    /// Time between SIGTERM (or `docker stop`) and SIGKILL.
    pub kill_timeout_secs: u32,
    /// The user the task runs as (exec: `nobody` when unset; raw_exec: the agent's user; docker:
    /// the image's user).
    pub user: Option<String>,
}

impl Task {
    pub const DEFAULT_KILL_TIMEOUT_SECS: u32 = 5;
}

// A docker config is a few hundred bytes more than an exec one: tasks are a handful per job,
// never held in bulk, so not worth a box at every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskDriver {
    /// Isolated: an unprivileged user, its own process and mount namespaces, cgroup limits.
    Exec(ExecConfig),
    Docker(DockerConfig),
    /// No isolation: the agent's user and environment limits. Only on agents started with
    /// `--enable-raw-exec`.
    RawExec(ExecConfig),
}

impl TaskDriver {
    pub fn name(&self) -> &'static str {
        match self {
            TaskDriver::Exec(_) => "exec",
            TaskDriver::Docker(_) => "docker",
            TaskDriver::RawExec(_) => "raw_exec",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecConfig {
    pub command: String,
    pub args: Vec<String>,
    /// Caps the task at its `cpu_mhz` (a CFS quota) instead of only weighting it (exec only).
    pub cpu_hard_limit: bool,
}

impl ExecConfig {
    pub fn new(command: &str, args: Vec<String>) -> ExecConfig {
        ExecConfig { command: command.to_string(), args, cpu_hard_limit: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DockerConfig {
    pub image: String,
    /// Overrides the image's entrypoint when set.
    pub entrypoint: Vec<String>,
    /// Overrides the image's command when set.
    pub command: Option<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub network_mode: Option<String>,
    /// Bind mounts, `host_path:container_path[:ro]`.
    pub volumes: Vec<String>,
    /// Caps the container at its `cpu_mhz` (as a share of the node's cores) instead of only
    /// weighting it: Nomad's `cpu_hard_limit`.
    pub cpu_hard_limit: bool,
    /// Every capability and device of the host: only on agents with `--docker-allow-privileged`.
    pub privileged: bool,
    /// Capabilities added to the engine's default set, as written (`NET_ADMIN`); only those the
    /// agent's `--docker-allow-caps` lists (`capability_name` says how names compare).
    pub cap_add: Vec<String>,
    /// Capabilities removed (`ALL`: every one); always allowed.
    pub cap_drop: Vec<String>,
    /// Host devices given to the container: only on agents with `--docker-allow-devices`.
    pub devices: Vec<DockerDevice>,
}

/// A host device in a container (Nomad's docker `devices`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DockerDevice {
    pub host_path: String,
    /// Where the container sees it; the host's path when unset.
    pub container_path: Option<String>,
    /// Any of `r`, `w`, `m` (read, write, mknod); `rwm` when unset.
    pub cgroup_permissions: Option<String>,
}

impl DockerDevice {
    pub fn new(host_path: &str) -> DockerDevice {
        DockerDevice { host_path: host_path.to_string(), container_path: None, cgroup_permissions: None }
    }
}

/// The node attribute listing the capabilities an agent lets docker tasks add (Nomad's
/// `allow_caps`), comma-separated, in `capability_name` form; `all` allows any.
pub const DOCKER_ALLOW_CAPS_ATTRIBUTE: &str = "driver.docker.allow_caps";

/// Nomad's default `allow_caps`: the engine's default capabilities but `net_raw`.
pub const DOCKER_DEFAULT_ALLOWED_CAPS: [&str; 13] = [
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "setfcap",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// Those of `wanted` that `allowed` (an agent's `allow_caps`, in `capability_name` form) does
/// not list, in `capability_name` form.
pub fn caps_not_allowed(wanted: &[String], allowed: &[&str]) -> Vec<String> {
    if allowed.contains(&"all") {
        return Vec::new();
    }
    let wanted = wanted.iter().map(|c| capability_name(c));
    wanted.filter(|cap| !allowed.contains(&cap.as_str())).collect()
}

/// A capability as Nomad compares them: `NET_ADMIN`, `CAP_NET_ADMIN` and `net_admin` are one.
pub fn capability_name(text: &str) -> String {
    let lower = text.trim().to_ascii_lowercase();
    lower.strip_prefix("cap_").map(str::to_string).unwrap_or(lower)
}

/// What a docker task may ask for that reaches beyond its container, so that an agent offers it
/// only when told to (`--docker-allow-*`): Nomad's `volumes.enabled` and the like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerPrivilege {
    /// Host paths bind-mounted into the container (`volumes`).
    Volumes,
    /// The host's network namespace, or another container's (`network_mode = "host"`,
    /// `"container:NAME"`).
    HostNetwork,
    /// `privileged = true`: every capability and device of the host.
    Privileged,
    /// Host devices (`devices`).
    Devices,
}

impl DockerPrivilege {
    /// The node attribute an agent sets to "1" when it allows this.
    pub fn attribute(self) -> &'static str {
        match self {
            DockerPrivilege::Volumes => "driver.docker.volumes.enabled",
            DockerPrivilege::HostNetwork => "driver.docker.host_network.enabled",
            DockerPrivilege::Privileged => "driver.docker.privileged.enabled",
            DockerPrivilege::Devices => "driver.docker.devices.enabled",
        }
    }

    /// The agent flag that allows it.
    pub fn flag(self) -> &'static str {
        match self {
            DockerPrivilege::Volumes => "--docker-allow-volumes",
            DockerPrivilege::HostNetwork => "--docker-allow-host-network",
            DockerPrivilege::Privileged => "--docker-allow-privileged",
            DockerPrivilege::Devices => "--docker-allow-devices",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DockerPrivilege::Volumes => "docker volumes (host bind mounts)",
            DockerPrivilege::HostNetwork => "a docker network_mode of host or another container",
            DockerPrivilege::Privileged => "a privileged docker container",
            DockerPrivilege::Devices => "docker devices (host devices in the container)",
        }
    }
}

impl DockerConfig {
    /// The privileges this container needs.
    pub fn privileges(&self) -> Vec<DockerPrivilege> {
        let mut needs = Vec::new();
        if !self.volumes.is_empty() {
            needs.push(DockerPrivilege::Volumes);
        }
        if self.network_mode.as_deref().is_some_and(|m| m == "host" || m.starts_with("container:")) {
            needs.push(DockerPrivilege::HostNetwork);
        }
        if self.privileged {
            needs.push(DockerPrivilege::Privileged);
        }
        if !self.devices.is_empty() {
            needs.push(DockerPrivilege::Devices);
        }
        needs
    }

    /// The capabilities this container adds that `allowed` (an agent's `allow_caps`, in
    /// `capability_name` form) does not: none means the agent may run it.
    pub fn caps_not_allowed(&self, allowed: &[&str]) -> Vec<String> {
        caps_not_allowed(&self.cap_add, allowed)
    }

    /// The image's own command, with nothing else set.
    pub fn for_image(image: &str) -> DockerConfig {
        DockerConfig {
            image: image.to_string(),
            entrypoint: Vec::new(),
            command: None,
            args: Vec::new(),
            working_dir: None,
            labels: BTreeMap::new(),
            ports: Vec::new(),
            network_mode: None,
            volumes: Vec::new(),
            cpu_hard_limit: false,
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            devices: Vec::new(),
        }
    }
}

/// Helios-style port: `-p http=80:8080` maps container port 80 to host port 8080; without a host
/// port the agent picks a free one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub name: String,
    pub container_port: u16,
    pub host_port: Option<u16>,
}

impl PortMapping {
    /// Helios's `-p` syntax: `NAME=CONTAINER_PORT[:HOST_PORT]`.
    pub fn parse(text: &str) -> Result<PortMapping, String> {
        let bad = || format!("expected NAME=PORT[:HOSTPORT] (e.g. http=80:8080), got {text:?}");
        let (name, ports) = text.split_once('=').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let (container_port, host_port) = match ports.split_once(':') {
            Some((c, h)) => (port(c)?, Some(port(h)?)),
            None => (port(ports)?, None),
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(PortMapping { name: name.to_string(), container_port, host_port })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_mhz: u32,
    pub memory_mb: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_mhz: 0, memory_mb: 0 };

    /// Both sums, saturating (a sum of reservations never wraps around).
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_mhz: self.cpu_mhz.saturating_add(other.cpu_mhz),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
        }
    }

    /// Both differences, floored at zero.
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_mhz: self.cpu_mhz.saturating_sub(other.cpu_mhz),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
        }
    }
}

impl Default for Resources {
    /// Nomad's defaults for a task that declares nothing.
    fn default() -> Self {
        Resources { cpu_mhz: 100, memory_mb: 300 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    /// `node.id`, `node.hostname`, `attr.<name>` or `meta.<name>`.
    pub attribute: String,
    pub operator: ConstraintOperator,
    pub value: String,
}

/// Nomad's `affinity`: nodes matching `attribute operator value` score higher (a positive
/// `weight`) or lower (a negative one); unlike a constraint, no node is ruled out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Affinity {
    pub attribute: String,
    /// `=`, `!=`, `regexp` or `version`.
    pub operator: ConstraintOperator,
    pub value: String,
    /// -100 to 100, not 0.
    pub weight: i8,
}

impl Affinity {
    pub const DEFAULT_WEIGHT: i8 = 50;
}

/// Nomad's `spread`: a group's allocations are spread over the values of `attribute`, evenly,
/// or by the `targets`' percentages (values not listed share what the targets leave).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Spread {
    pub attribute: String,
    /// 1 to 100: its share among the spreads of the group.
    pub weight: u8,
    pub targets: Vec<SpreadTarget>,
}

impl Spread {
    pub const DEFAULT_WEIGHT: u8 = 50;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpreadTarget {
    pub value: String,
    /// 0 to 100; the targets of a spread add up to at most 100.
    pub percent: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintOperator {
    Equal,
    NotEqual,
    Regexp,
    /// `value` is a version requirement such as `>= 1.2, < 2`.
    Version,
    /// At most one allocation of the job (or group) per node; `attribute` and `value` unused.
    DistinctHosts,
    /// At most `value` (default 1) allocations of the job (or group) per value of `attribute`.
    /// (Variants are encoded by position: new ones go at the end.)
    DistinctProperty,
}

impl ConstraintOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOperator::Equal => "=",
            ConstraintOperator::NotEqual => "!=",
            ConstraintOperator::Regexp => "regexp",
            ConstraintOperator::Version => "version",
            ConstraintOperator::DistinctHosts => "distinct_hosts",
            ConstraintOperator::DistinctProperty => "distinct_property",
        }
    }

    pub fn parse(s: &str) -> Option<ConstraintOperator> {
        Some(match s {
            "=" | "==" | "is" => ConstraintOperator::Equal,
            "!=" | "not" => ConstraintOperator::NotEqual,
            "regexp" => ConstraintOperator::Regexp,
            "version" => ConstraintOperator::Version,
            "distinct_hosts" => ConstraintOperator::DistinctHosts,
            "distinct_property" => ConstraintOperator::DistinctProperty,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_in_helios_style() {
        let http = PortMapping::parse("http=80:8080").unwrap();
        assert_eq!(http, PortMapping { name: "http".into(), container_port: 80, host_port: Some(8080) });
        assert_eq!(PortMapping::parse("admin=9000").unwrap().host_port, None);
        for bad in ["http", "=80", "http=", "http=0", "http=80:", "http=70000", "http=80:x"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
