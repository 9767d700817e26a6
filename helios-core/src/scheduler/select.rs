//! Choosing a node for one allocation: feasible, fits, scored (best fit and the group's
//! preferences); ties spread the group.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::feasibility::CompiledConstraints;
use super::preferences::{Live, Preferences};
use super::reconcile::Ask;
use super::StateView;
use crate::alloc::{AllocClientStatus, AllocDesiredStatus, Allocation};
use crate::eval::Evaluation;
use crate::job::{ConstraintOperator, Job, Resources, TaskGroup};
use crate::node::Node;
use crate::placement::{NodeScore, PlacementMetrics, Score, ScoreKind, KEPT_SCORES};
use crate::time::Timestamp;

/// Where dynamic host ports come from when a node does not say (Nomad's default range); an
/// agent started with `--dynamic-ports MIN-MAX` reports its own as the node attribute
/// `DYNAMIC_PORTS_ATTRIBUTE`.
pub const DEFAULT_DYNAMIC_PORTS: (u16, u16) = (20_000, 32_000);
pub const DYNAMIC_PORTS_ATTRIBUTE: &str = "helios.dynamic_ports";

/// A node's dynamic port range.
pub fn dynamic_range(node: &Node) -> (u16, u16) {
    node.attributes
        .get(DYNAMIC_PORTS_ATTRIBUTE)
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .filter(|(a, b): &(u16, u16)| *a > 0 && a <= b)
        .unwrap_or(DEFAULT_DYNAMIC_PORTS)
}

/// Feasible nodes ranked per placement. Nomad ranks two for service jobs; a few more gives
/// noticeably tighter packing for little cost.
pub const SAMPLE_SIZE: usize = 8;

pub struct Placer<'a, V: StateView> {
    view: &'a V,
    job: &'a Job,
    eval_id: String,
    /// Where the next search starts: placements walk the node list round-robin, so a large
    /// group is not searched from the same first nodes every time.
    cursor: usize,
    /// Resources this plan has already reserved, by node.
    reserved: HashMap<&'a str, Resources>,
    /// Resources this plan frees by stopping allocations, by node.
    released: HashMap<String, Resources>,
    /// Host ports (fixed and dynamic) this plan has already taken, by node.
    ports_taken: HashMap<&'a str, Vec<u16>>,
    /// Allocations this plan stops and so finishes: the host ports they hold count as free.
    ports_freed: BTreeSet<String>,
    /// Live allocations of the job (kept or planned), by node, and of each group, by node.
    job_on_node: HashMap<String, u32>,
    group_on_node: HashMap<(String, String), u32>,
    /// The same allocations as (group, node id), for counting by attribute (`preferences`).
    live: Vec<(String, String)>,
    groups: BTreeMap<String, GroupRules>,
}

/// What a group asks of nodes, compiled once per plan.
struct GroupRules {
    constraints: CompiledConstraints,
    preferences: Preferences,
}

/// Why an allocation could not be placed.
#[derive(Debug)]
pub enum PlaceError {
    /// No node qualifies at all (state, drivers, constraints).
    Infeasible(String),
    /// Qualifying nodes lack free resources (or already host the group, with distinct_hosts).
    NoRoom(String),
}

struct Candidate<'a> {
    node: &'a Node,
    score: f64,
    group_here: u32,
    /// The dynamic ports it would get there.
    dynamic: Vec<u16>,
}

/// The best candidates' scores, best first, for the allocation's metrics.
#[derive(Default)]
struct TopScores<'a>(Vec<(f64, &'a Node, Score)>);

impl<'a> TopScores<'a> {
    fn offer(&mut self, total: f64, node: &'a Node, score: Score) {
        let at = self.0.iter().position(|(t, _, _)| total > *t).unwrap_or(self.0.len());
        if at < KEPT_SCORES {
            self.0.insert(at, (total, node, score));
            self.0.truncate(KEPT_SCORES);
        }
    }
}

impl<'a, V: StateView> Placer<'a, V> {
    /// `freed`: allocations this plan stops; their room and their hosts count as free, and the
    /// host ports of those in `ports_freed`.
    pub fn new(
        view: &'a V,
        job: &'a Job,
        eval: &Evaluation,
        freed: &[&Allocation],
        ports_freed: BTreeSet<String>,
    ) -> Placer<'a, V> {
        let mut job_on_node = HashMap::new();
        let mut group_on_node = HashMap::new();
        let mut released: HashMap<String, Resources> = HashMap::new();
        for alloc in freed {
            let r = released.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
            *r = r.plus(alloc.resources);
        }
        let mut live = Vec::new();
        for alloc in view.allocations_of_job(&job.name) {
            let stopping = freed.iter().any(|f| f.id == alloc.id);
            if !stopping && alloc.desired_status == AllocDesiredStatus::Run && !alloc.client_status.is_terminal() {
                *job_on_node.entry(alloc.node_id.clone()).or_default() += 1;
                *group_on_node.entry((alloc.task_group.clone(), alloc.node_id.clone())).or_default() += 1;
                live.push((alloc.task_group.clone(), alloc.node_id.clone()));
            }
        }
        let nodes = view.nodes().len().max(1);
        Placer {
            view,
            job,
            eval_id: eval.id.clone(),
            cursor: (fnv1a(eval.id.as_bytes()) as usize) % nodes,
            reserved: HashMap::new(),
            ports_taken: HashMap::new(),
            ports_freed,
            released,
            job_on_node,
            group_on_node,
            live,
            groups: BTreeMap::new(),
        }
    }

    /// The group's rules, compiled on its first placement of the plan.
    fn rules(&mut self, group: &TaskGroup) -> &GroupRules {
        if !self.groups.contains_key(&group.name) {
            let nodes = self.view.nodes();
            let counted = !self.job.spreads.is_empty()
                || !group.spreads.is_empty()
                || self
                    .job
                    .constraints
                    .iter()
                    .chain(&group.constraints)
                    .any(|c| c.operator == ConstraintOperator::DistinctProperty)
                || group
                    .tasks
                    .iter()
                    .flat_map(|t| &t.constraints)
                    .any(|c| c.operator == ConstraintOperator::DistinctProperty);
            // Only a group that counts by attribute needs its allocations' nodes.
            let live: Vec<Live<'_>> = if counted && !self.live.is_empty() {
                let by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
                self.live
                    .iter()
                    .filter_map(|(g, n)| Some(Live { group: g.as_str(), node: by_id.get(n.as_str())? }))
                    .collect()
            } else {
                Vec::new()
            };
            let rules = GroupRules {
                constraints: CompiledConstraints::for_group(self.job, group),
                preferences: Preferences::for_group(self.job, group, &live),
            };
            self.groups.insert(group.name.clone(), rules);
        }
        &self.groups[&group.name]
    }

    /// Places one allocation of `group`, or says why no node can take it.
    pub fn place(
        &mut self,
        group: &TaskGroup,
        ask: &Ask,
        now: Timestamp,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<Allocation, PlaceError> {
        let job = self.job;
        self.rules(group);
        let rules = &self.groups[&group.name];
        let ask_resources = group_resources(group);
        let ask_ports = group.static_host_ports();
        let ask_dynamic = group.dynamic_ports().len();
        let nodes = self.view.nodes();
        let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<Candidate<'a>> = None;
        let mut top = TopScores::default();
        let mut found = 0;
        let (start, span) = match &ask.node_id {
            Some(id) => match nodes.iter().position(|n| &n.id == id) {
                Some(at) => (at, 1),
                None => return Err(PlaceError::Infeasible(format!("node {id} is gone"))),
            },
            None => (self.cursor, nodes.len()),
        };
        let mut examined = 0;
        while examined < span && found < SAMPLE_SIZE {
            let node: &'a Node = &nodes[(start + examined) % nodes.len()];
            examined += 1;
            if let Some(reason) = rules.constraints.rejects(node).or_else(|| rules.preferences.rejects(node)) {
                *rejected.entry(reason).or_default() += 1;
                continue;
            }
            let job_here = self.job_on_node.get(&node.id).copied().unwrap_or(0);
            let group_here = self.group_on_node.get(&(group.name.clone(), node.id.clone())).copied().unwrap_or(0);
            let compiled = &rules.constraints;
            if (compiled.distinct_hosts_job && job_here > 0) || (compiled.distinct_hosts_group && group_here > 0) {
                *rejected.entry("distinct_hosts".to_string()).or_default() += 1;
                continue;
            }
            let taken = |p: &&u16| port_taken(self.view, &self.ports_freed, &self.ports_taken, &node.id, **p);
            if let Some(port) = ask_ports.iter().find(taken) {
                *rejected.entry(format!("host port {port} in use")).or_default() += 1;
                continue;
            }
            let dynamic = if ask_dynamic == 0 {
                Vec::new()
            } else {
                // Spread over the range from a point of the evaluation's, so that successive
                // placements do not all probe the same first ports.
                let taken_here = self.ports_taken.get(node.id.as_str()).map_or(0, Vec::len);
                let from = (fnv1a(self.eval_id.as_bytes()) as usize).wrapping_add(taken_here);
                let free = |p: u16| !port_taken(self.view, &self.ports_freed, &self.ports_taken, &node.id, p);
                let Some(dynamic) = free_dynamic_ports(dynamic_range(node), from, &ask_ports, ask_dynamic, free) else {
                    *rejected.entry("no free dynamic host port".to_string()).or_default() += 1;
                    continue;
                };
                dynamic
            };
            let reserved = self.reserved.get(node.id.as_str()).copied().unwrap_or(Resources::ZERO);
            let released = self.released.get(&node.id).copied().unwrap_or(Resources::ZERO);
            let used = self.view.node_usage(&node.id).plus(reserved).minus(released);
            let Some(score) = fit_score(node.resources, used, ask_resources) else {
                let lacking =
                    if used.cpu_mhz + ask_resources.cpu_mhz > node.resources.cpu_mhz { "cpu" } else { "memory" };
                *rejected.entry(format!("not enough free {lacking}")).or_default() += 1;
                continue;
            };
            found += 1;
            let failed_here = ask.reschedule_events.iter().any(|e| e.prev_node_id == node.id);
            let parts = score_parts(score, group_here, group.count, failed_here, &rules.preferences, node);
            let score = parts.total();
            top.offer(score, node, parts);
            let candidate = Candidate { node, score, group_here, dynamic };
            if best.as_ref().is_none_or(|b| better(&candidate, b)) {
                best = Some(candidate);
            }
        }
        if ask.node_id.is_none() {
            self.cursor = (start + examined) % nodes.len().max(1);
        }
        let Some(chosen) = best else {
            let reason = describe_failure(nodes.len(), &rejected);
            // Room is what a cluster change can give; anything else needs a different node.
            let room = rejected
                .keys()
                .any(|k| k.starts_with("not enough free") || k.contains("host port") || k == "distinct_hosts");
            return Err(if room { PlaceError::NoRoom(reason) } else { PlaceError::Infeasible(reason) });
        };
        let node_id = chosen.node.id.clone();
        let mut scores: Vec<NodeScore> = top.0.iter().map(|(_, n, s)| s.to_node_score(&n.id)).collect();
        // The chosen node first (a tie it won by spreading may have put another ahead).
        if let Some(at) = scores.iter().position(|s| s.node_id == node_id) {
            let chosen_score = scores.remove(at);
            scores.insert(0, chosen_score);
        }
        let metrics = PlacementMetrics {
            nodes_evaluated: u32::try_from(examined).unwrap_or(u32::MAX),
            nodes_filtered: rejected.into_iter().map(|(why, n)| (why, u32::try_from(n).unwrap_or(u32::MAX))).collect(),
            scores,
        };
        for (name, rules) in self.groups.iter_mut() {
            if rules.preferences.counts() {
                rules.preferences.placed(&group.name, *name == group.name, chosen.node);
            }
        }
        self.live.push((group.name.clone(), node_id.clone()));
        let reserved = self.reserved.entry(chosen.node.id.as_str()).or_default();
        *reserved = reserved.plus(ask_resources);
        let mut host_ports = ask_ports;
        host_ports.extend(&chosen.dynamic);
        self.ports_taken.entry(chosen.node.id.as_str()).or_default().extend(&host_ports);
        *self.job_on_node.entry(node_id.clone()).or_default() += 1;
        *self.group_on_node.entry((group.name.clone(), node_id.clone())).or_default() += 1;
        Ok(Allocation {
            id: new_id(),
            name: ask.name.clone(),
            eval_id: self.eval_id.clone(),
            job_name: job.name.clone(),
            job_version: job.version,
            task_group: group.name.clone(),
            group_fingerprint: group.fingerprint(),
            node_id,
            resources: ask_resources,
            host_ports,
            desired_status: AllocDesiredStatus::Run,
            desired_description: String::new(),
            client_status: AllocClientStatus::Pending,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            created_at: now,
            modified_at: now,
            reschedule_events: ask.reschedule_events.clone(),
            next_allocation: None,
            metrics,
            services: Vec::new(),
            // Set by `schedule`, which knows the version's deployment.
            deployment_id: None,
            canary: ask.canary,
        })
    }
}

/// `count` ports of the range `(low, high)` that are `free` and not `fixed`, looked for from
/// `from` (any number: it is taken modulo the range's size) onwards; None if there are fewer.
fn free_dynamic_ports(
    (low, high): (u16, u16),
    from: usize,
    fixed: &[u16],
    count: usize,
    free: impl Fn(u16) -> bool,
) -> Option<Vec<u16>> {
    if count == 0 {
        return Some(Vec::new());
    }
    let span = usize::from(high) - usize::from(low) + 1;
    let mut chosen = Vec::with_capacity(count);
    for step in 0..span {
        let port = low + ((from % span + step) % span) as u16;
        if free(port) && !fixed.contains(&port) && !chosen.contains(&port) {
            chosen.push(port);
            if chosen.len() == count {
                return Some(chosen);
            }
        }
    }
    None
}

/// True when `port` on `node` is held by an allocation the plan keeps (not one in `freed`), or
/// `taken` by an earlier placement of the plan.
fn port_taken(
    view: &impl StateView,
    freed: &BTreeSet<String>,
    taken: &HashMap<&str, Vec<u16>>,
    node: &str,
    port: u16,
) -> bool {
    let held = view.host_port_holder(node, port).is_some_and(|holder| !freed.contains(holder));
    held || taken.get(node).is_some_and(|ports| ports.contains(&port))
}

/// The resources an allocation of `group` reserves: the sum of its tasks'.
pub fn group_resources(group: &TaskGroup) -> Resources {
    group.tasks.iter().fold(Resources::ZERO, |acc, t| acc.plus(t.resources))
}

/// Best fit: the node's utilization after the placement (higher packs tighter), or `None` when
/// the allocation does not fit.
fn fit_score(capacity: Resources, used: Resources, ask: Resources) -> Option<f64> {
    let cpu = u64::from(used.cpu_mhz) + u64::from(ask.cpu_mhz);
    let mem = u64::from(used.memory_mb) + u64::from(ask.memory_mb);
    if cpu > u64::from(capacity.cpu_mhz) || mem > u64::from(capacity.memory_mb) {
        return None;
    }
    let util = |used: u64, cap: u32| {
        if cap == 0 {
            1.0
        } else {
            used as f64 / f64::from(cap)
        }
    };
    Some((util(cpu, capacity.cpu_mhz) + util(mem, capacity.memory_mb)) / 2.0)
}

/// Nomad's scoring: the fit, and a part for each preference that applies to the node, averaged
/// (`Score`).
///
/// - Job anti-affinity: a node that already runs `here` of the group's `count` allocations
///   scores `-(here + 1) / count`, so that copies of a service spread over nodes when they fit
///   elsewhere (one machine's loss does not take them all) and still pack when only one node
///   has room.
/// - Reschedule penalty: a node where an earlier allocation of this slot failed scores -1, so a
///   replacement goes elsewhere when it can (the node may be the cause) and back there when not.
/// - Affinity and spread (`Preferences`), when they are not 0 on the node.
fn score_parts(fit: f64, here: u32, count: u32, failed_here: bool, preferences: &Preferences, node: &Node) -> Score {
    let mut score = Score::new(fit);
    if here > 0 {
        score = score.with(ScoreKind::JobAntiAffinity, -f64::from(here + 1) / f64::from(count.max(1)));
    }
    if failed_here {
        score = score.with(ScoreKind::ReschedulePenalty, -1.0);
    }
    if let Some(affinity) = preferences.affinity(node).filter(|a| *a != 0.0) {
        score = score.with(ScoreKind::NodeAffinity, affinity);
    }
    if let Some(spread) = preferences.spread(node).filter(|s| *s != 0.0) {
        score = score.with(ScoreKind::AllocationSpread, spread);
    }
    score
}

/// Higher score wins; on a tie, the node with fewer allocations of the group (spread).
fn better(a: &Candidate<'_>, b: &Candidate<'_>) -> bool {
    const TIE: f64 = 1e-9;
    if (a.score - b.score).abs() > TIE {
        return a.score > b.score;
    }
    a.group_here < b.group_here
}

fn describe_failure(nodes: usize, rejected: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no client nodes are registered".to_string();
    }
    let mut reasons: Vec<(&String, &usize)> = rejected.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = reasons.iter().map(|(why, n)| format!("{n} {why}")).collect();
    format!("no node can take it ({} nodes: {})", nodes, parts.join(", "))
}

/// A small, stable hash (the standard library's is randomly seeded), to pick a starting node.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeEligibility, NodeStatus};

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            hostname: id.into(),
            rpc_addr: String::new(),
            attributes: BTreeMap::new(),
            meta: BTreeMap::new(),
            drivers: vec![],
            resources: Resources { cpu_mhz: 1000, memory_mb: 1000 },
            status: NodeStatus::Ready,
            eligibility: NodeEligibility::Eligible,
            drain: false,
            registered_at: Timestamp(0),
            status_updated_at: Timestamp(0),
            secret_id: String::new(),
        }
    }

    #[test]
    fn a_tie_goes_to_the_node_with_fewer_allocations_of_the_group() {
        let (a, b) = (node("a"), node("b"));
        let crowded = Candidate { node: &a, score: 0.5, group_here: 2, dynamic: Vec::new() };
        let empty = Candidate { node: &b, score: 0.5, group_here: 0, dynamic: Vec::new() };
        assert!(better(&empty, &crowded));
        assert!(!better(&crowded, &empty));
        let fuller = Candidate { node: &a, score: 0.6, group_here: 2, dynamic: Vec::new() };
        assert!(better(&fuller, &empty), "a better fit wins over spreading");
    }

    #[test]
    fn fit_requires_both_resources() {
        let cap = Resources { cpu_mhz: 1000, memory_mb: 1000 };
        let used = Resources { cpu_mhz: 900, memory_mb: 0 };
        assert_eq!(fit_score(cap, used, Resources { cpu_mhz: 200, memory_mb: 1 }), None);
        assert_eq!(fit_score(cap, used, Resources { cpu_mhz: 100, memory_mb: 1000 }), Some(1.0));
    }
}
