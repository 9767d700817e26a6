//! Services and their health checks (Nomad's `service` and `check` blocks, with `provider =
//! "nomad"`): what a group declares, what its agent registers when the tasks run, and the pure
//! rules the agent's check runner follows (when a check turns passing or critical, when
//! `check_restart` restarts a task).
//!
//! A registration lives on its allocation (`Allocation::services`), written through Raft by the
//! agent's reports: the catalog is the running allocations' registrations, so it cannot
//! disagree with what runs, and it leaves with the allocation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The node attribute ("1") of agents that register services and run their checks: one of an
/// older build would run the tasks and drop the services unseen, so such groups are never
/// placed there.
pub const SERVICES_ATTRIBUTE: &str = "helios.services";

/// A service a group (or one of its tasks) offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The task whose `service` block it is; none for a group's own. A group service's script
    /// checks name their task instead (`Check::task`).
    pub task: Option<String>,
    /// The port it is reached on: a label of the group's ports or of a docker task's, or a number.
    /// None: registered with the node's address and port 0 (Nomad allows a portless service).
    pub port: Option<String>,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub address_mode: AddressMode,
    pub checks: Vec<Check>,
}

/// Which address a service is registered with. Nomad also has `driver` and `alloc` (a
/// container's or an allocation network's own address); Helios tasks are reached through the
/// host, so those are refused by the job file reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressMode {
    /// Nomad's default: the host's address here.
    Auto,
    Host,
}

impl AddressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressMode::Auto => "auto",
            AddressMode::Host => "host",
        }
    }

    pub fn parse(name: &str) -> Option<AddressMode> {
        match name {
            "auto" => Some(AddressMode::Auto),
            "host" => Some(AddressMode::Host),
            _ => None,
        }
    }
}

/// A health check the agent runs against one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Check {
    /// Unique within its service.
    pub name: String,
    pub kind: CheckKind,
    /// Overrides the service's port (a label or a number).
    pub port: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Its status until its first result (Nomad's default: critical).
    pub initial_status: CheckStatus,
    /// Consecutive successes before it turns passing (0 and 1: the first).
    pub success_before_passing: u32,
    /// Consecutive failures before it turns critical (0 and 1: the first).
    pub failures_before_critical: u32,
    pub check_restart: Option<CheckRestart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckKind {
    /// An HTTP request to the instance: 2xx passing, 429 warning, anything else critical.
    Http { path: String, method: String, headers: BTreeMap<String, Vec<String>> },
    /// A TCP connection to the instance: passing when it is accepted.
    Tcp,
    /// grpc.health.v1's `Check` for `service` (empty: the whole server): SERVING is passing.
    Grpc { service: String },
    /// A command in the task's environment (`task`: a group service's names it): exit 0
    /// passing, 1 warning, anything else critical.
    Script { task: Option<String>, command: String, args: Vec<String> },
}

impl CheckKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc { .. } => "grpc",
            CheckKind::Script { .. } => "script",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    pub fn parse(name: &str) -> Option<CheckStatus> {
        match name {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// Restarts the task when its check stays unhealthy (Nomad's `check_restart`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckRestart {
    /// Consecutive unhealthy results that restart the task (at least 1).
    pub limit: u32,
    /// Results within this time of the task's start are not counted.
    pub grace_ms: u64,
    /// Warnings count as healthy.
    pub ignore_warnings: bool,
}

impl CheckRestart {
    /// Nomad's `grace` default.
    pub const DEFAULT_GRACE_MS: u64 = 1_000;
}

/// One running instance of a service, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRegistration {
    pub service: String,
    pub task: Option<String>,
    pub address: String,
    /// 0 for a service without a port.
    pub port: u16,
    /// Its checks' states, in the service's order.
    pub checks: Vec<CheckState>,
}

impl ServiceRegistration {
    /// Healthy when every check passes (a service without checks is healthy while it runs).
    pub fn is_healthy(&self) -> bool {
        self.checks.iter().all(|c| c.status == CheckStatus::Passing)
    }
}

/// An agent's report of one allocation's registrations (`Command::ReportServices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocServices {
    pub alloc_id: String,
    pub registrations: Vec<ServiceRegistration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    pub name: String,
    pub status: CheckStatus,
    /// What the last result said (a status line, an error, a script's output), truncated.
    pub output: String,
    /// When it took this status (the agent's clock).
    pub since: Timestamp,
}

/// The longest check output kept in a registration (the rest is cut).
pub const MAX_CHECK_OUTPUT: usize = 512;

/// Cuts a check's output to `MAX_CHECK_OUTPUT` bytes, on a character boundary.
pub fn cut_output(text: &mut String) {
    if text.len() > MAX_CHECK_OUTPUT {
        let end = (0..=MAX_CHECK_OUTPUT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
    }
}

/// A check's status as results come in: it turns passing after `success_before_passing`
/// successes in a row, critical after `failures_before_critical` failures in a row; a warning
/// takes effect at once, as Consul's and Nomad's counters do.
#[derive(Debug, Clone)]
pub struct CheckCounter {
    pub status: CheckStatus,
    successes: u32,
    failures: u32,
    success_before_passing: u32,
    failures_before_critical: u32,
}

impl CheckCounter {
    pub fn new(check: &Check) -> CheckCounter {
        CheckCounter {
            status: check.initial_status,
            successes: 0,
            failures: 0,
            success_before_passing: check.success_before_passing,
            failures_before_critical: check.failures_before_critical,
        }
    }

    /// Goes on from `status`, which an earlier agent's counter reached for the same run of the
    /// task (the counts in a row start again).
    pub fn resumed(check: &Check, status: CheckStatus) -> CheckCounter {
        CheckCounter { status, ..CheckCounter::new(check) }
    }

    /// Takes one result; returns the new status when it changed.
    pub fn observe(&mut self, result: CheckStatus) -> Option<CheckStatus> {
        let next = match result {
            CheckStatus::Passing => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                (self.successes >= self.success_before_passing).then_some(CheckStatus::Passing)
            }
            CheckStatus::Warning => {
                self.successes = 0;
                self.failures = 0;
                Some(CheckStatus::Warning)
            }
            CheckStatus::Critical => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                (self.failures >= self.failures_before_critical).then_some(CheckStatus::Critical)
            }
        };
        match next {
            Some(status) if status != self.status => {
                self.status = status;
                Some(status)
            }
            _ => None,
        }
    }
}

/// Counts a check's unhealthy results for `check_restart`.
#[derive(Debug, Clone)]
pub struct RestartCounter {
    policy: CheckRestart,
    unhealthy: u32,
}

impl RestartCounter {
    pub fn new(policy: CheckRestart) -> RestartCounter {
        RestartCounter { policy, unhealthy: 0 }
    }

    /// Takes the check's status after a result, `since_start_ms` after the task (re)started;
    /// true when the task must be restarted now (the count starts again).
    pub fn observe(&mut self, status: CheckStatus, since_start_ms: u64) -> bool {
        let unhealthy = match status {
            CheckStatus::Passing => false,
            CheckStatus::Warning => !self.policy.ignore_warnings,
            CheckStatus::Critical => true,
        };
        if !unhealthy || since_start_ms < self.policy.grace_ms {
            self.unhealthy = 0;
            return false;
        }
        self.unhealthy += 1;
        if self.unhealthy >= self.policy.limit.max(1) {
            self.unhealthy = 0;
            return true;
        }
        false
    }
}

/// For a deployment or drain that judges health by checks: when every check of `registrations`
/// has passed since (the latest of their `since`), if there are `expected` checks and all pass.
pub fn checks_passing_since(registrations: &[ServiceRegistration], expected: usize) -> Option<Timestamp> {
    let checks: Vec<&CheckState> = registrations.iter().flat_map(|r| &r.checks).collect();
    if checks.len() != expected || checks.iter().any(|c| c.status != CheckStatus::Passing) {
        return None;
    }
    Some(checks.iter().map(|c| c.since).max().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(success_before_passing: u32, failures_before_critical: u32) -> Check {
        Check {
            name: "c".into(),
            kind: CheckKind::Tcp,
            port: None,
            interval_ms: 1000,
            timeout_ms: 1000,
            initial_status: CheckStatus::Critical,
            success_before_passing,
            failures_before_critical,
            check_restart: None,
        }
    }

    #[test]
    fn a_check_turns_passing_and_critical_after_its_counts_in_a_row() {
        let mut c = CheckCounter::new(&check(3, 2));
        assert_eq!(c.observe(CheckStatus::Passing), None);
        assert_eq!(c.observe(CheckStatus::Passing), None);
        assert_eq!(c.observe(CheckStatus::Passing), Some(CheckStatus::Passing));
        assert_eq!(c.observe(CheckStatus::Critical), None, "one failure of two");
        assert_eq!(c.observe(CheckStatus::Passing), None, "a success resets the failures");
        assert_eq!(c.observe(CheckStatus::Critical), None);
        assert_eq!(c.observe(CheckStatus::Critical), Some(CheckStatus::Critical));
        assert_eq!(c.observe(CheckStatus::Warning), Some(CheckStatus::Warning), "a warning is at once");
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        let mut long = "é".repeat(MAX_CHECK_OUTPUT);
        cut_output(&mut long);
        assert_eq!(long.len(), MAX_CHECK_OUTPUT, "256 two-byte characters");
        let mut odd = format!("a{}", "é".repeat(MAX_CHECK_OUTPUT));
        cut_output(&mut odd);
        assert_eq!(odd.len(), MAX_CHECK_OUTPUT - 1, "not inside a character");
        let mut short = "ok".to_string();
        cut_output(&mut short);
        assert_eq!(short, "ok");
    }

    #[test]
    fn zero_counts_mean_the_first_result() {
        let mut c = CheckCounter::new(&check(0, 0));
        assert_eq!(c.observe(CheckStatus::Passing), Some(CheckStatus::Passing));
        assert_eq!(c.observe(CheckStatus::Critical), Some(CheckStatus::Critical));
    }

    #[test]
    fn check_restart_counts_unhealthy_results_after_the_grace() {
        let mut r = RestartCounter::new(CheckRestart { limit: 2, grace_ms: 5_000, ignore_warnings: true });
        assert!(!r.observe(CheckStatus::Critical, 1_000), "in the grace");
        assert!(!r.observe(CheckStatus::Critical, 4_999));
        assert!(!r.observe(CheckStatus::Critical, 6_000));
        assert!(!r.observe(CheckStatus::Warning, 7_000), "a warning ignored resets the count");
        assert!(!r.observe(CheckStatus::Critical, 8_000));
        assert!(r.observe(CheckStatus::Critical, 9_000));
        assert!(!r.observe(CheckStatus::Critical, 10_000), "the count starts again");
        let mut strict = RestartCounter::new(CheckRestart { limit: 1, grace_ms: 0, ignore_warnings: false });
        assert!(strict.observe(CheckStatus::Warning, 0));
    }

    #[test]
    fn health_by_checks_needs_every_expected_check_passing() {
        let state =
            |status, since| CheckState { name: "c".into(), status, output: String::new(), since: Timestamp(since) };
        let reg = |checks| ServiceRegistration {
            service: "web".into(),
            task: None,
            address: "127.0.0.1".into(),
            port: 80,
            checks,
        };
        let both = [reg(vec![state(CheckStatus::Passing, 5)]), reg(vec![state(CheckStatus::Passing, 9)])];
        assert_eq!(checks_passing_since(&both, 2), Some(Timestamp(9)));
        assert_eq!(checks_passing_since(&both[..1], 2), None, "one not registered yet");
        let one_failing = [reg(vec![state(CheckStatus::Passing, 5), state(CheckStatus::Critical, 6)])];
        assert_eq!(checks_passing_since(&one_failing, 2), None);
        assert_eq!(checks_passing_since(&[], 0), Some(Timestamp(0)));
    }
}
