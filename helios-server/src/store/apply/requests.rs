//! Client request ids and preconditions (format 10): a caller's retry is answered from what the
//! first attempt got, and a check-and-set write applies only to the state it was made against.

use helios_core::command::{ClientRequest, ClientRequestRecord, Precondition};
use helios_core::{Command, CommandResponse, Job, RejectionKind, Timestamp};
use redb::ReadableTable;

use super::{get, StateTables};
use crate::store::codec::encode;
use crate::store::tables::request_key;

impl StateTables<'_> {
    /// The first answer to `client`'s id, if it was seen (within the memory window): the same
    /// request is answered again, a different one under the same id is refused.
    pub(super) fn client_request_answer(
        &mut self,
        client: &ClientRequest,
    ) -> Result<Option<CommandResponse>, redb::Error> {
        let first = get::<ClientRequestRecord>(&self.client_requests, &client.id)?;
        Ok(first.map(|first| first.answer_to(client)))
    }

    pub(super) fn remember_client_request(
        &mut self,
        client: &ClientRequest,
        proposed_at: Timestamp,
        response: &CommandResponse,
    ) -> Result<(), redb::Error> {
        let record = ClientRequestRecord { digest: client.digest.clone(), proposed_at, response: response.clone() };
        self.client_requests.insert(client.id.as_str(), encode(&record).as_slice())?;
        let by_time = request_key(proposed_at.as_millis(), &client.id);
        self.client_requests_by_time.insert(by_time.as_str(), [].as_slice())?;
        Ok(())
    }

    /// Forgets the client requests proposed before `horizon` (a `request_key`).
    pub(super) fn forget_client_requests_before(&mut self, horizon: &str) -> Result<(), redb::Error> {
        let mut old = Vec::new();
        for row in self.client_requests_by_time.range(..horizon)? {
            old.push(row?.0.value().to_string());
        }
        for key in old {
            self.client_requests_by_time.remove(key.as_str())?;
            self.client_requests.remove(request_id_of(&key))?;
        }
        Ok(())
    }

    /// Applies `command` if `precondition` holds against the state; otherwise refuses it as a
    /// conflict and changes nothing.
    pub(super) fn apply_if(
        &mut self,
        precondition: Option<&Precondition>,
        command: Command,
    ) -> Result<CommandResponse, redb::Error> {
        if let Some(precondition) = precondition {
            let stored = get::<Job>(&self.jobs, precondition.job())?;
            if let Some(why) = precondition.refusal(stored.as_ref()) {
                return Ok(CommandResponse::rejected(RejectionKind::Conflict, why));
            }
        }
        self.apply(command)
    }
}

/// The id part of a `request_key` (after the zero-padded time and its '/').
fn request_id_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, id)| id)
}
