//! An allocation as stored format 7 holds it (version 2): without service registrations. Read
//! and migrated forward; written for clusters still at format 7 during a rolling upgrade, without
//! its registrations, which never exist there (agents register services only once the cluster is
//! at format 8: `Command::ReportServices`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocClientStatus, AllocDesiredStatus, TaskState};
use crate::alloc_v3 as current;
use crate::job::Resources;
use crate::placement::PlacementMetrics;
use crate::reschedule::RescheduleEvent;
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
    pub reschedule_events: Vec<RescheduleEvent>,
    pub next_allocation: Option<String>,
    pub metrics: PlacementMetrics,
}

crate::versioned!(Allocation = 2, since format 7, previous crate::alloc_v1::Allocation);

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
            reschedule_events: old.reschedule_events,
            next_allocation: old.next_allocation,
            metrics: old.metrics,
            services: Vec::new(),
        }
    }
}

/// Never refused: registrations are dropped (see the module's comment).
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
            reschedule_events: new.reschedule_events,
            next_allocation: new.next_allocation,
            metrics: new.metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::write_for;
    use crate::service::ServiceRegistration;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn for_format_7_an_allocation_is_written_without_its_registrations() {
        let mut alloc = crate::alloc::Allocation::for_test("a", "n");
        alloc.next_allocation = Some("b".into());
        alloc.services.push(ServiceRegistration {
            service: "web".into(),
            task: None,
            address: "127.0.0.1".into(),
            port: 8080,
            checks: Vec::new(),
        });
        assert_eq!(decode::<crate::alloc::Allocation>(&encode(&alloc)), alloc, "this build keeps them");
        let old = write_for(7, || encode(&alloc));
        assert_eq!(old[0], 2, "version 2 for format-7 readers");
        let back: crate::alloc::Allocation = decode(&old);
        assert_eq!(crate::alloc::Allocation { services: Vec::new(), ..alloc }, back, "nothing else lost");
    }
}
