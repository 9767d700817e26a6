//! Who may make a public call: with ACLs on, the token in `x-helios-token` (or the `anonymous`
//! policy, for calls without one) must grant the call's capability.
//!
//! The leader decides (`Cluster::authorize`), from tables holding every ACL change it
//! acknowledged, so a token deleted (or a policy changed) through any server is refused at once
//! by every server. A refusal names the capability the
//! call needed and nothing else: not whether the token exists, has expired or lacks a policy.

use helios_core::acl::{AclToken, Capability};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use super::errors::cluster_status;
use crate::cluster::Cluster;

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
    authorize_secret(cluster, presented_secret(request).map(|s| secret_hash(&s)), capability).await
}

/// As `authorize_secret`, decided from this server's own tables rather than by the leader: for a
/// stream that must not send anything logged after a revocation this server has applied.
pub async fn authorize_locally(cluster: &Cluster, hash: Option<String>, capability: Capability) -> Result<(), Status> {
    if !cluster.acl_enabled {
        return Ok(());
    }
    let now = crate::clock::now();
    let (_, grants) = cluster
        .read_local(move |txn| crate::store::read::acl_grants(txn, hash.as_deref(), now))
        .await
        .map_err(cluster_status)?;
    if grants.allows(capability) {
        Ok(())
    } else {
        Err(denied(capability))
    }
}

fn denied(capability: Capability) -> Status {
    helios_api::errors::coded(
        tonic::Code::PermissionDenied,
        format!("permission denied: this call needs {}", capability.as_str()),
    )
}

/// As `authorize`, for a secret already taken from its request (by its hash): a stream checks
/// it again when ACLs change.
pub async fn authorize_secret(
    cluster: &Cluster,
    hash: Option<String>,
    capability: Capability,
) -> Result<Option<AclToken>, Status> {
    if !cluster.acl_enabled {
        return Ok(None);
    }
    let (token, allowed) = cluster.authorize(hash, capability).await.map_err(cluster_status)?;
    if allowed {
        Ok(token)
    } else {
        Err(denied(capability))
    }
}
