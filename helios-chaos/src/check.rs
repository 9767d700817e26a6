//! The checker: after the faults stop and the cluster settles, the stored state must account for
//! every write the clients saw acknowledged, exactly once, and for nothing nobody sent.

use std::time::Instant;

use helios_api::pb;

use crate::api::Servers;
use crate::workload::{gen_of, Ledger, OpKind, Outcome};

/// When a server was cut off from the majority.
#[derive(Clone, Debug)]
pub struct Partition {
    pub server: u64,
    pub from: Instant,
    pub until: Instant,
}

#[derive(Default, Debug, serde::Serialize)]
pub struct Verdict {
    pub acknowledged_writes: u64,
    pub unknown_outcomes: u64,
    /// Acknowledged writes missing from the state, or present with another version.
    pub lost: Vec<String>,
    /// Submissions stored as more than one job version.
    pub duplicated: Vec<String>,
    /// Versions nobody submitted, or in an order nobody issued them.
    pub phantoms: Vec<String>,
    /// A job whose final state no sequence of its writes explains.
    pub wrong_final_state: Vec<String>,
    /// Writes a server acknowledged while cut off from the majority.
    pub minority_commits: Vec<String>,
    pub probes_sent: u64,
}

impl Verdict {
    pub fn failures(&self) -> usize {
        self.lost.len()
            + self.duplicated.len()
            + self.phantoms.len()
            + self.wrong_final_state.len()
            + self.minority_commits.len()
    }
}

/// Checks every job of the ledger against `leader`'s state (the servers' digests have been
/// compared already, so it stands for all of them).
pub async fn check(
    servers: &Servers,
    leader: u64,
    ledger: &Ledger,
    partitions: &[Partition],
) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    let (_, summaries) = servers.state(leader).await?;
    for (name, ops) in &ledger.jobs {
        let versions = servers.versions(leader, name).await?;
        let summary = summaries.iter().find(|s| &s.name == name);
        check_job(name, ops, &versions, summary, &mut v);
    }
    check_probes(servers, leader, ledger, partitions, &mut v).await?;
    // The writers' own calls that reached a server while it was cut off, too.
    for (name, ops) in &ledger.jobs {
        for op in ops.iter().filter(|op| matches!(op.outcome, Outcome::Acked { .. })) {
            if partitions.iter().any(|p| p.server == op.server && op.sent_at >= p.from && op.answered_at <= p.until) {
                v.minority_commits
                    .push(format!("{name}: {:?} acknowledged by server {} while it was cut off", op.kind, op.server));
            }
        }
    }
    Ok(v)
}

fn check_job(
    name: &str,
    ops: &[crate::workload::Op],
    versions: &[pb::Job],
    summary: Option<&pb::JobSummary>,
    v: &mut Verdict,
) {
    let stored: Vec<(u64, Option<u64>)> = versions.iter().map(|j| (j.version, gen_of(j))).collect();
    // Exactly once, acknowledged ones in the order issued, and nothing invented. (A write whose
    // outcome is unknown may land late, after a later one: it is only required to exist.)
    let acked_gen = |gen: u64| {
        ops.iter().any(
            |op| matches!((&op.kind, &op.outcome), (OpKind::Submit { gen: g, .. }, Outcome::Acked { .. }) if *g == gen),
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut last_acked_gen = 0;
    for (version, gen) in &stored {
        let Some(gen) = gen else {
            v.phantoms.push(format!("{name} v{version}: no generation"));
            continue;
        };
        let attempted = ops.iter().any(|op| matches!(op.kind, OpKind::Submit { gen: g, .. } if g == *gen));
        if !attempted {
            v.phantoms.push(format!("{name} v{version}: generation {gen} was never submitted"));
        }
        if !seen.insert(*gen) {
            v.duplicated.push(format!("{name} v{version}: generation {gen} stored twice"));
        }
        if acked_gen(*gen) {
            if *gen < last_acked_gen {
                v.phantoms.push(format!(
                    "{name} v{version}: acknowledged generation {gen} stored after acknowledged generation {last_acked_gen}"
                ));
            }
            last_acked_gen = last_acked_gen.max(*gen);
        }
    }
    for op in ops {
        match (&op.kind, &op.outcome) {
            (_, Outcome::Unknown(_)) => v.unknown_outcomes += 1,
            (OpKind::Submit { gen, .. }, Outcome::Acked { version }) => {
                v.acknowledged_writes += 1;
                let found: Vec<u64> = stored.iter().filter(|(_, g)| *g == Some(*gen)).map(|(ver, _)| *ver).collect();
                match found.as_slice() {
                    [] => v.lost.push(format!("{name}: acknowledged generation {gen} (v{version:?}) is not stored")),
                    [stored_version] if Some(*stored_version) != *version => v.lost.push(format!(
                        "{name}: generation {gen} acknowledged as v{version:?} but stored as v{stored_version}"
                    )),
                    _ => {}
                }
            }
            (OpKind::Stop, Outcome::Acked { .. }) => v.acknowledged_writes += 1,
        }
    }
    // The final state is what the last applied write made it: the last acknowledged write, or
    // one sent after it whose outcome is unknown.
    // A write with an unknown outcome may also have landed last, whenever it was sent.
    let last_acked = ops.iter().rposition(|op| matches!(op.outcome, Outcome::Acked { .. }));
    let after_ack = last_acked.unwrap_or(0);
    let candidates: Vec<&crate::workload::Op> = ops
        .iter()
        .enumerate()
        .filter(|(i, op)| *i >= after_ack || matches!(op.outcome, Outcome::Unknown(_)))
        .map(|(_, op)| op)
        .collect();
    let current_gen = stored.last().and_then(|(_, g)| *g);
    let explained = match summary {
        None => last_acked.is_none(),
        Some(s) => candidates.iter().any(|op| match op.kind {
            OpKind::Stop => s.stopped,
            OpKind::Submit { gen, count } => !s.stopped && current_gen == Some(gen) && s.desired == u64::from(count),
        }),
    };
    if !explained {
        let state = summary.map_or("absent".to_string(), |s| {
            format!("stopped={} generation={current_gen:?} count={}", s.stopped, s.desired)
        });
        let tail: Vec<String> =
            candidates.iter().map(|op| format!("{:?} via server {} -> {:?}", op.kind, op.server, op.outcome)).collect();
        v.wrong_final_state.push(format!("{name}: final state {state} follows from none of [{}]", tail.join("; ")));
    }
}

async fn check_probes(
    servers: &Servers,
    leader: u64,
    ledger: &Ledger,
    partitions: &[Partition],
    v: &mut Verdict,
) -> anyhow::Result<()> {
    for probe in &ledger.probes {
        v.probes_sent += 1;
        let Some(acked_at) = probe.acked_at else { continue };
        let cut_off =
            partitions.iter().any(|p| p.server == probe.server && probe.sent_at >= p.from && acked_at <= p.until);
        if cut_off {
            v.minority_commits
                .push(format!("{} acknowledged by server {} while it was cut off", probe.name, probe.server));
        }
        v.acknowledged_writes += 1;
        if servers.versions(leader, &probe.name).await?.len() != 1 {
            v.lost.push(format!("acknowledged probe {} is not stored exactly once", probe.name));
        }
    }
    Ok(())
}
