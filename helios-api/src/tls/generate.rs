//! Making the cluster's CA and its role certificates (`helios-cli tls ca create`, `tls cert
//! create`), with the file names Nomad uses, `nomad` spelled `helios`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Role, TlsError};

pub const CA_FILE: &str = "helios-agent-ca.pem";
pub const CA_KEY_FILE: &str = "helios-agent-ca-key.pem";

/// `global-server-helios.pem` and `global-server-helios-key.pem`.
pub fn cert_file_names(role: Role, region: &str) -> (String, String) {
    let stem = format!("{region}-{}-helios", role.as_str());
    (format!("{stem}.pem"), format!("{stem}-key.pem"))
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// When a certificate is valid: from `not_before`, for `days`.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub days: u32,
}

impl Validity {
    pub fn from_now(days: u32) -> Validity {
        // A minute of slack for clocks that lag the one that made the certificate.
        Validity { not_before: SystemTime::now() - Duration::from_secs(60), days }
    }

    fn apply(self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = (self.not_before + Duration::from_secs(u64::from(self.days) * 86_400)).into();
    }
}

fn failed(e: rcgen::Error) -> TlsError {
    TlsError::Certificate(format!("making a certificate: {e}"))
}

/// A new CA that signs the cluster's certificates.
pub fn new_ca(validity: Validity) -> Result<Pem, TlsError> {
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.distinguished_name.push(DnType::CommonName, "Helios Agent CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity.apply(&mut params);
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// What a role certificate names besides its role.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// A certificate of `role` in `region`, signed by `ca`. Server and client certificates also
/// name `localhost` and 127.0.0.1, as Nomad's do, so a local cluster works out of the box.
pub fn new_cert(ca: &Pem, role: Role, region: &str, names: &Names, validity: Validity) -> Result<Pem, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| TlsError::Certificate(format!("the CA key: {e}")))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| TlsError::Certificate(format!("the CA: {e}")))?;
    let mut sans = vec![role.san(region)];
    if role != Role::Cli {
        sans.push("localhost".to_string());
        sans.push("127.0.0.1".to_string());
    }
    sans.extend(names.dns.iter().cloned());
    sans.extend(names.ips.iter().map(ToString::to_string));
    sans.dedup();
    let mut params = CertificateParams::new(sans).map_err(failed)?;
    params.distinguished_name.push(DnType::CommonName, role.san(region));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Servers dial servers and agents, and agents serve logs: every role is both.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity.apply(&mut params);
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &issuer).map_err(failed)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents
    }

    #[test]
    fn a_role_certificate_names_its_role_in_its_region_only() {
        let ca = new_ca(Validity::from_now(10)).expect("ca");
        let names = Names { dns: vec!["helios.example".into()], ips: vec!["10.0.0.5".parse().unwrap()] };
        let server = new_cert(&ca, Role::Server, "eu", &names, Validity::from_now(1)).expect("cert");
        assert_eq!(super::super::roles_of(&der(&server.cert), "eu"), vec![Role::Server]);
        assert!(super::super::roles_of(&der(&server.cert), "global").is_empty());
        let cli = new_cert(&ca, Role::Cli, "eu", &Names::default(), Validity::from_now(1)).expect("cert");
        assert_eq!(super::super::roles_of(&der(&cli.cert), "eu"), vec![Role::Cli]);
        assert_eq!(cert_file_names(Role::Client, "global").0, "global-client-helios.pem");
    }
}
