//! The member's certificates, from the Secret the controller made for it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::Ctx;
use crate::error::Result;
use runc_etcd_api::EtcdMember;
use runc_etcd_host::pki::MemberCerts;

pub(super) enum Certs {
    /// What the member starts with: None when the cluster runs without TLS.
    Ready(Option<MemberCerts>),
    /// The Secret is not there (or not complete) yet: why, for the status.
    Waiting(String),
}

pub(super) async fn member_certs(m: &EtcdMember, ctx: &Ctx) -> Result<Certs> {
    let Some(secret) = &m.spec.tls_secret else {
        return Ok(Certs::Ready(None));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let s = secrets.get_opt(secret).await?;
    Ok(match s.as_ref().and_then(runc_etcd_api::contract::read_member_certs) {
        Some(c) => Certs::Ready(Some(c)),
        None => Certs::Waiting(format!("waiting for Secret {secret} with the member's certificates")),
    })
}
