//! Prometheus metrics, scraped from `--metrics-addr` (docs/metrics.md lists every one): the
//! tasks this agent runs, recorded through the `metrics` facade where they start, restart and
//! end (`supervisor`), and the log bytes it serves (`log_service`).

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Every metric an agent exports: name, whether it is a counter (else a gauge), whether it has
/// labels, help. docs/metrics.md lists the same (helios-cli/tests/metrics.rs holds them together).
pub const METRICS: [(&str, bool, bool, &str); 7] = [
    ("helios_agent_tasks_running", false, false, "tasks this agent runs now"),
    ("helios_agent_task_starts_total", true, true, "tasks started, by driver"),
    ("helios_agent_task_restarts_total", true, false, "tasks restarted by their restart policy or on request"),
    ("helios_agent_oom_kills_total", true, false, "task runs that ended killed for exceeding their memory"),
    ("helios_agent_driver_errors_total", true, true, "tasks their driver could not start, by driver"),
    ("helios_agent_log_bytes_sent_total", true, false, "task log bytes sent to readers (alloc logs)"),
    ("helios_agent_up", false, false, "1 while the agent runs"),
];

/// Serves the Prometheus text exposition on `addr` (any path) for this process's metrics.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new().with_http_listener(addr).install().map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    for (name, is_counter, labelled, help) in METRICS {
        match (is_counter, labelled) {
            (true, true) => describe_counter!(name, help),
            (true, false) => {
                describe_counter!(name, help);
                drop(counter!(name));
            }
            (false, _) => {
                describe_gauge!(name, help);
                drop(gauge!(name));
            }
        }
    }
    // The labelled ones, for every driver, so each shows before its first event too.
    for driver in ["exec", "raw_exec", "docker"] {
        drop(counter!("helios_agent_task_starts_total", "driver" => driver));
        drop(counter!("helios_agent_driver_errors_total", "driver" => driver));
    }
    gauge!("helios_agent_up").set(1.0);
    Ok(())
}

/// A task counted in `helios_agent_tasks_running` while this lives: dropped when the run ends,
/// or when its supervisor is dropped mid-run (an allocation's runner aborted), never leaked.
pub(crate) struct RunningTask;

impl RunningTask {
    pub(crate) fn start() -> RunningTask {
        gauge!("helios_agent_tasks_running").increment(1.0);
        RunningTask
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        gauge!("helios_agent_tasks_running").decrement(1.0);
    }
}
