//! TLS for members: a cluster CA and, per member, a serving certificate for clients, a peer
//! certificate (server and client, for member-to-member traffic) and a client certificate the
//! engine uses itself. etcd runs with `client-cert-auth` on both listeners, so every connection
//! is mutual TLS.
//!
//! On the host, what etcd needs is mounted into the container (`pki/`); the engine's client
//! identity (`client/`) and the CA key (`ca/`, to issue certificates for members that join from
//! this host later) stay outside it.

use std::net::IpAddr;
use std::path::Path;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{Error, IoContext, Result};
use crate::layout::MemberPaths;
use crate::names::MemberName;
use crate::write_atomic;

/// The cluster CA: certificate and private key, PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { key: <redacted> }") // never print a private key
    }
}

/// A client identity for etcd: the CA to trust and our certificate and key, PEM.
#[derive(Clone)]
pub struct ClientTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { key: <redacted> }")
    }
}

/// Everything a member needs, PEM (the CA certificate, not its key).
pub struct MemberCerts {
    pub ca_cert: String,
    pub server: (String, String),
    pub peer: (String, String),
    pub client: (String, String),
}

impl MemberCerts {
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.ca_cert.clone(),
            cert: self.client.0.clone(),
            key: self.client.1.clone(),
        }
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Command {
        command: format!("generating {what}"),
        message: e.to_string(),
    }
}

/// Validity from now for `years` (etcd refuses expired certificates: renew before then).
fn validity(params: &mut CertificateParams, years: i32) {
    let now = chrono::Utc::now();
    params.not_before = rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8);
    params.not_after = rcgen::date_time_ymd(now.year() + years, now.month() as u8, now.day().min(28) as u8);
}

pub fn new_ca(cluster: &str) -> Result<Ca> {
    let key = KeyPair::generate().map_err(|e| tls_err("a CA key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("runc-etcd CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 10);
    let cert = params.self_signed(&key).map_err(|e| tls_err("a CA", e))?;
    Ok(Ca {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate's identity: `sha256:` and the hex SHA-256 of its DER form (the same for the same
/// certificate however its PEM is wrapped). None if `pem` holds no certificate.
pub fn fingerprint(pem: &str) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(format!("sha256:{}", hex::encode(sha2::Sha256::digest(der.as_ref()))))
}

/// Reads `ca.crt` and `ca.key` from a folder copied from a member's `ca/`.
pub fn load_ca(dir: &Path) -> Result<Ca> {
    let fix = format!(
        "copy /var/lib/runc-etcd/<cluster>/ca/ from a member host (it holds ca.crt and ca.key) and pass that folder; got {}",
        dir.display()
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| Error::invalid("--ca-from", format!("{f}: {e}"), fix.clone()))
    };
    let ca = Ca {
        cert: read("ca.crt")?,
        key: read("ca.key")?,
    };
    let key =
        KeyPair::from_pem(&ca.key).map_err(|e| Error::invalid("--ca-from", format!("ca.key: {e}"), fix.clone()))?;
    Issuer::from_ca_cert_pem(&ca.cert, key).map_err(|e| Error::invalid("--ca-from", format!("ca.crt: {e}"), fix))?;
    Ok(ca)
}

fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| tls_err("a certificate", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| tls_err("a certificate", e))?;
    let key = KeyPair::generate().map_err(|e| tls_err("a key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = usages;
    validity(&mut params, 3);
    let cert = params.signed_by(&key, &issuer).map_err(|e| tls_err(cn, e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a member's certificates from the cluster CA. The serving and peer certificates name
/// the member's address (clients and peers connect by IP) and localhost.
pub fn issue(ca: &Ca, name: &MemberName, ip: IpAddr) -> Result<MemberCerts> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    Ok(MemberCerts {
        ca_cert: ca.cert.clone(),
        server: issue_server(ca, &format!("{name} server"), ip)?,
        peer: leaf(
            ca,
            &format!("{name} peer"),
            serving_names(ip),
            vec![ServerAuth, ClientAuth],
        )?,
        client: leaf(ca, &format!("{name} runc-etcd client"), vec![], vec![ClientAuth])?,
    })
}

fn serving_names(ip: IpAddr) -> Vec<SanType> {
    vec![
        SanType::IpAddress(ip),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::DnsName("localhost".try_into().expect("a valid DNS name")),
    ]
}

/// A serving certificate and key for `ip` (and localhost), PEM.
pub fn issue_server(ca: &Ca, cn: &str, ip: IpAddr) -> Result<(String, String)> {
    leaf(ca, cn, serving_names(ip), vec![ExtendedKeyUsagePurpose::ServerAuth])
}

/// A client identity (for the controller and for users) issued by the cluster CA.
pub fn issue_client(ca: &Ca, cn: &str) -> Result<ClientTls> {
    let (cert, key) = leaf(ca, cn, vec![], vec![ExtendedKeyUsagePurpose::ClientAuth])?;
    Ok(ClientTls {
        ca: ca.cert.clone(),
        cert,
        key,
    })
}

/// Writes the files: `pki/` (mounted into the container), `client/` and, given the CA (the host
/// CLI keeps it so later members can join from this host; the agent never has it), `ca/` (not
/// mounted). Keys are 0600, their folders 0700.
pub fn write(paths: &MemberPaths, certs: &MemberCerts, ca: Option<&Ca>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dirs = [paths.pki(), paths.client()].into_iter().chain(ca.map(|_| paths.ca()));
    for dir in dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx("creating a TLS folder", &dir)?;
    }
    let mut files = vec![
        (paths.pki().join("ca.crt"), &certs.ca_cert),
        (paths.pki().join("server.crt"), &certs.server.0),
        (paths.pki().join("server.key"), &certs.server.1),
        (paths.pki().join("peer.crt"), &certs.peer.0),
        (paths.pki().join("peer.key"), &certs.peer.1),
        (paths.client().join("ca.crt"), &certs.ca_cert),
        (paths.client().join("client.crt"), &certs.client.0),
        (paths.client().join("client.key"), &certs.client.1),
    ];
    if let Some(ca) = ca {
        files.extend([
            (paths.ca().join("ca.crt"), &ca.cert),
            (paths.ca().join("ca.key"), &ca.key),
        ]);
    }
    for (path, pem) in files {
        write_atomic(&path, pem.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// The engine's client identity for a member with TLS.
pub fn read_client(paths: &MemberPaths) -> Result<ClientTls> {
    let read = |f: &str| {
        std::fs::read_to_string(paths.client().join(f)).ctx("reading the client identity", paths.client().join(f))
    };
    Ok(ClientTls {
        ca: read("ca.crt")?,
        cert: read("client.crt")?,
        key: read("client.key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_certs_chain_to_a_loaded_ca() {
        let ca = new_ca("etcd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert).unwrap();
        std::fs::write(dir.path().join("ca.key"), &ca.key).unwrap();
        let loaded = load_ca(dir.path()).unwrap();
        let certs = issue(&loaded, &MemberName::new("h1").unwrap(), "10.0.0.1".parse().unwrap()).unwrap();
        assert!(certs.server.0.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(format!("{:?}", certs.client_tls()).contains("redacted"));
    }

    #[test]
    fn a_fingerprint_names_one_certificate_however_it_is_wrapped() {
        let (a, b) = (new_ca("a").unwrap(), new_ca("a").unwrap());
        let fa = fingerprint(&a.cert).unwrap();
        assert!(fa.starts_with("sha256:") && fa.len() == 7 + 64, "{fa}");
        assert_eq!(fingerprint(&a.cert.replace('\n', "\r\n")).as_ref(), Some(&fa));
        assert_ne!(fingerprint(&b.cert).unwrap(), fa, "another CA of the same name");
        assert_eq!(fingerprint("not a certificate"), None);
    }

    #[test]
    fn a_missing_ca_names_the_flag() {
        let e = load_ca(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("--ca-from") && e.contains("ca/"), "{e}");
    }
}
