//! Client request ids and preconditions at apply time.

use helios_core::command::{ClientRequest, JobRegistered, Precondition};
use helios_core::{Rejection, RejectionKind};
use redb::ReadableDatabase;

use super::tests::{apply_all, proposal, register};
use super::*;
use crate::store::{open, read};

fn client(id: &str, digest: &str) -> Option<ClientRequest> {
    Some(ClientRequest { id: id.into(), digest: digest.into() })
}

fn registered(version: u64, eval: &str) -> CommandResponse {
    CommandResponse::JobRegistered(JobRegistered { version, changed: true, eval_id: Some(eval.into()) })
}

fn kind(response: &CommandResponse) -> Option<RejectionKind> {
    match response {
        CommandResponse::Rejected(Rejection { kind, .. }) => Some(*kind),
        _ => None,
    }
}

#[test]
fn a_client_request_retried_through_another_server_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    // Each attempt is its own proposal (another server, another time); the second asks for a
    // change (its spec differs), which must not be made.
    let first = Proposal { client_request: client("c1", "d"), ..proposal("s1", 10, register("web", "a", "e1")) };
    let retry = Proposal { client_request: client("c1", "d"), ..proposal("s2", 20, register("web", "b", "e2")) };
    let got = apply_all(&db, vec![first]);
    let again = apply_all(&db, vec![retry]);
    assert_eq!(got, vec![registered(0, "e1")]);
    assert_eq!(again, got, "the retry gets the first answer");
    let txn = db.begin_read().unwrap();
    assert_eq!(read::job_versions(&txn, "web").unwrap().len(), 1, "applied once");
    assert_eq!(read::evaluations_for_job(&txn, "web").unwrap().len(), 1);
}

#[test]
fn a_client_request_id_reused_for_another_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let first = Proposal { client_request: client("c1", "d1"), ..proposal("s1", 10, register("web", "a", "e1")) };
    let other = Proposal { client_request: client("c1", "d2"), ..proposal("s2", 20, register("api", "a", "e2")) };
    let got = apply_all(&db, vec![first, other]);
    assert_eq!(kind(&got[1]), Some(RejectionKind::RequestIdReused), "{got:?}");
    let txn = db.begin_read().unwrap();
    assert!(read::job(&txn, "api").unwrap().is_none(), "nothing changed");
}

#[test]
fn client_requests_are_forgotten_after_the_memory_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let at = |t, eval| Proposal { client_request: client("c1", "d"), ..proposal(eval, t, register("web", eval, eval)) };
    apply_all(&db, vec![at(1_000, "e1")]);
    // A proposal past the window forgets it: the same id is then a new request.
    let later = apply_all(&db, vec![at(1_000 + REQUEST_MEMORY_MS + 1, "e2")]);
    assert_eq!(later, vec![registered(1, "e2")]);
    let txn = db.begin_read().unwrap();
    let rows = |def| txn.open_table(def).unwrap().iter().unwrap().count();
    assert_eq!((rows(CLIENT_REQUESTS), rows(CLIENT_REQUESTS_BY_TIME)), (1, 1), "only the new one is kept");
}

#[test]
fn a_precondition_that_no_longer_holds_refuses_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let version = |v| Some(Precondition::JobVersion { job: "web".into(), version: v });
    let got = apply_all(
        &db,
        vec![
            Proposal { precondition: version(None), ..proposal("r1", 10, register("web", "a", "e1")) },
            // Two writers read version 0; the first to commit wins, the second is refused.
            Proposal { precondition: version(Some(0)), ..proposal("r2", 11, register("web", "b", "e2")) },
            Proposal { precondition: version(Some(0)), ..proposal("r3", 12, register("web", "c", "e3")) },
            Proposal { precondition: version(None), ..proposal("r4", 13, register("web", "d", "e4")) },
        ],
    );
    assert_eq!(got[..2], [registered(0, "e1"), registered(1, "e2")]);
    assert_eq!(kind(&got[2]), Some(RejectionKind::Conflict), "{got:?}");
    assert_eq!(kind(&got[3]), Some(RejectionKind::Conflict), "create-only over a stored job: {got:?}");
    let txn = db.begin_read().unwrap();
    let job = read::job(&txn, "web").unwrap().unwrap();
    assert_eq!(job.version, 1, "the refused changes left the job alone");
    assert_eq!(read::evaluations_for_job(&txn, "web").unwrap().len(), 2);
}
