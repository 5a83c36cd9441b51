//! Where things live on a host (ARCHITECTURE.md §5). Every path is derived from a validated name.

use std::path::{Path, PathBuf};

use crate::names::InstanceName;

pub const UNIT_TEMPLATE: &str = "runc-etcd@.service";
/// Where the agent installs the runc it carries, unless told to use another one.
pub const INSTALLED_RUNC: &str = "/opt/runc-etcd/bin/runc";

/// The roots of everything runc-etcd writes on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `/var/lib/runc-etcd`: members and unpacked images.
    pub state_dir: PathBuf,
    /// `/etc/systemd/system`.
    pub unit_dir: PathBuf,
    /// runc's private `--root`, so our containers never show up in another tool's state.
    pub runc_root: PathBuf,
    /// Per-instance locks (on tmpfs: a lock never outlives a boot, and leaves no file behind).
    pub lock_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            state_dir: "/var/lib/runc-etcd".into(),
            unit_dir: "/etc/systemd/system".into(),
            runc_root: "/run/runc-etcd".into(),
            lock_dir: "/run/lock/runc-etcd".into(),
        }
    }
}

impl Layout {
    pub fn unit_template(&self) -> PathBuf {
        self.unit_dir.join(UNIT_TEMPLATE)
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    pub fn member(&self, instance: &InstanceName) -> MemberPaths {
        MemberPaths {
            dir: self.state_dir.join(instance.as_str()),
        }
    }
}

/// `/var/lib/runc-etcd/<instance>/…`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPaths {
    pub dir: PathBuf,
}

impl MemberPaths {
    /// etcd's data dir (0700), bind-mounted at `/var/lib/etcd`.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// etcd's config file, bind-mounted read-only at `/etc/etcd/etcd.conf.yml`.
    pub fn etcd_conf(&self) -> PathBuf {
        self.dir.join("etcd.conf.yml")
    }
    /// TLS files (0600), bind-mounted read-only at `/etc/etcd/pki`.
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    /// The engine's client certificate for this member's etcd (0600; not mounted).
    pub fn client(&self) -> PathBuf {
        self.dir.join("client")
    }
    /// The cluster CA's certificate and key (0600; not mounted), to issue certificates for members
    /// that join from this host: copy this folder to the joining host (`join --ca-from`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca")
    }
    /// Private keys made on this host for members of the instance, and their certificate
    /// requests (`<member>.key` 0600, `<member>.csr`; not mounted): the agent's, whose
    /// controller signs the request.
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn config_json(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    /// What this host runs for the member (image, ports, cluster): the engine's own record.
    pub fn member_json(&self) -> PathBuf {
        self.dir.join("member.json")
    }
    /// The stamp of the data this member started with, written once etcd ran on it: while it
    /// exists, a data dir without the same stamp inside ([`Self::data_stamp`]) means the data
    /// was lost, and the member must not start (it would bootstrap or rejoin as a new member).
    pub fn data_id(&self) -> PathBuf {
        self.dir.join("data.id")
    }
    /// The same stamp inside etcd's data dir (beside etcd's own `snap/` and `wal/`), gone with it.
    pub fn data_stamp(&self) -> PathBuf {
        self.data().join("member").join("runc-etcd-data.id")
    }
    /// Old data of removed or replaced members, the newest few kept (`archives`).
    pub fn archive(&self) -> PathBuf {
        self.dir.join("archive")
    }
    /// Snapshots taken by `backup` (and by `restore`, before it replaces anything).
    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }
}

/// Paths seen inside the container.
pub mod container {
    pub const DATA: &str = "/var/lib/etcd";
    pub const CONF_DIR: &str = "/etc/etcd";
    pub const CONF: &str = "/etc/etcd/etcd.conf.yml";
    pub const PKI: &str = "/etc/etcd/pki";
    pub const ETCD: &str = "/usr/local/bin/etcd";
    /// Mount points the engine creates in every unpacked rootfs, so that runc never has to
    /// write into a shared, read-only image.
    pub const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", "var/lib/etcd", "etc/etcd/pki", "restore"];
    pub const MOUNT_FILES: &[&str] = &["etc/etcd/etcd.conf.yml"];
}

/// How a timestamp is written in a folder name (UTC, no colons): `2026-11-22T02-30-05Z`.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H-%M-%SZ";

/// A timestamp usable as a folder name, sortable: `2026-11-22T02-30-05Z`.
pub fn timestamp() -> String {
    chrono::Utc::now().format(TIMESTAMP_FORMAT).to_string()
}

/// `dir/<timestamp>-<what>`, unique even when two are made within a second.
pub fn timestamped(dir: &Path, what: &str) -> PathBuf {
    let ts = timestamp();
    let mut p = dir.join(format!("{ts}-{what}"));
    let mut n = 1;
    while p.exists() {
        n += 1;
        p = dir.join(format!("{ts}-{what}-{n}"));
    }
    p
}
