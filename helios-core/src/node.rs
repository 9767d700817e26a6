use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::Resources;
use crate::time::Timestamp;

/// A machine running a client agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Node {
    pub id: String,
    pub hostname: String,
    /// The agent's own gRPC service (`--client-rpc-addr`), which serves task logs.
    pub rpc_addr: String,
    /// Fingerprinted: `os`, `arch`, `driver.docker.version`, ...
    pub attributes: BTreeMap<String, String>,
    /// Operator-supplied (`--meta KEY=VALUE`).
    pub meta: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub resources: Resources,
    pub status: NodeStatus,
    pub eligibility: NodeEligibility,
    pub drain: bool,
    pub registered_at: Timestamp,
    pub status_updated_at: Timestamp,
    /// Chosen by the agent at its first start and kept in its data dir; every later call from
    /// the agent must carry it. Never returned by the API.
    pub secret_id: String,
}

crate::versioned!(Node = 1);

impl Node {
    /// Whether `secret` is this node's, compared in constant time (a byte-by-byte early exit
    /// would let a caller guess the secret a byte at a time by timing refusals).
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (self.secret_id.as_bytes(), secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Initializing,
    Ready,
    Down,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 3] = [NodeStatus::Initializing, NodeStatus::Ready, NodeStatus::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Initializing => "initializing",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeEligibility {
    Eligible,
    Ineligible,
}

impl NodeEligibility {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEligibility::Eligible => "eligible",
            NodeEligibility::Ineligible => "ineligible",
        }
    }
}
