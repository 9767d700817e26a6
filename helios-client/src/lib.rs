//! The Helios client agent: one per machine. It registers the machine as a node with the
//! servers, keeps it alive with heartbeats (failing over between `--server-addr`s), and serves
//! its own gRPC endpoint (`--client-rpc-addr`).
//!
//! It watches the allocations assigned to its node and runs them (`runner`: the exec driver,
//! rotated log files, stop with SIGTERM then SIGKILL), reporting their state in batches. Serving
//! task logs over gRPC, restart policies and the docker driver come next.

mod adoption;
mod cgroups;
mod checks;
pub mod drivers;
mod fingerprint;
mod identity;
mod log_service;
mod logs;
pub mod metrics;
mod runner;
pub mod sandbox;
mod servers;
mod services;
mod supervisor;
mod task_dir;
mod task_env;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use helios_api::pb;
use tokio::net::TcpListener;

pub use servers::Servers;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This machine's node id (unique among agents).
    pub node_id: String,
    /// Server URLs, tried in order.
    pub servers: Vec<String>,
    /// The agent's own gRPC address, advertised to the servers.
    pub rpc_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub meta: BTreeMap<String, String>,
    /// Override the fingerprinted capacity.
    pub cpu_mhz: Option<u32>,
    pub memory_mb: Option<u32>,
    /// The Docker engine's address (`unix:///path`, `tcp://host:port`); None: `DOCKER_HOST`, or
    /// the local default socket.
    pub docker_endpoint: Option<String>,
    /// Mutual TLS to the servers and on the agent's own service (a `client` certificate).
    pub tls: Option<helios_api::tls::Tls>,
    /// Serve beyond loopback without TLS (`--insecure`).
    pub insecure: bool,
    /// A token granting `node:write`, for servers with ACLs and no TLS (`--node-token`).
    pub node_token: Option<String>,
    /// Asks the agent to read its TLS certificate files again (`main.rs` does on SIGHUP).
    pub reload: helios_api::tls::Reload,
    /// Which drivers beyond exec the agent offers, and to which users.
    pub drivers: drivers::Options,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --node-id {0:?}: {1}")]
    NodeId(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "--client-rpc-addr {0} can be reached from other machines, and this agent has no TLS: anyone \
         could read its tasks' logs. Give it --tls-ca, --tls-cert and --tls-key, listen on \
         127.0.0.1, or pass --insecure to accept that"
    )]
    PlaintextBeyondLoopback(SocketAddr),
    #[error("cannot keep the agent's identity in {path}: {source}")]
    Identity { path: PathBuf, source: std::io::Error },
    #[error("cannot lock the data directory with {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("another agent of node {node_id:?} is running on the data directory {dir} (it holds helios-client-{node_id}.lock there)")]
    DataDirInUse { dir: PathBuf, node_id: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("the servers refused this agent: {0}")]
    Refused(String),
    #[error(transparent)]
    Servers(#[from] servers::ServersError),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds `config.rpc_addr` and runs the agent until `shutdown` completes.
pub async fn run(config: ClientConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ClientError> {
    let listener = TcpListener::bind(config.rpc_addr)
        .await
        .map_err(|source| ClientError::Listen { addr: config.rpc_addr, source })?;
    run_on(config, listener, shutdown).await
}

/// Runs the agent on an already bound listener (tests bind port 0).
pub async fn run_on(
    config: ClientConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ClientError> {
    helios_core::validate::check_name(&config.node_id).map_err(|p| ClientError::NodeId(config.node_id.clone(), p))?;
    if !config.rpc_addr.ip().is_loopback() && config.tls.is_none() && !config.insecure {
        return Err(ClientError::PlaintextBeyondLoopback(config.rpc_addr));
    }
    if config.tls.is_none() {
        tracing::warn!("no TLS: task logs are served, and servers are spoken to, in plaintext (see docs/security.md)");
    }
    // Held until the agent ends.
    let _data_dir = identity::lock_data_dir(&config.data_dir, &config.node_id)?;
    // Absolute from here on: tasks are given paths in it, and exec hides it from them.
    let mut config = config;
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|source| ClientError::DataDir { path: config.data_dir.clone(), source })?;
    let secret = identity::load_or_create(&config.data_dir, &config.node_id)?;
    // Other users may pass through to the allocations (the servers' log requests go through the
    // agent), not list them: tasks' logs and directories are theirs and the agent's.
    let allocs = config.data_dir.join("allocs");
    if let Err(e) = std::fs::create_dir_all(&allocs)
        .and_then(|()| std::fs::set_permissions(&allocs, std::os::unix::fs::PermissionsExt::from_mode(0o711)))
    {
        tracing::warn!(dir = %allocs.display(), error = %e, "cannot restrict the allocations directory");
    }
    let advertised = listener.local_addr().map_err(|source| ClientError::Listen { addr: config.rpc_addr, source })?;
    let mut node = fingerprint::node(&config, advertised);
    let cpu = drivers::docker::NodeCpu::of(&node);
    let settings = drivers::Settings::detect(&config.drivers, &config.data_dir, cpu);
    let engine = drivers::docker::Engine { endpoint: drivers::docker::Endpoint(config.docker_endpoint.clone()), cpu };
    if let Some(why) = &settings.exec_unavailable {
        tracing::warn!("the exec driver is not offered: {why}");
    }
    let drivers = drivers::Drivers::new(std::sync::Arc::new(settings), engine);
    let (low, high) = config.drivers.dynamic_ports.unwrap_or(helios_core::scheduler::select::DEFAULT_DYNAMIC_PORTS);
    if let Some((from, to)) = fingerprint::ephemeral_overlap((low, high)) {
        tracing::warn!(
            "dynamic ports {from}-{to} are also the kernel's local ports for outgoing connections \
             (net.ipv4.ip_local_port_range): a task given one that a connection holds cannot listen on it"
        );
    }
    node.attributes
        .insert(helios_core::scheduler::select::DYNAMIC_PORTS_ATTRIBUTE.to_string(), format!("{low}-{high}"));
    let remembered = servers::remembered_path(&config.data_dir, &config.node_id);
    let servers = Servers::new(&config.servers, config.tls.as_ref(), config.node_token.as_deref(), Some(remembered))?;

    let (_health, health_service) = tonic_health::server::health_reporter();
    let allocs_dir = config.data_dir.join("allocs");
    let build = |tls: Option<&helios_api::tls::Tls>| {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls.server_config())?;
        }
        // Task logs go to servers only (they relay them to users who may read them).
        let only_servers = helios_api::tls::RequireRole::new(helios_api::tls::roles::SERVERS, tls);
        let logs = log_service::LogService { allocs_dir: allocs_dir.clone(), secret: secret.clone() };
        Ok(builder.add_service(health_service.clone()).add_service(
            tonic::service::interceptor::InterceptedService::new(
                pb::client_service_server::ClientServiceServer::new(logs),
                only_servers,
            ),
        ))
    };
    let serve = helios_api::tls::reload::serve(
        listener,
        config.tls.clone(),
        helios_api::tls::Role::Client,
        config.reload.clone(),
        shutdown,
        build,
        |tls: &helios_api::tls::Tls| servers.set_tls(tls),
    );
    tokio::pin!(serve);
    let node_id = node.id.clone();
    let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel();
    // The node as registered: its drivers as fingerprinted now (tasks may name their attributes).
    // Served meanwhile: an engine that takes its time to answer must not hold the log API, nor
    // a shutdown.
    let fingerprints = tokio::select! {
        fingerprints = drivers.fingerprint() => fingerprints,
        served = &mut serve => return Ok(served?),
    };
    let mut registered = node.clone();
    drivers::offer(&mut registered, &fingerprints);
    let facts = task_env::NodeFacts {
        id: node.id.clone(),
        name: node.hostname.clone(),
        attributes: registered.attributes.clone(),
        meta: node.meta.clone(),
    };
    let (service_reports_tx, service_reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let runners =
        runner::Runners::new(facts, drivers.clone(), config.data_dir.join("allocs"), reports_tx, service_reports_tx);
    let liveness = keep_alive(&servers, node, secret.clone(), drivers, fingerprints);
    tokio::pin!(liveness);
    let watching = watch_allocations(&servers, &node_id, &secret, runners);
    tokio::pin!(watching);
    let (servers_ref, node_ref, secret_ref) = (&servers, node_id.as_str(), secret.as_str());
    let reporting = report_latest(
        reports_rx,
        "allocation update",
        |u| &u.alloc_id,
        |updates| Box::pin(async move { servers_ref.update_allocations(node_ref, secret_ref, &updates).await }),
    );
    tokio::pin!(reporting);
    let registering = report_latest(
        service_reports_rx,
        "service registration",
        |r| &r.alloc_id,
        |reports| Box::pin(async move { servers_ref.report_services(node_ref, secret_ref, &reports).await }),
    );
    tokio::pin!(registering);
    tokio::select! {
        served = &mut serve => Ok(served?),
        refused = &mut liveness => Err(refused),
        refused = &mut watching => Err(refused),
        refused = &mut reporting => Err(refused),
        refused = &mut registering => Err(refused),
    }
}

/// Follows the allocations assigned to this node, on whichever server answers, and hands each
/// new set to the runners. Returns only when the servers refuse this agent.
async fn watch_allocations(
    servers: &Servers,
    node_id: &str,
    secret: &str,
    mut runners: runner::Runners,
) -> ClientError {
    // Every stream starts with the whole set; later messages say what changed.
    let mut assigned = Assigned::default();
    loop {
        match servers.watch(node_id, secret).await {
            Ok(mut stream) => {
                // A stream sends each job version once: what an earlier stream sent is not
                // assumed.
                assigned.jobs.clear();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            // Pages of one set are applied together, once the last arrives: a
                            // partial whole set would stop the allocations of the pages to come.
                            if !assigned.apply(message) {
                                continue;
                            }
                            let allocations = assigned.allocations.values().cloned().collect();
                            let set =
                                pb::AssignedAllocations { allocations, delta: false, removed: Vec::new(), more: false };
                            runners.sync(set);
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(%status, "allocation watch ended; resuming");
                            break;
                        }
                    }
                }
            }
            Err(servers::CallError::Refused(why)) => return ClientError::Refused(why),
            // Not registered yet (or forgotten): keep_alive registers; try again shortly.
            Err(e) => tracing::debug!(error = %e, "allocation watch unavailable"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The allocations assigned to this node, as the watch messages built them, each with its job.
#[derive(Default)]
struct Assigned {
    allocations: BTreeMap<String, pb::AssignedAllocation>,
    /// The job versions the current stream sent (each is sent once per stream).
    jobs: BTreeMap<(String, u64), helios_api::agent_pb::Job>,
}

impl Assigned {
    /// Folds one watch message in; true when a set is complete (no `more` pages to come).
    fn apply(&mut self, message: pb::AssignedAllocations) -> bool {
        if !message.delta {
            self.allocations.clear();
        }
        for id in &message.removed {
            self.allocations.remove(id);
        }
        for mut a in message.allocations {
            let Some(alloc) = a.allocation.as_ref() else { continue };
            let (id, key) = (alloc.id.clone(), (alloc.job_name.clone(), alloc.job_version));
            match &a.job {
                Some(job) => {
                    self.jobs.insert(key, job.clone());
                }
                None => a.job = self.jobs.get(&key).cloned(),
            }
            self.allocations.insert(id, a);
        }
        if message.more {
            return false;
        }
        // Job versions no assigned allocation runs any more (the servers forget them too).
        let running: std::collections::HashSet<(&str, u64)> = self
            .allocations
            .values()
            .filter_map(|a| a.allocation.as_ref().map(|al| (al.job_name.as_str(), al.job_version)))
            .collect();
        self.jobs.retain(|(name, version), _| running.contains(&(name.as_str(), *version)));
        true
    }
}

/// Sends an allocation's reports to the servers (task states, or service registrations),
/// batching whatever queued up meanwhile, retrying until they are accepted (they must not be
/// lost).
async fn report_latest<'a, T: Clone + PartialEq + Send + 'a>(
    mut reports: tokio::sync::mpsc::UnboundedReceiver<T>,
    what: &str,
    alloc_id: impl Fn(&T) -> &String,
    send: impl Fn(Vec<T>) -> futures::future::BoxFuture<'a, Result<(), servers::CallError>>,
) -> ClientError {
    // Only the latest report per allocation matters, so what waits is bounded by the node's
    // allocations however long the servers are away: the queue is drained into this map before
    // every attempt, and while retrying.
    let mut pending: BTreeMap<String, T> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            let Some(first) = reports.recv().await else { return std::future::pending().await };
            pending.insert(alloc_id(&first).clone(), first);
        }
        while let Ok(more) = reports.try_recv() {
            pending.insert(alloc_id(&more).clone(), more);
        }
        // The servers take at most MAX_UPDATES_PER_CALL at once.
        let batch: Vec<T> = pending.values().take(MAX_UPDATES_PER_CALL).cloned().collect();
        let sent = match send(batch.clone()).await {
            Ok(()) => true,
            // A report the servers refuse (an allocation they no longer know, a malformed
            // state) is dropped; the agent keeps running its other work.
            // (An identity problem also stops the heartbeats and the watch, which end the agent.)
            Err(servers::CallError::Refused(why)) => {
                tracing::warn!(%why, "the servers refused an {what}; dropping it");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        };
        if sent {
            for report in batch {
                // Unless a newer one came meanwhile (drained on the next round).
                if pending.get(alloc_id(&report)) == Some(&report) {
                    pending.remove(alloc_id(&report));
                }
            }
        }
    }
}

/// What the servers take in one `UpdateAllocations` call.
const MAX_UPDATES_PER_CALL: usize = 1000;

/// Aborts a background task when its owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the agent fingerprints its drivers again (the docker engine may come or go).
const DRIVER_CHECK_EVERY: Duration = Duration::from_secs(15);

/// Registers, then heartbeats within the TTL the servers ask for, forever. Registers again when
/// a driver's fingerprint changes. Returns only when the servers refuse this agent's identity.
async fn keep_alive(
    servers: &Servers,
    node: pb::Node,
    secret: String,
    drivers: drivers::Drivers,
    fingerprints: drivers::Fingerprints,
) -> ClientError {
    let node_id = node.id.clone();
    // Checked off the heartbeat path: an engine that hangs must not delay heartbeats.
    let (fingerprints_tx, mut fingerprints_rx) = tokio::sync::watch::channel(fingerprints);
    let _checker = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(DRIVER_CHECK_EVERY).await;
            let now = drivers.fingerprint().await;
            fingerprints_tx.send_if_modified(|known| std::mem::replace(known, now.clone()) != now);
        }
    }));
    loop {
        let mut registered = node.clone();
        drivers::offer(&mut registered, &fingerprints_rx.borrow_and_update());
        let ttl = match servers.register(&registered, &secret).await {
            Ok(ttl) => ttl,
            Err(servers::CallError::Refused(why)) => return ClientError::Refused(why),
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(%node_id, ttl_ms = ttl.as_millis(), drivers = ?registered.drivers, "registered");
        let mut interval = ttl / 3;
        loop {
            tokio::time::sleep(interval).await;
            if fingerprints_rx.has_changed().unwrap_or(false) {
                tracing::info!("a driver's fingerprint changed; registering again");
                break;
            }
            // A quarter of the TTL per server: sent a third of the TTL after the last one, a
            // heartbeat that finds two servers hung still reaches the third in time.
            match servers.heartbeat(&node_id, &secret, (ttl / 4).max(Duration::from_millis(250))).await {
                Ok(ttl) => interval = ttl / 3,
                // The servers forgot the node (or never committed it): register again.
                Err(servers::CallError::NotRegistered) => break,
                Err(servers::CallError::Refused(why)) => return ClientError::Refused(why),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; trying again");
                    interval = (ttl / 10).max(Duration::from_millis(100));
                }
            }
        }
    }
}
