//! Proposals as stored formats 3 to 9 wrote them (version 2): no client request id and no
//! precondition. Written for a cluster still at an older format, which cannot hold either.

use serde::{Deserialize, Serialize};

use super::Command;
use crate::time::Timestamp;

#[derive(Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Proposal {
    pub request_id: String,
    pub proposed_at: Timestamp,
    pub command: Command,
}

crate::versioned!(Proposal = 2, previous super::v1::Proposal);

impl From<Proposal> for super::Proposal {
    fn from(old: Proposal) -> super::Proposal {
        super::Proposal::new(old.request_id, old.proposed_at, old.command)
    }
}

impl TryFrom<&super::Proposal> for Proposal {
    type Error = String;

    fn try_from(new: &super::Proposal) -> Result<Proposal, String> {
        if new.client_request.is_some() {
            return Err("a client request id needs stored format 10".to_string());
        }
        if new.precondition.is_some() {
            return Err("a precondition (expected job version) needs stored format 10".to_string());
        }
        Ok(Proposal { request_id: new.request_id.clone(), proposed_at: new.proposed_at, command: new.command.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClientRequest, Precondition, Proposal as Current};
    use crate::command::Command;
    use crate::format::write_for;
    use crate::time::Timestamp;

    fn encode(p: &Current) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(p, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Current {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    fn plain() -> Current {
        Current::new("r1".into(), Timestamp(5), Command::DeleteAclPolicy { name: "ops".into() })
    }

    #[test]
    fn a_plain_proposal_is_written_as_version_2_for_format_9_and_reads_back() {
        let old = write_for(9, || encode(&plain())).expect("writable for format 9");
        assert_eq!(old[0], 2, "version 2 for format-9 readers");
        assert_eq!(decode(&old), plain());
        assert_eq!(write_for(10, || encode(&plain())).expect("writable")[0], 3);
    }

    #[test]
    fn a_request_id_or_a_precondition_is_refused_for_format_9_never_dropped() {
        let client = Current { client_request: Some(ClientRequest { id: "c1".into(), digest: "d".into() }), ..plain() };
        let checked =
            Current { precondition: Some(Precondition::JobVersion { job: "web".into(), version: None }), ..plain() };
        for (proposal, why) in [(client, "client request id"), (checked, "precondition")] {
            let refused = write_for(9, || encode(&proposal)).expect_err("refused");
            assert!(refused.contains(why), "{refused}");
            assert_eq!(decode(&write_for(10, || encode(&proposal)).expect("format 10 holds it")), proposal);
        }
    }
}
