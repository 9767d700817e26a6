//! A job as stored format 5 holds it (version 2): docker tasks without `privileged`, `cap_add`,
//! `cap_drop` and `devices`, groups without ports of their own. Read and migrated forward (to version 3, `job_v3`); written for clusters still at format 5
//! during a rolling upgrade, when the job uses none of what version 3 added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{self as current, Constraint, ExecConfig, JobStatus, JobType, PortMapping, Resources, RestartPolicy};
use crate::job_v3 as next;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Job {
    pub name: String,
    pub job_type: JobType,
    pub priority: u32,
    pub task_groups: Vec<TaskGroup>,
    pub constraints: Vec<Constraint>,
    pub meta: BTreeMap<String, String>,
    pub version: u64,
    pub status: JobStatus,
    pub stopped: bool,
    pub submitted_at: Timestamp,
}

crate::versioned!(Job = 2, since format 5, previous crate::job_v1::Job);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub tasks: Vec<Task>,
    pub constraints: Vec<Constraint>,
    pub restart: RestartPolicy,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub driver: TaskDriver,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    pub kill_timeout_secs: u32,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskDriver {
    Exec(ExecConfig),
    Docker(DockerConfig),
    RawExec(ExecConfig),
}

/// A docker task's config in stored formats 3 to 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerConfig {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub network_mode: Option<String>,
    pub volumes: Vec<String>,
    pub cpu_hard_limit: bool,
}

impl From<DockerConfig> for current::DockerConfig {
    fn from(d: DockerConfig) -> current::DockerConfig {
        current::DockerConfig {
            image: d.image,
            entrypoint: d.entrypoint,
            command: d.command,
            args: d.args,
            working_dir: d.working_dir,
            labels: d.labels,
            ports: d.ports,
            network_mode: d.network_mode,
            volumes: d.volumes,
            cpu_hard_limit: d.cpu_hard_limit,
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            devices: Vec::new(),
        }
    }
}

impl From<Job> for next::Job {
    fn from(old: Job) -> next::Job {
        let task = |t: Task| current::Task {
            name: t.name,
            driver: match t.driver {
                TaskDriver::Exec(e) => current::TaskDriver::Exec(e),
                TaskDriver::Docker(d) => current::TaskDriver::Docker(d.into()),
                TaskDriver::RawExec(e) => current::TaskDriver::RawExec(e),
            },
            env: t.env,
            resources: t.resources,
            constraints: t.constraints,
            kill_timeout_secs: t.kill_timeout_secs,
            user: t.user,
        };
        let group = |g: TaskGroup| next::TaskGroup {
            name: g.name,
            count: g.count,
            tasks: g.tasks.into_iter().map(task).collect(),
            constraints: g.constraints,
            restart: g.restart,
            meta: g.meta,
            ports: Vec::new(),
        };
        next::Job {
            name: old.name,
            job_type: old.job_type,
            priority: old.priority,
            task_groups: old.task_groups.into_iter().map(group).collect(),
            constraints: old.constraints,
            meta: old.meta,
            version: old.version,
            status: old.status,
            stopped: old.stopped,
            submitted_at: old.submitted_at,
        }
    }
}

/// For readers of format 5: refused (never silently dropped) when the job uses what they lack.
impl TryFrom<&next::Job> for Job {
    type Error = String;

    fn try_from(new: &next::Job) -> Result<Job, String> {
        let task = |t: &current::Task| -> Result<Task, String> {
            let driver = match &t.driver {
                current::TaskDriver::Exec(e) => TaskDriver::Exec(e.clone()),
                current::TaskDriver::RawExec(e) => TaskDriver::RawExec(e.clone()),
                current::TaskDriver::Docker(d) => {
                    let added = [
                        ("`privileged`", d.privileged),
                        ("`cap_add`", !d.cap_add.is_empty()),
                        ("`cap_drop`", !d.cap_drop.is_empty()),
                        ("`devices`", !d.devices.is_empty()),
                    ];
                    if let Some((what, _)) = added.iter().find(|(_, used)| *used) {
                        return Err(format!("task {:?} uses docker's {what}, which needs stored format 6", t.name));
                    }
                    TaskDriver::Docker(DockerConfig {
                        image: d.image.clone(),
                        entrypoint: d.entrypoint.clone(),
                        command: d.command.clone(),
                        args: d.args.clone(),
                        working_dir: d.working_dir.clone(),
                        labels: d.labels.clone(),
                        ports: d.ports.clone(),
                        network_mode: d.network_mode.clone(),
                        volumes: d.volumes.clone(),
                        cpu_hard_limit: d.cpu_hard_limit,
                    })
                }
            };
            Ok(Task {
                name: t.name.clone(),
                driver,
                env: t.env.clone(),
                resources: t.resources,
                constraints: t.constraints.clone(),
                kill_timeout_secs: t.kill_timeout_secs,
                user: t.user.clone(),
            })
        };
        let group = |g: &next::TaskGroup| -> Result<TaskGroup, String> {
            if !g.ports.is_empty() {
                return Err(format!("group {:?} has network ports of its own, which need stored format 6", g.name));
            }
            Ok(TaskGroup {
                name: g.name.clone(),
                count: g.count,
                tasks: g.tasks.iter().map(task).collect::<Result<_, _>>()?,
                constraints: g.constraints.clone(),
                restart: g.restart.clone(),
                meta: g.meta.clone(),
            })
        };
        Ok(Job {
            name: new.name.clone(),
            job_type: new.job_type,
            priority: new.priority,
            task_groups: new.task_groups.iter().map(group).collect::<Result<_, _>>()?,
            constraints: new.constraints.clone(),
            meta: new.meta.clone(),
            version: new.version,
            status: new.status,
            stopped: new.stopped,
            submitted_at: new.submitted_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::write_for;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    fn docker_job() -> current::Job {
        let mut job = current::Job::exec("j", "true", Vec::new());
        let mut config = current::DockerConfig::for_image("busybox");
        config.volumes.push("/srv:/srv".into());
        job.task_groups[0].tasks[0].driver = current::TaskDriver::Docker(config);
        job.task_groups[0].tasks[0].user = Some("www-data".into());
        job
    }

    #[test]
    fn a_docker_job_is_written_for_format_5_and_read_back_unchanged() {
        let job = docker_job();
        let old = write_for(5, || encode(&job)).expect("writable for format 5");
        assert_eq!(old[0], 2, "version 2 for format-5 readers");
        let as_5_reads: Job = decode(&old);
        let TaskDriver::Docker(docker) = &as_5_reads.task_groups[0].tasks[0].driver else { panic!("docker") };
        assert_eq!(docker.volumes, ["/srv:/srv"]);
        assert_eq!(decode::<current::Job>(&old), job, "migrated forward");
        assert_eq!(write_for(6, || encode(&job)).expect("writable")[0], 3, "format 6 reads version 3");
        // And on down to format 4, which has no task user: refused there, by the older step.
        let refused = write_for(4, || encode(&job)).expect_err("format 4 has no user");
        assert!(refused.contains("needs stored format 5"), "{refused}");
    }

    #[test]
    fn what_format_5_cannot_hold_is_refused_for_it() {
        let uses: [fn(&mut current::DockerConfig); 4] = [
            |d| d.privileged = true,
            |d| d.cap_add.push("NET_ADMIN".into()),
            |d| d.cap_drop.push("ALL".into()),
            |d| d.devices.push(current::DockerDevice::new("/dev/fuse")),
        ];
        let mut with_ports = docker_job();
        with_ports.task_groups[0].ports.push(current::GroupPort { label: "http".into(), static_port: None });
        let refused = write_for(5, || encode(&with_ports)).expect_err("refused");
        assert!(refused.contains("ports of its own, which need stored format 6"), "{refused}");
        for add in uses {
            let mut job = docker_job();
            if let current::TaskDriver::Docker(d) = &mut job.task_groups[0].tasks[0].driver {
                add(d);
            }
            let refused = write_for(5, || encode(&job)).expect_err("refused");
            assert!(refused.contains("needs stored format 6"), "{refused}");
            let back: current::Job = decode(&encode(&job).expect("format 6 holds it"));
            assert_eq!(back, job);
        }
    }
}
