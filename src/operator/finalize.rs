//! A deleted EtcdCluster: every member is retired by its agent (unit stopped, data archived)
//! before the DaemonSet goes, then the cluster's objects, then the finalizer.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use crate::error::Result;
use crate::operator::context::{Ctx, selector};
use runc_etcd_api::contract::{CLUSTER_FINALIZER, ClusterNames, let_go_if_retired, release_and_delete, released};
use runc_etcd_api::objects::delete_if_present;
use runc_etcd_api::{ClusterPhase, EtcdCluster, EtcdMember};

pub async fn run(c: &EtcdCluster, ctx: &Ctx) -> Result<Action> {
    if !c.finalizers().iter().any(|f| f == CLUSTER_FINALIZER) {
        return Ok(Action::await_change());
    }
    let members: Api<EtcdMember> = ctx.api(c);
    let left = members.list(&selector(c)).await?.items;
    if !left.is_empty() {
        for m in &left {
            let_go_if_retired(&members, m).await?;
        }
        for m in left
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none() || !released(m))
        {
            release_and_delete(&members, m, "the cluster is deleted").await?;
            ctx.event(
                c,
                EventType::Normal,
                "RetireMember",
                Some(&m.name_any()),
                format!("{} on node {}", m.name_any(), m.spec.node_name),
            )
            .await;
        }
        ctx.patch_status(c, json!({"phase": ClusterPhase::Deleting})).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let agents: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.agent.namespace);
    delete_if_present(&agents, &crate::operator::children::agent_daemonset_name(c)).await?;
    delete_if_present(&ctx.api::<EndpointSlice>(c), &c.client_service()).await?;
    delete_if_present(&ctx.api::<Service>(c), &c.client_service()).await?;
    let secrets: Api<Secret> = ctx.api(c);
    for s in secrets.list(&selector(c)).await?.items {
        delete_if_present(&secrets, &s.name_any()).await?;
    }
    let api: Api<EtcdCluster> = ctx.api(c);
    let patch = runc_etcd_api::objects::finalizers_patch(c, None, Some(CLUSTER_FINALIZER));
    api.patch(&c.name(), &PatchParams::default(), &patch).await?;
    tracing::info!("{}: deleted; every member archived on its host", c.instance());
    ctx.metrics.forget_cluster(&c.ns(), &c.name());
    Ok(Action::await_change())
}
