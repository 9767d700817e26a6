//! What an agent's allocation watch sends: the whole set first, then only what changed.
//!
//! A node can hold hundreds of allocations, each sent with its job; resending them all whenever
//! one changes made the watches cost quadratic in a node's allocations while a cluster fills.
//! Each stream remembers what it sent and sends the difference.

use std::collections::{HashMap, HashSet};
use std::io;

use helios_api::convert::{alloc_to_pb, job_to_pb};
use helios_api::pb;
use helios_core::Allocation;
use redb::ReadTransaction;

use crate::signals::Changes;
use crate::store::read;

/// What one watch stream has sent so far.
#[derive(Default)]
pub struct SentAllocations {
    started: bool,
    sent: HashMap<String, Allocation>,
}

impl SentAllocations {
    /// Whether the whole set was sent already.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The next message for `node_id`'s stream, or None when nothing changed since the last one.
    /// `changes` says which allocations to look at; the first message reads them all anyway.
    pub fn next_message(
        &mut self,
        txn: &ReadTransaction,
        node_id: &str,
        changes: &Changes,
    ) -> io::Result<Option<pb::AssignedAllocations>> {
        let delta = self.started;
        let (changed, removed) = match changes {
            Changes::Allocations(ids) if delta => self.diff_of(txn, node_id, ids)?,
            _ => self.diff_all(txn, node_id)?,
        };
        if delta && changed.is_empty() && removed.is_empty() {
            return Ok(None);
        }
        let mut jobs: HashMap<(String, u64), Option<pb::Job>> = HashMap::new();
        let mut allocations = Vec::with_capacity(changed.len());
        for alloc in changed {
            let key = (alloc.job_name.clone(), alloc.job_version);
            if !jobs.contains_key(&key) {
                let job = read::job_version(txn, &alloc.job_name, alloc.job_version)?;
                jobs.insert(key.clone(), job.as_ref().map(job_to_pb));
            }
            allocations.push(pb::AssignedAllocation { allocation: Some(alloc_to_pb(&alloc)), job: jobs[&key].clone() });
            self.sent.insert(alloc.id.clone(), alloc);
        }
        for id in &removed {
            self.sent.remove(id);
        }
        self.started = true;
        Ok(Some(pb::AssignedAllocations { allocations, delta, removed }))
    }

    /// Whether the agent has to hear about `alloc`: it is new to this stream, or the servers
    /// changed what they want of it. Changes the agent reported itself (client status, task
    /// states) are not echoed back: with them, every report would cost a second message.
    fn is_news(&self, alloc: &Allocation) -> bool {
        let Some(sent) = self.sent.get(&alloc.id) else { return true };
        !self.started
            || sent.desired_status != alloc.desired_status
            || sent.desired_description != alloc.desired_description
            || sent.job_version != alloc.job_version
    }

    /// Changed and removed allocations among all of the node's.
    fn diff_all(&self, txn: &ReadTransaction, node_id: &str) -> io::Result<(Vec<Allocation>, Vec<String>)> {
        let assigned = read::assigned_allocations(txn, node_id)?;
        let current: HashSet<&str> = assigned.iter().map(|a| a.id.as_str()).collect();
        let removed = self.sent.keys().filter(|id| !current.contains(id.as_str())).cloned().collect();
        let changed = assigned.into_iter().filter(|a| self.is_news(a)).collect();
        Ok((changed, removed))
    }

    /// Changed and removed allocations among `ids` only.
    fn diff_of(
        &self,
        txn: &ReadTransaction,
        node_id: &str,
        ids: &HashSet<String>,
    ) -> io::Result<(Vec<Allocation>, Vec<String>)> {
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        for id in ids {
            match read::allocation(txn, id)? {
                Some(a) if a.node_id == node_id && !a.client_status.is_terminal() => {
                    if self.is_news(&a) {
                        changed.push(a);
                    }
                }
                // Finished, or gone: the agent may forget it.
                _ => {
                    if self.sent.contains_key(id) {
                        removed.push(id.clone());
                    }
                }
            }
        }
        Ok((changed, removed))
    }
}
