//! Placements per second of the pure scheduler.
//!
//! `cargo run --release -p helios-core --example scheduler_bench [NODES] [JOBS] [COUNT] [--preferences]`
//! places JOBS service jobs of COUNT allocations each on NODES nodes (defaults: 10,000 nodes,
//! 100 jobs of 1,000: 100,000 placements), one evaluation per job, on one thread, and reports
//! placements per second. With `--preferences`, nodes are in 20 racks and 3 zones, and every job
//! spreads over the racks and prefers a zone (an affinity). State is kept in memory with an index of usage by node, as the server's
//! view will be.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use helios_core::scheduler::{schedule, StateView};
use helios_core::{
    Affinity, Allocation, ConstraintOperator, EvalTrigger, Evaluation, Job, JobType, Node, NodeEligibility, NodeStatus,
    Resources, Spread, Timestamp,
};

struct State {
    nodes: Vec<Node>,
    jobs: HashMap<String, Job>,
    allocs_by_job: HashMap<String, Vec<Allocation>>,
    usage: HashMap<String, Resources>,
}

impl StateView for State {
    fn index(&self) -> u64 {
        0
    }
    fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    fn allocations_of_job(&self, job_name: &str) -> Vec<&Allocation> {
        self.allocs_by_job.get(job_name).map(|v| v.iter().collect()).unwrap_or_default()
    }
    fn node_usage(&self, node_id: &str) -> Resources {
        self.usage.get(node_id).copied().unwrap_or(Resources::ZERO)
    }
    fn host_port_holder(&self, _node_id: &str, _port: u16) -> Option<&str> {
        None // the benchmark's jobs are exec jobs: they hold no host ports
    }
}

fn arg(n: usize, default: usize) -> usize {
    let positional: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    positional.get(n - 1).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let (node_count, job_count, count) = (arg(1, 10_000), arg(2, 100), arg(3, 1_000));
    let preferences = std::env::args().any(|a| a == "--preferences");
    let nodes = (0..node_count)
        .map(|i| Node {
            id: format!("node-{i:05}"),
            hostname: format!("host-{i:05}"),
            rpc_addr: String::new(),
            attributes: BTreeMap::from([("os".to_string(), "linux".to_string())]),
            meta: BTreeMap::from([
                ("rack".to_string(), format!("r{}", i % 20)),
                ("zone".to_string(), format!("z{}", i % 3)),
            ]),
            drivers: vec!["exec".to_string(), "docker".to_string()],
            resources: Resources { cpu_mhz: 16_000, memory_mb: 32_768 },
            status: NodeStatus::Ready,
            eligibility: NodeEligibility::Eligible,
            drain: false,
            registered_at: Timestamp(0),
            status_updated_at: Timestamp(0),
            secret_id: String::new(),
        })
        .collect();
    let mut state = State { nodes, jobs: HashMap::new(), allocs_by_job: HashMap::new(), usage: HashMap::new() };
    let mut next_id = 0u64;
    let mut placed = 0usize;
    let mut failed = 0usize;
    let mut elapsed = std::time::Duration::ZERO;
    for j in 0..job_count {
        let name = format!("job-{j}");
        let mut job = Job::exec(&name, "sleep", vec!["3600".into()]);
        job.set_type(JobType::Service);
        job.task_groups[0].count = u32::try_from(count).expect("count fits u32");
        job.task_groups[0].tasks[0].resources = Resources { cpu_mhz: 100 + (j as u32 % 5) * 50, memory_mb: 128 };
        if preferences {
            job.spreads.push(Spread { attribute: "meta.rack".into(), weight: 50, targets: Vec::new() });
            job.affinities.push(Affinity {
                attribute: "meta.zone".into(),
                operator: ConstraintOperator::Equal,
                value: "z1".into(),
                weight: 50,
            });
        }
        state.jobs.insert(name.clone(), job);
        let eval = Evaluation::new(format!("eval-{j}"), &name, 50, EvalTrigger::JobRegister, Timestamp(1));
        let started = Instant::now();
        let plan = schedule(&state, &eval, Timestamp(1), &mut || {
            next_id += 1;
            format!("alloc-{next_id}")
        });
        elapsed += started.elapsed();
        placed += plan.placements.len();
        failed += plan.failed_placements.len();
        // Commit the plan to the in-memory state (not timed: that is the plan applier's work).
        for alloc in plan.placements {
            let used = state.usage.entry(alloc.node_id.clone()).or_insert(Resources::ZERO);
            *used = used.plus(alloc.resources);
            state.allocs_by_job.entry(name.clone()).or_default().push(alloc);
        }
    }
    println!(
        "{placed} placements on {node_count} nodes ({job_count} jobs x {count}{}) in {:.3}s of scheduling: {:.0} placements/s; {failed} groups with failed placements",
        if preferences { ", spread and affinity" } else { "" },
        elapsed.as_secs_f64(),
        placed as f64 / elapsed.as_secs_f64()
    );
}
