//! `helios-client`: the agent that makes a machine a Helios node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use helios_api::tls::{Role, TlsFlags};
use helios_client::ClientConfig;

#[derive(Parser, Debug)]
#[command(
    name = "helios-client",
    version,
    about = "The Helios client agent: registers this machine as a node and keeps it alive"
)]
struct Args {
    /// This machine's node id (letters, digits, '-', '_', '.'), unique in the cluster.
    #[arg(long)]
    node_id: String,
    /// Server URL(s), comma-separated or repeated; the agent fails over between them.
    #[arg(long = "server-addr", value_delimiter = ',', default_value = "127.0.0.1:50051")]
    server_addr: Vec<String>,
    /// The agent's own gRPC address (task logs are served here).
    #[arg(long, default_value = "127.0.0.1:60051")]
    client_rpc_addr: SocketAddr,
    /// Where the agent keeps its identity (and, later, task directories and logs).
    #[arg(long, default_value = ".")]
    data_dir: PathBuf,
    /// Operator metadata for constraints (`meta.KEY`), KEY=VALUE; repeatable.
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Advertise this much CPU (MHz) instead of what the machine has.
    #[arg(long)]
    cpu_mhz: Option<u32>,
    /// Advertise this much memory (MB) instead of what the machine has.
    #[arg(long)]
    memory_mb: Option<u32>,
    /// The Docker engine to run docker tasks with: unix:///PATH or tcp://HOST:PORT. Default:
    /// DOCKER_HOST, or the local socket. Without an engine the node offers only exec.
    #[arg(long)]
    docker_endpoint: Option<String>,
    // With TLS the agent talks to servers over mutual TLS (`https://` server addresses) and
    // serves task logs to servers only.
    #[command(flatten)]
    tls: TlsFlags,
    /// An ACL token granting node write (`node { policy = "write" }`), which servers with
    /// --acl-enabled and no TLS require to register a node (with TLS, the client certificate
    /// introduces the node instead).
    #[arg(long, env = "HELIOS_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// Serve task logs beyond loopback without TLS: anyone who reaches --client-rpc-addr could
    /// read them.
    #[arg(long)]
    insecure: bool,
    /// Offer the raw_exec driver: tasks run with no isolation, as this agent's user (root,
    /// usually) unless they name another.
    #[arg(long)]
    enable_raw_exec: bool,
    /// The only users tasks may run as (comma-separated or repeated). Without it, any user but
    /// root (exec tasks run as nobody unless they name a user).
    #[arg(long = "allowed-users", value_delimiter = ',')]
    allowed_users: Option<Vec<String>>,
    /// Let docker tasks bind-mount host paths (`volumes`): they can then read and write
    /// anything on this machine that the engine can.
    #[arg(long)]
    docker_allow_volumes: bool,
    /// Let docker tasks use the host's network namespace, or another container's
    /// (`network_mode = "host"` or `"container:NAME"`).
    #[arg(long)]
    docker_allow_host_network: bool,
    /// Let docker tasks run privileged (`privileged = true`): every capability and device of
    /// this machine, which is root on it.
    #[arg(long)]
    docker_allow_privileged: bool,
    /// Let docker tasks be given host devices (`devices`).
    #[arg(long)]
    docker_allow_devices: bool,
    /// The capabilities docker containers may have, comma-separated, as Nomad's `allow_caps`:
    /// `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN`; `ALL` for any, '' for none. A task's
    /// `cap_add` must be in it, and the engine's defaults outside it are dropped. Replaces the
    /// default, the engine's defaults but NET_RAW.
    #[arg(long = "docker-allow-caps", value_delimiter = ',', value_parser = parse_capability)]
    docker_allow_caps: Option<Vec<String>>,
    /// The host ports the scheduler gives tasks' dynamic ports from, MIN-MAX (keep other
    /// services, and the kernel's ports for outgoing connections, out of it).
    #[arg(long, value_parser = parse_port_range, default_value = "20000-32000")]
    dynamic_ports: (u16, u16),
    /// The most processes (threads included) an exec task may have at once.
    #[arg(long, default_value_t = helios_client::drivers::DEFAULT_PIDS_MAX)]
    task_pids_max: u32,
    /// Serve Prometheus metrics on this address (docs/metrics.md); none when unset.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected MIN-MAX, two ports with MIN <= MAX (e.g. 20000-32000), got {text:?}");
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let (low, high): (u16, u16) = (low.trim().parse().map_err(|_| bad())?, high.trim().parse().map_err(|_| bad())?);
    (low > 0 && low <= high).then_some((low, high)).ok_or_else(bad)
}

fn parse_capability(text: &str) -> Result<String, String> {
    let name = helios_core::job::capability_name(text);
    if name.is_empty() {
        // `--docker-allow-caps ''`: none (dropped below).
        return Ok(name);
    }
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    valid.then_some(name).ok_or_else(|| format!("expected a capability name (NET_ADMIN, ALL, ...), got {text:?}"))
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn main() -> ExitCode {
    // This binary is also the exec driver's task launcher (helios_client::sandbox).
    if let Some(code) = helios_client::sandbox::run_if_launcher() {
        return code;
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(agent()),
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn agent() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colours for a terminal only: a log file gets plain text, searchable as written.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    if let Some(addr) = args.metrics_addr {
        if let Err(e) = helios_client::metrics::serve(addr) {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    }
    let tls = match args.tls.load(Role::Client) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = ClientConfig {
        node_id: args.node_id,
        servers: args.server_addr,
        rpc_addr: args.client_rpc_addr,
        data_dir: args.data_dir,
        meta: args.meta.into_iter().collect::<BTreeMap<_, _>>(),
        cpu_mhz: args.cpu_mhz,
        memory_mb: args.memory_mb,
        docker_endpoint: args.docker_endpoint,
        tls,
        insecure: args.insecure,
        node_token: args.node_token,
        reload: Default::default(),
        drivers: helios_client::drivers::Options {
            enable_raw_exec: args.enable_raw_exec,
            allowed_users: args.allowed_users,
            launcher: None,
            pids_max: Some(args.task_pids_max),
            dynamic_ports: Some(args.dynamic_ports),
            docker_allowed: [
                (args.docker_allow_volumes, helios_core::DockerPrivilege::Volumes),
                (args.docker_allow_host_network, helios_core::DockerPrivilege::HostNetwork),
                (args.docker_allow_privileged, helios_core::DockerPrivilege::Privileged),
                (args.docker_allow_devices, helios_core::DockerPrivilege::Devices),
            ]
            .into_iter()
            .filter_map(|(allowed, privilege)| allowed.then_some(privilege))
            .collect(),
            docker_allow_caps: args.docker_allow_caps.map(|caps| caps.into_iter().filter(|c| !c.is_empty()).collect()),
        },
    };
    // SIGHUP: read the TLS certificates again (rotation without a restart).
    config.reload.on_sighup();
    let shutdown = async {
        // SIGTERM (service managers, `kill`) or Ctrl-C: stop heartbeating and exit.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match helios_client::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
