//! Safe retries (AIP-155) and check-and-set: what a caller can attach to a write so that
//! retrying it, or racing another writer, never applies a change twice or loses one.

use serde::{Deserialize, Serialize};

use super::CommandResponse;
use crate::job::Job;
use crate::time::Timestamp;

/// The stored format that brought client request ids and preconditions.
pub const REQUESTS_FORMAT: u32 = 10;

/// The longest client request id accepted (a UUID is 36 characters).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A caller's id for one request. The state machine remembers it with its answer (for
/// `REQUEST_MEMORY_MS`); a later proposal with the same id and the same `digest` gets that
/// answer and changes nothing, one with another digest is refused: the id was reused for a
/// different request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub id: String,
    /// Hex SHA-256 of what was asked (the call, the caller and the request without its id),
    /// stamped by the server that received it.
    pub digest: String,
}

/// What the state machine remembers of a client request (format 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ClientRequestRecord {
    pub digest: String,
    pub proposed_at: Timestamp,
    pub response: CommandResponse,
}

crate::versioned!(ClientRequestRecord = 1);

impl ClientRequestRecord {
    /// The answer to `client`, a request with this record's id: the first answer again if it
    /// asks the same thing, a refusal if the id was reused for something else.
    pub fn answer_to(&self, client: &ClientRequest) -> CommandResponse {
        if self.digest == client.digest {
            return self.response.clone();
        }
        CommandResponse::rejected(
            super::RejectionKind::RequestIdReused,
            format!(
                "request_id {:?} was already used for a different request; use a new id for a new request",
                client.id
            ),
        )
    }
}

/// What the state must be for a proposal's command to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Job `job` is stored at `version` (stopped or not); `None`: no job of that name exists.
    JobVersion { job: String, version: Option<u64> },
}

impl Precondition {
    /// Why the precondition does not hold against the stored `job` (the job it names), if it
    /// does not.
    pub fn refusal(&self, stored: Option<&Job>) -> Option<String> {
        let Precondition::JobVersion { job, version } = self;
        match (version, stored) {
            (None, None) => None,
            (Some(expected), Some(stored)) if stored.version == *expected => None,
            (None, Some(stored)) => Some(format!("job {job:?} already exists (at version {})", stored.version)),
            (Some(expected), None) => Some(format!("job {job:?} does not exist (expected version {expected})")),
            (Some(expected), Some(stored)) => Some(format!(
                "job {job:?} is at version {}, not the expected {expected}: it changed since it was read",
                stored.version
            )),
        }
    }

    /// The job whose state it checks.
    pub fn job(&self) -> &str {
        let Precondition::JobVersion { job, .. } = self;
        job
    }
}

/// Checks a caller's request id: at most `MAX_REQUEST_ID_LEN` printable ASCII characters.
pub fn check_request_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err(format!("must be at most {MAX_REQUEST_ID_LEN} characters (a UUID is 36)"));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("must be printable ASCII without spaces, not {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_at(version: u64) -> Job {
        let mut job = Job::exec("web", "sleep", vec!["1".into()]);
        job.version = version;
        job
    }

    #[test]
    fn a_job_version_precondition_holds_only_for_that_version_or_for_absence() {
        let at = |version| Precondition::JobVersion { job: "web".into(), version };
        assert_eq!(at(Some(2)).refusal(Some(&job_at(2))), None);
        assert_eq!(at(None).refusal(None), None);
        let stale = at(Some(1)).refusal(Some(&job_at(2))).expect("refused");
        assert!(stale.contains("version 2, not the expected 1"), "{stale}");
        assert!(at(None).refusal(Some(&job_at(0))).expect("refused").contains("already exists"));
        assert!(at(Some(0)).refusal(None).expect("refused").contains("does not exist"));
    }

    #[test]
    fn request_ids_are_short_printable_ascii() {
        assert!(check_request_id("0b8f6c2e-4a53-4d2b-9a8e-1f2d3c4b5a69").is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_LEN + 1)).unwrap_err().contains("at most 128"));
        assert!(check_request_id("a b").unwrap_err().contains("' '"));
        assert!(check_request_id("é").is_err());
    }
}
