//! Server configuration and the parsing of its flags' values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::raft::NodeId;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: NodeId,
    /// Where this server listens (public API, peer API, health and reflection on one port).
    pub rpc_addr: SocketAddr,
    /// Every server of the cluster, this one included: id -> `host:port`.
    pub peers: BTreeMap<NodeId, String>,
    /// Initialize a new cluster from `peers`. Only on one server, only the first time.
    pub bootstrap: bool,
    pub data_dir: PathBuf,
    /// Take a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every: u64,
    /// A client node not heard from for this long is marked down.
    pub heartbeat_ttl: std::time::Duration,
}

pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// A client node not heard from for this long is marked down and its work replaced. Agents
/// heartbeat at a third of it, so a node is marked down only after missing about three
/// heartbeats; a killed node's work runs elsewhere within about this long plus a quarter (the
/// leader checks deadlines four times per TTL). Shorter reacts faster to dead nodes but mistakes
/// a slow or briefly partitioned node for a dead one sooner (`--heartbeat-ttl`).
pub const DEFAULT_HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Bounds of `--heartbeat-ttl`: below a second, scheduling hiccups look like dead nodes.
pub const MIN_HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(1);
pub const MAX_HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Parses `--heartbeat-ttl` (seconds, fractions allowed) within its bounds.
pub fn parse_heartbeat_ttl(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    let (min, max) = (MIN_HEARTBEAT_TTL.as_secs_f64(), MAX_HEARTBEAT_TTL.as_secs_f64());
    if !(min..=max).contains(&secs) {
        return Err(format!("must be between {min} and {max} seconds, got {text}"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--peer list must include this server (--node-id {0})")]
    SelfNotInPeers(NodeId),
    #[error("--bootstrap needs the --peer list of every server, this one included")]
    BootstrapWithoutPeers,
    #[error("--peer {id}={peer} does not match --rpc-addr {rpc_addr}")]
    SelfAddrMismatch { id: NodeId, peer: String, rpc_addr: SocketAddr },
    #[error("--peer lists server {0} twice")]
    DuplicatePeer(NodeId),
    #[error("--peer lists address {0} for two servers")]
    DuplicateAddr(String),
}

impl ServerConfig {
    /// Builds and checks a configuration from the parsed flags.
    pub fn new(
        node_id: NodeId,
        rpc_addr: SocketAddr,
        peer_list: Vec<(NodeId, String)>,
        bootstrap: bool,
        data_dir: PathBuf,
    ) -> Result<ServerConfig, ConfigError> {
        let mut peers = BTreeMap::new();
        for (id, addr) in peer_list {
            if peers.values().any(|a| *a == addr) {
                return Err(ConfigError::DuplicateAddr(addr));
            }
            if peers.insert(id, addr).is_some() {
                return Err(ConfigError::DuplicatePeer(id));
            }
        }
        if bootstrap && peers.is_empty() {
            return Err(ConfigError::BootstrapWithoutPeers);
        }
        if !peers.is_empty() {
            let own = peers.get(&node_id).ok_or(ConfigError::SelfNotInPeers(node_id))?;
            if !addr_matches(own, rpc_addr) {
                return Err(ConfigError::SelfAddrMismatch { id: node_id, peer: own.clone(), rpc_addr });
            }
        }
        Ok(ServerConfig {
            node_id,
            rpc_addr,
            peers,
            bootstrap,
            data_dir,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
        })
    }
}

/// A server listening on a wildcard address (`0.0.0.0:50051`) is reached at whatever host its
/// peers name, so only the port must agree; otherwise the whole address must.
fn addr_matches(peer: &str, rpc_addr: SocketAddr) -> bool {
    if rpc_addr.ip().is_unspecified() {
        return parse_host_port(peer).is_ok_and(|(_, port)| port == rpc_addr.port());
    }
    match peer.parse::<SocketAddr>() {
        Ok(addr) => addr == rpc_addr,
        // A host name: trust the operator that it resolves to this server.
        Err(_) => parse_host_port(peer).is_ok_and(|(_, port)| port == rpc_addr.port()),
    }
}

/// Checks `host:port` (host a name, an IPv4 address, or `[IPv6]`), returning its parts.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("expected HOST:PORT, got {text:?}"))?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?} in {text:?}"))?;
    if port == 0 {
        return Err(format!("port must not be 0 in {text:?}"));
    }
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::Ipv4Addr>().is_ok()
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok())
            || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !host_ok {
        return Err(format!("invalid host {host:?} in {text:?}"));
    }
    Ok((host.to_string(), port))
}

/// Parses one `--peer ID=HOST:PORT`.
pub fn parse_peer(text: &str) -> Result<(NodeId, String), String> {
    let usage = "expected ID=HOST:PORT, e.g. 2=127.0.0.1:50052";
    let (id, addr) = text.split_once('=').ok_or_else(|| format!("{usage}, got {text:?}"))?;
    let id: NodeId = id.trim().parse().map_err(|_| format!("invalid server id {id:?}: {usage}"))?;
    if id == 0 {
        return Err(format!("server id must be > 0: {usage}"));
    }
    parse_host_port(addr.trim()).map_err(|e| format!("{e}: {usage}"))?;
    Ok((id, addr.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peers_parse() {
        assert_eq!(parse_peer("2=127.0.0.1:50052"), Ok((2, "127.0.0.1:50052".to_string())));
        assert_eq!(parse_peer("3=server-3.example:50051"), Ok((3, "server-3.example:50051".to_string())));
        assert_eq!(parse_peer("4=[::1]:50051"), Ok((4, "[::1]:50051".to_string())));
    }

    #[test]
    fn malformed_peers_say_what_is_wrong() {
        for (input, expected) in [
            ("2127.0.0.1:50052", "expected ID=HOST:PORT"),
            ("x=127.0.0.1:50052", "invalid server id \"x\""),
            ("0=127.0.0.1:50052", "server id must be > 0"),
            ("2=127.0.0.1", "expected HOST:PORT"),
            ("2=127.0.0.1:99999", "invalid port \"99999\""),
            ("2=:50052", "invalid host \"\""),
            ("2=bad host:1", "invalid host \"bad host\""),
        ] {
            let err = parse_peer(input).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn config_checks_the_peer_list() {
        let peers = |list: &[(u64, &str)]| list.iter().map(|(i, a)| (*i, a.to_string())).collect::<Vec<_>>();
        let ok = ServerConfig::new(
            1,
            addr("127.0.0.1:50051"),
            peers(&[(1, "127.0.0.1:50051"), (2, "127.0.0.1:50052")]),
            true,
            ".".into(),
        );
        assert!(ok.is_ok());
        let missing =
            ServerConfig::new(3, addr("127.0.0.1:50053"), peers(&[(1, "127.0.0.1:50051")]), false, ".".into());
        assert_eq!(missing.unwrap_err(), ConfigError::SelfNotInPeers(3));
        let mismatch =
            ServerConfig::new(1, addr("127.0.0.1:50061"), peers(&[(1, "127.0.0.1:50051")]), false, ".".into());
        assert!(matches!(mismatch.unwrap_err(), ConfigError::SelfAddrMismatch { .. }));
        let wildcard = ServerConfig::new(1, addr("0.0.0.0:50051"), peers(&[(1, "10.0.0.5:50051")]), true, ".".into());
        assert!(wildcard.is_ok());
        let dup = ServerConfig::new(
            1,
            addr("127.0.0.1:50051"),
            peers(&[(1, "127.0.0.1:50051"), (1, "127.0.0.1:50052")]),
            false,
            ".".into(),
        );
        assert_eq!(dup.unwrap_err(), ConfigError::DuplicatePeer(1));
        assert_eq!(
            ServerConfig::new(1, addr("127.0.0.1:50051"), vec![], true, ".".into()).unwrap_err(),
            ConfigError::BootstrapWithoutPeers
        );
        // A server that will be added later (`server join`) may start without a peer list.
        assert!(ServerConfig::new(4, addr("127.0.0.1:50054"), vec![], false, ".".into()).is_ok());
    }

    #[test]
    fn heartbeat_ttls_are_seconds_within_bounds() {
        assert_eq!(parse_heartbeat_ttl("2.5"), Ok(std::time::Duration::from_millis(2500)));
        assert_eq!(parse_heartbeat_ttl("5"), Ok(DEFAULT_HEARTBEAT_TTL));
        for bad in ["0", "0.5", "3601", "-1", "NaN", "soon", ""] {
            assert!(parse_heartbeat_ttl(bad).is_err(), "{bad} was accepted");
        }
    }
}
