//! Mutual TLS for every gRPC connection: servers, agents and the CLI each hold a certificate
//! from the cluster's CA, and what a certificate may do is its **role**, a SAN naming it, as
//! Nomad's `server.<region>.nomad`:
//!
//! - `server.<region>.helios`: a server. Only servers may call the peer API, and servers dial
//!   each other and agents expecting this name.
//! - `client.<region>.helios`: a client agent. It may call the agent API; agents serve task logs
//!   to servers only.
//! - `cli.<region>.helios`: a person or a program: the public API only.
//!
//! rustls checks the chain and the dates of every certificate; `RequireRole` then checks the
//! role, per service. `generate` makes the CA and certificates (`helios-cli tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

pub mod generate;
pub mod reload;

pub use reload::Reload;

pub const DEFAULT_REGION: &str = "global";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Cli,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Server, Role::Client, Role::Cli];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Cli => "cli",
        }
    }

    /// The SAN a certificate of this role carries: `server.global.helios`.
    pub fn san(self, region: &str) -> String {
        format!("{}.{region}.helios", self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-ca, --tls-cert and --tls-key go together: {0} is missing")]
    Incomplete(&'static str),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("{0}")]
    Certificate(String),
}

/// The three PEM files a TLS-enabled process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// All three flags, or none (TLS off); one or two is an error.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (None, _, _) => Err(TlsError::Incomplete("--tls-ca")),
            (_, None, _) => Err(TlsError::Incomplete("--tls-cert")),
            (_, _, None) => Err(TlsError::Incomplete("--tls-key")),
        }
    }
}

/// The TLS flags of `helios-server` and `helios-client`, alike but for the role their
/// certificate must hold.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsFlags {
    /// The cluster's CA (PEM): with --tls-cert and --tls-key, every connection is mutual TLS,
    /// and only certificates of this CA are accepted (`helios-cli tls ca create`).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), of its role: `helios-cli tls cert create --server` for
    /// a server, `--client` for an agent.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The region in the certificates' role names (`server.<region>.helios`).
    #[arg(long, default_value = DEFAULT_REGION)]
    pub region: String,
}

impl TlsFlags {
    /// The certificates, if the three files are given; this process's must hold `role`.
    pub fn load(&self, role: Role) -> Result<Option<Tls>, TlsError> {
        let Some(files) = TlsFiles::from_flags(self.tls_ca.clone(), self.tls_cert.clone(), self.tls_key.clone())?
        else {
            return Ok(None);
        };
        let tls = Tls::load(&files, &self.region)?;
        tls.require_own_role(role)?;
        Ok(Some(tls))
    }
}

/// A loaded CA and identity, and the region whose role names apply.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
    pub region: String,
    /// The roles this process's own certificate holds in `region`.
    pub roles: Vec<Role>,
    pub files: TlsFiles,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("region", &self.region).field("roles", &self.roles).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.display().to_string(), problem: e.to_string() })
}

/// The DER of the first certificate in a PEM file.
fn first_der(path: &Path, pem: &[u8]) -> Result<Vec<u8>, TlsError> {
    let bad = |problem: &str| TlsError::File { path: path.display().to_string(), problem: problem.to_string() };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| bad("not a PEM certificate"))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(&format!("holds a {}, not a CERTIFICATE", pem.label)));
    }
    Ok(pem.contents)
}

/// The roles a DER certificate holds in `region`.
pub fn roles_of(der: &[u8], region: &str) -> Vec<Role> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    let names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(name) => Some(*name),
            _ => None,
        })
        .collect();
    Role::ALL.into_iter().filter(|role| names.contains(&role.san(region).as_str())).collect()
}

impl Tls {
    /// Reads the CA, the certificate and its key, refusing a certificate that is expired, not
    /// yet valid, or holds no role in `region`.
    pub fn load(files: &TlsFiles, region: &str) -> Result<Tls, TlsError> {
        let ca_pem = read(&files.ca)?;
        first_der(&files.ca, &ca_pem)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let der = first_der(&files.cert, &cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::File {
            path: files.cert.display().to_string(),
            problem: format!("not a certificate: {e}"),
        })?;
        let validity = cert.validity();
        if !validity.is_valid() {
            return Err(TlsError::Certificate(format!(
                "{} is valid from {} to {}, not now: make a new one with `helios-cli tls cert create`",
                files.cert.display(),
                validity.not_before,
                validity.not_after
            )));
        }
        let roles = roles_of(&der, region);
        if roles.is_empty() {
            return Err(TlsError::Certificate(format!(
                "{} holds no Helios role in region {region:?} (a SAN such as {}): make one with \
                 `helios-cli tls cert create --server|--client|--cli --region {region}`",
                files.cert.display(),
                Role::Server.san(region)
            )));
        }
        Ok(Tls {
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
            region: region.to_string(),
            roles,
            files: files.clone(),
        })
    }

    /// Refuses to run a process whose certificate lacks the role it acts in.
    pub fn require_own_role(&self, role: Role) -> Result<(), TlsError> {
        if self.roles.contains(&role) {
            return Ok(());
        }
        let held: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        Err(TlsError::Certificate(format!(
            "{} is a {} certificate; this needs a {} one (`helios-cli tls cert create --{}`)",
            self.files.cert.display(),
            held.join("/"),
            role.as_str(),
            role.as_str()
        )))
    }

    /// Serving: present this identity, and require a client certificate from the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// Dialling a `peer`: trust only the CA, expect the peer's role name, present this identity.
    pub fn client_config(&self, peer: Role) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer.san(&self.region))
    }
}

/// An endpoint for a server URL or `host:port`: `https://` with `tls` (trusting only its CA,
/// expecting `peer`'s role name, presenting this process's certificate), `http://` without.
/// A scheme that contradicts the TLS flags is an error rather than a silent downgrade.
pub fn endpoint(url: &str, tls: Option<&Tls>, peer: Role) -> Result<tonic::transport::Endpoint, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let endpoint = |url: String| tonic::transport::Endpoint::from_shared(url).map_err(|e| e.to_string());
    match (scheme, tls) {
        (Some("https") | None, Some(tls)) => {
            endpoint(format!("https://{rest}"))?.tls_config(tls.client_config(peer)).map_err(|e| e.to_string())
        }
        (Some("http") | None, None) => endpoint(format!("http://{rest}")),
        (Some("http"), Some(_)) => Err(format!("{url}: with TLS certificates given, use https://")),
        (Some("https"), None) => Err(format!("{url}: https needs --tls-ca, --tls-cert and --tls-key")),
        (Some(other), _) => Err(format!("{url}: unknown scheme {other:?} (http or https)")),
    }
}

/// Admits a call only if the caller's certificate holds one of `allowed` (or TLS is off).
#[derive(Clone)]
pub struct RequireRole {
    allowed: &'static [Role],
    /// `None`: plaintext, nothing to check.
    region: Option<Arc<str>>,
}

impl RequireRole {
    pub fn new(allowed: &'static [Role], tls: Option<&Tls>) -> RequireRole {
        RequireRole { allowed, region: tls.map(|t| Arc::from(t.region.as_str())) }
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(region) = &self.region else { return Ok(()) };
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("this server requires a client certificate from its CA"))?;
        let held: Vec<Role> = certs.first().map(|c| roles_of(c.as_ref(), region)).unwrap_or_default();
        if held.iter().any(|r| self.allowed.contains(r)) {
            return Ok(());
        }
        let wanted: Vec<&str> = self.allowed.iter().map(|r| r.as_str()).collect();
        let held: Vec<&str> = held.iter().map(|r| r.as_str()).collect();
        Err(Status::permission_denied(format!(
            "this service takes {} certificates; the caller's is {}",
            wanted.join(" or "),
            if held.is_empty() { format!("not one of region {region}") } else { held.join("/") }
        )))
    }
}

impl Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// The roles each service admits.
pub mod roles {
    use super::Role;
    /// `RaftPeer`.
    pub const PEERS: &[Role] = &[Role::Server];
    /// `AgentService`.
    pub const AGENTS: &[Role] = &[Role::Client, Role::Server];
    /// `ClientService`, on agents: task logs, relayed by servers.
    pub const SERVERS: &[Role] = &[Role::Server];
    /// The public API.
    pub const ANYONE: &[Role] = &[Role::Server, Role::Client, Role::Cli];
}
