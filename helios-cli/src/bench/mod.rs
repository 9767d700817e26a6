//! `helios-cli bench ...`: load generators whose figures go in `docs/performance.md`.
//!
//! - `submit`: committed job submissions per second (the Raft write path).
//! - `place`: placements committed per second, with simulated client agents.
//! - `start`: submit -> process started latency, against real agents.
//! - `node-loss`: a killed node's work running elsewhere, against real agents.
//! - `events`: submissions with and without event subscribers, event and blocking-read latency.

mod events;
mod node_loss;
mod place;
mod start;
mod submit;

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use hdrhistogram::Histogram;

use crate::connect::Servers;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Submit distinct jobs as fast as the cluster acknowledges them.
    Submit(submit::SubmitArgs),
    /// Register simulated client agents, submit jobs constrained to them, and measure how fast
    /// their allocations are placed, committed and delivered to the agents.
    Place(place::PlaceArgs),
    /// Submit one-task exec jobs to the cluster's real agents and measure the time from submit
    /// to the task's process being started.
    Start(start::StartArgs),
    /// SIGKILL the agent of a node running a service allocation (local cluster) and time until
    /// the node is marked down and the allocation runs elsewhere.
    NodeLoss(node_loss::NodeLossArgs),
    /// Submission throughput without and with event subscribers, the latency of events to a
    /// subscriber, and how fast a blocking read wakes.
    Events(events::EventsArgs),
}

pub async fn run(servers: &Servers, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Submit(args) => submit::run(servers, args).await,
        BenchCommand::Place(args) => place::run(servers, args).await,
        BenchCommand::Start(args) => start::run(servers, args).await,
        BenchCommand::NodeLoss(args) => node_loss::run(servers, args).await,
        BenchCommand::Events(args) => events::run(servers, args).await,
    }
}

/// A latency histogram in microseconds, 1 µs .. 10 min at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

/// `p50 .. ms, p99 .. ms, max .. ms`.
fn summary(h: &Histogram<u64>) -> String {
    let ms = |us: u64| Duration::from_micros(us).as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// The wall clock in milliseconds since the epoch (the unit of task event times).
fn now_ms() -> u64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX)
}
