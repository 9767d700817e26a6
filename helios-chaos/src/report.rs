//! A run's figures and verdict, printed for people and optionally written as JSON (the source
//! of the tables in `docs/reliability.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::check::Verdict;
use crate::faults::Fault;
use crate::observe::Findings;

/// Durations of one kind of event.
#[derive(Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.0.clone();
        sorted.sort();
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
            sorted.get(rank - 1).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Summary { count: sorted.len(), p50_ms: at(0.50), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub kind: &'static str,
    pub seed: u64,
    pub seconds: f64,
    pub faults: BTreeMap<String, u64>,
    pub faults_total: u64,
    pub verdict: Verdict,
    pub duplicates: Vec<String>,
    pub overcommits: Vec<String>,
    pub digest_mismatches: Vec<String>,
    pub digest_comparisons: u64,
    pub orphans: Vec<String>,
    pub state_samples: u64,
    pub process_samples: u64,
    pub most_task_processes: usize,
    /// Samples where a node's live task processes (stopping ones included) asked for more than
    /// it offers, and the peak excess (MHz, MB): a figure, not a failure.
    pub process_overlap_samples: u64,
    pub process_overlap_peak: (u64, u64),
    /// Members that exited without being killed, and a cluster that did not settle.
    pub other_failures: Vec<String>,
    pub timings: BTreeMap<String, Summary>,
    /// Elections over a second, with the fault and when (to line them up with server logs).
    pub slow_elections: Vec<String>,
    /// Cut-off followers that raised their term while cut off, of those checked (fault runs).
    pub terms_raised_while_cut_off: Option<(u64, u64)>,
}

impl Report {
    pub fn faults(
        seed: u64,
        elapsed: Duration,
        faults: &BTreeMap<Fault, u64>,
        verdict: Verdict,
        findings: Findings,
        other_failures: Vec<String>,
        timings: [(&str, Latencies); 3],
    ) -> Report {
        let faults: BTreeMap<String, u64> = faults
            .iter()
            .map(|(f, n)| {
                (serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), *n)
            })
            .collect();
        Report {
            kind: "faults",
            seed,
            seconds: elapsed.as_secs_f64(),
            faults_total: faults.values().sum(),
            faults,
            verdict,
            duplicates: findings.duplicates,
            overcommits: findings.overcommits,
            digest_mismatches: findings.digest_mismatches,
            digest_comparisons: findings.digest_comparisons,
            orphans: findings.orphans,
            state_samples: findings.state_samples,
            process_samples: findings.process_samples,
            most_task_processes: findings.most_processes,
            process_overlap_samples: findings.process_overlap_samples,
            process_overlap_peak: findings.process_overlap_peak,
            other_failures,
            timings: timings.into_iter().map(|(k, v)| (k.to_string(), v.summary())).collect(),
            slow_elections: Vec::new(),
            terms_raised_while_cut_off: None,
        }
    }

    pub fn failures(&self) -> usize {
        self.verdict.failures()
            + self.duplicates.len()
            + self.overcommits.len()
            + self.digest_mismatches.len()
            + self.orphans.len()
            + self.other_failures.len()
    }

    pub fn failed(&self) -> bool {
        self.failures() > 0
    }

    pub fn print(&self) {
        let v = &self.verdict;
        println!("{} run, seed {}, {:.0} s", self.kind, self.seed, self.seconds);
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  faults injected:        {} ({})", self.faults_total, faults.join(", "));
        println!(
            "  acknowledged writes:    {} checked ({} with unknown outcome)",
            v.acknowledged_writes, v.unknown_outcomes
        );
        println!("  lost:                   {}", v.lost.len());
        // The crash run has no agents and no partitions: only the first figures apply to it.
        if self.kind == "faults" {
            println!("  duplicated:             {}", v.duplicated.len() + self.duplicates.len());
            println!("  phantom or reordered:   {}", v.phantoms.len());
            println!("  wrong final state:      {}", v.wrong_final_state.len());
            println!(
                "  minority commits:       {} ({} probes sent to cut-off servers)",
                v.minority_commits.len(),
                v.probes_sent
            );
            println!("  over-commits:           {}", self.overcommits.len());
            println!("  orphaned tasks:         {}", self.orphans.len());
            println!(
                "  samples:                {} of state, {} of processes (at most {} tasks at once)",
                self.state_samples, self.process_samples, self.most_task_processes
            );
            println!(
                "  stopping tasks overlapping their node's room: {} samples, peak +{} MHz / +{} MB",
                self.process_overlap_samples, self.process_overlap_peak.0, self.process_overlap_peak.1
            );
        }
        println!(
            "  digest mismatches:      {} ({} comparisons)",
            self.digest_mismatches.len(),
            self.digest_comparisons
        );
        println!("  other failures:         {}", self.other_failures.len());
        for (what, s) in &self.timings {
            println!(
                "  {what}: {} times, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                s.count, s.p50_ms, s.p99_ms, s.max_ms
            );
        }
        if let Some((raised, of)) = self.terms_raised_while_cut_off {
            println!("  cut-off followers that raised their term: {raised} of {of}");
        }
        for slow in &self.slow_elections {
            println!("  slow election: {slow}");
        }
        let problems = v
            .lost
            .iter()
            .chain(&v.duplicated)
            .chain(&v.phantoms)
            .chain(&v.wrong_final_state)
            .chain(&v.minority_commits)
            .chain(&self.duplicates)
            .chain(&self.overcommits)
            .chain(&self.digest_mismatches)
            .chain(&self.orphans)
            .chain(&self.other_failures);
        for problem in problems.take(50) {
            println!("  FAILED: {problem}");
        }
        println!("{}", if self.failed() { "FAILED" } else { "PASSED" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!((s.count, s.p50_ms, s.p99_ms, s.max_ms), (100, 50.0, 99.0, 100.0));
        assert_eq!(Latencies::default().summary().count, 0);
    }
}
