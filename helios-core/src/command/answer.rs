//! Typed answers: each kind of command has one answer when it is applied, so a caller names the
//! answer it expects (`Cluster::propose::<JobRegistered>`) and gets it, or the state machine's
//! rejection. A different answer can only be a bug, and `expect` reports it in one place instead
//! of every caller ending in an "unexpected answer" arm.

use serde::{Deserialize, Serialize};

use super::{CommandResponse, Rejection};
use crate::gc::Collected;

/// `RegisterJob` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRegistered {
    pub version: u64,
    /// False when the submitted spec equalled the stored one.
    pub changed: bool,
    pub eval_id: Option<String>,
}

/// `DeregisterJob` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDeregistered {
    pub eval_id: String,
}

/// `ApplyPlan` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanApplied {
    pub placed: u32,
    pub stopped: u32,
}

/// `UpdateDeployment` or `ActOnDeployment` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentChanged {
    pub status: crate::deployment::DeploymentStatus,
    pub status_description: String,
    /// The evaluation it created (or the reverting registration's).
    pub eval_id: Option<String>,
    /// The job version an `auto_revert` registered.
    pub reverted_to: Option<u64>,
}

/// `RestoreCommit` applied: the restored state tables now hold `rows` rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub rows: u64,
}

/// An answer that carries nothing but its kind.
macro_rules! unit_answers {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name;

        impl Answer for $name {
            fn take(response: CommandResponse) -> Result<Self, CommandResponse> {
                match response {
                    CommandResponse::$name => Ok($name),
                    other => Err(other),
                }
            }
        }
    )*};
}

/// An answer that wraps its value in the `CommandResponse` variant of the same name.
macro_rules! value_answers {
    ($($variant:ident($value:ty)),* $(,)?) => {$(
        impl Answer for $value {
            fn take(response: CommandResponse) -> Result<Self, CommandResponse> {
                match response {
                    CommandResponse::$variant(value) => Ok(value),
                    other => Err(other),
                }
            }
        }
    )*};
}

/// A command's answer when it was applied.
pub trait Answer: Sized {
    /// This answer, or the response back when it is a different one.
    fn take(response: CommandResponse) -> Result<Self, CommandResponse>;

    /// The answer, the state machine's rejection (`Ok(Err)`), or a response of another kind,
    /// which is a bug (`Err`, with the response to report).
    fn expect(response: CommandResponse) -> Result<Result<Self, Rejection>, CommandResponse> {
        match response {
            CommandResponse::Rejected(rejection) => Ok(Err(rejection)),
            other => Self::take(other).map(Ok),
        }
    }
}

unit_answers!(
    /// `RegisterNode` applied.
    NodeRegistered,
    /// `SetNodeStatus` or `SetNodeScheduling` applied.
    NodeStatusSet,
    /// `CreateEvaluations` applied.
    EvaluationsCreated,
    /// `ReportAllocations` applied.
    AllocationsUpdated,
    /// `PurgeNode` applied.
    NodePurged,
    /// An ACL command applied.
    AclChanged,
    /// `RaiseFormat` applied.
    FormatRaised,
    /// `RestoreBegin` or `RestoreRows` applied.
    RestoreStaged,
);

value_answers!(
    JobRegistered(JobRegistered),
    JobDeregistered(JobDeregistered),
    PlanApplied(PlanApplied),
    Restored(Restored),
    GarbageCollected(Collected),
    DeploymentChanged(DeploymentChanged),
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::RejectionKind;

    #[test]
    fn an_answer_is_taken_by_its_type_and_a_rejection_or_other_kind_is_told_apart() {
        let registered = JobRegistered { version: 2, changed: true, eval_id: Some("e".into()) };
        let response = CommandResponse::JobRegistered(registered.clone());
        assert_eq!(JobRegistered::expect(response.clone()), Ok(Ok(registered)));
        assert_eq!(NodePurged::expect(response.clone()), Err(response), "another kind is handed back");
        assert_eq!(NodePurged::expect(CommandResponse::NodePurged), Ok(Ok(NodePurged)));
        let rejection = Rejection { kind: RejectionKind::NotFound, message: "gone".into() };
        assert_eq!(PlanApplied::expect(CommandResponse::Rejected(rejection.clone())), Ok(Err(rejection)));
    }

    /// The answers moved into structs of their own (newtype variants): their bytes must be what
    /// the struct variants wrote, since stored request ids keep their answers.
    #[test]
    fn wrapping_an_answer_in_a_struct_keeps_its_stored_bytes() {
        #[derive(Serialize)]
        enum Before {
            _Empty,
            JobRegistered { version: u64, changed: bool, eval_id: Option<String> },
        }
        let before = Before::JobRegistered { version: 7, changed: true, eval_id: Some("e".into()) };
        let after =
            CommandResponse::JobRegistered(JobRegistered { version: 7, changed: true, eval_id: Some("e".into()) });
        let config = bincode::config::standard();
        let before = bincode::serde::encode_to_vec(&before, config).expect("encode");
        let after = bincode::serde::encode_to_vec(CommandResponseBody(&after), config).expect("encode");
        assert_eq!(before, after);
    }

    /// `CommandResponse`'s own serde is remote (versioned); this encodes its body alone.
    struct CommandResponseBody<'a>(&'a CommandResponse);

    impl Serialize for CommandResponseBody<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            CommandResponse::serialize(self.0, serializer)
        }
    }
}
