//! A job as stored format 6 holds it (version 3): groups without a reschedule policy. Read and
//! migrated forward (to version 4, `job_v4`) (each group gets its job type's default policy, which is what format 6
//! did: see `reschedule`); written for clusters still at format 6 during a rolling upgrade,
//! when every group has that default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{Constraint, GroupPort, JobStatus, JobType, RestartPolicy, Task};
use crate::job_v4 as current;
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
    pub meta: BTreeMap<String, String>,
    pub version: u64,
    pub status: JobStatus,
    pub stopped: bool,
    pub submitted_at: Timestamp,
}

crate::versioned!(Job = 3, since format 6, previous crate::job_v2::Job);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub tasks: Vec<Task>,
    pub constraints: Vec<Constraint>,
    pub restart: RestartPolicy,
    pub meta: BTreeMap<String, String>,
    pub ports: Vec<GroupPort>,
}

impl From<Job> for current::Job {
    fn from(old: Job) -> current::Job {
        let job_type = old.job_type;
        let group = |g: TaskGroup| current::TaskGroup {
            name: g.name,
            count: g.count,
            tasks: g.tasks,
            constraints: g.constraints,
            restart: g.restart,
            reschedule: ReschedulePolicy::default_for(job_type),
            migrate: MigrateStrategy::default(),
            update: UpdateStrategy::default(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            meta: g.meta,
            ports: g.ports,
        };
        current::Job {
            name: old.name,
            job_type: old.job_type,
            priority: old.priority,
            task_groups: old.task_groups.into_iter().map(group).collect(),
            constraints: old.constraints,
            affinities: Vec::new(),
            spreads: Vec::new(),
            meta: old.meta,
            version: old.version,
            status: old.status,
            stopped: old.stopped,
            submitted_at: old.submitted_at,
        }
    }
}

/// For readers of format 6: refused (never silently dropped) when the job uses what version 4
/// added: a group's reschedule policy other than its job type's default (the one they would
/// apply), a migrate strategy other than the default (they evict at once, which is no wave at
/// all, but a default strategy asks for nothing they could keep), affinities, spreads or
/// `distinct_property`.
impl TryFrom<&current::Job> for Job {
    type Error = String;

    fn try_from(new: &current::Job) -> Result<Job, String> {
        const NEEDS: &str = "which needs stored format 7";
        let distinct_property =
            |cs: &[Constraint]| cs.iter().any(|c| c.operator == current::ConstraintOperator::DistinctProperty);
        if !new.affinities.is_empty() || !new.spreads.is_empty() {
            return Err(format!("the job has an affinity or a spread, {NEEDS}"));
        }
        if distinct_property(&new.constraints) {
            return Err(format!("the job has a distinct_property constraint, {NEEDS}"));
        }
        let group = |g: &current::TaskGroup| -> Result<TaskGroup, String> {
            if g.reschedule != ReschedulePolicy::default_for(new.job_type) {
                return Err(format!("group {:?} sets a reschedule policy, {NEEDS}", g.name));
            }
            if g.migrate != MigrateStrategy::default() {
                return Err(format!("group {:?} sets a migrate strategy, {NEEDS}", g.name));
            }
            if g.update != UpdateStrategy::default() {
                return Err(format!("group {:?} sets an update strategy, {NEEDS}", g.name));
            }
            if !g.affinities.is_empty() || !g.spreads.is_empty() {
                return Err(format!("group {:?} has an affinity or a spread, {NEEDS}", g.name));
            }
            let task_constraints: Vec<Constraint> = g.tasks.iter().flat_map(|t| t.constraints.clone()).collect();
            if distinct_property(&g.constraints) || distinct_property(&task_constraints) {
                return Err(format!("group {:?} has a distinct_property constraint, {NEEDS}", g.name));
            }
            Ok(TaskGroup {
                name: g.name.clone(),
                count: g.count,
                tasks: g.tasks.clone(),
                constraints: g.constraints.clone(),
                restart: g.restart.clone(),
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
    use crate::job as latest;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn a_job_with_the_default_policy_is_written_for_format_6_and_read_back_unchanged() {
        let mut job = latest::Job::exec("j", "true", Vec::new());
        job.set_type(JobType::Service);
        job.task_groups[0].reschedule = ReschedulePolicy::default_for(JobType::Service);
        let old = write_for(6, || encode(&job)).expect("writable for format 6");
        assert_eq!(old[0], 3, "version 3 for format-6 readers");
        assert_eq!(decode::<Job>(&old).task_groups[0].name, "j");
        assert_eq!(decode::<latest::Job>(&old), job, "migrated forward with its type's default");
        assert_eq!(write_for(7, || encode(&job)).expect("writable")[0], 4, "version 4 for format-7 readers");
    }

    #[test]
    fn a_reschedule_policy_format_6_cannot_hold_is_refused_for_it() {
        let mut job = latest::Job::exec("j", "true", Vec::new());
        job.task_groups[0].reschedule.attempts = 3;
        let refused = write_for(6, || encode(&job)).expect_err("refused");
        assert!(refused.contains("sets a reschedule policy, which needs stored format 7"), "{refused}");
        assert_eq!(decode::<latest::Job>(&encode(&job).expect("format 7 holds it")), job);
    }

    #[test]
    fn affinities_spreads_and_distinct_property_are_refused_for_format_6() {
        let base = latest::Job::exec("j", "true", Vec::new());
        let affinity = current::Affinity {
            attribute: "meta.rack".into(),
            operator: current::ConstraintOperator::Equal,
            value: "r1".into(),
            weight: 50,
        };
        let spread = current::Spread { attribute: "meta.rack".into(), weight: 50, targets: Vec::new() };
        let distinct = Constraint {
            attribute: "meta.rack".into(),
            operator: current::ConstraintOperator::DistinctProperty,
            value: "1".into(),
        };
        type Use<'a> = Box<dyn Fn(&mut latest::Job) + 'a>;
        let uses: [Use; 5] = [
            Box::new(|j| j.affinities.push(affinity.clone())),
            Box::new(|j| j.task_groups[0].spreads.push(spread.clone())),
            Box::new(|j| j.constraints.push(distinct.clone())),
            Box::new(|j| j.task_groups[0].constraints.push(distinct.clone())),
            Box::new(|j| j.task_groups[0].tasks[0].constraints.push(distinct.clone())),
        ];
        for add in uses {
            let mut job = base.clone();
            add(&mut job);
            let refused = write_for(6, || encode(&job)).expect_err("refused");
            assert!(refused.contains("needs stored format 7"), "{refused}");
            assert_eq!(decode::<latest::Job>(&encode(&job).expect("format 7 holds it")), job);
        }
    }
}
