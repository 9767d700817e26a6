//! Watching a submitted job until it has settled: `job run` without `--detach`.
//!
//! It follows the submission's evaluation, each placement and each task's state, printing one
//! line per change, until every allocation of the new version runs (service, system) or has
//! finished (batch). A placement that fails, or an allocation that fails, ends it with an error
//! and the reason. A version rolled out under a deployment is watched until the deployment ends
//! instead (Nomad's table of each group's desired, placed, healthy and unhealthy allocations is
//! printed as it changes): successful, or waiting for promotion, is success; failed (perhaps
//! reverted) or cancelled is an error. Ctrl-C stops the watching, never the job. On a terminal a
//! spinner line shows the progress between changes; piped, only the lines are printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::connect::Conn;
use anyhow::{anyhow, bail, Result};
use helios_api::convert::{time_of, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::deployment_service_client::DeploymentServiceClient;
use helios_api::pb::{AllocationClientStatus, AllocationDesiredStatus, EvaluationStatus, TaskRunState};

use crate::connect::status_error;

/// How long a read of the job's state waits for it to change (a blocking read: it answers at
/// once when it does): briefly on a terminal, where the spinner turns between changes.
const WAIT_ON_TERMINAL: Duration = Duration::from_millis(500);
const WAIT_PIPED: Duration = Duration::from_secs(30);
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// What the watched job has become.
enum Settled {
    Running(usize),
    Finished(usize),
}

pub async fn watch(
    conn: Conn,
    name: &str,
    version: u64,
    eval_id: &str,
    job: &helios_core::Job,
    expected: Option<u64>,
) -> Result<()> {
    let mut jobs = super::client(conn.clone());
    let mut deployments = crate::deployment::client(conn);
    let deployment = deployment_of(&mut deployments, job, version).await?;
    let batch = job.job_type == helios_core::JobType::Batch;
    let terminal = std::io::stderr().is_terminal();
    let wait = helios_api::convert::duration_to_pb(if terminal { WAIT_ON_TERMINAL } else { WAIT_PIPED });
    let mut progress = Progress::new(terminal);
    let mut seen = Seen::default();
    // The index of the state last read: each read waits for a change after it.
    let mut index = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let request = pb::GetJobStatusRequest { name: name.to_string(), min_index: index, wait: Some(wait) };
        let status = tokio::select! {
            status = jobs.get_job_status(request) => status.map_err(status_error)?.into_inner(),
            _ = &mut interrupted => {
                progress.clear();
                println!("==> Stopped watching; the job keeps running. Follow it with: helios-cli job status {name}");
                return Ok(());
            }
        };
        let lines = seen.changes(&status, version, eval_id);
        if !lines.is_empty() {
            progress.clear();
            for line in lines {
                println!("{line}");
            }
        }
        if let Some(id) = &deployment {
            let request = pb::GetDeploymentRequest { id: id.clone(), ..Default::default() };
            let reply = deployments.get_deployment(request).await.map_err(status_error)?.into_inner();
            let Some(d) = reply.deployment else { bail!("the server sent no deployment") };
            let shown = seen.deployment(&d);
            if !shown.is_empty() {
                progress.clear();
                println!("{shown}");
            }
            if let Some(result) = deployment_ended(&d, &status, eval_id) {
                progress.clear();
                return result;
            }
            progress.show(&summary(&status, version));
            index = Some(status.index);
            continue;
        }
        match settled(&status, version, eval_id, batch, expected) {
            Ok(Some(Settled::Running(n))) => {
                progress.clear();
                println!("==> All {n} allocation(s) of version {version} are running");
                return Ok(());
            }
            Ok(Some(Settled::Finished(n))) => {
                progress.clear();
                println!("==> All {n} allocation(s) of version {version} completed");
                return Ok(());
            }
            Ok(None) => progress.show(&summary(&status, version)),
            Err(e) => {
                progress.clear();
                return Err(e);
            }
        }
        index = Some(status.index);
    }
}

/// The id of the deployment that rolls out `version` of `job`, if its groups roll (the servers
/// create it with the version, so it is there as soon as the submission is answered).
async fn deployment_of(
    deployments: &mut DeploymentServiceClient<Conn>,
    job: &helios_core::Job,
    version: u64,
) -> Result<Option<String>> {
    let rolls =
        job.job_type == helios_core::JobType::Service && job.task_groups.iter().any(|g| g.update.has_deployment());
    if !rolls {
        return Ok(None);
    }
    let request = pb::ListDeploymentsRequest { job_name: Some(job.name.clone()), ..Default::default() };
    let list = every_page(request, |r| {
        let mut deployments = deployments.clone();
        async move { deployments.list_deployments(r).await }
    })
    .await
    .map_err(status_error)?;
    Ok(list.into_iter().find(|d| d.job_version == version).map(|d| d.id))
}

/// How watching a deployment ends, once it does: `Ok` when it succeeded or waits for an
/// operator to promote its canaries, an error when it failed or was cancelled (or the
/// submission's evaluation is blocked: nothing more can be placed until the cluster changes).
fn deployment_ended(d: &pb::Deployment, status: &pb::GetJobStatusResponse, eval_id: &str) -> Option<Result<()>> {
    let short = crate::alloc::short(&d.id);
    let description = &d.status_description;
    match pb::DeploymentStatus::try_from(d.status) {
        // (The deployment's last table, just printed, says so.)
        Ok(pb::DeploymentStatus::Successful) => return Some(Ok(())),
        Ok(pb::DeploymentStatus::Failed) => {
            return Some(Err(anyhow!("deployment {short} failed: {description}")));
        }
        Ok(pb::DeploymentStatus::Cancelled) => {
            return Some(Err(anyhow!("deployment {short} cancelled: {description}")));
        }
        _ => {}
    }
    if description == helios_core::deployment::DESCRIPTION_NEEDS_PROMOTION {
        println!("==> Deployment {short} waits for promotion: helios-cli deployment promote {short}");
        return Some(Ok(()));
    }
    let blocked = status.evaluations.iter().find(|e| e.id == eval_id && e.status() == EvaluationStatus::Blocked)?;
    let reasons: Vec<String> = blocked.failed_placements.iter().map(|(g, why)| format!("group {g}: {why}")).collect();
    Some(Err(anyhow!(
        "placement failed: {} (deployment {short} goes on when the cluster can take them, until its progress deadline)",
        reasons.join("; ")
    )))
}

/// The allocations of `version` that the servers want to run (or ran to completion).
fn of_version(status: &pb::GetJobStatusResponse, version: u64) -> Vec<&pb::Allocation> {
    status
        .allocations
        .iter()
        .filter(|a| a.job_version == version && a.desired_status() == AllocationDesiredStatus::Run)
        .collect()
}

/// Whether the job has settled, and how; an error when it cannot get there.
fn settled(
    status: &pb::GetJobStatusResponse,
    version: u64,
    eval_id: &str,
    batch: bool,
    expected: Option<u64>,
) -> Result<Option<Settled>> {
    if let Some(job) = status.job.as_ref().filter(|j| j.version != version || j.stopped) {
        let what = if job.stopped {
            "the job was stopped".to_string()
        } else {
            format!("version {} was submitted", job.version)
        };
        bail!("{what} meanwhile; stopped watching version {version}");
    }
    let eval = status.evaluations.iter().find(|e| e.id == eval_id);
    // Pending with reasons: waiting (a rollout's next wave, a reschedule) with something it could
    // not place or that holds the rollout; said now rather than watched for ever.
    let stuck = |e: &&pb::Evaluation| {
        matches!(e.status(), EvaluationStatus::Blocked | EvaluationStatus::Failed)
            || (e.status() == EvaluationStatus::Pending && !e.failed_placements.is_empty())
    };
    if let Some(eval) = eval.filter(stuck) {
        let reasons: Vec<String> = eval.failed_placements.iter().map(|(g, why)| format!("group {g}: {why}")).collect();
        let reasons = if reasons.is_empty() { eval.status_description.clone() } else { reasons.join("; ") };
        bail!(
            "placement failed: {reasons} (the job stays submitted and is placed when the cluster can take it; \
             see helios-cli job status {})",
            eval.job_name
        );
    }
    let allocs = of_version(status, version);
    if let Some(failed) = allocs.iter().find(|a| a.client_status() == AllocationClientStatus::Failed) {
        bail!("allocation {} failed: {}", crate::alloc::short(&failed.id), why_failed(failed));
    }
    // A rolling update or a reschedule delay keeps evaluations waiting, and a later one may
    // take over from this one (it is then canceled): every expected allocation running settles
    // it too.
    let all_running = expected.is_some_and(|n| {
        n > 0 && allocs.len() as u64 == n && allocs.iter().all(|a| a.client_status() == AllocationClientStatus::Running)
    });
    let evaluated = eval.is_some_and(|e| e.status() == EvaluationStatus::Complete) || all_running;
    if !evaluated {
        return Ok(None);
    }
    // Evaluated: everything it could place is placed. A system job runs where it can, and
    // nowhere is a failure too; a known number (a count, or the hosts a job is pinned to) must
    // be met.
    let placed = allocs.len() as u64;
    match expected {
        Some(0) => return Ok(Some(Settled::Running(0))),
        Some(n) if placed < n => {
            bail!(
                "only {placed} of {n} allocation(s) could be placed; see helios-cli job status {}",
                status_name(status)
            )
        }
        None if placed == 0 => {
            bail!("no node can run it; see helios-cli job status {} and helios-cli node list", status_name(status))
        }
        _ => {}
    }
    if batch {
        let done = allocs.iter().all(|a| a.client_status() == AllocationClientStatus::Complete);
        return Ok(done.then_some(Settled::Finished(allocs.len())));
    }
    let running = allocs.iter().all(|a| a.client_status() == AllocationClientStatus::Running);
    Ok(running.then_some(Settled::Running(allocs.len())))
}

fn status_name(status: &pb::GetJobStatusResponse) -> String {
    status.job.as_ref().map_or_else(String::new, |j| j.name.clone())
}

/// Why the failing task ended, as `task T: Kind: message`: its last event that says how it
/// ended (an exit, a driver failure), not the restart bookkeeping after it.
fn why_failed(alloc: &pb::Allocation) -> String {
    const ENDINGS: [&str; 4] = ["Terminated", "OOM Killed", "Driver Failure", "Setup Failure"];
    let failed = alloc.task_states.iter().find(|(_, s)| s.failed).or_else(|| alloc.task_states.iter().next());
    let ending = failed.and_then(|(task, s)| {
        let cause = s.events.iter().rev().find(|e| ENDINGS.contains(&e.kind().label())).or(s.events.last());
        cause.map(|e| (task, e))
    });
    match ending {
        Some((task, event)) => format!("task {task}: {}: {}", event.kind().label(), event.message),
        None => alloc.client_description.clone(),
    }
}

/// `2 of 3 running` for the spinner line.
fn summary(status: &pb::GetJobStatusResponse, version: u64) -> String {
    let allocs = of_version(status, version);
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &allocs {
        *by_status.entry(a.client_status().label()).or_default() += 1;
    }
    if allocs.is_empty() {
        return "waiting for placement".to_string();
    }
    let parts: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} allocation(s): {}", allocs.len(), parts.join(", "))
}

/// What has been reported already, so each change prints once.
#[derive(Default)]
struct Seen {
    eval_status: Option<String>,
    /// Allocation id -> task -> its last state printed.
    tasks: BTreeMap<String, BTreeMap<String, String>>,
    placed: BTreeMap<String, String>,
    /// The deployment's description and table as last printed.
    deployment: String,
}

impl Seen {
    /// The deployment's description and table when they changed since last printed.
    fn deployment(&mut self, d: &pb::Deployment) -> String {
        let shown = format!(
            "==> Deployment {} {}: {}\n{}",
            crate::alloc::short(&d.id),
            crate::deployment::status_name(d.status),
            d.status_description,
            crate::deployment::groups_table(d).render(false).trim_end()
        );
        if shown == self.deployment {
            return String::new();
        }
        self.deployment = shown.clone();
        shown
    }

    fn changes(&mut self, status: &pb::GetJobStatusResponse, version: u64, eval_id: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(eval) = status.evaluations.iter().find(|e| e.id == eval_id) {
            let status = eval.status().label();
            if self.eval_status.as_deref() != Some(status) {
                self.eval_status = Some(status.to_string());
                lines.push(format!("==> Evaluation {} {status}", crate::alloc::short(eval_id)));
            }
        }
        // Allocations older than the submission were kept and moved to it (only counts changed).
        let submitted = status.job.as_ref().map_or(0, |j| time_of(j.submit_time.as_ref()).0);
        for alloc in of_version(status, version) {
            let short = crate::alloc::short(&alloc.id);
            if !self.placed.contains_key(&alloc.id) {
                self.placed.insert(alloc.id.clone(), alloc.node_id.clone());
                let how = if time_of(alloc.create_time.as_ref()).0 < submitted {
                    "kept (updated in place)"
                } else {
                    "placed"
                };
                lines.push(format!("    Allocation {short} ({}) {how} on node {}", alloc.name, alloc.node_id));
            }
            let printed = self.tasks.entry(alloc.id.clone()).or_default();
            for (task, state) in &alloc.task_states {
                let now = match state.events.last() {
                    Some(e) if state.state() == TaskRunState::Dead => {
                        format!("{} ({}: {})", state.state().label(), e.kind().label(), e.message)
                    }
                    _ => state.state().label().to_string(),
                };
                if printed.get(task) != Some(&now) {
                    lines.push(format!("    Allocation {short}: task {task} {now}"));
                    printed.insert(task.clone(), now);
                }
            }
        }
        lines
    }
}

/// The spinner line on a terminal; nothing when piped.
struct Progress {
    terminal: bool,
    frame: usize,
    shown: bool,
}

impl Progress {
    fn new(terminal: bool) -> Progress {
        Progress { terminal, frame: 0, shown: false }
    }

    fn show(&mut self, what: &str) {
        if !self.terminal {
            return;
        }
        self.frame = (self.frame + 1) % SPINNER.len();
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K{} {what}", SPINNER[self.frame]);
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}
