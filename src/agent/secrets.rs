//! The member's certificates: for a private key made here, on the host, which never leaves it.
//! The agent sends a signing request in the EtcdMember's status; the controller answers with
//! the certificates in the member's Secret (certificates only).

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::Ctx;
use crate::error::Result;
use runc_etcd_api::{EtcdMember, EtcdMemberStatus};
use runc_etcd_host::names::MemberName;
use runc_etcd_host::pki::{self, MemberCerts};

pub(super) enum Certs {
    /// What the member starts with: None when the cluster runs without TLS.
    Ready(Option<MemberCerts>),
    /// The certificates are not there (or not for this host's key) yet: why, for the status.
    Waiting(String),
}

/// The member's certificates with its key. Puts the key's signing request into `status`
/// (made once, with the key, the first time the member is seen here).
pub(super) async fn member_certs(
    m: &EtcdMember,
    ctx: &Ctx,
    name: &MemberName,
    status: &mut EtcdMemberStatus,
) -> Result<Certs> {
    let Some(secret) = &m.spec.tls_secret else {
        return Ok(Certs::Ready(None));
    };
    let (key, csr) = key_and_request(ctx, name)?;
    status.certificate_request = Some(csr.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let issued = secrets
        .get_opt(secret)
        .await?
        .as_ref()
        .and_then(runc_etcd_api::contract::read_member_certs);
    Ok(match issued {
        Some(c) if c.certify(&csr) => Certs::Ready(Some(MemberCerts::with_key(c, &key))),
        Some(_) => Certs::Waiting(format!(
            "Secret {secret} holds certificates for another key: waiting for the controller to sign this host's request"
        )),
        None => Certs::Waiting(format!(
            "waiting for the controller to sign this host's certificate request into Secret {secret}"
        )),
    })
}

/// The member's key and request, made the first time. A member that already runs here with a
/// key from its Secret (written by an older version) keeps that key: its certificates are then
/// issued again for it, and no running member sees a key change under it.
fn key_and_request(ctx: &Ctx, name: &MemberName) -> Result<(String, String)> {
    let paths = ctx.engine.layout.member(&ctx.instance);
    let (key_file, csr_file) = (
        paths.keys().join(format!("{name}.key")),
        paths.keys().join(format!("{name}.csr")),
    );
    let read = |p: &std::path::Path| std::fs::read_to_string(p).ok();
    let key = match read(&key_file) {
        Some(key) => key,
        None => {
            let running_here = ctx.engine.load(&ctx.instance)?.is_some_and(|r| r.name == *name);
            let key = match read(&paths.pki().join("server.key")).filter(|_| running_here) {
                Some(key) => key,
                None => pki::new_key()?,
            };
            runc_etcd_host::private_dir(&paths.keys())?;
            runc_etcd_host::write_atomic(&key_file, key.as_bytes(), 0o600)?;
            key
        }
    };
    let csr = match read(&csr_file) {
        Some(csr) => csr,
        None => {
            let csr = pki::request(name, &key)?;
            runc_etcd_host::write_atomic(&csr_file, csr.as_bytes(), 0o644)?;
            csr
        }
    };
    Ok((key, csr))
}
