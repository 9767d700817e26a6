//! Reaching a server: the first of `--server-addr` that answers, with errors a person can act on.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use helios_api::acl::WithToken;
use helios_api::tls::{Role, Tls};
use helios_core::limits::MAX_MESSAGE_BYTES;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub struct Servers {
    endpoints: Vec<(String, Endpoint)>,
    tls: Option<Tls>,
    token: WithToken,
}

/// A connection to a server whose every call carries the CLI's ACL token, if it has one.
pub type Conn = InterceptedService<Channel, WithToken>;

impl Servers {
    /// `tls`: mutual TLS with the CLI's certificate; bare `host:port` addresses then mean
    /// `https://`, otherwise `http://`.
    pub fn parse(addrs: &[String], tls: Option<&Tls>, token: Option<&str>) -> Result<Servers> {
        let token = WithToken::new(token).map_err(|e| anyhow!("--token: {e}"))?;
        let mut endpoints = Vec::new();
        for addr in addrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let endpoint = helios_api::tls::endpoint(addr, tls, Role::Server)
                .map_err(|e| anyhow!("invalid --server-addr {addr:?}: {e}"))?;
            let url = endpoint.uri().to_string();
            let endpoint = endpoint
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
            bail!("--server-addr is empty; give an address such as 127.0.0.1:50051");
        }
        Ok(Servers { endpoints, tls: tls.cloned(), token })
    }

    /// A channel to the first server that answers. A connection is not enough: a stopped or
    /// hung server (or a proxy) can accept one and then say nothing, so the server's gRPC health
    /// check must answer too, within `ANSWER_TIMEOUT`.
    pub async fn connect(&self) -> Result<Conn> {
        let mut failures = Vec::new();
        for (url, endpoint) in &self.endpoints {
            match endpoint.connect().await {
                Ok(channel) => match serving(channel.clone()).await {
                    Ok(()) => return Ok(self.with_token(channel)),
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

    /// An endpoint for one particular server (`host:port`, as the membership lists it).
    pub fn endpoint_of(&self, addr: &str) -> Option<Endpoint> {
        helios_api::tls::endpoint(addr, self.tls.as_ref(), Role::Server).ok()
    }

    /// A connection of its own to the first server, for load generation.
    pub async fn dedicated(&self) -> Result<Conn> {
        let channel = self.endpoints[0].1.connect().await.context("connecting to the server")?;
        Ok(self.with_token(channel))
    }

    pub fn with_token(&self, channel: Channel) -> Conn {
        InterceptedService::new(channel, self.token.clone())
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

/// The CLI's TLS flags, or Nomad's and Helios's environment variables for them.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// The cluster's CA (PEM). With --tls-cert and --tls-key the CLI speaks mutual TLS
    /// [env: HELIOS_CACERT, or NOMAD_CACERT]
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A certificate of the cluster's CA, made with `tls cert create --cli`
    /// [env: HELIOS_CLIENT_CERT, or NOMAD_CLIENT_CERT]
    #[arg(long, global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert [env: HELIOS_CLIENT_KEY, or NOMAD_CLIENT_KEY]
    #[arg(long, global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// The region of the servers' role name (`server.<region>.helios`)
    #[arg(long, env = "HELIOS_REGION", default_value = helios_api::tls::DEFAULT_REGION, global = true)]
    pub region: String,
}

/// A flag's value, else the first of `vars` that is set.
fn flag_or_env(flag: &Option<std::path::PathBuf>, vars: [&str; 2]) -> Option<std::path::PathBuf> {
    flag.clone().or_else(|| vars.iter().find_map(|v| std::env::var_os(v).filter(|x| !x.is_empty()).map(Into::into)))
}

impl TlsArgs {
    pub fn load(&self) -> Result<Option<Tls>> {
        let files = helios_api::tls::TlsFiles::from_flags(
            flag_or_env(&self.tls_ca, ["HELIOS_CACERT", "NOMAD_CACERT"]),
            flag_or_env(&self.tls_cert, ["HELIOS_CLIENT_CERT", "NOMAD_CLIENT_CERT"]),
            flag_or_env(&self.tls_key, ["HELIOS_CLIENT_KEY", "NOMAD_CLIENT_KEY"]),
        )?;
        files.map(|files| Tls::load(&files, &self.region)).transpose().map_err(Into::into)
    }
}
