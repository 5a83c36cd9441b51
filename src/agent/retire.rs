//! A deleted EtcdMember: its unit stopped and its data archived on this host, reported
//! `Retired` (the controller then lets the object go: agents do not write EtcdMember specs or
//! metadata) and its heartbeat removed.

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{Ctx, phase};
use crate::error::Result;
use runc_etcd_api::contract::MEMBER_FINALIZER;
use runc_etcd_api::{EtcdMember, MemberPhase};
use runc_etcd_host::names::MemberName;

/// Stops and archives the member, then lets the object go.
pub(super) async fn run(m: &EtcdMember, ctx: &Ctx, name: &MemberName) -> Result<Action> {
    let retired = m.status.as_ref().and_then(|s| s.phase) == Some(MemberPhase::Retired);
    if retired || !m.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = phase(
        m.status.clone().unwrap_or_default(),
        MemberPhase::Stopping,
        "stopping and archiving".into(),
    );
    ctx.report(m, status).await?;
    let archived = runc_etcd_host::retire_member(&ctx.engine, &ctx.instance, name).await?;
    let message = match &archived {
        Some(dir) => format!("stopped; its data is archived in {}", dir.display()),
        None => "stopped; nothing of it was left on this host".into(),
    };
    tracing::info!("{name}: retired: {message}");
    let status = phase(m.status.clone().unwrap_or_default(), MemberPhase::Retired, message);
    ctx.report(m, status).await?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let _ = leases.delete(&m.name_any(), &Default::default()).await;
    ctx.metrics.forget_agent_member(&ctx.member_labels(name));
    Ok(Action::await_change())
}
