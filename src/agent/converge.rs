//! The host made as the EtcdMember asks: a new member restored from its backup's snapshot if it
//! seeds a restored cluster, new etcd settings, a new image (pulled ahead through `nextImage`),
//! then the member placed (bundle, unit, started). Each stage says in status what it does; a
//! failure stays reported while it is retried.

use super::{Ctx, phase, wanted};
use crate::error::Result;
use runc_etcd_api::{EtcdMember, EtcdMemberStatus, MemberPhase};
use runc_etcd_host::member::{ClusterState, MemberRecord};
use runc_etcd_host::names::MemberName;
use runc_etcd_host::{self as host, WantedMember};

/// Converges the host; returns the placed member's record and the status to build on.
pub(super) async fn run(
    m: &EtcdMember,
    ctx: &Ctx,
    name: &MemberName,
    mut wanted: WantedMember,
    base: EtcdMemberStatus,
) -> Result<(MemberRecord, EtcdMemberStatus)> {
    let installed = ctx.engine.load(&ctx.instance)?.filter(|r| r.name == *name);
    let base = match &installed {
        None => {
            if let Some(from) = m
                .spec
                .restore_from
                .as_ref()
                .filter(|_| wanted.state == ClusterState::New)
            {
                // A failure stays reported while it is retried (no status flapping).
                if base.phase != Some(MemberPhase::Failed) {
                    let message = format!("fetching the snapshot of backup {from}");
                    ctx.report(m, phase(base.clone(), MemberPhase::Restoring, message))
                        .await?;
                }
                match super::backup::fetch_snapshot(ctx, from).await {
                    Ok(file) => wanted.restore = Some(file),
                    Err(e) => {
                        ctx.report(m, phase(base, MemberPhase::Failed, e.to_string())).await?;
                        return Err(e);
                    }
                }
            }
            if base.phase != Some(MemberPhase::Failed) {
                ctx.report(
                    m,
                    phase(base.clone(), MemberPhase::Pulling, format!("pulling {}", m.spec.image)),
                )
                .await?;
            }
            base
        }
        // This generation's change failed and was rolled back: it is not tried again (no restart
        // loop) until the spec changes; the member runs as it was, and the failure stays reported.
        Some(_) if failed_now(m, &base) => base,
        Some(record) => {
            let base = prepare_next_image(ctx, m, base).await?;
            // A new image and new settings move in one restart, and the generation is
            // acknowledged (after the probe) only once all of it runs: the controller never moves
            // to the next member while this one has a restart still to come.
            if record.image.reference != wanted.image {
                // The controller gates this (every member healthy, one at a time), so the engine's
                // own health check of the others is skipped.
                let message = format!("upgrading {} → {}", record.image.reference, wanted.image);
                ctx.report(m, phase(base.clone(), MemberPhase::Upgrading, message))
                    .await?;
                let tuning = Some(wanted.tuning.clone());
                if let Err(e) = host::upgrade(&ctx.engine, &ctx.instance, &wanted.image, tuning, true).await {
                    return Err(stop_here(ctx, m, base, e.into()).await);
                }
            }
            let record = ctx.engine.require(&ctx.instance)?;
            if record.tuning != wanted.tuning {
                let message = "restarting with new etcd settings".to_string();
                ctx.report(m, phase(base.clone(), MemberPhase::Reconfiguring, message))
                    .await?;
                if let Err(e) = host::reconfigure_member(&ctx.engine, &ctx.instance, wanted.tuning.clone()).await {
                    return Err(stop_here(ctx, m, base, e.into()).await);
                }
            }
            base
        }
    };
    let fetched = wanted.restore.clone();
    let placed = host::place_member(&ctx.engine, wanted).await;
    // A downloaded snapshot is not kept once it is restored (or to be fetched again).
    if let Some(f) = fetched.filter(|f| f.starts_with(&ctx.engine.paths(&ctx.instance).dir)) {
        let _ = std::fs::remove_file(f);
    }
    let record = match placed {
        Ok(r) => r,
        Err(e) => {
            ctx.report(m, phase(base, MemberPhase::Failed, e.to_string())).await?;
            return Err(e.into());
        }
    };
    Ok((record, base))
}

/// Whether this generation's change already failed here (`EtcdMemberStatus::failed_generation`).
pub(super) fn failed_now(m: &EtcdMember, status: &EtcdMemberStatus) -> bool {
    status.failed_generation.is_some() && status.failed_generation == m.metadata.generation
}

/// A change that failed (and was rolled back by the engine): reported as Failed for this
/// generation, which is not tried again until the spec changes. Returns the error.
async fn stop_here(ctx: &Ctx, m: &EtcdMember, base: EtcdMemberStatus, e: crate::Error) -> crate::Error {
    let status = EtcdMemberStatus {
        failed_generation: m.metadata.generation,
        ..phase(
            base,
            MemberPhase::Failed,
            format!("{e}; not tried again until the spec changes"),
        )
    };
    if let Err(report) = ctx.report(m, status).await {
        tracing::warn!("reporting the failure: {report}");
    }
    e
}

/// Why the member installed here must not run (its data is gone, `host::data_lost`), after
/// stopping its unit; None when it may. Nothing is archived or placed anew: the controller
/// removes the member from etcd and replaces it, and the empty folder is archived then.
pub(super) async fn lost_data(ctx: &Ctx, name: &MemberName) -> Result<Option<String>> {
    if ctx.engine.load(&ctx.instance)?.is_none_or(|r| r.name != *name) {
        return Ok(None);
    }
    let Some(why) = host::data_lost(&ctx.engine, &ctx.instance)? else {
        return Ok(None);
    };
    tracing::warn!("{name}: {why}; keeping it stopped");
    host::systemd::stop(&ctx.instance).await?;
    Ok(Some(why))
}

/// Pulls and unpacks `spec.nextImage` ahead of an upgrade, and says so in status.
async fn prepare_next_image(ctx: &Ctx, m: &EtcdMember, base: EtcdMemberStatus) -> Result<EtcdMemberStatus> {
    let Some(next) = m.spec.next_image.as_deref() else {
        return Ok(base);
    };
    if base.prepared_image.as_deref() == Some(next) {
        return Ok(base);
    }
    wanted::check_image("spec.nextImage", next)?;
    tracing::info!("pulling {next} ahead of an upgrade");
    // No record names it until the upgrade: a collection meanwhile may remove it, and the
    // upgrade then pulls it again.
    let _ = host::image::ensure(&ctx.engine.layout, next, &ctx.engine.pull).await?;
    Ok(EtcdMemberStatus {
        prepared_image: Some(next.to_string()),
        ..base
    })
}
