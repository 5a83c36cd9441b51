//! What the agent asks of the engine: make a member the controller planned real on this host, or
//! retire one. Unlike `create`/`join`, these make no etcd membership calls (the controller makes
//! them) and do not wait for etcd: they converge the host and return, and are safe to repeat after
//! a crash at any point.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::member::{ClusterState, MemberRecord, Tuning};
use crate::names::{InstanceName, MemberName, check_ports};
use crate::pki::{self, MemberCerts};
use crate::{Engine, check_listen, image, systemd};

/// A member as the controller wants it on this host.
pub struct WantedMember {
    pub instance: InstanceName,
    pub name: MemberName,
    pub ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    /// Image reference (a tag or a digest).
    pub image: String,
    pub initial_cluster: Vec<(MemberName, String)>,
    pub state: ClusterState,
    /// The cluster incarnation's token (`names::check_token`).
    pub cluster_token: String,
    /// None: plain HTTP.
    pub certs: Option<MemberCerts>,
    pub tuning: Tuning,
    /// Start from this snapshot (a local file, already fetched and checked) instead of empty
    /// data: the seed of a restored cluster, which gets a new cluster ID.
    pub restore: Option<PathBuf>,
    /// With `restore`: raise the restored revision and mark it compacted (for watchers).
    pub restore_bump_revision: bool,
}

/// Installs the member (image, certificates, files, unit) unless it is installed, and makes sure
/// its unit is enabled and running. A different member of the same cluster left on this host
/// (replaced, or removed while the agent was away) is stopped and archived first.
pub async fn place_member(engine: &Engine, w: WantedMember) -> Result<MemberRecord> {
    check_ports(w.client_port, w.peer_port)?;
    let _lock = engine.lock(&w.instance)?;
    if let Some(record) = engine.load(&w.instance)? {
        if record.name == w.name {
            if let Some(certs) = w.certs.as_ref().filter(|_| record.tls) {
                let paths = engine.paths(&w.instance);
                if pki::trust_changes(&paths, certs)? {
                    // etcd reads its trust bundle only at start: stopped first, so that the
                    // running etcd never trusts less than its files say, even after a crash
                    // here (the start below, or the next pass's, loads them).
                    tracing::info!("{}: restarting with a new trust bundle (a CA rotation)", w.name);
                    systemd::stop(&w.instance).await?;
                }
                let n = pki::install_renewed(&paths, certs)?;
                if n > 0 {
                    tracing::info!("{}: {n} renewed certificate file(s) installed", w.name);
                }
            }
            ensure_running(engine, &record).await?;
            return Ok(record);
        }
        tracing::info!(
            "{} on this host is {}, not {}: archiving it",
            w.instance,
            record.name,
            w.name
        );
        systemd::stop_and_disable(&w.instance).await?;
        engine.archive_member(&w.instance, "replaced", false)?;
    }
    archive_leftovers(engine, &w.instance)?;
    check_listen(w.ip, w.client_port, w.peer_port)?;
    // Held until the record naming the image is written (the end of this function).
    let (img, _images_lock) = image::ensure(&engine.layout, &w.image, &engine.pull).await?;
    let record = MemberRecord {
        instance: w.instance.clone(),
        name: w.name.clone(),
        ip: w.ip,
        client_port: w.client_port,
        peer_port: w.peer_port,
        image: img.record,
        previous_image: None,
        initial_cluster: w.initial_cluster,
        initial_cluster_state: w.state,
        // A restored cluster's seed gets its own token, hence a new cluster ID: members of the
        // cluster it came from cannot mistake it for theirs.
        cluster_token: match &w.restore {
            Some(_) => format!("{}-{}", w.cluster_token, w.name),
            None => w.cluster_token.clone(),
        },
        hide_initial_cluster: false,
        tls: w.certs.is_some(),
        tuning: w.tuning,
    };
    record.check()?;
    engine.install_unit().await?;
    if let Some(certs) = &w.certs {
        pki::write(&engine.paths(&w.instance), certs, None)?;
    }
    if let Some(snapshot) = &w.restore {
        // The data first, the record last: a crash in between leaves data without a record,
        // which the next pass archives (archive_leftovers) before restoring again.
        super::backup::restore_data(engine, &record, snapshot, w.restore_bump_revision).await?;
    }
    engine.write_member_files(&record, &img.rootfs)?;
    crate::failpoint::hit("place-before-start");
    tracing::info!("starting {} ({})", systemd::unit_name(&w.instance), w.name);
    systemd::enable_and_start(&w.instance).await?;
    Ok(record)
}

/// Rewrites a member's etcd settings and restarts it, waiting until it serves again (the
/// controller does this one member at a time). On failure the previous settings are put back.
pub async fn reconfigure_member(engine: &Engine, instance: &InstanceName, tuning: Tuning) -> Result<MemberRecord> {
    tuning.check()?;
    let _lock = engine.lock(instance)?;
    let before = engine.require(instance)?;
    let record = MemberRecord {
        tuning,
        ..before.clone()
    };
    let rootfs = engine.rootfs(&record)?;
    tracing::info!("restarting {} with new etcd settings", systemd::unit_name(instance));
    systemd::stop(instance).await?;
    if let Err(e) = engine.write_member_files(&record, &rootfs) {
        // Nothing ran with the new settings: the old files back, and the member started again
        // (it must not stay stopped because a write failed).
        let _ = engine.write_member_files(&before, &rootfs);
        systemd::start(instance).await?;
        return Err(e);
    }
    systemd::start(instance).await?;
    if let Err(e) = engine.wait_member_healthy(&record, super::HEALTH_TIMEOUT).await {
        tracing::warn!("{instance} did not come back with the new settings: putting the old ones back");
        systemd::stop(instance).await?;
        engine.write_member_files(&before, &rootfs)?;
        systemd::start(instance).await?;
        return Err(e);
    }
    Ok(record)
}

/// Starts the unit if systemd is not running it (systemd restarts a crashed etcd by itself; this
/// covers a unit stopped by hand or left disabled by a crash between writing and starting).
async fn ensure_running(engine: &Engine, record: &MemberRecord) -> Result<()> {
    // Its image gone from the host (removed by hand, or by a collection that raced a pull): the
    // unit cannot start, and nothing else would pull it again. The record pins the digest.
    if !engine.rootfs(record)?.is_dir() {
        let reference = image::pinned(&record.image);
        tracing::warn!(
            "the image of {} is missing on this host: pulling {reference} again",
            systemd::unit_name(&record.instance)
        );
        let (img, _images_lock) = image::ensure(&engine.layout, &reference, &engine.pull).await?;
        if img.record.digest != record.image.digest {
            return Err(Error::Image {
                reference,
                message: format!(
                    "it is now {}, not {} as the member was made with",
                    img.record.digest, record.image.digest
                ),
            });
        }
    }
    let unit = systemd::show(&record.instance).await?;
    if unit.stuck_starting() {
        tracing::warn!(
            "{}: etcd exited before it was ready and runc waits for it forever: killing the unit so that systemd starts it again",
            systemd::unit_name(&record.instance)
        );
        return systemd::kill(&record.instance).await;
    }
    let running = matches!(unit.active_state.as_str(), "active" | "activating" | "reloading");
    if !running || !unit.is_enabled() {
        tracing::info!(
            "{} is {} ({}): starting it",
            systemd::unit_name(&record.instance),
            unit.active_state,
            unit.unit_file_state
        );
        engine.install_unit().await?;
        systemd::enable_and_start(&record.instance).await?;
    }
    Ok(())
}

/// Stops member `name` of `instance` and archives its files. Returns the archive folder, or None
/// when this host holds nothing of that member (already retired).
pub async fn retire_member(engine: &Engine, instance: &InstanceName, name: &MemberName) -> Result<Option<PathBuf>> {
    let _lock = engine.lock(instance)?;
    match engine.load(instance)? {
        Some(record) if &record.name == name => {
            systemd::stop_and_disable(instance).await?;
            crate::failpoint::hit("retire-after-stop");
            let dir = engine.archive_member(instance, "removed", false)?;
            tracing::info!("{name} stopped; its files are in {}", dir.display());
            Ok(Some(dir))
        }
        Some(record) => Err(Error::Refused(format!(
            "{instance} on this host is member {}, not {name}; leaving it alone",
            record.name
        ))),
        None => archive_leftovers(engine, instance),
    }
}

/// A crash half-way through archiving leaves files but no member record: finish the move.
fn archive_leftovers(engine: &Engine, instance: &InstanceName) -> Result<Option<PathBuf>> {
    let paths = engine.paths(instance);
    let has_data = std::fs::read_dir(paths.data()).is_ok_and(|mut d| d.next().is_some());
    if has_data || paths.etcd_conf().exists() {
        let dir = engine.archive_member(instance, "leftover", false)?;
        tracing::info!("files of an earlier member moved to {}", dir.display());
        return Ok(Some(dir));
    }
    Ok(None)
}
