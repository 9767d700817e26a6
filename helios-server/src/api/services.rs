//! `ServiceCatalog`: the services of running allocations, as their agents registered them
//! (`helios_core::service`), with the tags and meta of the job version each runs.

use super::blocking::Blocking;
use super::pages;
use helios_core::events::Topic;
use helios_core::page::Order;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use helios_api::convert::check_state_to_pb;
use helios_api::pb;
use helios_api::pb::service_catalog_server::ServiceCatalog;
use helios_core::acl::Capability;
use helios_core::service::Service;
use helios_core::{AllocClientStatus, AllocDesiredStatus, Allocation, Job};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::errors::{cluster_status, invalid};
use crate::cluster::Cluster;
use crate::store::read;

/// Instances live in their allocations, and an address in its node.
const SERVICE_TOPICS: &[Topic] = &[Topic::Allocation, Topic::Node];

pub struct Catalog {
    pub cluster: Cluster,
}

/// Every registered instance of a running allocation, named `name` if given.
fn instances(txn: &redb::ReadTransaction, name: Option<&str>) -> read::Result<Vec<pb::ServiceInstance>> {
    let mut jobs: HashMap<(String, u64), Option<Job>> = HashMap::new();
    let mut out = Vec::new();
    let running = read::allocations(txn, None, None)?
        .into_iter()
        // One the servers ordered stopped leaves the catalog at once, before its agent kills it.
        .filter(|a: &Allocation| {
            a.client_status == AllocClientStatus::Running
                && a.desired_status == AllocDesiredStatus::Run
                && !a.services.is_empty()
        });
    for alloc in running {
        let key = (alloc.job_name.clone(), alloc.job_version);
        if !jobs.contains_key(&key) {
            jobs.insert(key.clone(), read::job_version(txn, &alloc.job_name, alloc.job_version)?);
        }
        let group = jobs[&key].as_ref().and_then(|j| j.task_groups.iter().find(|g| g.name == alloc.task_group));
        for registration in alloc.services.iter().filter(|r| name.is_none_or(|n| r.service == n)) {
            let declared: Option<&Service> = group.and_then(|g| {
                g.services.iter().find(|s| s.name == registration.service && s.task == registration.task)
            });
            out.push(pb::ServiceInstance {
                service: registration.service.clone(),
                alloc_id: alloc.id.clone(),
                job_name: alloc.job_name.clone(),
                task_group: alloc.task_group.clone(),
                task: registration.task.clone().unwrap_or_default(),
                node_id: alloc.node_id.clone(),
                address: registration.address.clone(),
                port: u32::from(registration.port),
                tags: declared.map(|s| s.tags.clone()).unwrap_or_default(),
                meta: declared.map(|s| s.meta.clone().into_iter().collect()).unwrap_or_default(),
                healthy: registration.is_healthy(),
                checks: registration.checks.iter().map(check_state_to_pb).collect(),
            });
        }
    }
    out.sort_by(|a, b| (&a.service, &a.job_name, &a.alloc_id).cmp(&(&b.service, &b.job_name, &b.alloc_id)));
    Ok(out)
}

#[tonic::async_trait]
impl ServiceCatalog for Catalog {
    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let page = pages::requested("services", request.get_ref().page_size, &request.get_ref().page_token)?;
        let index = blocking.wait(&self.cluster, SERVICE_TOPICS).await.map_err(cluster_status)?;
        let all = self.cluster.read_local(|txn| instances(txn, None)).await.map_err(cluster_status)?;
        let mut by_name: BTreeMap<String, (BTreeSet<String>, u32, u32, BTreeSet<String>)> = BTreeMap::new();
        for instance in all {
            let entry = by_name.entry(instance.service).or_default();
            entry.0.extend(instance.tags);
            entry.1 += 1;
            entry.2 += u32::from(instance.healthy);
            entry.3.insert(instance.job_name);
        }
        let services = by_name
            .into_iter()
            .map(|(name, (tags, instances, healthy, jobs))| pb::ServiceSummary {
                name,
                tags: tags.into_iter().collect(),
                instances,
                healthy,
                jobs: jobs.into_iter().collect(),
            })
            .collect();
        let (services, next_page_token) =
            page.page(services, Order::Ascending, |s| s.name.clone(), helios_api::encoded_len);
        Ok(Response::new(pb::ListServicesResponse { services, index, next_page_token }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        authorize(&self.cluster, &request, Capability::ReadJob).await?;
        let blocking = Blocking::of(&request)?;
        let req = request.into_inner();
        if req.name.is_empty() || req.name.len() > 63 {
            return Err(invalid("name", "must be a service name, 1 to 63 characters"));
        }
        let lookup = req.name.clone();
        let index = blocking.wait(&self.cluster, SERVICE_TOPICS).await.map_err(cluster_status)?;
        let mut found =
            self.cluster.read_local(move |txn| instances(txn, Some(&lookup))).await.map_err(cluster_status)?;
        if found.is_empty() {
            return Err(Status::not_found(format!("no running allocation registers service {:?}", req.name)));
        }
        if req.healthy_only {
            found.retain(|i| i.healthy);
        }
        Ok(Response::new(pb::GetServiceResponse { instances: found, index }))
    }
}
