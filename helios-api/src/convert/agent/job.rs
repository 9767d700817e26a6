//! Jobs as agents read them (`agent_pb::Job`, the public job's earlier wire format: operators,
//! check types and statuses as words, lengths as integer seconds or milliseconds), translated
//! to and from the public `pb::Job` field by field, so that what a job means (defaults,
//! validation) stays in `job_to_pb` and `job_from_pb` alone.

use helios_core::service::{AddressMode, CheckStatus};
use helios_core::ConstraintOperator;

use crate::convert::{
    address_mode_from_pb, address_mode_to_pb, check_status_from_pb, check_status_to_pb, constraint_operator_from_pb,
    constraint_operator_to_pb, millis_to_pb, seconds_of, secs_to_pb, timestamp_from_pb, timestamp_to_pb,
};
use crate::{agent_pb, pb};

pub(super) fn to_agent(j: pb::Job) -> agent_pb::Job {
    agent_pb::Job {
        name: j.name,
        r#type: j.r#type,
        priority: j.priority,
        task_groups: j.task_groups.into_iter().map(group_to_agent).collect(),
        constraints: j.constraints.into_iter().map(constraint_to_agent).collect(),
        meta: j.meta,
        version: j.version,
        status: j.status,
        stopped: j.stopped,
        submitted_at_ms: timestamp_from_pb(j.submit_time.as_ref()).map_or(0, |t| t.as_millis()),
        affinities: j.affinities.into_iter().map(affinity_to_agent).collect(),
        spreads: j.spreads,
        stable: j.stable,
    }
}

pub(super) fn from_agent(j: agent_pb::Job) -> pb::Job {
    pb::Job {
        name: j.name,
        r#type: j.r#type,
        priority: j.priority,
        task_groups: j.task_groups.into_iter().map(group_from_agent).collect(),
        constraints: j.constraints.into_iter().map(constraint_from_agent).collect(),
        meta: j.meta,
        version: j.version,
        status: j.status,
        stopped: j.stopped,
        submit_time: Some(timestamp_to_pb(helios_core::Timestamp(j.submitted_at_ms))),
        affinities: j.affinities.into_iter().map(affinity_from_agent).collect(),
        spreads: j.spreads,
        stable: j.stable,
    }
}

fn group_to_agent(g: pb::TaskGroup) -> agent_pb::TaskGroup {
    agent_pb::TaskGroup {
        name: g.name,
        count: g.count,
        tasks: g.tasks.into_iter().map(task_to_agent).collect(),
        constraints: g.constraints.into_iter().map(constraint_to_agent).collect(),
        restart: g.restart.map(|r| agent_pb::RestartPolicy {
            attempts: r.attempts,
            interval_secs: secs32(r.interval),
            delay_secs: secs32(r.delay),
            mode: r.mode,
        }),
        meta: g.meta,
        ports: g.ports,
        reschedule: g.reschedule.map(|r| agent_pb::ReschedulePolicy {
            attempts: r.attempts,
            interval_secs: secs(r.interval),
            delay_secs: secs(r.delay),
            delay_function: r.delay_function,
            max_delay_secs: secs(r.max_delay),
            unlimited: r.unlimited,
        }),
        affinities: g.affinities.into_iter().map(affinity_to_agent).collect(),
        spreads: g.spreads,
        migrate: g.migrate.map(|m| agent_pb::MigrateStrategy {
            max_parallel: m.max_parallel,
            health_check: m.health_check,
            min_healthy_time_secs: secs(m.min_healthy_time),
            healthy_deadline_secs: secs(m.healthy_deadline),
        }),
        update: g.update.map(|u| agent_pb::UpdateStrategy {
            max_parallel: u.max_parallel,
            health_check: u.health_check,
            min_healthy_time_secs: secs(u.min_healthy_time),
            healthy_deadline_secs: secs(u.healthy_deadline),
            progress_deadline_secs: u.progress_deadline.map(|d| secs(Some(d))),
            auto_revert: u.auto_revert,
            auto_promote: u.auto_promote,
            canary: u.canary,
            stagger_secs: u.stagger.map(|d| secs(Some(d))),
        }),
        services: g.services.into_iter().map(service_to_agent).collect(),
    }
}

fn group_from_agent(g: agent_pb::TaskGroup) -> pb::TaskGroup {
    pb::TaskGroup {
        name: g.name,
        count: g.count,
        tasks: g.tasks.into_iter().map(task_from_agent).collect(),
        constraints: g.constraints.into_iter().map(constraint_from_agent).collect(),
        restart: g.restart.map(|r| pb::RestartPolicy {
            attempts: r.attempts,
            interval: Some(secs_to_pb(u64::from(r.interval_secs))),
            delay: Some(secs_to_pb(u64::from(r.delay_secs))),
            mode: r.mode,
        }),
        meta: g.meta,
        ports: g.ports,
        reschedule: g.reschedule.map(|r| pb::ReschedulePolicy {
            attempts: r.attempts,
            interval: Some(secs_to_pb(r.interval_secs)),
            delay: Some(secs_to_pb(r.delay_secs)),
            delay_function: r.delay_function,
            max_delay: Some(secs_to_pb(r.max_delay_secs)),
            unlimited: r.unlimited,
        }),
        affinities: g.affinities.into_iter().map(affinity_from_agent).collect(),
        spreads: g.spreads,
        migrate: g.migrate.map(|m| pb::MigrateStrategy {
            max_parallel: m.max_parallel,
            health_check: m.health_check,
            min_healthy_time: Some(secs_to_pb(m.min_healthy_time_secs)),
            healthy_deadline: Some(secs_to_pb(m.healthy_deadline_secs)),
        }),
        update: g.update.map(|u| pb::UpdateStrategy {
            max_parallel: u.max_parallel,
            health_check: u.health_check,
            min_healthy_time: Some(secs_to_pb(u.min_healthy_time_secs)),
            healthy_deadline: Some(secs_to_pb(u.healthy_deadline_secs)),
            progress_deadline: u.progress_deadline_secs.map(secs_to_pb),
            auto_revert: u.auto_revert,
            auto_promote: u.auto_promote,
            canary: u.canary,
            stagger: u.stagger_secs.map(secs_to_pb),
        }),
        services: g.services.into_iter().map(service_from_agent).collect(),
    }
}

fn task_to_agent(t: pb::Task) -> agent_pb::Task {
    agent_pb::Task {
        name: t.name,
        driver: t.driver.map(|d| match d {
            pb::task::Driver::Exec(e) => agent_pb::task::Driver::Exec(e),
            pb::task::Driver::RawExec(e) => agent_pb::task::Driver::RawExec(e),
            pb::task::Driver::Docker(d) => agent_pb::task::Driver::Docker(d),
        }),
        env: t.env,
        resources: t.resources,
        constraints: t.constraints.into_iter().map(constraint_to_agent).collect(),
        kill_timeout_secs: secs32(t.kill_timeout),
        user: t.user,
    }
}

fn task_from_agent(t: agent_pb::Task) -> pb::Task {
    pb::Task {
        name: t.name,
        driver: t.driver.map(|d| match d {
            agent_pb::task::Driver::Exec(e) => pb::task::Driver::Exec(e),
            agent_pb::task::Driver::RawExec(e) => pb::task::Driver::RawExec(e),
            agent_pb::task::Driver::Docker(d) => pb::task::Driver::Docker(d),
        }),
        env: t.env,
        resources: t.resources,
        constraints: t.constraints.into_iter().map(constraint_from_agent).collect(),
        kill_timeout: (t.kill_timeout_secs != 0).then(|| secs_to_pb(u64::from(t.kill_timeout_secs))),
        user: t.user,
    }
}

fn constraint_to_agent(c: pb::Constraint) -> agent_pb::Constraint {
    agent_pb::Constraint { attribute: c.attribute, operator: operator_word(c.operator), value: c.value }
}

fn constraint_from_agent(c: agent_pb::Constraint) -> pb::Constraint {
    pb::Constraint { attribute: c.attribute, operator: operator_number(&c.operator), value: c.value }
}

fn affinity_to_agent(a: pb::Affinity) -> agent_pb::Affinity {
    agent_pb::Affinity { attribute: a.attribute, operator: operator_word(a.operator), value: a.value, weight: a.weight }
}

fn affinity_from_agent(a: agent_pb::Affinity) -> pb::Affinity {
    pb::Affinity { attribute: a.attribute, operator: operator_number(&a.operator), value: a.value, weight: a.weight }
}

/// The word for an operator; empty for one this build does not know (the job is then invalid
/// for the reader too, as it is here).
fn operator_word(number: i32) -> String {
    constraint_operator_from_pb(number).map_or_else(String::new, |o| o.as_str().to_string())
}

fn operator_number(word: &str) -> i32 {
    ConstraintOperator::parse(word).map_or(0, |o| constraint_operator_to_pb(o).into())
}

fn service_to_agent(s: pb::Service) -> agent_pb::Service {
    agent_pb::Service {
        name: s.name,
        task: s.task,
        port: s.port,
        tags: s.tags,
        meta: s.meta,
        address_mode: match address_mode_from_pb(s.address_mode) {
            Some(mode) if s.address_mode != 0 => mode.as_str().to_string(),
            _ => String::new(),
        },
        checks: s.checks.into_iter().map(check_to_agent).collect(),
    }
}

fn service_from_agent(s: agent_pb::Service) -> pb::Service {
    pb::Service {
        name: s.name,
        task: s.task,
        port: s.port,
        tags: s.tags,
        meta: s.meta,
        address_mode: AddressMode::parse(&s.address_mode).map_or(0, |m| address_mode_to_pb(m).into()),
        checks: s.checks.into_iter().map(check_from_agent).collect(),
    }
}

fn check_to_agent(c: pb::Check) -> agent_pb::Check {
    let check_type = crate::convert::check_type_word(c.r#type);
    agent_pb::Check {
        name: c.name,
        r#type: check_type.to_string(),
        port: c.port,
        interval_ms: millis(c.interval),
        timeout_ms: millis(c.timeout),
        initial_status: check_status_from_pb(c.initial_status).map_or_else(String::new, |s| s.as_str().to_string()),
        success_before_passing: c.success_before_passing,
        failures_before_critical: c.failures_before_critical,
        check_restart: c.check_restart.map(|r| agent_pb::CheckRestart {
            limit: r.limit,
            grace_ms: millis(r.grace),
            ignore_warnings: r.ignore_warnings,
        }),
        path: c.path,
        method: c.method,
        headers: c.headers,
        grpc_service: c.grpc_service,
        script_task: c.script_task,
        command: c.command,
        args: c.args,
    }
}

fn check_from_agent(c: agent_pb::Check) -> pb::Check {
    let check_type = match c.r#type.as_str() {
        "http" => pb::CheckType::Http,
        "tcp" => pb::CheckType::Tcp,
        "grpc" => pb::CheckType::Grpc,
        "script" => pb::CheckType::Script,
        _ => pb::CheckType::Unspecified,
    };
    pb::Check {
        name: c.name,
        r#type: check_type.into(),
        port: c.port,
        interval: Some(millis_to_pb(c.interval_ms)),
        timeout: Some(millis_to_pb(c.timeout_ms)),
        initial_status: CheckStatus::parse(&c.initial_status).map_or(0, |s| check_status_to_pb(s).into()),
        success_before_passing: c.success_before_passing,
        failures_before_critical: c.failures_before_critical,
        check_restart: c.check_restart.map(|r| pb::CheckRestart {
            limit: r.limit,
            grace: Some(millis_to_pb(r.grace_ms)),
            ignore_warnings: r.ignore_warnings,
        }),
        path: c.path,
        method: c.method,
        headers: c.headers,
        grpc_service: c.grpc_service,
        script_task: c.script_task,
        command: c.command,
        args: c.args,
    }
}

/// Whole seconds of a length `job_to_pb` wrote (in whole seconds); unset: 0.
fn secs(d: Option<prost_types::Duration>) -> u64 {
    seconds_of(d.as_ref())
}

fn secs32(d: Option<prost_types::Duration>) -> u32 {
    u32::try_from(secs(d)).unwrap_or(u32::MAX)
}

/// Whole milliseconds of a length `job_to_pb` wrote (in whole milliseconds); unset: 0.
fn millis(d: Option<prost_types::Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.seconds).unwrap_or(0).saturating_mul(1000) + u64::try_from(d.nanos / 1_000_000).unwrap_or(0)
    })
}
