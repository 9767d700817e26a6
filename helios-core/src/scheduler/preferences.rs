//! What a group asks of its nodes beyond fitting: Nomad's `affinity` and `spread` (scores that
//! rank the nodes) and `distinct_property` (a limit per attribute value that rules nodes out).
//! Spreads and distinct properties count the job's allocations by a node attribute's value;
//! the counts start from what runs and follow the plan's placements.

use std::collections::{BTreeMap, HashMap};

use super::feasibility::{Attribute, Check};
use crate::job::{ConstraintOperator, Job, Spread, TaskGroup};
use crate::node::Node;

/// One group's preferences, compiled once per plan.
pub struct Preferences {
    affinities: Vec<(Check, f64)>,
    /// The sum of the affinities' absolute weights.
    affinity_weight: f64,
    spreads: Vec<SpreadCounts>,
    distinct: Vec<DistinctCounts>,
}

struct SpreadCounts {
    attribute: Attribute,
    /// Its weight's share among the group's spreads.
    share: f64,
    /// Desired allocations by value; values not listed share `rest` (None: spread evenly).
    targets: Option<(BTreeMap<String, f64>, f64)>,
    counts: HashMap<String, u32>,
}

struct DistinctCounts {
    /// As the job names it (for messages), and parsed.
    name: String,
    attribute: Attribute,
    limit: u32,
    /// The group counted, or None for the whole job (a job-level constraint).
    group: Option<String>,
    counts: HashMap<String, u32>,
}

/// A live allocation of the job the plan keeps: its group and node.
pub struct Live<'a> {
    pub group: &'a str,
    pub node: &'a Node,
}

impl Preferences {
    pub fn for_group(job: &Job, group: &TaskGroup, live: &[Live<'_>]) -> Preferences {
        let affinities: Vec<(Check, f64)> = job
            .affinities
            .iter()
            .chain(&group.affinities)
            .map(|a| (Check::compile(&a.attribute, a.operator, &a.value), f64::from(a.weight)))
            .collect();
        let affinity_weight = affinities.iter().map(|(_, w)| w.abs()).sum();
        let spreads: Vec<&Spread> = job.spreads.iter().chain(&group.spreads).collect();
        let total_weight: f64 = spreads.iter().map(|s| f64::from(s.weight)).sum::<f64>().max(1.0);
        let spreads = spreads
            .into_iter()
            .map(|s| {
                let targets = (!s.targets.is_empty()).then(|| {
                    let desired = |percent: u8| f64::from(percent) / 100.0 * f64::from(group.count);
                    let listed: BTreeMap<String, f64> =
                        s.targets.iter().map(|t| (t.value.clone(), desired(t.percent))).collect();
                    let rest = 100u8.saturating_sub(s.targets.iter().map(|t| t.percent).fold(0u8, u8::saturating_add));
                    (listed, desired(rest))
                });
                let attribute = Attribute::parse(&s.attribute);
                let mine = live.iter().filter(|l| l.group == group.name);
                SpreadCounts {
                    counts: count_by(&attribute, mine),
                    attribute,
                    share: f64::from(s.weight) / total_weight,
                    targets,
                }
            })
            .collect();
        let job_level = job.constraints.iter().map(|c| (c, None));
        let task_constraints = group.tasks.iter().flat_map(|t| &t.constraints);
        let group_level = group.constraints.iter().chain(task_constraints).map(|c| (c, Some(group.name.clone())));
        let distinct = job_level
            .chain(group_level)
            .filter(|(c, _)| c.operator == ConstraintOperator::DistinctProperty)
            .map(|(c, scope)| {
                let counted = live.iter().filter(|l| scope.as_deref().is_none_or(|g| g == l.group));
                let attribute = Attribute::parse(&c.attribute);
                DistinctCounts {
                    name: c.attribute.clone(),
                    limit: distinct_limit(&c.value),
                    counts: count_by(&attribute, counted),
                    attribute,
                    group: scope,
                }
            })
            .collect();
        Preferences { affinities, affinity_weight, spreads, distinct }
    }

    /// Why `node` is ruled out by a `distinct_property` limit, if it is.
    pub fn rejects(&self, node: &Node) -> Option<String> {
        for d in &self.distinct {
            let Some(value) = d.attribute.of(node) else {
                return Some(format!("distinct_property {}: attribute missing", d.name));
            };
            if d.counts.get(value).copied().unwrap_or(0) >= d.limit {
                // Keyed by the constraint, not the value: one reason however many values.
                return Some(format!("distinct_property {}: {} allocation(s) per value already", d.name, d.limit));
            }
        }
        None
    }

    /// The affinity score on `node`: the matching weights over all weights (-1 to 1), or None
    /// when the group has no affinity.
    pub fn affinity(&self, node: &Node) -> Option<f64> {
        if self.affinities.is_empty() {
            return None;
        }
        let matched: f64 = self.affinities.iter().filter(|(check, _)| check.passes(node)).map(|(_, w)| w).sum();
        Some(matched / self.affinity_weight.max(1.0))
    }

    /// The spread score on `node` (-1 to 1), or None when the group has no spread: for each
    /// spread, how far the node's value is below its share of the allocations (1: none there
    /// yet, 0: at its share, -1: over it, or the node lacks the attribute), weighted.
    pub fn spread(&self, node: &Node) -> Option<f64> {
        if self.spreads.is_empty() {
            return None;
        }
        let score = self.spreads.iter().map(|s| s.share * s.score(node)).sum();
        Some(score)
    }

    /// Counts a placement of `group` on `node`.
    pub fn placed(&mut self, group: &str, own_group: bool, node: &Node) {
        if own_group {
            for s in &mut self.spreads {
                if let Some(value) = s.attribute.of(node) {
                    *s.counts.entry(value.to_string()).or_default() += 1;
                }
            }
        }
        for d in self.distinct.iter_mut().filter(|d| d.group.as_deref().is_none_or(|g| g == group)) {
            if let Some(value) = d.attribute.of(node) {
                *d.counts.entry(value.to_string()).or_default() += 1;
            }
        }
    }

    /// True when the group counts allocations by attribute (spread, distinct_property).
    pub fn counts(&self) -> bool {
        !self.spreads.is_empty() || !self.distinct.is_empty()
    }
}

impl SpreadCounts {
    fn score(&self, node: &Node) -> f64 {
        let Some(value) = self.attribute.of(node) else { return -1.0 };
        let here = self.counts.get(value).copied().unwrap_or(0);
        let Some((listed, rest)) = &self.targets else { return self.even_score(here) };
        let (desired, used) = match listed.get(value) {
            Some(desired) => (*desired, f64::from(here)),
            // Values not listed share what the targets leave.
            None => {
                let others = self.counts.iter().filter(|(v, _)| !listed.contains_key(*v)).map(|(_, n)| *n);
                (*rest, f64::from(others.sum::<u32>()))
            }
        };
        if desired <= 0.0 {
            return -1.0;
        }
        ((desired - used) / desired).clamp(-1.0, 1.0)
    }

    /// Nomad's even spread, over the values in use (no scan of every node): a value without
    /// allocations scores 1; the least used value scores by how far the most used is ahead; a
    /// value above the least used, by how far it is ahead; all equal, -1 (any unused value is
    /// better).
    fn even_score(&self, here: u32) -> f64 {
        let (Some(min), Some(max)) = (self.counts.values().min().copied(), self.counts.values().max().copied()) else {
            return 0.0;
        };
        let score = if here == 0 {
            1.0
        } else if here > min {
            (f64::from(min) - f64::from(here)) / f64::from(min.max(1))
        } else if min == max {
            -1.0
        } else {
            f64::from(max - min) / f64::from(min.max(1))
        };
        score.clamp(-1.0, 1.0)
    }
}

/// `distinct_property`'s value: the allocations allowed per attribute value (default 1).
pub fn distinct_limit(value: &str) -> u32 {
    if value.trim().is_empty() {
        1
    } else {
        value.trim().parse().unwrap_or(1)
    }
}

fn count_by<'a>(attribute: &Attribute, live: impl Iterator<Item = &'a Live<'a>>) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for l in live {
        if let Some(value) = attribute.of(l.node) {
            *counts.entry(value.to_string()).or_default() += 1;
        }
    }
    counts
}
