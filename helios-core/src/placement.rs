//! Why an allocation is on its node: the scores the scheduler gave the best candidates, kept with
//! the allocation as Nomad keeps its placement metrics (`alloc status -verbose`, `job plan`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many candidates' scores an allocation keeps, the chosen one first.
pub const KEPT_SCORES: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlacementMetrics {
    /// Nodes looked at, and those ruled out, by reason.
    pub nodes_evaluated: u32,
    pub nodes_filtered: BTreeMap<String, u32>,
    /// The best candidates, best first: the first is the node chosen.
    pub scores: Vec<NodeScore>,
}

/// A candidate node's score and its parts, in thousandths (-1000 to 1000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeScore {
    pub node_id: String,
    pub parts: Vec<(ScoreKind, i32)>,
    pub total: i32,
}

/// The parts of a score, named as Nomad names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScoreKind {
    /// Best fit: the node's utilization after the placement.
    Binpack,
    /// `-(n + 1) / count` on a node already running `n` of the group.
    JobAntiAffinity,
    /// -1 on a node where this slot failed before.
    ReschedulePenalty,
    /// The group's affinities that the node matches.
    NodeAffinity,
    /// How the node's attribute values stand against the group's spreads.
    AllocationSpread,
}

impl ScoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreKind::Binpack => "binpack",
            ScoreKind::JobAntiAffinity => "job-anti-affinity",
            ScoreKind::ReschedulePenalty => "node-reschedule-penalty",
            ScoreKind::NodeAffinity => "node-affinity",
            ScoreKind::AllocationSpread => "allocation-spread",
        }
    }
}

/// A score being built: its parts, averaged into the total (Nomad's normalization). A part
/// that does not apply to a node (no affinity matched, none of the group there) is left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Score {
    parts: [Option<f64>; 5],
}

impl Score {
    pub fn new(binpack: f64) -> Score {
        let mut score = Score::default();
        score.parts[ScoreKind::Binpack as usize] = Some(binpack);
        score
    }

    pub fn with(mut self, kind: ScoreKind, value: f64) -> Score {
        self.parts[kind as usize] = Some(value);
        self
    }

    pub fn total(&self) -> f64 {
        let (sum, n) = self.parts.iter().flatten().fold((0.0, 0.0), |(s, n), v| (s + v, n + 1.0));
        sum / n
    }

    pub fn to_node_score(self, node_id: &str) -> NodeScore {
        const KINDS: [ScoreKind; 5] = [
            ScoreKind::Binpack,
            ScoreKind::JobAntiAffinity,
            ScoreKind::ReschedulePenalty,
            ScoreKind::NodeAffinity,
            ScoreKind::AllocationSpread,
        ];
        let milli = |v: f64| (v * 1000.0).round() as i32;
        NodeScore {
            node_id: node_id.to_string(),
            parts: KINDS.iter().zip(self.parts).filter_map(|(k, v)| Some((*k, milli(v?)))).collect(),
            total: milli(self.total()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_apply_are_averaged() {
        assert_eq!(Score::new(0.6).total(), 0.6);
        let crowded = Score::new(0.6).with(ScoreKind::JobAntiAffinity, -1.0);
        assert!((crowded.total() - (-0.2)).abs() < 1e-9);
        let kept = crowded.with(ScoreKind::NodeAffinity, 1.0).to_node_score("n");
        assert_eq!(
            kept.parts,
            [(ScoreKind::Binpack, 600), (ScoreKind::JobAntiAffinity, -1000), (ScoreKind::NodeAffinity, 1000)]
        );
        assert_eq!(kept.total, 200);
    }
}
