//! Reaching a server: the first of `--server-addr` that answers, with errors a person can act on.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use helios_core::limits::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};

pub struct Servers {
    endpoints: Vec<(String, Endpoint)>,
}

impl Servers {
    pub fn parse(addrs: &[String]) -> Result<Servers> {
        let mut endpoints = Vec::new();
        for addr in addrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow!("invalid --server-addr {addr:?}: {e}"))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                // A server that stops answering mid-stream (`logs -f`, `job run` watching) is
                // noticed instead of waited on forever.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            endpoints.push((url, endpoint));
        }
        if endpoints.is_empty() {
            bail!("--server-addr is empty; give a URL such as http://127.0.0.1:50051");
        }
        Ok(Servers { endpoints })
    }

    /// A channel to the first server that answers. A connection is not enough: a stopped or
    /// hung server (or a proxy) can accept one and then say nothing, so the server's gRPC health
    /// check must answer too, within `ANSWER_TIMEOUT`.
    pub async fn connect(&self) -> Result<Channel> {
        let mut failures = Vec::new();
        for (url, endpoint) in &self.endpoints {
            match endpoint.connect().await {
                Ok(channel) => match serving(channel.clone()).await {
                    Ok(()) => return Ok(channel),
                    Err(why) => failures.push(format!("{url} ({why})")),
                },
                Err(e) => failures.push(format!("{url} ({})", root_cause(&e))),
            }
        }
        bail!(
            "cannot reach a Helios server at {}; is it running? Point --server-addr (or HELIOS_ADDR) at a server",
            failures.join(", ")
        )
    }

    /// A separate channel per call site, for load generation.
    pub fn first_endpoint(&self) -> &Endpoint {
        &self.endpoints[0].1
    }
}

/// How long a server may take to answer its health check.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the server behind `channel` answers its health check and serves the job API.
async fn serving(channel: Channel) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let request = HealthCheckRequest { service: "helios.v1.JobService".to_string() };
    match tokio::time::timeout(ANSWER_TIMEOUT, HealthClient::new(channel).check(request)).await {
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
        Ok(Err(status)) => Err(status.message().to_string()),
        Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving => Ok(()),
        Ok(Ok(reply)) => Err(format!("not serving ({:?})", reply.get_ref().status())),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Turns a gRPC status into the one-line error the user sees.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable if status.message().contains("leader") => {
            anyhow!("{}", status.message())
        }
        tonic::Code::Unavailable => anyhow!("server unavailable: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

pub const MAX_MESSAGE: usize = MAX_MESSAGE_BYTES;
/// Largest answer the CLI accepts. List calls answer with everything in one message (there is
/// no paging yet), so a cluster's size, not a job's, bounds them.
pub const MAX_RESPONSE: usize = 256 * 1024 * 1024;
