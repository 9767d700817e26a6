//! `JobService` and `AllocationService`.

use futures::StreamExt;
use helios_api::convert::{alloc_to_pb, eval_to_pb, job_from_pb, job_status_to_pb, job_to_pb, job_type_to_pb};
use helios_api::pb;
use helios_api::pb::allocation_service_server::AllocationService;
use helios_api::pb::job_service_server::JobService;
use helios_core::acl::Capability;
use helios_core::command::{JobDeregistered, JobRegistered, PlanApplied};
use helios_core::page::Order;
use helios_core::reschedule::Followup;
use helios_core::{
    AllocClientStatus, Allocation, Command, EvalStatus, EvalTrigger, Evaluation, Job, JobType, NodeStatus,
};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::blocking::Blocking;
use super::pages;
use helios_core::events::Topic;

use super::errors::{cluster_status, invalid, require_job_name, require_name};
use super::ids::{check_id, the_one};
use super::retries::{self, write_once};
use crate::clock::{new_id, now};
use crate::cluster::Cluster;
use crate::cluster::WriteConditions;
use crate::store::read;
use helios_core::command::Precondition;

pub struct Jobs {
    pub cluster: Cluster,
}

impl Jobs {
    /// Registers the job `build` reads (as submitted now, with an evaluation for it), once per
    /// client request and under its conditions.
    async fn register(
        &self,
        conditions: WriteConditions,
        build: impl std::future::Future<Output = Result<Job, Status>>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let command = async {
            let mut job = build.await?;
            let now = now();
            job.submitted_at = now;
            let eval = Evaluation::new(new_id(), &job.name, job.priority, EvalTrigger::JobRegister, now);
            Ok(Command::RegisterJob { job, eval })
        };
        let (index, JobRegistered { version, changed, eval_id }) =
            write_once(&self.cluster, conditions, command).await?;
        Ok(Response::new(pb::SubmitJobResponse { version, changed, eval_id: eval_id.unwrap_or_default(), index }))
    }

    /// The spec `req` reverts to, checked against the stored versions.
    async fn reverted(&self, req: pb::RevertJobRequest) -> Result<Job, Status> {
        let lookup = req.name.clone();
        let versions = self.cluster.read(move |txn| read::job_versions(txn, &lookup)).await.map_err(cluster_status)?;
        let current = versions.iter().map(|j| j.version).max().ok_or_else(|| job_not_found(&req.name))?;
        if req.enforce_prior_version.is_some_and(|prior| prior != current) {
            let prior = req.enforce_prior_version.unwrap_or_default();
            let why = format!("job {:?} is at version {current}, not {prior} (enforce_prior_version)", req.name);
            return Err(helios_api::errors::status(
                tonic::Code::Aborted,
                helios_api::errors::reason::VERSION_CONFLICT,
                why,
            ));
        }
        if req.version == current {
            let why = format!("version {current} is the current version of job {:?}", req.name);
            return Err(Status::failed_precondition(why));
        }
        let kept: Vec<String> = versions.iter().map(|j| j.version.to_string()).collect();
        let Some(mut job) = versions.into_iter().find(|j| j.version == req.version) else {
            return Err(Status::not_found(format!(
                "job {:?} has no version {} (kept: {})",
                req.name,
                req.version,
                kept.join(", ")
            )));
        };
        // Its spec, submitted again: the state machine numbers the new version.
        job.stopped = false;
        Ok(job)
    }
}

/// A plan counted per task group, for `job plan`. Groups of the new spec come first, in order,
/// then any group the new spec removes.
fn plan_summary(
    index: u64,
    declared: &[(String, Option<u32>)],
    plan: &helios_core::Plan,
    existing: &[Allocation],
    stored: Option<&Job>,
) -> pb::PlanJobResponse {
    use std::collections::BTreeMap;
    let group_of: BTreeMap<&str, &str> = existing.iter().map(|a| (a.id.as_str(), a.task_group.as_str())).collect();
    let mut groups: Vec<pb::GroupPlan> =
        declared.iter().map(|(name, _)| pb::GroupPlan { name: name.clone(), ..Default::default() }).collect();
    fn entry<'g>(groups: &'g mut Vec<pb::GroupPlan>, name: &str) -> &'g mut pb::GroupPlan {
        let at = match groups.iter().position(|g| g.name == name) {
            Some(at) => at,
            None => {
                groups.push(pb::GroupPlan { name: name.to_string(), ..Default::default() });
                groups.len() - 1
            }
        };
        &mut groups[at]
    }
    for placement in &plan.placements {
        let group = entry(&mut groups, &placement.task_group);
        group.place += 1;
        group.placements.push(pb::PlannedPlacement {
            name: placement.name.clone(),
            node_id: placement.node_id.clone(),
            metrics: Some(helios_api::convert::metrics_to_pb(&placement.metrics)),
        });
    }
    for stop in &plan.stops {
        entry(&mut groups, group_of.get(stop.alloc_id.as_str()).copied().unwrap_or("?")).stop += 1;
    }
    for id in &plan.in_place {
        entry(&mut groups, group_of.get(id.as_str()).copied().unwrap_or("?")).in_place += 1;
    }
    let touched: std::collections::BTreeSet<&str> =
        plan.stops.iter().map(|s| s.alloc_id.as_str()).chain(plan.in_place.iter().map(String::as_str)).collect();
    for alloc in existing {
        let wanted = alloc.desired_status == helios_core::AllocDesiredStatus::Run;
        // A batch allocation that completed has done its work: it stays, and is not missing.
        let done =
            wanted && alloc.client_status == AllocClientStatus::Complete && alloc.job_version == plan.job_version;
        let live = wanted && !alloc.is_terminal();
        if (live || done) && !touched.contains(alloc.id.as_str()) {
            entry(&mut groups, &alloc.task_group).unchanged += 1;
        }
    }
    for (group, why) in &plan.failed_placements {
        entry(&mut groups, group).failure = why.clone();
    }
    for (name, count) in declared {
        if let Some(count) = count {
            let g = entry(&mut groups, name);
            g.unplaced = count.saturating_sub(g.unchanged + g.in_place + g.place);
        }
    }
    let changed = stored.is_none_or(|s| s.stopped || s.version != plan.job_version);
    pb::PlanJobResponse {
        exists: stored.is_some(),
        changed,
        current_version: stored.map_or(0, |s| s.version),
        next_version: plan.job_version,
        groups,
        index,
    }
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let mut conditions = retries::conditions("SubmitJob", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        let pb_job = req.job.ok_or_else(|| invalid("job", "must be set"))?;
        let job = job_from_pb(pb_job).map_err(|e| helios_api::errors::invalid_fields("job", &e))?;
        conditions.precondition = match (req.expected_version, req.create_only) {
            (Some(_), true) => return Err(invalid("create_only", "cannot be set with expected_version")),
            (Some(version), false) => Some(Precondition::JobVersion { job: job.name.clone(), version: Some(version) }),
            (None, true) => Some(Precondition::JobVersion { job: job.name.clone(), version: None }),
            (None, false) => None,
        };
        self.register(conditions, async { Ok(job) }).await
    }

    async fn revert_job(
        &self,
        request: Request<pb::RevertJobRequest>,
    ) -> Result<Response<pb::RevertJobResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let mut conditions = retries::conditions("RevertJob", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        require_job_name("name", &req.name)?;
        // Checked when read below, and again where it counts, at apply (once every server can).
        if self.cluster.stored_format() >= helios_core::command::REQUESTS_FORMAT {
            conditions.precondition = req
                .enforce_prior_version
                .map(|prior| Precondition::JobVersion { job: req.name.clone(), version: Some(prior) });
        }
        let submitted = self.register(conditions, self.reverted(req)).await?.into_inner();
        let pb::SubmitJobResponse { version, changed, eval_id, index } = submitted;
        Ok(Response::new(pb::RevertJobResponse { version, changed, eval_id, index }))
    }

    async fn plan_job(&self, request: Request<pb::PlanJobRequest>) -> Result<Response<pb::PlanJobResponse>, Status> {
        authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let pb_job = request.into_inner().job.ok_or_else(|| invalid("job", "must be set"))?;
        let job = job_from_pb(pb_job).map_err(|e| helios_api::errors::invalid_fields("job", &e))?;
        let now = now();
        // Groups as declared, with how many allocations each asks for (a system job's depends
        // on the nodes: not counted).
        let system = job.job_type == JobType::System;
        let declared: Vec<(String, Option<u32>)> =
            job.task_groups.iter().map(|g| (g.name.clone(), (!system).then_some(g.count))).collect();
        let planned = self
            .cluster
            .read(move |txn| Ok((read::applied_index(txn)?, crate::scheduling::dry_run(txn, job, now)?)))
            .await
            .map_err(cluster_status)?;
        let (index, (plan, existing, stored)) = planned;
        Ok(Response::new(plan_summary(index, &declared, &plan, &existing, stored.as_ref())))
    }

    async fn get_job_versions(
        &self,
        request: Request<pb::GetJobVersionsRequest>,
    ) -> Result<Response<pb::GetJobVersionsResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let req = request.into_inner();
        let name = req.name;
        require_job_name("name", &name)?;
        let page = pages::requested(&format!("versions?job={name}"), req.page_size, &req.page_token)?;
        let lookup = name.clone();
        let index = blocking.wait(&self.cluster, &[Topic::Job]).await.map_err(cluster_status)?;
        let versions =
            self.cluster.read_local(move |txn| read::job_versions(txn, &lookup)).await.map_err(cluster_status)?;
        if versions.is_empty() {
            return Err(job_not_found(&name));
        }
        let versions = versions.iter().map(job_to_pb).collect();
        let (versions, next_page_token) =
            page.page(versions, Order::Ascending, |v| format!("{:020}", v.version), helios_api::encoded_len);
        Ok(Response::new(pb::GetJobVersionsResponse { versions, index, next_page_token }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let name = request.into_inner().name;
        require_job_name("name", &name)?;
        let lookup = name.clone();
        let index = blocking.wait(&self.cluster, &[Topic::Job]).await.map_err(cluster_status)?;
        let job = self.cluster.read_local(move |txn| read::job(txn, &lookup)).await.map_err(cluster_status)?;
        let job = job.ok_or_else(|| job_not_found(&name))?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job_to_pb(&job)), index }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ListJobs).await?;
        let blocking = Blocking::of(&request)?;
        let page = pages::requested("jobs", request.get_ref().page_size, &request.get_ref().page_token)?;
        // A job's summary counts its running allocations.
        let index = blocking.wait(&self.cluster, &[Topic::Job, Topic::Allocation]).await.map_err(cluster_status)?;
        let (jobs, allocs) = self
            .cluster
            .read_local(|txn| Ok((read::jobs(txn)?, read::allocations(txn, None, None)?)))
            .await
            .map_err(cluster_status)?;
        let jobs = jobs
            .iter()
            .map(|job| pb::JobSummary {
                name: job.name.clone(),
                r#type: job_type_to_pb(job.job_type) as i32,
                priority: job.priority,
                version: job.version,
                status: job_status_to_pb(job.status) as i32,
                stopped: job.stopped,
                desired: job.desired_allocations(),
                running: count_running(&allocs, &job.name),
                submit_time: Some(helios_api::convert::timestamp_to_pb(job.submitted_at)),
            })
            .collect();
        let (jobs, next_page_token) = page.page(jobs, Order::Ascending, |j| j.name.clone(), helios_api::encoded_len);
        Ok(Response::new(pb::ListJobsResponse { jobs, index, next_page_token }))
    }

    async fn get_job_status(
        &self,
        request: Request<pb::GetJobStatusRequest>,
    ) -> Result<Response<pb::GetJobStatusResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let name = request.into_inner().name;
        require_job_name("name", &name)?;
        let lookup = name.clone();
        // The placement line depends on the nodes, and a rollout's progress on its deployment.
        let index = blocking.wait(&self.cluster, &Topic::ALL).await.map_err(cluster_status)?;
        let (job, allocs, evals, nodes) = self
            .cluster
            .read_local(move |txn| {
                Ok((
                    read::job(txn, &lookup)?,
                    read::allocations(txn, Some(&lookup), None)?,
                    read::evaluations_for_job(txn, &lookup)?,
                    read::nodes(txn)?,
                ))
            })
            .await
            .map_err(cluster_status)?;
        let job = job.ok_or_else(|| job_not_found(&name))?;
        let ready_nodes = nodes.iter().filter(|n| n.status == NodeStatus::Ready).count();
        let placement = describe_placement(&job, &allocs, evals.last(), ready_nodes, nodes.len());
        Ok(Response::new(pb::GetJobStatusResponse {
            job: Some(job_to_pb(&job)),
            allocations: allocs.iter().map(alloc_to_pb).collect(),
            evaluations: evals.iter().map(eval_to_pb).collect(),
            ready_nodes: u32::try_from(ready_nodes).unwrap_or(u32::MAX),
            placement,
            index,
        }))
    }

    async fn stop_job(&self, request: Request<pb::StopJobRequest>) -> Result<Response<pb::StopJobResponse>, Status> {
        let caller = authorize(&self.cluster, &request, Capability::SubmitJob).await?;
        let conditions = retries::conditions("StopJob", caller.as_ref(), request.get_ref())?;
        let req = request.into_inner();
        require_job_name("name", &req.name)?;
        let command = async {
            let now = now();
            // The state machine refuses an unknown job, but a current read spares the log an
            // entry for the common typo.
            let lookup = req.name.clone();
            let job = self.cluster.read(move |txn| read::job(txn, &lookup)).await.map_err(cluster_status)?;
            let job = job.ok_or_else(|| job_not_found(&req.name))?;
            let eval = Evaluation::new(new_id(), &job.name, job.priority, EvalTrigger::JobDeregister, now);
            Ok(Command::DeregisterJob { job_name: req.name.clone(), purge: req.purge, eval, now })
        };
        let (index, JobDeregistered { eval_id }) = write_once(&self.cluster, conditions, command).await?;
        Ok(Response::new(pb::StopJobResponse { eval_id, index }))
    }
}

fn job_not_found(name: &str) -> Status {
    Status::not_found(format!("job {name:?} not found"))
}

fn count_running(allocs: &[Allocation], job_name: &str) -> u64 {
    let running = allocs.iter().filter(|a| a.job_name == job_name && a.client_status == AllocClientStatus::Running);
    u64::try_from(running.count()).unwrap_or(u64::MAX)
}

/// One line for `job status`: where the job stands and, if it is not running, why.
fn describe_placement(
    job: &Job,
    allocs: &[Allocation],
    latest_eval: Option<&Evaluation>,
    ready_nodes: usize,
    known_nodes: usize,
) -> String {
    if job.stopped {
        return "stopped".to_string();
    }
    // A system job wants one allocation per ready node.
    let desired = if job.job_type == JobType::System { ready_nodes as u64 } else { job.desired_allocations() };
    let current = |a: &&Allocation| a.job_version == job.version;
    let finished =
        allocs.iter().filter(current).filter(|a| a.client_status == AllocClientStatus::Complete).count() as u64;
    if job.job_type == JobType::Batch && desired > 0 && finished >= desired {
        return format!("finished: all {desired} allocations completed");
    }
    // A batch allocation that completed fills its slot for good.
    let batch_done = if job.job_type == JobType::Batch { finished } else { 0 };
    let placed = allocs.iter().filter(current).filter(|a| !a.is_terminal()).count() as u64 + batch_done;
    let running = count_running(allocs, &job.name);
    let running_current = allocs
        .iter()
        .filter(current)
        .filter(|a| a.job_name == job.name && a.client_status == AllocClientStatus::Running)
        .count() as u64;
    if desired > 0 && running_current >= desired {
        return format!("all {desired} allocations running");
    }
    if desired > 0 && running >= desired {
        // Older versions still serve: a rolling update, going on or held (the evaluation says why).
        let older = allocs
            .iter()
            .filter(|a| a.job_version != job.version && a.desired_status == helios_core::AllocDesiredStatus::Run)
            .filter(|a| a.job_name == job.name && a.client_status == AllocClientStatus::Running)
            .count();
        let held = latest_eval.map(|e| e.failed_placements.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let why = if held.is_empty() { String::new() } else { format!("; {}", held.join("; ")) };
        return format!(
            "rolling update to version {}: {running_current} of {desired} running, {older} on older versions{why}",
            job.version
        );
    }
    if placed < desired || known_nodes == 0 {
        let why = match (ready_nodes, known_nodes, latest_eval) {
            (_, 0, _) => "no client nodes have registered".to_string(),
            (0, n, _) => format!("none of the {n} client nodes is ready"),
            (_, _, Some(eval)) if eval.status == EvalStatus::Pending => {
                let id: Vec<char> = eval.id.chars().collect();
                let short: String = id[id.len().saturating_sub(8)..].iter().collect();
                match eval.wait_until {
                    // Its description says until when and why.
                    Some(_) => format!("evaluation {short}: {}", eval.status_description),
                    None => format!("evaluation {short} is pending"),
                }
            }
            (_, _, Some(eval)) if !eval.failed_placements.is_empty() => {
                let reasons: Vec<String> =
                    eval.failed_placements.iter().map(|(group, reason)| format!("group {group}: {reason}")).collect();
                format!("{placed} of {desired} allocations placed; {}", reasons.join("; "))
            }
            _ => format!("{placed} of {desired} allocations placed"),
        };
        return format!("waiting for placement: {why}");
    }
    format!("{placed} of {desired} allocations placed, {running} running")
}

pub struct Allocations {
    pub cluster: Cluster,
}

#[tonic::async_trait]
impl AllocationService for Allocations {
    type AllocLogsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AllocLogsResponse, Status>> + Send>>;

    /// Relays from the agent that runs the allocation (its `--client-rpc-addr`).
    async fn alloc_logs(
        &self,
        request: Request<pb::AllocLogsRequest>,
    ) -> Result<Response<Self::AllocLogsStream>, Status> {
        authorize(&self.cluster, &request, Capability::ReadLogs).await?;
        let req = request.into_inner();
        check_id("id", &req.id)?;
        if !req.task.is_empty() {
            require_name("task", &req.task)?;
        }
        let alloc = find_allocation(&self.cluster, "id", req.id.clone()).await?;
        let node_id = alloc.node_id.clone();
        let node = self.cluster.read(move |txn| read::node(txn, &node_id)).await.map_err(cluster_status)?;
        let node = node.ok_or_else(|| Status::unavailable(format!("node {} is gone", alloc.node_id)))?;
        // With TLS, the agent must show a client certificate of the cluster's CA.
        let endpoint = (self.cluster.channels)
            .endpoint(&node.rpc_addr, helios_api::tls::Role::Client)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(3));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach node {} at {}: {e}", node.id, node.rpc_addr)))?;
        let mut agent = pb::client_service_client::ClientServiceClient::new(channel);
        // The agent answers servers only: proven with the node's secret, which servers hold.
        let time_ms = crate::clock::now().as_millis();
        let proof = helios_api::node_proof::prove(&node.secret_id, &alloc.id, &req.task, time_ms);
        let request = pb::TaskLogsRequest {
            alloc_id: alloc.id,
            task: req.task,
            stderr: req.stderr,
            tail: req.tail,
            follow: req.follow,
            proof_time_ms: time_ms,
            proof,
        };
        let stream = agent.task_logs(request).await?.into_inner();
        let relayed = stream.map(|chunk| chunk.map(|pb::LogChunk { data }| pb::AllocLogsResponse { data }));
        Ok(Response::new(Box::pin(relayed)))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let req = request.into_inner();
        if let Some(job) = &req.job_name {
            require_job_name("job_name", job)?;
        }
        let scope = format!(
            "allocations?job={}&node={}",
            req.job_name.as_deref().unwrap_or_default(),
            req.node_id.as_deref().unwrap_or_default()
        );
        let page = pages::requested(&scope, req.page_size, &req.page_token)?;
        let index = blocking.wait(&self.cluster, &[Topic::Allocation]).await.map_err(cluster_status)?;
        let allocs = self
            .cluster
            .read_local(move |txn| read::allocations(txn, req.job_name.as_deref(), req.node_id.as_deref()))
            .await
            .map_err(cluster_status)?;
        let allocations = allocs.iter().map(alloc_to_pb).collect();
        let (allocations, next_page_token) =
            page.page(allocations, Order::Ascending, |a| a.id.clone(), helios_api::encoded_len);
        Ok(Response::new(pb::ListAllocationsResponse { allocations, index, next_page_token }))
    }

    async fn get_allocation(
        &self,
        request: Request<pb::GetAllocationRequest>,
    ) -> Result<Response<pb::GetAllocationResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        // What becomes of a failed one depends on its job.
        let index = blocking.wait(&self.cluster, &[Topic::Allocation, Topic::Job]).await.map_err(cluster_status)?;
        // (`wait` caught up with the leader: these reads need not again.)
        let alloc = find_allocation_local(&self.cluster, "id", request.into_inner().id).await?;
        let mut out = alloc_to_pb(&alloc);
        if alloc.client_status == helios_core::AllocClientStatus::Failed && alloc.next_allocation.is_none() {
            // What becomes of it (unless a reschedule already replaced it): read with its job
            // and the job's other allocations.
            let name = alloc.job_name.clone();
            let (job, siblings) = self
                .cluster
                .read_local(move |txn| Ok((read::job(txn, &name)?, read::allocations(txn, Some(&name), None)?)))
                .await
                .map_err(cluster_status)?;
            let delays = self.cluster.stored_format() >= crate::scheduling::DELAYED_EVALUATIONS_FORMAT;
            match helios_core::reschedule::followup(&alloc, job.as_ref(), &siblings, delays, now()) {
                Some(Followup::ReplacedBy(id)) => out.next_allocation = Some(id),
                Some(Followup::At(at)) => out.reschedule_time = Some(helios_api::convert::timestamp_to_pb(at)),
                Some(Followup::Never(why)) => out.not_rescheduled = why,
                None => {}
            }
        }
        Ok(Response::new(pb::GetAllocationResponse { allocation: Some(out), index }))
    }

    async fn stop_allocation(
        &self,
        request: Request<pb::StopAllocationRequest>,
    ) -> Result<Response<pb::StopAllocationResponse>, Status> {
        authorize(&self.cluster, &request, Capability::AllocLifecycle).await?;
        let alloc = self.find(request.into_inner().id).await?;
        let (alloc_id, eval_id) = (alloc.id.clone(), new_id());
        let command = self.stop_command(alloc, eval_id.clone()).await?;
        let _: (u64, PlanApplied) = self.cluster.propose(command).await.map_err(cluster_status)?;
        Ok(Response::new(pb::StopAllocationResponse { alloc_id, eval_id }))
    }
}

impl Allocations {
    /// The plan of one stop that `alloc stop` commits, with evaluation `eval_id` of the job.
    async fn stop_command(&self, alloc: Allocation, eval_id: String) -> Result<Command, Status> {
        if alloc.desired_status != helios_core::AllocDesiredStatus::Run || alloc.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "allocation {} is already {} (desired {})",
                alloc.id,
                alloc.client_status.as_str(),
                alloc.desired_status.as_str()
            )));
        }
        // A plan of one stop, committed with a pending evaluation of the job: the scheduler then
        // places the replacement, as for any allocation that ends while its job wants it.
        let now = now();
        let priority = job_priority(&self.cluster, &alloc.job_name).await?;
        let eval = Evaluation::new(eval_id, &alloc.job_name, priority, EvalTrigger::AllocStop, now);
        let plan = helios_core::Plan {
            eval_id: eval.id.clone(),
            job_name: alloc.job_name.clone(),
            planned_at_index: 0,
            placements: Vec::new(),
            stops: vec![helios_core::plan::AllocStop {
                alloc_id: alloc.id.clone(),
                desired_status: helios_core::AllocDesiredStatus::Stop,
                client_status: None,
                description: "stopped with alloc stop; replaced".to_string(),
            }],
            in_place: Vec::new(),
            job_version: alloc.job_version,
            failed_placements: Default::default(),
            revisit_at: None,
            revisit_reason: String::new(),
            final_failures: Default::default(),
        };
        Ok(Command::ApplyPlan { plan, eval })
    }
}

impl Allocations {
    /// The allocation a user means by `id`: a full id, or its first or last characters.
    async fn find(&self, id: String) -> Result<Allocation, Status> {
        find_allocation(&self.cluster, "id", id).await
    }
}

/// The allocation a user means by `id` (request field `field`): a full id, or its first or
/// last characters.
pub async fn find_allocation(cluster: &Cluster, field: &str, id: String) -> Result<Allocation, Status> {
    check_id(field, &id)?;
    cluster.linearize().await.map_err(cluster_status)?;
    find_allocation_local(cluster, field, id).await
}

/// As `find_allocation`, in this server's tables as they are (a caller that has caught up with
/// the leader already, as a blocking read has).
async fn find_allocation_local(cluster: &Cluster, field: &str, id: String) -> Result<Allocation, Status> {
    check_id(field, &id)?;
    let prefix = id.clone();
    let matches =
        cluster.read_local(move |txn| read::allocations_by_prefix(txn, &prefix)).await.map_err(cluster_status)?;
    the_one("allocation", field, &id, matches)
}

/// The priority of job `name` (the default when it is gone): what its evaluations get.
pub async fn job_priority(cluster: &Cluster, name: &str) -> Result<u32, Status> {
    let lookup = name.to_string();
    let job = cluster.read(move |txn| read::job(txn, &lookup)).await.map_err(cluster_status)?;
    Ok(job.map_or(helios_core::job::DEFAULT_PRIORITY, |j| j.priority))
}
