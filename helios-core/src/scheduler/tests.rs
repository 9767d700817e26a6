//! Scheduler tests against a harness that is both the state view and the plan applier. The
//! applier rejects a plan made on stale state and checks, after every plan, that no node is
//! over-committed and no slot runs twice.

use std::collections::{BTreeMap, BTreeSet};

use super::reconcile::MAX_LEGACY_RESCHEDULES;
use super::*;
use crate::alloc::{AllocClientStatus, AllocDesiredStatus};
use crate::eval::EvalTrigger;
use crate::job::{Constraint, ConstraintOperator, DockerConfig, JobType, TaskDriver};
use crate::node::{NodeEligibility, NodeStatus};
use crate::reschedule::ReschedulePolicy;

#[derive(Default)]
struct Harness {
    index: u64,
    jobs: BTreeMap<String, Job>,
    nodes: Vec<Node>,
    allocs: BTreeMap<String, Allocation>,
    next_id: u64,
    /// The scheduler's clock (milliseconds).
    now: Timestamp,
    /// The cluster is mid-upgrade from format 6 (`StateView::delays_reschedules`).
    legacy: bool,
    /// Each job's latest deployment.
    deployments: BTreeMap<String, crate::deployment::Deployment>,
}

fn node(id: &str, cpu: u32, mem: u32) -> Node {
    Node {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        rpc_addr: String::new(),
        attributes: BTreeMap::from([("os".to_string(), "linux".to_string())]),
        meta: BTreeMap::new(),
        drivers: vec!["exec".to_string()],
        resources: Resources { cpu_mhz: cpu, memory_mb: mem },
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: false,
        registered_at: Timestamp(0),
        status_updated_at: Timestamp(0),
        secret_id: String::new(),
    }
}

fn service(name: &str, count: u32, cpu: u32, mem: u32) -> Job {
    let mut job = Job::exec(name, "sleep", vec!["1000".into()]);
    job.set_type(JobType::Service);
    job.task_groups[0].reschedule = ReschedulePolicy::default_for(JobType::Service);
    job.task_groups[0].count = count;
    job.task_groups[0].tasks[0].resources = Resources { cpu_mhz: cpu, memory_mb: mem };
    job
}

impl StateView for Harness {
    fn index(&self) -> u64 {
        self.index
    }
    fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    fn allocations_of_job(&self, job_name: &str) -> Vec<&Allocation> {
        self.allocs.values().filter(|a| a.job_name == job_name).collect()
    }
    fn node_usage(&self, node_id: &str) -> Resources {
        self.allocs
            .values()
            .filter(|a| a.node_id == node_id && !a.is_terminal())
            .fold(Resources::ZERO, |used, a| used.plus(a.resources))
    }
    fn host_port_holder(&self, node_id: &str, port: u16) -> Option<&str> {
        self.allocs
            .values()
            .find(|a| a.node_id == node_id && a.holds_host_ports() && a.host_ports.contains(&port))
            .map(|a| a.id.as_str())
    }
    fn delays_reschedules(&self) -> bool {
        !self.legacy
    }
    fn deployment(&self, job_name: &str) -> Option<&crate::deployment::Deployment> {
        self.deployments.get(job_name)
    }
}

impl Harness {
    fn put_job(&mut self, mut job: Job) {
        job.version = self.jobs.get(&job.name).map_or(0, |j| j.version + 1);
        self.jobs.insert(job.name.clone(), job);
        self.index += 1;
    }

    fn plan(&mut self, job_name: &str) -> Plan {
        let eval = Evaluation::new(format!("eval-{}", self.index), job_name, 50, EvalTrigger::JobRegister, self.now);
        let mut counter = self.next_id;
        let plan = schedule(&*self, &eval, self.now, &mut || {
            counter += 1;
            format!("alloc-{counter:06}")
        });
        self.next_id = counter;
        plan
    }

    /// The plan applier: refuses stale plans, then commits and checks the invariants.
    fn apply(&mut self, plan: &Plan) -> Result<(), String> {
        if plan.planned_at_index != self.index {
            return Err(format!("stale plan: made at {} but state is at {}", plan.planned_at_index, self.index));
        }
        for stop in &plan.stops {
            let alloc = self.allocs.get_mut(&stop.alloc_id).expect("stopping a known allocation");
            *alloc = stop.applied_to(alloc);
        }
        for id in &plan.in_place {
            self.allocs.get_mut(id).expect("updating a known allocation").job_version = plan.job_version;
        }
        for alloc in &plan.placements {
            assert!(self.allocs.insert(alloc.id.clone(), alloc.clone()).is_none(), "allocation placed twice");
        }
        self.index += 1;
        self.check_invariants();
        Ok(())
    }

    fn run(&mut self, job_name: &str) -> Plan {
        let plan = self.plan(job_name);
        self.apply(&plan).expect("fresh plan applies");
        plan
    }

    fn check_invariants(&self) {
        for node in &self.nodes {
            let used = self.node_usage(&node.id);
            assert!(used.cpu_mhz <= node.resources.cpu_mhz, "node {} cpu over-committed", node.id);
            assert!(used.memory_mb <= node.resources.memory_mb, "node {} memory over-committed", node.id);
        }
        let mut ports = BTreeSet::new();
        for a in self.allocs.values().filter(|a| a.holds_host_ports()) {
            for port in &a.host_ports {
                assert!(ports.insert((a.node_id.clone(), *port)), "host port {port} taken twice on {}", a.node_id);
            }
        }
        let mut slots = BTreeMap::new();
        for a in self.allocs.values().filter(|a| !a.is_terminal() && a.desired_status == AllocDesiredStatus::Run) {
            let job = &self.jobs[&a.job_name];
            let mut key =
                if job.job_type == JobType::System { format!("{}@{}", a.name, a.node_id) } else { a.name.clone() };
            // A canary shares its slot with the older allocation it will replace.
            if job.task_groups.iter().any(|g| g.update.canary > 0) {
                key = format!("{key}@v{}", a.job_version);
            }
            assert!(slots.insert(key.clone(), a.id.clone()).is_none(), "slot {key} runs twice");
        }
    }

    fn live(&self, job: &str) -> Vec<&Allocation> {
        self.allocs
            .values()
            .filter(|a| a.job_name == job && a.desired_status == AllocDesiredStatus::Run && !a.is_terminal())
            .collect()
    }

    fn set_client_status(&mut self, alloc_id: &str, status: AllocClientStatus) {
        let alloc = self.allocs.get_mut(alloc_id).expect("known allocation");
        alloc.client_status = status;
        alloc.modified_at = self.now;
        self.index += 1;
    }

    fn advance_secs(&mut self, secs: u64) {
        self.now = Timestamp(self.now.0 + secs * 1000);
    }

    /// The agent reports the allocation's task running since `started`.
    fn running_since(&mut self, alloc_id: &str, started: Timestamp) {
        let alloc = self.allocs.get_mut(alloc_id).expect("known allocation");
        alloc.client_status = AllocClientStatus::Running;
        alloc.task_states = BTreeMap::from([(
            "t".to_string(),
            crate::alloc::TaskState {
                state: crate::alloc::TaskRunState::Running,
                failed: false,
                restarts: 0,
                started_at: Some(started),
                finished_at: None,
                events: Vec::new(),
            },
        )]);
        self.index += 1;
    }

    /// Submits `job` and places it, every allocation then running for an hour (healthy).
    fn settle(&mut self, job: Job) {
        let name = job.name.clone();
        self.put_job(job);
        self.run(&name);
        self.all_healthy(&name);
    }

    /// Every live allocation of `job` running for an hour: healthy by any migrate strategy.
    fn all_healthy(&mut self, job: &str) {
        self.now = Timestamp(self.now.0.max(3_600_000));
        let started = Timestamp(self.now.0 - 3_600_000);
        let ids: Vec<String> = self.live(job).iter().map(|a| a.id.clone()).collect();
        for id in ids {
            self.running_since(&id, started);
        }
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.index += 1;
        self.nodes.iter_mut().find(|n| n.id == id).expect("known node")
    }
}

#[test]
fn places_count_allocations_with_slot_names() {
    let mut h = Harness { nodes: vec![node("a", 4000, 4096), node("b", 4000, 4096)], ..Default::default() };
    h.put_job(service("web", 3, 100, 128));
    let plan = h.run("web");
    let mut names: Vec<&str> = plan.placements.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["web.web[0]", "web.web[1]", "web.web[2]"]);
    assert!(plan.failed_placements.is_empty());
    // Nothing changed: the next evaluation plans nothing.
    assert!(h.plan("web").is_empty());
}

#[test]
fn bin_packs_onto_the_fullest_node_that_fits() {
    let mut h = Harness { nodes: vec![node("a", 1000, 1000), node("b", 1000, 1000)], ..Default::default() };
    h.put_job(service("big", 1, 600, 600));
    h.run("big");
    let big_node = h.live("big")[0].node_id.clone();
    h.put_job(service("small", 1, 300, 300));
    h.run("small");
    assert_eq!(h.live("small")[0].node_id, big_node, "best fit fills the used node first");
    h.put_job(service("more", 1, 300, 300));
    h.run("more");
    assert_ne!(h.live("more")[0].node_id, big_node, "a full node is skipped");
}

#[test]
fn copies_of_a_service_spread_over_nodes_when_they_fit_and_pack_when_they_must() {
    // Best fit alone would put all three on one node (each placement makes it the fullest).
    let nodes = vec![node("a", 4000, 4096), node("b", 4000, 4096), node("c", 4000, 4096)];
    let mut h = Harness { nodes: nodes.clone(), ..Default::default() };
    h.put_job(service("web", 3, 100, 128));
    h.run("web");
    let mut on: Vec<String> = h.live("web").iter().map(|a| a.node_id.clone()).collect();
    on.sort();
    assert_eq!(on, ["a", "b", "c"], "one copy per node");
    // Six copies on three nodes: two each, not four on one.
    let mut h = Harness { nodes, ..Default::default() };
    h.put_job(service("web", 6, 100, 128));
    h.run("web");
    let per_node = |h: &Harness, id: &str| h.live("web").iter().filter(|a| a.node_id == id).count();
    assert_eq!(["a", "b", "c"].map(|id| per_node(&h, id)), [2, 2, 2]);
    // Where only one node has room, they still all run, together.
    let mut h = Harness { nodes: vec![node("big", 4000, 4096), node("tiny", 50, 64)], ..Default::default() };
    h.put_job(service("web", 3, 100, 128));
    h.run("web");
    assert_eq!(per_node(&h, "big"), 3);
}

fn docker_node(id: &str) -> Node {
    Node { drivers: vec!["exec".into(), "docker".into()], ..node(id, 10_000, 10_000) }
}

fn with_host_port(mut job: Job, host_port: u16) -> Job {
    job.task_groups[0].tasks[0].driver = TaskDriver::Docker(DockerConfig {
        ports: vec![crate::job::PortMapping { name: "http".into(), container_port: 80, host_port: Some(host_port) }],
        ..DockerConfig::for_image("web")
    });
    job
}

#[test]
fn a_fixed_host_port_is_held_by_one_allocation_per_node() {
    let mut h = Harness { nodes: vec![docker_node("a"), docker_node("b")], ..Default::default() };
    // Best fit would pack all three onto one node; the port allows one per node.
    h.put_job(with_host_port(service("web", 3, 100, 128), 8080));
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 2);
    assert_ne!(plan.placements[0].node_id, plan.placements[1].node_id);
    assert_eq!(plan.placements[0].host_ports, vec![8080]);
    let why = &plan.failed_placements["web"];
    assert!(why.contains("2 host port 8080 in use"), "{why}");

    // Another job wanting the same port finds no node; another port is fine.
    h.put_job(with_host_port(service("other", 1, 100, 128), 8080));
    assert!(h.run("other").placements.is_empty());
    h.put_job(with_host_port(service("admin", 1, 100, 128), 9090));
    assert_eq!(h.run("admin").placements.len(), 1);

    // A finished allocation frees its port, and the blocked copy is placed there.
    let done = h.live("web")[0].id.clone();
    h.set_client_status(&done, AllocClientStatus::Failed);
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 1, "{:?}", plan.failed_placements);
}

#[test]
fn dynamic_ports_come_from_the_nodes_range_are_held_and_named_by_the_allocation() {
    let narrow = |id: &str, range: &str| {
        let mut node = docker_node(id);
        node.attributes.insert(select::DYNAMIC_PORTS_ATTRIBUTE.into(), range.into());
        node
    };
    let mut h = Harness { nodes: vec![narrow("a", "21000-21004")], ..Default::default() };
    let mut job = service("web", 3, 100, 128);
    job.task_groups[0].tasks[0].driver = TaskDriver::Docker(DockerConfig {
        ports: vec![
            crate::job::PortMapping { name: "http".into(), container_port: 80, host_port: None },
            crate::job::PortMapping { name: "admin".into(), container_port: 81, host_port: Some(9000) },
            crate::job::PortMapping { name: "grpc".into(), container_port: 82, host_port: None },
        ],
        ..DockerConfig::for_image("web")
    });
    h.put_job(job.clone());
    // Three allocations would need six dynamic ports; the node's range has five.
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 1, "9000 is fixed: one per node anyway");
    let placed = &plan.placements[0];
    assert_eq!(placed.host_ports[0], 9000, "the fixed port first");
    let group = &job.task_groups[0];
    let (http, grpc) = (placed.host_port_of(group, "web", "http"), placed.host_port_of(group, "web", "grpc"));
    for port in [http, grpc] {
        assert!(port.is_some_and(|p| (21000..=21004).contains(&p)), "{:?}", placed.host_ports);
    }
    assert_ne!(http, grpc);
    assert_eq!(placed.host_port_of(group, "web", "admin"), None, "a fixed port is not dynamic");

    // Another job's dynamic ports avoid those held; when the range runs out, the node is full.
    let mut other = job.clone();
    other.name = "other".into();
    if let TaskDriver::Docker(d) = &mut other.task_groups[0].tasks[0].driver {
        d.ports.retain(|p| p.host_port.is_none());
    }
    other.task_groups[0].count = 2;
    h.put_job(other);
    let plan = h.run("other");
    assert_eq!(plan.placements.len(), 1, "three ports left: room for one allocation of two");
    let mut held: Vec<u16> = h.allocs.values().flat_map(|a| a.host_ports.clone()).collect();
    held.sort_unstable();
    let before = held.len();
    held.dedup();
    assert_eq!(held.len(), before, "no port given twice: {held:?}");
    let why = &plan.failed_placements["web"];
    assert!(why.contains("no free dynamic host port"), "{why}");
}

#[test]
fn a_groups_own_ports_are_held_like_a_containers_and_named_by_label() {
    let mut node = node("a", 4000, 4096);
    node.attributes.insert(select::DYNAMIC_PORTS_ATTRIBUTE.into(), "21000-21004".into());
    // An agent of an older build would drop the ports: not placed there.
    let mut h = Harness { nodes: vec![node.clone()], ..Default::default() };
    let mut job = service("api", 2, 100, 128);
    job.task_groups[0].ports = vec![crate::job::GroupPort { label: "http".into(), static_port: None }];
    h.put_job(job.clone());
    assert!(h.run("api").placements.is_empty());
    node.attributes.insert(crate::job::GROUP_PORTS_ATTRIBUTE.into(), "1".into());
    let mut h = Harness { nodes: vec![node], ..Default::default() };
    job.task_groups[0].ports = vec![
        crate::job::GroupPort { label: "http".into(), static_port: None },
        crate::job::GroupPort { label: "admin".into(), static_port: Some(9100) },
    ];
    h.put_job(job.clone());
    let plan = h.run("api");
    assert_eq!(plan.placements.len(), 1, "9100 is fixed: one allocation per node");
    let placed = &plan.placements[0];
    let ports = job.task_groups[0].assigned_group_ports(&placed.host_ports);
    assert_eq!(ports["admin"], 9100);
    assert!((21000..=21004).contains(&ports["http"]), "{ports:?}");
    assert_eq!(placed.host_ports, [9100, ports["http"]], "held on the node like a container's");
}

#[test]
fn a_group_with_services_is_placed_only_where_the_agent_registers_them() {
    let older = node("old", 4000, 4096);
    let mut newer = node("new", 4000, 4096);
    newer.attributes.insert(crate::service::SERVICES_ATTRIBUTE.into(), "1".into());
    let mut h = Harness { nodes: vec![older, newer], ..Default::default() };
    let mut job = service("web", 2, 100, 128);
    job.task_groups[0].services = vec![crate::service::Service {
        name: "web".into(),
        task: None,
        port: None,
        tags: Vec::new(),
        meta: Default::default(),
        address_mode: crate::service::AddressMode::Auto,
        checks: Vec::new(),
    }];
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.placements.iter().map(|a| a.node_id.as_str()).collect::<Vec<_>>(), ["new", "new"]);
}

#[test]
fn a_replacement_takes_the_port_once_the_agent_reports_the_old_allocation_finished() {
    let mut h = Harness { nodes: vec![docker_node("a")], ..Default::default() };
    h.put_job(with_host_port(service("web", 1, 100, 128), 8080));
    h.run("web");
    // Still pending as far as the servers know: its container may have started all the same.
    let old = h.live("web")[0].id.clone();
    let mut changed = with_host_port(service("web", 1, 100, 128), 8080);
    changed.task_groups[0].tasks[0].env.insert("V".into(), "2".into());
    h.put_job(changed);
    // The old container holds the port until its agent says it has stopped.
    let plan = h.run("web");
    assert_eq!((plan.stops.len(), plan.placements.len()), (1, 0));
    assert!(plan.failed_placements["web"].contains("host port 8080 in use"), "{:?}", plan.failed_placements);
    h.set_client_status(&old, AllocClientStatus::Complete);
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 1, "{:?}", plan.failed_placements);
}

#[test]
fn a_system_job_that_keeps_failing_on_a_node_is_given_up_there() {
    let mut h = Harness { nodes: vec![node("a", 4000, 4096)], ..Default::default() };
    let mut job = service("agent", 1, 100, 128);
    job.set_type(JobType::System);
    h.put_job(job);
    for attempt in 0..=MAX_LEGACY_RESCHEDULES {
        let plan = h.run("agent");
        assert_eq!(plan.placements.len(), 1, "attempt {attempt}");
        let id = plan.placements[0].id.clone();
        h.set_client_status(&id, AllocClientStatus::Failed);
    }
    let plan = h.run("agent");
    assert!(plan.placements.is_empty());
    assert!(plan.failed_placements["agent"].contains("not placing there again"), "{:?}", plan.failed_placements);
}

#[test]
fn an_update_whose_constraints_rule_out_a_node_stops_what_runs_there() {
    let mut h = Harness { nodes: vec![node("a", 4000, 4096), node("b", 4000, 4096)], ..Default::default() };
    let pinned = |ids: &str| {
        let mut job = service("agent", 1, 100, 128);
        job.set_type(JobType::System);
        job.constraints = vec![Constraint {
            attribute: "node.id".into(),
            operator: ConstraintOperator::Regexp,
            value: format!("^({ids})$"),
        }];
        job
    };
    h.put_job(pinned("a|b"));
    assert_eq!(h.run("agent").placements.len(), 2);
    h.put_job(pinned("a"));
    let plan = h.run("agent");
    let on_b = h.allocs.values().find(|x| x.node_id == "b").expect("b's allocation");
    assert_eq!(plan.stops.iter().map(|s| s.alloc_id.as_str()).collect::<Vec<_>>(), [on_b.id.as_str()]);
    assert_eq!(plan.stops[0].description, "its node no longer meets the job's constraints");
    assert_eq!((plan.in_place.len(), plan.placements.len()), (1, 0), "a keeps its allocation");
}

#[test]
fn distinct_hosts_spreads_over_nodes_and_reports_when_out_of_nodes() {
    let mut h = Harness { nodes: vec![node("a", 4000, 4096), node("b", 4000, 4096)], ..Default::default() };
    let mut job = service("web", 3, 100, 128);
    job.constraints.push(Constraint {
        attribute: String::new(),
        operator: ConstraintOperator::DistinctHosts,
        value: String::new(),
    });
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 2);
    assert_ne!(plan.placements[0].node_id, plan.placements[1].node_id);
    let why = &plan.failed_placements["web"];
    assert!(why.contains("2 distinct_hosts"), "{why}");
}

#[test]
fn constraints_drivers_and_node_state_filter_nodes_with_reasons() {
    let mut windows = node("win", 4000, 4096);
    windows.attributes.insert("os".into(), "windows".into());
    let mut down = node("down", 4000, 4096);
    down.status = NodeStatus::Down;
    let mut kernel = node("k", 4000, 4096);
    kernel.attributes.insert("kernel".into(), "6.1.0-13-amd64".into());
    kernel.meta.insert("rack".into(), "r1".into());
    let mut h = Harness { nodes: vec![windows, down, kernel, node("plain", 4000, 4096)], ..Default::default() };
    let mut job = service("web", 1, 100, 128);
    job.constraints = vec![
        Constraint { attribute: "attr.os".into(), operator: ConstraintOperator::Equal, value: "linux".into() },
        Constraint { attribute: "attr.kernel".into(), operator: ConstraintOperator::Version, value: ">= 5.10".into() },
        Constraint { attribute: "meta.rack".into(), operator: ConstraintOperator::Regexp, value: "^r[0-9]$".into() },
        Constraint {
            attribute: "node.hostname".into(),
            operator: ConstraintOperator::NotEqual,
            value: "host-x".into(),
        },
    ];
    h.put_job(job);
    h.run("web");
    assert_eq!(h.live("web")[0].node_id, "k");

    let mut docker = service("db", 1, 100, 128);
    docker.task_groups[0].tasks[0].driver = TaskDriver::Docker(DockerConfig::for_image("postgres"));
    h.put_job(docker);
    let plan = h.run("db");
    assert!(plan.placements.is_empty());
    let why = &plan.failed_placements["db"];
    assert!(why.contains("3 missing driver docker") && why.contains("1 node down"), "{why}");
}

#[test]
fn reports_exhausted_resources_and_never_over_commits() {
    let mut h = Harness { nodes: vec![node("a", 1000, 1000)], ..Default::default() };
    h.put_job(service("web", 5, 300, 100));
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 3);
    assert!(plan.failed_placements["web"].contains("not enough free cpu"), "{:?}", plan.failed_placements);
    // A new node: the retry places the rest.
    h.nodes.push(node("b", 1000, 1000));
    h.index += 1;
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(h.live("web").len(), 5);
}

#[test]
fn no_nodes_says_so() {
    let mut h = Harness::default();
    h.put_job(service("web", 1, 100, 100));
    assert_eq!(h.run("web").failed_placements["web"], "no client nodes are registered");
}

#[test]
fn scaling_up_and_down_keeps_the_running_allocations() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.put_job(service("web", 2, 100, 100));
    h.run("web");
    let first: Vec<String> = h.live("web").iter().map(|a| a.id.clone()).collect();
    let mut job = h.jobs["web"].clone();
    job.task_groups[0].count = 4;
    // Only the count changed: the two running allocations stay (now of version 1), two join them.
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 2);
    assert!(plan.stops.is_empty());
    assert_eq!(plan.in_place.len(), 2);
    assert!(first
        .iter()
        .all(|id| h.allocs[id].job_version == 1 && h.allocs[id].desired_status == AllocDesiredStatus::Run));
    let mut job = h.jobs["web"].clone();
    job.task_groups[0].count = 1;
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 3);
    assert!(plan.stops.iter().all(|s| s.description == "scaled down"));
    assert_eq!(h.live("web").len(), 1);
    assert_eq!(h.live("web")[0].name, "web.web[0]");
}

#[test]
fn a_changed_task_replaces_the_allocations() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.put_job(service("web", 2, 100, 100));
    h.run("web");
    let mut job = h.jobs["web"].clone();
    job.task_groups[0].tasks[0].env.insert("COLOR".into(), "blue".into());
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(plan.stops.len(), 2);
    assert!(plan.stops.iter().all(|s| s.description == "replaced by job version 1"));
    assert!(plan.in_place.is_empty());
}

#[test]
fn stopping_a_job_stops_everything() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.put_job(service("web", 3, 100, 100));
    h.run("web");
    h.jobs.get_mut("web").unwrap().stopped = true;
    h.index += 1;
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 3);
    assert!(h.live("web").is_empty());
    // Purged entirely: the same.
    h.jobs.remove("web");
    assert!(h.plan("web").is_empty());
}

#[test]
fn lost_and_drained_allocations_are_replaced_elsewhere() {
    let mut h = Harness {
        nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192), node("c", 8000, 8192)],
        ..Default::default()
    };
    let mut job = service("web", 3, 100, 100);
    job.constraints.push(Constraint {
        attribute: String::new(),
        operator: ConstraintOperator::DistinctHosts,
        value: String::new(),
    });
    job.task_groups[0].count = 2;
    h.put_job(job);
    h.run("web");
    let victim = h.live("web")[0].node_id.clone();
    h.node_mut(&victim).status = NodeStatus::Down;
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].client_status, Some(AllocClientStatus::Lost));
    assert_eq!(plan.placements.len(), 1);
    assert_ne!(plan.placements[0].node_id, victim);
    assert_eq!(plan.placements[0].name, h.allocs[&plan.stops[0].alloc_id].name, "the replacement keeps the slot");

    let drained = h.live("web")[0].node_id.clone();
    h.all_healthy("web");
    h.node_mut(&drained).drain = true;
    let plan = h.run("web");
    assert_eq!(plan.stops[0].desired_status, AllocDesiredStatus::Evict);
    assert!(h.live("web").iter().all(|a| a.node_id != drained && a.node_id != victim));
}

#[test]
fn batch_jobs_run_to_completion_and_a_failure_is_rescheduled_once_a_day_after_5_s() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    let mut job = service("report", 2, 100, 100);
    job.set_type(JobType::Batch);
    job.task_groups[0].reschedule = ReschedulePolicy::default_for(JobType::Batch);
    h.put_job(job);
    h.run("report");
    let ids: Vec<String> = h.live("report").iter().map(|a| a.id.clone()).collect();
    h.set_client_status(&ids[0], AllocClientStatus::Complete);
    h.set_client_status(&ids[1], AllocClientStatus::Failed);
    let failed_at = h.now;
    let waiting = h.run("report");
    assert!(waiting.placements.is_empty(), "not before the delay");
    assert_eq!(waiting.revisit_at, Some(Timestamp(failed_at.0 + 5_000)));
    h.advance_secs(5);
    let plan = h.run("report");
    assert_eq!(plan.placements.len(), 1, "only the failed slot runs again");
    assert_eq!(plan.placements[0].reschedule_events.len(), 1);
    assert_eq!(plan.placements[0].previous_allocation(), Some(ids[1].as_str()));
    let id = plan.placements[0].id.clone();
    h.set_client_status(&id, AllocClientStatus::Failed);
    h.advance_secs(60);
    let given_up = h.run("report");
    assert!(given_up.placements.is_empty() && given_up.revisit_at.is_none());
    let why = &given_up.failed_placements["report"];
    assert!(why.contains("not rescheduled: rescheduled 1 time(s) in the last 24h"), "{why}");
    assert!(!given_up.blocked(), "no cluster change can help: the evaluation is done, not blocked");
    // An evaluation of the job a day later (another failure, a node change) may place it again,
    // as Nomad's does: the policy counts the reschedules inside the interval before it.
    h.advance_secs(24 * 3600);
    assert_eq!(h.run("report").placements.len(), 1);
}

#[test]
fn a_failing_service_is_rescheduled_with_growing_delays_away_from_the_nodes_that_failed_it() {
    let mut h = Harness {
        nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192), node("c", 8000, 8192)],
        ..Default::default()
    };
    h.put_job(service("web", 1, 100, 100));
    h.run("web");
    let mut nodes_used = vec![h.live("web")[0].node_id.clone()];
    let mut delays = Vec::new();
    for _ in 0..3 {
        let id = h.live("web")[0].id.clone();
        h.set_client_status(&id, AllocClientStatus::Failed);
        let failed_at = h.now;
        let due = h.run("web").revisit_at.expect("a reschedule is due later");
        delays.push((due.0 - failed_at.0) / 1000);
        h.now = due;
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1);
        nodes_used.push(plan.placements[0].node_id.clone());
    }
    assert_eq!(delays, [30, 60, 120], "Nomad's service default: exponential from 30 s");
    let first_three: BTreeSet<&String> = nodes_used[..3].iter().collect();
    assert_eq!(first_three.len(), 3, "each replacement avoided the nodes that failed before: {nodes_used:?}");
    let last = &h.live("web")[0];
    assert_eq!(last.reschedule_events.iter().map(|e| e.delay_secs).collect::<Vec<_>>(), [30, 60, 120]);
}

#[test]
fn scaling_a_crash_looping_service_keeps_its_reschedule_delay_and_history() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
    h.put_job(service("web", 1, 100, 100));
    h.run("web");
    let id = h.live("web")[0].id.clone();
    h.set_client_status(&id, AllocClientStatus::Failed);
    // A count-only change while the slot waits for its 30 s: still waiting, not placed at once.
    h.put_job(service("web", 2, 100, 100));
    let plan = h.run("web");
    assert_eq!(plan.placements.len(), 1, "only the new slot");
    assert_eq!(plan.placements[0].name, "web.web[1]");
    assert!(plan.revisit_at.is_some(), "web.web[0] still waits for its delay");
    h.advance_secs(30);
    let plan = h.run("web");
    assert_eq!(plan.placements[0].reschedule_events.len(), 1, "and carries its history");
}

#[test]
fn a_replacement_goes_back_to_the_failed_node_when_no_other_fits() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 100, 100)], ..Default::default() };
    h.put_job(service("web", 1, 500, 500));
    h.run("web");
    let first = h.live("web")[0].clone();
    assert_eq!(first.node_id, "a");
    h.set_client_status(&first.id, AllocClientStatus::Failed);
    h.advance_secs(30);
    let plan = h.run("web");
    assert_eq!(plan.placements[0].node_id, "a", "penalised, but the only node with room");
}

#[test]
fn a_policy_without_attempts_leaves_the_slot_empty_and_says_why() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    let mut job = service("web", 1, 100, 100);
    job.task_groups[0].reschedule = ReschedulePolicy::disabled();
    h.put_job(job);
    h.run("web");
    let id = h.live("web")[0].id.clone();
    h.set_client_status(&id, AllocClientStatus::Failed);
    let plan = h.run("web");
    assert!(plan.placements.is_empty() && plan.revisit_at.is_none());
    assert!(plan.failed_placements["web"].contains("allows no attempts"), "{:?}", plan.failed_placements);
    // A version that only changes the job's meta is the same group: still failed.
    let mut job = service("web", 1, 100, 100);
    job.task_groups[0].reschedule = ReschedulePolicy::disabled();
    job.meta.insert("v".into(), "2".into());
    h.put_job(job.clone());
    assert!(h.run("web").placements.is_empty());
    // A changed task is a new start: its allocation is placed.
    job.task_groups[0].tasks[0].env.insert("FIXED".into(), "1".into());
    h.put_job(job);
    assert_eq!(h.run("web").placements.len(), 1);
}

#[test]
fn mid_upgrade_a_failure_is_replaced_at_once_a_bounded_number_of_times_as_format_6_did() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], legacy: true, ..Default::default() };
    h.put_job(service("web", 1, 100, 100));
    h.run("web");
    for _ in 0..MAX_LEGACY_RESCHEDULES {
        let id = h.live("web")[0].id.clone();
        h.set_client_status(&id, AllocClientStatus::Failed);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "at once");
        assert!(plan.revisit_at.is_none() && plan.placements[0].reschedule_events.is_empty());
    }
    let id = h.live("web")[0].id.clone();
    h.set_client_status(&id, AllocClientStatus::Failed);
    let plan = h.run("web");
    assert!(plan.placements.is_empty());
    assert!(plan.failed_placements["web"].contains("failed more than 3 times"), "{:?}", plan.failed_placements);
}

#[test]
fn system_jobs_run_once_per_eligible_node_including_new_ones() {
    let mut ineligible = node("c", 8000, 8192);
    ineligible.eligibility = NodeEligibility::Ineligible;
    let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192), ineligible], ..Default::default() };
    let mut job = service("agent", 1, 50, 50);
    job.set_type(JobType::System);
    h.put_job(job);
    h.run("agent");
    let mut on: Vec<String> = h.live("agent").iter().map(|a| a.node_id.clone()).collect();
    on.sort();
    assert_eq!(on, ["a", "b"]);
    h.nodes.push(node("d", 8000, 8192));
    h.index += 1;
    let plan = h.run("agent");
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.placements[0].node_id, "d");
}

#[test]
fn a_stale_plan_is_rejected_and_replanning_succeeds() {
    let mut h = Harness { nodes: vec![node("a", 1000, 1000)], ..Default::default() };
    h.put_job(service("one", 1, 600, 600));
    h.put_job(service("two", 1, 600, 600));
    let first = h.plan("one");
    let second = h.plan("two");
    h.apply(&first).expect("first plan");
    // `second` was made before `first` took the node's room: applying it would over-commit.
    assert!(h.apply(&second).unwrap_err().contains("stale plan"));
    let replanned = h.run("two");
    assert!(replanned.placements.is_empty());
    assert!(replanned.failed_placements["two"].contains("not enough free"));
}

#[test]
fn an_update_on_a_full_cluster_reuses_the_room_its_old_allocations_free() {
    // Two nodes, each exactly full with one allocation of the job, and distinct hosts: the new
    // version can only go where the old one is being stopped.
    let mut h = Harness { nodes: vec![node("a", 1000, 1000), node("b", 1000, 1000)], ..Default::default() };
    let mut job = service("web", 2, 1000, 1000);
    job.constraints.push(Constraint {
        attribute: String::new(),
        operator: ConstraintOperator::DistinctHosts,
        value: String::new(),
    });
    h.put_job(job.clone());
    h.run("web");
    job.task_groups[0].tasks[0].env.insert("VERSION".into(), "2".into());
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 2);
    assert_eq!(plan.placements.len(), 2, "{:?}", plan.failed_placements);
    assert!(plan.failed_placements.is_empty());
    assert!(h.live("web").iter().all(|a| a.job_version == 1));
}

#[test]
fn a_system_job_skips_nodes_it_cannot_run_on_without_failing() {
    let mut mac = node("mac", 8000, 8192);
    mac.attributes.insert("os".into(), "darwin".into());
    let mut h = Harness { nodes: vec![node("a", 8000, 8192), mac], ..Default::default() };
    let mut job = service("agent", 1, 50, 50);
    job.set_type(JobType::System);
    job.constraints.push(Constraint {
        attribute: "attr.os".into(),
        operator: ConstraintOperator::Equal,
        value: "linux".into(),
    });
    h.put_job(job);
    let plan = h.run("agent");
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.placements[0].node_id, "a");
    assert!(plan.failed_placements.is_empty(), "{:?}", plan.failed_placements);
}

fn in_rack(id: &str, rack: &str) -> Node {
    let mut n = node(id, 8000, 8192);
    n.meta.insert("rack".into(), rack.into());
    n
}

/// The job's live allocations per rack.
fn per_rack(h: &Harness, job: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in h.live(job) {
        let node = h.nodes.iter().find(|n| n.id == a.node_id).expect("node");
        *out.entry(node.meta["rack"].clone()).or_default() += 1;
    }
    out
}

fn affinity(value: &str, weight: i8) -> crate::job::Affinity {
    crate::job::Affinity {
        attribute: "meta.rack".into(),
        operator: ConstraintOperator::Equal,
        value: value.into(),
        weight,
    }
}

#[test]
fn an_affinity_draws_placements_to_matching_nodes_and_a_negative_one_keeps_them_away() {
    let mut h =
        Harness { nodes: vec![in_rack("a", "r1"), in_rack("b", "r2"), in_rack("c", "r3")], ..Default::default() };
    let mut job = service("web", 1, 100, 100);
    job.affinities.push(affinity("r2", 100));
    h.put_job(job);
    let plan = h.run("web");
    assert_eq!(plan.placements[0].node_id, "b");
    let metrics = &plan.placements[0].metrics;
    assert_eq!(metrics.scores[0].node_id, "b", "the chosen node's score comes first");
    assert!(metrics.scores[0].parts.contains(&(crate::placement::ScoreKind::NodeAffinity, 1000)), "{metrics:?}");
    assert_eq!(metrics.nodes_evaluated, 3);

    // Soft, not a constraint: two copies go to the two nodes of the one rack not avoided, but a
    // third copy would rather go to an avoided rack than double up (job anti-affinity).
    let nodes = vec![in_rack("a", "r1"), in_rack("b", "r2"), in_rack("c", "r3"), in_rack("d", "r3")];
    let mut h = Harness { nodes, ..Default::default() };
    let mut avoid = service("api", 2, 100, 100);
    avoid.task_groups[0].affinities = vec![affinity("r1", -100), affinity("r2", -100)];
    h.put_job(avoid.clone());
    h.run("api");
    assert_eq!(per_rack(&h, "api"), BTreeMap::from([("r3".to_string(), 2)]), "r3 is the only rack not avoided");
    avoid.task_groups[0].count = 3;
    h.put_job(avoid);
    h.run("api");
    assert_eq!(per_rack(&h, "api").len(), 2, "the third went to an avoided rack");
}

#[test]
fn a_spread_with_targets_places_by_their_percentages() {
    let nodes = vec![in_rack("a", "r1"), in_rack("b", "r1"), in_rack("c", "r2"), in_rack("d", "r2")];
    let mut h = Harness { nodes, ..Default::default() };
    let mut job = service("web", 10, 100, 100);
    job.spreads.push(crate::job::Spread {
        attribute: "meta.rack".into(),
        weight: 100,
        targets: vec![crate::job::SpreadTarget { value: "r1".into(), percent: 70 }],
    });
    h.put_job(job);
    h.run("web");
    assert_eq!(
        per_rack(&h, "web"),
        BTreeMap::from([("r1".to_string(), 7), ("r2".to_string(), 3)]),
        "r2 takes the 30% left"
    );
}

#[test]
fn an_even_spread_balances_values_not_nodes() {
    // Four nodes, three of them in r1: job anti-affinity alone puts one copy on each node, three
    // in r1; spread over racks gives two each.
    let nodes = vec![in_rack("a", "r1"), in_rack("b", "r1"), in_rack("e", "r1"), in_rack("c", "r2")];
    let mut h = Harness { nodes, ..Default::default() };
    let mut job = service("web", 4, 100, 100);
    job.task_groups[0].spreads.push(crate::job::Spread {
        attribute: "meta.rack".into(),
        weight: 100,
        targets: Vec::new(),
    });
    h.put_job(job);
    h.run("web");
    assert_eq!(per_rack(&h, "web"), BTreeMap::from([("r1".to_string(), 2), ("r2".to_string(), 2)]));
}

#[test]
fn distinct_property_allows_so_many_allocations_per_value_and_says_why_the_rest_wait() {
    let nodes = vec![in_rack("a", "r1"), in_rack("b", "r1"), in_rack("c", "r2"), node("x", 8000, 8192)];
    let mut h = Harness { nodes, ..Default::default() };
    let mut job = service("db", 3, 100, 100);
    job.task_groups[0].constraints.push(Constraint {
        attribute: "meta.rack".into(),
        operator: ConstraintOperator::DistinctProperty,
        value: String::new(),
    });
    h.put_job(job);
    let plan = h.run("db");
    assert_eq!(per_rack(&h, "db"), BTreeMap::from([("r1".to_string(), 1), ("r2".to_string(), 1)]));
    let why = &plan.failed_placements["db"];
    assert!(why.contains("distinct_property meta.rack: 1 allocation(s) per value already"), "{why}");
    assert!(why.contains("distinct_property meta.rack: attribute missing"), "node x has no rack: {why}");
    // A limit of 2 per rack takes the third.
    let mut job = service("db", 3, 100, 100);
    job.task_groups[0].constraints.push(Constraint {
        attribute: "meta.rack".into(),
        operator: ConstraintOperator::DistinctProperty,
        value: "2".into(),
    });
    h.put_job(job);
    h.run("db");
    assert_eq!(h.live("db").len(), 3);
}

#[test]
fn a_drain_moves_a_services_allocations_in_waves_of_max_parallel_once_the_last_is_healthy() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.settle(service("web", 3, 100, 100));
    h.nodes.push(node("b", 8000, 8192));
    h.node_mut("a").drain = true;
    let mut moved = Vec::new();
    for wave in 0..3 {
        let plan = h.run("web");
        assert_eq!(plan.stops.len(), 1, "wave {wave}: one at a time");
        assert_eq!(plan.placements.len(), 1);
        // Planned again for the next wave, when this one's replacement may be healthy; the last
        // wave leaves nothing to wait for.
        let due = plan.revisit_at;
        assert_eq!(due.is_some(), wave < 2, "wave {wave}");
        let placed = plan.placements[0].id.clone();
        moved.push(placed.clone());
        // Until the replacement has run for min_healthy_time (10 s), nothing else moves.
        let waiting = h.run("web");
        assert!(waiting.stops.is_empty(), "wave {wave}: waits for its replacement");
        if wave < 2 {
            assert_eq!(waiting.revisit_at, Some(Timestamp(h.now.0 + 10_000)), "looked at again while it starts");
        }
        h.running_since(&placed, h.now);
        h.now = Timestamp(h.now.0 + 5_000);
        assert!(h.run("web").stops.is_empty(), "running 5 s: not healthy yet");
        h.now = Timestamp(h.now.0 + 5_000);
        assert!(due.is_none_or(|due| due <= h.now));
    }
    assert_eq!(h.live("web").iter().filter(|a| a.node_id == "b").count(), 3);
    let last = h.run("web");
    assert!(last.is_empty() && last.revisit_at.is_none(), "the drain is done: {last:?}");
}

#[test]
fn a_drain_waits_while_the_group_is_short_of_healthy_allocations() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.settle(service("web", 2, 100, 100));
    h.nodes.push(node("b", 8000, 8192));
    h.node_mut("a").drain = true;
    assert_eq!(h.run("web").stops.len(), 1);
    // Its replacement never starts: even past its healthy_deadline the other one stays, so the
    // service keeps count - max_parallel running (Nomad's drainer waits the same way).
    h.now = Timestamp(h.now.0 + 600_000);
    let plan = h.run("web");
    assert!(plan.stops.is_empty());
    assert!(plan.revisit_at.is_some(), "still looked at");
}

#[test]
fn batch_jobs_mid_upgrade_clusters_and_wide_waves_leave_a_draining_node_at_once() {
    for (job_type, legacy, max_parallel) in
        [(JobType::Batch, false, 1), (JobType::Service, true, 1), (JobType::Service, false, 3)]
    {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], legacy, ..Default::default() };
        let mut job = service("web", 3, 100, 100);
        job.set_type(job_type);
        job.task_groups[0].migrate.max_parallel = max_parallel;
        h.settle(job);
        h.nodes.push(node("b", 8000, 8192));
        h.node_mut("a").drain = true;
        let plan = h.run("web");
        assert_eq!(plan.stops.len(), 3, "{job_type:?} legacy={legacy} max_parallel={max_parallel}");
        assert_eq!(plan.placements.len(), 3);
    }
}

fn rolling(max_parallel: u32) -> crate::update::UpdateStrategy {
    crate::update::UpdateStrategy { max_parallel, ..crate::update::UpdateStrategy::nomad_block_defaults() }
}

/// The job's next version, with its task's args changed (a destructive update).
fn next_version(h: &Harness, name: &str) -> Job {
    let mut job = h.jobs[name].clone();
    if let TaskDriver::Exec(e) = &mut job.task_groups[0].tasks[0].driver {
        e.args.push("again".into());
    }
    job
}

#[test]
fn a_rolling_update_replaces_max_parallel_at_a_time_once_the_new_ones_are_healthy() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
    let mut job = service("web", 10, 100, 100);
    job.task_groups[0].update = rolling(2);
    h.settle(job);
    let v1 = next_version(&h, "web");
    h.put_job(v1);
    let mut replaced = 0;
    while replaced < 10 {
        let plan = h.run("web");
        assert_eq!(plan.stops.len(), 2, "two at a time");
        assert_eq!(plan.placements.len(), 2);
        replaced += 2;
        // Never fewer than 8 of the 10 running: the 2 just stopped are the only ones missing.
        let healthy_or_old = h.live("web").iter().filter(|a| a.job_version == 0).count()
            + h.live("web")
                .iter()
                .filter(|a| a.job_version == 1 && a.client_status == AllocClientStatus::Running)
                .count();
        assert!(healthy_or_old >= 8, "{healthy_or_old} running after {replaced} replaced");
        // The new ones start; until they have run 10 s, nothing else is replaced.
        let placed: Vec<String> = plan.placements.iter().map(|a| a.id.clone()).collect();
        assert!(h.run("web").stops.is_empty(), "waits for the new ones");
        for id in &placed {
            h.running_since(id, h.now);
        }
        h.advance_secs(9);
        assert!(h.run("web").stops.is_empty(), "9 s: not healthy yet");
        h.advance_secs(1);
    }
    assert!(h.live("web").iter().all(|a| a.job_version == 1));
    assert!(h.run("web").is_empty());
}

#[test]
fn a_rollout_waits_while_a_new_allocation_fails_and_goes_on_once_its_replacement_is_healthy() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    let mut job = service("web", 4, 100, 100);
    job.task_groups[0].update = rolling(1);
    h.settle(job);
    h.put_job(next_version(&h, "web"));
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 1);
    let new = plan.placements[0].id.clone();
    h.set_client_status(&new, AllocClientStatus::Failed);
    let waiting = h.run("web");
    assert!(waiting.stops.is_empty(), "no further old allocation replaced");
    let why = &waiting.failed_placements["web"];
    assert!(why.contains("rolling update to version 1 waits: 3 of 4 healthy, at least 3 needed; 1 allocation(s) of the new version failed"), "{why}");
    assert_eq!(h.live("web").iter().filter(|a| a.job_version == 0).count(), 3, "three of four still serve");
    // Rescheduled after its delay (30 s), the replacement comes up: the rollout goes on.
    h.advance_secs(30);
    let rescheduled = h.run("web");
    assert_eq!((rescheduled.placements.len(), rescheduled.stops.len()), (1, 0));
    h.running_since(&rescheduled.placements[0].id, h.now);
    h.advance_secs(10);
    assert_eq!(h.run("web").stops.len(), 1, "the next old one is replaced");
}

#[test]
fn a_version_that_cannot_be_placed_takes_down_at_most_max_parallel() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    let mut job = service("web", 4, 100, 100);
    job.task_groups[0].update = rolling(1);
    h.settle(job);
    let mut broken = next_version(&h, "web");
    broken.constraints.push(Constraint {
        attribute: "meta.nowhere".into(),
        operator: ConstraintOperator::Equal,
        value: "x".into(),
    });
    h.put_job(broken);
    let plan = h.run("web");
    assert_eq!((plan.stops.len(), plan.placements.len()), (1, 0), "one stopped, its replacement fits nowhere");
    for _ in 0..5 {
        h.advance_secs(60);
        assert!(h.run("web").stops.is_empty(), "no more old allocations stopped");
    }
    assert_eq!(h.live("web").len(), 3);
}

#[test]
fn without_an_update_block_a_new_version_replaces_everything_at_once() {
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.settle(service("web", 4, 100, 100));
    h.put_job(next_version(&h, "web"));
    let plan = h.run("web");
    assert_eq!((plan.stops.len(), plan.placements.len()), (4, 4));
}

/// Every check of the allocation's service at `status`, since `since`.
fn checks_at(h: &mut Harness, alloc_id: &str, status: crate::service::CheckStatus, since: Timestamp) {
    let alloc = h.allocs.get_mut(alloc_id).expect("known allocation");
    alloc.services = vec![crate::service::ServiceRegistration {
        service: "web".into(),
        task: None,
        address: "10.0.0.1".into(),
        port: 8080,
        checks: vec![crate::service::CheckState { name: "http".into(), status, output: String::new(), since }],
    }];
    h.index += 1;
}

fn with_http_check(job: &mut Job) {
    job.task_groups[0].services = vec![crate::service::Service {
        name: "web".into(),
        task: None,
        port: Some("8080".into()),
        tags: Vec::new(),
        meta: Default::default(),
        address_mode: crate::service::AddressMode::Auto,
        checks: vec![crate::service::Check {
            name: "http".into(),
            kind: crate::service::CheckKind::Tcp,
            port: None,
            interval_ms: 1_000,
            timeout_ms: 1_000,
            initial_status: crate::service::CheckStatus::Critical,
            success_before_passing: 0,
            failures_before_critical: 0,
            check_restart: None,
        }],
    }];
}

#[test]
fn a_rollout_by_checks_waits_for_the_new_checks_and_replaces_a_version_that_never_passed_first() {
    use crate::service::CheckStatus::{Critical, Passing};
    let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
    h.nodes[0].attributes.insert(crate::service::SERVICES_ATTRIBUTE.into(), "1".into());
    let mut job = service("web", 3, 100, 100);
    job.task_groups[0].update = crate::update::UpdateStrategy {
        max_parallel: 1,
        health_check: crate::HealthCheck::Checks,
        min_healthy_time_secs: 10,
        healthy_deadline_secs: 60,
        progress_deadline_secs: 0,
        ..crate::update::UpdateStrategy::default()
    };
    with_http_check(&mut job);
    h.settle(job);
    let v0: Vec<String> = h.live("web").iter().map(|a| a.id.clone()).collect();
    for id in &v0 {
        checks_at(&mut h, id, Passing, Timestamp(0));
    }
    // Version 1's check never passes: one replaced, then the rollout holds.
    h.put_job(next_version(&h, "web"));
    let plan = h.run("web");
    assert_eq!((plan.stops.len(), plan.placements.len()), (1, 1));
    let v1 = plan.placements[0].id.clone();
    h.running_since(&v1, h.now);
    let now = h.now;
    checks_at(&mut h, &v1, Critical, now);
    h.advance_secs(30);
    assert!(h.run("web").stops.is_empty(), "its task runs, its check does not pass: not healthy");
    h.advance_secs(31);
    let held = h.run("web");
    assert!(held.stops.is_empty());
    let why = &held.failed_placements["web"];
    assert!(
        why.contains("0 allocation(s) of the new version failed, 1 not healthy by their healthy_deadline"),
        "{why}"
    );
    // Version 2: the allocation of version 1 (not healthy) is replaced at once, without taking
    // a healthy one down (two of three serve, the least max_parallel = 1 allows).
    h.put_job(next_version(&h, "web"));
    let plan = h.run("web");
    let stopped: Vec<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
    assert_eq!(stopped, [v1.as_str()]);
    assert_eq!(h.live("web").iter().filter(|a| a.job_version == 0).count(), 2);
    // Its replacement passes its check for min_healthy_time: the next wave goes.
    let v2 = plan.placements[0].id.clone();
    h.running_since(&v2, h.now);
    let now = h.now;
    checks_at(&mut h, &v2, Passing, now);
    h.advance_secs(10);
    let plan = h.run("web");
    assert_eq!(plan.stops.len(), 1);
    assert!(v0.contains(&plan.stops[0].alloc_id));
}

#[test]
fn a_system_job_rolls_max_parallel_nodes_at_a_time_each_set_a_stagger_after_the_last() {
    let nodes = ["a", "b", "c", "d"].map(|id| node(id, 8000, 8192)).to_vec();
    let mut h = Harness { nodes, ..Default::default() };
    let mut job = service("agent", 1, 100, 100);
    job.set_type(JobType::System);
    job.task_groups[0].update =
        crate::update::UpdateStrategy { max_parallel: 2, stagger_secs: 30, ..Default::default() };
    h.settle(job);
    assert_eq!(h.live("agent").len(), 4);
    h.put_job(next_version(&h, "agent"));
    let plan = h.run("agent");
    assert_eq!((plan.stops.len(), plan.placements.len()), (2, 2), "two nodes first");
    assert_eq!(plan.revisit_at, Some(Timestamp(h.now.0 + 30_000)), "the next set after the stagger");
    h.advance_secs(29);
    assert!(h.run("agent").stops.is_empty(), "29 s: still waiting");
    h.advance_secs(1);
    let plan = h.run("agent");
    assert_eq!((plan.stops.len(), plan.placements.len()), (2, 2), "the other two");
    assert!(h.live("agent").iter().all(|a| a.job_version == 1));
}

mod deployments {
    use super::*;
    use crate::deployment::{Deployment, DeploymentAction, DeploymentStatus, DESCRIPTION_NEEDS_PROMOTION};

    impl Harness {
        /// Registers `job` as its next version with the deployment the state machine would
        /// start (canaries where older allocations run).
        fn deploy(&mut self, job: Job) {
            let name = job.name.clone();
            self.put_job(job);
            let allocs = self.allocation_list(&name);
            let job = &self.jobs[&name];
            let id = format!("deploy-{}", job.version);
            let deployment = Deployment::for_version(job, &id, self.now, &allocs).expect("a rolling job");
            self.deployments.insert(name, deployment);
            self.index += 1;
        }

        /// The leader's watcher looks once.
        fn watch(&mut self, name: &str) {
            let job = self.jobs[name].clone();
            let fingerprint = job.task_groups[0].fingerprint();
            let allocs = self.allocation_list(name);
            let refs: Vec<&Allocation> = allocs.iter().collect();
            let needs = |_: &crate::job::TaskGroup| {
                refs.iter()
                    .any(|a| a.job_version < job.version && a.group_fingerprint != fingerprint && !a.is_terminal())
            };
            let next = self.deployments[name].observe(&job, &refs, self.now, |_| 0, needs);
            if let Some(next) = next {
                self.deployments.insert(name.to_string(), next);
                self.index += 1;
            }
        }

        fn act(&mut self, name: &str, action: DeploymentAction) -> Result<(), String> {
            let allocs = self.allocation_list(name);
            let now = self.now;
            let deployment = self.deployments.get_mut(name).expect("deployed");
            let version = deployment.job_version;
            let group_of =
                |id: &str| allocs.iter().find(|a| a.id == id && a.job_version == version).map(|a| a.task_group.clone());
            deployment.act(&action, now, group_of)?;
            self.index += 1;
            Ok(())
        }

        fn allocation_list(&self, name: &str) -> Vec<Allocation> {
            self.allocs.values().filter(|a| a.job_name == name).cloned().collect()
        }

        fn status(&self, name: &str) -> DeploymentStatus {
            self.deployments[name].status
        }

        /// The allocations `plan` placed run from now on.
        fn start(&mut self, plan: &Plan) {
            for alloc in &plan.placements {
                self.running_since(&alloc.id, self.now);
            }
        }
    }

    fn canary_job(canary: u32) -> Job {
        let mut job = service("web", 3, 100, 100);
        job.task_groups[0].update = crate::update::UpdateStrategy { canary, ..rolling(1) };
        job
    }

    #[test]
    fn canaries_run_beside_the_old_version_until_promoted_then_the_rollout_goes_on() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(1));
        let old: Vec<String> = h.live("web").iter().map(|a| a.id.clone()).collect();
        let v1 = next_version(&h, "web");
        h.deploy(v1);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "one canary");
        assert!(plan.stops.is_empty(), "nothing old stops for a canary");
        assert_eq!(plan.placements[0].name, "web.web[0]", "in an old allocation's slot");
        h.start(&plan);
        assert!(h.run("web").is_empty(), "no second canary, no replacement");
        h.advance_secs(10);
        h.watch("web");
        let d = &h.deployments["web"];
        assert_eq!(d.groups["web"].healthy(), 1);
        assert_eq!(d.status_description, DESCRIPTION_NEEDS_PROMOTION);
        assert!(h.run("web").is_empty(), "healthy canaries still wait for promotion");
        assert_eq!(h.live("web").len(), 4, "three old and the canary");

        h.act("web", DeploymentAction::Promote { groups: Vec::new() }).expect("promotable");
        let plan = h.run("web");
        let stopped: Vec<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        assert_eq!(stopped, [old[0].as_str(), old[1].as_str()], "the canary's slot, then one wave of max_parallel 1");
        assert_eq!(plan.placements.len(), 1);
        h.start(&plan);
        h.advance_secs(10);
        h.watch("web");
        let plan = h.run("web");
        assert_eq!(plan.stops.len(), 1);
        h.start(&plan);
        h.advance_secs(10);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Successful);
        assert!(h.live("web").iter().all(|a| a.job_version == 1));
        assert_eq!(h.live("web").len(), 3);
    }

    #[test]
    fn promotion_is_refused_until_every_canary_is_healthy() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(2));
        h.deploy(next_version(&h, "web"));
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 2);
        h.running_since(&plan.placements[0].id, h.now);
        h.advance_secs(10);
        h.watch("web");
        let refused = h.act("web", DeploymentAction::Promote { groups: Vec::new() }).expect_err("one not healthy");
        assert!(refused.contains("1 of 2 canaries healthy"), "{refused}");
    }

    #[test]
    fn an_unhealthy_canary_fails_the_deployment_and_the_canaries_stop() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        // Without a progress deadline, the first unhealthy allocation fails it (Nomad's rule).
        let mut job = canary_job(1);
        job.task_groups[0].update.progress_deadline_secs = 0;
        h.settle(job);
        h.deploy(next_version(&h, "web"));
        let canary = h.run("web").placements[0].id.clone();
        // Never running: unhealthy at its healthy_deadline (300 s).
        h.advance_secs(300);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Failed);
        let plan = h.run("web");
        assert_eq!(plan.stops.iter().map(|s| s.alloc_id.as_str()).collect::<Vec<_>>(), [canary.as_str()]);
        assert!(plan.placements.is_empty());
        assert!(h.live("web").iter().all(|a| a.job_version == 0), "the old version serves on");
        assert!(h.run("web").is_empty());
    }

    #[test]
    fn with_a_progress_deadline_a_failed_allocation_is_rescheduled_and_its_replacement_counts() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(0));
        h.deploy(next_version(&h, "web"));
        let first = h.run("web").placements[0].id.clone();
        h.set_client_status(&first, AllocClientStatus::Failed);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Running, "the deadline (600 s) has not passed");
        assert_eq!(h.deployments["web"].groups["web"].unhealthy(), 1);
        // Rescheduled by the group's policy (a service's first delay: 30 s), then healthy.
        h.advance_secs(30);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "the failure's replacement");
        h.start(&plan);
        // The remaining waves, each healthy 10 s after it starts.
        for _ in 0..10 {
            h.advance_secs(10);
            h.watch("web");
            let plan = h.run("web");
            h.start(&plan);
        }
        assert_eq!(h.status("web"), DeploymentStatus::Successful);
        assert_eq!(h.deployments["web"].groups["web"].healthy(), 3);
    }

    #[test]
    fn a_failed_canary_is_rescheduled_while_its_progress_deadline_runs() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(1));
        h.deploy(next_version(&h, "web"));
        let canary = h.run("web").placements[0].clone();
        assert!(canary.canary && canary.deployment_id.as_deref() == Some("deploy-1"), "{canary:?}");
        h.set_client_status(&canary.id, AllocClientStatus::Failed);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Running);
        assert!(h.run("web").placements.is_empty(), "the reschedule delay (30 s) first");
        h.advance_secs(30);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "{plan:?}");
        let again = &plan.placements[0];
        assert!(again.canary && again.name == canary.name, "a canary again, in the same slot");
        assert_eq!(again.reschedule_events.len(), 1, "with the failure's history");
        assert!(plan.stops.is_empty(), "nothing old replaced before promotion");
        h.start(&plan);
        h.advance_secs(10);
        h.watch("web");
        assert_eq!(h.deployments["web"].status_description, DESCRIPTION_NEEDS_PROMOTION);
    }

    #[test]
    fn a_canarys_slot_stays_its_own_when_the_old_allocation_there_is_lost_and_a_lost_canary_is_placed_again() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(1));
        h.deploy(next_version(&h, "web"));
        let canary = h.run("web").placements[0].clone();
        let now = h.now;
        h.running_since(&canary.id, now);
        let old_in_slot =
            h.live("web").iter().find(|a| a.job_version == 0 && a.name == canary.name).map(|a| a.id.clone());
        h.set_client_status(&old_in_slot.expect("an old allocation shares the slot"), AllocClientStatus::Lost);
        let plan = h.run("web");
        assert!(plan.placements.is_empty(), "the canary holds the slot: {plan:?}");
        // The canary itself lost: one canary again, in its slot.
        h.set_client_status(&canary.id, AllocClientStatus::Lost);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "{plan:?}");
        assert!(plan.placements[0].canary && plan.placements[0].name == canary.name);
        assert!(h.run("web").placements.is_empty(), "one canary, as asked");
    }

    #[test]
    fn while_canaries_wait_for_promotion_a_count_increase_waits_too() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(1));
        let mut bigger = next_version(&h, "web");
        bigger.task_groups[0].count = 4;
        h.deploy(bigger);
        let plan = h.run("web");
        assert_eq!(plan.placements.len(), 1, "only the canary: {plan:?}");
        assert!(plan.placements[0].canary);
        h.start(&plan);
        h.advance_secs(10);
        h.watch("web");
        assert_eq!(h.deployments["web"].groups["web"].placed_canaries.len(), 1);
        h.act("web", DeploymentAction::Promote { groups: Vec::new() }).expect("promotable");
        let plan = h.run("web");
        let names: BTreeSet<&str> = plan.placements.iter().map(|a| a.name.as_str()).collect();
        assert!(names.contains("web.web[3]"), "the new slot once promoted: {names:?}");
        assert!(plan.placements.iter().all(|a| !a.canary && a.deployment_id.as_deref() == Some("deploy-1")));
    }

    #[test]
    fn an_operators_unhealthy_verdict_fails_the_deployment_at_once() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        let mut job = canary_job(0);
        job.task_groups[0].update.health_check = crate::HealthCheck::Manual;
        h.settle(job);
        h.deploy(next_version(&h, "web"));
        let new = h.run("web").placements[0].id.clone();
        h.act("web", DeploymentAction::SetHealth { healthy: Vec::new(), unhealthy: vec![new] }).expect("its own");
        assert_eq!(h.status("web"), DeploymentStatus::Failed);
        assert_eq!(h.deployments["web"].status_description, "Failed due to unhealthy allocations");
    }

    #[test]
    fn an_allocation_lost_with_its_node_gets_no_verdict() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192), node("b", 8000, 8192)], ..Default::default() };
        let mut job = canary_job(0);
        job.task_groups[0].update.progress_deadline_secs = 0;
        h.settle(job);
        h.deploy(next_version(&h, "web"));
        let new = h.run("web").placements[0].id.clone();
        h.set_client_status(&new, AllocClientStatus::Lost);
        h.advance_secs(400);
        h.watch("web");
        assert!(!h.deployments["web"].groups["web"].health.contains_key(&new));
        assert_eq!(h.status("web"), DeploymentStatus::Running, "not failed by a lost node's allocation");
    }

    #[test]
    fn a_paused_deployment_replaces_nothing_until_resumed() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        h.settle(canary_job(0));
        h.deploy(next_version(&h, "web"));
        let plan = h.run("web");
        assert_eq!(plan.stops.len(), 1);
        h.start(&plan);
        h.act("web", DeploymentAction::Pause).expect("running");
        h.advance_secs(10);
        h.watch("web");
        assert_eq!(h.deployments["web"].groups["web"].healthy(), 1, "health is still judged");
        assert!(h.run("web").is_empty(), "paused");
        assert_eq!(h.live("web").len(), 3, "the new allocation keeps its slot");
        h.act("web", DeploymentAction::Resume).expect("paused");
        assert_eq!(h.run("web").stops.len(), 1, "resumed");
    }

    #[test]
    fn manual_health_waits_for_the_operator() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        let mut job = canary_job(0);
        job.task_groups[0].update.health_check = crate::HealthCheck::Manual;
        h.settle(job);
        h.deploy(next_version(&h, "web"));
        let plan = h.run("web");
        let new = plan.placements[0].id.clone();
        h.start(&plan);
        h.advance_secs(300);
        h.watch("web");
        assert!(h.run("web").is_empty(), "five minutes running is not healthy without the operator");
        let old = h.live("web").iter().find(|a| a.job_version == 0).map(|a| a.id.clone()).expect("an old one");
        let refused = h.act("web", DeploymentAction::SetHealth { healthy: vec![old], unhealthy: Vec::new() });
        assert!(refused.expect_err("not of the version").contains("is not part of deployment"));
        h.act("web", DeploymentAction::SetHealth { healthy: vec![new], unhealthy: Vec::new() }).expect("its own");
        assert_eq!(h.run("web").stops.len(), 1, "goes on");
    }

    #[test]
    fn a_deployment_fails_at_its_progress_deadline_which_progress_moves() {
        let mut h = Harness { nodes: vec![node("a", 8000, 8192)], ..Default::default() };
        let mut job = canary_job(0);
        job.task_groups[0].update.progress_deadline_secs = 300;
        job.task_groups[0].update.healthy_deadline_secs = 299;
        h.settle(job.clone());
        h.deploy(next_version(&h, "web"));
        let plan = h.run("web");
        h.start(&plan);
        h.advance_secs(10);
        h.watch("web");
        let by = h.deployments["web"].groups["web"].require_progress_by.expect("a deadline");
        assert_eq!(by, Timestamp(h.now.0 + 300_000), "progress moves the deadline");
        // The next one never starts: the healthy deadline and the progress deadline pass.
        h.run("web");
        h.advance_secs(299);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Running);
        h.advance_secs(1);
        h.watch("web");
        assert_eq!(h.status("web"), DeploymentStatus::Failed);
        assert!(h.run("web").stops.is_empty(), "a failed deployment replaces nothing more");
    }
}
