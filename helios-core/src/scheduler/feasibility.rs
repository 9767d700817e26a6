//! Can a node take an allocation of this group at all? Node state, drivers and constraints,
//! compiled once per group (regular expressions and version requirements are parsed once, not per
//! node).

use regex::Regex;

use crate::job::{
    caps_not_allowed, ConstraintOperator, DockerPrivilege, Job, TaskDriver, TaskGroup, DOCKER_ALLOW_CAPS_ATTRIBUTE,
    GROUP_PORTS_ATTRIBUTE,
};
use crate::node::{Node, NodeEligibility, NodeStatus};
use crate::service::SERVICES_ATTRIBUTE;
use crate::validate::parse_version_requirement;

/// One attribute test, compiled (constraints and affinities share them).
pub(super) enum Check {
    Equal(Attribute, String),
    NotEqual(Attribute, String),
    /// `None`: the expression does not compile, so no node matches.
    Regexp(Attribute, Option<Regex>),
    Version(Attribute, Option<Vec<(String, Vec<u64>)>>),
}

/// A node attribute as constraints, affinities and spreads name it, parsed once: looking one
/// up is then a single map lookup (it is done for every candidate node).
#[derive(Debug, Clone)]
pub enum Attribute {
    Id,
    Hostname,
    Attr(String),
    Meta(String),
    /// Validation refuses other names; an older job's has no value on any node.
    Unknown,
}

impl Attribute {
    pub fn parse(name: &str) -> Attribute {
        match name {
            "node.id" => Attribute::Id,
            "node.hostname" => Attribute::Hostname,
            _ => match (name.strip_prefix("attr."), name.strip_prefix("meta.")) {
                (Some(attr), _) => Attribute::Attr(attr.to_string()),
                (_, Some(meta)) => Attribute::Meta(meta.to_string()),
                _ => Attribute::Unknown,
            },
        }
    }

    /// Its value on `node`.
    pub fn of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            Attribute::Id => Some(&node.id),
            Attribute::Hostname => Some(&node.hostname),
            Attribute::Attr(name) => node.attributes.get(name).map(String::as_str),
            Attribute::Meta(name) => node.meta.get(name).map(String::as_str),
            Attribute::Unknown => None,
        }
    }
}

/// A group's placement requirements, ready to test nodes against.
pub struct CompiledConstraints {
    checks: Vec<(Check, String)>,
    drivers: Vec<&'static str>,
    /// What the group's docker tasks need their node's agent to allow.
    docker_privileges: Vec<DockerPrivilege>,
    /// Capabilities the group's docker tasks add (`cap_add`).
    docker_caps: Vec<String>,
    /// Whether any of them adds or drops capabilities: only agents that say which they allow
    /// (`DOCKER_ALLOW_CAPS_ATTRIBUTE`) know these fields at all.
    docker_caps_used: bool,
    /// Whether the group has ports of its own (`TaskGroup::ports`).
    group_ports: bool,
    /// The group has services: only agents that register them and run their checks.
    services: bool,
    /// At most one allocation of the job per node.
    pub distinct_hosts_job: bool,
    /// At most one allocation of the group per node.
    pub distinct_hosts_group: bool,
}

impl CompiledConstraints {
    /// Job, group and task constraints together. Validation has already checked that regular
    /// expressions and version requirements parse; one that does not (a job stored by an older
    /// version) makes every node infeasible, with the reason.
    pub fn for_group(job: &Job, group: &TaskGroup) -> CompiledConstraints {
        let mut compiled = CompiledConstraints {
            checks: Vec::new(),
            drivers: Vec::new(),
            docker_privileges: Vec::new(),
            docker_caps: Vec::new(),
            docker_caps_used: false,
            group_ports: !group.ports.is_empty(),
            services: !group.services.is_empty(),
            distinct_hosts_job: false,
            distinct_hosts_group: false,
        };
        for c in &job.constraints {
            if c.operator == ConstraintOperator::DistinctHosts {
                compiled.distinct_hosts_job = true;
            }
        }
        let task_constraints = group.tasks.iter().flat_map(|t| t.constraints.iter());
        for c in job.constraints.iter().chain(group.constraints.iter()).chain(task_constraints) {
            let label = format!("{} {} {}", c.attribute, c.operator.as_str(), c.value);
            match c.operator {
                ConstraintOperator::DistinctHosts => {
                    if !job.constraints.contains(c) {
                        compiled.distinct_hosts_group = true;
                    }
                }
                // Counted per plan, with the spreads (`preferences`).
                ConstraintOperator::DistinctProperty => {}
                _ => compiled.checks.push((Check::compile(&c.attribute, c.operator, &c.value), label)),
            }
        }
        for task in &group.tasks {
            let driver = task.driver.name();
            if !compiled.drivers.contains(&driver) {
                compiled.drivers.push(driver);
            }
            if let TaskDriver::Docker(docker) = &task.driver {
                for privilege in docker.privileges() {
                    if !compiled.docker_privileges.contains(&privilege) {
                        compiled.docker_privileges.push(privilege);
                    }
                }
                compiled.docker_caps_used |= !docker.cap_add.is_empty() || !docker.cap_drop.is_empty();
                compiled.docker_caps.extend(docker.cap_add.iter().cloned());
            }
        }
        compiled
    }

    /// Why `node` cannot run this group, or `None` when it can (resources aside).
    pub fn rejects(&self, node: &Node) -> Option<String> {
        if node.status != NodeStatus::Ready {
            return Some(format!("node {}", node.status.as_str()));
        }
        if node.eligibility != NodeEligibility::Eligible || node.drain {
            return Some("node ineligible or draining".to_string());
        }
        for driver in &self.drivers {
            if !node.drivers.iter().any(|d| d == driver) {
                return Some(format!("missing driver {driver}"));
            }
        }
        for privilege in &self.docker_privileges {
            if node.attributes.get(privilege.attribute()).map(String::as_str) != Some("1") {
                return Some(format!("{} not allowed (agent without {})", privilege.describe(), privilege.flag()));
            }
        }
        if self.group_ports && node.attributes.get(GROUP_PORTS_ATTRIBUTE).map(String::as_str) != Some("1") {
            return Some("group network ports unknown to the agent (an older build)".to_string());
        }
        if self.services && node.attributes.get(SERVICES_ATTRIBUTE).map(String::as_str) != Some("1") {
            return Some("services and checks unknown to the agent (an older build)".to_string());
        }
        if self.docker_caps_used {
            let Some(allowed) = node.attributes.get(DOCKER_ALLOW_CAPS_ATTRIBUTE) else {
                return Some("docker cap_add and cap_drop unknown to the agent (an older build)".to_string());
            };
            let allowed: Vec<&str> = allowed.split(',').collect();
            let refused = caps_not_allowed(&self.docker_caps, &allowed);
            if !refused.is_empty() {
                return Some(format!(
                    "docker capabilities {} not allowed (not in the agent's --docker-allow-caps)",
                    refused.join(",")
                ));
            }
        }
        self.constraint_rejects(node)
    }

    /// The first constraint `node` fails, whatever the node's status: what decides whether an
    /// allocation already there may stay when its job changes.
    pub fn constraint_rejects(&self, node: &Node) -> Option<String> {
        for (check, label) in &self.checks {
            if !check.passes(node) {
                return Some(format!("constraint {label}"));
            }
        }
        None
    }
}

impl Check {
    /// `attribute operator value` for `=`, `!=`, `regexp` and `version` (validation allows no
    /// other operator here; any other matches no node).
    pub(super) fn compile(attribute: &str, operator: ConstraintOperator, value: &str) -> Check {
        let attribute = Attribute::parse(attribute);
        match operator {
            ConstraintOperator::Equal => Check::Equal(attribute, value.to_string()),
            ConstraintOperator::NotEqual => Check::NotEqual(attribute, value.to_string()),
            ConstraintOperator::Regexp => Check::Regexp(attribute, Regex::new(value).ok()),
            // An unparsable requirement (validation refuses them) matches no node.
            ConstraintOperator::Version => Check::Version(attribute, parse_version_requirement(value).ok()),
            ConstraintOperator::DistinctHosts | ConstraintOperator::DistinctProperty => Check::Regexp(attribute, None),
        }
    }

    pub(super) fn passes(&self, node: &Node) -> bool {
        match self {
            Check::Equal(attr, value) => attr.of(node) == Some(value.as_str()),
            // A node without the attribute is "not equal".
            Check::NotEqual(attr, value) => attr.of(node) != Some(value.as_str()),
            Check::Regexp(attr, re) => attr.of(node).is_some_and(|v| re.as_ref().is_some_and(|re| re.is_match(v))),
            Check::Version(attr, terms) => attr
                .of(node)
                .and_then(parse_version)
                .is_some_and(|v| terms.as_ref().is_some_and(|terms| version_matches(&v, terms))),
        }
    }
}

/// `v1.2.3-rc1` -> [1, 2, 3]: the leading dotted numbers.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    let text = text.trim().trim_start_matches('v');
    let core = text.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let parts: Option<Vec<u64>> = core.split('.').filter(|p| !p.is_empty()).map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty())
}

fn version_matches(version: &[u64], terms: &[(String, Vec<u64>)]) -> bool {
    terms.iter().all(|(op, want)| {
        let len = version.len().max(want.len());
        let pad = |v: &[u64]| (0..len).map(|i| v.get(i).copied().unwrap_or(0)).collect::<Vec<_>>();
        let ordering = pad(version).cmp(&pad(want));
        match op.as_str() {
            "=" => ordering.is_eq(),
            "!=" => !ordering.is_eq(),
            ">" => ordering.is_gt(),
            ">=" => ordering.is_ge(),
            "<" => ordering.is_lt(),
            "<=" => ordering.is_le(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let req = parse_version_requirement(">= 1.10, < 2").unwrap();
        assert!(version_matches(&parse_version("1.10.0").unwrap(), &req));
        assert!(version_matches(&parse_version("v1.12-rc1").unwrap(), &req));
        assert!(!version_matches(&parse_version("1.9.9").unwrap(), &req));
        assert!(!version_matches(&parse_version("2.0").unwrap(), &req));
        assert_eq!(parse_version("linux"), None);
    }

    fn docker_node(attributes: &[(&str, &str)]) -> Node {
        Node {
            id: "n".into(),
            hostname: "n".into(),
            rpc_addr: String::new(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            meta: Default::default(),
            drivers: vec!["docker".into()],
            resources: crate::job::Resources { cpu_mhz: 1000, memory_mb: 1024 },
            status: NodeStatus::Ready,
            eligibility: NodeEligibility::Eligible,
            drain: false,
            registered_at: crate::Timestamp(0),
            status_updated_at: crate::Timestamp(0),
            secret_id: String::new(),
        }
    }

    fn docker_job(configure: impl FnOnce(&mut crate::job::DockerConfig)) -> Job {
        let mut job = Job::exec("j", "true", Vec::new());
        let mut config = crate::job::DockerConfig::for_image("busybox");
        configure(&mut config);
        job.task_groups[0].tasks[0].driver = TaskDriver::Docker(config);
        job
    }

    fn rejects(job: &Job, node: &Node) -> Option<String> {
        CompiledConstraints::for_group(job, &job.task_groups[0]).rejects(node)
    }

    #[test]
    fn privileged_containers_and_devices_go_only_where_the_agent_allows_them() {
        let job = docker_job(|d| {
            d.privileged = true;
            d.devices.push(crate::job::DockerDevice::new("/dev/fuse"));
        });
        let why = rejects(&job, &docker_node(&[])).expect("refused by default");
        assert!(why.contains("--docker-allow-privileged"), "{why}");
        let privileged_only = docker_node(&[("driver.docker.privileged.enabled", "1")]);
        let why = rejects(&job, &privileged_only).expect("devices are a privilege of their own");
        assert!(why.contains("--docker-allow-devices"), "{why}");
        let both = docker_node(&[("driver.docker.privileged.enabled", "1"), ("driver.docker.devices.enabled", "1")]);
        assert_eq!(rejects(&job, &both), None);
    }

    #[test]
    fn added_capabilities_must_be_in_the_agents_allow_list_whatever_their_spelling() {
        let defaults = crate::job::DOCKER_DEFAULT_ALLOWED_CAPS.join(",");
        let default_agent = docker_node(&[(DOCKER_ALLOW_CAPS_ATTRIBUTE, &defaults)]);
        let job = docker_job(|d| d.cap_add = vec!["CAP_CHOWN".into(), "NET_ADMIN".into()]);
        let why = rejects(&job, &default_agent).expect("net_admin is not a default");
        assert!(why.contains("capabilities net_admin not allowed") && why.contains("--docker-allow-caps"), "{why}");
        let allowing = docker_node(&[(DOCKER_ALLOW_CAPS_ATTRIBUTE, "chown,net_admin")]);
        assert_eq!(rejects(&job, &allowing), None);
        assert_eq!(rejects(&job, &docker_node(&[(DOCKER_ALLOW_CAPS_ATTRIBUTE, "all")])), None);
        // Dropping is always allowed, but only by agents that know the field at all.
        let dropping = docker_job(|d| d.cap_drop = vec!["ALL".into()]);
        assert_eq!(rejects(&dropping, &default_agent), None);
        let why = rejects(&dropping, &docker_node(&[])).expect("an older agent would ignore it");
        assert!(why.contains("older build"), "{why}");
    }
}
