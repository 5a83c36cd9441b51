//! The archives of old member files on this node, bounded: beyond the newest `keep_archives`
//! (the cluster's `spec.recovery.keepArchives`), the oldest are deleted, each only once an
//! Event about the cluster names it (no archive goes silently); their count and bytes are
//! metrics. The newest archive is never deleted.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};

use super::Ctx;
use crate::error::Result;
use crate::metrics::NodeLabels;
use runc_etcd_api::EtcdCluster;
use runc_etcd_host::archives::{self, Archive};

pub(super) async fn tend(ctx: &Ctx) -> Result<()> {
    let dir = ctx.engine.paths(&ctx.instance).archive();
    let all = archives::list(&dir)?;
    let doomed = archives::beyond(&all, ctx.config.keep_archives);
    if !doomed.is_empty() {
        let regarding = cluster_ref(ctx).await;
        for a in doomed {
            ctx.recorder.publish(&event(ctx, a), &regarding).await?;
            archives::delete(a)?;
        }
    }
    let left = archives::list(&dir)?;
    let labels = NodeLabels {
        namespace: ctx.config.namespace.clone(),
        cluster: ctx.config.cluster.clone(),
        node: ctx.config.node.clone(),
    };
    ctx.metrics.agent_archives.get_or_create(&labels).set(left.len() as i64);
    let bytes: u64 = left.iter().map(|a| a.bytes).sum();
    ctx.metrics
        .agent_archive_bytes
        .get_or_create(&labels)
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    Ok(())
}

fn event(ctx: &Ctx, a: &Archive) -> Event {
    Event {
        type_: EventType::Normal,
        reason: "ArchiveDeleted".into(),
        note: Some(format!(
            "node {}: deleted archive {} ({} bytes, made {} UTC); the newest {} are kept (spec.recovery.keepArchives)",
            ctx.config.node,
            a.path.display(),
            a.bytes,
            a.taken,
            ctx.config.keep_archives
        )),
        action: "DeleteArchive".into(),
        secondary: None,
    }
}

/// The EtcdCluster, with its UID when it can be read (what `kubectl describe` matches on).
async fn cluster_ref(ctx: &Ctx) -> ObjectReference {
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api.get_opt(&ctx.config.cluster).await {
        Ok(Some(c)) => c.object_ref(&()),
        other => {
            if let Err(e) = other {
                tracing::warn!("reading EtcdCluster {}: {e}", ctx.config.cluster);
            }
            ObjectReference {
                api_version: Some(EtcdCluster::api_version(&()).into()),
                kind: Some(EtcdCluster::kind(&()).into()),
                name: Some(ctx.config.cluster.clone()),
                namespace: Some(ctx.config.namespace.clone()),
                ..Default::default()
            }
        }
    }
}
