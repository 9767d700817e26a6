//! An allocation as stored format 8 holds it (version 3): without its deployment and canary
//! mark. Read and migrated forward (none had a deployment); written for clusters still at format
//! 8 during a rolling upgrade without them, which never exist there (deployments start only once
//! the cluster is at format 9).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::{self as current, AllocClientStatus, AllocDesiredStatus, TaskState};
use crate::job::Resources;
use crate::placement::PlacementMetrics;
use crate::reschedule::RescheduleEvent;
use crate::service::ServiceRegistration;
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
    pub services: Vec<ServiceRegistration>,
}

crate::versioned!(Allocation = 3, since format 8, previous crate::alloc_v2::Allocation);

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
            services: old.services,
            deployment_id: None,
            canary: false,
        }
    }
}

/// Never refused: the deployment and canary mark are dropped (see the module's comment).
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
            services: new.services,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::write_for;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).expect("decodes").0
    }

    #[test]
    fn for_format_8_an_allocation_is_written_without_its_deployment() {
        let mut alloc = current::Allocation::for_test("a", "n");
        alloc.deployment_id = Some("d".into());
        alloc.canary = true;
        assert_eq!(decode::<current::Allocation>(&encode(&alloc)), alloc, "this build keeps them");
        let old = write_for(8, || encode(&alloc));
        assert_eq!(old[0], 3, "version 3 for format-8 readers");
        let back: current::Allocation = decode(&old);
        assert_eq!(current::Allocation { deployment_id: None, canary: false, ..alloc }, back, "nothing else lost");
    }
}
