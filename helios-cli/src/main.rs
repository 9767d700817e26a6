//! `helios-cli`: the Helios command line.

mod acl;
mod alloc;
mod bench;
mod classic;
mod connect;
mod deployment;
mod events;
mod job;
mod jobfile;
mod json;
mod node;
mod placement;
mod server;
mod service;
mod snapshot;
mod system;
mod table;
mod tls;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::connect::Servers;

/// Exit codes: 0 success, 1 an error (one line on stderr), 2 a usage error (from clap).
#[derive(Parser, Debug)]
#[command(name = "helios-cli", version, about = "Run and inspect jobs on a Helios cluster")]
struct Cli {
    /// Server address(es), comma-separated or repeated; the CLI tries them in order. `host:port`
    /// or a URL: http://, or https:// with the TLS flags (a bare address follows them).
    #[arg(
        long = "server-addr",
        env = "HELIOS_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051",
        global = true
    )]
    server_addr: Vec<String>,
    #[command(flatten)]
    tls: connect::TlsArgs,
    /// The ACL token's secret for servers with --acl-enabled [env: HELIOS_TOKEN, or NOMAD_TOKEN]
    #[arg(long, env = "HELIOS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit, inspect and stop jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Inspect allocations and read their tasks' logs.
    #[command(subcommand)]
    Alloc(alloc::AllocCommand),
    /// Inspect client nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// The service catalog: services of running allocations and their health.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Deployments: the rollouts of service jobs' versions (promote, pause, resume, fail).
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Follow the cluster's changes as they happen: jobs, allocations, nodes, evaluations,
    /// deployments.
    Events(events::EventsArgs),
    /// Inspect and change the server cluster's membership.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Operator tools: cluster keys, snapshots of the whole state.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Cluster-wide maintenance: garbage collection.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// ACL bootstrap, policies and tokens.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Make the cluster's CA and certificates for mutual TLS (no server needed).
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Load generators that measure the cluster.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    #[command(flatten)]
    Classic(classic::ClassicCommand),
    /// Print shell completions: `helios-cli completions bash > /etc/bash_completion.d/helios-cli`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Print a new cluster key (64 hex digits) for `helios-server --cluster-key-file`: put it in
    /// a file readable only by the servers' user, the same on every server.
    Keygen,
    /// Save the cluster's whole state to a file, or inspect one.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

/// 32 random bytes as hex: a `helios-server` cluster key.
fn keygen() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::main]
async fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if let Command::Completions { shell } = cli.command {
        // Into memory first: clap_complete panics on a closed pipe (`... | head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "helios-cli", &mut script);
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return ExitCode::SUCCESS;
    }
    if let Command::Operator(OperatorCommand::Keygen) = cli.command {
        return match keygen() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    if let Command::Operator(OperatorCommand::Snapshot(snapshot::SnapshotCommand::Inspect { file })) = &cli.command {
        return match snapshot::inspect(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Command::Tls(command) = cli.command {
        return match tls::run(command, &cli.tls.region) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let tls = match cli.tls.load() {
        Ok(tls) => tls,
        Err(e) => return fail(&e),
    };
    let token = match acl::resolve_token(cli.token.clone()) {
        Ok(token) => token,
        Err(e) => return fail(&e),
    };
    let servers = match Servers::parse(&cli.server_addr, tls.as_ref(), token.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let result = match cli.command {
        // `job plan` has exit codes of its own (Nomad's).
        Command::Job(cmd) => match job::run(&servers, cmd).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Alloc(cmd) => alloc::run(&servers, cmd).await,
        Command::Node(cmd) => node::run(&servers, cmd).await,
        Command::Service(cmd) => service::run(&servers, cmd).await,
        Command::Deployment(cmd) => deployment::run(&servers, cmd).await,
        Command::Events(args) => events::run(&servers, args).await,
        Command::Acl(cmd) => acl::run(&servers, cmd).await,
        Command::Server(cmd) => server::run(&servers, cmd).await,
        Command::System(cmd) => system::run(&servers, cmd).await,
        Command::Bench(cmd) => bench::run(&servers, cmd).await,
        Command::Classic(cmd) => classic::run(&servers, cmd).await,
        Command::Operator(OperatorCommand::Snapshot(cmd)) => snapshot::run(&servers, cmd).await,
        Command::Completions { .. } | Command::Operator(OperatorCommand::Keygen) | Command::Tls(_) => {
            unreachable!("answered before connecting")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A usage error as one line (exit code 2), keeping clap's tip (the subcommand or value a typo
/// was probably meant to be). Help and version print as clap prints them.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(2);
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(code);
    }
    let text = e.to_string();
    // The message is its first paragraph (a missing argument's name is on the next line).
    let paragraph: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let what = paragraph.join(" ");
    let what = what.trim_start_matches("error: ");
    let hints: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("tip: ")).collect();
    if hints.is_empty() {
        eprintln!("Error: {what}; see --help");
    } else {
        eprintln!("Error: {what} ({}); see --help", hints.join("; "));
    }
    ExitCode::from(code)
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:#}");
    ExitCode::FAILURE
}

/// `helios-cli job history web | head`: once the reader has gone, the command ends quietly with
/// 141 (a shell's code for a tool that SIGPIPE ended), as other command-line tools do. Rust
/// ignores SIGPIPE, so a print to the closed pipe panics instead; restoring the signal would
/// need `unsafe`, which the workspace forbids, so the panic is caught here.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}
