//! The host engine: makes etcd members real on one systemd host (systemd → runc → etcd).
//! No Kubernetes in here (the crate does not depend on it); the host CLI and the agent both
//! drive it.

pub mod archives;
pub mod bundle;
pub mod error;
pub mod etcd;
pub mod failpoint;
pub mod image;
pub mod layout;
pub mod member;
pub mod names;
mod ops;
pub mod pki;
pub mod runc;
pub mod systemd;
pub mod unit;
mod unpack;

#[cfg(test)]
mod golden;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use ops::*;

use crate::error::IoContext;
use crate::names::InstanceName;
use image::PullOptions;
use layout::{Layout, MemberPaths};
use member::MemberRecord;

/// Installs aws-lc-rs as rustls' process-wide provider: oci-client and etcd-client both use
/// rustls, and with no default chosen rustls panics at the first TLS connection.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Everything the engine needs to know about the host it runs on.
#[derive(Debug, Clone)]
pub struct Engine {
    pub layout: Layout,
    /// The runc binary the unit runs (absolute path).
    pub runc: PathBuf,
    pub pull: PullOptions,
}

/// Installs `from` as the runc the units run (`/opt/runc-etcd/bin/runc`), unless the same bytes
/// are there already: written beside it and renamed, so a unit starting meanwhile sees the old
/// or the new binary, never half of one.
pub fn install_runc(from: &Path) -> Result<()> {
    let to = Path::new(layout::INSTALLED_RUNC);
    let new = std::fs::read(from).ctx("reading the runc to install", from)?;
    if std::fs::read(to).is_ok_and(|old| old == new) {
        return Ok(());
    }
    let dir = to.parent().expect("an absolute path");
    std::fs::create_dir_all(dir).ctx("creating the runc folder", dir)?;
    write_atomic(to, &new, 0o755)?;
    tracing::info!("installed {} as {}", from.display(), to.display());
    Ok(())
}

/// Finds the runc to use: the one named, else the one the agent installs, else `runc` in PATH.
pub fn find_runc(named: Option<&Path>) -> Result<PathBuf> {
    let fix = "install runc or pass --runc /path/to/runc";
    let candidate = match named {
        Some(p) => p.to_path_buf(),
        None if Path::new(layout::INSTALLED_RUNC).is_file() => layout::INSTALLED_RUNC.into(),
        None => std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("runc"))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::invalid("--runc", "no runc binary found", fix))?,
    };
    let abs = candidate
        .canonicalize()
        .map_err(|e| Error::invalid("--runc", format!("{}: {e}", candidate.display()), fix))?;
    unit::check_unit_path("--runc", &abs)?;
    Ok(abs)
}

impl Engine {
    pub fn paths(&self, instance: &InstanceName) -> MemberPaths {
        self.layout.member(instance)
    }

    /// The member this host runs for `instance`, if any.
    pub fn load(&self, instance: &InstanceName) -> Result<Option<MemberRecord>> {
        let path = self.paths(instance).member_json();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::invalid(
                    "member.json",
                    format!("{}: {e}", path.display()),
                    "restore the file from the latest backup folder or archive",
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("reading the member record", path),
        }
    }

    pub fn require(&self, instance: &InstanceName) -> Result<MemberRecord> {
        self.load(instance)?.ok_or_else(|| {
            Error::Refused(format!(
                "this host runs no member of cluster {instance} (no {}); create or join one first",
                self.paths(instance).member_json().display()
            ))
        })
    }

    /// Every member record on this host (for image garbage collection and the agent's resync).
    pub fn all_members(&self) -> Result<Vec<MemberRecord>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.layout.state_dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            if let Ok(instance) = InstanceName::new(e.file_name().to_string_lossy())
                && let Some(m) = self.load(&instance)?
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Writes the template unit (reloading systemd only when it changed).
    pub async fn install_unit(&self) -> Result<()> {
        let text = unit::render(&self.layout, &self.runc)?;
        let path = self.layout.unit_template();
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes(), 0o644)?;
            systemd::daemon_reload().await?;
        }
        Ok(())
    }

    /// Rewrites the record and etcd's config from it (read by etcd at its next start).
    pub fn write_record(&self, record: &MemberRecord) -> Result<()> {
        record.check()?;
        let paths = self.paths(&record.instance);
        write_atomic(&paths.etcd_conf(), record.etcd_config().to_yaml().as_bytes(), 0o644)?;
        let json = serde_json::to_vec_pretty(record).expect("record serializes");
        write_atomic(&paths.member_json(), &json, 0o644)
    }

    /// Writes (or rewrites) everything derived from the record: member.json, etcd.conf.yml and
    /// bundle/config.json, plus the data and pki folders. Each file is replaced atomically.
    pub fn write_member_files(&self, record: &MemberRecord, rootfs: &Path) -> Result<()> {
        record.check()?;
        let paths = self.paths(&record.instance);
        for (dir, mode) in [
            (paths.dir.clone(), 0o755),
            (paths.data(), 0o700),
            (paths.pki(), 0o700),
            (paths.bundle(), 0o755),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .ctx("creating a member folder", &dir)?;
        }
        // etcd refuses to start on a data dir that others can read.
        std::fs::set_permissions(paths.data(), std::fs::Permissions::from_mode(0o700))
            .ctx("securing the data dir", paths.data())?;
        let spec = bundle::member_spec(&record.instance, &paths, rootfs);
        write_atomic(&paths.config_json(), bundle::to_json(&spec).as_bytes(), 0o644)?;
        // The record goes last: a member "exists" on this host once member.json does.
        self.write_record(record)
    }

    /// How the engine reaches this member's etcd (mutual TLS with its client identity, or plain).
    pub fn access(&self, record: &MemberRecord) -> Result<etcd::Access> {
        if record.tls {
            Ok(etcd::Access::tls(pki::read_client(&self.paths(&record.instance))?))
        } else {
            Ok(etcd::Access::plain())
        }
    }

    pub fn rootfs(&self, record: &MemberRecord) -> Result<PathBuf> {
        image::rootfs_of(&self.layout.images_dir(), &record.image.digest)
    }

    /// Moves a member's files (data included) into `archive/<timestamp>-<why>/` and deletes what
    /// can be rebuilt (the bundle). Nothing is deleted that is not derived. With `keep_tls` the
    /// certificates stay (a restore keeps the member's identity).
    pub fn archive_member(&self, instance: &InstanceName, why: &str, keep_tls: bool) -> Result<PathBuf> {
        let paths = self.paths(instance);
        let tls = if keep_tls {
            vec![]
        } else {
            vec![paths.pki(), paths.client(), paths.ca(), paths.keys()]
        };
        let dest = layout::timestamped(&paths.archive(), why);
        private_dir(&paths.archive())?;
        private_dir(&dest)?;
        // The record and the bundle go first: after a crash half-way, no member "exists" here and
        // the unit cannot start (ConditionPathExists), while create/join refuse the data left over.
        for p in [
            paths.member_json(),
            paths.config_json(),
            paths.data_id(),
            paths.data(),
            paths.etcd_conf(),
        ]
        .into_iter()
        .chain(tls)
        {
            if p.exists() {
                let to = dest.join(p.file_name().expect("member paths have names"));
                std::fs::rename(&p, &to).ctx("archiving", &p)?;
            }
        }
        let _ = std::fs::remove_dir_all(paths.bundle());
        Ok(dest)
    }

    /// Removes unpacked images that no member on this host runs or keeps for rollback. The
    /// records are read under the images lock: no pull can slip between them and the deletion.
    pub async fn gc_images(&self) -> Result<Vec<String>> {
        let _lock = image::lock_images(&self.layout).await?;
        let keep: BTreeSet<String> = self
            .all_members()?
            .into_iter()
            .flat_map(|m| [Some(m.image.digest), m.previous_image.map(|i| i.digest)])
            .flatten()
            .collect();
        image::gc(&self.layout.images_dir(), &keep)
    }

    /// Waits until the member serves, failing early (with its log) when the unit keeps crashing.
    pub async fn wait_member_healthy(
        &self,
        record: &MemberRecord,
        timeout: std::time::Duration,
    ) -> Result<etcd::EndpointStatus> {
        let access = self.access(record)?;
        let start = std::time::Instant::now();
        let first_restarts = systemd::show(&record.instance).await.map(|s| s.n_restarts).unwrap_or(0);
        loop {
            let last = match access.health(&record.client_url()).await {
                Ok(s) => return Ok(s),
                Err(e) => e.to_string(),
            };
            let unit = systemd::show(&record.instance).await?;
            let crashing = unit.n_restarts >= first_restarts + 3;
            if crashing || start.elapsed() >= timeout {
                let why = if crashing {
                    format!("the unit restarted {} times", unit.n_restarts - first_restarts)
                } else {
                    last
                };
                let log = systemd::journal_tail(&record.instance, 8).await;
                return Err(Error::Timeout {
                    what: format!("etcd of {} becoming healthy", systemd::unit_name(&record.instance)),
                    secs: start.elapsed().as_secs(),
                    last: format!("{why}; its log ends with:\n{log}"),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    /// Serialises engine actions on one instance (host CLI and agent alike).
    pub fn lock(&self, instance: &InstanceName) -> Result<InstanceLock> {
        std::fs::create_dir_all(&self.layout.lock_dir).ctx("creating the lock dir", &self.layout.lock_dir)?;
        let path = self.layout.lock_dir.join(format!("{instance}.lock"));
        let file = std::fs::File::create(&path).ctx("creating a lock file", &path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Refused(format!(
                "another runc-etcd action on {instance} is running (lock {})",
                path.display()
            )));
        }
        Ok(InstanceLock { _file: file })
    }
}

pub struct InstanceLock {
    _file: std::fs::File,
}

/// sha256 (hex) of a file's content: snapshots, layers.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path).ctx("reading", path)?;
    std::io::copy(&mut f, &mut hasher).ctx("reading", path)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Replaces `path` with `bytes` so that, even after a power cut, it holds the old content or
/// the new, never an empty or partial file: written beside it with its mode from the start,
/// flushed to disk, renamed over it, and the folder flushed so that the rename itself lasts.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-write");
    let mut f = create_with_mode(&tmp, mode)?;
    f.write_all(bytes).ctx("writing", &tmp)?;
    f.sync_all().ctx("flushing to disk", &tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).ctx("replacing", path)?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// Creates `dir`, and any missing parent, readable by root only (0700, an existing `dir` made so
/// too): for snapshots, archives and backups, which hold the whole keyspace.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx("creating a private folder", dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ctx("protecting a folder", dir)
}

/// Creates (or truncates) `path` for writing with exactly `mode`, from the first byte.
fn create_with_mode(path: &Path, mode: u32) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .ctx("writing", path)?;
    // The mode given at creation is reduced by the umask, and a file that existed keeps its own.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx("setting permissions", path)?;
    Ok(f)
}

/// Creates (or truncates) `path` for writing, readable by root only (0600).
pub async fn private_file(path: &Path) -> Result<tokio::fs::File> {
    Ok(tokio::fs::File::from_std(create_with_mode(path, 0o600)?))
}

/// Flushes a folder's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("flushing to disk", dir)
}

/// The address must be one of this host's, and both ports free on it.
pub fn check_listen(ip: IpAddr, client_port: u16, peer_port: u16) -> Result<()> {
    for (field, port) in [("--client-port", client_port), ("--peer-port", peer_port)] {
        match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                return Err(Error::invalid(
                    "--ip",
                    format!("{ip} is not an address of this host"),
                    "pass an address shown by `ip addr` on this host",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(Error::invalid(
                    field,
                    format!("{ip}:{port} is already in use by another process"),
                    format!("stop what listens there (`ss -ltnp 'sport = :{port}'`) or choose another {field}"),
                ));
            }
            Err(e) => return Err(e).ctx("checking a port", format!("{ip}:{port}")),
        }
    }
    Ok(())
}
