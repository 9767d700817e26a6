use helios_core::command::{JobDeregistered, JobRegistered, PlanApplied};
use helios_core::AllocDesiredStatus;
use helios_core::{EvalTrigger, Evaluation, Job, JobStatus, NodeEligibility, NodeStatus, Plan};
use redb::ReadableDatabase;

use super::*;
use crate::store::{open, read};

pub(super) fn proposal(id: &str, at: u64, command: Command) -> Proposal {
    Proposal::new(id.to_string(), Timestamp(at), command)
}

pub(super) fn register(name: &str, arg: &str, eval: &str) -> Command {
    let job = Job::exec(name, "echo", vec![arg.to_string()]);
    let eval = Evaluation::new(eval.to_string(), name, 50, EvalTrigger::JobRegister, Timestamp(1));
    Command::RegisterJob { job, eval }
}

/// Applies proposals in one transaction, as the state machine applies one batch.
pub(super) fn apply_all(db: &redb::Database, proposals: Vec<Proposal>) -> Vec<CommandResponse> {
    let txn = db.begin_write().unwrap();
    let responses = {
        let mut tables = StateTables::open(&txn).unwrap();
        let out = proposals
            .into_iter()
            .map(|p| {
                tables.index += 1;
                tables.apply_once(p).unwrap()
            })
            .collect();
        tables.finish().unwrap();
        out
    };
    txn.commit().unwrap();
    responses
}

#[test]
fn versions_count_changed_specs_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let got = apply_all(
        &db,
        vec![
            proposal("r1", 10, register("web", "a", "e1")),
            proposal("r2", 11, register("web", "a", "e2")),
            proposal("r3", 12, register("web", "b", "e3")),
        ],
    );
    assert_eq!(
        got,
        vec![
            CommandResponse::JobRegistered(JobRegistered { version: 0, changed: true, eval_id: Some("e1".into()) }),
            CommandResponse::JobRegistered(JobRegistered { version: 0, changed: false, eval_id: None }),
            CommandResponse::JobRegistered(JobRegistered { version: 1, changed: true, eval_id: Some("e3".into()) }),
        ]
    );
    let txn = db.begin_read().unwrap();
    assert_eq!(read::job_versions(&txn, "web").unwrap().len(), 2);
    assert_eq!(read::evaluations_for_job(&txn, "web").unwrap().len(), 2);
}

#[test]
fn a_repeated_request_is_answered_without_applying_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let first = apply_all(&db, vec![proposal("r1", 10, register("web", "a", "e1"))]);
    // Someone else updates the job; then the first request is retried (a leader change).
    apply_all(&db, vec![proposal("r2", 11, register("web", "b", "e2"))]);
    let retried = apply_all(&db, vec![proposal("r1", 10, register("web", "a", "e1"))]);
    assert_eq!(first, retried);
    let txn = db.begin_read().unwrap();
    let job = read::job(&txn, "web").unwrap().unwrap();
    assert_eq!(job.version, 1, "the retry must not roll the job back to the older spec");
}

#[test]
fn request_ids_are_forgotten_after_the_memory_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("old", 1_000, register("a", "x", "e1"))]);
    apply_all(&db, vec![proposal("new", 1_000 + REQUEST_MEMORY_MS + 1, register("b", "x", "e2"))]);
    let txn = db.begin_read().unwrap();
    let requests = txn.open_table(REQUESTS).unwrap();
    let keys: Vec<String> = requests.iter().unwrap().map(|r| r.unwrap().0.value().to_string()).collect();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with("/new"), "{keys:?}");
}

#[test]
fn remembered_request_ids_do_not_depend_on_batching() {
    // p4 comes from a server whose clock is far behind: applied after p3, it is remembered
    // until a later proposal's window passes it, in whatever batch it arrives.
    let proposals = || {
        vec![
            proposal("p1", 1_000, register("a", "x", "e1")),
            proposal("p2", 1_005 + REQUEST_MEMORY_MS, register("b", "x", "e2")),
            proposal("p3", 1_010 + REQUEST_MEMORY_MS, register("c", "x", "e3")),
            proposal("p4", 1_002, register("d", "x", "e4")),
        ]
    };
    let remembered = |batches: Vec<Vec<Proposal>>| {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 1).unwrap();
        let mut after_each = Vec::new();
        for batch in batches {
            apply_all(&db, batch);
            let txn = db.begin_read().unwrap();
            let requests = txn.open_table(REQUESTS).unwrap();
            after_each.push(requests.iter().unwrap().map(|r| r.unwrap().0.value().to_string()).collect::<Vec<_>>());
        }
        after_each
    };
    let one_by_one = remembered(proposals().into_iter().map(|p| vec![p]).collect());
    let mut pairs = proposals();
    let second = pairs.split_off(2);
    let in_pairs = remembered(vec![pairs, second]);
    assert_eq!(in_pairs, vec![one_by_one[1].clone(), one_by_one[3].clone()]);
    assert_eq!(one_by_one[3].len(), 3, "p1 forgotten once p2's time passed its window: {one_by_one:?}");
}

#[test]
fn stop_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let eval = |id: &str| Evaluation::new(id.into(), "web", 50, EvalTrigger::JobDeregister, Timestamp(5));
    let stop =
        |id: &str, purge| Command::DeregisterJob { job_name: "web".into(), purge, eval: eval(id), now: Timestamp(5) };
    let got = apply_all(
        &db,
        vec![
            proposal("r0", 1, stop("e0", false)),
            proposal("r1", 2, register("web", "a", "e1")),
            proposal("r2", 3, stop("e2", false)),
        ],
    );
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
    assert_eq!(got[2], CommandResponse::JobDeregistered(JobDeregistered { eval_id: "e2".into() }));
    {
        let txn = db.begin_read().unwrap();
        let job = read::job(&txn, "web").unwrap().unwrap();
        assert!(job.stopped);
        assert_eq!(job.status, JobStatus::Dead, "no allocations run, so the stopped job is dead");
    }
    apply_all(&db, vec![proposal("r3", 4, stop("e3", true))]);
    let txn = db.begin_read().unwrap();
    assert!(read::job(&txn, "web").unwrap().is_none());
    assert!(read::job_versions(&txn, "web").unwrap().is_empty());
}

fn node(id: &str, cpu: u32) -> helios_core::Node {
    helios_core::Node {
        id: id.into(),
        hostname: id.into(),
        rpc_addr: "127.0.0.1:1".into(),
        attributes: Default::default(),
        meta: Default::default(),
        drivers: vec!["exec".into()],
        resources: Resources { cpu_mhz: cpu, memory_mb: 1000 },
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: false,
        registered_at: Timestamp(1),
        status_updated_at: Timestamp(1),
        secret_id: "s".into(),
    }
}

fn alloc(id: &str, job: &str, name: &str, node: &str, cpu: u32) -> Allocation {
    Allocation {
        id: id.into(),
        name: name.into(),
        eval_id: "e".into(),
        job_name: job.into(),
        job_version: 0,
        task_group: "g".into(),
        group_fingerprint: 0,
        node_id: node.into(),
        resources: Resources { cpu_mhz: cpu, memory_mb: 10 },
        host_ports: vec![],
        desired_status: AllocDesiredStatus::Run,
        desired_description: String::new(),
        client_status: AllocClientStatus::Pending,
        client_description: String::new(),
        task_states: Default::default(),
        created_at: Timestamp(1),
        modified_at: Timestamp(1),
        reschedule_events: Vec::new(),
        next_allocation: None,
        metrics: Default::default(),
        services: Vec::new(),
        deployment_id: None,
        canary: false,
    }
}

fn plan(job: &str, placements: Vec<Allocation>) -> Command {
    let plan = Plan {
        eval_id: "e".into(),
        job_name: job.into(),
        planned_at_index: 0,
        placements,
        stops: vec![],
        in_place: vec![],
        job_version: 0,
        failed_placements: Default::default(),
        revisit_at: None,
        revisit_reason: String::new(),
        final_failures: Default::default(),
    };
    let mut eval = Evaluation::new("e".into(), job, 50, EvalTrigger::JobRegister, Timestamp(2));
    eval.status = helios_core::EvalStatus::Complete;
    Command::ApplyPlan { plan, eval }
}

#[test]
fn the_plan_applier_refuses_over_commits_and_double_placements() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let register = Command::RegisterNode { node: node("n", 1000), evals: vec![] };
    apply_all(&db, vec![proposal("r0", 1, register)]);
    let got = apply_all(
        &db,
        vec![
            proposal("r1", 2, plan("a", vec![alloc("x1", "a", "a.g[0]", "n", 600)])),
            // Would put 1200 MHz on a 1000 MHz node.
            proposal("r2", 3, plan("b", vec![alloc("x2", "b", "b.g[0]", "n", 600)])),
            // The same slot of job a again.
            proposal("r3", 4, plan("a", vec![alloc("x3", "a", "a.g[0]", "n", 100)])),
            // Another job whose allocation happens to have the same name is fine.
            proposal("r4", 5, plan("a.g", vec![alloc("x4", "a.g", "a.g[0]", "n", 100)])),
            // A node nobody registered.
            proposal("r5", 6, plan("c", vec![alloc("x5", "c", "c.g[0]", "ghost", 1)])),
        ],
    );
    assert_eq!(got[0], CommandResponse::PlanApplied(PlanApplied { placed: 1, stopped: 0 }));
    let refused = |r: &CommandResponse, why: &str| matches!(r, CommandResponse::Rejected(x) if x.kind == RejectionKind::FailedPrecondition && x.message.contains(why));
    assert!(refused(&got[1], "no room left"), "{:?}", got[1]);
    assert!(refused(&got[2], "already filled"), "{:?}", got[2]);
    assert_eq!(got[3], CommandResponse::PlanApplied(PlanApplied { placed: 1, stopped: 0 }));
    assert!(refused(&got[4], "is gone"), "{:?}", got[4]);
    let txn = db.begin_read().unwrap();
    let ids: Vec<String> = read::allocations(&txn, None, None).unwrap().into_iter().map(|a| a.id).collect();
    assert_eq!(ids, ["x1", "x4"]);
}

#[test]
fn a_fixed_host_port_is_held_once_per_node_until_its_allocation_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("r0", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    let with_port = |id: &str, job: &str, port: u16| Allocation {
        host_ports: vec![port],
        ..alloc(id, job, &format!("{job}.g[0]"), "n", 1)
    };
    let got = apply_all(
        &db,
        vec![
            proposal("r1", 2, plan("a", vec![with_port("a1", "a", 8080)])),
            // Another job on the same node and port.
            proposal("r2", 3, plan("b", vec![with_port("b1", "b", 8080)])),
            // Two placements of one plan on the same port.
            proposal(
                "r3",
                4,
                plan(
                    "c",
                    vec![
                        with_port("c1", "c", 9090),
                        Allocation { name: "c.g[1]".into(), ..with_port("c2", "c", 9090) },
                    ],
                ),
            ),
            proposal("r4", 5, plan("d", vec![with_port("d1", "d", 9090)])),
        ],
    );
    let refused = |r: &CommandResponse| matches!(r, CommandResponse::Rejected(x) if x.message.contains("is taken"));
    assert_eq!(got[0], CommandResponse::PlanApplied(PlanApplied { placed: 1, stopped: 0 }));
    assert!(refused(&got[1]) && refused(&got[2]), "{got:?}");
    assert_eq!(got[3], CommandResponse::PlanApplied(PlanApplied { placed: 1, stopped: 0 }));
    assert_indexes_agree_with_a_scan(&db);

    // a1 fails: 8080 is free again.
    let fail_a1 = report_on_n(report("a1", AllocClientStatus::Failed), 10);
    apply_all(&db, vec![proposal("r5", 6, fail_a1)]);
    let got = apply_all(&db, vec![proposal("r6", 7, plan("b", vec![with_port("b2", "b", 8080)]))]);
    assert_eq!(got[0], CommandResponse::PlanApplied(PlanApplied { placed: 1, stopped: 0 }));
    assert_indexes_agree_with_a_scan(&db);
    {
        let txn = db.begin_read().unwrap();
        assert_eq!(read::host_ports(&txn).unwrap()[&("n".to_string(), 8080)], "b2");
    }

    // b2 runs, and is asked to stop: its container keeps the port until it has exited.
    let running = report_on_n(report("b2", AllocClientStatus::Running), 11);
    apply_all(&db, vec![proposal("r7", 8, running)]);
    let Command::ApplyPlan { plan: mut replace, eval } =
        plan("b", vec![Allocation { name: "b.g[1]".into(), ..with_port("b3", "b", 8080) }])
    else {
        unreachable!()
    };
    replace.stops.push(helios_core::plan::AllocStop {
        alloc_id: "b2".into(),
        desired_status: AllocDesiredStatus::Stop,
        client_status: None,
        description: "replaced".into(),
    });
    let got = apply_all(&db, vec![proposal("r8", 9, Command::ApplyPlan { plan: replace, eval })]);
    assert!(refused(&got[0]), "the port is still in use: {got:?}");
    let stop_b2 = {
        let Command::ApplyPlan { mut plan, eval } = self::plan("b", vec![]) else { unreachable!() };
        plan.stops.push(helios_core::plan::AllocStop {
            alloc_id: "b2".into(),
            desired_status: AllocDesiredStatus::Stop,
            client_status: None,
            description: "replaced".into(),
        });
        Command::ApplyPlan { plan, eval }
    };
    apply_all(&db, vec![proposal("r10", 11, stop_b2)]);
    assert_indexes_agree_with_a_scan(&db);
    {
        let txn = db.begin_read().unwrap();
        assert_eq!(read::host_ports(&txn).unwrap()[&("n".to_string(), 8080)], "b2", "held while it stops");
    }
    // A job blocked meanwhile (on that port, say): the stop freed cpu and memory already, so
    // only the port's release can wake it.
    let Command::ApplyPlan { mut plan, mut eval } = plan("z", vec![]) else { unreachable!() };
    plan.planned_at_index = u64::MAX; // planned on the latest state
    eval.id = "ez".into();
    eval.status = helios_core::EvalStatus::Blocked;
    apply_all(&db, vec![proposal("r9", 10, Command::ApplyPlan { plan, eval })]);
    let status_of_ez = |db: &redb::Database| {
        let txn = db.begin_read().unwrap();
        read::evaluations_for_job(&txn, "z").unwrap().into_iter().find(|e| e.id == "ez").expect("ez").status
    };
    assert_eq!(status_of_ez(&db), helios_core::EvalStatus::Blocked);
    let exited = report_on_n(report("b2", AllocClientStatus::Complete), 12);
    apply_all(&db, vec![proposal("r11", 12, exited)]);
    assert_indexes_agree_with_a_scan(&db);
    let txn = db.begin_read().unwrap();
    assert!(!read::host_ports(&txn).unwrap().contains_key(&("n".to_string(), 8080)), "freed once it exited");
    drop(txn);
    assert_eq!(status_of_ez(&db), helios_core::EvalStatus::Pending, "planned again once the port is free");
}

/// The indexes are kept incrementally; they must always equal what a full scan computes.
fn assert_indexes_agree_with_a_scan(db: &redb::Database) {
    let txn = db.begin_read().unwrap();
    let all = read::allocations(&txn, None, None).unwrap();
    let mut usage: HashMap<String, Resources> = HashMap::new();
    let mut counts: HashMap<String, crate::store::tables::AllocCounts> = HashMap::new();
    for a in &all {
        if reserves_room(a) {
            let r = usage.entry(a.node_id.clone()).or_insert(Resources::ZERO);
            *r = r.plus(a.resources);
        }
        let c = counts.entry(a.job_name.clone()).or_default();
        c.running += counted(a).running;
        c.live += counted(a).live;
        let by_job = read::allocations(&txn, Some(&a.job_name), None).unwrap();
        let by_node = read::allocations(&txn, None, Some(&a.node_id)).unwrap();
        assert!(by_job.contains(a) && by_node.contains(a), "{} missing from an index", a.id);
    }
    let mut ports = read::HostPorts::new();
    for a in all.iter().filter(|a| a.holds_host_ports()) {
        for port in &a.host_ports {
            assert!(ports.insert((a.node_id.clone(), *port), a.id.clone()).is_none(), "port {port} held twice");
        }
    }
    assert_eq!(read::host_ports(&txn).unwrap(), ports, "node ports");
    // Exactly the rows a rebuild writes: none for a zero (see `StateTables::finish`).
    usage.retain(|_, used| *used != Resources::ZERO);
    assert_eq!(read::node_usage(&txn).unwrap(), usage, "node usage");
    counts.retain(|_, c| *c != crate::store::tables::AllocCounts::default());
    let stored_counts: HashMap<String, crate::store::tables::AllocCounts> = txn
        .open_table(crate::store::tables::JOB_ALLOC_COUNTS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| {
            let (job, value) = row.unwrap();
            (job.value().to_string(), crate::store::codec::decode(value.value()).unwrap())
        })
        .collect();
    assert_eq!(stored_counts, counts, "allocation counts");
}

/// Node n's agent reports `update` at time `now`.
fn report_on_n(update: helios_core::AllocUpdate, now: u64) -> Command {
    Command::ReportAllocations {
        node_id: "n".into(),
        secret: "s".into(),
        updates: vec![update],
        now: Timestamp(now),
        evals: vec![],
    }
}

fn report(id: &str, status: AllocClientStatus) -> helios_core::AllocUpdate {
    helios_core::AllocUpdate {
        alloc_id: id.into(),
        client_status: status,
        client_description: String::new(),
        task_states: Default::default(),
    }
}

#[test]
fn indexes_follow_placements_reports_stops_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    for n in ["n1", "n2"] {
        apply_all(&db, vec![proposal(n, 1, Command::RegisterNode { node: node(n, 1000), evals: vec![] })]);
    }
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(
        &db,
        vec![
            proposal("p1", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n1", 300)])),
            proposal("p2", 3, plan("a", vec![alloc("a2", "a", "a.g[1]", "n2", 200)])),
            proposal("p3", 4, plan("b", vec![alloc("b1", "b", "b.g[0]", "n1", 100)])),
        ],
    );
    assert_indexes_agree_with_a_scan(&db);
    let updates = |node: &str, list: Vec<helios_core::AllocUpdate>| Command::ReportAllocations {
        node_id: node.into(),
        secret: "s".into(),
        updates: list,
        now: Timestamp(5),
        evals: vec![],
    };
    apply_all(
        &db,
        vec![
            proposal("u1", 5, updates("n1", vec![report("a1", AllocClientStatus::Running)])),
            proposal("u2", 6, updates("n2", vec![report("a2", AllocClientStatus::Failed)])),
        ],
    );
    assert_indexes_agree_with_a_scan(&db);
    {
        let txn = db.begin_read().unwrap();
        assert_eq!(read::job(&txn, "a").unwrap().unwrap().status, JobStatus::Running);
        assert_eq!(read::node_usage(&txn).unwrap().get("n2"), None, "a failed allocation frees its room");
    }
    let stop = Command::DeregisterJob {
        job_name: "a".into(),
        purge: true,
        eval: Evaluation::new("es".into(), "a", 50, EvalTrigger::JobDeregister, Timestamp(7)),
        now: Timestamp(7),
    };
    apply_all(&db, vec![proposal("s", 7, stop)]);
    assert_indexes_agree_with_a_scan(&db);
    {
        let txn = db.begin_read().unwrap();
        assert_eq!(read::node_usage(&txn).unwrap()["n1"].cpu_mhz, 100, "only b1 is left on n1");
    }
    // A report with the wrong secret changes nothing.
    let mut forged = updates("n1", vec![report("b1", AllocClientStatus::Failed)]);
    if let Command::ReportAllocations { secret, .. } = &mut forged {
        *secret = "guess".into();
    }
    let got = apply_all(&db, vec![proposal("f", 8, forged)]);
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
    // The node of b1 goes down: the plan marks it lost, which frees its room.
    let mut lose = plan("b", vec![]);
    if let Command::ApplyPlan { plan, .. } = &mut lose {
        plan.stops.push(helios_core::plan::AllocStop {
            alloc_id: "b1".into(),
            desired_status: AllocDesiredStatus::Stop,
            client_status: Some(AllocClientStatus::Lost),
            description: "node down".into(),
        });
    }
    apply_all(&db, vec![proposal("l", 9, lose)]);
    assert_indexes_agree_with_a_scan(&db);
    let txn = db.begin_read().unwrap();
    assert_eq!(read::node_usage(&txn).unwrap().get("n1"), None, "nothing reserved: no row");
    assert_eq!(read::alloc_counts(&txn, "b").unwrap(), crate::store::tables::AllocCounts { running: 0, live: 0 });
}

#[test]
fn indexes_are_rebuilt_for_data_that_predates_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 300)]))]);
    // What an older server left behind: the tables without their indexes or the marker.
    let txn = db.begin_write().unwrap();
    for def in [ALLOCS_BY_JOB, ALLOCS_BY_NODE, EVALS_BY_JOB, NODE_USAGE, JOB_ALLOC_COUNTS] {
        txn.open_table(def).unwrap().retain(|_, _| false).unwrap();
    }
    txn.open_table(crate::store::tables::SM_META).unwrap().remove(crate::store::tables::SM_INDEXES).unwrap();
    txn.commit().unwrap();
    drop(db);

    let db = open(dir.path(), 1).unwrap();
    assert_indexes_agree_with_a_scan(&db);
    let txn = db.begin_read().unwrap();
    assert_eq!(read::node_usage(&txn).unwrap()["n"].cpu_mhz, 300);
    assert_eq!(read::evaluations_for_job(&txn, "a").unwrap().len(), 2, "the job's and the plan's");
}

#[test]
fn a_node_id_keeps_its_secret_until_purged_and_reports_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 300)]))]);
    let claim = |at: u64| {
        let mut other = node("n", 1000);
        other.secret_id = "another".into();
        proposal(&format!("c{at}"), at, Command::RegisterNode { node: other, evals: vec![] })
    };
    let refused =
        |r: &CommandResponse| matches!(r, CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition);
    // Ready, then down: the id is not another agent's to take, and a ready node is not purged.
    assert!(refused(&apply_all(&db, vec![claim(4)])[0]));
    let purge = |at: u64| {
        proposal(&format!("x{at}"), at, Command::PurgeNode { node_id: "n".into(), now: Timestamp(at), evals: vec![] })
    };
    assert!(refused(&apply_all(&db, vec![purge(5)])[0]));
    let down =
        Command::SetNodeStatus { node_id: "n".into(), status: NodeStatus::Down, now: Timestamp(6), evals: vec![] };
    apply_all(&db, vec![proposal("d", 6, down)]);
    assert!(refused(&apply_all(&db, vec![claim(7)])[0]));
    assert_eq!(apply_all(&db, vec![purge(8)])[0], CommandResponse::NodePurged);
    assert_indexes_agree_with_a_scan(&db);
    {
        let txn = db.begin_read().unwrap();
        assert!(read::node(&txn, "n").unwrap().is_none());
        let a1 = read::allocation(&txn, "a1").unwrap().unwrap();
        assert_eq!((a1.client_status, a1.desired_status), (AllocClientStatus::Lost, AllocDesiredStatus::Stop));
    }
    assert_eq!(apply_all(&db, vec![claim(9)])[0], CommandResponse::NodeRegistered, "the freed id is taken");
}

/// Found by review: a snapshot of a cluster far ahead, restored into a new one, kept positions in
/// the source's log, and every blocked plan was planned again in a loop until this log caught up.
#[test]
fn a_restore_rebases_positions_in_the_source_log() {
    use crate::store::codec::{decode, encode};
    use crate::store::tables::{CLUSTER, NODES_CHANGED_AT, ROOM_FREED_AT};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let rows = vec![(NODES_CHANGED_AT.to_string(), encode(&1_000_000u64)), (ROOM_FREED_AT.to_string(), encode(&1u64))];
    let got = apply_all(
        &db,
        vec![
            proposal("b", 1, Command::RestoreBegin { restore_id: "r".into() }),
            proposal("s", 1, Command::RestoreRows { restore_id: "r".into(), table: "cluster".into(), rows }),
            proposal("c", 1, Command::RestoreCommit { restore_id: "r".into(), rows: 2 }),
        ],
    );
    assert!(matches!(got[2], CommandResponse::Restored(_)), "{got:?}");
    let txn = db.begin_read().unwrap();
    let cluster = txn.open_table(CLUSTER).unwrap();
    let at = |key: &str| -> u64 { decode(cluster.get(key).unwrap().unwrap().value()).unwrap() };
    assert_eq!(at(NODES_CHANGED_AT), 3, "re-based at the commit's index");
    assert_eq!(at(ROOM_FREED_AT), 1, "already behind this log: kept");
}

/// Garbage collection makes unknown ids reachable (a purged job's allocation lost with its node
/// goes at once); a report naming one must not lose the rest of the batch.
#[test]
fn a_report_naming_a_collected_allocation_still_applies_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 100)]))]);
    let command = Command::ReportAllocations {
        node_id: "n".into(),
        secret: "s".into(),
        updates: vec![report("gone", AllocClientStatus::Complete), report("a1", AllocClientStatus::Running)],
        now: Timestamp(3),
        evals: vec![],
    };
    let got = apply_all(&db, vec![proposal("r", 3, command)]);
    assert_eq!(got[0], CommandResponse::AllocationsUpdated);
    let a1 = read::allocation(&db.begin_read().unwrap(), "a1").unwrap().unwrap();
    assert_eq!(a1.client_status, AllocClientStatus::Running);
}

/// Found by joining a fourth server to a restored cluster: its `server digest` differed from the
/// others' at the same index. The joiner had installed a snapshot and rebuilt the indexes, which
/// write no row for a node with nothing reserved; the others kept that node's zero.
#[test]
fn indexes_kept_by_each_write_are_the_bytes_a_rebuild_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(&db, vec![proposal("p", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n", 300)]))]);
    // Finished: the node has nothing reserved and the job nothing live.
    apply_all(&db, vec![proposal("r", 3, report_on_n(report("a1", AllocClientStatus::Complete), 3))]);
    assert_indexes_agree_with_a_scan(&db);
    let digest = || read::state_digest(&db.begin_read().unwrap()).unwrap();
    let before = digest();
    let txn = db.begin_write().unwrap();
    crate::store::rebuild_indexes(&txn).unwrap();
    txn.commit().unwrap();
    assert_eq!(digest(), before);
}

/// Tried with `bench place`: its simulated agents left before reporting the stops of the jobs it
/// purged, and those allocations stayed "running" for good, with their nodes.
#[test]
fn a_node_that_goes_down_loses_what_it_was_asked_to_stop_so_it_can_be_collected() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    apply_all(&db, vec![proposal("n", 1, Command::RegisterNode { node: node("n", 1000), evals: vec![] })]);
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea")), proposal("k", 1, register("b", "x", "eb"))]);
    let placements = [alloc("a1", "a", "a.g[0]", "n", 100), alloc("b1", "b", "b.g[0]", "n", 100)];
    apply_all(&db, vec![proposal("pa", 2, plan("a", placements[..1].to_vec()))]);
    apply_all(&db, vec![proposal("pb", 2, plan("b", placements[1..].to_vec()))]);
    let running = |id: &str| report(id, AllocClientStatus::Running);
    apply_all(
        &db,
        vec![proposal("r", 3, report_on_n(running("a1"), 3)), proposal("s", 3, report_on_n(running("b1"), 3))],
    );
    let eval = Evaluation::new("ep".into(), "a", 50, EvalTrigger::JobDeregister, Timestamp(4));
    let purge = Command::DeregisterJob { job_name: "a".into(), purge: true, eval, now: Timestamp(4) };
    apply_all(&db, vec![proposal("x", 4, purge)]);
    let status = |id: &str| {
        let a = read::allocation(&db.begin_read().unwrap(), id).unwrap().unwrap();
        (a.desired_status, a.client_status)
    };
    assert_eq!(status("a1"), (AllocDesiredStatus::Stop, AllocClientStatus::Running), "its agent has not reported");

    let down =
        Command::SetNodeStatus { node_id: "n".into(), status: NodeStatus::Down, now: Timestamp(5), evals: vec![] };
    apply_all(&db, vec![proposal("d", 5, down)]);
    assert_eq!(status("a1"), (AllocDesiredStatus::Stop, AllocClientStatus::Lost));
    assert_eq!(status("b1"), (AllocDesiredStatus::Run, AllocClientStatus::Running), "the scheduler's to replace");
    assert_indexes_agree_with_a_scan(&db);

    // A forced pass then takes the purged job's allocation; the node still holds b1.
    let cutoffs = helios_core::gc::Thresholds::default().forced(Timestamp(6));
    let garbage = crate::gc::find(&db.begin_read().unwrap(), &cutoffs).unwrap();
    let found: Vec<_> = garbage.iter().flat_map(|g| g.allocs.clone()).collect();
    assert_eq!(found, ["a1"]);
    assert!(garbage.iter().all(|g| g.nodes.is_empty()), "b1 is unfinished on it");
    let collect = garbage.into_iter().map(|garbage| Command::CollectGarbage { cutoffs, garbage });
    let got: Vec<_> =
        collect.enumerate().map(|(i, c)| apply_all(&db, vec![proposal(&format!("gc{i}"), 6, c)])).collect();
    assert!(matches!(&got[0][0], CommandResponse::GarbageCollected(c) if c.allocs == 1), "{got:?}");
    assert!(read::allocation(&db.begin_read().unwrap(), "a1").unwrap().is_none(), "collected");
    assert_indexes_agree_with_a_scan(&db);
}

#[test]
fn acls_bootstrap_once_unless_reset_and_tokens_need_their_policies() {
    use helios_core::acl::{AclPolicy, AclToken, Level, PolicyRules, TokenType};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let token = |id: &str, policies: &[&str]| AclToken {
        accessor_id: id.into(),
        secret_hash: format!("hash-{id}"),
        name: id.into(),
        token_type: if policies.is_empty() { TokenType::Management } else { TokenType::Client },
        policies: policies.iter().map(|p| p.to_string()).collect(),
        created_at: Timestamp(1),
        expires_at: None,
    };
    let boot = |id: &str, reset: Option<u64>| Command::AclBootstrap { token: token(id, &[]), reset_index: reset };
    assert_eq!(apply_all(&db, vec![proposal("b1", 1, boot("root", None))])[0], CommandResponse::AclChanged);
    let again = apply_all(&db, vec![proposal("b2", 2, boot("root2", None))]);
    assert!(matches!(&again[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
    let index = {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(CLUSTER).unwrap();
        let bytes = table.get(crate::store::tables::ACL_BOOTSTRAP_INDEX).unwrap().unwrap();
        decode::<u64>(bytes.value()).unwrap()
    };
    let wrong = apply_all(&db, vec![proposal("b3", 3, boot("root3", Some(index + 7)))]);
    assert!(matches!(&wrong[0], CommandResponse::Rejected(_)), "a wrong reset index");
    assert_eq!(apply_all(&db, vec![proposal("b4", 4, boot("root4", Some(index)))])[0], CommandResponse::AclChanged);

    let missing =
        apply_all(&db, vec![proposal("t1", 5, Command::UpsertAclToken { token: token("ro", &["readonly"]) })]);
    assert!(matches!(&missing[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
    let policy = AclPolicy {
        name: "readonly".into(),
        description: String::new(),
        rules: PolicyRules { job_level: Some(Level::Read), ..Default::default() },
        source: String::new(),
        modified_at: Timestamp(6),
    };
    apply_all(&db, vec![proposal("p", 6, Command::UpsertAclPolicy { policy })]);
    apply_all(&db, vec![proposal("t2", 7, Command::UpsertAclToken { token: token("ro", &["readonly"]) })]);
    {
        let txn = db.begin_read().unwrap();
        assert_eq!(read::acl_token_by_secret(&txn, "hash-ro").unwrap().unwrap().name, "ro");
    }
    apply_all(&db, vec![proposal("d", 8, Command::DeleteAclToken { accessor_id: "ro".into() })]);
    let txn = db.begin_read().unwrap();
    assert!(read::acl_token_by_secret(&txn, "hash-ro").unwrap().is_none(), "its secret no longer finds it");
    assert_eq!(read::acl_tokens(&txn).unwrap().len(), 2, "the two bootstrap tokens");
}

fn stored_format(db: &redb::Database) -> u32 {
    read::stored_format(&db.begin_read().unwrap()).unwrap()
}

#[test]
fn the_stored_format_is_raised_never_lowered_and_kept_by_a_restore() {
    use helios_core::format::{FORMAT_VERSION, OLDEST_WRITTEN_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    assert_eq!(stored_format(&db), OLDEST_WRITTEN_FORMAT, "a cluster starts at the oldest written format");
    let raise = |format| Command::RaiseFormat { format };
    let got = apply_all(&db, vec![proposal("r1", 1, raise(FORMAT_VERSION)), proposal("r2", 2, raise(3))]);
    assert_eq!(got, [CommandResponse::FormatRaised, CommandResponse::FormatRaised]);
    assert_eq!(stored_format(&db), FORMAT_VERSION, "raised, and not lowered by an older raise");

    // A snapshot of a cluster that never raised its format (no row) restores as this
    // cluster's data, in this cluster's format.
    let got = apply_all(
        &db,
        vec![
            proposal("b", 3, Command::RestoreBegin { restore_id: "r".into() }),
            proposal("c", 3, Command::RestoreCommit { restore_id: "r".into(), rows: 0 }),
        ],
    );
    assert!(matches!(got[1], CommandResponse::Restored(_)), "{got:?}");
    assert_eq!(stored_format(&db), FORMAT_VERSION);
}

#[test]
#[should_panic(expected = "run a build of format")]
fn a_raise_past_this_build_stops_the_server_rather_than_write_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let format = helios_core::format::FORMAT_VERSION + 1;
    apply_all(&db, vec![proposal("r", 1, Command::RaiseFormat { format })]);
}

#[test]
fn a_waiting_evaluation_is_not_scheduled_before_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let mut waiting = Evaluation::new("e1".into(), "slow", 50, EvalTrigger::AllocFailure, Timestamp(1));
    waiting.wait_until = Some(Timestamp(100));
    let now = Evaluation::new("e2".into(), "fast", 50, EvalTrigger::AllocFailure, Timestamp(1));
    // Only a cluster raised to format 7 stores a waiting evaluation (older readers would run it).
    let raise = Command::RaiseFormat { format: helios_core::format::FORMAT_VERSION };
    let create = Command::CreateEvaluations { evals: vec![waiting, now] };
    apply_all(&db, vec![proposal("r", 1, raise), proposal("c", 2, create)]);
    let txn = db.begin_read().unwrap();
    let names = |at: u64| -> Vec<String> {
        read::pending_evaluations(&txn, 10, Timestamp(at)).unwrap().into_iter().map(|e| e.job_name).collect()
    };
    assert_eq!(names(99), ["fast"], "still waiting");
    assert_eq!(names(100), ["slow", "fast"], "due");
}

#[test]
fn a_job_keeps_one_waiting_evaluation_the_newest_due_at_the_earliest_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let raise = Command::RaiseFormat { format: helios_core::format::FORMAT_VERSION };
    apply_all(&db, vec![proposal("f", 1, raise), proposal("j", 2, register("web", "1", "e0"))]);
    // Each failure report's evaluation ends waiting for a reschedule delay.
    let waiting = |id: &str, due: u64| {
        let Command::ApplyPlan { mut plan, mut eval } = plan("web", vec![]) else { unreachable!() };
        plan.eval_id = id.into();
        eval.id = id.into();
        eval.status = helios_core::EvalStatus::Pending;
        eval.wait_until = Some(Timestamp(due));
        Command::ApplyPlan { plan, eval }
    };
    apply_all(&db, vec![proposal("p1", 3, waiting("e1", 5_000))]);
    apply_all(&db, vec![proposal("p2", 4, waiting("e2", 9_000))]);
    {
        let txn = db.begin_read().unwrap();
        let e2 = read::evaluations_for_job(&txn, "web").unwrap().into_iter().find(|e| e.id == "e2").unwrap();
        assert_eq!(e2.wait_until, Some(Timestamp(5_000)), "the newest goes on, as soon as e1 was due");
    }
    apply_all(&db, vec![proposal("p3", 5, waiting("e3", 4_000))]);
    let txn = db.begin_read().unwrap();
    let status = |id: &str| {
        let eval = read::evaluations_for_job(&txn, "web").unwrap().into_iter().find(|e| e.id == id).expect("stored");
        (eval.status, eval.wait_until)
    };
    assert_eq!(status("e1"), (helios_core::EvalStatus::Canceled, None));
    assert_eq!(status("e2"), (helios_core::EvalStatus::Canceled, None));
    assert_eq!(status("e3"), (helios_core::EvalStatus::Pending, Some(Timestamp(4_000))));
    let pending = txn.open_table(crate::store::tables::PENDING_EVALUATIONS).unwrap();
    let ids: Vec<String> = pending.iter().unwrap().map(|row| row.unwrap().0.value().to_string()).collect();
    assert_eq!(ids, ["e0", "e3"], "the job's registration and its one waiting evaluation");
}

#[test]
fn agents_register_services_on_their_running_allocations_and_they_leave_with_them() {
    use helios_core::service::{AllocServices, ServiceRegistration};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    // Registrations are written only once the cluster is at format 8.
    apply_all(&db, vec![proposal("r", 1, Command::RaiseFormat { format: 8 })]);
    for n in ["n1", "n2"] {
        apply_all(&db, vec![proposal(n, 1, Command::RegisterNode { node: node(n, 1000), evals: vec![] })]);
    }
    apply_all(&db, vec![proposal("j", 1, register("a", "x", "ea"))]);
    apply_all(&db, vec![proposal("p1", 2, plan("a", vec![alloc("a1", "a", "a.g[0]", "n1", 300)]))]);
    let web = ServiceRegistration {
        service: "web".into(),
        task: None,
        address: "127.0.0.1".into(),
        port: 8080,
        checks: Vec::new(),
    };
    let services = |node: &str, secret: &str, registrations: Vec<ServiceRegistration>| Command::ReportServices {
        node_id: node.into(),
        secret: secret.into(),
        services: vec![AllocServices { alloc_id: "a1".into(), registrations }],
        now: Timestamp(5),
    };
    let stored = |db: &redb::Database| {
        let txn = db.begin_read().unwrap();
        read::allocation(&txn, "a1").unwrap().unwrap().services
    };
    let got = apply_all(&db, vec![proposal("s1", 5, services("n1", "s", vec![web.clone()]))]);
    assert_eq!(got[0], CommandResponse::AllocationsUpdated);
    assert_eq!(stored(&db), vec![web.clone()]);
    // Another node, or a forged secret, changes nothing.
    let got = apply_all(&db, vec![proposal("s2", 6, services("n2", "s", vec![]))]);
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
    let got = apply_all(&db, vec![proposal("s3", 6, services("n1", "guess", vec![]))]);
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
    assert_eq!(stored(&db), vec![web.clone()]);
    // Finished: its services leave the catalog, and a late registration cannot bring them back.
    apply_all(&db, vec![proposal("u1", 7, report_on_n1(report("a1", AllocClientStatus::Complete)))]);
    assert_eq!(stored(&db), vec![]);
    apply_all(&db, vec![proposal("s4", 8, services("n1", "s", vec![web]))]);
    assert_eq!(stored(&db), vec![]);
}

fn report_on_n1(update: helios_core::AllocUpdate) -> Command {
    Command::ReportAllocations {
        node_id: "n1".into(),
        secret: "s".into(),
        updates: vec![update],
        now: Timestamp(7),
        evals: vec![],
    }
}

/// A rolling service job (one copy) whose task runs `arg`, with `auto_revert`.
fn rolling(name: &str, arg: &str, eval: &str) -> Command {
    let mut job = Job::exec(name, "sleep", vec![arg.to_string()]);
    job.set_type(helios_core::JobType::Service);
    job.task_groups[0].update =
        helios_core::UpdateStrategy { auto_revert: true, ..helios_core::UpdateStrategy::nomad_block_defaults() };
    let eval = Evaluation::new(eval.to_string(), name, 50, EvalTrigger::JobRegister, Timestamp(1));
    Command::RegisterJob { job, eval }
}

fn act(id: &str, action: helios_core::deployment::DeploymentAction, eval: &str) -> Command {
    let eval = Evaluation::new(eval.to_string(), "web", 50, EvalTrigger::DeploymentWatcher, Timestamp(9));
    Command::ActOnDeployment { deployment_id: id.into(), action, now: Timestamp(9), eval }
}

#[test]
fn deployments_start_with_versions_mark_them_stable_revert_and_are_cancelled() {
    use helios_core::deployment::{DeploymentAction, DeploymentStatus};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let deployments = |db: &redb::Database| read::deployments(&db.begin_read().unwrap(), Some("web")).unwrap();
    let versions = |db: &redb::Database| read::job_versions(&db.begin_read().unwrap(), "web").unwrap();
    // Before format 9 no deployment is started: older servers could not apply its commands.
    apply_all(&db, vec![proposal("r8", 1, Command::RaiseFormat { format: 8 })]);
    let mut plain = rolling("web", "1", "e0");
    if let Command::RegisterJob { job, .. } = &mut plain {
        job.task_groups[0].update.auto_revert = false; // (format 8 cannot hold it)
    }
    apply_all(&db, vec![proposal("j0", 1, plain)]);
    assert!(deployments(&db).is_empty());
    apply_all(&db, vec![proposal("r9", 1, Command::RaiseFormat { format: 9 })]);
    apply_all(&db, vec![proposal("j1", 2, rolling("web", "2", "e1"))]);
    let started = deployments(&db);
    assert_eq!(started.len(), 1);
    assert_eq!(
        (started[0].id.as_str(), started[0].job_version, started[0].status),
        ("e1", 1, DeploymentStatus::Running)
    );

    // The watcher's update applies only over the revision it saw.
    let mut next = started[0].clone();
    next.status = DeploymentStatus::Successful;
    let watcher_eval = Evaluation::new("w1".into(), "web", 50, EvalTrigger::DeploymentWatcher, Timestamp(3));
    let update = |d: helios_core::deployment::Deployment, eval: &Evaluation| Command::UpdateDeployment {
        deployment: d,
        eval: eval.clone(),
    };
    let mut stale = next.clone();
    stale.revision += 1;
    let got = apply_all(&db, vec![proposal("w0", 3, update(stale, &watcher_eval))]);
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.kind == RejectionKind::FailedPrecondition));
    let got = apply_all(&db, vec![proposal("w1", 3, update(next, &watcher_eval))]);
    assert!(matches!(&got[0], CommandResponse::DeploymentChanged(c) if c.status == DeploymentStatus::Successful));
    assert_eq!(versions(&db).iter().map(|j| j.stable).collect::<Vec<_>>(), [false, true], "version 1 is stable");
    assert!(read::job(&db.begin_read().unwrap(), "web").unwrap().unwrap().stable);
    let evals = read::evaluations_for_job(&db.begin_read().unwrap(), "web").unwrap();
    assert!(evals.iter().any(|e| e.id == "w1"), "the scheduler is asked to go on");

    // Version 2 fails (an operator says so, after pausing it): version 1's spec comes back as 3.
    apply_all(&db, vec![proposal("j2", 4, rolling("web", "3", "e2"))]);
    let got = apply_all(&db, vec![proposal("a1", 5, act("e2", DeploymentAction::Pause, "x1"))]);
    assert!(matches!(&got[0], CommandResponse::DeploymentChanged(c) if c.status == DeploymentStatus::Paused));
    let got = apply_all(&db, vec![proposal("a2", 6, act("e2", DeploymentAction::Fail, "x2"))]);
    let CommandResponse::DeploymentChanged(changed) = &got[0] else { panic!("{got:?}") };
    assert_eq!((changed.status, changed.reverted_to), (DeploymentStatus::Failed, Some(3)));
    assert_eq!(changed.status_description, "Deployment marked as failed - rolling back to job version 1");
    let all = versions(&db);
    assert_eq!(all.len(), 4);
    assert!(all[3].same_spec(&all[1]) && !all[3].stable, "version 1's spec, not yet stable");
    let now = deployments(&db);
    let statuses: Vec<(u64, DeploymentStatus)> = now.iter().map(|d| (d.job_version, d.status)).collect();
    assert_eq!(
        statuses,
        [(1, DeploymentStatus::Successful), (2, DeploymentStatus::Failed), (3, DeploymentStatus::Running)]
    );
    assert_eq!(now[2].id, "x2", "the revert's registration names it");
    // Over: nothing more can be done to it.
    let got = apply_all(&db, vec![proposal("a3", 7, act("e2", DeploymentAction::Resume, "x3"))]);
    assert!(
        matches!(&got[0], CommandResponse::Rejected(r) if r.message.contains("is failed: it can no longer change"))
    );
    // Manual health is only for groups that ask for it, and for the deployment's own allocations.
    apply_all(&db, vec![proposal("n1", 7, Command::RegisterNode { node: node("n1", 1000), evals: vec![] })]);
    let mine = Allocation { job_version: 3, task_group: "web".into(), ..alloc("w3", "web", "web.web[0]", "n1", 10) };
    apply_all(&db, vec![proposal("pl", 7, plan("web", vec![mine]))]);
    let health = |id: &str| DeploymentAction::SetHealth { healthy: vec![id.into()], unhealthy: vec![] };
    let got = apply_all(&db, vec![proposal("a4", 7, act("x2", health("w3"), "x4"))]);
    assert!(
        matches!(&got[0], CommandResponse::Rejected(r) if r.message.contains("health is set by hand only with health_check = \"manual\"")),
        "{got:?}"
    );
    let got = apply_all(&db, vec![proposal("a5", 7, act("x2", health("nope"), "x5"))]);
    assert!(matches!(&got[0], CommandResponse::Rejected(r) if r.message.contains("is not part of deployment")));

    // A newer version, then a stop, cancel what runs; a purge forgets them all.
    apply_all(&db, vec![proposal("j4", 8, rolling("web", "4", "e4"))]);
    assert_eq!(deployments(&db)[2].status_description, "Cancelled due to newer version of job (4)");
    apply_all(
        &db,
        vec![proposal(
            "s",
            9,
            Command::DeregisterJob {
                job_name: "web".into(),
                purge: false,
                eval: Evaluation::new("es".into(), "web", 50, EvalTrigger::JobDeregister, Timestamp(9)),
                now: Timestamp(9),
            },
        )],
    );
    assert_eq!(deployments(&db)[3].status, DeploymentStatus::Cancelled);
    apply_all(
        &db,
        vec![proposal(
            "p",
            10,
            Command::DeregisterJob {
                job_name: "web".into(),
                purge: true,
                eval: Evaluation::new("ep".into(), "web", 50, EvalTrigger::JobDeregister, Timestamp(10)),
                now: Timestamp(10),
            },
        )],
    );
    assert!(deployments(&db).is_empty());
}
