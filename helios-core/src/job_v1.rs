//! A job as stored formats 3 and 4 hold it (version 1): tasks without `user`, no raw_exec
//! driver, exec without `cpu_hard_limit`. Read and migrated forward (to version 2, `job_v2`);
//! written for clusters still at format 4 during a rolling upgrade, when the job uses none of
//! what version 2 added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{Constraint, JobStatus, JobType, Resources, RestartPolicy};
use crate::job_v2::{self as next, DockerConfig};
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

crate::versioned!(Job = 1);

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskDriver {
    Exec(ExecConfig),
    Docker(DockerConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecConfig {
    pub command: String,
    pub args: Vec<String>,
}

impl From<Job> for next::Job {
    fn from(old: Job) -> next::Job {
        let task = |t: Task| next::Task {
            name: t.name,
            driver: match t.driver {
                TaskDriver::Exec(e) => next::TaskDriver::Exec(crate::job::ExecConfig::new(&e.command, e.args)),
                TaskDriver::Docker(d) => next::TaskDriver::Docker(d),
            },
            env: t.env,
            resources: t.resources,
            constraints: t.constraints,
            kill_timeout_secs: t.kill_timeout_secs,
            user: None,
        };
        let group = |g: TaskGroup| next::TaskGroup {
            name: g.name,
            count: g.count,
            tasks: g.tasks.into_iter().map(task).collect(),
            constraints: g.constraints,
            restart: g.restart,
            meta: g.meta,
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

/// For readers of format 4: refused (never silently dropped) when the job uses what they lack.
impl TryFrom<&next::Job> for Job {
    type Error = String;

    fn try_from(new: &next::Job) -> Result<Job, String> {
        let task = |t: &next::Task| -> Result<Task, String> {
            let needs_5 = |what: &str| Err(format!("task {:?} uses {what}, which needs stored format 5", t.name));
            if t.user.is_some() {
                return needs_5("`user`");
            }
            let driver = match &t.driver {
                next::TaskDriver::Exec(e) if e.cpu_hard_limit => return needs_5("exec's `cpu_hard_limit`"),
                next::TaskDriver::Exec(e) => {
                    TaskDriver::Exec(ExecConfig { command: e.command.clone(), args: e.args.clone() })
                }
                next::TaskDriver::Docker(d) => TaskDriver::Docker(d.clone()),
                next::TaskDriver::RawExec(_) => return needs_5("the raw_exec driver"),
            };
            Ok(Task {
                name: t.name.clone(),
                driver,
                env: t.env.clone(),
                resources: t.resources,
                constraints: t.constraints.clone(),
                kill_timeout_secs: t.kill_timeout_secs,
            })
        };
        let group = |g: &next::TaskGroup| -> Result<TaskGroup, String> {
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
    use crate::job as newest;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn a_plain_job_is_written_for_format_4_and_read_back_unchanged() {
        let job = newest::Job::exec("j", "echo", vec!["hi".into()]);
        let old = write_for(4, || encode(&job)).expect("writable for format 4");
        assert_eq!(old[0], 1, "version 1 for format-4 readers");
        let as_4_reads: Job = decode(&old);
        assert_eq!(
            as_4_reads.task_groups[0].tasks[0].driver,
            TaskDriver::Exec(ExecConfig { command: "echo".into(), args: vec!["hi".into()] })
        );
        assert_eq!(decode::<newest::Job>(&old), job, "migrated forward");
        assert_eq!(write_for(5, || encode(&job)).expect("writable")[0], 2, "version 2 for format 5");
    }

    #[test]
    fn what_format_4_cannot_hold_is_refused_for_it() {
        let mut with_user = newest::Job::exec("j", "id", Vec::new());
        with_user.task_groups[0].tasks[0].user = Some("www-data".into());
        let mut raw = newest::Job::exec("j", "id", Vec::new());
        raw.task_groups[0].tasks[0].driver = newest::TaskDriver::RawExec(newest::ExecConfig::new("id", Vec::new()));
        for job in [with_user, raw] {
            let refused = write_for(4, || encode(&job)).expect_err("refused");
            assert!(refused.contains("needs stored format 5"), "{refused}");
            let back: newest::Job = decode(&encode(&job).expect("format 5 holds it"));
            assert_eq!(back, job);
        }
    }
}
