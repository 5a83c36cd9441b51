//! Step 4 of a reconcile: a change is written into `status.lastOperation` before it is made
//! (the next pass, or the next leader, makes it), and again when it ends.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::error::Result;
use crate::operator::context::Ctx;
use runc_etcd_api::contract::{ClusterNames, RESTORE_ANNOTATION};
use runc_etcd_api::{EtcdCluster, Operation};

/// Records a new change; a rebuild first uses up the `restore-from-backup` request, so a crash
/// in between asks the person again rather than rebuilding twice.
pub async fn start(c: &EtcdCluster, ctx: &Ctx, op: &Operation, clear_restore_request: bool) -> Result<()> {
    if clear_restore_request {
        let api: Api<EtcdCluster> = ctx.api(c);
        let patch = json!({"metadata": {"annotations": {RESTORE_ANNOTATION: null}}});
        api.patch(&c.name(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    operation(c, ctx, op).await
}

/// Writes the operation as it now stands.
pub async fn operation(c: &EtcdCluster, ctx: &Ctx, op: &Operation) -> Result<()> {
    ctx.patch_status(c, json!({ "lastOperation": op })).await
}
