//! Access control, Nomad's model trimmed to what Helios has: policies grant capabilities, tokens
//! carry policies, and every public call needs one capability.
//!
//! A policy has rules for jobs (Nomad's `namespace "default"` block: a `policy` level and/or
//! explicit `capabilities`), and a level each for `node`, `operator` and `agent`. A management
//! token may do everything. Pure logic: the server resolves the caller's token and policies from
//! its tables and asks `Grants::allows`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// What one call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    /// List jobs (`job list`).
    ListJobs,
    /// Read a job, its versions, allocations and evaluations (`job status`, `alloc status`).
    ReadJob,
    /// Register, update, plan, stop and purge jobs.
    SubmitJob,
    /// Read task logs (`alloc logs`, `job logs`).
    ReadLogs,
    /// Stop an allocation (`alloc stop`).
    AllocLifecycle,
    /// Read nodes.
    NodeRead,
    /// Drain nodes, change their eligibility, purge them.
    NodeWrite,
    /// Server digests.
    OperatorRead,
    /// Join and remove servers.
    OperatorWrite,
    /// The servers' own view of the cluster (`server members`).
    AgentRead,
    /// Manage policies and tokens.
    Management,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ListJobs => "list-jobs",
            Capability::ReadJob => "read-job",
            Capability::SubmitJob => "submit-job",
            Capability::ReadLogs => "read-logs",
            Capability::AllocLifecycle => "alloc-lifecycle",
            Capability::NodeRead => "node:read",
            Capability::NodeWrite => "node:write",
            Capability::OperatorRead => "operator:read",
            Capability::OperatorWrite => "operator:write",
            Capability::AgentRead => "agent:read",
            Capability::Management => "management",
        }
    }

    /// A job capability as a policy names it in `capabilities = [...]`.
    pub fn parse_job(text: &str) -> Result<Capability, String> {
        Ok(match text {
            "list-jobs" => Capability::ListJobs,
            "read-job" => Capability::ReadJob,
            "submit-job" => Capability::SubmitJob,
            "read-logs" => Capability::ReadLogs,
            "alloc-lifecycle" => Capability::AllocLifecycle,
            "dispatch-job" | "scale-job" | "read-fs" | "alloc-exec" | "alloc-node-exec" | "csi-read-volume"
            | "csi-write-volume" | "list-scaling-policies" | "read-scaling-policy" | "read-job-scaling"
            | "submit-recommendation" | "sentinel-override" | "host-volume-register" => {
                return Err(format!(
                    "capability {text:?} is Nomad's, for a feature Helios does not have; Helios knows \
                     list-jobs, read-job, submit-job, read-logs, alloc-lifecycle"
                ))
            }
            other => {
                return Err(format!(
                    "unknown capability {other:?}; Helios knows list-jobs, read-job, submit-job, read-logs, alloc-lifecycle"
                ))
            }
        })
    }
}

/// A coarse level, as `policy = "..."` gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    #[default]
    Deny,
    Read,
    Write,
}

impl Level {
    pub fn parse(text: &str) -> Result<Level, String> {
        match text {
            "deny" => Ok(Level::Deny),
            "read" => Ok(Level::Read),
            "write" => Ok(Level::Write),
            other => Err(format!("policy must be \"deny\", \"read\" or \"write\", got {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Deny => "deny",
            Level::Read => "read",
            Level::Write => "write",
        }
    }
}

/// One policy's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRules {
    /// Jobs: a level, widened by explicit capabilities. `deny` takes precedence over everything.
    pub job_level: Option<Level>,
    pub job_capabilities: BTreeSet<Capability>,
    pub node: Option<Level>,
    pub operator: Option<Level>,
    pub agent: Option<Level>,
}

impl PolicyRules {
    fn job_grants(&self) -> BTreeSet<Capability> {
        use Capability::*;
        let mut grants = self.job_capabilities.clone();
        match self.job_level {
            Some(Level::Read) => grants.extend([ListJobs, ReadJob]),
            Some(Level::Write) => grants.extend([ListJobs, ReadJob, SubmitJob, ReadLogs, AllocLifecycle]),
            _ => {}
        }
        grants
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct AclPolicy {
    pub name: String,
    pub description: String,
    pub rules: PolicyRules,
    /// The policy as written (HCL or JSON), for `acl policy info`.
    pub source: String,
    pub modified_at: Timestamp,
}

crate::versioned!(AclPolicy = 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenType {
    /// Holds policies.
    Client,
    /// May do everything.
    Management,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Client => "client",
            TokenType::Management => "management",
        }
    }
}

/// A token as stored: its secret only as a SHA-256 (the server hashes what callers present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct AclToken {
    /// Public id, for listing and deleting.
    pub accessor_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub name: String,
    pub token_type: TokenType,
    pub policies: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

crate::versioned!(AclToken = 1);

impl AclToken {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The name of the policy that applies to calls without a token.
pub const ANONYMOUS_POLICY: &str = "anonymous";

/// What a caller may do: everything, or the union of its policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub management: bool,
    granted: BTreeSet<Capability>,
}

impl Grants {
    pub fn management() -> Grants {
        Grants { management: true, granted: BTreeSet::new() }
    }

    /// The union of `policies`; a `deny` level in any of them removes that area entirely.
    pub fn of(policies: &[&PolicyRules]) -> Grants {
        use Capability::*;
        let mut granted = BTreeSet::new();
        let mut denied = BTreeSet::new();
        for p in policies {
            if p.job_level == Some(Level::Deny) {
                denied.extend([ListJobs, ReadJob, SubmitJob, ReadLogs, AllocLifecycle]);
            }
            granted.extend(p.job_grants());
            for (level, read, write) in [
                (p.node, NodeRead, NodeWrite),
                (p.operator, OperatorRead, OperatorWrite),
                (p.agent, AgentRead, AgentRead),
            ] {
                match level {
                    Some(Level::Deny) => denied.extend([read, write]),
                    Some(Level::Read) => {
                        granted.insert(read);
                    }
                    Some(Level::Write) => granted.extend([read, write]),
                    None => {}
                }
            }
        }
        granted.retain(|c| !denied.contains(c));
        Grants { management: false, granted }
    }

    pub fn allows(&self, capability: Capability) -> bool {
        self.management || (capability != Capability::Management && self.granted.contains(&capability))
    }
}

/// Policy and token names: the same rules as other names.
pub fn check_policy_name(name: &str) -> Result<(), String> {
    crate::validate::check_name(name)
}

/// Parses a TTL such as `30s`, `15m`, `8h`, `7d` into milliseconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    crate::time::parse_duration_ms(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(job: Option<Level>, caps: &[Capability], node: Option<Level>) -> PolicyRules {
        PolicyRules { job_level: job, job_capabilities: caps.iter().copied().collect(), node, ..Default::default() }
    }

    #[test]
    fn levels_grant_nomads_capabilities_and_deny_wins() {
        let read = rules(Some(Level::Read), &[], Some(Level::Read));
        let g = Grants::of(&[&read]);
        assert!(g.allows(Capability::ReadJob) && g.allows(Capability::ListJobs) && g.allows(Capability::NodeRead));
        assert!(
            !g.allows(Capability::SubmitJob) && !g.allows(Capability::NodeWrite) && !g.allows(Capability::ReadLogs)
        );
        let logs = rules(None, &[Capability::ReadLogs], None);
        assert!(Grants::of(&[&read, &logs]).allows(Capability::ReadLogs), "policies add up");
        let deny = rules(Some(Level::Deny), &[], Some(Level::Deny));
        let g = Grants::of(&[&read, &logs, &deny]);
        assert!(!g.allows(Capability::ReadJob) && !g.allows(Capability::ReadLogs) && !g.allows(Capability::NodeRead));
        let write = rules(Some(Level::Write), &[], None);
        assert!(Grants::of(&[&write]).allows(Capability::AllocLifecycle));
        assert!(!Grants::of(&[&write]).allows(Capability::Management), "only management tokens manage");
        assert!(Grants::management().allows(Capability::OperatorWrite));
    }

    #[test]
    fn capabilities_and_ttls_parse_with_clear_errors() {
        assert_eq!(Capability::parse_job("submit-job"), Ok(Capability::SubmitJob));
        assert!(Capability::parse_job("dispatch-job").unwrap_err().contains("Helios does not have"));
        assert!(Capability::parse_job("fly").unwrap_err().contains("unknown capability"));
        assert_eq!(parse_ttl("90s"), Ok(90_000));
        assert_eq!(parse_ttl("2h"), Ok(7_200_000));
        for bad in ["", "5", "0s", "s", "5y", "-1m"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
