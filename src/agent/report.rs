//! A member's status written (only when it changed: every write wakes the controller), its
//! metrics, and its heartbeat Lease, which tells the controller this agent is alive.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{Ctx, RESYNC};
use crate::error::Result;
use runc_etcd_api::{EtcdMember, EtcdMemberStatus, MemberPhase};
use runc_etcd_host::names::MemberName;

pub(super) async fn write(m: &EtcdMember, ctx: &Ctx, name: &MemberName, status: EtcdMemberStatus) -> Result<Action> {
    let running = status.phase == Some(MemberPhase::Running);
    // Until etcd answers, look again soon: the controller waits on this status.
    let settled = running || status.phase == Some(MemberPhase::DataLost);
    let next = if settled { RESYNC } else { Duration::from_millis(500) };
    let labels = ctx.member_labels(name);
    ctx.metrics
        .agent_member_running
        .get_or_create(&labels)
        .set(i64::from(running));
    ctx.metrics
        .agent_unit_restarts
        .get_or_create(&labels)
        .set(i64::from(status.restart_count));
    ctx.report(m, status).await?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    runc_etcd_api::contract::heartbeat(&leases, &m.name_any(), &ctx.config.node, RESYNC * 4).await?;
    Ok(Action::requeue(next))
}
