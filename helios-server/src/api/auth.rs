//! Who may make a public call: with ACLs on, the token in `x-helios-token` (or the `anonymous`
//! policy, for calls without one) must grant the call's capability.
//!
//! The token and its policies are read linearizably, so a token deleted (or a policy changed)
//! through any server is refused at once by every server. A refusal names the capability the
//! call needed and nothing else: not whether the token exists, has expired or lacks a policy.

use helios_core::acl::{AclToken, Capability, Grants, TokenType, ANONYMOUS_POLICY};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use super::errors::cluster_status;
use crate::clock;
use crate::cluster::Cluster;
use crate::store::read;

pub use helios_api::acl::TOKEN_HEADER;

/// Hex SHA-256 of a secret: what is stored, and what a presented secret is looked up by.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret a request carries, if any.
pub fn presented_secret<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get(TOKEN_HEADER)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Checks that the caller may use `capability`; returns its token (None: ACLs off, or anonymous).
pub async fn authorize<T>(
    cluster: &Cluster,
    request: &Request<T>,
    capability: Capability,
) -> Result<Option<AclToken>, Status> {
    if !cluster.acl_enabled {
        return Ok(None);
    }
    let hash = presented_secret(request).map(|s| secret_hash(&s));
    let now = clock::now();
    let (token, grants) = cluster
        .read(move |txn| {
            let token = match &hash {
                Some(hash) => read::acl_token_by_secret(txn, hash)?.filter(|t| !t.is_expired(now)),
                None => None,
            };
            let grants = match &token {
                Some(t) if t.token_type == TokenType::Management => Grants::management(),
                Some(t) => {
                    let mut policies = Vec::new();
                    for name in &t.policies {
                        policies.extend(read::acl_policy(txn, name)?);
                    }
                    Grants::of(&policies.iter().map(|p| &p.rules).collect::<Vec<_>>())
                }
                // No token, or one that is unknown or expired: what anonymous callers may do.
                None => match read::acl_policy(txn, ANONYMOUS_POLICY)? {
                    Some(p) => Grants::of(&[&p.rules]),
                    None => Grants::default(),
                },
            };
            Ok((token, grants))
        })
        .await
        .map_err(cluster_status)?;
    if grants.allows(capability) {
        Ok(token)
    } else {
        Err(Status::permission_denied(format!("permission denied: this call needs {}", capability.as_str())))
    }
}
