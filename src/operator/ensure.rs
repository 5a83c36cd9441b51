//! Step 1 of a reconcile: the cluster's own objects, made idempotently each pass — the
//! finalizer, valid names, the TLS Secrets (the CA and the controller's client identity), the
//! agent DaemonSet and the client Service.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::error::{Error, Result};
use crate::operator::children;
use crate::operator::context::{Ctx, apply};
use runc_etcd_api::contract::{CLUSTER_FINALIZER, ClusterNames};
use runc_etcd_api::objects::create_or_keep;
use runc_etcd_api::{ClusterPhase, EtcdCluster};
use runc_etcd_host::etcd::Access;
use runc_etcd_host::names::{InstanceName, MemberName};
use runc_etcd_host::pki;

/// What the cluster's objects give the rest of the pass.
pub enum Ensured {
    /// The finalizer was just added: the next pass (on the updated object) goes on.
    FinalizerAdded,
    /// Every object is in place; etcd is reached with this.
    Ready(Access),
}

pub async fn objects(c: &EtcdCluster, ctx: &Ctx) -> Result<Ensured> {
    if !c.finalizers().iter().any(|f| f == CLUSTER_FINALIZER) {
        let api: Api<EtcdCluster> = ctx.api(c);
        let patch = runc_etcd_api::objects::finalizers_patch(c, Some(CLUSTER_FINALIZER), None);
        api.patch(&c.name(), &PatchParams::default(), &patch).await?;
        return Ok(Ensured::FinalizerAdded);
    }
    if let Err(msg) = check_names(c) {
        refuse(c, ctx, &msg).await?;
        return Err(Error::invalid(
            "metadata.name",
            msg,
            "use a shorter name or namespace (delete this EtcdCluster and create it under the new name)",
        ));
    }
    let access = tls(c, ctx).await?;
    let ds: Api<DaemonSet> = ctx.api(c);
    ds.patch(
        &c.agent_name(),
        &apply(),
        &Patch::Apply(&children::agent_daemonset(c, &ctx.agent)),
    )
    .await?;
    let svc: Api<Service> = ctx.api(c);
    svc.patch(
        &c.client_service(),
        &apply(),
        &Patch::Apply(&children::client_service(c)),
    )
    .await?;
    Ok(Ensured::Ready(access))
}

/// A spec the hosts cannot carry: said in an Event and in status; nothing else is made.
async fn refuse(c: &EtcdCluster, ctx: &Ctx, msg: &str) -> Result<()> {
    ctx.event(c, EventType::Warning, "InvalidSpec", None, msg.to_string())
        .await;
    let degraded = json!({"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": msg,
        "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now())});
    ctx.patch_status(c, json!({"phase": ClusterPhase::Failed, "conditions": [degraded]}))
        .await
}

/// The cluster CA and the controller's client identity, created once and kept in Secrets.
async fn tls(c: &EtcdCluster, ctx: &Ctx) -> Result<Access> {
    if !c.spec.tls.enabled {
        return Ok(Access::plain());
    }
    let secrets: Api<Secret> = ctx.api(c);
    let ca = match secrets
        .get_opt(&c.ca_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_ca(&s))
    {
        Some(ca) => ca,
        None => {
            let ca = pki::new_ca(&c.instance())?;
            create_or_keep(&secrets, &children::ca_secret(c, &ca)).await?;
            // Another pass may have won the race: use what is stored.
            let stored = secrets.get(&c.ca_secret()).await?;
            runc_etcd_api::contract::read_ca(&stored)
                .ok_or_else(|| Error::transient("reading the CA Secret", "no ca.crt/ca.key"))?
        }
    };
    if let Some(tls) = secrets
        .get_opt(&c.client_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_client(&s))
    {
        return Ok(Access::tls(tls));
    }
    let tls = pki::issue_client(&ca, &format!("{} client", c.instance()))?;
    create_or_keep(&secrets, &children::client_secret(c, &tls)).await?;
    let stored = secrets.get(&c.client_secret()).await?;
    Ok(Access::tls(
        runc_etcd_api::contract::read_client(&stored).unwrap_or(tls),
    ))
}

/// The names derived from the cluster's must be valid on the hosts: the instance
/// `<namespace>.<cluster>` (unit, folder) and member names `<cluster>-xxxxx` (DNS labels).
fn check_names(c: &EtcdCluster) -> std::result::Result<(), String> {
    InstanceName::new(c.instance()).map_err(|e| {
        format!(
            "namespace and name together are too long for a host instance {}: {e}",
            c.instance()
        )
    })?;
    MemberName::new(format!("{}-00000", c.name())).map_err(|e| {
        format!("the name is too long for its members' names (<name>-xxxxx, at most 63 characters): {e}")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(ns: &str, name: &str) -> EtcdCluster {
        let mut c = EtcdCluster::new(name, serde_json::from_value(json!({"version": "3.5.16"})).unwrap());
        c.metadata.namespace = Some(ns.into());
        c
    }

    #[test]
    fn names_that_do_not_fit_on_the_hosts_are_refused() {
        assert!(check_names(&cluster("prod", "main")).is_ok());
        let long = "a".repeat(58);
        let e = check_names(&cluster("p", &long)).unwrap_err();
        assert!(e.contains("members' names"), "{e}");
        let e = check_names(&cluster(&"n".repeat(40), &"c".repeat(30))).unwrap_err();
        assert!(e.contains("host instance"), "{e}");
    }
}
