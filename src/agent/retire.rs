//! A deleted EtcdMember: its unit stopped and its data archived on this host, then the object
//! let go (the agent's finalizer) and its heartbeat removed.

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, PatchParams};
use kube::runtime::controller::Action;

use super::{Ctx, phase};
use crate::error::Result;
use runc_etcd_api::contract::MEMBER_FINALIZER;
use runc_etcd_api::{EtcdMember, MemberPhase};
use runc_etcd_host::names::MemberName;

/// Stops and archives the member, then lets the object go.
pub(super) async fn run(m: &EtcdMember, ctx: &Ctx, name: &MemberName) -> Result<Action> {
    if !m.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = phase(
        m.status.clone().unwrap_or_default(),
        MemberPhase::Stopping,
        "stopping and archiving".into(),
    );
    ctx.report(m, status).await?;
    let archived = runc_etcd_host::retire_member(&ctx.engine, &ctx.instance, name).await?;
    if let Some(dir) = &archived {
        tracing::info!("{name}: retired; data archived in {}", dir.display());
    }
    let patch = runc_etcd_api::objects::finalizers_patch(m, None, Some(MEMBER_FINALIZER));
    ctx.members()
        .patch(&m.name_any(), &PatchParams::default(), &patch)
        .await?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let _ = leases.delete(&m.name_any(), &Default::default()).await;
    ctx.metrics.forget_agent_member(&ctx.member_labels(name));
    Ok(Action::await_change())
}
