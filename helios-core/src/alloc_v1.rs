//! An allocation as stored formats 3 to 6 hold it (version 1): without reschedule events and
//! placement metrics (nor the replacement of a failure). Read
//! and migrated forward (to version 2, `alloc_v2`); written for clusters still at format 6 during a rolling upgrade.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, AllocDesiredStatus, TaskState};
use crate::alloc_v2 as current;
use crate::job::Resources;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Allocation {
    pub id: String,
    pub name: String,
    pub eval_id: String,
    pub job_name: String,
    pub job_version: u64,
    pub task_group: String,
    pub group_fingerprint: u64,
    pub node_id: String,
    pub resources: Resources,
    pub host_ports: Vec<u16>,
    pub desired_status: AllocDesiredStatus,
    pub desired_description: String,
    pub client_status: AllocClientStatus,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

crate::versioned!(Allocation = 1);

impl From<Allocation> for current::Allocation {
    fn from(old: Allocation) -> current::Allocation {
        current::Allocation {
            id: old.id,
            name: old.name,
            eval_id: old.eval_id,
            job_name: old.job_name,
            job_version: old.job_version,
            task_group: old.task_group,
            group_fingerprint: old.group_fingerprint,
            node_id: old.node_id,
            resources: old.resources,
            host_ports: old.host_ports,
            desired_status: old.desired_status,
            desired_description: old.desired_description,
            client_status: old.client_status,
            client_description: old.client_description,
            task_states: old.task_states,
            created_at: old.created_at,
            modified_at: old.modified_at,
            reschedule_events: Vec::new(),
            next_allocation: None,
            metrics: Default::default(),
        }
    }
}

/// Never refused: the events and metrics are dropped (see `versioned!` on `current::Allocation`).
impl From<&current::Allocation> for Allocation {
    fn from(new: &current::Allocation) -> Allocation {
        let new = new.clone();
        Allocation {
            id: new.id,
            name: new.name,
            eval_id: new.eval_id,
            job_name: new.job_name,
            job_version: new.job_version,
            task_group: new.task_group,
            group_fingerprint: new.group_fingerprint,
            node_id: new.node_id,
            resources: new.resources,
            host_ports: new.host_ports,
            desired_status: new.desired_status,
            desired_description: new.desired_description,
            client_status: new.client_status,
            client_description: new.client_description,
            task_states: new.task_states,
            created_at: new.created_at,
            modified_at: new.modified_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::write_for;
    use crate::reschedule::RescheduleEvent;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn for_format_6_an_allocation_is_written_without_its_reschedule_events() {
        let mut alloc: current::Allocation = Allocation {
            id: "a".into(),
            name: "j.g[0]".into(),
            eval_id: "e".into(),
            job_name: "j".into(),
            job_version: 0,
            task_group: "g".into(),
            group_fingerprint: 7,
            node_id: "n".into(),
            resources: Resources::default(),
            host_ports: vec![8080],
            desired_status: AllocDesiredStatus::Run,
            desired_description: String::new(),
            client_status: AllocClientStatus::Running,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            created_at: Timestamp(1),
            modified_at: Timestamp(2),
        }
        .into();
        alloc.reschedule_events.push(RescheduleEvent {
            at: Timestamp(1),
            prev_alloc_id: "p".into(),
            prev_node_id: "m".into(),
            delay_secs: 30,
        });
        assert_eq!(decode::<current::Allocation>(&encode(&alloc)), alloc, "this build keeps them");
        let old = write_for(6, || encode(&alloc));
        assert_eq!(old[0], 1, "version 1 for format-6 readers");
        let back: current::Allocation = decode(&old);
        assert!(back.reschedule_events.is_empty());
        assert_eq!(current::Allocation { reschedule_events: Vec::new(), ..alloc }, back, "nothing else lost");
    }
}
