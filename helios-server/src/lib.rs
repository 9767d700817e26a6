//! The Helios server: an openraft node persisting Helios's state in redb, serving the public gRPC
//! API, the peer API, gRPC health and reflection, all on one port.
//!
//! `main.rs` is a thin wrapper over [`run`], so tests start real servers in-process.

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deployment_watch;
pub mod events;
pub mod gc;
pub mod liveness;
pub mod metrics;
pub mod raft;
pub mod replication_watch;
pub mod scheduling;
pub mod security;
pub mod serve;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod upgrade;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use openraft::type_config::async_runtime::watch::WatchReceiver;
use openraft::BasicNode;
use tokio::net::TcpListener;

pub use config::{ConfigError, ServerConfig};

use crate::cluster::Cluster;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerChannels};
use crate::raft::state_machine::StateMachine;
use crate::raft::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] store::OpenError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("cannot read the Raft log: {0}")]
    Log(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(
        "the membership stored in this server's data contradicts --peer: {0}. Start it with the \
         addresses it was created with, or change membership with `helios-cli server join/remove`"
    )]
    MembershipMismatch(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds `config.rpc_addr` and runs the server until `shutdown` completes.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.rpc_addr)
        .await
        .map_err(|source| StartError::Listen { addr: config.rpc_addr, source })?;
    run_on(config, listener, shutdown).await
}

/// Runs the server on an already bound listener (tests bind port 0 first, to learn the
/// addresses every server's peer list needs).
pub async fn run_on(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    security::check_listen_addr(&config)?;
    let db = store::open(&config.data_dir, config.node_id)?;
    let key = security::resolve_cluster_key(&config)?;
    let result = run_raft(config, key, db.clone(), listener, shutdown).await;
    wait_until_closed(db).await;
    result
}

async fn run_raft(
    config: ServerConfig,
    key: Option<raft::peer_auth::ClusterKey>,
    db: Arc<redb::Database>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let log_store = LogStore::open(db.clone()).map_err(StartError::Log)?;
    let signals = signals::NodeSignals::with_event_buffer(config.event_buffer);
    let channels = PeerChannels::new(
        raft::peer_auth::PeerAuth::new(config.node_id, key),
        config.tls.clone(),
        signals.stored_format.clone(),
    );
    let network = NetworkFactory { channels: channels.clone() };
    let raft = Raft::new(
        config.node_id,
        raft::raft_config(config.snapshot_every),
        network,
        log_store,
        StateMachine::new(db.clone(), signals.clone()),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    if let Err(e) = join_cluster(&raft, &config).await {
        let _ = raft.shutdown().await;
        return Err(e);
    }
    let cluster = Cluster {
        node_id: config.node_id,
        raft: raft.clone(),
        db,
        channels,
        heartbeat_ttl: config.heartbeat_ttl,
        tracker: Arc::new(liveness::HeartbeatTracker::default()),
        signals: signals.clone(),
        acl_enabled: config.acl_enabled,
        acl_cache: Arc::default(),
        data_dir: config.data_dir.clone(),
        gc: config.gc,
    };
    let liveness_task = tokio::spawn(liveness::run(cluster.clone()));
    let scheduling_task = tokio::spawn(scheduling::run(cluster.clone()));
    let gc_task = tokio::spawn(gc::run(cluster.clone(), config.gc, config.gc_interval));
    let deployments_task = tokio::spawn(deployment_watch::run(cluster.clone()));
    let watch_task = tokio::spawn(replication_watch::run(cluster.clone()));
    let upgrade_task = tokio::spawn(upgrade::run(cluster.clone()));
    let metrics_task = config.metrics.then(|| tokio::spawn(metrics::watch(cluster.clone())));
    // Serve until asked to stop, or until Raft stops on its own (a storage failure is fatal to
    // it): a server whose Raft is dead must not keep answering as if it were healthy.
    let (fatal_tx, mut fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let watched = raft.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            reason = raft_stopped(watched) => { let _ = fatal_tx.send(reason); }
        }
        // Streams would otherwise hold the graceful shutdown open.
        signals.close();
    };
    let served = serve::serve(cluster, config.tls.clone(), config.reload.clone(), listener, stop).await;
    liveness_task.abort();
    scheduling_task.abort();
    gc_task.abort();
    deployments_task.abort();
    watch_task.abort();
    upgrade_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    tracing::info!(node_id = config.node_id, "shutting down raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    if let Ok(reason) = fatal_rx.try_recv() {
        return Err(StartError::Raft(format!("raft stopped: {reason}")));
    }
    served
}

/// Resolves when Raft reports a fatal error or stops.
async fn raft_stopped(raft: Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(e) = &metrics.borrow_watched().running_state {
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft core exited".to_string();
        }
    }
}

/// Raft's replication tasks can outlive `shutdown` briefly, holding the log store and with it
/// the database; redb refuses a second open of the same file, so a restart in the same process
/// must wait for them to finish. This waits until `db` is the last handle and closes it here:
/// waiting only for the others to let go raced with the last one's drop, which closes the file
/// after the count reached zero (a restart then met `DatabaseAlreadyOpen`).
async fn wait_until_closed(db: Arc<redb::Database>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&db) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the database is still in use 10 s after shutdown");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Closing writes redb's clean-shutdown state: blocking work.
    let _ = tokio::task::spawn_blocking(move || drop(db)).await;
}

/// Initializes a new cluster on the bootstrap server, and on every start checks that the
/// stored membership agrees with `--peer`.
async fn join_cluster(raft: &Raft, config: &ServerConfig) -> Result<(), StartError> {
    let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
    if initialized {
        let stored: BTreeMap<NodeId, String> = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        check_membership(&stored, &config.peers, config.node_id)?;
        tracing::info!(node_id = config.node_id, members = ?stored, "rejoining the cluster from stored state");
        return Ok(());
    }
    if config.bootstrap {
        let members: BTreeMap<NodeId, BasicNode> =
            config.peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        tracing::info!(node_id = config.node_id, ?members, "bootstrapping a new cluster");
        raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
    } else {
        tracing::info!(node_id = config.node_id, "waiting to be contacted by the cluster's leader");
    }
    Ok(())
}

/// A server whose flags give a member a different address than the stored membership would
/// talk to the wrong peer: refuse. Members added or removed since the flags were written are
/// fine (the stored membership wins) and only noted.
fn check_membership(
    stored: &BTreeMap<NodeId, String>,
    flags: &BTreeMap<NodeId, String>,
    own_id: NodeId,
) -> Result<(), StartError> {
    let conflicts: Vec<String> = flags
        .iter()
        .filter_map(|(id, addr)| match stored.get(id) {
            Some(stored_addr) if stored_addr != addr => {
                Some(format!("server {id} is {stored_addr} in the stored membership but --peer says {addr}"))
            }
            _ => None,
        })
        .collect();
    if !conflicts.is_empty() {
        return Err(StartError::MembershipMismatch(conflicts.join("; ")));
    }
    if !flags.is_empty() && flags.keys().ne(stored.keys()) {
        tracing::warn!(?stored, ?flags, "membership changed since --peer was written; using the stored membership");
    }
    if !stored.contains_key(&own_id) {
        tracing::warn!(own_id, "this server is not in the stored membership (removed?); waiting to be added again");
    }
    Ok(())
}
