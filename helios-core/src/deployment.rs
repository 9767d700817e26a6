//! Deployments (Nomad's): the replicated record of one job version's rollout. A service job
//! version whose groups roll (`update { max_parallel > 0 }`) gets one when it is registered.
//! The scheduler reads it (canaries, paused, failed: `scheduler::reconcile`); the leader's
//! deployment watcher judges its allocations' health (`Deployment::observe`) and ends it:
//! successful once every group is healthy (the version is then marked stable), failed when its
//! progress deadline passes with no allocation becoming healthy (or, with no progress deadline,
//! on the first unhealthy allocation), and then, with `auto_revert`, the last stable version is
//! registered again. Operators promote, pause, resume and fail it
//! (`Deployment::act`). Every change goes through Raft, so a new leader's watcher goes on from
//! the same record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, Allocation};
use crate::job::{Job, TaskGroup};
use crate::migrate::{Health, HealthCheck};
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Deployment {
    /// The id of the evaluation its version's registration made (the state machine creates
    /// both in one entry).
    pub id: String,
    pub job_name: String,
    pub job_version: u64,
    pub status: DeploymentStatus,
    pub status_description: String,
    /// Its rolling groups, by name.
    pub groups: BTreeMap<String, DeploymentGroup>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// Counts the state machine's writes of it: the watcher's update applies only over the
    /// revision it was computed from, so it cannot undo an operator's change made meanwhile.
    pub revision: u64,
}

crate::versioned!(Deployment = 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentStatus {
    Running,
    Paused,
    Successful,
    Failed,
    /// A newer version was registered, or the job stopped, while it ran.
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::Successful => "successful",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, DeploymentStatus::Running | DeploymentStatus::Paused)
    }
}

/// One task group's part of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentGroup {
    pub desired_total: u32,
    /// Canaries to place before promotion: the group's `canary` when the version replaces
    /// allocations that run, 0 for a first version (or when the watcher finds nothing to replace).
    pub desired_canaries: u32,
    pub promoted: bool,
    pub auto_revert: bool,
    pub auto_promote: bool,
    pub progress_deadline_secs: u64,
    /// When it fails unless another allocation becomes healthy first; `None`: no deadline (0, or
    /// waiting: paused, or every canary healthy and waiting for promotion).
    pub require_progress_by: Option<Timestamp>,
    /// The version's allocations placed in the group (the watcher counts them).
    pub placed: u32,
    /// The canaries placed, by allocation id (while not promoted: every new allocation).
    pub placed_canaries: Vec<String>,
    /// Health verdicts of the version's allocations, by id: the watcher's (by the health rule of
    /// the group's `update`), or an operator's with `health_check = "manual"`. Set once.
    pub health: BTreeMap<String, bool>,
}

impl DeploymentGroup {
    pub fn healthy(&self) -> usize {
        self.health.values().filter(|h| **h).count()
    }

    pub fn unhealthy(&self) -> usize {
        self.health.values().filter(|h| !**h).count()
    }

    /// Waiting for promotion: canaries wanted and not promoted yet.
    pub fn awaits_promotion(&self) -> bool {
        self.desired_canaries > 0 && !self.promoted
    }

    fn canaries_healthy(&self) -> bool {
        let healthy = self.placed_canaries.iter().filter(|id| self.health.get(*id) == Some(&true)).count();
        healthy >= self.desired_canaries as usize
    }

    fn done(&self) -> bool {
        !self.awaits_promotion() && self.healthy() >= self.desired_total as usize
    }
}

/// What an operator asks of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentAction {
    /// Promote the canaries of these groups (every group's when empty).
    Promote {
        groups: Vec<String>,
    },
    Pause,
    Resume,
    Fail,
    /// Health verdicts for allocations of a deployment with `health_check = "manual"`.
    SetHealth {
        healthy: Vec<String>,
        unhealthy: Vec<String>,
    },
}

impl DeploymentAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeploymentAction::Promote { .. } => "promote",
            DeploymentAction::Pause => "pause",
            DeploymentAction::Resume => "resume",
            DeploymentAction::Fail => "fail",
            DeploymentAction::SetHealth { .. } => "set-health",
        }
    }
}

pub const DESCRIPTION_RUNNING: &str = "Deployment is running";
pub const DESCRIPTION_NEEDS_PROMOTION: &str = "Deployment is running but requires manual promotion";
pub const DESCRIPTION_SUCCESSFUL: &str = "Deployment completed successfully";
pub const DESCRIPTION_UNHEALTHY: &str = "Failed due to unhealthy allocations";
pub const DESCRIPTION_PROGRESS_DEADLINE: &str = "Failed due to progress deadline";
pub const DESCRIPTION_FAILED_BY_USER: &str = "Deployment marked as failed";
pub const DESCRIPTION_PAUSED: &str = "Deployment is paused";

fn after(now: Timestamp, secs: u64) -> Timestamp {
    Timestamp(now.0.saturating_add(secs.saturating_mul(1000)))
}

impl Deployment {
    /// The deployment a registration of `job` (a new version) starts, if its groups roll: every
    /// group with a rolling update, canaries where `allocs` (the job's) hold room for an older
    /// version of the group. `None` for a job whose groups do not roll.
    pub fn for_version(job: &Job, id: &str, now: Timestamp, allocs: &[Allocation]) -> Option<Deployment> {
        if job.job_type != crate::job::JobType::Service || job.stopped {
            return None;
        }
        let replaces = |g: &TaskGroup| {
            allocs.iter().any(|a| a.task_group == g.name && a.job_version < job.version && a.reserves_room())
        };
        let groups: BTreeMap<String, DeploymentGroup> = job
            .task_groups
            .iter()
            .filter(|g| g.update.has_deployment())
            .map(|g| {
                let u = &g.update;
                let group = DeploymentGroup {
                    desired_total: g.count,
                    desired_canaries: if replaces(g) { u.canary } else { 0 },
                    promoted: false,
                    auto_revert: u.auto_revert,
                    auto_promote: u.auto_promote,
                    progress_deadline_secs: u.progress_deadline_secs,
                    require_progress_by: (u.progress_deadline_secs > 0).then(|| after(now, u.progress_deadline_secs)),
                    placed: 0,
                    placed_canaries: Vec::new(),
                    health: BTreeMap::new(),
                };
                (g.name.clone(), group)
            })
            .collect();
        if groups.is_empty() {
            return None;
        }
        let mut deployment = Deployment {
            id: id.to_string(),
            job_name: job.name.clone(),
            job_version: job.version,
            status: DeploymentStatus::Running,
            status_description: String::new(),
            groups,
            created_at: now,
            modified_at: now,
            revision: 0,
        };
        deployment.status_description = deployment.running_description();
        Some(deployment)
    }

    fn running_description(&self) -> String {
        if self.groups.values().any(|g| g.awaits_promotion() && g.canaries_healthy() && !g.auto_promote) {
            DESCRIPTION_NEEDS_PROMOTION.to_string()
        } else {
            DESCRIPTION_RUNNING.to_string()
        }
    }

    /// Whether any group reverts to the last stable version when it fails.
    pub fn auto_revert(&self) -> bool {
        self.groups.values().any(|g| g.auto_revert)
    }

    /// The watcher's look at the deployment (`job` is its version's spec, `allocs` every
    /// allocation of the job) at `now`: the next state, when anything changed. Health verdicts
    /// follow the group's health rule (`MigrateStrategy::health`, the same the scheduler rolls
    /// by); then it fails on an unhealthy allocation or a missed progress deadline, promotes
    /// itself (`auto_promote`), or succeeds. `checks(alloc)`: the service checks the allocation
    /// must pass. `needs_canaries(group)`: whether an allocation of an older spec still runs in it.
    pub fn observe(
        &self,
        job: &Job,
        allocs: &[&Allocation],
        now: Timestamp,
        checks: impl Fn(&Allocation) -> usize,
        needs_canaries: impl Fn(&TaskGroup) -> bool,
    ) -> Option<Deployment> {
        if !self.status.is_active() || job.version != self.job_version {
            return None;
        }
        let mut next = self.clone();
        for (name, group) in next.groups.iter_mut() {
            let Some(spec) = job.task_groups.iter().find(|g| &g.name == name) else { continue };
            let rule = spec.update.health_rule();
            let mine: Vec<&&Allocation> =
                allocs.iter().filter(|a| &a.task_group == name && a.job_version == self.job_version).collect();
            group.placed = u32::try_from(mine.len()).unwrap_or(u32::MAX);
            let canaries = mine.iter().filter(|a| a.canary && a.deployment_id.as_deref() == Some(self.id.as_str()));
            group.placed_canaries = canaries.map(|a| a.id.clone()).collect();
            if group.awaits_promotion() && !needs_canaries(spec) {
                // Nothing of an older spec runs (only counts changed, or what ran was lost and
                // replaced): no more canaries to try, the ones placed are all there will be.
                let placed = u32::try_from(group.placed_canaries.len()).unwrap_or(u32::MAX);
                group.desired_canaries = group.desired_canaries.min(placed);
            }
            let mut progressed = false;
            for alloc in &mine {
                // Stopped or lost with its node, it was never judged: no verdict (Nomad's rule).
                let ended_unfailed = alloc.is_terminal() && alloc.client_status != AllocClientStatus::Failed;
                if group.health.contains_key(&alloc.id) || ended_unfailed {
                    continue;
                }
                let verdict = match rule.health(alloc, now, checks(alloc)) {
                    Health::Healthy if rule.health_check != HealthCheck::Manual => Some(true),
                    Health::Unhealthy => Some(false),
                    _ => None,
                };
                if let Some(healthy) = verdict {
                    group.health.insert(alloc.id.clone(), healthy);
                    progressed |= healthy;
                }
            }
            if progressed && group.progress_deadline_secs > 0 && self.status == DeploymentStatus::Running {
                group.require_progress_by = Some(after(now, group.progress_deadline_secs));
            }
        }
        next.decide(now);
        (next != *self).then(|| next.touched(now))
    }

    /// The status that follows from the groups' verdicts and deadlines (a running deployment).
    fn decide(&mut self, now: Timestamp) {
        if self.status != DeploymentStatus::Running {
            return;
        }
        // Nomad's rule: without a progress deadline the first unhealthy allocation fails the
        // deployment; with one, a failed allocation is rescheduled (by the group's policy) and
        // only a deadline that passes without progress fails it.
        if self.groups.values().any(|g| g.unhealthy() > 0 && g.progress_deadline_secs == 0) {
            return self.end(DeploymentStatus::Failed, DESCRIPTION_UNHEALTHY);
        }
        // Every canary healthy and waiting for an operator: no deadline runs meanwhile.
        for group in self.groups.values_mut() {
            if group.awaits_promotion() && group.canaries_healthy() {
                group.require_progress_by = None;
            }
        }
        let missed = |g: &DeploymentGroup| !g.done() && g.require_progress_by.is_some_and(|by| by <= now);
        if self.groups.values().any(missed) {
            return self.end(DeploymentStatus::Failed, DESCRIPTION_PROGRESS_DEADLINE);
        }
        let waiting: Vec<&DeploymentGroup> = self.groups.values().filter(|g| g.awaits_promotion()).collect();
        if !waiting.is_empty() && waiting.iter().all(|g| g.auto_promote && g.canaries_healthy()) {
            self.promote_all(now);
        }
        if self.groups.values().all(DeploymentGroup::done) {
            return self.end(DeploymentStatus::Successful, DESCRIPTION_SUCCESSFUL);
        }
        self.status_description = self.running_description();
    }

    fn promote_all(&mut self, now: Timestamp) {
        for group in self.groups.values_mut().filter(|g| g.awaits_promotion()) {
            group.promoted = true;
            if group.progress_deadline_secs > 0 {
                group.require_progress_by = Some(after(now, group.progress_deadline_secs));
            }
        }
    }

    fn end(&mut self, status: DeploymentStatus, description: &str) {
        self.status = status;
        self.status_description = description.to_string();
        for group in self.groups.values_mut() {
            group.require_progress_by = None;
        }
    }

    fn touched(mut self, now: Timestamp) -> Deployment {
        self.modified_at = now;
        self
    }

    /// Cancels a deployment that is still active (a newer version, or the job stopped).
    pub fn cancel(&mut self, why: &str, now: Timestamp) {
        if self.status.is_active() {
            self.end(DeploymentStatus::Cancelled, why);
            self.modified_at = now;
        }
    }

    /// An operator's `action`, as Nomad allows it: refused with the reason when the deployment
    /// is over, (promote) when a group's canaries are not all healthy yet, or (set health) when
    /// an allocation is not of its version (`group_of`: the group of an allocation of its version).
    pub fn act(
        &mut self,
        action: &DeploymentAction,
        now: Timestamp,
        group_of: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        if !self.status.is_active() {
            return Err(format!("deployment {} is {}: it can no longer change", self.id, self.status.as_str()));
        }
        match action {
            DeploymentAction::Promote { groups } => {
                for name in groups {
                    if !self.groups.contains_key(name) {
                        return Err(format!("deployment {} has no group {name:?}", self.id));
                    }
                }
                let chosen = |name: &String| groups.is_empty() || groups.contains(name);
                let waiting: Vec<(&String, &DeploymentGroup)> =
                    self.groups.iter().filter(|(n, g)| chosen(n) && g.awaits_promotion()).collect();
                if waiting.is_empty() {
                    return Err(format!("deployment {} has no canaries waiting for promotion", self.id));
                }
                for (name, group) in &waiting {
                    if !group.canaries_healthy() {
                        let healthy =
                            group.placed_canaries.iter().filter(|id| group.health.get(*id) == Some(&true)).count();
                        return Err(format!(
                            "group {name:?} has {healthy} of {} canaries healthy: promote once they all are",
                            group.desired_canaries
                        ));
                    }
                }
                for (name, group) in self.groups.iter_mut() {
                    if chosen(name) && group.awaits_promotion() {
                        group.promoted = true;
                        if group.progress_deadline_secs > 0 && self.status == DeploymentStatus::Running {
                            group.require_progress_by = Some(after(now, group.progress_deadline_secs));
                        }
                    }
                }
                if self.status == DeploymentStatus::Running {
                    self.decide(now);
                }
            }
            DeploymentAction::Pause => {
                self.status = DeploymentStatus::Paused;
                self.status_description = DESCRIPTION_PAUSED.to_string();
                for group in self.groups.values_mut() {
                    group.require_progress_by = None;
                }
            }
            DeploymentAction::Resume => {
                if self.status != DeploymentStatus::Paused {
                    return Err(format!("deployment {} is not paused", self.id));
                }
                self.status = DeploymentStatus::Running;
                // The deadline starts again: the pause was the operator's, not the version's.
                for group in self.groups.values_mut() {
                    if group.progress_deadline_secs > 0 {
                        group.require_progress_by = Some(after(now, group.progress_deadline_secs));
                    }
                }
                self.decide(now);
            }
            DeploymentAction::Fail => self.end(DeploymentStatus::Failed, DESCRIPTION_FAILED_BY_USER),
            DeploymentAction::SetHealth { healthy, unhealthy } => {
                let verdicts = healthy.iter().map(|id| (id, true)).chain(unhealthy.iter().map(|id| (id, false)));
                for (id, verdict) in verdicts {
                    let group = group_of(id).and_then(|name| self.groups.get_mut(&name));
                    let Some(group) = group else {
                        return Err(format!("allocation {id} is not part of deployment {}", self.id));
                    };
                    group.health.insert(id.clone(), verdict);
                    if verdict && group.progress_deadline_secs > 0 && self.status == DeploymentStatus::Running {
                        group.require_progress_by = Some(after(now, group.progress_deadline_secs));
                    }
                }
                if !unhealthy.is_empty() {
                    // An operator's unhealthy verdict fails it at once (Nomad's set-health).
                    self.end(DeploymentStatus::Failed, DESCRIPTION_UNHEALTHY);
                } else {
                    self.decide(now);
                }
            }
        }
        self.modified_at = now;
        Ok(())
    }
}
