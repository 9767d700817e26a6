//! A task's environment, as Nomad builds it: nothing of the agent's own environment; `PATH`;
//! the job's `env` (interpolated); and the runtime variables, Nomad's `NOMAD_*` and Helios's
//! `HELIOS_*`, with absolute paths. `${NOMAD_*}`, `${node.*}`, `${attr.*}` and `${meta.*}` in
//! command, args, env and driver config are interpolated when the task starts; anything else
//! in `${...}` is left as written, as Nomad leaves it.

use std::collections::BTreeMap;

use crate::task_dir::TaskDir;

/// The `PATH` of a task whose job does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What this node tells tasks about itself (`${node.*}`, `${attr.*}`, `${meta.*}`).
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub id: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

impl NodeFacts {
    fn lookup(&self, key: &str) -> Option<String> {
        if let Some(attr) = key.strip_prefix("attr.") {
            return self.attributes.get(attr).cloned();
        }
        if let Some(meta) = key.strip_prefix("meta.") {
            return self.meta.get(meta).cloned();
        }
        match key {
            "node.unique.id" => Some(self.id.clone()),
            "node.unique.name" => Some(self.name.clone()),
            "node.datacenter" => Some(DATACENTER.to_string()),
            "node.region" => Some(REGION.to_string()),
            "node.class" | "node.pool" => Some(String::new()),
            _ => None,
        }
    }
}

/// Helios has one of each; Nomad's names for them.
const DATACENTER: &str = "dc1";
const REGION: &str = "global";
const NAMESPACE: &str = "default";

/// Who a task is, for its runtime variables.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub alloc_id: &'a str,
    /// `job.group[index]`.
    pub alloc_name: &'a str,
    pub job_name: &'a str,
    pub group: &'a str,
    pub task: &'a str,
    pub cpu_mhz: u32,
    pub memory_mb: u32,
    /// The job's meta, then the group's over it.
    pub meta: &'a BTreeMap<String, String>,
    /// The task's ports by label.
    pub ports: &'a BTreeMap<String, TaskPort>,
    /// The node's address, where its ports are reached (`NOMAD_IP_<label>`).
    pub ip: &'a str,
}

/// One of a task's ports: where it is reached on the host, and where the task listens (a
/// container's port behind a docker mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPort {
    pub host: u16,
    pub task: u16,
}

/// The runtime variables alone (what `${NOMAD_*}` can name).
pub fn runtime(who: &Identity, dirs: &TaskDir) -> BTreeMap<String, String> {
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let index = who.alloc_name.rsplit_once('[').and_then(|(_, i)| i.strip_suffix(']')).unwrap_or("0").to_string();
    let mut vars = BTreeMap::from([
        ("NOMAD_ALLOC_ID".to_string(), who.alloc_id.to_string()),
        ("NOMAD_ALLOC_NAME".to_string(), who.alloc_name.to_string()),
        ("NOMAD_ALLOC_INDEX".to_string(), index),
        ("NOMAD_ALLOC_DIR".to_string(), path(dirs.shared())),
        ("NOMAD_TASK_DIR".to_string(), path(dirs.local())),
        ("NOMAD_SECRETS_DIR".to_string(), path(dirs.secrets())),
        ("NOMAD_TASK_NAME".to_string(), who.task.to_string()),
        ("NOMAD_GROUP_NAME".to_string(), who.group.to_string()),
        ("NOMAD_JOB_NAME".to_string(), who.job_name.to_string()),
        ("NOMAD_JOB_ID".to_string(), who.job_name.to_string()),
        ("NOMAD_NAMESPACE".to_string(), NAMESPACE.to_string()),
        ("NOMAD_REGION".to_string(), REGION.to_string()),
        ("NOMAD_DC".to_string(), DATACENTER.to_string()),
        ("NOMAD_CPU_LIMIT".to_string(), who.cpu_mhz.to_string()),
        ("NOMAD_MEMORY_LIMIT".to_string(), who.memory_mb.to_string()),
        ("HELIOS_ALLOC_ID".to_string(), who.alloc_id.to_string()),
        ("HELIOS_TASK_NAME".to_string(), who.task.to_string()),
        ("HELIOS_TASK_DIR".to_string(), path(dirs.local())),
        ("TMPDIR".to_string(), path(dirs.tmp())),
    ]);
    for (label, port) in who.ports {
        // As Nomad: the task binds NOMAD_PORT (behind a mapping, the container's port); the
        // host's side is NOMAD_HOST_PORT, and NOMAD_ADDR is how others reach it.
        vars.insert(format!("NOMAD_PORT_{label}"), port.task.to_string());
        vars.insert(format!("NOMAD_HOST_PORT_{label}"), port.host.to_string());
        vars.insert(format!("HELIOS_PORT_{label}"), port.host.to_string());
        vars.insert(format!("NOMAD_IP_{label}"), who.ip.to_string());
        vars.insert(format!("NOMAD_ADDR_{label}"), format!("{}:{}", who.ip, port.host));
    }
    for (key, value) in who.meta {
        // Nomad sets both the key as written and upper-cased.
        vars.insert(format!("NOMAD_META_{key}"), value.clone());
        vars.insert(format!("NOMAD_META_{}", key.to_uppercase()), value.clone());
    }
    vars
}

/// The whole environment: `PATH`, the job's `env` interpolated, then the runtime variables
/// (which the job's env cannot override).
pub fn environment(
    job_env: &BTreeMap<String, String>,
    runtime: &BTreeMap<String, String>,
    node: &NodeFacts,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([("PATH".to_string(), DEFAULT_PATH.to_string())]);
    for (key, value) in job_env {
        env.insert(key.clone(), interpolate(value, runtime, node));
    }
    env.extend(runtime.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Replaces `${NAME}` with a runtime variable, and `${node.*}`, `${attr.*}`, `${meta.*}` with
/// the node's facts; what names nothing known stays as written.
pub fn interpolate(text: &str, runtime: &BTreeMap<String, String>, node: &NodeFacts) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        match runtime.get(key).cloned().or_else(|| node.lookup(key)) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFacts {
        NodeFacts {
            id: "n1".into(),
            name: "host-a".into(),
            attributes: BTreeMap::from([("kernel.name".into(), "linux".into())]),
            meta: BTreeMap::from([("rack".into(), "r1".into())]),
        }
    }

    #[test]
    fn runtime_variables_are_nomads_with_absolute_paths() {
        let meta = BTreeMap::from([("owner".to_string(), "ops".to_string())]);
        let ports = BTreeMap::from([("http".to_string(), TaskPort { host: 23456, task: 8080 })]);
        let who = Identity {
            alloc_id: "a1",
            alloc_name: "web.front[2]",
            job_name: "web",
            group: "front",
            task: "server",
            cpu_mhz: 500,
            memory_mb: 256,
            meta: &meta,
            ports: &ports,
            ip: "10.0.0.7",
        };
        let dirs = TaskDir::new(std::path::Path::new("/var/lib/helios/allocs/a1"), "server");
        let vars = runtime(&who, &dirs);
        let get = |k: &str| vars.get(k).map(String::as_str);
        assert_eq!(get("NOMAD_ALLOC_INDEX"), Some("2"));
        assert_eq!(get("NOMAD_TASK_DIR"), Some("/var/lib/helios/allocs/a1/server/local"));
        assert_eq!(get("NOMAD_ALLOC_DIR"), Some("/var/lib/helios/allocs/a1/.alloc"));
        assert_eq!(get("NOMAD_SECRETS_DIR"), Some("/var/lib/helios/allocs/a1/server/secrets"));
        assert_eq!(get("HELIOS_TASK_DIR"), get("NOMAD_TASK_DIR"));
        assert_eq!((get("NOMAD_PORT_http"), get("NOMAD_HOST_PORT_http")), (Some("8080"), Some("23456")));
        assert_eq!((get("NOMAD_ADDR_http"), get("HELIOS_PORT_http")), (Some("10.0.0.7:23456"), Some("23456")));
        assert_eq!(get("NOMAD_IP_http"), Some("10.0.0.7"));
        assert_eq!((get("NOMAD_META_owner"), get("NOMAD_META_OWNER")), (Some("ops"), Some("ops")));
        assert_eq!((get("NOMAD_CPU_LIMIT"), get("NOMAD_MEMORY_LIMIT")), (Some("500"), Some("256")));
    }

    #[test]
    fn interpolation_expands_what_it_knows_and_leaves_the_rest() {
        let runtime = BTreeMap::from([("NOMAD_PORT_http".to_string(), "8080".to_string())]);
        let text =
            "--port=${NOMAD_PORT_http} --rack ${meta.rack} ${attr.kernel.name} ${node.unique.name} ${UNKNOWN} ${";
        assert_eq!(interpolate(text, &runtime, &node()), "--port=8080 --rack r1 linux host-a ${UNKNOWN} ${");
    }

    #[test]
    fn the_environment_holds_nothing_of_the_agents_and_the_runtime_wins() {
        let job_env = BTreeMap::from([
            ("GREETING".to_string(), "hi from ${node.unique.id}".to_string()),
            ("NOMAD_ALLOC_ID".to_string(), "forged".to_string()),
        ]);
        let runtime = BTreeMap::from([("NOMAD_ALLOC_ID".to_string(), "a1".to_string())]);
        let env = environment(&job_env, &runtime, &node());
        assert_eq!(env.get("GREETING").map(String::as_str), Some("hi from n1"));
        assert_eq!(env.get("NOMAD_ALLOC_ID").map(String::as_str), Some("a1"));
        assert_eq!(env.get("PATH").map(String::as_str), Some(DEFAULT_PATH));
        assert_eq!(env.len(), 3, "{env:?}");
    }
}
