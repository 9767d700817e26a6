//! What a task group needs: which allocations to stop, which slots to fill.
//!
//! A group of `count` has slots `job.group[0]` .. `job.group[count-1]`; an allocation keeps its
//! slot's name, and a replacement takes the name of the allocation it replaces. A system job's
//! group has one slot per eligible node instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::alloc::{AllocClientStatus, AllocDesiredStatus, Allocation};
use crate::deployment::{Deployment, DeploymentStatus};
use crate::job::{Job, JobType, TaskGroup};
use crate::migrate::{Health, MigrateStrategy};
use crate::node::{Node, NodeEligibility, NodeStatus};
use crate::plan::{AllocStop, Plan};
use crate::reschedule::{Reschedule, RescheduleEvent};
use crate::time::Timestamp;

/// A system job's allocation that failed on a node is placed there again at most this many
/// times per job version; after that the node is given up on and `job status` says why. (The
/// same bound holds for a counted slot while the cluster cannot delay reschedules, see
/// `StateView::delays_reschedules`.)
pub const MAX_LEGACY_RESCHEDULES: usize = 3;

/// One allocation to place.
#[derive(Debug, Clone)]
pub struct Ask {
    pub name: String,
    /// Only on this node (system jobs).
    pub node_id: Option<String>,
    /// For a replacement of a failure: the reschedules so far, this one last. Their nodes are
    /// avoided where others fit (`select`).
    pub reschedule_events: Vec<RescheduleEvent>,
    /// A canary of the version's deployment.
    pub canary: bool,
}

pub fn alloc_name(job: &str, group: &str, index: usize) -> String {
    format!("{job}.{group}[{index}]")
}

fn slot_index(name: &str) -> Option<usize> {
    name.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
}

fn is_live(a: &Allocation) -> bool {
    a.desired_status == AllocDesiredStatus::Run && !a.client_status.is_terminal()
}

fn stop(plan: &mut Plan, alloc: &Allocation, desired: AllocDesiredStatus, lost: bool, why: &str) {
    plan.stops.push(AllocStop {
        alloc_id: alloc.id.clone(),
        desired_status: desired,
        client_status: lost.then_some(AllocClientStatus::Lost),
        description: why.to_string(),
    });
}

pub fn stop_all(existing: &[&Allocation], plan: &mut Plan, why: &str) {
    for alloc in existing.iter().filter(|a| is_live(a)) {
        stop(plan, alloc, AllocDesiredStatus::Stop, false, why);
    }
}

pub fn stop_removed_groups(job: &Job, existing: &[&Allocation], plan: &mut Plan) {
    let groups: BTreeSet<&str> = job.task_groups.iter().map(|g| g.name.as_str()).collect();
    for alloc in existing.iter().filter(|a| is_live(a) && !groups.contains(a.task_group.as_str())) {
        stop(plan, alloc, AllocDesiredStatus::Stop, false, "task group removed from the job");
    }
}

/// One task group's slots, as the scheduler reconciles them.
pub struct Slots<'a> {
    pub job: &'a Job,
    pub group: &'a TaskGroup,
    /// Every allocation of the job, terminal ones included.
    pub existing: &'a [&'a Allocation],
    /// `StateView::delays_reschedules`.
    pub delays: bool,
    pub now: Timestamp,
    /// The current version's deployment, if it has one.
    pub deployment: Option<&'a Deployment>,
}

/// Where a group's rollout stands, by its deployment.
enum Rollout {
    /// Replace outdated allocations in waves (or all at once without a rolling update).
    Waves,
    /// Canaries run beside the old version until promotion; nothing old is replaced. `place`:
    /// whether more may be placed now (not while paused).
    Canaries { place: bool },
    /// Paused, or failed: nothing more is replaced. `stop_canaries`: a failed deployment's
    /// unpromoted canaries stop (Nomad's rule), the old version serving on.
    Halted { stop_canaries: bool },
}

impl Slots<'_> {
    /// Stops what must not keep running and returns the slots to fill.
    pub fn reconcile(&self, nodes_by_id: &BTreeMap<&str, &Node>, nodes: &[Node], plan: &mut Plan) -> Vec<Ask> {
        let (job, group) = (self.job, self.group);
        let mine: Vec<&Allocation> = self.existing.iter().copied().filter(|a| a.task_group == group.name).collect();
        // Live allocations that stay in their slots: of the current version on a usable node, and
        // those a rollout's or a drain's wave leaves for later.
        let fingerprint = group.fingerprint();
        let mut keep: Vec<&Allocation> = Vec::new();
        let mut draining: Vec<&Allocation> = Vec::new();
        let mut outdated: Vec<&Allocation> = Vec::new();
        let mut misplaced: Vec<&Allocation> = Vec::new();
        let compiled = super::CompiledConstraints::for_group(job, group);
        for alloc in mine.iter().copied().filter(|a| is_live(a)) {
            match nodes_by_id.get(alloc.node_id.as_str()) {
                None => stop(plan, alloc, AllocDesiredStatus::Stop, true, "node is gone"),
                Some(node) if node.status == NodeStatus::Down => {
                    stop(plan, alloc, AllocDesiredStatus::Stop, true, "node down")
                }
                Some(node) if node.drain => draining.push(alloc),
                // The new version's constraints rule the node out (a host a Helios-style job was
                // undeployed from, say): replaced first, and placed again where they allow.
                Some(node) if alloc.job_version != job.version && compiled.constraint_rejects(node).is_some() => {
                    misplaced.push(alloc)
                }
                Some(_) if alloc.job_version != job.version && alloc.group_fingerprint == fingerprint => {
                    // Only counts changed: keep it, as an allocation of the new version.
                    plan.in_place.push(alloc.id.clone());
                    keep.push(alloc);
                }
                Some(_) if alloc.job_version != job.version => outdated.push(alloc),
                Some(_) => keep.push(alloc),
            }
        }
        // Those of an older version are replaced in waves (`update`), those its constraints rule
        // out first; the rest stay for now.
        outdated.sort_by_key(|a| (slot_index(&a.name), a.id.clone()));
        misplaced.sort_by_key(|a| (slot_index(&a.name), a.id.clone()));
        let rejected: Vec<String> = misplaced.iter().map(|a| a.id.clone()).collect();
        misplaced.extend(outdated);
        let mut outdated = misplaced;
        // Canarying: whether more canaries may be placed now.
        let mut canarying: Option<bool> = None;
        let (wave, healthy_left) = match self.rollout() {
            Rollout::Waves => {
                self.stop_replaced_by_promoted_canaries(&keep, &mut outdated, plan);
                self.update_wave(&mine, &mut outdated, plan)
            }
            // The canaries are taken out of the slots once the drain has had its say (below).
            Rollout::Canaries { place } => {
                canarying = Some(place);
                (0, None)
            }
            Rollout::Halted { stop_canaries } => {
                if stop_canaries {
                    for canary in self.take_canaries(&mut keep) {
                        stop(plan, canary, AllocDesiredStatus::Stop, false, "its deployment failed before promotion");
                    }
                }
                // (Otherwise the new version's allocations placed so far keep their slots.)
                self.say_halted(outdated.len(), plan);
                (0, None)
            }
        };
        let outdated_slots: Vec<String> = outdated.iter().map(|a| a.name.clone()).collect();
        for (i, alloc) in outdated.into_iter().enumerate() {
            if i < wave {
                let why = if rejected.contains(&alloc.id) {
                    "its node no longer meets the job's constraints".to_string()
                } else {
                    format!("replaced by job version {}", job.version)
                };
                stop(plan, alloc, AllocDesiredStatus::Stop, false, &why);
            } else {
                keep.push(alloc);
            }
        }
        // Those on draining nodes leave in waves (`migrate`); the rest of them stay for now.
        draining.sort_by_key(|a| (slot_index(&a.name), a.id.clone()));
        let wave = self.migration_wave(&mine, draining.len(), healthy_left, plan);
        for (i, alloc) in draining.into_iter().enumerate() {
            if i < wave {
                stop(plan, alloc, AllocDesiredStatus::Evict, false, "node draining");
            } else {
                keep.push(alloc);
            }
        }
        // Canaries share their slots with the allocations they will replace: out of the slots
        // while they wait for promotion.
        let mut canary_asks = Vec::new();
        let mut canary_slots: BTreeSet<String> = BTreeSet::new();
        if let Some(place) = canarying {
            let live = self.take_canaries(&mut keep);
            if place {
                canary_asks = self.canary_asks(&mine, &live, &outdated_slots, plan);
            }
            canary_slots.extend(live.iter().map(|a| a.name.clone()));
            canary_slots.extend(canary_asks.iter().map(|a| a.name.clone()));
        }
        let mut asks = match job.job_type {
            JobType::System => system_slots(job, group, &mine, keep, nodes, plan),
            JobType::Service | JobType::Batch => self.counted(&mine, keep, plan),
        };
        if canarying.is_some() {
            // Until promotion only canaries are new (Nomad's rule): a slot that never ran, as
            // after a count increase, waits, and a canary's slot is its own; a slot that lost
            // its allocation is filled again.
            asks.retain(|ask| !canary_slots.contains(&ask.name) && mine.iter().any(|a| a.name == ask.name));
        }
        asks.extend(canary_asks);
        asks
    }

    /// The group's rollout, by the current version's deployment.
    fn rollout(&self) -> Rollout {
        let Some(deployment) = self.deployment else { return Rollout::Waves };
        let Some(group) = deployment.groups.get(&self.group.name) else { return Rollout::Waves };
        match deployment.status {
            DeploymentStatus::Running if group.awaits_promotion() => Rollout::Canaries { place: true },
            DeploymentStatus::Paused if group.awaits_promotion() => Rollout::Canaries { place: false },
            DeploymentStatus::Paused => Rollout::Halted { stop_canaries: false },
            DeploymentStatus::Failed => Rollout::Halted { stop_canaries: group.awaits_promotion() },
            DeploymentStatus::Running | DeploymentStatus::Successful | DeploymentStatus::Cancelled => Rollout::Waves,
        }
    }

    /// Says why a rollout replaces nothing more (`job status` shows it), while older versions run.
    fn say_halted(&self, outdated: usize, plan: &mut Plan) {
        let Some(deployment) = self.deployment.filter(|_| outdated > 0) else { return };
        let message = format!(
            "rolling update to version {} halted: deployment {} is {} ({}); {outdated} left on older versions",
            self.job.version,
            deployment.id,
            deployment.status.as_str(),
            deployment.status_description
        );
        plan.failed_placements.insert(self.group.name.clone(), message);
        plan.final_failures.insert(self.group.name.clone());
    }

    /// Whether `alloc` is a canary of the current version's deployment (marked so when placed).
    fn is_canary(&self, alloc: &Allocation) -> bool {
        let deployment = self.deployment.map(|d| d.id.as_str());
        alloc.canary && alloc.job_version == self.job.version && alloc.deployment_id.as_deref() == deployment
    }

    /// Takes the deployment's canaries out of `keep`: they share their slots with the
    /// allocations they will replace.
    fn take_canaries<'k>(&self, keep: &mut Vec<&'k Allocation>) -> Vec<&'k Allocation> {
        let (canaries, rest): (Vec<&Allocation>, Vec<&Allocation>) = keep.iter().partition(|a| self.is_canary(a));
        *keep = rest;
        canaries
    }

    /// The canaries to place: one that ended (or is stopping now) again in its slot, a failed
    /// one by the group's reschedule policy (its deployment fails only at its progress
    /// deadline, or at once without one); then new ones, in the slots of `outdated`
    /// allocations first, then in empty ones, up to `canary` in all. `live`: the canaries that
    /// run on.
    fn canary_asks(
        &self,
        mine: &[&Allocation],
        live: &[&Allocation],
        outdated: &[String],
        plan: &mut Plan,
    ) -> Vec<Ask> {
        let Some(deployment) = self.deployment else { return Vec::new() };
        let Some(group) = deployment.groups.get(&self.group.name) else { return Vec::new() };
        let desired = group.desired_canaries as usize;
        let stopping: BTreeSet<String> = plan.stops.iter().map(|s| s.alloc_id.clone()).collect();
        let running = |a: &Allocation| is_live(a) && !stopping.contains(&a.id);
        let live_ids: BTreeSet<&str> = live.iter().map(|a| a.id.as_str()).collect();
        let mut occupied: BTreeSet<String> = live.iter().map(|a| a.name.clone()).collect();
        // Each slot's latest ended canary, where no canary runs now.
        let mut ended: BTreeMap<&str, &Allocation> = BTreeMap::new();
        for alloc in mine.iter().copied().filter(|a| self.is_canary(a) && !live_ids.contains(a.id.as_str())) {
            if occupied.contains(&alloc.name) {
                continue;
            }
            let later =
                ended.get(alloc.name.as_str()).is_none_or(|b| (alloc.created_at, &alloc.id) > (b.created_at, &b.id));
            if later {
                ended.insert(&alloc.name, alloc);
            }
        }
        let mut asks = Vec::new();
        let ask = |name: &str, reschedule_events| Ask {
            name: name.to_string(),
            node_id: None,
            reschedule_events,
            canary: true,
        };
        for (name, alloc) in ended {
            // Filled otherwise meanwhile, or enough canaries already.
            let taken = mine.iter().any(|a| a.name == name && running(a) && a.job_version == self.job.version);
            if taken || occupied.len() >= desired {
                continue;
            }
            occupied.insert(name.to_string());
            match alloc.client_status {
                AllocClientStatus::Failed => match self.group.reschedule.decide(alloc, self.now) {
                    Reschedule::Now(events) => asks.push(ask(name, events)),
                    Reschedule::At(at) => plan.revisit(at, "a failed canary's reschedule delay ends"),
                    Reschedule::Never(_) => {}
                },
                // Lost with its node, or stopped by a drain: placed again at once.
                _ => asks.push(ask(name, alloc.reschedule_events.clone())),
            }
        }
        let wanted = desired.saturating_sub(occupied.len());
        let empty = (0..self.group.count as usize)
            .map(|i| alloc_name(&self.job.name, &self.group.name, i))
            .filter(|name| !mine.iter().any(|a| &a.name == name && running(a)));
        let mut fresh: Vec<String> = Vec::new();
        for name in outdated.iter().cloned().chain(empty) {
            if !occupied.contains(&name) && !fresh.contains(&name) {
                fresh.push(name);
            }
        }
        asks.extend(fresh.iter().take(wanted).map(|name| ask(name, Vec::new())));
        asks
    }

    /// Once a deployment is promoted, each canary takes its slot: the older allocation there
    /// stops (beside `max_parallel`, as Nomad's promotion does).
    fn stop_replaced_by_promoted_canaries(
        &self,
        keep: &[&Allocation],
        outdated: &mut Vec<&Allocation>,
        plan: &mut Plan,
    ) {
        let promoted = self
            .deployment
            .and_then(|d| d.groups.get(&self.group.name))
            .is_some_and(|g| g.promoted && g.desired_canaries > 0);
        if !promoted {
            return;
        }
        let current: BTreeSet<&str> =
            keep.iter().filter(|a| a.job_version == self.job.version).map(|a| a.name.as_str()).collect();
        outdated.retain(|a| {
            if current.contains(a.name.as_str()) {
                stop(plan, a, AllocDesiredStatus::Stop, false, "replaced by a promoted canary");
                return false;
            }
            true
        });
    }

    /// An allocation's health for a rollout: the health rule's, or where that is still pending,
    /// the deployment's verdict (an operator's, with `health_check = "manual"`).
    /// (An older version's allocation, which no operator is asked about, by its tasks' states.)
    fn health_of(&self, rule: &MigrateStrategy, alloc: &Allocation, checks: usize) -> Health {
        if rule.health_check == crate::migrate::HealthCheck::Manual && alloc.job_version != self.job.version {
            let by_tasks = MigrateStrategy { health_check: crate::migrate::HealthCheck::TaskStates, ..rule.clone() };
            return by_tasks.health(alloc, self.now, checks);
        }
        let health = rule.health(alloc, self.now, checks);
        if !matches!(health, Health::Pending { .. }) || alloc.job_version != self.job.version {
            return health;
        }
        let verdict =
            self.deployment.and_then(|d| d.groups.get(&self.group.name)).and_then(|g| g.health.get(&alloc.id));
        match verdict {
            Some(true) => Health::Healthy,
            Some(false) => Health::Unhealthy,
            None => health,
        }
    }

    /// The group's live allocations healthy by `rule` (Nomad's drainer counts the same). One
    /// that is not healthy yet, or that is live but unhealthy (restarting), asks for a revisit:
    /// its reports do not wake the scheduler.
    fn healthy(&self, mine: &[&Allocation], rule: &MigrateStrategy, plan: &mut Plan, why: &str) -> usize {
        let mut healthy = 0;
        let checks = self.expected_checks();
        let stopping: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        let live: Vec<&&Allocation> = mine.iter().filter(|a| is_live(a) && !stopping.contains(a.id.as_str())).collect();
        for alloc in live {
            match self.health_of(rule, alloc, checks(alloc)) {
                Health::Healthy => healthy += 1,
                Health::Pending { check_at } => plan.revisit(check_at, why),
                Health::Unhealthy => {
                    let poll = rule.min_healthy_time_secs.max(1).saturating_mul(1000);
                    plan.revisit(Timestamp(self.now.0.saturating_add(poll)), why);
                }
            }
        }
        healthy
    }

    /// How many service checks an allocation must pass to be healthy by checks: the group's, or
    /// for one of an older version, the checks it registered.
    fn expected_checks(&self) -> impl Fn(&Allocation) -> usize {
        let fingerprint = self.group.fingerprint();
        let group_checks: usize = self.group.services.iter().map(|s| s.checks.len()).sum();
        move |alloc| {
            if alloc.group_fingerprint == fingerprint {
                group_checks
            } else {
                alloc.services.iter().map(|s| s.checks.len()).sum()
            }
        }
    }

    /// How many of a service group's `outdated` allocations (of an older version) are replaced
    /// now with a rolling `update` (the first ones of `outdated`, which it reorders): those
    /// unhealthy (replacing them takes nothing healthy down: an earlier version's whose check
    /// never passed), as many as `max_parallel` leaves beside the new version's allocations not
    /// healthy yet, then as many as keep at least `count - max_parallel` of the group healthy
    /// (Nomad's rule). A new allocation that is not healthy, cannot be placed or failed holds the
    /// rollout until it is (a failed one is rescheduled by the group's policy). Without a rolling
    /// update, all of them. Also returns how many healthy ones that leaves.
    fn update_wave(
        &self,
        mine: &[&Allocation],
        outdated: &mut [&Allocation],
        plan: &mut Plan,
    ) -> (usize, Option<usize>) {
        let update = &self.group.update;
        if !outdated.is_empty() && self.job.job_type == JobType::System && update.is_rolling() {
            return (self.system_wave(mine, outdated.len(), plan), None);
        }
        if outdated.is_empty() || self.job.job_type != JobType::Service || !update.is_rolling() || !self.delays {
            return (outdated.len(), None);
        }
        let rule = update.health_rule();
        let why = "a rolling update waits for the new version to be healthy";
        let healthy = self.healthy(mine, &rule, plan, why);
        let floor = (self.group.count as usize).saturating_sub(update.max_parallel as usize);
        let checks = self.expected_checks();
        let unhealthy = |a: &Allocation| self.health_of(&rule, a, checks(a)) == Health::Unhealthy;
        // Stable: the unhealthy first, each part in its order (each one's health judged once).
        outdated.sort_by_cached_key(|a| !unhealthy(a));
        // Within max_parallel, with the new version's allocations not healthy yet.
        let in_flight = mine
            .iter()
            .filter(|a| a.job_version == self.job.version && is_live(a))
            .filter(|a| self.health_of(&rule, a, checks(a)) != Health::Healthy)
            .count();
        let budget = (update.max_parallel as usize).saturating_sub(in_flight);
        let not_healthy = outdated.iter().take_while(|a| unhealthy(a)).count().min(budget);
        let wave = (not_healthy + healthy.saturating_sub(floor)).min(outdated.len());
        if wave == 0 {
            let new: Vec<&&Allocation> = mine.iter().filter(|a| a.job_version == self.job.version).collect();
            let failed = new.iter().filter(|a| a.client_status == AllocClientStatus::Failed).count();
            // Running, but not healthy by their deadline (a check that never passes).
            let unhealthy = new
                .iter()
                .filter(|a| a.client_status != AllocClientStatus::Failed && is_live(a))
                .filter(|a| self.health_of(&rule, a, checks(a)) == Health::Unhealthy)
                .count();
            if failed + unhealthy > 0 {
                let not_healthy = if unhealthy > 0 {
                    format!(", {unhealthy} not healthy by their healthy_deadline")
                } else {
                    String::new()
                };
                let message = format!(
                    "rolling update to version {} waits: {healthy} of {} healthy, at least {floor} needed; {failed} allocation(s) of the new version failed{not_healthy} ({} left on older versions)",
                    self.job.version,
                    self.group.count,
                    outdated.len()
                );
                plan.failed_placements.insert(self.group.name.clone(), message);
                plan.final_failures.insert(self.group.name.clone());
            }
        } else if wave < outdated.len() {
            let soonest = Timestamp(self.now.0.saturating_add(update.min_healthy_time_secs.saturating_mul(1000)));
            plan.revisit(soonest, why);
        }
        // The healthy ones it stops were serving the old version.
        (wave, Some(healthy.saturating_sub(wave.saturating_sub(not_healthy))))
    }

    /// How many of a system group's `outdated` allocations are replaced now (Nomad's rolling
    /// update of a system job): `max_parallel` at a time, each set `stagger` after the last one
    /// was placed; no health is waited for.
    fn system_wave(&self, mine: &[&Allocation], outdated: usize, plan: &mut Plan) -> usize {
        let update = &self.group.update;
        // A set's time is its replacements' (placed on nodes an older version ran on): a node
        // joining meanwhile, or a failure placed again, does not hold the next set back.
        let older_on: BTreeSet<&str> =
            mine.iter().filter(|a| a.job_version < self.job.version).map(|a| a.node_id.as_str()).collect();
        let last_set = mine
            .iter()
            .filter(|a| a.job_version == self.job.version && older_on.contains(a.node_id.as_str()))
            .filter(|a| a.reschedule_events.is_empty())
            .map(|a| a.created_at)
            .max();
        if let Some(last) = last_set {
            let next = Timestamp(last.0.saturating_add(update.stagger_secs.saturating_mul(1000)));
            if next > self.now {
                plan.revisit(next, "a system job's rolling update waits out its stagger");
                return 0;
            }
        }
        let wave = (update.max_parallel as usize).min(outdated);
        if wave < outdated {
            let next = Timestamp(self.now.0.saturating_add(update.stagger_secs.saturating_mul(1000)));
            plan.revisit(next, "a system job's rolling update waits out its stagger");
        }
        wave
    }

    /// How many of a service group's `on_draining` allocations leave their draining nodes now:
    /// as many as keep at least `count - migrate.max_parallel` of the group healthy (`healthy`:
    /// what the update's wave left, if it counted), waiting for replacements; anything
    /// else's, all.
    fn migration_wave(
        &self,
        mine: &[&Allocation],
        on_draining: usize,
        healthy: Option<usize>,
        plan: &mut Plan,
    ) -> usize {
        if on_draining == 0 || self.job.job_type != JobType::Service || !self.delays {
            return on_draining;
        }
        let migrate = &self.group.migrate;
        let why = "a drain waits for healthy replacements before its next wave";
        let healthy = match healthy {
            Some(healthy) => healthy,
            None => self.healthy(mine, migrate, plan, why),
        };
        let floor = (self.group.count as usize).saturating_sub(migrate.max_parallel as usize);
        let wave = healthy.saturating_sub(floor).min(on_draining);
        if wave < on_draining {
            // This wave's replacements are healthy no sooner than that.
            let soonest =
                Timestamp(self.now.0.saturating_add(migrate.min_healthy_time_secs.max(1).saturating_mul(1000)));
            plan.revisit(soonest, why);
        }
        wave
    }

    fn counted(&self, mine: &[&Allocation], keep: Vec<&Allocation>, plan: &mut Plan) -> Vec<Ask> {
        let (job, group) = (self.job, self.group);
        let count = group.count as usize;
        let mut filled: BTreeSet<usize> = BTreeSet::new();
        for alloc in keep {
            match slot_index(&alloc.name) {
                Some(i) if i < count && filled.insert(i) => {}
                Some(i) if i >= count => stop(plan, alloc, AllocDesiredStatus::Stop, false, "scaled down"),
                _ => stop(plan, alloc, AllocDesiredStatus::Stop, false, "duplicate of its slot"),
            }
        }
        let current: Vec<&Allocation> = mine.iter().copied().filter(|a| a.job_version == job.version).collect();
        if job.job_type == JobType::Batch {
            // A batch slot that finished is done for this version.
            for alloc in current.iter().filter(|a| a.client_status == AllocClientStatus::Complete) {
                if let Some(i) = slot_index(&alloc.name) {
                    filled.insert(i);
                }
            }
        }
        let fingerprint = group.fingerprint();
        let same_spec: Vec<&Allocation> = mine
            .iter()
            .copied()
            .filter(|a| a.job_version == job.version || a.group_fingerprint == fingerprint)
            .collect();
        let mut asks = Vec::new();
        let mut not_rescheduled: BTreeMap<String, usize> = BTreeMap::new();
        for i in (0..count).filter(|i| !filled.contains(i)) {
            let name = alloc_name(&job.name, &group.name, i);
            // The slot's last allocation of this group spec decides (this version's, or an older
            // one's that differed only in counts, as after `job scale`): a failure is rescheduled
            // by the group's policy; anything else (lost, stopped, never placed) is replaced at once.
            let last = same_spec.iter().copied().filter(|a| a.name == name).max_by_key(|a| (a.created_at, &a.id));
            match last {
                Some(failed) if failed.client_status == AllocClientStatus::Failed && !self.delays => {
                    let failures = current
                        .iter()
                        .filter(|a| a.name == name && a.client_status == AllocClientStatus::Failed)
                        .count();
                    if failures > MAX_LEGACY_RESCHEDULES {
                        let why = format!("failed more than {MAX_LEGACY_RESCHEDULES} times");
                        *not_rescheduled.entry(why).or_default() += 1;
                    } else {
                        asks.push(Ask { name, node_id: None, reschedule_events: Vec::new(), canary: false });
                    }
                }
                Some(failed) if failed.client_status == AllocClientStatus::Failed => {
                    match group.reschedule.decide(failed, self.now) {
                        Reschedule::Now(events) => {
                            asks.push(Ask { name, node_id: None, reschedule_events: events, canary: false })
                        }
                        Reschedule::At(at) => {
                            plan.revisit(at, "a failed allocation's reschedule delay ends");
                        }
                        Reschedule::Never(why) => *not_rescheduled.entry(why).or_default() += 1,
                    }
                }
                // A replacement of a replacement still counts the failures before it.
                Some(other) => asks.push(Ask {
                    name,
                    node_id: None,
                    reschedule_events: other.reschedule_events.clone(),
                    canary: false,
                }),
                None => asks.push(Ask { name, node_id: None, reschedule_events: Vec::new(), canary: false }),
            }
        }
        if !not_rescheduled.is_empty() {
            let reasons: Vec<String> = not_rescheduled
                .iter()
                .map(|(why, n)| format!("{n} allocation(s) failed and are not rescheduled: {why}"))
                .collect();
            // Beside a rolling update's message, if there is one.
            let why = plan.failed_placements.entry(group.name.clone()).or_default();
            if !why.is_empty() {
                why.push_str("; ");
            }
            why.push_str(&reasons.join("; "));
            plan.final_failures.insert(group.name.clone());
        }
        asks
    }
}

fn system_slots(
    job: &Job,
    group: &TaskGroup,
    mine: &[&Allocation],
    keep: Vec<&Allocation>,
    nodes: &[Node],
    plan: &mut Plan,
) -> Vec<Ask> {
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for alloc in keep {
        if !covered.insert(alloc.node_id.as_str()) {
            stop(plan, alloc, AllocDesiredStatus::Stop, false, "duplicate on its node");
        }
    }
    // As for counted slots: a node where this version kept failing is given up on, or a task
    // that cannot start there would be placed again and again.
    let failures = |node: &str| {
        mine.iter()
            .filter(|a| {
                a.node_id == node && a.job_version == job.version && a.client_status == AllocClientStatus::Failed
            })
            .count()
    };
    let mut given_up = 0;
    let asks = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ready && n.eligibility == NodeEligibility::Eligible && !n.drain)
        .filter(|n| !covered.contains(n.id.as_str()))
        .filter(|n| {
            let give_up = failures(&n.id) > MAX_LEGACY_RESCHEDULES;
            given_up += usize::from(give_up);
            !give_up
        })
        .map(|n| Ask {
            name: alloc_name(&job.name, &group.name, 0),
            node_id: Some(n.id.clone()),
            reschedule_events: Vec::new(),
            canary: false,
        })
        .collect();
    if given_up > 0 {
        plan.failed_placements.insert(
            group.name.clone(),
            format!("failed more than {MAX_LEGACY_RESCHEDULES} times on {given_up} node(s); not placing there again"),
        );
    }
    asks
}
