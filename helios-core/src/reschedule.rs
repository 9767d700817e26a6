//! Rescheduling: when and where an allocation that failed is placed again (Nomad's `reschedule`
//! block). The agent's restart policy comes first; once it gives up, the allocation is failed and
//! the scheduler decides here whether its slot gets a replacement, and when.
//!
//! Every replacement of a failure carries the history of the ones before it
//! (`Allocation::reschedule_events`), so the delay grows and the attempts are counted across
//! nodes and leader changes, and the replacement avoids the nodes that failed it before.

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, Allocation};
use crate::job::{Job, JobType};
use crate::time::Timestamp;

/// How a group's failed allocations are placed again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReschedulePolicy {
    /// Reschedules allowed within `interval_secs` (ignored when `unlimited`).
    pub attempts: u32,
    pub interval_secs: u64,
    /// The wait before the first reschedule, and the unit the delay function grows from.
    pub delay_secs: u64,
    pub delay_function: DelayFunction,
    /// The longest wait (exponential and fibonacci).
    pub max_delay_secs: u64,
    pub unlimited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DelayFunction {
    Constant,
    /// Each wait twice the last.
    Exponential,
    /// Each wait the sum of the last two.
    Fibonacci,
}

impl DelayFunction {
    pub const NAMES: &'static str = "constant, exponential or fibonacci";

    pub fn as_str(self) -> &'static str {
        match self {
            DelayFunction::Constant => "constant",
            DelayFunction::Exponential => "exponential",
            DelayFunction::Fibonacci => "fibonacci",
        }
    }

    pub fn parse(name: &str) -> Option<DelayFunction> {
        match name {
            "constant" => Some(DelayFunction::Constant),
            "exponential" => Some(DelayFunction::Exponential),
            "fibonacci" => Some(DelayFunction::Fibonacci),
            _ => None,
        }
    }
}

/// Nomad's shortest delay and shortest interval: a failing task is not placed again and again
/// faster than a node can report it.
pub const MIN_DELAY_SECS: u64 = 5;
pub const MIN_INTERVAL_SECS: u64 = 15;
/// Events kept on an allocation under an unlimited policy: enough for the delay functions.
const KEPT_UNLIMITED_EVENTS: usize = 5;

impl ReschedulePolicy {
    /// Nomad's defaults: a service is placed again without limit, waiting 30 s, then twice as
    /// long each time up to an hour; a batch job once a day after 5 s; a system job never (it
    /// runs on every node already).
    pub fn default_for(job_type: JobType) -> ReschedulePolicy {
        match job_type {
            JobType::Service => ReschedulePolicy {
                attempts: 0,
                interval_secs: 0,
                delay_secs: 30,
                delay_function: DelayFunction::Exponential,
                max_delay_secs: 3600,
                unlimited: true,
            },
            JobType::Batch => ReschedulePolicy {
                attempts: 1,
                interval_secs: 24 * 3600,
                delay_secs: 5,
                delay_function: DelayFunction::Constant,
                max_delay_secs: 0,
                unlimited: false,
            },
            JobType::System => ReschedulePolicy::disabled(),
        }
    }

    /// Never reschedules (`attempts = 0`, not unlimited).
    pub fn disabled() -> ReschedulePolicy {
        ReschedulePolicy {
            attempts: 0,
            interval_secs: 0,
            delay_secs: MIN_DELAY_SECS,
            delay_function: DelayFunction::Constant,
            max_delay_secs: 0,
            unlimited: false,
        }
    }

    pub fn is_disabled(&self) -> bool {
        !self.unlimited && self.attempts == 0
    }

    /// Nomad's rules, as (field, problem); field names as in the job file.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.is_disabled() {
            return out;
        }
        if self.unlimited && self.attempts > 0 {
            out.push(("attempts", "must be 0 with unlimited = true (the two contradict each other)".into()));
        }
        if self.delay_secs < MIN_DELAY_SECS {
            out.push(("delay", format!("must be at least {MIN_DELAY_SECS}s, got {}s", self.delay_secs)));
        }
        if self.delay_function != DelayFunction::Constant && self.max_delay_secs < self.delay_secs.max(MIN_DELAY_SECS) {
            out.push((
                "max_delay",
                format!(
                    "must be at least the delay ({}s) with delay_function = {:?}, got {}s",
                    self.delay_secs.max(MIN_DELAY_SECS),
                    self.delay_function.as_str(),
                    self.max_delay_secs
                ),
            ));
        }
        if !self.unlimited {
            if self.interval_secs < MIN_INTERVAL_SECS {
                out.push(("interval", format!("must be at least {MIN_INTERVAL_SECS}s, got {}s", self.interval_secs)));
            } else if out.is_empty() {
                // The attempts must fit in the interval, waits included.
                let needed = self.total_delay_secs(self.attempts);
                if needed > self.interval_secs {
                    out.push((
                        "interval",
                        format!(
                            "{} attempts wait {needed}s in all with these delays, more than the interval ({}s)",
                            self.attempts, self.interval_secs
                        ),
                    ));
                }
            }
        }
        out
    }

    /// The sum of the first `attempts` waits, starting afresh.
    fn total_delay_secs(&self, attempts: u32) -> u64 {
        let mut events: Vec<RescheduleEvent> = Vec::new();
        let mut total = 0u64;
        for _ in 0..attempts.min(1_000) {
            let delay = self.next_delay_secs(&events, Timestamp(0));
            total = total.saturating_add(delay);
            events.push(RescheduleEvent {
                at: Timestamp(0),
                prev_alloc_id: String::new(),
                prev_node_id: String::new(),
                delay_secs: delay,
            });
        }
        total
    }

    /// The wait before the next reschedule, given the events so far and when the allocation
    /// failed. A wait that reached `max_delay` starts again from `delay` once the allocation ran
    /// longer than `max_delay` before failing (Nomad's reset: a task that ran well for a while
    /// is not punished for its old failures).
    pub fn next_delay_secs(&self, events: &[RescheduleEvent], failed_at: Timestamp) -> u64 {
        let Some(last) = events.last() else { return self.delay_secs };
        let grown = match self.delay_function {
            DelayFunction::Constant => return self.delay_secs,
            DelayFunction::Exponential => last.delay_secs.saturating_mul(2),
            DelayFunction::Fibonacci => match events.len() {
                1 => last.delay_secs,
                n => {
                    let before = events[n - 2].delay_secs;
                    // A series that was reset starts over: delay, delay, 2 delay, ...
                    if before == self.max_delay_secs && last.delay_secs == self.delay_secs {
                        last.delay_secs
                    } else {
                        last.delay_secs.saturating_add(before)
                    }
                }
            },
        };
        if grown <= self.max_delay_secs {
            return grown.max(self.delay_secs);
        }
        let ran_ms = failed_at.0.saturating_sub(last.at.0);
        if ran_ms > self.max_delay_secs.saturating_mul(1000) {
            self.delay_secs
        } else {
            self.max_delay_secs
        }
    }

    /// What to do about `failed`, the latest allocation of its slot, at `now`.
    pub fn decide(&self, failed: &Allocation, now: Timestamp) -> Reschedule {
        if self.is_disabled() {
            return Reschedule::Never("its reschedule policy allows no attempts".into());
        }
        let events = &failed.reschedule_events;
        if !self.unlimited {
            let window_start = now.0.saturating_sub(self.interval_secs.saturating_mul(1000));
            let recent = events.iter().filter(|e| e.at.0 > window_start).count();
            if recent >= self.attempts as usize {
                return Reschedule::Never(format!(
                    "rescheduled {recent} time(s) in the last {}, the policy's limit",
                    crate::time::duration_text(self.interval_secs)
                ));
            }
        }
        let failed_at = failed.failed_at();
        let delay_secs = self.next_delay_secs(events, failed_at);
        let at = Timestamp(failed_at.0.saturating_add(delay_secs.saturating_mul(1000)));
        if at > now {
            return Reschedule::At(at);
        }
        let mut history = self.kept_events(events, now);
        history.push(RescheduleEvent {
            at: now,
            prev_alloc_id: failed.id.clone(),
            prev_node_id: failed.node_id.clone(),
            delay_secs,
        });
        Reschedule::Now(history)
    }

    /// The events worth carrying: those inside the interval (limited), or the last few.
    fn kept_events(&self, events: &[RescheduleEvent], now: Timestamp) -> Vec<RescheduleEvent> {
        if self.unlimited {
            let skip = events.len().saturating_sub(KEPT_UNLIMITED_EVENTS - 1);
            return events[skip..].to_vec();
        }
        let window_start = now.0.saturating_sub(self.interval_secs.saturating_mul(1000));
        events.iter().filter(|e| e.at.0 > window_start).cloned().collect()
    }
}

/// One reschedule: when, of which allocation on which node, after what wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescheduleEvent {
    pub at: Timestamp,
    pub prev_alloc_id: String,
    pub prev_node_id: String,
    pub delay_secs: u64,
}

/// The decision for a failed allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reschedule {
    /// Place a replacement now, carrying these events (the last one is this reschedule).
    Now(Vec<RescheduleEvent>),
    /// Not before this time.
    At(Timestamp),
    /// Not at all, and why.
    Never(String),
}

/// What became, or becomes, of a failed allocation (`alloc status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followup {
    /// A later allocation took its slot.
    ReplacedBy(String),
    /// Its replacement is due then (now, if the scheduler has yet to place it).
    At(Timestamp),
    /// It is not replaced, and why.
    Never(String),
}

/// The followup of `failed` given its job and the job's allocations, at `now` (`delays`: whether
/// the cluster's format delays reschedules); None when it has not failed, or its job moved on (a
/// newer version places its slot afresh).
pub fn followup(
    failed: &Allocation,
    job: Option<&Job>,
    allocations: &[Allocation],
    delays: bool,
    now: Timestamp,
) -> Option<Followup> {
    if failed.client_status != AllocClientStatus::Failed {
        return None;
    }
    if let Some(next) = &failed.next_allocation {
        return Some(Followup::ReplacedBy(next.clone()));
    }
    // Replaced without a reschedule (by a newer version, or while the cluster was mid-upgrade).
    let later =
        allocations.iter().filter(|a| a.name == failed.name && a.created_at >= failed.created_at && a.id != failed.id);
    if let Some(next) = later.min_by_key(|a| (a.created_at, &a.id)) {
        return Some(Followup::ReplacedBy(next.id.clone()));
    }
    let Some(job) = job.filter(|j| !j.stopped) else {
        return Some(Followup::Never("its job is stopped".into()));
    };
    if job.version != failed.job_version {
        return None;
    }
    // A system job's allocation is placed again on its node by the job's own rule, not here;
    // and a cluster mid-upgrade replaces failures at once (`StateView::delays_reschedules`).
    if job.job_type == JobType::System || !delays {
        return None;
    }
    let group = job.task_groups.iter().find(|g| g.name == failed.task_group)?;
    Some(match group.reschedule.decide(failed, now) {
        Reschedule::Now(_) => Followup::At(now),
        Reschedule::At(at) => Followup::At(at),
        Reschedule::Never(why) => Followup::Never(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(function: DelayFunction, delay: u64, max: u64) -> ReschedulePolicy {
        ReschedulePolicy {
            attempts: 0,
            interval_secs: 0,
            delay_secs: delay,
            delay_function: function,
            max_delay_secs: max,
            unlimited: true,
        }
    }

    /// The waits of `n` reschedules in a row, each failing right after it started.
    fn series(p: &ReschedulePolicy, n: usize) -> Vec<u64> {
        let mut events: Vec<RescheduleEvent> = Vec::new();
        let mut clock = 0;
        for _ in 0..n {
            let delay = p.next_delay_secs(&events, Timestamp(clock));
            clock += delay * 1000;
            events.push(RescheduleEvent {
                at: Timestamp(clock),
                prev_alloc_id: String::new(),
                prev_node_id: String::new(),
                delay_secs: delay,
            });
        }
        events.iter().map(|e| e.delay_secs).collect()
    }

    #[test]
    fn delays_grow_by_their_function_up_to_the_ceiling() {
        assert_eq!(series(&policy(DelayFunction::Constant, 5, 0), 4), [5, 5, 5, 5]);
        assert_eq!(
            series(&policy(DelayFunction::Exponential, 30, 3600), 9),
            [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        );
        assert_eq!(series(&policy(DelayFunction::Fibonacci, 5, 50), 8), [5, 5, 10, 15, 25, 40, 50, 50]);
    }

    #[test]
    fn a_task_that_ran_longer_than_the_ceiling_starts_again_from_the_delay() {
        let p = policy(DelayFunction::Exponential, 10, 40);
        let capped = RescheduleEvent {
            at: Timestamp(0),
            prev_alloc_id: String::new(),
            prev_node_id: String::new(),
            delay_secs: 40,
        };
        assert_eq!(
            p.next_delay_secs(std::slice::from_ref(&capped), Timestamp(30_000)),
            40,
            "failed soon: still capped"
        );
        assert_eq!(p.next_delay_secs(&[capped], Timestamp(41_000)), 10, "ran 41 s: reset");
    }

    #[test]
    fn the_defaults_follow_nomad() {
        let service = ReschedulePolicy::default_for(JobType::Service);
        assert!(service.unlimited);
        assert_eq!(
            (service.delay_secs, service.max_delay_secs, service.delay_function),
            (30, 3600, DelayFunction::Exponential)
        );
        let batch = ReschedulePolicy::default_for(JobType::Batch);
        assert_eq!((batch.attempts, batch.interval_secs, batch.delay_secs), (1, 86_400, 5));
        assert!(ReschedulePolicy::default_for(JobType::System).is_disabled());
        for p in [service, batch] {
            assert_eq!(p.problems(), []);
        }
    }

    #[test]
    fn contradictions_and_tiny_waits_are_refused_by_field() {
        let mut p = ReschedulePolicy::default_for(JobType::Batch);
        p.delay_secs = 1;
        p.interval_secs = 10;
        let fields: Vec<&str> = p.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["delay", "interval"]);

        let mut p = ReschedulePolicy::default_for(JobType::Service);
        p.attempts = 3;
        p.max_delay_secs = 10;
        let problems = p.problems();
        assert_eq!(problems[0].0, "attempts");
        assert!(problems[1].1.contains("at least the delay (30s)"), "{problems:?}");

        // Three exponential waits from 10 s take 70 s: they do not fit in a minute.
        let p = ReschedulePolicy {
            attempts: 3,
            interval_secs: 60,
            delay_secs: 10,
            delay_function: DelayFunction::Exponential,
            max_delay_secs: 100,
            unlimited: false,
        };
        assert!(p.problems()[0].1.contains("wait 70s in all"), "{:?}", p.problems());
    }
}
