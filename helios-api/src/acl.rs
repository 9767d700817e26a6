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

fn level(errors: &mut Vec<FieldError>, field: &str, text: &str) -> Option<Level> {
    if text.is_empty() {
        return None;
    }
    match Level::parse(text) {
        Ok(level) => Some(level),
        Err(problem) => {
            errors.push(FieldError { field: field.to_string(), problem });
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
        job_level: level(&mut errors, "policy.rules.job_policy", &rules.job_policy),
        node: level(&mut errors, "policy.rules.node", &rules.node),
        operator: level(&mut errors, "policy.rules.operator", &rules.operator),
        agent: level(&mut errors, "policy.rules.agent", &rules.agent),
        ..Default::default()
    };
    for (i, cap) in rules.job_capabilities.iter().enumerate() {
        match Capability::parse_job(cap) {
            Ok(c) => {
                parsed.job_capabilities.insert(c);
            }
            Err(problem) => errors.push(FieldError { field: format!("policy.rules.job_capabilities[{i}]"), problem }),
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
    let level = |l: Option<Level>| l.map_or(String::new(), |l| l.as_str().to_string());
    pb::AclPolicy {
        name: policy.name.clone(),
        description: policy.description.clone(),
        rules: Some(pb::AclPolicyRules {
            job_policy: level(policy.rules.job_level),
            job_capabilities: policy.rules.job_capabilities.iter().map(|c| c.as_str().to_string()).collect(),
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
