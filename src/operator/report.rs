//! Step 6 of a reconcile: what was seen and chosen, reported — the status (built purely by
//! `status::build`), the client Service's endpoints, the metrics and the Events.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;

use crate::error::Result;
use crate::operator::children;
use crate::operator::context::{Ctx, apply_changed};
use crate::operator::decide::Note;
use crate::operator::ensure::Problem;
use crate::operator::observe::View;
use crate::operator::plan::Step;
use crate::operator::status;
use kube::runtime::events::EventType;
use runc_etcd_api::contract::ClusterNames;
use runc_etcd_api::{EtcdCluster, EtcdMember};

pub async fn write(c: &EtcdCluster, ctx: &Ctx, view: &View, step: &Step, events: &[Note]) -> Result<()> {
    let report = status::build(c, view, step);
    // The Service's endpoints first: a client that waits for Ready then connects through the
    // Service finds the members there (seen in a test: Ready, and an EndpointSlice not yet
    // listing the restored cluster's member).
    endpoints(c, ctx, view).await?;
    ctx.patch_status(c, status_patch(&report)).await?;
    ctx.metrics.observe_cluster(c, &report, &view.backups);
    for e in events {
        ctx.event(c, e.type_, &e.reason, e.member.as_deref(), e.note.clone())
            .await;
    }
    if let Some(warning) = status::newly_expiring(c, &report) {
        ctx.event(c, EventType::Warning, status::CERTIFICATES_EXPIRING, None, warning)
            .await;
    }
    Ok(())
}

/// A paused cluster's pass: its status and metrics, nothing else (not even its Service's
/// endpoints).
pub async fn paused(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<()> {
    let step = Step::Wait {
        reason: status::PAUSED.into(),
    };
    let report = status::build(c, view, &step);
    ctx.patch_status(c, status_patch(&report)).await?;
    ctx.metrics.observe_cluster(c, &report, &view.backups);
    Ok(())
}

/// A pass stopped by `problem`: said in status and in a Warning Event; nothing else is touched.
pub async fn blocked(c: &EtcdCluster, ctx: &Ctx, problem: &Problem) -> Result<()> {
    ctx.patch_status(c, status::blocked(c, problem.reason, &problem.message))
        .await?;
    ctx.event(c, EventType::Warning, problem.reason, None, problem.message.clone())
        .await;
    Ok(())
}

/// The whole status as a merge patch: fields that are now empty are cleared, not left stale.
fn status_patch(s: &runc_etcd_api::EtcdClusterStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("status serializes");
    let obj = v.as_object_mut().expect("status is an object");
    for key in [
        "phase",
        "conditions",
        "members",
        "clientEndpoints",
        "currentVersion",
        "clusterId",
        "quorumLostSince",
    ] {
        obj.entry(key).or_insert(serde_json::Value::Null);
    }
    // Written by their own steps during the pass (`record`; `ensure` the CA's fingerprint and
    // the token; `rotation` its stage): this pass's copy of them is stale.
    for key in ["lastOperation", "caFingerprint", "clusterToken", "caRotation"] {
        obj.remove(key);
    }
    v
}

async fn endpoints(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<()> {
    // Peer URLs of the voters that answered their health check.
    let healthy: Vec<&String> = view
        .etcd
        .iter()
        .flat_map(|e| {
            e.members
                .iter()
                .filter(|m| !m.is_learner && e.healthy.contains_key(&m.id))
        })
        .flat_map(|m| m.peer_urls.iter())
        .collect();
    let healthy = |o: &EtcdMember| healthy.contains(&&children::peer_url(c, &o.spec.ip));
    let members: Vec<(String, String, bool)> = view
        .members
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| (o.spec.ip.clone(), o.spec.node_name.clone(), healthy(o)))
        .collect();
    let slices: Api<EndpointSlice> = ctx.api(c);
    let slice = children::client_endpoints(c, &members);
    apply_changed(&slices, &c.client_service(), &slice).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_patch_clears_what_is_gone_and_leaves_the_operation_alone() {
        let s = runc_etcd_api::EtcdClusterStatus {
            last_operation: Some(runc_etcd_api::Operation::new(runc_etcd_api::OperationKind::AddLearner)),
            ..Default::default()
        };
        let patch = status_patch(&s);
        assert!(patch["currentVersion"].is_null() && patch.get("currentVersion").is_some());
        assert!(patch["members"].is_null());
        assert!(
            patch.get("lastOperation").is_none(),
            "written only when a change is recorded"
        );
    }
}
