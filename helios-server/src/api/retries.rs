//! Safe retries (AIP-155) and check-and-set for the mutating calls: a request's `request_id`
//! becomes the proposal's `ClientRequest`, and a retry already answered is answered again before
//! anything is checked or built, so it gets the first attempt's answer even when that attempt
//! changed what the checks look at (a stopped allocation, a purged job).

use std::future::Future;

use helios_api::retries::RetryableRequest;
use helios_core::acl::AclToken;
use helios_core::command::request::check_request_id;
use helios_core::command::{Answer, ClientRequest};
use helios_core::Command;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::errors::{cluster_status, invalid, rejection_status};
use crate::cluster::{expect_answer, Cluster, WriteConditions};
use crate::store::read;

/// The write conditions of `request`, a call to `method` by `caller`: its client request, if it
/// has an id. The digest covers the call, the caller's token and the request without its id, so
/// the same id in another call, from another token or with other fields is a different request.
pub fn conditions<T: RetryableRequest>(
    method: &str,
    caller: Option<&AclToken>,
    request: &T,
) -> Result<WriteConditions, Status> {
    let id = request.request_id();
    if id.is_empty() {
        return Ok(WriteConditions::default());
    }
    check_request_id(id).map_err(|problem| invalid("request_id", problem))?;
    let mut digest = Sha256::new();
    for part in [method.as_bytes(), caller.map_or(&[][..], |t| t.accessor_id.as_bytes())] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.update(request.bytes_without_id());
    let client_request = ClientRequest { id: id.to_string(), digest: hex::encode(digest.finalize()) };
    Ok(WriteConditions { client_request: Some(client_request), precondition: None })
}

/// Proposes the command `build` makes, under `conditions`. A client request already answered
/// gets that answer without `build` running, as its checks would see the first attempt's effects
/// (a purged job): this server's own state is asked first, and if it has not applied the first
/// attempt yet and `build` refuses, the leader's (a linearizable read) before the refusal
/// stands. Whatever slips past both is still applied at most once, by the state machine.
pub async fn write_once<A: Answer>(
    cluster: &Cluster,
    conditions: WriteConditions,
    build: impl Future<Output = Result<Command, Status>>,
) -> Result<(u64, A), Status> {
    if let Some(answer) = answered(cluster, &conditions, false).await? {
        return Ok(answer);
    }
    let command = match build.await {
        Ok(command) => command,
        Err(refused) => return answered(cluster, &conditions, true).await?.ok_or(refused),
    };
    cluster.propose_with(conditions, command).await.map_err(cluster_status)
}

/// The first answer to the conditions' client request, if this server (or, `current`, the
/// cluster) holds one.
async fn answered<A: Answer>(
    cluster: &Cluster,
    conditions: &WriteConditions,
    current: bool,
) -> Result<Option<(u64, A)>, Status> {
    let Some(client) = &conditions.client_request else { return Ok(None) };
    let id = client.id.clone();
    let query = move |txn: &redb::ReadTransaction| read::client_request(txn, &id);
    let found = if current { cluster.read(query).await } else { cluster.read_local(query).await };
    let Some((index, first)) = found.map_err(cluster_status)? else { return Ok(None) };
    let answer = expect_answer::<A>(first.answer_to(client)).map_err(cluster_status)?;
    Ok(Some((index, answer.map_err(rejection_status)?)))
}
