//! `upgrade`: swap a member's image. The new image is pulled and unpacked before anything is
//! stopped; the old rootfs stays for rollback (`upgrade --image <old>` goes back).

use crate::error::{Error, Result};
use crate::etcd;
use crate::member::Tuning;
use crate::names::InstanceName;
use crate::{Engine, image, systemd};

use super::HEALTH_TIMEOUT;

#[derive(Debug)]
pub struct UpgradeReport {
    pub from: String,
    pub to: String,
    /// etcd's version as the upgraded member reports it.
    pub version: String,
    pub changed: bool,
}

/// Swaps the member's image; with `tuning`, its etcd settings move in the same restart (the
/// agent's combined change: one restart per member, not two).
pub async fn upgrade(
    engine: &Engine,
    instance: &InstanceName,
    reference: &str,
    tuning: Option<Tuning>,
    force: bool,
) -> Result<UpgradeReport> {
    if let Some(t) = &tuning {
        t.check()?;
    }
    let _lock = engine.lock(instance)?;
    let mut record = engine.require(instance)?;
    let (img, images_lock) = image::ensure(&engine.layout, reference, &engine.pull).await?;
    let from = record.image.reference.clone();
    if img.record.digest == record.image.digest {
        let version = engine
            .access(&record)?
            .status(&record.client_url())
            .await
            .map(|s| s.version)
            .unwrap_or_default();
        return Ok(UpgradeReport {
            from,
            to: reference.into(),
            version,
            changed: false,
        });
    }
    // Taking a member down is only safe if the others keep quorum without it.
    if !force {
        let access = engine.access(&record)?;
        let client = access.connect(&[record.client_url()]).await?;
        for m in etcd::members(&client).await?.iter().filter(|m| !m.is_learner) {
            let Some(ep) = m.client_urls.first() else { continue };
            if let Err(e) = access.health(ep).await {
                return Err(Error::Refused(format!(
                    "member {} is not healthy ({e}): upgrade one member at a time, on a healthy cluster. Pass --force to upgrade anyway",
                    m.name
                )));
            }
        }
    }
    tracing::info!(
        "stopping {} to swap {} -> {}",
        systemd::unit_name(instance),
        from,
        reference
    );
    let before = record.clone();
    systemd::stop(instance).await?;
    crate::failpoint::hit("upgrade-after-stop");
    record.previous_image = Some(record.image.clone());
    record.image = img.record;
    if let Some(t) = tuning {
        record.tuning = t;
    }
    if let Err(e) = engine.write_member_files(&record, &img.rootfs) {
        // Nothing ran on the new image yet: put the old files back and start the member again.
        let _ = engine.write_member_files(&before, &engine.rootfs(&before)?);
        systemd::start(instance).await?;
        return Err(e);
    }
    // The record names the new image now: collections may run (ours below among them).
    drop(images_lock);
    systemd::start(instance).await?;
    let status = engine.wait_member_healthy(&record, HEALTH_TIMEOUT).await.map_err(|e| {
        Error::transient(
            format!("upgrade of {instance} to {reference}"),
            format!(
                "the member did not come back healthy: {e}. The previous image is kept: \
                 `runc-etcd host upgrade --cluster {instance} --image {from}` goes back"
            ),
        )
    })?;
    if let Err(e) = engine.gc_images().await {
        tracing::warn!("collecting unused images: {e}");
    }
    Ok(UpgradeReport {
        from,
        to: reference.into(),
        version: status.version,
        changed: true,
    })
}
