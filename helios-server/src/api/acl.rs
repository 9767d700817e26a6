//! `AclService`: bootstrap, policies and tokens. Only a management token manages them; any
//! valid token may read itself.

use helios_api::acl::{policy_from_pb, policy_to_pb, token_to_pb};
use helios_api::pb;
use helios_api::pb::acl_service_server::AclService;
use helios_core::acl::{AclToken, Capability, TokenType};
use helios_core::command::answer::AclChanged;
use helios_core::page::Order;
use helios_core::Command;
use tonic::{Request, Response, Status};

use super::auth::{authorize, presented_secret, secret_hash};
use super::errors::{cluster_status, invalid, require_name};
use super::pages;
use super::retries::{self, write_once};
use crate::clock;
use crate::cluster::{Cluster, WriteConditions};
use crate::store::read;

pub struct Acl {
    pub cluster: Cluster,
}

/// The file an operator writes a bootstrap's reset index into, in a server's data dir.
pub const RESET_FILE: &str = "acl-bootstrap-reset";

impl Acl {
    fn require_enabled(&self) -> Result<(), Status> {
        if self.cluster.acl_enabled {
            Ok(())
        } else {
            Err(Status::failed_precondition("ACLs are not enabled: start the servers with --acl-enabled"))
        }
    }

    /// Management tokens only; returns the caller's.
    async fn manage<T>(&self, request: &Request<T>) -> Result<Option<AclToken>, Status> {
        self.require_enabled()?;
        authorize(&self.cluster, request, Capability::Management).await
    }

    async fn commit(&self, command: Command) -> Result<u64, Status> {
        self.commit_once(WriteConditions::default(), command).await
    }

    /// `commit`, once per client request (`retries`).
    async fn commit_once(&self, conditions: WriteConditions, command: Command) -> Result<u64, Status> {
        let (index, AclChanged) = write_once(&self.cluster, conditions, async { Ok(command) }).await?;
        Ok(index)
    }

    /// A new token with a fresh accessor and secret; returns it with the secret.
    fn mint(name: String, token_type: TokenType, policies: Vec<String>, ttl_ms: u64) -> (AclToken, String) {
        let secret = uuid::Uuid::new_v4().to_string();
        let now = clock::now();
        let token = AclToken {
            accessor_id: uuid::Uuid::new_v4().to_string(),
            secret_hash: secret_hash(&secret),
            name,
            token_type,
            policies,
            created_at: now,
            expires_at: (ttl_ms > 0).then(|| helios_core::Timestamp(now.as_millis().saturating_add(ttl_ms))),
        };
        (token, secret)
    }

    /// The reset index an operator left in this server's data dir, if any.
    fn reset_index(&self) -> Result<Option<u64>, Status> {
        let path = self.cluster.data_dir.join(RESET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Status::failed_precondition(format!("{} must hold a log index", path.display()))),
            Err(_) => Ok(None),
        }
    }
}

#[tonic::async_trait]
impl AclService for Acl {
    async fn bootstrap(
        &self,
        _request: Request<pb::AclBootstrapRequest>,
    ) -> Result<Response<pb::AclBootstrapResponse>, Status> {
        self.require_enabled()?;
        let reset_index = self.reset_index()?;
        // Refused here when it would be refused at apply: an anonymous call must not be able to
        // grow the Raft log. (The state machine decides again, against a racing bootstrap.)
        let done = self.cluster.read(read::acl_bootstrap_index).await.map_err(cluster_status)?;
        if let Some(index) = done.filter(|i| reset_index != Some(*i)) {
            return Err(Status::failed_precondition(format!(
                "ACLs were bootstrapped already (reset index {index}); to bootstrap again, write {index} into \
                 {RESET_FILE} in a server's --data-dir and ask that server"
            )));
        }
        let (token, secret) = Self::mint("Bootstrap Token".into(), TokenType::Management, Vec::new(), 0);
        self.commit(Command::AclBootstrap { token: token.clone(), reset_index }).await?;
        Ok(Response::new(pb::AclBootstrapResponse { token: Some(token_to_pb(&token, Some(&secret))) }))
    }

    async fn upsert_policy(
        &self,
        request: Request<pb::UpsertAclPolicyRequest>,
    ) -> Result<Response<pb::UpsertAclPolicyResponse>, Status> {
        let caller = self.manage(&request).await?;
        let conditions = retries::conditions("UpsertPolicy", caller.as_ref(), request.get_ref())?;
        let policy = request.into_inner().policy.ok_or_else(|| invalid("policy", "must be set"))?;
        let policy = policy_from_pb(policy, clock::now()).map_err(|e| helios_api::invalid_argument(&e))?;
        let index = self.commit_once(conditions, Command::UpsertAclPolicy { policy }).await?;
        Ok(Response::new(pb::UpsertAclPolicyResponse { index }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeleteAclPolicyRequest>,
    ) -> Result<Response<pb::DeleteAclPolicyResponse>, Status> {
        let caller = self.manage(&request).await?;
        let conditions = retries::conditions("DeletePolicy", caller.as_ref(), request.get_ref())?;
        let name = request.into_inner().name;
        require_name("name", &name)?;
        let index = self.commit_once(conditions, Command::DeleteAclPolicy { name }).await?;
        Ok(Response::new(pb::DeleteAclPolicyResponse { index }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListAclPoliciesRequest>,
    ) -> Result<Response<pb::ListAclPoliciesResponse>, Status> {
        self.manage(&request).await?;
        let page = pages::requested("acl-policies", request.get_ref().page_size, &request.get_ref().page_token)?;
        let policies = self.cluster.read(read::acl_policies).await.map_err(cluster_status)?;
        let (policies, next_page_token) = page.page(
            policies.iter().map(policy_to_pb).collect(),
            Order::Ascending,
            |p| p.name.clone(),
            helios_api::encoded_len,
        );
        Ok(Response::new(pb::ListAclPoliciesResponse { policies, next_page_token }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetAclPolicyRequest>,
    ) -> Result<Response<pb::GetAclPolicyResponse>, Status> {
        self.manage(&request).await?;
        let name = request.into_inner().name;
        require_name("name", &name)?;
        let lookup = name.clone();
        let policy = self.cluster.read(move |txn| read::acl_policy(txn, &lookup)).await.map_err(cluster_status)?;
        let policy = policy.ok_or_else(|| Status::not_found(format!("ACL policy {name:?} not found")))?;
        Ok(Response::new(pb::GetAclPolicyResponse { policy: Some(policy_to_pb(&policy)) }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateAclTokenRequest>,
    ) -> Result<Response<pb::CreateAclTokenResponse>, Status> {
        self.manage(&request).await?;
        let req = request.into_inner();
        let token_type = match req.r#type.as_str() {
            "" | "client" => TokenType::Client,
            "management" => TokenType::Management,
            other => return Err(invalid("type", format!("must be client or management, got {other:?}"))),
        };
        if token_type == TokenType::Client && req.policies.is_empty() {
            return Err(invalid("policies", "a client token needs at least one policy"));
        }
        if token_type == TokenType::Management && !req.policies.is_empty() {
            return Err(invalid("policies", "a management token may do everything; it takes no policies"));
        }
        for (i, name) in req.policies.iter().enumerate() {
            require_name(&format!("policies[{i}]"), name)?;
        }
        if req.name.len() > helios_core::limits::MAX_NAME_LEN {
            return Err(invalid("name", "is too long"));
        }
        let (token, secret) = Self::mint(req.name, token_type, req.policies, req.ttl_ms);
        self.commit(Command::UpsertAclToken { token: token.clone() }).await?;
        Ok(Response::new(pb::CreateAclTokenResponse { token: Some(token_to_pb(&token, Some(&secret))) }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteAclTokenRequest>,
    ) -> Result<Response<pb::DeleteAclTokenResponse>, Status> {
        let caller = self.manage(&request).await?;
        let conditions = retries::conditions("DeleteToken", caller.as_ref(), request.get_ref())?;
        let accessor_id = request.into_inner().accessor_id;
        require_name("accessor_id", &accessor_id)?;
        let index = self.commit_once(conditions, Command::DeleteAclToken { accessor_id }).await?;
        Ok(Response::new(pb::DeleteAclTokenResponse { index }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListAclTokensRequest>,
    ) -> Result<Response<pb::ListAclTokensResponse>, Status> {
        self.manage(&request).await?;
        let page = pages::requested("acl-tokens", request.get_ref().page_size, &request.get_ref().page_token)?;
        let tokens = self.cluster.read(read::acl_tokens).await.map_err(cluster_status)?;
        let (tokens, next_page_token) = page.page(
            tokens.iter().map(|t| token_to_pb(t, None)).collect(),
            Order::Ascending,
            |t| t.accessor_id.clone(),
            helios_api::encoded_len,
        );
        Ok(Response::new(pb::ListAclTokensResponse { tokens, next_page_token }))
    }

    async fn get_token(
        &self,
        request: Request<pb::GetAclTokenRequest>,
    ) -> Result<Response<pb::GetAclTokenResponse>, Status> {
        self.manage(&request).await?;
        let accessor = request.into_inner().accessor_id;
        require_name("accessor_id", &accessor)?;
        let lookup = accessor.clone();
        let token = self.cluster.read(move |txn| read::acl_token(txn, &lookup)).await.map_err(cluster_status)?;
        let token = token.ok_or_else(|| Status::not_found(format!("ACL token {accessor:?} not found")))?;
        Ok(Response::new(pb::GetAclTokenResponse { token: Some(token_to_pb(&token, None)) }))
    }

    async fn get_token_self(
        &self,
        request: Request<pb::GetAclTokenSelfRequest>,
    ) -> Result<Response<pb::GetAclTokenSelfResponse>, Status> {
        self.require_enabled()?;
        let denied = || Status::permission_denied("permission denied: this call needs a valid token");
        let secret = presented_secret(&request).ok_or_else(denied)?;
        let hash = secret_hash(&secret);
        let now = clock::now();
        let token = self
            .cluster
            .read(move |txn| read::acl_token_by_secret(txn, &hash))
            .await
            .map_err(cluster_status)?
            .filter(|t| !t.is_expired(now))
            .ok_or_else(denied)?;
        Ok(Response::new(pb::GetAclTokenSelfResponse { token: Some(token_to_pb(&token, None)) }))
    }
}
