//! Applying the ACL commands: policies, tokens (stored with their secret's hash, and found by it
//! through `acl_token_secrets`), and the one-time bootstrap.

use helios_core::acl::{AclPolicy, AclToken};
use helios_core::{CommandResponse, RejectionKind};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::encode;
use crate::store::tables::ACL_BOOTSTRAP_INDEX;

impl StateTables<'_> {
    pub(super) fn acl_bootstrap(
        &mut self,
        token: AclToken,
        reset_index: Option<u64>,
    ) -> Result<CommandResponse, redb::Error> {
        let done: Option<u64> = get(&self.cluster, ACL_BOOTSTRAP_INDEX)?;
        if let Some(index) = done {
            if reset_index != Some(index) {
                return Ok(CommandResponse::rejected(
                    RejectionKind::FailedPrecondition,
                    format!(
                        "ACLs were bootstrapped already (reset index {index}); to bootstrap again, write {index} \
                         into acl-bootstrap-reset in a server's --data-dir and ask that server"
                    ),
                ));
            }
        }
        self.cluster.insert(ACL_BOOTSTRAP_INDEX, encode(&self.index).as_slice())?;
        self.put_token(&token)?;
        Ok(CommandResponse::AclChanged)
    }

    pub(super) fn upsert_acl_policy(&mut self, policy: AclPolicy) -> Result<CommandResponse, redb::Error> {
        self.acl_policies.insert(policy.name.as_str(), encode(&policy).as_slice())?;
        Ok(CommandResponse::AclChanged)
    }

    pub(super) fn delete_acl_policy(&mut self, name: &str) -> Result<CommandResponse, redb::Error> {
        if self.acl_policies.remove(name)?.is_none() {
            return Ok(CommandResponse::rejected(RejectionKind::NotFound, format!("ACL policy {name:?} not found")));
        }
        Ok(CommandResponse::AclChanged)
    }

    pub(super) fn upsert_acl_token(&mut self, token: AclToken) -> Result<CommandResponse, redb::Error> {
        for name in &token.policies {
            if self.acl_policies.get(name.as_str())?.is_none() {
                return Ok(CommandResponse::rejected(
                    RejectionKind::NotFound,
                    format!("ACL policy {name:?} not found"),
                ));
            }
        }
        if let Some(old) = get::<AclToken>(&self.acl_tokens, &token.accessor_id)? {
            self.acl_token_secrets.remove(old.secret_hash.as_str())?;
        }
        self.put_token(&token)?;
        Ok(CommandResponse::AclChanged)
    }

    pub(super) fn delete_acl_token(&mut self, accessor_id: &str) -> Result<CommandResponse, redb::Error> {
        let Some(token) = get::<AclToken>(&self.acl_tokens, accessor_id)? else {
            return Ok(CommandResponse::rejected(
                RejectionKind::NotFound,
                format!("ACL token {accessor_id:?} not found"),
            ));
        };
        self.acl_tokens.remove(accessor_id)?;
        self.acl_token_secrets.remove(token.secret_hash.as_str())?;
        Ok(CommandResponse::AclChanged)
    }

    fn put_token(&mut self, token: &AclToken) -> Result<(), redb::Error> {
        self.acl_tokens.insert(token.accessor_id.as_str(), encode(token).as_slice())?;
        self.acl_token_secrets.insert(token.secret_hash.as_str(), token.accessor_id.as_bytes())?;
        Ok(())
    }
}
