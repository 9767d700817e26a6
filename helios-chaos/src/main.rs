//! `helios-chaos`: reliability runs against real Helios processes. `faults` injects kills,
//! pauses and network partitions while clients write, then checks that nothing acknowledged was
//! lost or duplicated and that no work ran twice; `crash` SIGKILLs servers during heavy writes;
//! `recovery` times restarts with many allocations stored. See `docs/reliability.md`.

mod api;
mod check;
mod cluster;
mod crash;
mod faults;
mod net;
mod observe;
mod procs;
mod recovery;
mod report;
mod rng;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "helios-chaos",
    version,
    about = "Fault injection, crash safety and recovery runs against real Helios servers and agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Three servers in network namespaces of their own and three agents; writers submit,
    /// update and stop jobs while servers are killed, paused and cut off and agents are killed,
    /// on a seeded schedule. Then the checker runs. Needs root (network namespaces).
    Faults(faults::FaultArgs),
    /// SIGKILL servers at random points during heavy writes, restarting each on its data; no
    /// acknowledged write may be lost.
    Crash(crash::CrashArgs),
    /// Time a SIGKILLed server's restart with many allocations stored.
    Recovery(recovery::RecoveryArgs),
}

/// Where a run keeps its files and finds the binaries.
#[derive(clap::Args, Debug, Clone)]
pub struct Dirs {
    /// Keep logs and data here, instead of in a temporary directory removed unless the run fails.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where helios-server, helios-client and helios-cli are; default: beside this program.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

impl Dirs {
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(procs::default_bin_dir)
    }
}

/// The options every checked run shares.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Seeds the schedule and the writers' choices; default: from the clock (printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub dirs: Dirs,
}

impl RunOptions {
    /// The seed given, or one from the clock.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(seed_from_clock)
    }

    /// Runs `body` in the work directory: the one given, or a temporary one that is kept (with
    /// its logs) only if the run fails.
    pub async fn in_work_dir<Fut>(&self, body: impl FnOnce(PathBuf) -> Fut) -> anyhow::Result<report::Report>
    where
        Fut: std::future::Future<Output = anyhow::Result<report::Report>>,
    {
        let (work, tmp) = cluster::work_dir(self.dirs.work_dir.as_deref())?;
        let outcome = body(work).await;
        let passed = matches!(&outcome, Ok(report) if !report.failed());
        if let (false, Some(tmp)) = (passed, tmp) {
            println!("logs and data kept in {}", tmp.keep().display());
        }
        outcome
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Interrupted (Ctrl-C, or SIGTERM from a time limit): the run is dropped, and with it every
    // process, task and namespace it started.
    tokio::select! {
        code = run(cli.command) => code,
        signal = interrupted() => {
            eprintln!("error: interrupted by {signal}; stopped every process the run started");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> ExitCode {
    let (report, json) = match command {
        Command::Faults(args) => {
            let json = args.run.json.clone();
            (faults::run(args).await, json)
        }
        Command::Crash(args) => {
            let json = args.run.json.clone();
            (crash::run(args).await, json)
        }
        Command::Recovery(args) => {
            return recovery::run(args).await.map_or_else(|e| run_error(&e), |()| ExitCode::SUCCESS);
        }
    };
    match report {
        Ok(report) => {
            report.print();
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("a report serializes");
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: writing {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => run_error(&e),
    }
}

/// A run that could not be carried out (as opposed to one that found failures): exit code 2.
fn run_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// `90s`, `30m`, `2h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("expected a duration like 90s, 30m or 2h, got {text:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
