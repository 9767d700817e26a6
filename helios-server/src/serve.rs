//! The gRPC server on the one port: every service behind the certificate roles it takes, and
//! mutual TLS that a reload (SIGHUP, `ServerConfig::reload`) renews without a restart.
//!
//! A reload reads the certificate files again and, if they load, starts serving the same
//! listener with them and stops the previous server gracefully: new connections get the new
//! certificates, calls under way finish on the old ones. Files that do not load are logged and
//! the server keeps its certificates.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use helios_api::pb;
use helios_api::tls::{roles, RequireRole, Role, Tls};
use helios_core::limits::{MAX_MESSAGE_BYTES, MAX_PEER_MESSAGE_BYTES};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;

use crate::cluster::Cluster;
use crate::raft::peer_service::PeerService;
use crate::{api, StartError};

/// Asks a server to read its certificates again, and counts the attempts it has made.
#[derive(Debug, Clone)]
pub struct Reload {
    requested: Arc<Notify>,
    attempts: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { requested: Arc::default(), attempts: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl Reload {
    /// Requests a reload (what SIGHUP does).
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Requests a reload and waits until the server has tried it (whether the files loaded or
    /// not: the log says).
    pub async fn request_and_wait(&self) {
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.request();
        let _ = attempts.changed().await;
    }
}

/// Serves until `shutdown`, reloading certificates whenever `reload` asks.
pub async fn serve(
    cluster: Cluster,
    data_dir: PathBuf,
    mut tls: Option<Tls>,
    reload: Reload,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::job_service_server::JobServiceServer<api::jobs::Jobs>>().await;
    health.set_serving::<pb::allocation_service_server::AllocationServiceServer<api::jobs::Allocations>>().await;
    health.set_serving::<pb::node_service_server::NodeServiceServer<api::nodes::Nodes>>().await;
    health.set_serving::<pb::cluster_service_server::ClusterServiceServer<api::cluster_service::Membership>>().await;
    health.set_serving::<pb::raft_peer_server::RaftPeerServer<PeerService>>().await;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: "0.0.0.0:0".parse().expect("literal"), source })?;
    tracing::info!(node_id = cluster.node_id, %addr, tls = tls.is_some(), "helios-server serving");
    // One peer service for every generation of the server: it holds the snapshot slot, and
    // building it sweeps half-received snapshots.
    let peers = Arc::new(PeerService::new(cluster.clone(), data_dir));
    let listener = Arc::new(listener);
    tokio::pin!(shutdown);
    let mut retired = Vec::new();
    loop {
        let router = router(&cluster, &peers, tls.as_ref(), health_service.clone())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(accept(listener.clone()), async move {
            let _ = stopped.await;
        }));
        let reloaded = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                served = &mut server => {
                    // The server ended on its own: an error of the transport.
                    return served.map_err(|e| StartError::Raft(format!("the gRPC server task failed: {e}")))?.map_err(Into::into);
                }
                () = reload.requested.notified() => {
                    let attempt = tls.as_ref().map(reload_tls);
                    reload.attempts.send_modify(|n| *n += 1);
                    match attempt {
                        None => tracing::info!("reload requested; this server has no TLS certificates to reload"),
                        Some(Ok(new)) => break Some(new),
                        Some(Err(e)) => tracing::warn!(error = %e, "certificates not reloaded; keeping the current ones"),
                    }
                }
            }
        };
        let _ = stop.send(());
        retired.push(server);
        match reloaded {
            None => break,
            Some(new) => {
                tracing::info!(roles = ?new.roles, "reloaded TLS certificates");
                cluster.channels.set_tls(Some(new.clone()));
                tls = Some(new);
            }
        }
    }
    for server in retired {
        server.await.map_err(|e| StartError::Raft(format!("the gRPC server task failed: {e}")))??;
    }
    Ok(())
}

/// The certificate files read again, with the same checks as at start-up.
fn reload_tls(current: &Tls) -> Result<Tls, helios_api::tls::TlsError> {
    let tls = Tls::load(&current.files, &current.region)?;
    tls.require_own_role(Role::Server)?;
    Ok(tls)
}

/// Connections from a listener shared by successive servers; an accept error (too many open
/// files) is retried after a pause instead of spinning.
fn accept(listener: Arc<TcpListener>) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = match listener.accept().await {
            Ok((stream, _)) => {
                // Nagle's algorithm against the peer's delayed ACKs stalls small replies by 40 ms.
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(e)
            }
        };
        Some((next, listener))
    })
}

/// Every service, each wrapped in the roles whose certificates it takes (all, without TLS).
fn router(
    cluster: &Cluster,
    peers: &Arc<PeerService>,
    tls: Option<&Tls>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<Router, tonic::transport::Error> {
    use pb::acl_service_server::AclServiceServer;
    use pb::agent_service_server::AgentServiceServer;
    use pb::allocation_service_server::AllocationServiceServer;
    use pb::cluster_service_server::ClusterServiceServer;
    use pb::job_service_server::JobServiceServer;
    use pb::node_service_server::NodeServiceServer;
    use pb::raft_peer_server::RaftPeerServer;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        // The descriptor set is generated by our own build script; failing to decode it is a
        // build defect, not a runtime condition.
        .expect("embedded file descriptor set is valid");
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let limit = MAX_MESSAGE_BYTES;
    let anyone = RequireRole::new(roles::ANYONE, tls);
    let peer_role = RequireRole::new(roles::PEERS, tls);
    let auth = cluster.channels.auth.clone();
    let peer_check = move |request: tonic::Request<()>| {
        let request = crate::raft::peer_service::check_format(request)?;
        peer_role.check(&request)?;
        auth.check_headers(request.metadata())?;
        Ok(request)
    };
    let c = || cluster.clone();
    Ok(builder
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            JobServiceServer::new(api::jobs::Jobs { cluster: c() }).max_decoding_message_size(limit),
            anyone.clone(),
        ))
        .add_service(InterceptedService::new(
            AllocationServiceServer::new(api::jobs::Allocations { cluster: c() }).max_decoding_message_size(limit),
            anyone.clone(),
        ))
        .add_service(InterceptedService::new(
            NodeServiceServer::new(api::nodes::Nodes { cluster: c() }).max_decoding_message_size(limit),
            anyone.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServiceServer::new(api::cluster_service::Membership { cluster: c() })
                .max_decoding_message_size(limit),
            anyone.clone(),
        ))
        .add_service(InterceptedService::new(
            AclServiceServer::new(api::acl::Acl { cluster: c() }).max_decoding_message_size(limit),
            anyone,
        ))
        .add_service(InterceptedService::new(
            AgentServiceServer::new(api::agent::Agents { cluster: c() }).max_decoding_message_size(limit),
            RequireRole::new(roles::AGENTS, tls),
        ))
        .add_service(InterceptedService::new(
            RaftPeerServer::from_arc(peers.clone())
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
            peer_check,
        )))
}
