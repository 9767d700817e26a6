//! Checks of a docker task's config: what the engine would refuse, or what would go wrong on the
//! node, is refused at submission with the field's path instead.

use std::collections::BTreeSet;

use super::{check_args, check_name, check_text, is_env_name, Report};
use crate::job::{capability_name, DockerConfig, Resources};
use crate::limits::{MAX_ARG_LEN, MAX_META_ENTRIES, MAX_PORTS};

/// The engine refuses a container with less memory than this.
pub const MIN_DOCKER_MEMORY_MB: u32 = 6;
/// Capabilities one docker task may add, or drop (Linux has about 40).
const MAX_CAPABILITIES: usize = 64;
/// Host devices one docker task may be given.
const MAX_DEVICES: usize = 64;
/// Labels the agent sets itself (node, allocation, job, task): a job may not set or fake them.
pub const RESERVED_LABEL_PREFIX: &str = "io.helios.";

/// Checks the docker task at `task_path`.
pub(super) fn check(r: &mut Report, task_path: &str, docker: &DockerConfig, resources: &Resources) {
    let path = &format!("{task_path}.config");
    if docker.image.trim().is_empty() {
        r.add(format!("{path}.image"), "must not be empty");
    }
    if docker.image.chars().any(char::is_whitespace) {
        r.add(format!("{path}.image"), "must not contain whitespace");
    }
    check_text(r, &format!("{path}.image"), &docker.image, MAX_ARG_LEN);
    check_args(r, &format!("{path}.args"), &docker.args);
    check_args(r, &format!("{path}.entrypoint"), &docker.entrypoint);
    if let Some(command) = &docker.command {
        check_text(r, &format!("{path}.command"), command, MAX_ARG_LEN);
    }
    if let Some(dir) = &docker.working_dir {
        if !dir.starts_with('/') {
            r.add(format!("{path}.working_dir"), format!("must be an absolute path, got {dir:?}"));
        }
        check_text(r, &format!("{path}.working_dir"), dir, MAX_ARG_LEN);
    }
    if let Some(mode) = &docker.network_mode {
        if mode.is_empty() || mode.chars().any(|c| c.is_whitespace() || c.is_control()) {
            r.add(
                format!("{path}.network_mode"),
                format!("must be a network name (bridge, host, none, ...), got {mode:?}"),
            );
        }
        // The engine publishes ports only from a network of the container's own.
        let unpublished = mode == "host" || mode == "none" || mode.starts_with("container:");
        if unpublished && !docker.ports.is_empty() {
            r.add(
                format!("{path}.ports"),
                format!("cannot be published with network_mode {mode:?} (the container has no network of its own)"),
            );
        }
    }
    check_labels(r, path, docker);
    check_ports(r, path, docker);
    for (i, volume) in docker.volumes.iter().enumerate() {
        if let Err(problem) = check_volume(volume) {
            r.add(format!("{path}.volumes[{i}]"), problem);
        }
    }
    check_capabilities(r, path, docker);
    check_devices(r, path, docker);
    if resources.memory_mb < MIN_DOCKER_MEMORY_MB {
        r.add(
            format!("{task_path}.resources.memory_mb"),
            format!(
                "must be at least {MIN_DOCKER_MEMORY_MB} for a docker task (the engine's minimum), got {}",
                resources.memory_mb
            ),
        );
    }
}

/// Capability names as the engine knows them (`NET_ADMIN`, `cap_net_admin`), or `ALL`.
fn check_capabilities(r: &mut Report, path: &str, docker: &DockerConfig) {
    for (field, caps) in [("cap_add", &docker.cap_add), ("cap_drop", &docker.cap_drop)] {
        if caps.len() > MAX_CAPABILITIES {
            r.add(format!("{path}.{field}"), format!("must have at most {MAX_CAPABILITIES} entries"));
            continue;
        }
        for (i, cap) in caps.iter().enumerate() {
            let name = capability_name(cap);
            let well_formed = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if !well_formed {
                r.add(
                    format!("{path}.{field}[{i}]"),
                    format!("must be a capability name (NET_ADMIN, ALL, ...), got {cap:?}"),
                );
            }
        }
    }
}

/// Devices by absolute paths, with `r`, `w`, `m` permissions.
fn check_devices(r: &mut Report, path: &str, docker: &DockerConfig) {
    if docker.devices.len() > MAX_DEVICES {
        r.add(format!("{path}.devices"), format!("must have at most {MAX_DEVICES} entries"));
        return;
    }
    for (i, device) in docker.devices.iter().enumerate() {
        let at = format!("{path}.devices[{i}]");
        let paths = [("host_path", Some(&device.host_path)), ("container_path", device.container_path.as_ref())];
        for (field, value) in paths {
            let Some(value) = value else { continue };
            if !value.starts_with('/') || value.contains(':') {
                r.add(format!("{at}.{field}"), format!("must be an absolute path without ':', got {value:?}"));
            }
            check_text(r, &format!("{at}.{field}"), value, MAX_ARG_LEN);
        }
        if let Some(permissions) = &device.cgroup_permissions {
            let valid = !permissions.is_empty() && permissions.chars().all(|c| "rwm".contains(c));
            if !valid {
                r.add(format!("{at}.cgroup_permissions"), format!("must be some of r, w and m, got {permissions:?}"));
            }
        }
    }
}

fn check_labels(r: &mut Report, path: &str, docker: &DockerConfig) {
    if docker.labels.len() > MAX_META_ENTRIES {
        r.add(format!("{path}.labels"), format!("must have at most {MAX_META_ENTRIES} entries"));
        return;
    }
    for (key, value) in &docker.labels {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            r.add(format!("{path}.labels"), format!("label names must be non-empty without spaces, got {key:?}"));
        } else if key.starts_with(RESERVED_LABEL_PREFIX) {
            r.add(
                format!("{path}.labels.{key}"),
                format!("names starting with {RESERVED_LABEL_PREFIX:?} are set by Helios"),
            );
        }
        check_text(r, &format!("{path}.labels.{key}"), value, MAX_ARG_LEN);
    }
}

fn check_ports(r: &mut Report, path: &str, docker: &DockerConfig) {
    if docker.ports.len() > MAX_PORTS {
        r.add(format!("{path}.ports"), format!("must have at most {MAX_PORTS} ports"));
        return;
    }
    let (mut names, mut container_ports, mut host_ports) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (k, port) in docker.ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{k}]");
        // The name becomes HELIOS_PORT_<name> in the task's environment.
        if let Err(p) = check_name(&port.name) {
            r.add(format!("{ppath}.name"), p);
        } else if !is_env_name(&port.name) {
            r.add(
                format!("{ppath}.name"),
                format!("must be letters, digits and '_', not starting with a digit (it names HELIOS_PORT_<name>), got {:?}", port.name),
            );
        }
        if !names.insert(port.name.as_str()) {
            r.add(format!("{ppath}.name"), format!("duplicate port name {:?}", port.name));
        }
        if port.container_port == 0 {
            r.add(format!("{ppath}.container_port"), "must be > 0");
        } else if !container_ports.insert(port.container_port) {
            r.add(format!("{ppath}.container_port"), format!("port {} is mapped twice", port.container_port));
        }
        match port.host_port {
            Some(0) => r.add(format!("{ppath}.host_port"), "must be > 0 (omit it to pick a free port)"),
            Some(host) if !host_ports.insert(host) => {
                r.add(format!("{ppath}.host_port"), format!("host port {host} is used twice"));
            }
            _ => {}
        }
    }
}

/// Options the engine takes after a bind mount's paths, comma-separated.
const BIND_OPTIONS: [&str; 13] = [
    "ro",
    "rw",
    "z",
    "Z",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "nocopy",
    "consistent",
    "delegated",
];

/// `host_path:container_path[:options]`, both absolute (Helios manages no named volumes).
fn check_volume(volume: &str) -> Result<(), String> {
    let parts: Vec<&str> = volume.split(':').collect();
    let (host, container, options) = match parts.as_slice() {
        [host, container] => (*host, *container, None),
        [host, container, options] => (*host, *container, Some(*options)),
        _ => return Err(format!("must be HOST_PATH:CONTAINER_PATH[:OPTIONS], got {volume:?}")),
    };
    if !host.starts_with('/') {
        return Err(format!("the host path must be absolute (named volumes are not supported), got {host:?}"));
    }
    if !container.starts_with('/') {
        return Err(format!("the container path must be absolute, got {container:?}"));
    }
    if let Some(bad) = options.into_iter().flat_map(|o| o.split(',')).find(|o| !BIND_OPTIONS.contains(o)) {
        return Err(format!("unknown bind option {bad:?} (known: {})", BIND_OPTIONS.join(", ")));
    }
    if volume.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::job::{DockerConfig, DockerDevice, Job, PortMapping, TaskDriver};

    fn problems(config: DockerConfig, memory_mb: u32) -> Vec<String> {
        let mut job = Job::exec("ok", "echo", vec![]);
        let task = &mut job.task_groups[0].tasks[0];
        task.driver = TaskDriver::Docker(config);
        task.resources.memory_mb = memory_mb;
        match job.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|f| f.to_string()).collect(),
        }
    }

    fn config() -> DockerConfig {
        DockerConfig::for_image("busybox")
    }

    const P: &str = "task_groups[0].tasks[0]";

    #[test]
    fn a_plain_container_passes() {
        let mut ok = config();
        ok.ports.push(PortMapping { name: "http_1".into(), container_port: 80, host_port: Some(8080) });
        ok.volumes = vec!["/srv/data:/data".into(), "/etc/app:/etc/app:ro".into(), "/srv/x:/x:ro,Z,rslave".into()];
        ok.labels.insert("team".into(), "web".into());
        ok.working_dir = Some("/app".into());
        ok.network_mode = Some("my-bridge".into());
        ok.privileged = true;
        ok.cap_add = vec!["NET_ADMIN".into(), "cap_sys_time".into()];
        ok.cap_drop = vec!["ALL".into()];
        ok.devices = vec![
            DockerDevice::new("/dev/fuse"),
            DockerDevice {
                host_path: "/dev/sda1".into(),
                container_path: Some("/dev/xvdc".into()),
                cgroup_permissions: Some("r".into()),
            },
        ];
        assert_eq!(problems(ok, 64), Vec::<String>::new());
    }

    #[test]
    fn capabilities_and_devices_are_checked() {
        let mut bad = config();
        bad.cap_add = vec!["NET ADMIN".into(), String::new()];
        bad.cap_drop = vec!["cap_".into()];
        bad.devices = vec![
            DockerDevice::new("dev/fuse"),
            DockerDevice {
                host_path: "/dev/sda1".into(),
                container_path: Some("/dev/x:rw".into()),
                cgroup_permissions: Some("rx".into()),
            },
        ];
        let got = problems(bad, 64);
        for field in [
            "config.cap_add[0]: must be a capability name",
            "config.cap_add[1]: must be a capability name",
            "config.cap_drop[0]: must be a capability name",
            "config.devices[0].host_path: must be an absolute path",
            "config.devices[1].container_path: must be an absolute path without ':'",
            "config.devices[1].cgroup_permissions: must be some of r, w and m",
        ] {
            assert!(got.iter().any(|e| e.starts_with(&format!("{P}.{field}"))), "{field}: {got:?}");
        }
        assert_eq!(got.len(), 6, "{got:?}");
    }

    #[test]
    fn ports_are_checked() {
        let mut bad = config();
        bad.image = String::new();
        bad.ports = vec![
            PortMapping { name: "http".into(), container_port: 0, host_port: Some(0) },
            PortMapping { name: "http".into(), container_port: 80, host_port: Some(8080) },
            PortMapping { name: "web-ui".into(), container_port: 80, host_port: Some(8080) },
        ];
        let got = problems(bad, 64);
        let has =
            |text: &str| assert!(got.iter().any(|e| e.starts_with(&format!("{P}.config.{text}"))), "{text}: {got:?}");
        has("image: must not be empty");
        has("ports[0].container_port: must be > 0");
        has("ports[0].host_port: must be > 0");
        has("ports[1].name: duplicate port name");
        has("ports[2].name: must be letters, digits and '_'");
        has("ports[2].container_port: port 80 is mapped twice");
        has("ports[2].host_port: host port 8080 is used twice");
    }

    #[test]
    fn two_tasks_of_a_group_cannot_publish_the_same_host_port() {
        let mut job = Job::exec("ok", "echo", vec![]);
        let mut config = config();
        config.ports.push(PortMapping { name: "http".into(), container_port: 80, host_port: Some(8080) });
        job.task_groups[0].tasks[0].driver = TaskDriver::Docker(config);
        job.task_groups[0].tasks[0].resources.memory_mb = 64;
        let mut second = job.task_groups[0].tasks[0].clone();
        second.name = "other".into();
        job.task_groups[0].tasks.push(second);
        let err = job.validate().unwrap_err().to_string();
        assert_eq!(err, "task_groups[0].tasks: host port 8080 is published by more than one task");
        assert_eq!(job.task_groups[0].static_host_ports(), vec![8080]);
    }

    #[test]
    fn volumes_labels_paths_and_memory_are_checked() {
        let mut bad = config();
        bad.volumes = vec!["named:/data".into(), "/a".into(), "/a:/b:ro,rx".into(), "/a:b".into()];
        bad.labels.insert("io.helios.alloc".into(), "fake".into());
        bad.working_dir = Some("app".into());
        bad.network_mode = Some("my net".into());
        bad.image = "busy box".into();
        let got = problems(bad, 4);
        for field in [
            "config.volumes[0]: the host path must be absolute (named volumes are not supported)",
            "config.volumes[1]: must be HOST_PATH:CONTAINER_PATH",
            "config.volumes[2]: unknown bind option \"rx\"",
            "config.volumes[3]: the container path must be absolute",
            "config.labels.io.helios.alloc: names starting with \"io.helios.\" are set by Helios",
            "config.working_dir: must be an absolute path",
            "config.network_mode: must be a network name",
            "config.image: must not contain whitespace",
            "resources.memory_mb: must be at least 6 for a docker task",
        ] {
            assert!(got.iter().any(|e| e.starts_with(&format!("{P}.{field}"))), "{field}: {got:?}");
        }
        assert_eq!(got.len(), 9, "{got:?}");
    }

    #[test]
    fn ports_need_a_network_of_the_containers_own() {
        for mode in ["host", "none", "container:db"] {
            let mut bad = config();
            bad.network_mode = Some(mode.into());
            bad.ports.push(PortMapping { name: "http".into(), container_port: 80, host_port: None });
            let got = problems(bad, 64);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].starts_with(&format!("{P}.config.ports: cannot be published with network_mode")), "{got:?}");
        }
    }
}
