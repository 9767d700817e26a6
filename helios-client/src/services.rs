//! An allocation's services on its agent: each listed while its task runs (a group's while
//! every task does), each check run on its interval, the registrations (with every check's
//! status) reported to the servers when a status changes, a task restarted when its check stays
//! unhealthy (`check_restart`, once per run of the task), and the registrations removed when a
//! task stops running, when the servers order the allocation stopped (before its tasks are
//! killed, as Nomad deregisters), and when it is done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use helios_core::service::{
    AllocServices, Check, CheckCounter, CheckKind, CheckState, CheckStatus, RestartCounter, Service,
    ServiceRegistration,
};
use helios_core::{TaskDriver, TaskGroup, TaskRunState, TaskState, Timestamp};
use tokio::sync::{mpsc, watch};

use crate::drivers::{Drivers, TaskRun};
use crate::runner::{now, Owner};

pub type ServiceReports = mpsc::UnboundedSender<AllocServices>;

/// What an allocation's services need from its runner.
pub(crate) struct AllocServicesRun {
    pub owner: Owner,
    pub group: TaskGroup,
    pub drivers: Drivers,
    /// The allocation's directory.
    pub dir: std::path::PathBuf,
    /// Its tasks' states; closed when the allocation is done.
    pub states: watch::Receiver<BTreeMap<String, TaskState>>,
    /// The servers' stop order (passed to drivers for script checks).
    pub stop: watch::Receiver<bool>,
    /// Restart requests, per task (`check_restart`).
    pub restarts: BTreeMap<String, mpsc::UnboundedSender<String>>,
    pub reports: ServiceReports,
    /// What an earlier agent registered for the allocation (the servers' copy): a service whose
    /// tasks this agent adopted still running keeps its checks' statuses.
    pub registered: Vec<ServiceRegistration>,
}

/// One check's result, by (service, check) index.
type CheckResult = (usize, usize, CheckStatus, String);

/// A check of the allocation: (service, check) indexes.
type CheckAt = (usize, usize);

/// What the allocation's checks have made of its registrations so far.
struct Book {
    registrations: Vec<ServiceRegistration>,
    /// Which services are listed: a task's while it runs, a group's while every task does (a
    /// service is reachable only then); none once the servers ask for a stop.
    listed: Vec<bool>,
    counters: BTreeMap<CheckAt, CheckCounter>,
    restarters: BTreeMap<CheckAt, RestartCounter>,
    /// Checks whose first result while listed is reported even when it keeps the initial
    /// status, so the catalog says why a check is critical from the start.
    unreported: std::collections::BTreeSet<CheckAt>,
    /// The run of its task (its start time) each check asked to restart: asked once per run.
    restart_asked: BTreeMap<CheckAt, Option<Timestamp>>,
}

impl AllocServicesRun {
    pub async fn run(mut self) {
        let started = now();
        let registrations: Vec<ServiceRegistration> =
            self.group.services.iter().map(|s| self.registration(s, started)).collect();
        let mut book = Book {
            listed: vec![false; registrations.len()],
            registrations,
            counters: BTreeMap::new(),
            restarters: BTreeMap::new(),
            unreported: Default::default(),
            restart_asked: BTreeMap::new(),
        };
        let (mut probes, mut results) = self.start_probes(&mut book);
        let (mut stop, mut stop_seen) = (self.stop.clone(), false);
        loop {
            if self.relist(&mut book) {
                self.report(&book);
            }
            tokio::select! {
                changed = self.states.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                // The servers' stop order: deregistered before the tasks are killed.
                () = crate::runner::stop_requested(&mut stop), if !stop_seen => stop_seen = true,
                Some(result) = results.recv() => self.take(&mut book, result),
            }
        }
        probes.abort_all();
        // The allocation is done: its services leave the catalog.
        book.listed.fill(false);
        self.report(&book);
    }

    /// One probe per check, each sending its results.
    fn start_probes(&self, book: &mut Book) -> (tokio::task::JoinSet<()>, mpsc::UnboundedReceiver<CheckResult>) {
        let (results_tx, results) = mpsc::unbounded_channel::<CheckResult>();
        let mut probes = tokio::task::JoinSet::new();
        for (s, service) in self.group.services.iter().enumerate() {
            for (c, check) in service.checks.iter().enumerate() {
                if let Some(policy) = &check.check_restart {
                    book.restarters.insert((s, c), RestartCounter::new(policy.clone()));
                }
                let probe = Probe {
                    check: check.clone(),
                    address: book.registrations[s].address.clone(),
                    port: self.port_of(check.port.as_ref().or(service.port.as_ref()), service.task.as_deref()),
                    script_task: self.script_task(check),
                    index: (s, c),
                    results: results_tx.clone(),
                };
                probes.spawn(probe.run(self.drivers.clone(), self.owner.clone(), self.dir.clone(), self.stop.clone()));
            }
        }
        (probes, results)
    }

    /// Lists and unlists services as their tasks run or stop; true when that changed anything.
    /// A service listed (again, once its task restarted) starts its checks over, unless an
    /// earlier agent registered them for the run this agent adopted.
    fn relist(&self, book: &mut Book) -> bool {
        let now_listed = self.listed();
        if now_listed == book.listed {
            return false;
        }
        for (s, (was, is)) in book.listed.iter().zip(&now_listed).enumerate() {
            if *was || !*is {
                continue;
            }
            book.registrations[s] = self.registration(&self.group.services[s], now());
            let adopted = self.adopted_registration(s);
            for (c, check) in self.group.services[s].checks.iter().enumerate() {
                match adopted.as_ref().and_then(|r| r.checks.iter().find(|k| k.name == check.name)) {
                    Some(kept) => {
                        book.counters.insert((s, c), CheckCounter::resumed(check, kept.status));
                        book.registrations[s].checks[c] = kept.clone();
                    }
                    None => {
                        book.counters.insert((s, c), CheckCounter::new(check));
                        book.unreported.insert((s, c));
                    }
                }
            }
        }
        book.listed = now_listed;
        true
    }

    /// A check's result: reported when its status changes (or it is the first since listed),
    /// and its task restarted when `check_restart` says so.
    fn take(&self, book: &mut Book, (s, c, result, mut output): CheckResult) {
        if !book.listed[s] {
            return;
        }
        let Some(counter) = book.counters.get_mut(&(s, c)) else { return };
        helios_core::service::cut_output(&mut output);
        let first = book.unreported.remove(&(s, c));
        let state = &mut book.registrations[s].checks[c];
        let changed = counter.observe(result);
        let status = counter.status;
        match changed {
            Some(status) => *state = CheckState { name: state.name.clone(), status, output, since: now() },
            None => state.output = output,
        }
        if changed.is_some() || first {
            self.report(book);
        }
        let Some(restarter) = book.restarters.get_mut(&(s, c)) else { return };
        let task = self.restart_target(s, c);
        let (since_start, run) = self.since_start(&task);
        let asked = book.restart_asked.get(&(s, c)).is_some_and(|asked| *asked == run);
        if restarter.observe(status, since_start) && !asked {
            let check = &self.group.services[s].checks[c].name;
            if let Some(restart) = task.and_then(|t| self.restarts.get(&t)) {
                let _ = restart.send(format!("check {check:?} unhealthy"));
                book.restart_asked.insert((s, c), run);
            }
        }
    }

    /// The registration an earlier agent made for service `s`, when every task it depends on is
    /// a run this agent adopted (not one it started: a new run's checks start over).
    fn adopted_registration(&self, s: usize) -> Option<ServiceRegistration> {
        let service = &self.group.services[s];
        let states = self.states.borrow();
        let adopted = |task: &str| {
            let last_start =
                states.get(task)?.events.iter().rev().find(|e| e.kind == "Started" || e.kind == "Adopted")?;
            Some(last_start.kind == "Adopted")
        };
        let all_adopted = match &service.task {
            Some(task) => adopted(task) == Some(true),
            None => self.group.tasks.iter().all(|t| adopted(&t.name) == Some(true)),
        };
        if !all_adopted {
            return None;
        }
        let registered = self.registered.iter().find(|r| r.service == service.name && r.task == service.task)?;
        let address = self.registration(service, Timestamp(0));
        (registered.address == address.address && registered.port == address.port).then(|| registered.clone())
    }

    /// Which services are listed now (see `Book::listed`).
    fn listed(&self) -> Vec<bool> {
        let states = self.states.borrow();
        let runs = |task: &str| states.get(task).is_some_and(|t| t.state == TaskRunState::Running && !t.failed);
        let stopping = *self.stop.borrow();
        self.group
            .services
            .iter()
            .map(|service| {
                !stopping
                    && match &service.task {
                        Some(task) => runs(task),
                        None => self.group.tasks.iter().all(|t| runs(&t.name)),
                    }
            })
            .collect()
    }

    /// Sends the listed services' registrations (replacing what the servers had).
    fn report(&self, book: &Book) {
        let listed = book.registrations.iter().zip(&book.listed).filter(|(_, listed)| **listed);
        let registrations = listed.map(|(r, _)| r.clone()).collect();
        let _ = self.reports.send(AllocServices { alloc_id: self.owner.alloc_id.clone(), registrations });
    }

    /// The service's registration as it starts: its checks at their initial statuses.
    fn registration(&self, service: &Service, at: Timestamp) -> ServiceRegistration {
        let address = self
            .owner
            .node
            .attributes
            .get(crate::fingerprint::IP_ATTRIBUTE)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into());
        ServiceRegistration {
            service: service.name.clone(),
            task: service.task.clone(),
            address,
            port: self.port_of(service.port.as_ref(), service.task.as_deref()),
            checks: service
                .checks
                .iter()
                .map(|c| CheckState {
                    name: c.name.clone(),
                    status: c.initial_status,
                    output: String::new(),
                    since: at,
                })
                .collect(),
        }
    }

    /// The host port a label (or number) names: the group's own port, else a docker task's
    /// (the service's task's, for a task service) fixed or assigned host port. 0 for none.
    fn port_of(&self, port: Option<&String>, task: Option<&str>) -> u16 {
        let Some(port) = port else { return 0 };
        if let Ok(number) = port.parse::<u16>() {
            return number;
        }
        if let Some(&host) = self.owner.group_ports.get(port) {
            return host;
        }
        let tasks = self.group.tasks.iter().filter(|t| task.is_none_or(|name| t.name == name));
        for t in tasks {
            let TaskDriver::Docker(config) = &t.driver else { continue };
            if let Some(mapping) = config.ports.iter().find(|p| &p.name == port) {
                let assigned = self.owner.dynamic_ports.get(&(t.name.clone(), port.clone())).copied();
                return mapping.host_port.or(assigned).unwrap_or(0);
            }
        }
        0
    }

    /// The task a script check runs in.
    fn script_task(&self, check: &Check) -> Option<helios_core::Task> {
        let CheckKind::Script { task, .. } = &check.kind else { return None };
        let name = task.as_deref()?;
        self.group.tasks.iter().find(|t| t.name == name).cloned()
    }

    /// The task `check_restart` restarts: the script's, the service's, or the group's only one.
    fn restart_target(&self, s: usize, c: usize) -> Option<String> {
        let service = &self.group.services[s];
        match &service.checks[c].kind {
            CheckKind::Script { task: Some(task), .. } => Some(task.clone()),
            _ => service.task.clone().or_else(|| match self.group.tasks.as_slice() {
                [only] => Some(only.name.clone()),
                _ => None,
            }),
        }
    }

    /// How long the task has run since its last start (its grace is counted from then), and
    /// that start (which names the run).
    fn since_start(&self, task: &Option<String>) -> (u64, Option<Timestamp>) {
        let states = self.states.borrow();
        let started = task.as_ref().and_then(|t| states.get(t)).and_then(|s| s.started_at);
        (started.map_or(0, |at| now().0.saturating_sub(at.0)), started)
    }
}

/// One check's loop: a result at once, then one per interval.
struct Probe {
    check: Check,
    address: String,
    port: u16,
    script_task: Option<helios_core::Task>,
    index: (usize, usize),
    results: mpsc::UnboundedSender<CheckResult>,
}

impl Probe {
    async fn run(self, drivers: Drivers, owner: Owner, dir: std::path::PathBuf, stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.check.interval_ms);
        let timeout = Duration::from_millis(self.check.timeout_ms);
        let owner = Arc::new(owner);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (status, output) = match &self.check.kind {
                CheckKind::Http { path, method, headers } => {
                    crate::checks::http(&self.address, self.port, path, method, headers, timeout).await
                }
                CheckKind::Tcp => crate::checks::tcp(&self.address, self.port, timeout).await,
                CheckKind::Grpc { service } => crate::checks::grpc(&self.address, self.port, service, timeout).await,
                CheckKind::Script { command, args, .. } => {
                    let argv: Vec<String> = std::iter::once(command.clone()).chain(args.iter().cloned()).collect();
                    self.script(&drivers, &owner, &dir, &stop, &argv, timeout).await
                }
            };
            if self.results.send((self.index.0, self.index.1, status, output)).is_err() {
                return;
            }
        }
    }

    async fn script(
        &self,
        drivers: &Drivers,
        owner: &Owner,
        dir: &std::path::Path,
        stop: &watch::Receiver<bool>,
        argv: &[String],
        timeout: Duration,
    ) -> (CheckStatus, String) {
        let Some(task) = &self.script_task else {
            return (CheckStatus::Critical, "the script's task is not in the group".into());
        };
        let Some(driver) = drivers.for_task(task) else {
            return (CheckStatus::Critical, format!("this agent has no {} driver", task.driver.name()));
        };
        let run = TaskRun { owner, task, dir: &dir.join(&task.name), stop };
        match driver.run_in_task(run, argv, timeout).await {
            Ok((code, output)) => (crate::checks::script_status(code), format!("exit {code}: {}", output.trim())),
            Err(why) => (CheckStatus::Critical, why),
        }
    }
}
