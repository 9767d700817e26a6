//! An evaluation as stored formats 3 to 6 hold it (version 1): without `wait_until`. Read and
//! migrated forward; written for clusters still at format 6 during a rolling upgrade.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::{self as current, EvalStatus, EvalTrigger};
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Evaluation {
    pub id: String,
    pub job_name: String,
    pub priority: u32,
    pub trigger: EvalTrigger,
    pub node_id: Option<String>,
    pub status: EvalStatus,
    pub status_description: String,
    pub failed_placements: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

crate::versioned!(Evaluation = 1);

impl From<Evaluation> for current::Evaluation {
    fn from(old: Evaluation) -> current::Evaluation {
        current::Evaluation {
            id: old.id,
            job_name: old.job_name,
            priority: old.priority,
            trigger: old.trigger,
            node_id: old.node_id,
            status: old.status,
            status_description: old.status_description,
            failed_placements: old.failed_placements,
            created_at: old.created_at,
            modified_at: old.modified_at,
            wait_until: None,
        }
    }
}

/// An older reader would take a waiting evaluation at once: refused rather than run early.
impl TryFrom<&current::Evaluation> for Evaluation {
    type Error = &'static str;

    fn try_from(new: &current::Evaluation) -> Result<Evaluation, &'static str> {
        if new.wait_until.is_some() {
            return Err("a delayed evaluation (wait_until) needs stored format 7");
        }
        let new = new.clone();
        Ok(Evaluation {
            id: new.id,
            job_name: new.job_name,
            priority: new.priority,
            trigger: new.trigger,
            node_id: new.node_id,
            status: new.status,
            status_description: new.status_description,
            failed_placements: new.failed_placements,
            created_at: new.created_at,
            modified_at: new.modified_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::write_for;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_waiting_evaluation_is_refused_for_format_6_and_others_written_as_version_1() {
        let mut eval = current::Evaluation::new("e".into(), "j", 50, EvalTrigger::AllocFailure, Timestamp(5));
        assert_eq!(write_for(6, || encode(&eval)).expect("writable")[0], 1);
        eval.wait_until = Some(Timestamp(9));
        let refused = write_for(6, || encode(&eval)).expect_err("refused");
        assert!(refused.contains("needs stored format 7"), "{refused}");
        let bytes = encode(&eval).expect("format 7 holds it");
        let back: current::Evaluation =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decodes").0;
        assert_eq!(back, eval);
    }
}
