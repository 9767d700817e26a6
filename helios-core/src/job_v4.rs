//! A job as stored format 7 holds it (version 4): groups without services. Read and migrated
//! forward (to version 5, `job_v5`; no group had a service); written for clusters still at format 7 during a rolling
//! upgrade, refused when a group has a service (those readers would run it unregistered).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::job::{Affinity, ConstraintOperator, Spread};
use crate::job::{Constraint, GroupPort, JobStatus, JobType, RestartPolicy, Task};
use crate::job_v5 as current;
use crate::job_v5::UpdateStrategy;
use crate::migrate::MigrateStrategy;
use crate::reschedule::ReschedulePolicy;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Job {
    pub name: String,
    pub job_type: JobType,
    pub priority: u32,
    pub task_groups: Vec<TaskGroup>,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub meta: BTreeMap<String, String>,
    pub version: u64,
    pub status: JobStatus,
    pub stopped: bool,
    pub submitted_at: Timestamp,
}

crate::versioned!(Job = 4, since format 7, previous crate::job_v3::Job);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub tasks: Vec<Task>,
    pub constraints: Vec<Constraint>,
    pub restart: RestartPolicy,
    pub reschedule: ReschedulePolicy,
    pub migrate: MigrateStrategy,
    pub update: UpdateStrategy,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub meta: BTreeMap<String, String>,
    pub ports: Vec<GroupPort>,
}

impl From<Job> for current::Job {
    fn from(old: Job) -> current::Job {
        let group = |g: TaskGroup| current::TaskGroup {
            name: g.name,
            count: g.count,
            tasks: g.tasks,
            constraints: g.constraints,
            restart: g.restart,
            reschedule: g.reschedule,
            migrate: g.migrate,
            update: g.update,
            affinities: g.affinities,
            spreads: g.spreads,
            meta: g.meta,
            ports: g.ports,
            services: Vec::new(),
        };
        current::Job {
            name: old.name,
            job_type: old.job_type,
            priority: old.priority,
            task_groups: old.task_groups.into_iter().map(group).collect(),
            constraints: old.constraints,
            affinities: old.affinities,
            spreads: old.spreads,
            meta: old.meta,
            version: old.version,
            status: old.status,
            stopped: old.stopped,
            submitted_at: old.submitted_at,
        }
    }
}

/// For readers of format 7: refused (never silently dropped) when a group has a service.
impl TryFrom<&current::Job> for Job {
    type Error = String;

    fn try_from(new: &current::Job) -> Result<Job, String> {
        let group = |g: &current::TaskGroup| -> Result<TaskGroup, String> {
            if !g.services.is_empty() {
                return Err(format!("group {:?} has a service, which needs stored format 8", g.name));
            }
            Ok(TaskGroup {
                name: g.name.clone(),
                count: g.count,
                tasks: g.tasks.clone(),
                constraints: g.constraints.clone(),
                restart: g.restart.clone(),
                reschedule: g.reschedule.clone(),
                migrate: g.migrate.clone(),
                update: g.update.clone(),
                affinities: g.affinities.clone(),
                spreads: g.spreads.clone(),
                meta: g.meta.clone(),
                ports: g.ports.clone(),
            })
        };
        Ok(Job {
            name: new.name.clone(),
            job_type: new.job_type,
            priority: new.priority,
            task_groups: new.task_groups.iter().map(group).collect::<Result<_, _>>()?,
            constraints: new.constraints.clone(),
            affinities: new.affinities.clone(),
            spreads: new.spreads.clone(),
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
    use crate::service::{AddressMode, Service};

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn a_job_without_services_is_written_for_format_7_and_read_back_unchanged() {
        let job = crate::job::Job::exec("j", "true", Vec::new());
        let old = write_for(7, || encode(&job)).expect("writable for format 7");
        assert_eq!(old[0], 4, "version 4 for format-7 readers");
        assert_eq!(decode::<crate::job::Job>(&old), job);
        assert_eq!(write_for(8, || encode(&job)).expect("writable")[0], 5, "version 5 for format 8");
    }

    #[test]
    fn a_service_is_refused_for_format_7() {
        let mut job = crate::job::Job::exec("j", "true", Vec::new());
        job.task_groups[0].services.push(Service {
            name: "web".into(),
            task: None,
            port: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            address_mode: AddressMode::Auto,
            checks: Vec::new(),
        });
        let refused = write_for(7, || encode(&job)).expect_err("refused");
        assert!(refused.contains("has a service, which needs stored format 8"), "{refused}");
        assert_eq!(decode::<crate::job::Job>(&write_for(8, || encode(&job)).expect("format 8 holds it")), job);
    }
}
