//! Step 4 of a reconcile: a change is written into `status.lastOperation` before it is made
//! (the next pass, or the next leader, makes it), and again when it ends. Each write holds only
//! if the cluster is unchanged since this pass read it (its resourceVersion): a deposed leader,
//! or a pass that read a stale copy, gets a conflict and retries on a fresh read instead of
//! overwriting a newer decision.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::error::{Error, Result};
use crate::operator::context::Ctx;
use runc_etcd_api::contract::{ClusterNames, RESTORE_ANNOTATION};
use runc_etcd_api::objects::write_status_if_unchanged;
use runc_etcd_api::{EtcdCluster, Operation};

/// Records a new change; a rebuild first uses up the `restore-from-backup` request, so a crash
/// in between asks the person again rather than rebuilding twice.
pub async fn start(c: &EtcdCluster, ctx: &Ctx, op: &Operation, clear_restore_request: bool) -> Result<()> {
    if clear_restore_request {
        let api: Api<EtcdCluster> = ctx.api(c);
        let patch =
            json!({"metadata": {"annotations": {RESTORE_ANNOTATION: null}, "resourceVersion": c.resource_version()}});
        let updated = api
            .patch(&c.name(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return operation(&updated, ctx, op).await;
    }
    operation(c, ctx, op).await
}

/// Writes the operation as it now stands, onto the cluster as `c` was read.
pub async fn operation(c: &EtcdCluster, ctx: &Ctx, op: &Operation) -> Result<()> {
    let api: Api<EtcdCluster> = ctx.api(c);
    if write_status_if_unchanged(&api, c, &json!({ "lastOperation": op })).await? {
        Ok(())
    } else {
        Err(Error::transient(
            format!("recording {} {}", op.kind, op.member.as_deref().unwrap_or_default()),
            "the cluster changed since this pass read it (another controller, or a stale copy); trying again on a fresh read",
        ))
    }
}
