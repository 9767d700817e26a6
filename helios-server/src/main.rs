//! `helios-server`: one member of a Helios server cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use helios_api::tls::{Role, TlsFlags};
use helios_server::config::parse_peer;
use helios_server::raft::peer_auth::ClusterKey;
use helios_server::ServerConfig;

fn parse_key(text: &str) -> Result<ClusterKey, String> {
    ClusterKey::parse(text)
}

/// The server allocates and frees many small objects per request and per applied entry (decoded
/// rows, protobuf messages, Raft entries); jemalloc does that with less CPU than the system
/// allocator while still returning freed memory (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc returns freed pages to the OS as time passes (10 s by default), but without its
/// background thread it only looks when later allocations happen to trigger it: an idle server
/// kept the peak of its last burst. With it, a leader's memory falls back after a burst
/// (docs/performance.md, "Leader memory after 100,000 placements").
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread did not start: freed memory is returned later");
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "helios-server",
    version,
    about = "A Helios server: one member of the Raft cluster that stores jobs and schedules them"
)]
struct Args {
    /// This server's id in the cluster (a positive integer, unique among servers).
    #[arg(long, required_unless_present = "dev")]
    node_id: Option<u64>,
    /// Address to listen on for the API and for peers.
    #[arg(long, default_value = "127.0.0.1:50051")]
    rpc_addr: SocketAddr,
    /// A cluster member as ID=HOST:PORT; repeat for every server, this one included.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Initialize a new cluster from the --peer list. Use on exactly one server, the first time.
    #[arg(long)]
    bootstrap: bool,
    /// Directory holding helios-node-<ID>.db.
    #[arg(long, default_value = ".")]
    data_dir: PathBuf,
    /// Snapshot the state (and compact the log behind it) every this many log entries.
    #[arg(long, default_value_t = helios_server::config::DEFAULT_SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// How many of the latest events (the event stream's) the server keeps, so that a subscriber
    /// that reconnects resumes where it stopped (1-1000000). More costs memory: a few KB each,
    /// and never more than 64 MiB of them in all (fewer are kept if they are large).
    #[arg(long, default_value_t = helios_server::events::DEFAULT_BUFFER as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    event_buffer: u64,
    /// Seconds a client node may go unheard before it is marked down and its work replaced
    /// (1-3600). Lower reacts faster to dead nodes, higher tolerates slow networks and pauses.
    #[arg(long, default_value = "5", value_parser = helios_server::config::parse_heartbeat_ttl)]
    heartbeat_ttl: std::time::Duration,
    /// The cluster key (64 hex digits) every server holds; peer messages are authenticated
    /// with it. Without one, a server uses the key in its --data-dir (helios-cluster.key), a
    /// bootstrap server beyond loopback generates one there, and on loopback peers are not
    /// authenticated. Prefer --cluster-key-file or the environment: flags show in `ps`.
    #[arg(long, env = "HELIOS_CLUSTER_KEY", hide_env_values = true, value_parser = parse_key, conflicts_with = "cluster_key_file")]
    cluster_key: Option<ClusterKey>,
    /// A file holding the cluster key (as written by a bootstrap server, or
    /// `helios-cli operator keygen`).
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Listen beyond loopback without TLS. Anyone who reaches the port can use the whole API:
    /// only on a network you trust.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    tls: TlsFlags,
    /// Every public call needs an ACL token whose policies grant it (`helios-cli acl
    /// bootstrap` makes the first). Give it to every server alike.
    #[arg(long)]
    acl_enabled: bool,
    /// Finished evaluations are forgotten this long after they finish (s, m, h, d).
    #[arg(long, default_value = "1h", value_parser = parse_gc_threshold)]
    eval_gc_threshold: u64,
    /// Finished allocations, and dead jobs (finished batch jobs, stopped jobs) with them, are
    /// forgotten this long after they finish.
    #[arg(long, default_value = "4h", value_parser = parse_gc_threshold)]
    job_gc_threshold: u64,
    /// Nodes down this long, with nothing unfinished on them, are forgotten.
    #[arg(long, default_value = "24h", value_parser = parse_gc_threshold)]
    node_gc_threshold: u64,
    /// Versions kept per job: older ones are forgotten (never the current one, nor one an
    /// allocation still refers to).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    job_max_versions: u32,
    /// A single-server development cluster that bootstraps itself.
    #[arg(long, conflicts_with_all = ["peers", "bootstrap"])]
    dev: bool,
    /// Serve Prometheus metrics on this address (docs/metrics.md); none when unset.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Send this server's spans to an OpenTelemetry collector's OTLP/gRPC port, as
    /// http://HOST:PORT (usually 4317); none when unset. docs/operations.md, "Tracing".
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

fn parse_gc_threshold(text: &str) -> Result<u64, String> {
    helios_core::time::parse_duration_ms(text)
}

fn config_from(args: Args) -> Result<ServerConfig, String> {
    let mut config = if args.dev {
        let id = args.node_id.unwrap_or(1);
        let own = vec![(id, args.rpc_addr.to_string())];
        ServerConfig::new(id, args.rpc_addr, own, true, args.data_dir).map_err(|e| e.to_string())?
    } else {
        // clap enforces --node-id unless --dev.
        let id = args.node_id.expect("clap requires --node-id without --dev");
        ServerConfig::new(id, args.rpc_addr, args.peers, args.bootstrap, args.data_dir).map_err(|e| e.to_string())?
    };
    config.snapshot_every = args.snapshot_every;
    config.event_buffer = usize::try_from(args.event_buffer).unwrap_or(helios_server::events::DEFAULT_BUFFER);
    config.heartbeat_ttl = args.heartbeat_ttl;
    config.insecure = args.insecure;
    config.acl_enabled = args.acl_enabled;
    config.gc = helios_core::gc::Thresholds {
        eval_ms: args.eval_gc_threshold,
        job_ms: args.job_gc_threshold,
        node_ms: args.node_gc_threshold,
        job_max_versions: args.job_max_versions,
    };
    config.tls = args.tls.load(Role::Server).map_err(|e| e.to_string())?;
    config.cluster_key = match (args.cluster_key, args.cluster_key_file) {
        (Some(key), _) => Some(key),
        (None, Some(path)) => Some(
            helios_server::security::read_key_file(&path)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("--cluster-key-file {}: no such file", path.display()))?,
        ),
        (None, None) => None,
    };
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let instance = args.node_id.unwrap_or(1).to_string();
    let exporter = match helios_server::telemetry::init(args.otlp_endpoint.as_deref(), &instance) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    return_freed_memory();
    exit_on_panic();
    if let Some(addr) = args.metrics_addr {
        if let Err(e) = helios_server::metrics::serve(addr) {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    }
    let metrics = args.metrics_addr.is_some();
    let mut config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    config.metrics = metrics;
    // SIGHUP: read the TLS certificates again (rotation without a restart).
    config.reload.on_sighup();
    let ran = helios_server::run(config, shutdown_signal()).await;
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A panic inside the store (redb meeting a damaged file while serving, or the store's own code)
/// leaves this server's state in doubt: it must not go on answering as if nothing happened. The
/// process ends, and a restart recovers from the database and the peers (or refuses a damaged
/// database at open). Other panics stay confined to their task, as tokio confines them: one in a
/// request handler fails that request, and one in Raft's replication to a peer must not take the
/// leader down with it.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if helios_server::store::checking_a_database() {
            return; // reported by `store::open` as a damaged database
        }
        report(info);
        let file = info.location().map_or("", |l| l.file());
        // redb, the state tables, Raft's log and state machine over them, and the record
        // migrations they decode through.
        let in_store = ["/redb-", "helios-server/src/store/", "helios-server/src/raft/log_store.rs"]
            .into_iter()
            .chain(["helios-server/src/raft/state_machine.rs", "helios-core/src/format.rs"])
            .any(|part| file.contains(part));
        if in_store {
            eprintln!(
                "Error: helios-server's store panicked (above); exiting rather than serving from a state in doubt"
            );
            std::process::exit(70);
        }
    }));
}

/// SIGTERM or Ctrl-C: stop accepting requests, finish those in flight, shut Raft down.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
