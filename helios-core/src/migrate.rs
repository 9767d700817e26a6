//! Draining a node in waves (Nomad's `migrate` block): a service group's allocations leave a
//! draining node at most `max_parallel` at a time, each wave once the replacements of the last
//! are healthy, so a drain never takes more of a service down than its owner allows.

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, Allocation, TaskRunState};
use crate::service::checks_passing_since;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MigrateStrategy {
    /// Allocations of the group that may be moving (evicted, or placed and not yet healthy) at once.
    pub max_parallel: u32,
    pub health_check: HealthCheck,
    /// How long every task of a new allocation must have run to count as healthy.
    pub min_healthy_time_secs: u64,
    /// A new allocation not healthy by then counts as unhealthy, and no longer holds the drain.
    pub healthy_deadline_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthCheck {
    /// Nomad's default: the tasks' states, and every service check of the allocation passing
    /// (`crate::service`), all for `min_healthy_time`. A group without checks: task states.
    Checks,
    /// Every task running, none failed, for `min_healthy_time`.
    TaskStates,
    /// An operator says (`deployment health`); only for an update, never a drain. (Format 9.)
    Manual,
}

impl HealthCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheck::Checks => "checks",
            HealthCheck::TaskStates => "task_states",
            HealthCheck::Manual => "manual",
        }
    }

    pub fn parse(name: &str) -> Option<HealthCheck> {
        match name {
            "checks" => Some(HealthCheck::Checks),
            "task_states" => Some(HealthCheck::TaskStates),
            "manual" => Some(HealthCheck::Manual),
            _ => None,
        }
    }
}

impl Default for MigrateStrategy {
    /// Nomad's defaults: one at a time, healthy after 10 s, unhealthy after 5 minutes.
    fn default() -> MigrateStrategy {
        MigrateStrategy {
            max_parallel: 1,
            health_check: HealthCheck::Checks,
            min_healthy_time_secs: 10,
            healthy_deadline_secs: 300,
        }
    }
}

impl MigrateStrategy {
    /// Nomad's rules, as (field, problem); field names as in the job file.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_parallel == 0 {
            out.push(("max_parallel", "must be at least 1 (0 would never move anything)".to_string()));
        }
        if self.healthy_deadline_secs == 0 {
            out.push(("healthy_deadline", "must be more than 0".to_string()));
        }
        if self.min_healthy_time_secs >= self.healthy_deadline_secs {
            out.push((
                "min_healthy_time",
                format!(
                    "must be less than healthy_deadline ({}s), got {}s",
                    self.healthy_deadline_secs, self.min_healthy_time_secs
                ),
            ));
        }
        out
    }

    /// Where `alloc` stands, at `now`: healthy once every task has run, and (health by checks)
    /// its `checks` service checks have passed, for `min_healthy_time` (a restart, or a check
    /// that stops passing, starts the time again); unhealthy when it failed, or is not healthy
    /// by its `healthy_deadline`; pending otherwise. Start and check times come from the agent's
    /// clock; one behind the servers' cannot make a task look older than its allocation.
    pub fn health(&self, alloc: &Allocation, now: Timestamp, checks: usize) -> Health {
        let deadline = Timestamp(alloc.created_at.0.saturating_add(self.healthy_deadline_secs.saturating_mul(1000)));
        let min_healthy = self.min_healthy_time_secs.saturating_mul(1000);
        if alloc.client_status == AllocClientStatus::Failed {
            return Health::Unhealthy;
        }
        if self.health_check == HealthCheck::Manual {
            // An operator's verdict, kept by the deployment, decides; until then, pending (no
            // report of this allocation changes that, so looked at again rarely).
            return Health::Pending { check_at: Timestamp(now.0.saturating_add(MANUAL_POLL_MS)) };
        }
        // A task waiting to restart reports `failed`, and is not running.
        let running = !alloc.task_states.is_empty()
            && alloc.client_status == AllocClientStatus::Running
            && alloc.task_states.values().all(|t| t.state == TaskRunState::Running && !t.failed);
        let started = alloc.task_states.values().map(|t| t.started_at).collect::<Option<Vec<_>>>();
        let passing_since = match (self.health_check, checks) {
            (HealthCheck::TaskStates | HealthCheck::Manual, _) | (HealthCheck::Checks, 0) => Some(Timestamp(0)),
            (HealthCheck::Checks, expected) => checks_passing_since(&alloc.services, expected),
        };
        if let (true, Some(started), Some(passing_since)) = (running, started, passing_since) {
            let last_start =
                started.iter().map(|t| t.0).max().unwrap_or(0).max(alloc.created_at.0).max(passing_since.0);
            let healthy_at = Timestamp(last_start.saturating_add(min_healthy));
            if healthy_at <= now {
                return Health::Healthy;
            }
            return Health::Pending { check_at: healthy_at };
        }
        if now >= deadline {
            return Health::Unhealthy;
        }
        // Not running yet: looked at again after a while (its reports do not wake the scheduler).
        let poll = Timestamp(now.0.saturating_add(min_healthy.max(1000)));
        Health::Pending { check_at: poll.min(deadline) }
    }
}

/// How often an allocation whose health an operator sets is looked at again.
const MANUAL_POLL_MS: u64 = 60_000;

/// An allocation's health as a drain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not yet: look again then.
    Pending {
        check_at: Timestamp,
    },
    /// Failed, or not healthy by its deadline.
    Unhealthy,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alloc::TaskState;

    fn alloc(created: u64, started: Option<u64>, state: TaskRunState) -> Allocation {
        let mut a = Allocation::for_test("a", "n");
        a.created_at = Timestamp(created);
        a.client_status =
            if state == TaskRunState::Running { AllocClientStatus::Running } else { AllocClientStatus::Pending };
        a.task_states = BTreeMap::from([(
            "t".to_string(),
            TaskState {
                state,
                failed: false,
                restarts: 0,
                started_at: started.map(Timestamp),
                finished_at: None,
                events: vec![],
            },
        )]);
        a
    }

    #[test]
    fn healthy_after_running_for_min_healthy_time_unhealthy_past_the_deadline() {
        let m = MigrateStrategy { min_healthy_time_secs: 10, healthy_deadline_secs: 60, ..Default::default() };
        let running = alloc(0, Some(5_000), TaskRunState::Running);
        assert_eq!(m.health(&running, Timestamp(10_000), 0), Health::Pending { check_at: Timestamp(15_000) });
        assert_eq!(m.health(&running, Timestamp(15_000), 0), Health::Healthy);
        let starting = alloc(0, None, TaskRunState::Pending);
        assert_eq!(m.health(&starting, Timestamp(1_000), 0), Health::Pending { check_at: Timestamp(11_000) });
        assert_eq!(m.health(&starting, Timestamp(55_000), 0), Health::Pending { check_at: Timestamp(60_000) });
        assert_eq!(m.health(&starting, Timestamp(60_000), 0), Health::Unhealthy);
        let mut failed = alloc(0, Some(1_000), TaskRunState::Running);
        failed.client_status = AllocClientStatus::Failed;
        assert_eq!(m.health(&failed, Timestamp(30_000), 0), Health::Unhealthy);
    }

    #[test]
    fn health_by_checks_waits_for_every_check_to_pass_for_min_healthy_time() {
        use crate::service::{CheckState, CheckStatus, ServiceRegistration};
        let m = MigrateStrategy { min_healthy_time_secs: 10, healthy_deadline_secs: 60, ..Default::default() };
        let mut a = alloc(0, Some(5_000), TaskRunState::Running);
        assert_eq!(m.health(&a, Timestamp(20_000), 1), Health::Pending { check_at: Timestamp(30_000) }, "unregistered");
        let check =
            |status, since| CheckState { name: "c".into(), status, output: String::new(), since: Timestamp(since) };
        let registered = |status, since| ServiceRegistration {
            service: "web".into(),
            task: None,
            address: "127.0.0.1".into(),
            port: 80,
            checks: vec![check(status, since)],
        };
        a.services = vec![registered(CheckStatus::Critical, 6_000)];
        assert_eq!(m.health(&a, Timestamp(20_000), 1), Health::Pending { check_at: Timestamp(30_000) });
        assert_eq!(m.health(&a, Timestamp(60_000), 1), Health::Unhealthy, "never passed by the deadline");
        a.services = vec![registered(CheckStatus::Passing, 12_000)];
        assert_eq!(m.health(&a, Timestamp(20_000), 1), Health::Pending { check_at: Timestamp(22_000) });
        assert_eq!(m.health(&a, Timestamp(22_000), 1), Health::Healthy);
        let by_tasks = MigrateStrategy { health_check: HealthCheck::TaskStates, ..m };
        a.services = vec![registered(CheckStatus::Critical, 6_000)];
        assert_eq!(by_tasks.health(&a, Timestamp(15_000), 1), Health::Healthy, "task_states ignores checks");
    }

    #[test]
    fn nomads_rules_by_field() {
        assert_eq!(MigrateStrategy::default().problems(), []);
        let bad = MigrateStrategy { max_parallel: 0, min_healthy_time_secs: 400, ..Default::default() };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["max_parallel", "min_healthy_time"]);
    }
}
