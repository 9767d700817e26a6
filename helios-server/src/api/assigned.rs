//! What an agent's allocation watch sends: the whole set first, then only what changed.
//!
//! A node can hold hundreds of allocations, each sent with its job; resending them all whenever
//! one changes made the watches cost quadratic in a node's allocations while a cluster fills.
//! Each stream remembers what it sent and sends the difference.
//!
//! Messages are bounded by construction: each job version goes once per stream (later
//! allocations of it name it by `job_name` and `job_version`, and the agent keeps what it got),
//! and what changed is cut into pages of about `PAGE_BYTES`, all but the last marked `more`, so
//! one message never exceeds `MAX_WATCH_MESSAGE_BYTES` (the agents' receive limit) whatever a
//! node holds. (A 650 KB job with count 16 made one 10.4 MB message before.)

use std::collections::{HashMap, HashSet};
use std::io;

use helios_api::convert::agent::{assigned_to_agent, job_to_agent};
use helios_api::pb;
use helios_core::Allocation;
use redb::ReadTransaction;

use crate::signals::Changes;
use crate::store::read;

/// What a page holds before the next allocation goes to the next page. A page's last
/// allocation may bring its job (at most `MAX_MESSAGE_BYTES`, what a submission may carry).
const PAGE_BYTES: usize = helios_core::limits::MAX_MESSAGE_BYTES;

/// What one watch stream has sent so far.
#[derive(Default)]
pub struct SentAllocations {
    /// The agent takes jobs once and sets in pages (agents of older builds do not).
    paged: bool,
    started: bool,
    sent: HashMap<String, Allocation>,
    /// The job versions this stream has sent (the agent keeps them while it runs any).
    jobs: HashSet<(String, u64)>,
}

impl SentAllocations {
    pub fn new(paged: bool) -> SentAllocations {
        SentAllocations { paged, ..Default::default() }
    }

    /// Whether the whole set was sent already.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The next messages for `node_id`'s stream (pages: all but the last marked `more`), or none
    /// when nothing changed since the last ones. `changes` says which allocations to look at;
    /// the first message reads them all anyway.
    pub fn next_messages(
        &mut self,
        txn: &ReadTransaction,
        node_id: &str,
        changes: &Changes,
    ) -> io::Result<Vec<pb::AssignedAllocations>> {
        let delta = self.started;
        let (changed, removed) = match changes {
            Changes::Allocations(ids) if delta => self.diff_of(txn, node_id, ids)?,
            _ => self.diff_all(txn, node_id)?,
        };
        if delta && changed.is_empty() && removed.is_empty() {
            return Ok(Vec::new());
        }
        for id in &removed {
            self.sent.remove(id);
        }
        // Forget job versions no allocation sent here runs any more: the agent drops them too.
        let running: HashSet<(&str, u64)> = self.sent.values().map(|a| (a.job_name.as_str(), a.job_version)).collect();
        self.jobs.retain(|(name, version)| running.contains(&(name.as_str(), *version)));
        let mut pages =
            vec![pb::AssignedAllocations { allocations: Vec::new(), delta, removed: Vec::new(), more: false }];
        let mut size = 0;
        let next_page = |pages: &mut Vec<pb::AssignedAllocations>, size: &mut usize, adding: usize| {
            let page = pages.last().expect("one page at least");
            let room = if self.paged { PAGE_BYTES } else { usize::MAX };
            if *size + adding > room && !(page.allocations.is_empty() && page.removed.is_empty()) {
                pages.push(pb::AssignedAllocations {
                    allocations: Vec::new(),
                    delta: true,
                    removed: Vec::new(),
                    more: false,
                });
                *size = 0;
            }
            *size += adding;
        };
        for id in removed {
            next_page(&mut pages, &mut size, id.len() + 2);
            pages.last_mut().expect("a page").removed.push(id);
        }
        for alloc in changed {
            let key = (alloc.job_name.clone(), alloc.job_version);
            let job = if self.paged && self.jobs.contains(&key) {
                None
            } else {
                read::job_version(txn, &alloc.job_name, alloc.job_version)?.as_ref().map(job_to_agent)
            };
            if job.is_some() {
                self.jobs.insert(key);
            }
            let assigned = pb::AssignedAllocation { allocation: Some(assigned_to_agent(&alloc)), job };
            next_page(&mut pages, &mut size, helios_api::encoded_len(&assigned) + 4);
            pages.last_mut().expect("a page").allocations.push(assigned);
            self.sent.insert(alloc.id.clone(), alloc);
        }
        let last = pages.len() - 1;
        for page in &mut pages[..last] {
            page.more = true;
        }
        self.started = true;
        Ok(pages)
    }

    /// Whether the agent has to hear about `alloc`: it is new to this stream, or the servers
    /// changed what they want of it. Changes the agent reported itself (client status, task
    /// states) are not echoed back: with them, every report would cost a second message.
    fn is_news(&self, alloc: &Allocation) -> bool {
        let Some(sent) = self.sent.get(&alloc.id) else { return true };
        !self.started || sent.desired_status != alloc.desired_status || sent.job_version != alloc.job_version
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
