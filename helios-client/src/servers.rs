//! Talking to the servers: the first of `--server-addr` that answers, moving on when one fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use helios_api::acl::WithToken;
use helios_api::pb;
use helios_api::pb::agent_service_client::AgentServiceClient;
use helios_api::tls::{Role, Tls};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("no --server-addr given")]
    Empty,
    #[error("invalid --server-addr {0:?}: {1}")]
    Invalid(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No server could be reached, or none gave a usable answer.
    #[error("{0}")]
    Unavailable(String),
    #[error("node is not registered")]
    NotRegistered,
    /// Bad identity or input: retrying will not help.
    #[error("{0}")]
    Refused(String),
}

/// A channel to a server whose calls carry the agent's node introduction token, if any.
type Conn = InterceptedService<Channel, WithToken>;

pub struct Servers {
    addrs: Vec<String>,
    token: WithToken,
    /// One channel per server; replaced whole when the certificates are reloaded.
    channels: std::sync::RwLock<Vec<(String, Conn)>>,
    /// The server that answered last: tried first next time.
    current: AtomicUsize,
}

impl Servers {
    /// `token`: sent with every call (servers with ACLs and no TLS require one to register).
    pub fn new(addrs: &[String], tls: Option<&Tls>, token: Option<&str>) -> Result<Servers, ServersError> {
        let token = WithToken::new(token).map_err(|e| ServersError::Invalid("--node-token".into(), e))?;
        let addrs: Vec<String> = addrs
            .iter()
            .flat_map(|a| a.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if addrs.is_empty() {
            return Err(ServersError::Empty);
        }
        let channels = Self::connect(&addrs, tls, &token)?;
        Ok(Servers { addrs, token, channels: std::sync::RwLock::new(channels), current: AtomicUsize::new(0) })
    }

    fn connect(addrs: &[String], tls: Option<&Tls>, token: &WithToken) -> Result<Vec<(String, Conn)>, ServersError> {
        let mut channels = Vec::new();
        for addr in addrs {
            let endpoint = helios_api::tls::endpoint(addr, tls, Role::Server)
                .map_err(|e| ServersError::Invalid(addr.to_string(), e))?;
            let url = endpoint.uri().to_string();
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push((url, InterceptedService::new(channel, token.clone())));
        }
        Ok(channels)
    }

    /// New certificates (SIGHUP): later calls connect with them; calls under way finish.
    pub fn set_tls(&self, tls: &Tls) {
        match Self::connect(&self.addrs, Some(tls), &self.token) {
            Ok(channels) => *self.channels.write().unwrap_or_else(|e| e.into_inner()) = channels,
            Err(e) => tracing::warn!(error = %e, "keeping the connections to the servers as they were"),
        }
    }

    fn channel(&self, i: usize) -> (String, Conn) {
        self.channels.read().unwrap_or_else(|e| e.into_inner())[i].clone()
    }

    /// Calls each server in turn, starting with the last one that answered.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CallError>
    where
        F: Fn(AgentServiceClient<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(what, None, f).await
    }

    /// As `call`, giving each server at most `patience` to answer: a paused or cut-off server
    /// must not hold up a call that another server can answer in time.
    async fn call_within<T, F, Fut>(&self, what: &str, patience: Option<Duration>, f: F) -> Result<T, CallError>
    where
        F: Fn(AgentServiceClient<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let count = self.addrs.len();
        for step in 0..count {
            let i = (start + step) % count;
            let (url, channel) = self.channel(i);
            let answer = match patience {
                Some(limit) => match tokio::time::timeout(limit, f(AgentServiceClient::new(channel.clone()))).await {
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {limit:?}"))),
                },
                None => f(AgentServiceClient::new(channel.clone())).await,
            };
            match answer {
                Ok(reply) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(reply.into_inner());
                }
                Err(status) => match status.code() {
                    tonic::Code::NotFound => return Err(CallError::NotRegistered),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                        return Err(CallError::Refused(status.message().to_string()))
                    }
                    _ => failures.push(format!("{url}: {}", status.message())),
                },
            }
        }
        Err(CallError::Unavailable(format!("{what} failed on every server: {}", failures.join("; "))))
    }

    pub async fn register(&self, node: &pb::Node, secret: &str) -> Result<Duration, CallError> {
        let reply = self
            .call("registration", |mut c| {
                let req = pb::RegisterRequest { node: Some(node.clone()), secret: secret.to_string() };
                async move { c.register(req).await }
            })
            .await?;
        Ok(Duration::from_millis(reply.heartbeat_ttl_ms.max(300)))
    }

    /// One heartbeat, each server given at most `patience`: the node must be heard from within
    /// its TTL even when the server it last talked to hangs.
    pub async fn heartbeat(&self, node_id: &str, secret: &str, patience: Duration) -> Result<Duration, CallError> {
        let reply = self
            .call_within("heartbeat", Some(patience), |mut c| {
                let req = pb::HeartbeatRequest { node_id: node_id.to_string(), secret: secret.to_string() };
                async move { c.heartbeat(req).await }
            })
            .await?;
        Ok(Duration::from_millis(reply.heartbeat_ttl_ms.max(300)))
    }
}

impl Servers {
    /// Opens the allocation watch on the first server that accepts it.
    pub async fn watch(
        &self,
        node_id: &str,
        secret: &str,
    ) -> Result<tonic::Streaming<pb::AssignedAllocations>, CallError> {
        self.call("allocation watch", |mut c| {
            let req = pb::WatchAllocationsRequest { node_id: node_id.to_string(), secret: secret.to_string() };
            async move { c.watch_allocations(req).await }
        })
        .await
    }

    pub async fn update_allocations(
        &self,
        node_id: &str,
        secret: &str,
        updates: Vec<pb::AllocationUpdate>,
    ) -> Result<(), CallError> {
        self.call("allocation update", |mut c| {
            let req = pb::UpdateAllocationsRequest {
                node_id: node_id.to_string(),
                secret: secret.to_string(),
                updates: updates.clone(),
            };
            async move { c.update_allocations(req).await }
        })
        .await
        .map(|_| ())
    }
}
