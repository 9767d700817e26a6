//! Core types to and from the agent protocol's own messages (`agent_pb`): jobs and allocations as
//! agents read them, and the task states and service registrations they report. These keep the wire
//! format of agents of earlier builds (statuses as words, times as integer milliseconds), so
//! servers and agents of different builds understand each other in either upgrade order.

use std::collections::BTreeMap;

use helios_core::service::{AllocServices, CheckState, CheckStatus, ServiceRegistration};
use helios_core::{AllocClientStatus, AllocUpdate, Allocation, Job, TaskEvent, TaskRunState, TaskState, Timestamp};

use super::{job_from_pb, job_to_pb, resources_to_pb, ConversionResult, Problems};
use crate::{agent_pb, pb};

mod job;

/// A job version as the servers send it to agents.
pub fn job_to_agent(job: &Job) -> agent_pb::Job {
    job::to_agent(job_to_pb(job))
}

/// A job version as an agent reads it: converted and checked as a submitted one is.
pub fn job_from_agent(job: agent_pb::Job) -> ConversionResult<Job> {
    job_from_pb(job::from_agent(job))
}

/// An allocation as the servers send it to its node's agent.
pub fn assigned_to_agent(a: &Allocation) -> agent_pb::Allocation {
    agent_pb::Allocation {
        id: a.id.clone(),
        name: a.name.clone(),
        job_name: a.job_name.clone(),
        job_version: a.job_version,
        task_group: a.task_group.clone(),
        node_id: a.node_id.clone(),
        resources: Some(resources_to_pb(a.resources)),
        desired_status: a.desired_status.as_str().to_string(),
        host_ports: a.host_ports.iter().map(|p| u32::from(*p)).collect(),
        services: a.services.iter().map(registration_to_agent).collect(),
    }
}

/// An agent's report on one allocation, as it sends it.
pub fn alloc_update_to_agent(u: &AllocUpdate) -> pb::AllocationUpdate {
    pb::AllocationUpdate {
        alloc_id: u.alloc_id.clone(),
        client_status: u.client_status.as_str().to_string(),
        client_description: u.client_description.clone(),
        task_states: u.task_states.iter().map(|(task, state)| (task.clone(), task_state_to_agent(state))).collect(),
    }
}

fn task_state_to_agent(s: &TaskState) -> agent_pb::TaskState {
    agent_pb::TaskState {
        state: s.state.as_str().to_string(),
        failed: s.failed,
        restarts: s.restarts,
        started_at_ms: s.started_at.map(Timestamp::as_millis),
        finished_at_ms: s.finished_at.map(Timestamp::as_millis),
        events: s
            .events
            .iter()
            .map(|e| agent_pb::TaskEvent {
                time_ms: e.time.as_millis(),
                kind: e.kind.clone(),
                message: e.message.clone(),
                exit_code: e.exit_code,
            })
            .collect(),
    }
}

/// An agent's report on one allocation, checked field by field.
pub fn alloc_update_from_agent(u: pb::AllocationUpdate, path: &str) -> ConversionResult<AllocUpdate> {
    let mut p = Problems::default();
    let client_status = AllocClientStatus::parse(&u.client_status).unwrap_or_else(|| {
        p.add(format!("{path}.client_status"), format!("unknown status {:?}", u.client_status));
        AllocClientStatus::Pending
    });
    if client_status == AllocClientStatus::Lost {
        p.add(format!("{path}.client_status"), "only the servers mark an allocation lost");
    }
    let mut task_states = BTreeMap::new();
    for (task, state) in u.task_states {
        let run = TaskRunState::parse(&state.state).unwrap_or_else(|| {
            p.add(format!("{path}.task_states.{task}.state"), format!("unknown state {:?}", state.state));
            TaskRunState::Pending
        });
        if state.events.len() > 1000 {
            p.add(format!("{path}.task_states.{task}.events"), "at most 1000 events");
        }
        let events = state
            .events
            .into_iter()
            .map(|e| TaskEvent { time: Timestamp(e.time_ms), kind: e.kind, message: e.message, exit_code: e.exit_code })
            .collect();
        task_states.insert(
            task,
            TaskState {
                state: run,
                failed: state.failed,
                restarts: state.restarts,
                started_at: state.started_at_ms.map(Timestamp),
                finished_at: state.finished_at_ms.map(Timestamp),
                events,
            },
        );
    }
    p.into_result(AllocUpdate {
        alloc_id: u.alloc_id,
        client_status,
        client_description: u.client_description,
        task_states,
    })
}

fn registration_to_agent(r: &ServiceRegistration) -> agent_pb::ServiceRegistration {
    agent_pb::ServiceRegistration {
        service: r.service.clone(),
        task: r.task.clone().unwrap_or_default(),
        address: r.address.clone(),
        port: u32::from(r.port),
        checks: r
            .checks
            .iter()
            .map(|c| agent_pb::CheckState {
                name: c.name.clone(),
                status: c.status.as_str().to_string(),
                output: c.output.clone(),
                since_ms: c.since.as_millis(),
            })
            .collect(),
    }
}

/// An agent's registrations, as it reports them.
pub fn alloc_services_to_agent(reports: &[AllocServices]) -> Vec<pb::AllocServices> {
    reports
        .iter()
        .map(|r| pb::AllocServices {
            alloc_id: r.alloc_id.clone(),
            registrations: r.registrations.iter().map(registration_to_agent).collect(),
        })
        .collect()
}

/// An agent's report of its allocations' registrations, checked field by field.
pub fn alloc_services_from_agent(reports: Vec<pb::AllocServices>) -> ConversionResult<Vec<AllocServices>> {
    let mut p = Problems::default();
    let out = reports
        .into_iter()
        .enumerate()
        .map(|(i, report)| {
            let at = format!("services[{i}]");
            if report.alloc_id.is_empty() {
                p.add(format!("{at}.alloc_id"), "must not be empty");
            }
            let registrations = report
                .registrations
                .into_iter()
                .enumerate()
                .map(|(k, r)| registration_from_agent(&mut p, &format!("{at}.registrations[{k}]"), r))
                .collect();
            AllocServices { alloc_id: report.alloc_id, registrations }
        })
        .collect();
    p.into_result(out)
}

/// The registrations an assigned allocation carries (what an earlier agent registered), as the
/// agent takes them over; `None` if any is malformed.
pub fn registrations_from_agent(registrations: Vec<agent_pb::ServiceRegistration>) -> Option<Vec<ServiceRegistration>> {
    let mut p = Problems::default();
    let out = registrations.into_iter().map(|r| registration_from_agent(&mut p, "services", r)).collect();
    p.into_result(out).ok()
}

fn registration_from_agent(p: &mut Problems, at: &str, r: agent_pb::ServiceRegistration) -> ServiceRegistration {
    let port = u16::try_from(r.port).unwrap_or_else(|_| {
        p.add(format!("{at}.port"), format!("must be at most 65535, got {}", r.port));
        0
    });
    let checks = r
        .checks
        .into_iter()
        .enumerate()
        .map(|(c, check)| {
            let status = CheckStatus::parse(&check.status).unwrap_or_else(|| {
                p.add(
                    format!("{at}.checks[{c}].status"),
                    format!("must be passing, warning or critical, got {:?}", check.status),
                );
                CheckStatus::Critical
            });
            let mut output = check.output;
            helios_core::service::cut_output(&mut output);
            CheckState { name: check.name, status, output, since: Timestamp(check.since_ms) }
        })
        .collect();
    ServiceRegistration {
        service: r.service,
        task: super::service::non_empty(r.task),
        address: r.address,
        port,
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TaskState {
        TaskState {
            state: TaskRunState::Dead,
            failed: true,
            restarts: 2,
            started_at: Some(Timestamp(1_000)),
            finished_at: Some(Timestamp(2_000)),
            events: vec![TaskEvent {
                time: Timestamp(1_500),
                kind: "Terminated".into(),
                message: "exit 3".into(),
                exit_code: Some(3),
            }],
        }
    }

    #[test]
    fn a_report_goes_to_the_agent_format_and_back_unchanged() {
        let update = AllocUpdate {
            alloc_id: "a1".into(),
            client_status: AllocClientStatus::Failed,
            client_description: "task failed".into(),
            task_states: BTreeMap::from([("web".to_string(), state())]),
        };
        let back = alloc_update_from_agent(alloc_update_to_agent(&update), "updates[0]").unwrap();
        assert_eq!(back, update);

        let services = vec![AllocServices {
            alloc_id: "a1".into(),
            registrations: vec![ServiceRegistration {
                service: "web".into(),
                task: None,
                address: "127.0.0.1".into(),
                port: 8080,
                checks: vec![CheckState {
                    name: "alive".into(),
                    status: CheckStatus::Warning,
                    output: "slow".into(),
                    since: Timestamp(7),
                }],
            }],
        }];
        assert_eq!(alloc_services_from_agent(alloc_services_to_agent(&services)).unwrap(), services);
    }

    /// The bytes an agent of an earlier build sends (its messages had these names in helios.v1)
    /// are the bytes this build reads: statuses as words, times as milliseconds.
    #[test]
    fn words_and_milliseconds_are_what_travels() {
        let sent = alloc_update_to_agent(&AllocUpdate {
            alloc_id: "a1".into(),
            client_status: AllocClientStatus::Running,
            client_description: String::new(),
            task_states: BTreeMap::from([("web".to_string(), state())]),
        });
        assert_eq!(sent.client_status, "running");
        let web = &sent.task_states["web"];
        assert_eq!((web.state.as_str(), web.started_at_ms, web.events[0].time_ms), ("dead", Some(1_000), 1_500));
    }

    /// A job using every part whose wire form differs between agents and the public API.
    fn rich_job() -> Job {
        use helios_core::service::{AddressMode, Check, CheckKind, CheckRestart, Service};
        use helios_core::{Affinity, Constraint, ConstraintOperator, JobType, UpdateStrategy};
        let mut job = Job::exec("web", "sleep", vec!["600".into()]);
        job.job_type = JobType::Service;
        job.constraints.push(Constraint {
            attribute: "attr.os".into(),
            operator: ConstraintOperator::Regexp,
            value: "lin.*".into(),
        });
        job.affinities.push(Affinity {
            attribute: "meta.rack".into(),
            operator: ConstraintOperator::NotEqual,
            value: "r1".into(),
            weight: -40,
        });
        let group = &mut job.task_groups[0];
        group.update = UpdateStrategy { max_parallel: 1, canary: 1, ..UpdateStrategy::default() };
        group.reschedule = helios_core::ReschedulePolicy::default_for(JobType::Service);
        group.services.push(Service {
            name: "web".into(),
            task: None,
            port: None,
            tags: vec!["v1".into()],
            meta: Default::default(),
            address_mode: AddressMode::Host,
            checks: vec![Check {
                name: "alive".into(),
                kind: CheckKind::Http { path: "/health".into(), method: "GET".into(), headers: Default::default() },
                port: Some("8080".into()),
                interval_ms: 10_500,
                timeout_ms: 2_000,
                initial_status: CheckStatus::Warning,
                success_before_passing: 2,
                failures_before_critical: 3,
                check_restart: Some(CheckRestart { limit: 3, grace_ms: 1_500, ignore_warnings: true }),
            }],
        });
        job
    }

    #[test]
    fn a_job_reaches_agents_in_their_wire_format_and_reads_back_unchanged() {
        let job = rich_job();
        let sent = job_to_agent(&job);
        // What agents of every build decode: words and integer lengths.
        assert_eq!(sent.constraints[0].operator, "regexp");
        assert_eq!(sent.affinities[0].operator, "!=");
        let group = &sent.task_groups[0];
        let check = &group.services[0].checks[0];
        assert_eq!(group.services[0].address_mode, "host");
        assert_eq!((check.r#type.as_str(), check.initial_status.as_str()), ("http", "warning"));
        assert_eq!((check.interval_ms, check.timeout_ms), (10_500, 2_000));
        assert_eq!(check.check_restart.as_ref().map(|r| r.grace_ms), Some(1_500));
        let update = group.update.as_ref().expect("update");
        assert_eq!((update.progress_deadline_secs, update.stagger_secs), (Some(600), Some(30)));
        assert_eq!(group.tasks[0].kill_timeout_secs, helios_core::Task::DEFAULT_KILL_TIMEOUT_SECS);
        assert_eq!(job_from_agent(sent).unwrap(), job);
    }

    #[test]
    fn a_malformed_report_names_every_field() {
        let mut sent = alloc_update_to_agent(&AllocUpdate {
            alloc_id: "a1".into(),
            client_status: AllocClientStatus::Running,
            client_description: String::new(),
            task_states: BTreeMap::from([("web".to_string(), state())]),
        });
        sent.client_status = "lost".into();
        sent.task_states.get_mut("web").unwrap().state = "asleep".into();
        let errors = alloc_update_from_agent(sent, "updates[0]").unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["updates[0].client_status", "updates[0].task_states.web.state"]);
    }
}
