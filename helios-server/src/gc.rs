//! Garbage collection, driven by the leader (Nomad's core GC): every `interval` it finds what
//! `helios_core::gc` says may go and proposes it through Raft in batches (`CollectGarbage`),
//! so every replica forgets the same records at the same index. `helios-cli system gc` runs a
//! pass at once, ignoring ages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use helios_core::gc::{self, Collected, Cutoffs, Garbage, Thresholds};
use helios_core::{Allocation, Command, Evaluation, Job, Node};
use redb::{ReadTransaction, ReadableTable};

use crate::cluster::{expect_answer, Cluster, ClusterError};
use crate::store::codec::decode;
use crate::store::tables::{ALLOCATIONS, EVALUATIONS};
use crate::store::{read, StoreError};

/// Records named by one command: bounds an entry's size and a batch's apply time.
pub const BATCH: usize = 1_000;
/// Records found by one scan at most; a pass scans again until nothing more goes.
const PER_SCAN: usize = 100 * BATCH;

/// How a pass proposes: through whoever leads (`system gc`), or only while this server leads
/// (the periodic pass, which must not act through a newer leader).
#[derive(Clone, Copy)]
pub enum Via {
    Leader,
    AnyServer,
}

/// Runs a pass every `interval` while this server leads.
pub async fn run(cluster: Cluster, thresholds: Thresholds, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await; // the first tick is immediate: let the server settle first
    loop {
        ticks.tick().await;
        if !cluster.is_leader() {
            continue;
        }
        let cutoffs = thresholds.cutoffs(crate::clock::now());
        match collect(&cluster, cutoffs, Via::Leader).await {
            Ok(c) if c == Collected::default() => {}
            Ok(c) => tracing::info!(
                evals = c.evals,
                allocs = c.allocs,
                jobs = c.jobs,
                versions = c.versions,
                nodes = c.nodes,
                "garbage collected"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed; retrying at the next"),
        }
    }
}

/// One pass: finds and proposes until nothing more goes.
pub async fn collect(cluster: &Cluster, cutoffs: Cutoffs, via: Via) -> Result<Collected, ClusterError> {
    let mut total = Collected::default();
    loop {
        let batches = match via {
            Via::Leader => cluster.read_local(move |txn| find(txn, &cutoffs)).await?,
            Via::AnyServer => cluster.read(move |txn| find(txn, &cutoffs)).await?,
        };
        let found: usize = batches.iter().map(Garbage::len).sum();
        let mut collected = Collected::default();
        for garbage in batches {
            let command = Command::CollectGarbage { cutoffs, garbage };
            let response = match via {
                Via::Leader => cluster.propose_as_leader(command).await?,
                Via::AnyServer => cluster.write(command).await?.1,
            };
            collected.add(expect_answer::<Collected>(response)?.map_err(ClusterError::Rejected)?);
        }
        total.add(collected);
        // Scan again while something went: what it freed may free more (a version no longer
        // in use once its allocations are gone). A scan whose finds all stayed (they changed in
        // between) would find them again: stop there.
        if found == 0 || collected == Collected::default() {
            return Ok(total);
        }
    }
}

/// What may go now, in batches of at most `BATCH` records.
pub fn find(txn: &ReadTransaction, cutoffs: &Cutoffs) -> Result<Vec<Garbage>, StoreError> {
    let mut found = Batches::default();
    let jobs: BTreeMap<String, Job> = read::jobs(txn)?.into_iter().map(|j| (j.name.clone(), j)).collect();
    let mut collected_jobs = BTreeSet::new();
    for (name, job) in &jobs {
        let allocs = read::allocations(txn, Some(name), None)?;
        if gc::job_collectable(job, &allocs, cutoffs) {
            collected_jobs.insert(name.clone());
            found.push(|g| g.jobs.push(name.clone()));
            continue;
        }
        let kept = read::job_versions(txn, name)?;
        let versions: Vec<u64> = kept.iter().map(|v| v.version).collect();
        // Versions only allocations about to go refer to are not in use.
        let mut in_use: BTreeSet<u64> =
            allocs.iter().filter(|a| !gc::alloc_collectable(a, Some(job), cutoffs)).map(|a| a.job_version).collect();
        // The latest stable version is what auto_revert goes back to.
        in_use.extend(kept.iter().rev().find(|v| v.stable).map(|v| v.version));
        for version in gc::versions_to_drop(&versions, job.version, &in_use, cutoffs) {
            found.push(|g| g.versions.push((name.clone(), version)));
        }
    }
    // Allocations and evaluations are read one row at a time: there can be millions.
    let mut unfinished_on: BTreeSet<String> = BTreeSet::new();
    let allocations = txn.open_table(ALLOCATIONS)?;
    for row in allocations.iter()? {
        let alloc: Allocation = decode(row?.1.value())?;
        if !alloc.is_terminal() {
            unfinished_on.insert(alloc.node_id.clone());
        }
        let job = jobs.get(&alloc.job_name);
        if !collected_jobs.contains(&alloc.job_name) && gc::alloc_collectable(&alloc, job, cutoffs) {
            found.push(|g| g.allocs.push(alloc.id.clone()));
        }
        if found.len() >= PER_SCAN {
            return Ok(found.finish());
        }
    }
    let evaluations = txn.open_table(EVALUATIONS)?;
    for row in evaluations.iter()? {
        let eval: Evaluation = decode(row?.1.value())?;
        let job_exists = jobs.contains_key(&eval.job_name);
        if !collected_jobs.contains(&eval.job_name) && gc::eval_collectable(&eval, job_exists, cutoffs) {
            found.push(|g| g.evals.push(eval.id.clone()));
        }
        if found.len() >= PER_SCAN {
            return Ok(found.finish());
        }
    }
    for node in read::nodes(txn)? {
        let Node { id, .. } = &node;
        if gc::node_collectable(&node, unfinished_on.contains(id), cutoffs) {
            found.push(|g| g.nodes.push(id.clone()));
        }
    }
    Ok(found.finish())
}

/// Garbage cut into commands of at most `BATCH` records.
#[derive(Default)]
struct Batches {
    full: Vec<Garbage>,
    current: Garbage,
    count: usize,
}

impl Batches {
    fn push(&mut self, add: impl FnOnce(&mut Garbage)) {
        add(&mut self.current);
        self.count += 1;
        if self.current.len() >= BATCH {
            self.full.push(std::mem::take(&mut self.current));
        }
    }

    fn len(&self) -> usize {
        self.count
    }

    fn finish(mut self) -> Vec<Garbage> {
        if !self.current.is_empty() {
            self.full.push(self.current);
        }
        self.full
    }
}
