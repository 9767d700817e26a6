//! Talking to the servers. The agent starts from `--server-addr` (its seeds) and learns every
//! server's address from the servers themselves: each registration and heartbeat answer lists
//! the cluster's members. Calls go to the server that answered last, then to each other known
//! server in turn, then to the seeds not among them. The learned list is kept in the data dir, so
//! an agent restarted while its seed is down still finds the cluster (Nomad's clients do the
//! same with the servers' list they are sent).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
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

/// A client of the servers' agent API, accepting the largest watch message they send.
fn agent_client(conn: &Conn) -> AgentServiceClient<Conn> {
    AgentServiceClient::new(conn.clone()).max_decoding_message_size(helios_core::limits::MAX_WATCH_MESSAGE_BYTES)
}

/// One server the agent may call.
#[derive(Clone)]
struct Server {
    /// As configured or announced: `host:port`, or a URL.
    addr: String,
    /// The URL dialled, for messages.
    url: String,
    conn: Conn,
}

/// What the agent knows of the servers at a moment; replaced whole when it changes.
struct Known {
    /// The last answer's list as received (sorted): an answer that repeats it changes nothing.
    announced: Vec<String>,
    /// The usable addresses of that list (empty until the first answer).
    learned: Vec<String>,
    /// The learned servers, then the seeds not among them.
    servers: Vec<Server>,
    /// The address of the server that answered last: tried first next time.
    current: String,
}

pub struct Servers {
    /// `--server-addr`. Kept after servers are learned, tried last: if every learned server is
    /// gone (a cluster moved to new machines behind the same names), the seeds lead back to it.
    seeds: Vec<String>,
    token: WithToken,
    tls: RwLock<Option<Tls>>,
    /// The file the learned list is kept in; `None`: not kept.
    remembered: Option<PathBuf>,
    known: RwLock<Known>,
}

/// The most servers an agent keeps from an answer: each is a channel, and on failover each
/// dead one costs part of a heartbeat's time. Raft clusters have 3, 5 or 7.
const MAX_SERVERS: usize = 16;

/// `http://10.0.0.1:50051/` and `10.0.0.1:50051` are the same server.
fn host_port(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

/// The file an agent of `node_id` keeps its learned servers in.
pub fn remembered_path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("helios-client-{node_id}.servers"))
}

/// The servers learned before, if they were learned from the same `--server-addr`: an agent
/// pointed at other seeds (another cluster) starts from those, not from what it knew.
/// The file holds `seed ADDR` and `server ADDR` lines.
fn read_remembered(path: &Path, seeds: &[String]) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the servers learned before; using --server-addr");
            return Vec::new();
        }
    };
    let (mut from, mut servers) = (Vec::new(), Vec::new());
    for line in text.lines() {
        match line.trim().split_once(' ') {
            Some(("seed", addr)) => from.push(host_port(addr.trim()).to_string()),
            Some(("server", addr)) => servers.push(addr.trim().to_string()),
            _ => {}
        }
    }
    let mut given: Vec<String> = seeds.iter().map(|s| host_port(s).to_string()).collect();
    from.sort();
    given.sort();
    if from != given {
        tracing::info!(path = %path.display(), "--server-addr changed: not using the servers learned from the old one");
        return Vec::new();
    }
    servers.truncate(MAX_SERVERS);
    servers
}

/// Replaces the file whole (a crash leaves the old list or the new one, never half of one).
fn write_remembered(path: &Path, seeds: &[String], servers: &[String]) -> std::io::Result<()> {
    let tmp = path.with_extension("servers.tmp");
    let lines = seeds.iter().map(|s| format!("seed {s}\n")).chain(servers.iter().map(|s| format!("server {s}\n")));
    std::fs::write(&tmp, lines.collect::<String>())?;
    std::fs::rename(&tmp, path)
}

impl Servers {
    /// `seeds`: `--server-addr`. `remembered`: where the learned list is kept (read now, written
    /// when it changes). `token`: sent with every call (servers with ACLs and no TLS require one
    /// to register).
    pub fn new(
        seeds: &[String],
        tls: Option<&Tls>,
        token: Option<&str>,
        remembered: Option<PathBuf>,
    ) -> Result<Servers, ServersError> {
        let token = WithToken::new(token).map_err(|e| ServersError::Invalid("--node-token".into(), e))?;
        let seeds: Vec<String> = seeds
            .iter()
            .flat_map(|a| a.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if seeds.is_empty() {
            return Err(ServersError::Empty);
        }
        for seed in &seeds {
            helios_api::tls::endpoint(seed, tls, Role::Server).map_err(|e| ServersError::Invalid(seed.clone(), e))?;
        }
        let learned = remembered.as_deref().map(|path| read_remembered(path, &seeds)).unwrap_or_default();
        if !learned.is_empty() {
            tracing::info!(servers = ?learned, "servers learned before");
        }
        let servers = Servers {
            seeds,
            token,
            tls: RwLock::new(tls.cloned()),
            remembered,
            known: RwLock::new(Known {
                announced: Vec::new(),
                learned: Vec::new(),
                servers: Vec::new(),
                current: String::new(),
            }),
        };
        servers.replace(learned, &[]);
        Ok(servers)
    }

    /// Takes the servers' list of members from an answer. Nothing changes when it is the list
    /// already known, or empty (a server not yet in a cluster knows no members).
    fn learn(&self, announced: &[String]) {
        // Nearly every answer repeats the last one: compared as received, before any address is
        // parsed (parsing one builds its TLS settings, certificates included).
        let mut received = announced.to_vec();
        received.sort();
        if self.read_known().announced == received {
            return;
        }
        let tls = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut learned: Vec<String> = Vec::new();
        let mut skipped = Vec::new();
        for addr in announced.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            if let Err(e) = helios_api::tls::endpoint(addr, tls.as_ref(), Role::Server) {
                skipped.push(format!("{addr}: {e}"));
                continue;
            }
            if learned.len() == MAX_SERVERS {
                skipped.push(format!("all after the first {MAX_SERVERS} servers"));
                break;
            }
            if !learned.iter().any(|known| host_port(known) == host_port(addr)) {
                learned.push(addr.to_string());
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(?skipped, "ignored part of the servers' announced list");
        }
        if learned.is_empty() {
            self.known.write().unwrap_or_else(|e| e.into_inner()).announced = received;
            return;
        }
        tracing::info!(servers = ?learned, "learned the cluster's servers");
        let current = self.read_known().servers.clone();
        let learned = self.replace(learned, &current);
        self.known.write().unwrap_or_else(|e| e.into_inner()).announced = received;
        if let Some(path) = &self.remembered {
            if let Err(e) = write_remembered(path, &self.seeds, &learned) {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the learned servers for a restart");
            }
        }
    }

    /// Makes `learned`, then the seeds not among them, the servers called, reusing the channels
    /// in `reuse` of the same address. Returns the learned addresses kept (those that parse: a
    /// remembered file may hold anything).
    fn replace(&self, learned: Vec<String>, reuse: &[Server]) -> Vec<String> {
        let tls = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut kept = Vec::new();
        let mut servers: Vec<Server> = Vec::new();
        let seeds = self.seeds.iter().filter(|seed| !learned.iter().any(|l| host_port(l) == host_port(seed)));
        let learned_count = learned.len();
        for (i, addr) in learned.iter().chain(seeds).enumerate() {
            let server = match reuse.iter().find(|s| host_port(&s.addr) == host_port(addr)) {
                Some(existing) => Some(Server { addr: addr.clone(), ..existing.clone() }),
                None => self.connect(addr, tls.as_ref()),
            };
            if let Some(server) = server {
                if i < learned_count {
                    kept.push(addr.clone());
                }
                servers.push(server);
            }
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.learned = kept.clone();
        known.servers = servers;
        kept
    }

    /// A lazily connected channel to `addr`; `None` (logged) when the address is unusable, which
    /// only a remembered one can be: seeds are checked at the start, announced ones when learned.
    fn connect(&self, addr: &str, tls: Option<&Tls>) -> Option<Server> {
        let endpoint = match helios_api::tls::endpoint(addr, tls, Role::Server) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "ignoring a server address");
                return None;
            }
        };
        let url = endpoint.uri().to_string();
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .connect_lazy();
        Some(Server { addr: addr.to_string(), url, conn: InterceptedService::new(channel, self.token.clone()) })
    }

    /// New certificates (SIGHUP): later calls connect with them; calls under way finish.
    pub fn set_tls(&self, tls: &Tls) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(tls.clone());
        let learned = self.read_known().learned.clone();
        self.replace(learned, &[]);
    }

    fn read_known(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The servers to call, in order: the one that answered last, then the others.
    fn in_order(&self) -> Vec<Server> {
        let known = self.read_known();
        let first = known.servers.iter().position(|s| host_port(&s.addr) == host_port(&known.current)).unwrap_or(0);
        let mut servers = known.servers.clone();
        servers.rotate_left(first);
        servers
    }

    /// Every address the agent would call, in the order it would call them.
    pub fn addresses(&self) -> Vec<String> {
        self.in_order().into_iter().map(|s| s.addr).collect()
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
        let mut failures = Vec::new();
        for server in self.in_order() {
            let answer = match patience {
                Some(limit) => match tokio::time::timeout(limit, f(agent_client(&server.conn))).await {
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {limit:?}"))),
                },
                None => f(agent_client(&server.conn)).await,
            };
            match answer {
                Ok(reply) => {
                    if self.read_known().current != server.addr {
                        self.known.write().unwrap_or_else(|e| e.into_inner()).current = server.addr;
                    }
                    return Ok(reply.into_inner());
                }
                Err(status) => match status.code() {
                    tonic::Code::NotFound => return Err(CallError::NotRegistered),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                        return Err(CallError::Refused(status.message().to_string()))
                    }
                    _ => failures.push(format!("{}: {}", server.url, status.message())),
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
        self.learn(&reply.servers);
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
        self.learn(&reply.servers);
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
            let req =
                pb::WatchAllocationsRequest { node_id: node_id.to_string(), secret: secret.to_string(), paged: true };
            async move { c.watch_allocations(req).await }
        })
        .await
    }

    pub async fn update_allocations(
        &self,
        node_id: &str,
        secret: &str,
        updates: &[helios_core::AllocUpdate],
    ) -> Result<(), CallError> {
        let updates: Vec<pb::AllocationUpdate> =
            updates.iter().map(helios_api::convert::agent::alloc_update_to_agent).collect();
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

    pub async fn report_services(
        &self,
        node_id: &str,
        secret: &str,
        reports: &[helios_core::service::AllocServices],
    ) -> Result<(), CallError> {
        let services = helios_api::convert::agent::alloc_services_to_agent(reports);
        self.call("service registration", |mut c| {
            let req = pb::ReportServicesRequest {
                node_id: node_id.to_string(),
                secret: secret.to_string(),
                services: services.clone(),
            };
            async move { c.report_services(req).await }
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn learned_servers_come_first_and_seeds_not_among_them_last() {
        let servers = Servers::new(&seeds(&["http://10.0.0.1:50051,10.0.0.9:50051"]), None, None, None).expect("new");
        assert_eq!(servers.addresses(), ["http://10.0.0.1:50051", "10.0.0.9:50051"]);
        servers.learn(&seeds(&["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]));
        // The seed given with a scheme is the same server as the announced 10.0.0.1:50051.
        assert_eq!(servers.addresses(), ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.9:50051"]);
        // A server removed from the cluster is called only as a seed, after every member; one
        // that was never a seed is no longer called. An empty answer changes nothing.
        servers.learn(&seeds(&["10.0.0.2:50051", "10.0.0.4:50051"]));
        servers.learn(&[]);
        assert_eq!(
            servers.addresses(),
            ["10.0.0.2:50051", "10.0.0.4:50051", "http://10.0.0.1:50051", "10.0.0.9:50051"]
        );
    }

    #[tokio::test]
    async fn the_server_that_answered_last_stays_first_when_the_list_changes() {
        let servers = Servers::new(&seeds(&["10.0.0.1:50051"]), None, None, None).expect("new");
        servers.learn(&seeds(&["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]));
        servers.known.write().expect("lock").current = "10.0.0.2:50051".into();
        servers.learn(&seeds(&["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051"]));
        assert_eq!(servers.addresses(), ["10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051", "10.0.0.1:50051"]);
    }

    #[tokio::test]
    async fn the_learned_list_survives_a_restart_and_unusable_addresses_are_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = remembered_path(dir.path(), "n1");
        let servers = Servers::new(&seeds(&["10.0.0.1:50051"]), None, None, Some(path.clone())).expect("new");
        servers.learn(&seeds(&["10.0.0.2:50051", "ftp://10.0.0.3:21", "10.0.0.4:50051"]));
        assert_eq!(servers.addresses(), ["10.0.0.2:50051", "10.0.0.4:50051", "10.0.0.1:50051"]);
        let kept = std::fs::read_to_string(&path).expect("kept");
        assert_eq!(kept, "seed 10.0.0.1:50051\nserver 10.0.0.2:50051\nserver 10.0.0.4:50051\n");
        drop(servers);
        let restarted = Servers::new(&seeds(&["http://10.0.0.1:50051"]), None, None, Some(path.clone())).expect("new");
        assert_eq!(restarted.addresses(), ["10.0.0.2:50051", "10.0.0.4:50051", "http://10.0.0.1:50051"]);
        drop(restarted);
        // Pointed at another cluster, the agent starts from its new seeds only.
        let moved = Servers::new(&seeds(&["10.9.9.9:50051"]), None, None, Some(path)).expect("new");
        assert_eq!(moved.addresses(), ["10.9.9.9:50051"]);
    }

    #[tokio::test]
    async fn an_answer_is_kept_up_to_a_bound() {
        let servers = Servers::new(&seeds(&["10.0.0.1:50051"]), None, None, None).expect("new");
        let many: Vec<String> = (1..=100).map(|i| format!("10.0.1.{i}:50051")).collect();
        servers.learn(&many);
        assert_eq!(servers.addresses().len(), MAX_SERVERS + 1, "the bound, and the seed");
    }
}
