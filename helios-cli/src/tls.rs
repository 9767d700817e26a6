//! `helios-cli tls ...`: the cluster's CA and its role certificates, as `nomad tls` makes them.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use helios_api::tls::generate::{self, Names, Pem, Validity, CA_FILE, CA_KEY_FILE};
use helios_api::tls::Role;

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// The cluster's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates for servers, client agents and the CLI, signed by the CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Write a new CA (helios-agent-ca.pem) and its key (helios-agent-ca-key.pem) here. Keep
    /// the key off the cluster's machines: only `tls cert create` needs it.
    Create {
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Write a certificate and key for one role here: `<region>-server-helios.pem` and
    /// `<region>-server-helios-key.pem` (or client, cli). The role is the SAN
    /// `server.<region>.helios` (--region, default global); server and client certificates
    /// also name localhost and 127.0.0.1.
    Create {
        /// For a server.
        #[arg(long, group = "role", required = true)]
        server: bool,
        /// For a client agent.
        #[arg(long, group = "role")]
        client: bool,
        /// For the CLI and other programs that use the public API.
        #[arg(long, group = "role")]
        cli: bool,
        /// The CA certificate that signs it.
        #[arg(long, default_value = CA_FILE)]
        ca: PathBuf,
        /// The CA's key.
        #[arg(long, default_value = CA_KEY_FILE)]
        key: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Another DNS name the certificate is valid for (the machine's name); repeatable.
        #[arg(long = "additional-dnsname")]
        dns: Vec<String>,
        /// Another IP address the certificate is valid for; repeatable.
        #[arg(long = "additional-ipaddress")]
        ips: Vec<IpAddr>,
    },
}

pub fn run(command: TlsCommand, region: &str) -> Result<()> {
    match command {
        TlsCommand::Ca(CaCommand::Create { days }) => {
            let ca = generate::new_ca(Validity::from_now(days))?;
            write_pair(&ca, Path::new(CA_FILE), Path::new(CA_KEY_FILE))?;
            println!("==> CA certificate saved to: {CA_FILE}");
            println!("==> CA certificate key saved to: {CA_KEY_FILE}");
        }
        TlsCommand::Cert(CertCommand::Create { server, client, ca, key, days, dns, ips, .. }) => {
            let role = if server {
                Role::Server
            } else if client {
                Role::Client
            } else {
                Role::Cli
            };
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {} (`tls ca create` makes it)", path.display()))
            };
            let authority = Pem { cert: read(&ca)?, key: read(&key)? };
            let names = Names { dns, ips };
            let pem = generate::new_cert(&authority, role, region, &names, Validity::from_now(days))?;
            let (cert_file, key_file) = generate::cert_file_names(role, region);
            write_pair(&pem, Path::new(&cert_file), Path::new(&key_file))?;
            println!("==> Using CA file {} and CA key {}", ca.display(), key.display());
            println!("==> {} certificate saved to: {cert_file}", role.as_str());
            println!("==> {} certificate key saved to: {key_file}", role.as_str());
        }
    }
    Ok(())
}

/// Writes a certificate (0644) and its key (0600), refusing to replace either.
fn write_pair(pem: &Pem, cert: &Path, key: &Path) -> Result<()> {
    for path in [cert, key] {
        if path.exists() {
            return Err(anyhow!("{} already exists; move it away first", path.display()));
        }
    }
    write_new(cert, pem.cert.as_bytes(), 0o644)?;
    write_new(key, pem.key.as_bytes(), 0o600)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}
