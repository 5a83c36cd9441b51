//! `backup` (snapshot + config into a timestamped folder) and `restore` (a new one-member
//! cluster from a snapshot, made by the image's own etcdutl/etcdctl run through runc).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::layout;
use crate::member::{ClusterState, MemberRecord};
use crate::names::InstanceName;
use crate::{Engine, bundle, runc, systemd, write_atomic};

use super::{HEALTH_TIMEOUT, require_yes};

/// `backup.json` beside each snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    pub dir: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub etcd_version: String,
    pub raft_index: u64,
    pub taken_at: String,
}

pub async fn backup(engine: &Engine, instance: &InstanceName) -> Result<BackupReport> {
    let record = engine.require(instance)?;
    take_backup(engine, &record, "backup").await
}

async fn take_backup(engine: &Engine, record: &MemberRecord, why: &str) -> Result<BackupReport> {
    let paths = engine.paths(&record.instance);
    let endpoint = record.client_url();
    let access = engine.access(record)?;
    let status = access.status(&endpoint).await?;
    let dir = layout::timestamped(&paths.backups(), why);
    crate::private_dir(&dir)?;
    let taken = async {
        let (size, sha256) = access.snapshot(&endpoint, &dir.join("snapshot.db")).await?;
        for f in [paths.etcd_conf(), paths.member_json(), paths.config_json()] {
            let to = dir.join(f.file_name().expect("member files have names"));
            std::fs::copy(&f, &to).ctx("copying config into the backup", &f)?;
        }
        let report = BackupReport {
            dir: dir.clone(),
            size,
            sha256,
            etcd_version: status.version.clone(),
            raft_index: status.raft_index,
            taken_at: chrono::Utc::now().to_rfc3339(),
        };
        let json = serde_json::to_vec_pretty(&report).expect("report serializes");
        write_atomic(&dir.join("backup.json"), &json, 0o600)?;
        Ok(report)
    }
    .await;
    if taken.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    taken
}

#[derive(Debug)]
pub struct RestoreReport {
    pub snapshot: PathBuf,
    /// The backup taken of what ran before (None when etcd was not running, or when this run
    /// finished one that was interrupted).
    pub backup_before: Option<PathBuf>,
    /// Where what ran before was archived (None when an interrupted run had done it already).
    pub archive: Option<PathBuf>,
    pub record: MemberRecord,
    /// This run finished a restore that was interrupted.
    pub resumed: bool,
}

/// `restore-work/restored.json`: the restored data beside it is complete, and this is the member
/// it makes. From here on a restore that is run again finishes instead of starting over (the old
/// member record may already be archived).
#[derive(Debug, Serialize, Deserialize)]
struct Restored {
    snapshot: PathBuf,
    record: MemberRecord,
}

fn restored_path(paths: &layout::MemberPaths) -> PathBuf {
    paths.dir.join("restore-work").join("restored.json")
}

/// How etcd's restore tool is run.
#[derive(Debug, Clone, Copy)]
struct ToolOptions {
    /// Raise the revision and mark it compacted (see `run_restore_tool`).
    bump_revision: bool,
    /// The file carries no hash (a member's `db` copied out of its data folder, not a snapshot).
    skip_hash_check: bool,
}

/// Whether a file carries the sha256 that `etcdctl snapshot save` appends, by etcd's own rule:
/// the database is whole pages, so a file 32 bytes past a multiple of 512 has it.
fn has_etcd_hash(path: &Path) -> Result<bool> {
    let size = std::fs::metadata(path).ctx("reading a snapshot", path)?.len();
    Ok(size % 512 == 32)
}

/// A snapshot argument: a snapshot file, a backup folder, or a backup folder's name.
fn find_snapshot(engine: &Engine, instance: &InstanceName, arg: &str) -> Result<PathBuf> {
    let fix = "pass a snapshot file, a backup folder, or the name of a folder under backups/ (see `ls /var/lib/runc-etcd/<cluster>/backups`)";
    let mut candidates = vec![PathBuf::from(arg), Path::new(arg).join("snapshot.db")];
    if !arg.contains('/') && !arg.starts_with('.') {
        candidates.push(engine.paths(instance).backups().join(arg).join("snapshot.db"));
    }
    let found = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::invalid("--snapshot", format!("no snapshot at {arg:?}"), fix))?;
    check_recorded_sha256(&found, fix)?;
    Ok(found)
}

/// A backup made by runc-etcd (the host CLI's or an agent's) records its checksum in
/// `backup.json` beside it: a damaged file is refused before anything is stopped.
fn check_recorded_sha256(snapshot: &Path, fix: &str) -> Result<()> {
    let meta = snapshot.with_file_name("backup.json");
    if let Ok(bytes) = std::fs::read(&meta)
        && let Ok(report) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(sha256) = report["sha256"].as_str()
        && crate::sha256_file(snapshot)? != sha256
    {
        return Err(Error::invalid(
            "--snapshot",
            format!("{} does not match its sha256 in backup.json", snapshot.display()),
            fix,
        ));
    }
    Ok(())
}

/// With `bump_revision` the restored revision is raised and marked compacted (see
/// `run_restore_tool`).
pub async fn restore(
    engine: &Engine,
    instance: &InstanceName,
    snapshot: &str,
    yes: bool,
    bump_revision: bool,
) -> Result<RestoreReport> {
    let paths = engine.paths(instance);
    if let Ok(bytes) = std::fs::read(restored_path(&paths)) {
        let done: Restored = serde_json::from_slice(&bytes)
            .map_err(std::io::Error::other)
            .ctx("reading an interrupted restore", restored_path(&paths))?;
        require_yes(
            yes,
            &format!(
                "a restore of {} was interrupted; running it again finishes it (the snapshot argument is not used)",
                done.snapshot.display()
            ),
        )?;
        let _lock = engine.lock(instance)?;
        tracing::warn!("finishing the interrupted restore of {}", done.snapshot.display());
        let archive = finish_restore(engine, &paths, &done.record).await?;
        return Ok(RestoreReport {
            snapshot: done.snapshot,
            backup_before: None,
            archive,
            record: engine.require(instance)?,
            resumed: true,
        });
    }
    let record = engine.require(instance)?;
    let snapshot = find_snapshot(engine, instance, snapshot)?;
    let tool = ToolOptions {
        bump_revision,
        skip_hash_check: !has_etcd_hash(&snapshot)?,
    };
    let unchecked = if tool.skip_hash_check {
        format!(
            ". {} carries no hash (a member's db copied from its data folder, not a snapshot): \
             nothing can tell whether it is whole, and it is restored unchecked",
            snapshot.display()
        )
    } else {
        String::new()
    };
    require_yes(
        yes,
        &format!(
            "restore replaces this member's keys with the snapshot's and starts a new one-member cluster \
             (the current data is backed up and archived first){unchecked}"
        ),
    )?;
    if tool.skip_hash_check {
        tracing::warn!("{} carries no hash: restoring it unchecked", snapshot.display());
    }
    let _lock = engine.lock(instance)?;

    let backup_before = match take_backup(engine, &record, "before-restore").await {
        Ok(b) => Some(b.dir),
        Err(e) => {
            tracing::warn!("could not snapshot the running member ({e}); its data folder is archived as it is");
            None
        }
    };
    tracing::info!("stopping {}", systemd::unit_name(instance));
    systemd::stop(instance).await?;

    // Restore into a scratch folder with the image's own tool; the live data is untouched until
    // the restored copy is complete.
    let work = prepare_work(&paths, &snapshot)?;
    let mut new = record.clone();
    // A new token gives the restored cluster a new cluster ID: members of the old cluster cannot
    // mistake it for theirs.
    new.cluster_token = format!("{instance}-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    new.initial_cluster = vec![(record.name.clone(), record.peer_url())];
    new.initial_cluster_state = ClusterState::New;
    new.hide_initial_cluster = false;
    if let Err(e) = run_restore_tool(engine, &new, &work, tool).await {
        // The live data was not touched: bring the member back as it was.
        let _ = std::fs::remove_dir_all(&work);
        systemd::start(instance).await?;
        return Err(e);
    }
    let done = Restored {
        snapshot: snapshot.clone(),
        record: new,
    };
    write_atomic(
        &restored_path(&paths),
        &serde_json::to_vec_pretty(&done).expect("a record serializes"),
        0o600,
    )?;
    let archive = finish_restore(engine, &paths, &done.record).await?;
    Ok(RestoreReport {
        snapshot,
        backup_before,
        archive,
        record: engine.require(instance)?,
        resumed: false,
    })
}

/// From a complete restored copy in `restore-work` to the member serving it; each part is
/// skipped when a run before this one (interrupted) did it. Returns the archive made, if any.
async fn finish_restore(engine: &Engine, paths: &layout::MemberPaths, new: &MemberRecord) -> Result<Option<PathBuf>> {
    let work = paths.dir.join("restore-work");
    let mut archive = None;
    // The restored data not moved in yet: archive what is left of the old member first.
    if work.join("data").exists() {
        if paths.member_json().exists() || paths.data().exists() {
            archive = Some(engine.archive_member(&new.instance, "before-restore", true)?);
        }
        crate::failpoint::hit("restore-after-archive");
        std::fs::rename(work.join("data"), paths.data()).ctx("moving the restored data into place", paths.data())?;
    }
    engine.write_member_files(new, &engine.rootfs(new)?)?;
    // The record is in place: the work folder (and its restored.json) is no longer needed.
    let _ = std::fs::remove_dir_all(&work);
    systemd::enable_and_start(&new.instance).await?;
    engine.wait_member_healthy(new, HEALTH_TIMEOUT).await?;
    super::identity::stamp_locked(engine, new.clone())?;
    Ok(archive)
}

/// A clean `restore-work` folder holding a copy of the snapshot.
fn prepare_work(paths: &layout::MemberPaths, snapshot: &Path) -> Result<PathBuf> {
    let work = paths.dir.join("restore-work");
    let _ = std::fs::remove_dir_all(&work);
    crate::private_dir(&work)?;
    std::fs::copy(snapshot, work.join("snapshot.db")).ctx("copying the snapshot", snapshot)?;
    Ok(work)
}

/// Writes a new member's data folder from a snapshot (its record, not yet on disk, names the
/// member, its peer URL and cluster token). The folder must not hold data.
pub(crate) async fn restore_data(
    engine: &Engine,
    record: &MemberRecord,
    snapshot: &Path,
    bump_revision: bool,
) -> Result<()> {
    let paths = engine.paths(&record.instance);
    let work = prepare_work(&paths, snapshot)?;
    // The tool's bundle mounts what the member's does: the data and pki folders and the config
    // (written for real once the data is in place; until then an empty one).
    let data = paths.data();
    crate::private_dir(&data)?;
    std::fs::create_dir_all(paths.pki()).ctx("creating the pki folder", paths.pki())?;
    if !paths.etcd_conf().exists() {
        write_atomic(&paths.etcd_conf(), b"", 0o600)?;
    }
    // A snapshot an agent fetched was streamed from etcd: it carries its hash.
    let tool = ToolOptions {
        bump_revision,
        skip_hash_check: false,
    };
    let restored = run_restore_tool(engine, record, &work, tool).await;
    if restored.is_ok() {
        // rename replaces the (empty) folder made above.
        std::fs::rename(work.join("data"), &data).ctx("moving the restored data into place", &data)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    restored
}

/// How far a restore raises the revision: above any revision the old cluster can have reached
/// since the snapshot (the figure Kubernetes' own etcd restore guide uses).
const REVISION_BUMP: u64 = 1_000_000_000;

/// `etcdutl snapshot restore` (etcd 3.5+) or `etcdctl snapshot restore` (3.4) in the member's
/// image, writing `work/data`. With `bump_revision`, etcdutl raises the revision by
/// `REVISION_BUMP` and marks it compacted, so that watchers of the old cluster (a Kubernetes API
/// server) are told to list again instead of missing or replaying events (etcd's restore guide);
/// etcd 3.4's etcdctl has no such flags, and its restore keeps the revision.
async fn run_restore_tool(engine: &Engine, m: &MemberRecord, work: &Path, opts: ToolOptions) -> Result<()> {
    let rootfs = engine.rootfs(m)?;
    let etcdutl = rootfs.join("usr/local/bin/etcdutl").is_file();
    let tool = if etcdutl {
        "/usr/local/bin/etcdutl"
    } else {
        "/usr/local/bin/etcdctl"
    };
    let mut args = vec![
        tool.to_string(),
        "snapshot".into(),
        "restore".into(),
        "/restore/snapshot.db".into(),
        "--data-dir".into(),
        "/restore/data".into(),
        "--name".into(),
        m.name.to_string(),
        "--initial-cluster".into(),
        format!("{}={}", m.name, m.peer_url()),
        "--initial-advertise-peer-urls".into(),
        m.peer_url(),
        "--initial-cluster-token".into(),
        m.cluster_token.clone(),
    ];
    if opts.skip_hash_check {
        args.push("--skip-hash-check".into());
    }
    match (opts.bump_revision, etcdutl) {
        (true, true) => args.extend([
            "--bump-revision".into(),
            REVISION_BUMP.to_string(),
            "--mark-compacted".into(),
        ]),
        (true, false) => tracing::warn!("etcd 3.4's etcdctl cannot raise the revision: the restored cluster keeps it"),
        (false, _) => {}
    }
    let paths = engine.paths(&m.instance);
    let bundle_dir = work.join("bundle");
    std::fs::create_dir_all(&bundle_dir).ctx("creating the restore bundle", &bundle_dir)?;
    let spec = bundle::oneoff_spec(&m.instance, &paths, &rootfs, args, work);
    write_atomic(
        &bundle_dir.join("config.json"),
        bundle::to_json(&spec).as_bytes(),
        0o644,
    )?;
    tracing::info!("restoring the snapshot with the image's {tool}");
    let id = format!("{}-restore", m.instance);
    let out = runc::run_oneoff(&engine.runc, &engine.layout.runc_root, &bundle_dir, &id).await?;
    tracing::debug!("{out}");
    if !work.join("data/member").is_dir() {
        return Err(Error::Command {
            command: format!("{tool} snapshot restore"),
            message: format!("no data was written: {}", out.trim()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 3: an agent's backup folder records the sha256 too (beside its marker),
    /// and a damaged snapshot in it is refused like one of the host CLI's.
    #[test]
    fn a_snapshot_that_does_not_match_its_recorded_sha256_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snapshot.db");
        std::fs::write(&snapshot, b"the snapshot").unwrap();
        let sha = crate::sha256_file(&snapshot).unwrap();
        let agent = serde_json::json!({"backup": "b", "instance": "prod.main", "sha256": sha});
        std::fs::write(dir.path().join("backup.json"), agent.to_string()).unwrap();
        check_recorded_sha256(&snapshot, "fix").unwrap();
        std::fs::write(&snapshot, b"the snapshoT").unwrap();
        let e = check_recorded_sha256(&snapshot, "fix").unwrap_err().to_string();
        assert!(e.contains("does not match its sha256"), "{e}");
        // No record (a member's db copied by hand): nothing to check against here.
        std::fs::remove_file(dir.path().join("backup.json")).unwrap();
        check_recorded_sha256(&snapshot, "fix").unwrap();
    }

    #[test]
    fn etcds_own_rule_tells_a_snapshot_from_a_raw_database() {
        let dir = tempfile::tempdir().unwrap();
        let (saved, raw) = (dir.path().join("saved"), dir.path().join("db"));
        std::fs::write(&saved, vec![0u8; 4096 * 3 + 32]).unwrap();
        std::fs::write(&raw, vec![0u8; 4096 * 3]).unwrap();
        assert!(has_etcd_hash(&saved).unwrap());
        assert!(!has_etcd_hash(&raw).unwrap());
    }
}
