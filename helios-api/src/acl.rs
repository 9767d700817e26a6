//! Protobuf <-> core for access control: policies (strict: unknown levels and capabilities are
//! field errors, all reported together) and tokens (never with their secret's hash).

use helios_core::acl::{AclPolicy, AclToken, Capability, Level, PolicyRules};
use helios_core::{FieldError, Timestamp, ValidationErrors};

use crate::pb;

/// The gRPC metadata key that carries an ACL token's secret.
pub const TOKEN_HEADER: &str = "x-helios-token";

/// Adds a token's secret to every call through a channel (none: calls go anonymous).
#[derive(Clone, Default)]
pub struct WithToken(Option<tonic::metadata::AsciiMetadataValue>);

impl WithToken {
    /// Refuses a secret that cannot be a header value.
    pub fn new(secret: Option<&str>) -> Result<WithToken, String> {
        match secret.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(WithToken(None)),
            Some(s) => {
                s.parse().map(|v| WithToken(Some(v))).map_err(|_| "the token is not printable ASCII".to_string())
            }
        }
    }
}

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            request.metadata_mut().insert(TOKEN_HEADER, secret.clone());
        }
        Ok(request)
    }
}

/// An area's level as the API gives it; unset is no rule.
pub fn level_from_pb(level: pb::AclLevel) -> Option<Level> {
    match level {
        pb::AclLevel::Unspecified => None,
        pb::AclLevel::Deny => Some(Level::Deny),
        pb::AclLevel::Read => Some(Level::Read),
        pb::AclLevel::Write => Some(Level::Write),
    }
}

pub fn level_to_pb(level: Option<Level>) -> pb::AclLevel {
    match level {
        None => pb::AclLevel::Unspecified,
        Some(Level::Deny) => pb::AclLevel::Deny,
        Some(Level::Read) => pb::AclLevel::Read,
        Some(Level::Write) => pb::AclLevel::Write,
    }
}

/// A policy file's level word (`policy = "read"`), for the CLI.
pub fn level_from_word(word: &str) -> Result<pb::AclLevel, String> {
    Level::parse(word).map(|level| level_to_pb(Some(level)))
}

/// A job capability as the API gives it; unset names none.
pub fn job_capability_from_pb(capability: pb::AclJobCapability) -> Option<Capability> {
    match capability {
        pb::AclJobCapability::Unspecified => None,
        pb::AclJobCapability::ListJobs => Some(Capability::ListJobs),
        pb::AclJobCapability::ReadJob => Some(Capability::ReadJob),
        pb::AclJobCapability::SubmitJob => Some(Capability::SubmitJob),
        pb::AclJobCapability::ReadLogs => Some(Capability::ReadLogs),
        pb::AclJobCapability::AllocLifecycle => Some(Capability::AllocLifecycle),
    }
}

/// A job capability for the API; `None` for the capabilities of other areas, which a policy
/// grants through their levels.
pub fn job_capability_to_pb(capability: Capability) -> Option<pb::AclJobCapability> {
    match capability {
        Capability::ListJobs => Some(pb::AclJobCapability::ListJobs),
        Capability::ReadJob => Some(pb::AclJobCapability::ReadJob),
        Capability::SubmitJob => Some(pb::AclJobCapability::SubmitJob),
        Capability::ReadLogs => Some(pb::AclJobCapability::ReadLogs),
        Capability::AllocLifecycle => Some(pb::AclJobCapability::AllocLifecycle),
        _ => None,
    }
}

/// A policy file's capability word (`capabilities = ["read-logs"]`), for the CLI.
pub fn job_capability_from_word(word: &str) -> Result<pb::AclJobCapability, String> {
    let capability = Capability::parse_job(word)?;
    job_capability_to_pb(capability).ok_or_else(|| format!("{word:?} is not a job capability"))
}

fn level(errors: &mut Vec<FieldError>, field: &str, value: i32) -> Option<Level> {
    match pb::AclLevel::try_from(value) {
        Ok(level) => level_from_pb(level),
        Err(_) => {
            errors.push(FieldError { field: field.to_string(), problem: format!("{value} is not an AclLevel") });
            None
        }
    }
}

/// A policy as a caller sends it; `now` stamps its modification time.
pub fn policy_from_pb(policy: pb::AclPolicy, now: Timestamp) -> Result<AclPolicy, ValidationErrors> {
    let mut errors = Vec::new();
    if let Err(problem) = helios_core::acl::check_policy_name(&policy.name) {
        errors.push(FieldError { field: "policy.name".into(), problem });
    }
    let rules = policy.rules.unwrap_or_default();
    let mut parsed = PolicyRules {
        job_level: level(&mut errors, "policy.rules.job_policy", rules.job_policy),
        node: level(&mut errors, "policy.rules.node", rules.node),
        operator: level(&mut errors, "policy.rules.operator", rules.operator),
        agent: level(&mut errors, "policy.rules.agent", rules.agent),
        ..Default::default()
    };
    for (i, &value) in rules.job_capabilities.iter().enumerate() {
        match pb::AclJobCapability::try_from(value).ok().and_then(job_capability_from_pb) {
            Some(c) => {
                parsed.job_capabilities.insert(c);
            }
            None => errors.push(FieldError {
                field: format!("policy.rules.job_capabilities[{i}]"),
                problem: if value == pb::AclJobCapability::Unspecified as i32 {
                    "must name a capability (ACL_JOB_CAPABILITY_UNSPECIFIED names none)".to_string()
                } else {
                    format!("{value} is not an AclJobCapability")
                },
            }),
        }
    }
    if parsed == PolicyRules::default() {
        errors.push(FieldError {
            field: "policy.rules".into(),
            problem: "grants nothing: give at least one rule".into(),
        });
    }
    if policy.source.len() > helios_core::limits::MAX_MESSAGE_BYTES / 4 {
        errors.push(FieldError { field: "policy.source".into(), problem: "is too long".into() });
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors));
    }
    Ok(AclPolicy {
        name: policy.name,
        description: policy.description,
        rules: parsed,
        source: policy.source,
        modified_at: now,
    })
}

pub fn policy_to_pb(policy: &AclPolicy) -> pb::AclPolicy {
    let level = |l: Option<Level>| level_to_pb(l) as i32;
    let capabilities = policy.rules.job_capabilities.iter().filter_map(|&c| job_capability_to_pb(c));
    pb::AclPolicy {
        name: policy.name.clone(),
        description: policy.description.clone(),
        rules: Some(pb::AclPolicyRules {
            job_policy: level(policy.rules.job_level),
            job_capabilities: capabilities.map(|c| c as i32).collect(),
            node: level(policy.rules.node),
            operator: level(policy.rules.operator),
            agent: level(policy.rules.agent),
        }),
        source: policy.source.clone(),
        update_time: Some(crate::convert::timestamp_to_pb(policy.modified_at)),
    }
}

/// A token, with `secret` only when it was just made.
pub fn token_to_pb(token: &AclToken, secret: Option<&str>) -> pb::AclToken {
    pb::AclToken {
        accessor_id: token.accessor_id.clone(),
        secret_id: secret.unwrap_or_default().to_string(),
        name: token.name.clone(),
        r#type: crate::convert::token_type_to_pb(token.token_type) as i32,
        policies: token.policies.clone(),
        create_time: Some(crate::convert::timestamp_to_pb(token.created_at)),
        expire_time: token.expires_at.map(crate::convert::timestamp_to_pb),
    }
}
