//! The agent's part of backups: it takes the snapshots assigned to its node (the controller picks
//! the node and writes the destination into status), stores them, deletes host-folder snapshots
//! when their EtcdBackup is deleted, and fetches the snapshot a restored seed starts from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::Ctx;
use crate::backup::{self, Bucket};
use crate::error::{Error, IoContext, Result};
use runc_etcd_api::contract::BACKUP_FINALIZER;
use runc_etcd_api::{BackupPhase, EtcdBackup, EtcdBackupStatus};
use runc_etcd_host::write_atomic;

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Ctx {
    fn backups(&self) -> Api<EtcdBackup> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    async fn backup_status(&self, b: &EtcdBackup, status: &EtcdBackupStatus) -> Result<()> {
        self.backups()
            .patch_status(
                &b.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }

    async fn bucket(&self, dest: &runc_etcd_api::S3Destination) -> Result<Bucket> {
        let creds = backup::read_credentials(&self.client, &self.config.namespace, &dest.credentials_secret).await?;
        Bucket::open(dest, &creds)
    }
}

#[tracing::instrument(skip_all, fields(backup = %b.name_any(), cluster = %b.spec.cluster_name, namespace = %ctx.config.namespace))]
pub(super) async fn reconcile(b: Arc<EtcdBackup>, ctx: Arc<Ctx>) -> Result<Action> {
    let status = b.status.clone().unwrap_or_default();
    if b.metadata.deletion_timestamp.is_some() {
        return delete_stored(&b, &ctx, &status).await;
    }
    if b.finished() || status.node_name.as_deref() != Some(ctx.config.node.as_str()) {
        return Ok(Action::await_change());
    }
    // A paused cluster's backups wait (its agents change nothing, `paused`).
    if ctx.paused().await? {
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    // The watch cache may lag behind this agent's own last write: one snapshot per backup.
    let Some(b) = ctx.backups().get_opt(&b.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let status = b.status.clone().unwrap_or_default();
    if b.finished() || status.node_name.as_deref() != Some(ctx.config.node.as_str()) {
        return Ok(Action::await_change());
    }
    let running = EtcdBackupStatus {
        phase: Some(BackupPhase::Running),
        start_time: Some(now()),
        message: Some(format!("taking a snapshot on node {}", ctx.config.node)),
        ..status.clone()
    };
    // Claimed only if unchanged since that read: the controller may have just moved it to
    // another node (it moves Pending backups whose member stopped being healthy).
    if !backup::write_status_if_unchanged(&ctx.backups(), &b, &running).await? {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let done = match take(&b, &ctx, running.clone()).await {
        Ok(s) => s,
        Err(e) => EtcdBackupStatus {
            phase: Some(BackupPhase::Failed),
            completion_time: Some(now()),
            message: Some(e.to_string()),
            ..running
        },
    };
    tracing::info!("backup {}: {:?} {:?}", b.name_any(), done.phase, done.message);
    let result = crate::metrics::KindLabels {
        controller: "agent-backup".into(),
        kind: done.phase.map(|p| p.to_lowercase()).unwrap_or_default(),
    };
    ctx.metrics.agent_backups.get_or_create(&result).inc();
    ctx.backup_status(&b, &done).await?;
    Ok(Action::await_change())
}

/// Streams a snapshot from this node's member and stores it at the destination in status.
async fn take(b: &EtcdBackup, ctx: &Ctx, status: EtcdBackupStatus) -> Result<EtcdBackupStatus> {
    let dest = status
        .destination
        .clone()
        .ok_or_else(|| Error::transient("taking a backup", "no destination in status yet"))?;
    let record = ctx
        .engine
        .load(&ctx.instance)?
        .ok_or_else(|| Error::refused(format!("no member of {} runs on this node", ctx.instance)))?;
    let access = ctx.engine.access(&record)?;
    let endpoint = record.client_url();
    let etcd = access.status(&endpoint).await?;
    let part = ctx
        .engine
        .paths(&ctx.instance)
        .dir
        .join(format!("backup-{}.db", b.name_any()));
    let (size, sha256) = access.snapshot(&endpoint, &part).await?;
    let stored = store(b, ctx, &dest, &part, &sha256).await;
    let _ = std::fs::remove_file(&part);
    let location = stored?;
    Ok(EtcdBackupStatus {
        phase: Some(BackupPhase::Succeeded),
        member: Some(record.name.to_string()),
        location: Some(location),
        size_bytes: Some(size as i64),
        sha256: Some(sha256),
        revision: Some(etcd.revision),
        etcd_version: Some(etcd.version),
        completion_time: Some(now()),
        message: Some(format!("{size} bytes at revision {}", etcd.revision)),
        ..status
    })
}

async fn store(
    b: &EtcdBackup,
    ctx: &Ctx,
    dest: &runc_etcd_api::BackupDestination,
    file: &Path,
    sha256: &str,
) -> Result<String> {
    let name = b.name_any();
    if let Some(s3) = &dest.s3 {
        let bucket = ctx.bucket(s3).await?;
        let key = bucket.key(ctx.instance.as_str(), &name);
        bucket.upload(file, &key).await?;
        return Ok(bucket.location(&key));
    }
    let host = dest
        .host_path
        .as_ref()
        .ok_or_else(|| Error::invalid("status.destination", "no destination", "the controller sets it"))?;
    let dir = backup::host_dir(host, ctx.instance.as_str(), &name)?;
    runc_etcd_host::private_dir(&dir)?;
    // The marker first: a folder is deleted with its EtcdBackup only if it says it is that
    // backup's (`delete_stored`), so a crash before the snapshot is in leaves nothing deletable
    // that is not ours.
    write_atomic(&dir.join(MARKER), marker(ctx, b).to_string().as_bytes(), 0o600)?;
    let to = dir.join("snapshot.db");
    // Another filesystem cannot take a rename: copy then.
    if std::fs::rename(file, &to).is_err() {
        std::fs::copy(file, &to).ctx("copying a snapshot", &to)?;
    }
    // Then its checksum beside it: `runc-etcd host restore` checks a snapshot against it.
    let mut about = marker(ctx, b);
    about["sha256"] = json!(sha256);
    write_atomic(&dir.join(MARKER), about.to_string().as_bytes(), 0o600)?;
    Ok(to.display().to_string())
}

/// The file in a host backup folder that says which backup it holds.
const MARKER: &str = "backup.json";

fn marker(ctx: &Ctx, b: &EtcdBackup) -> serde_json::Value {
    json!({"backup": b.name_any(), "uid": b.metadata.uid, "cluster": b.spec.cluster_name, "instance": ctx.instance.as_str()})
}

/// A host-folder snapshot goes with its EtcdBackup (S3 objects are deleted by the controller).
async fn delete_stored(b: &EtcdBackup, ctx: &Ctx, status: &EtcdBackupStatus) -> Result<Action> {
    let on_host = status.destination.as_ref().is_some_and(|d| d.host_path.is_some());
    if !b.finalizers().iter().any(|f| f == BACKUP_FINALIZER) || !on_host {
        return Ok(Action::await_change());
    }
    if let (Some(location), Some(host)) = (
        &status.location,
        status.destination.as_ref().and_then(|d| d.host_path.as_ref()),
    ) {
        let dir = backup::host_dir(host, ctx.instance.as_str(), &b.name_any())?;
        // Only ever the backup's own folder, whatever the location says, and only if it carries
        // the marker this agent wrote for this very backup.
        let ours = std::fs::read(dir.join(MARKER))
            .ok()
            .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
            .is_some_and(|m| {
                let want = marker(ctx, b);
                // Markers written before they carried the uid name the backup and instance only.
                ["backup", "instance"].iter().all(|k| m[k] == want[k])
                    && (m["uid"].is_null() || m["uid"] == want["uid"])
            });
        if Path::new(location).parent() == Some(dir.as_path()) && dir.exists() {
            if ours {
                std::fs::remove_dir_all(&dir).ctx("deleting a backup", &dir)?;
                tracing::info!("backup {}: deleted {}", b.name_any(), dir.display());
            } else {
                tracing::warn!(
                    "backup {}: {} does not carry this backup's {MARKER}: left in place",
                    b.name_any(),
                    dir.display()
                );
            }
        }
    }
    let patch = runc_etcd_api::objects::finalizers_patch(b, None, Some(BACKUP_FINALIZER));
    ctx.backups()
        .patch(&b.name_any(), &PatchParams::default(), &patch)
        .await?;
    Ok(Action::await_change())
}

/// A failed pass: an invalid spec waits for a change, anything else backs off (`retry`).
pub(super) fn error_policy(b: Arc<EtcdBackup>, e: &Error, ctx: Arc<Ctx>) -> Action {
    let _span = tracing::warn_span!("backup", backup = %b.name_any(), cluster = %b.spec.cluster_name).entered();
    ctx.retries.failed(&format!("backup:{}", crate::retry::key(&*b)), e)
}

/// The snapshot of EtcdBackup `name`, on this node and checked against its sha256: the file a
/// restored seed starts from.
pub(super) async fn fetch_snapshot(ctx: &Ctx, name: &str) -> Result<PathBuf> {
    let field = "spec.restoreFrom";
    let b = ctx.backups().get_opt(name).await?.ok_or_else(|| {
        Error::invalid(
            field,
            format!("EtcdBackup {name} does not exist"),
            "name an existing backup",
        )
    })?;
    let s = b.status.clone().unwrap_or_default();
    let (Some(location), Some(sha256), Some(dest)) = (&s.location, &s.sha256, &s.destination) else {
        return Err(Error::invalid(
            field,
            format!("EtcdBackup {name} has not succeeded"),
            "name a Succeeded backup",
        ));
    };
    let file = if let Some(s3) = &dest.s3 {
        let bucket = ctx.bucket(s3).await?;
        let to = ctx.engine.paths(&ctx.instance).dir.join(format!("restore-{name}.db"));
        std::fs::create_dir_all(ctx.engine.paths(&ctx.instance).dir).ctx("creating the member folder", &to)?;
        bucket.download(bucket.key_of(location)?, &to).await?;
        to
    } else {
        if s.node_name.as_deref() != Some(ctx.config.node.as_str()) {
            return Err(Error::invalid(
                field,
                format!("EtcdBackup {name} is kept on node {:?}, not here", s.node_name),
                "place the restored seed on the backup's node",
            ));
        }
        PathBuf::from(location)
    };
    if runc_etcd_host::sha256_file(&file)? != *sha256 {
        return Err(Error::invalid(
            field,
            format!("the snapshot of {name} at {location} does not match its sha256"),
            "restore from another backup",
        ));
    }
    Ok(file)
}
