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
use std::time::Duration;

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

/// A member's certificates as the controller issues them for the key its host made, PEM: no
/// private key, which never leaves the host (`new_key`, `request`).
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCerts {
    /// The trust bundle.
    pub ca_cert: String,
    pub server: String,
    pub peer: String,
    pub client: String,
}

impl MemberCerts {
    /// A member's files: its issued certificates, which all certify `key` (PEM).
    pub fn with_key(issued: IssuedCerts, key: &str) -> MemberCerts {
        MemberCerts {
            ca_cert: issued.ca_cert,
            server: (issued.server, key.to_string()),
            peer: (issued.peer, key.to_string()),
            client: (issued.client, key.to_string()),
        }
    }

    /// The certificates alone.
    pub fn issued(&self) -> IssuedCerts {
        IssuedCerts {
            ca_cert: self.ca_cert.clone(),
            server: self.server.0.clone(),
            peer: self.peer.0.clone(),
            client: self.client.0.clone(),
        }
    }

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

/// How long a leaf certificate is valid unless the cluster says otherwise: 3 years.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(3 * 365 * 24 * 3600);

/// Leaves are dated a minute back: a host whose clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

/// The CA's validity from today for `years` (etcd refuses expired certificates).
fn validity(params: &mut CertificateParams, years: i32) {
    let now = chrono::Utc::now();
    params.not_before = rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8);
    params.not_after = rcgen::date_time_ymd(now.year() + years, now.month() as u8, now.day().min(28) as u8);
}

/// How leaves are issued: how long they are valid, and the names a member's serving
/// certificate carries besides its address and localhost (the client Service's DNS names and
/// ClusterIP).
#[derive(Debug, Clone)]
pub struct Policy {
    pub validity: Duration,
    pub service_names: Vec<String>,
    pub service_ips: Vec<IpAddr>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            validity: LEAF_VALIDITY,
            service_names: vec![],
            service_ips: vec![],
        }
    }
}

impl Policy {
    /// The policy's names, as `CertInfo::names` spells them.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        let ips = self.service_ips.iter().map(|ip| ip.to_string());
        self.service_names.iter().cloned().chain(ips)
    }
}

pub fn new_ca(cluster: &str) -> Result<Ca> {
    let key = KeyPair::generate().map_err(|e| tls_err("a CA key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("runc-etcd CA {cluster}"));
    // A second CA of the same cluster (a rotation) gets its own name: leaves then say by their
    // issuer which of the two signed them.
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ").to_string(),
    );
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

/// The fingerprint of every certificate in a PEM bundle (a trust bundle holds one CA, or two
/// during a rotation), in order.
pub fn bundle_fingerprints(pem: &str) -> Vec<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(|der| der.ok())
        .map(|der| format!("sha256:{}", hex::encode(sha2::Sha256::digest(der.as_ref()))))
        .collect()
}

/// A trust bundle of `cas`, in order, without repeats.
pub fn bundle<'a>(cas: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for pem in cas {
        let fp = bundle_fingerprints(pem);
        if !fp.is_empty() && !seen.contains(&fp) {
            out.push_str(pem.trim_end());
            out.push('\n');
            seen.push(fp);
        }
    }
    out
}

/// The subject of a CA certificate, as `CertInfo::issuer` spells an issuer.
pub fn subject(pem: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(pem.as_bytes()).ok()?;
    Some(pem.parse_x509().ok()?.subject().to_string())
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

/// The key a leaf certifies.
enum Subject<'a> {
    /// A new key, made here.
    NewKey,
    /// This key (PEM), certified again (a renewal: etcd, which reads its files at each
    /// handshake, then never sees a certificate beside a key it does not match).
    Key(&'a str),
    /// The public key of a request (`request`): the private key is elsewhere.
    Requested(&'a rcgen::PublicKey),
}

/// A leaf signed by `ca`, valid from a minute ago for `validity`, and its key (PEM; empty for
/// a requested one).
fn leaf(
    ca: &Ca,
    cn: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    validity: Duration,
    subject: Subject,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| tls_err("a certificate", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| tls_err("a certificate", e))?;
    let key = match subject {
        Subject::Key(pem) => KeyPair::from_pem(pem).map_err(|e| tls_err("a certificate from its key", e))?,
        Subject::NewKey => KeyPair::generate().map_err(|e| tls_err("a key", e))?,
        Subject::Requested(public) => {
            let cert = leaf_params(cn, sans, usages, validity)
                .signed_by(public, &issuer)
                .map_err(|e| tls_err(cn, e))?;
            return Ok((cert.pem(), String::new()));
        }
    };
    let cert = leaf_params(cn, sans, usages, validity)
        .signed_by(&key, &issuer)
        .map_err(|e| tls_err(cn, e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn leaf_params(
    cn: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = usages;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

/// A private key for a member, made on its host (PEM; write it 0600). Its three certificates
/// certify it.
pub fn new_key() -> Result<String> {
    Ok(KeyPair::generate().map_err(|e| tls_err("a key", e))?.serialize_pem())
}

/// A certificate signing request for member `name`'s `key` (PEM): what its agent sends the
/// controller, which answers with `issue_requested`.
pub fn request(name: &MemberName, key: &str) -> Result<String> {
    let key = KeyPair::from_pem(key).map_err(|e| tls_err("a request from the member's key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name.as_str());
    let csr = params
        .serialize_request(&key)
        .map_err(|e| tls_err("a certificate request", e))?;
    csr.pem().map_err(|e| tls_err("a certificate request", e))
}

/// Reads member `name`'s request: its signature must verify (its sender holds the key) and its
/// subject must be the member. What it asks for besides its key is ignored: the names are the
/// controller's to choose.
fn read_request(csr: &str, name: &MemberName) -> Result<rcgen::PublicKey> {
    let refused = |why: String| Error::Refused(format!("the certificate request of member {name}: {why}"));
    let req = rcgen::CertificateSigningRequestParams::from_pem(csr).map_err(|e| refused(e.to_string()))?;
    let cn = req
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(dn_text)
        .unwrap_or_default();
    if cn != name.as_str() {
        return Err(refused(format!("it is for \"{cn}\", not for the member")));
    }
    Ok(req.public_key)
}

fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        _ => String::new(),
    }
}

/// Issues member `name`'s certificates for the key of its request `csr` (`request`), with the
/// names `issue` gives (its address, localhost, the policy's Service names).
pub fn issue_requested(ca: &Ca, name: &MemberName, ip: IpAddr, policy: &Policy, csr: &str) -> Result<IssuedCerts> {
    let public = read_request(csr, name)?;
    let certs = issue_with(ca, name, ip, policy, |_| Subject::Requested(&public))?;
    Ok(IssuedCerts {
        ca_cert: certs.ca_cert,
        server: certs.server.0,
        peer: certs.peer.0,
        client: certs.client.0,
    })
}

impl IssuedCerts {
    /// Whether all three certificates certify the key of request `csr`.
    pub fn certify(&self, csr: &str) -> bool {
        [&self.server, &self.peer, &self.client]
            .iter()
            .all(|c| certifies_request(c, csr))
    }
}

/// Whether a certificate certifies the key of request `csr` (a host that lost its key makes a
/// new one, and its old certificates are then of no use to it).
pub fn certifies_request(cert: &str, csr: &str) -> bool {
    use x509_parser::prelude::*;
    let requested = parse_x509_pem(csr.as_bytes()).ok().and_then(|(_, p)| {
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&p.contents).ok()?;
        Some(req.certification_request_info.subject_pki.raw.to_vec())
    });
    let certified = parse_x509_pem(cert.as_bytes()).ok().and_then(|(_, p)| {
        let c = p.parse_x509().ok()?;
        Some(c.tbs_certificate.subject_pki.raw.to_vec())
    });
    requested.is_some() && requested == certified
}

/// Issues a member's certificates from the cluster CA. The serving and peer certificates name
/// the member's address (clients and peers connect by IP) and localhost; the serving one also
/// the policy's Service names. With `renewing`, each certificate keeps its key.
pub fn issue(
    ca: &Ca,
    name: &MemberName,
    ip: IpAddr,
    policy: &Policy,
    renewing: Option<&MemberCerts>,
) -> Result<MemberCerts> {
    let keys = renewing.map(|c| [c.server.1.as_str(), c.peer.1.as_str(), c.client.1.as_str()]);
    issue_with(ca, name, ip, policy, |i| match keys {
        Some(k) => Subject::Key(k[i]),
        None => Subject::NewKey,
    })
}

/// `issue`, each certificate (0: server, 1: peer, 2: client) for the key `subject` gives.
fn issue_with<'a>(
    ca: &Ca,
    name: &MemberName,
    ip: IpAddr,
    policy: &Policy,
    subject: impl Fn(usize) -> Subject<'a>,
) -> Result<MemberCerts> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let mut server_names = serving_names(ip);
    for dns in &policy.service_names {
        server_names.push(SanType::DnsName(
            dns.as_str()
                .try_into()
                .map_err(|e| tls_err(&format!("a certificate for {dns}"), e))?,
        ));
    }
    server_names.extend(policy.service_ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(MemberCerts {
        ca_cert: ca.cert.clone(),
        server: leaf(
            ca,
            &format!("{name} server"),
            server_names,
            vec![ServerAuth],
            policy.validity,
            subject(0),
        )?,
        peer: leaf(
            ca,
            &format!("{name} peer"),
            serving_names(ip),
            vec![ServerAuth, ClientAuth],
            policy.validity,
            subject(1),
        )?,
        client: leaf(
            ca,
            &format!("{name} runc-etcd client"),
            vec![],
            vec![ClientAuth],
            policy.validity,
            subject(2),
        )?,
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
    leaf(
        ca,
        cn,
        serving_names(ip),
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        LEAF_VALIDITY,
        Subject::NewKey,
    )
}

/// A client identity (for the controller and for users) issued by the cluster CA; with `key`,
/// a renewal that keeps it.
pub fn issue_client(ca: &Ca, cn: &str, validity: Duration, key: Option<&str>) -> Result<ClientTls> {
    let subject = key.map_or(Subject::NewKey, Subject::Key);
    let (cert, key) = leaf(
        ca,
        cn,
        vec![],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        validity,
        subject,
    )?;
    Ok(ClientTls {
        ca: ca.cert.clone(),
        cert,
        key,
    })
}

/// What a certificate says of itself that renewal looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// Its subject alternative names: DNS names, and addresses as text.
    pub names: Vec<String>,
    /// The CA that signed it, by subject (`subject`).
    pub issuer: String,
}

/// Reads a PEM certificate's expiry and names; None if it is not one.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_before = chrono::DateTime::from_timestamp(cert.validity().not_before.timestamp(), 0)?;
    let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                        16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertInfo {
        not_before,
        not_after,
        names,
        issuer: cert.issuer().to_string(),
    })
}

/// Whether a member's serving certificate lacks a name the policy asks for (it was issued
/// before the Service had its address, or by an older version).
pub fn lacks_names(pem: &str, policy: &Policy) -> bool {
    let Some(info) = cert_info(pem) else {
        return true;
    };
    policy.names().any(|n| !info.names.contains(&n))
}

/// Whether a certificate issued for `validity` should be issued again at `now`: in the last
/// third of its validity (or past it), or unreadable.
pub fn renewal_due(pem: &str, validity: Duration, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(info) = cert_info(pem) else {
        return true;
    };
    let left = info.not_after - now;
    left.to_std().map_or(true, |left| left < validity / 3)
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
    let mut files = member_files(paths, certs);
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

/// The files `write` makes, each with what it holds (PEM). Keys come before their certificates:
/// a renewal keeps the keys, so only certificates are rewritten, each at once (etcd reads a
/// pair at each connection and must never see a certificate beside a key it does not match).
fn member_files<'a>(paths: &MemberPaths, certs: &'a MemberCerts) -> Vec<(std::path::PathBuf, &'a String)> {
    vec![
        (paths.pki().join("ca.crt"), &certs.ca_cert),
        (paths.pki().join("server.key"), &certs.server.1),
        (paths.pki().join("server.crt"), &certs.server.0),
        (paths.pki().join("peer.key"), &certs.peer.1),
        (paths.pki().join("peer.crt"), &certs.peer.0),
        (paths.client().join("ca.crt"), &certs.ca_cert),
        (paths.client().join("client.key"), &certs.client.1),
        (paths.client().join("client.crt"), &certs.client.0),
    ]
}

/// Whether installing `certs` changes the CAs a running member trusts. etcd reads its
/// certificate and key files at every new connection but its trust bundle only when it starts,
/// so such an install needs a restart (a CA rotation's, paced by the controller). A bundle that
/// shares no CA with the installed one is refused: no rotation step makes one, and a member
/// given it could no longer talk to its peers.
pub fn trust_changes(paths: &MemberPaths, certs: &MemberCerts) -> Result<bool> {
    let installed = std::fs::read_to_string(paths.pki().join("ca.crt")).ctx("reading the member's CA", paths.pki())?;
    let (have, want) = (bundle_fingerprints(&installed), bundle_fingerprints(&certs.ca_cert));
    if !want.iter().any(|f| have.contains(f)) {
        return Err(Error::Refused(format!(
            "the member's certificates now come from CAs none of which it trusts now ({}); it keeps its certificates",
            paths.pki().display()
        )));
    }
    Ok(have != want)
}

/// Installs renewed certificates (or a changed trust bundle, see `trust_changes`) over a
/// member's files, rewriting only those that changed; returns how many.
pub fn install_renewed(paths: &MemberPaths, certs: &MemberCerts) -> Result<usize> {
    trust_changes(paths, certs)?;
    let mut written = 0;
    for (path, pem) in member_files(paths, certs) {
        if std::fs::read_to_string(&path).ok().as_ref() != Some(pem) {
            write_atomic(&path, pem.as_bytes(), 0o600)?;
            written += 1;
        }
    }
    Ok(written)
}

/// A digest of a member's certificates and trust bundle (not its keys): the agent reports the
/// installed files' and the controller compares it with the Secret's, to know a change reached
/// the host.
pub fn digest(certs: &IssuedCerts) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for pem in [&certs.ca_cert, &certs.server, &certs.peer, &certs.client] {
        h.update(pem.as_bytes());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `digest` of the files installed for a member; None if one is missing.
pub fn installed_digest(paths: &MemberPaths) -> Option<String> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let certs = IssuedCerts {
        ca_cert: read(paths.pki().join("ca.crt"))?,
        server: read(paths.pki().join("server.crt"))?,
        peer: read(paths.pki().join("peer.crt"))?,
        client: read(paths.client().join("client.crt"))?,
    };
    Some(digest(&certs))
}

/// When the first of a member's installed certificates expires.
pub fn installed_not_after(paths: &MemberPaths) -> Option<chrono::DateTime<chrono::Utc>> {
    [
        paths.pki().join("server.crt"),
        paths.pki().join("peer.crt"),
        paths.client().join("client.crt"),
    ]
    .iter()
    .filter_map(|p| cert_info(&std::fs::read_to_string(p).ok()?))
    .map(|i| i.not_after)
    .min()
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
        let name = MemberName::new("h1").unwrap();
        let certs = issue(&loaded, &name, "10.0.0.1".parse().unwrap(), &Policy::default(), None).unwrap();
        assert!(certs.server.0.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(format!("{:?}", certs.client_tls()).contains("redacted"));
    }

    #[test]
    fn a_request_is_signed_for_its_key_with_the_controllers_names_and_a_forged_one_is_refused() {
        let ca = new_ca("etcd").unwrap();
        let name = MemberName::new("m1").unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let policy = Policy {
            service_names: vec!["main-client".into()],
            ..Policy::default()
        };
        let key = new_key().unwrap();
        let csr = request(&name, &key).unwrap();
        let issued = issue_requested(&ca, &name, ip, &policy, &csr).unwrap();
        assert!(issued.certify(&csr), "all three certify the host's key");
        let info = cert_info(&issued.server).unwrap();
        assert_eq!(info.names, ["10.0.0.1", "127.0.0.1", "localhost", "main-client"]);
        assert_eq!(info.issuer, subject(&ca.cert).unwrap());
        // Another key's request is not certified by these.
        let other_key = request(&name, &new_key().unwrap()).unwrap();
        assert!(!issued.certify(&other_key));
        // A request for another member, and one whose signature does not verify, are refused.
        let err = issue_requested(
            &ca,
            &name,
            ip,
            &policy,
            &request(&MemberName::new("m2").unwrap(), &key).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("it is for \"m2\""), "{err}");
        let body_end = csr.rfind("-----END").unwrap();
        let mut forged = csr.clone().into_bytes();
        let i = body_end - 10;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(issue_requested(&ca, &name, ip, &policy, &forged).is_err());
        // The files a member gets pair each certificate with the one key.
        let files = MemberCerts::with_key(issued, &key);
        assert_eq!(files.peer.1, key);
    }

    #[test]
    fn a_renewal_keeps_the_keys_and_names_the_service() {
        let ca = new_ca("etcd").unwrap();
        let name = MemberName::new("h1").unwrap();
        let ip = "10.0.0.1".parse().unwrap();
        let short = Policy {
            validity: Duration::from_secs(90),
            ..Policy::default()
        };
        let first = issue(&ca, &name, ip, &short, None).unwrap();
        let now = chrono::Utc::now();
        let info = cert_info(&first.server.0).unwrap();
        assert!((info.not_after - now).num_seconds().abs_diff(90) <= 2, "{info:?}");
        assert_eq!(info.names, ["10.0.0.1", "127.0.0.1", "localhost"]);
        assert!(!renewal_due(&first.server.0, short.validity, now));
        assert!(renewal_due(
            &first.server.0,
            short.validity,
            now + chrono::Duration::seconds(61)
        ));
        assert!(
            renewal_due("garbage", short.validity, now),
            "an unreadable one is issued again"
        );
        let named = Policy {
            validity: LEAF_VALIDITY,
            service_names: vec!["main-client.prod.svc".into()],
            service_ips: vec!["10.96.0.10".parse().unwrap()],
        };
        assert!(lacks_names(&first.server.0, &named));
        let renewed = issue(&ca, &name, ip, &named, Some(&first)).unwrap();
        for (a, b) in [
            (&first.server, &renewed.server),
            (&first.peer, &renewed.peer),
            (&first.client, &renewed.client),
        ] {
            assert_eq!(a.1, b.1, "the key is kept");
            assert_ne!(a.0, b.0, "the certificate is new");
        }
        let info = cert_info(&renewed.server.0).unwrap();
        assert_eq!(
            info.names,
            [
                "10.0.0.1",
                "127.0.0.1",
                "localhost",
                "main-client.prod.svc",
                "10.96.0.10"
            ]
        );
        assert!(!renewal_due(&renewed.server.0, named.validity, now) && !lacks_names(&renewed.server.0, &named));
        assert!(lacks_names(&renewed.peer.0, &named), "peers connect by IP only");
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
    fn a_trust_bundle_change_is_seen_and_a_foreign_one_refused() {
        let (old, new, other) = (new_ca("a").unwrap(), new_ca("a").unwrap(), new_ca("a").unwrap());
        assert_ne!(subject(&old.cert), subject(&new.cert), "a rotated CA has its own name");
        let dir = tempfile::tempdir().unwrap();
        let paths = MemberPaths {
            dir: dir.path().to_path_buf(),
        };
        let (name, ip) = (MemberName::new("h1").unwrap(), "10.0.0.1".parse().unwrap());
        let first = issue(&old, &name, ip, &Policy::default(), None).unwrap();
        write(&paths, &first, None).unwrap();
        assert_eq!(installed_digest(&paths), Some(digest(&first.issued())));
        assert!(!trust_changes(&paths, &first).unwrap());

        let both = bundle([old.cert.as_str(), new.cert.as_str(), old.cert.as_str()]);
        assert_eq!(
            bundle_fingerprints(&both),
            [fingerprint(&old.cert).unwrap(), fingerprint(&new.cert).unwrap()]
        );
        let trusting_both = MemberCerts {
            ca_cert: both.clone(),
            ..issue(&old, &name, ip, &Policy::default(), Some(&first)).unwrap()
        };
        assert!(trust_changes(&paths, &trusting_both).unwrap(), "the new CA joins");
        install_renewed(&paths, &trusting_both).unwrap();
        assert_eq!(installed_digest(&paths), Some(digest(&trusting_both.issued())));
        let by_new = issue(&new, &name, ip, &Policy::default(), Some(&first)).unwrap();
        assert_eq!(cert_info(&by_new.server.0).unwrap().issuer, subject(&new.cert).unwrap());
        assert!(trust_changes(&paths, &by_new).unwrap(), "the old CA leaves");

        let foreign = issue(&other, &name, ip, &Policy::default(), None).unwrap();
        let e = install_renewed(&paths, &foreign).unwrap_err().to_string();
        assert!(e.contains("none of which it trusts"), "{e}");
        assert_eq!(
            installed_digest(&paths),
            Some(digest(&trusting_both.issued())),
            "nothing written"
        );
    }

    #[test]
    fn a_missing_ca_names_the_flag() {
        let e = load_ca(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("--ca-from") && e.contains("ca/"), "{e}");
    }
}
