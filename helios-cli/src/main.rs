//! `helios-cli`: the Helios command line.

mod alloc;
mod bench;
mod classic;
mod connect;
mod job;
mod jobfile;
mod node;
mod server;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::connect::Servers;

/// Exit codes: 0 success, 1 an error (one line on stderr), 2 a usage error (from clap).
#[derive(Parser, Debug)]
#[command(name = "helios-cli", version, about = "Run and inspect jobs on a Helios cluster")]
struct Cli {
    /// Server address(es), comma-separated or repeated; the CLI tries them in order.
    #[arg(
        long = "server-addr",
        env = "HELIOS_ADDR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server_addr: Vec<String>,
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
    /// Inspect and change the server cluster's membership.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Load generators that measure the cluster.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    #[command(flatten)]
    Classic(classic::ClassicCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let servers = match Servers::parse(&cli.server_addr) {
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
        Command::Server(cmd) => server::run(&servers, cmd).await,
        Command::Bench(cmd) => bench::run(&servers, cmd).await,
        Command::Classic(cmd) => classic::run(&servers, cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:#}");
    ExitCode::FAILURE
}
