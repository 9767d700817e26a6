//! A job as stored format 8 holds it (version 5): update strategies without deployments'
//! fields (canaries, auto_revert, auto_promote, progress_deadline, manual health) and versions
//! without a stable mark. Read and migrated forward (Nomad's defaults for the new fields, which
//! format 8 had no deployments to use); written for clusters still at format 8 during a rolling
//! upgrade, refused when a group uses what only deployments do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{self as current, Constraint, GroupPort, JobStatus, JobType, RestartPolicy, Task};
pub use crate::job::{Affinity, Spread};
use crate::migrate::{HealthCheck, MigrateStrategy};
use crate::reschedule::ReschedulePolicy;
use crate::service::Service;
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

crate::versioned!(Job = 5, since format 8, previous crate::job_v4::Job);

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
    pub services: Vec<Service>,
}

/// The update strategy of formats 7 and 8: rolling updates without deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStrategy {
    pub max_parallel: u32,
    pub health_check: HealthCheck,
    pub min_healthy_time_secs: u64,
    pub healthy_deadline_secs: u64,
}

impl Default for UpdateStrategy {
    fn default() -> UpdateStrategy {
        UpdateStrategy::from(&crate::update::UpdateStrategy::default())
    }
}

impl From<&crate::update::UpdateStrategy> for UpdateStrategy {
    fn from(new: &crate::update::UpdateStrategy) -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: new.max_parallel,
            health_check: new.health_check,
            min_healthy_time_secs: new.min_healthy_time_secs,
            healthy_deadline_secs: new.healthy_deadline_secs,
        }
    }
}

impl From<UpdateStrategy> for crate::update::UpdateStrategy {
    fn from(old: UpdateStrategy) -> crate::update::UpdateStrategy {
        crate::update::UpdateStrategy {
            max_parallel: old.max_parallel,
            health_check: old.health_check,
            min_healthy_time_secs: old.min_healthy_time_secs,
            healthy_deadline_secs: old.healthy_deadline_secs,
            ..crate::update::UpdateStrategy::default()
        }
    }
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
            update: g.update.into(),
            affinities: g.affinities,
            spreads: g.spreads,
            meta: g.meta,
            ports: g.ports,
            services: g.services,
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
            stable: false,
        }
    }
}

/// For readers of format 8: refused (never silently dropped) when a group's update uses what
/// only a deployment does. The stable mark is dropped: format 8 has no deployments to set it.
impl TryFrom<&current::Job> for Job {
    type Error = String;

    fn try_from(new: &current::Job) -> Result<Job, String> {
        let group = |g: &current::TaskGroup| -> Result<TaskGroup, String> {
            if new.job_type == JobType::System && g.update.is_rolling() {
                // Format 8's builds replace a system job's allocations at once.
                return Err(format!("group {:?} rolls a system job, which needs stored format 9", g.name));
            }
            let update = UpdateStrategy::from(&g.update);
            if crate::update::UpdateStrategy::from(update.clone()) != g.update
                || g.update.health_check == HealthCheck::Manual
            {
                return Err(format!(
                    "group {:?} uses canary, auto_revert, auto_promote, progress_deadline, stagger or manual health, which need stored format 9",
                    g.name
                ));
            }
            Ok(TaskGroup {
                name: g.name.clone(),
                count: g.count,
                tasks: g.tasks.clone(),
                constraints: g.constraints.clone(),
                restart: g.restart.clone(),
                reschedule: g.reschedule.clone(),
                migrate: g.migrate.clone(),
                update,
                affinities: g.affinities.clone(),
                spreads: g.spreads.clone(),
                meta: g.meta.clone(),
                ports: g.ports.clone(),
                services: g.services.clone(),
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

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    fn rolling_service() -> current::Job {
        let mut job = current::Job::exec("j", "true", Vec::new());
        job.set_type(JobType::Service);
        job.task_groups[0].update = crate::update::UpdateStrategy::nomad_block_defaults();
        job
    }

    #[test]
    fn a_rolling_update_without_deployment_fields_is_written_for_format_8_and_read_back() {
        let mut job = rolling_service();
        job.stable = true;
        let old = write_for(8, || encode(&job)).expect("writable for format 8");
        assert_eq!(old[0], 5, "version 5 for format-8 readers");
        let back = decode::<current::Job>(&old);
        assert!(!back.stable, "format 8 has no stable marks");
        assert_eq!(back, current::Job { stable: false, ..job.clone() });
        assert_eq!(encode(&job).expect("writable")[0], 6, "this build writes version 6");
        assert_eq!(decode::<current::Job>(&encode(&job).expect("writable")), job);
    }

    #[test]
    fn deployment_fields_are_refused_for_format_8() {
        for change in [
            (|u: &mut crate::update::UpdateStrategy| u.canary = 1) as fn(&mut crate::update::UpdateStrategy),
            |u| u.auto_revert = true,
            |u| u.progress_deadline_secs = 60,
            |u| u.health_check = HealthCheck::Manual,
            |u| u.stagger_secs = 10,
        ] {
            let mut job = rolling_service();
            change(&mut job.task_groups[0].update);
            let refused = write_for(8, || encode(&job)).expect_err("refused");
            assert!(refused.contains("need stored format 9"), "{refused}");
        }
    }
}
