//! The test lab: simulated hosts with a real systemd as PID 1 in their own namespaces, on a
//! private LAN, with real runc, etcd images built from Debian's etcd binaries and a real OCI
//! registry serving them. Tests and people use it the same way (`runc-etcd-lab`).
//!
//! Labs are numbered; a lab holds a lock on its number, so tests can run side by side, and a lab
//! left behind by a killed run is cleaned up when its number is taken again.

mod chart;
pub mod control;
pub mod external;
mod host;
pub mod images;
mod kubelet;
mod net;
pub mod netns;
pub mod pod_image;
pub mod registry;
mod sh;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use chart::release;
pub use host::LabHost;
pub use net::Net;
pub use sh::{CommandFailed, LabResult};

use registry::Server;

/// Root of every lab's state.
pub const LAB_ROOT: &str = "/var/tmp/runc-etcd-lab";

pub struct Lab {
    pub id: u8,
    pub net: Net,
    pub dir: PathBuf,
    pub hosts: Vec<LabHost>,
    pub registry: Option<Server>,
    /// The etcd versions (= image tags) available in the registry and the local layout.
    pub versions: Vec<String>,
    _lock: std::fs::File,
    /// Keep the hosts running when the Lab is dropped (`runc-etcd-lab up`).
    pub keep: bool,
}

fn try_lock(path: &Path) -> Option<std::fs::File> {
    let file = std::fs::File::create(path).ok()?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(file)
}

fn lock_wait(path: &Path) -> std::fs::File {
    let file = std::fs::File::create(path).expect("lock file");
    // SAFETY: as above, blocking.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    file
}

/// The shared OCI layout of lab images, built once (under a lock) per machine.
pub fn image_layout() -> LabResult<(PathBuf, Vec<String>)> {
    let layout = images::cache_dir().join("oci");
    std::fs::create_dir_all(images::cache_dir()).map_err(host::io_err("creating the lab cache"))?;
    let _lock = lock_wait(&images::cache_dir().join(".oci.lock"));
    let stamp = layout.join(".versions");
    let versions = images::available_versions();
    if std::fs::read_to_string(&stamp).ok() != Some(versions.join(",")) {
        let _ = std::fs::remove_dir_all(&layout);
        let built = images::build_layout(&layout)?;
        std::fs::write(&stamp, built.join(",")).map_err(host::io_err("stamp"))?;
    }
    Ok((layout, versions))
}

impl Lab {
    /// A lab with `hosts` booted hosts (h1…hN) and a registry holding every etcd version.
    /// `bin_dir` holds the runc-etcd binary the hosts run.
    pub fn up(hosts: u8, bin_dir: &Path) -> LabResult<Lab> {
        let (layout, versions) = image_layout()?;
        let image = pod_image::root_for(&bin_dir.join("runc-etcd"))?;
        let root = Path::new(LAB_ROOT);
        std::fs::create_dir_all(root).map_err(host::io_err("creating the lab root"))?;
        // A lab kept by `runc-etcd-lab up` has a `kept` marker: leave it alone until `down`.
        let (id, lock) = (1..=60u8)
            .filter(|id| !root.join(id.to_string()).join("kept").exists())
            .find_map(|id| try_lock(&root.join(format!("{id}.lock"))).map(|l| (id, l)))
            .ok_or_else(|| host::failed("lab", "all 60 lab numbers are in use".into()))?;
        let net = Net { lab: id };
        let dir = root.join(id.to_string());
        cleanup_stale(id, &dir);
        std::fs::create_dir_all(dir.join("hosts")).map_err(host::io_err("creating the lab dir"))?;
        // Host disks live on a tmpfs: fast fsync, and nothing left on the machine's disk.
        sh::sh(&format!(
            "mountpoint -q {0}/hosts || mount -t tmpfs -o size=8g,mode=755 runc-etcd-lab {0}/hosts",
            dir.display()
        ))?;
        net.up_switch()?;
        let registry = registry::start_registry(&net, &dir)?;
        images::push(&layout, &versions, &net.switch_ns(), &registry.address)?;
        let mut lab = Lab {
            id,
            net,
            dir: dir.clone(),
            hosts: Vec::new(),
            registry: Some(registry),
            versions,
            _lock: lock,
            keep: false,
        };
        for n in 1..=hosts {
            lab.add_host(n, bin_dir, &layout, &image)?;
        }
        Ok(lab)
    }

    fn add_host(&mut self, n: u8, bin_dir: &Path, layout: &Path, image: &Path) -> LabResult<()> {
        let host = LabHost {
            n,
            net: self.net,
            dir: self.dir.join("hosts").join(format!("h{n}")),
            bin_dir: bin_dir.to_path_buf(),
            oci_dir: layout.to_path_buf(),
            image_dir: image.to_path_buf(),
            insecure_registries: self.registry_address(),
        };
        host.boot(false)?;
        self.hosts.push(host);
        Ok(())
    }

    /// A real S3-compatible store on the LAN with the given buckets; stopped when dropped.
    pub fn start_s3(&self, buckets: &[&str]) -> LabResult<Server> {
        registry::start_s3(&self.net, &self.dir, buckets)
    }

    /// The LAN's own address: the operator, the registry and the tests' clients reach the hosts
    /// from it.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.net.gateway()
    }

    pub fn registry_address(&self) -> String {
        format!("{}:{}", self.net.gateway(), registry::PORT)
    }

    /// `<registry>/etcd:<version>`
    pub fn image(&self, version: &str) -> String {
        format!("{}/etcd:{version}", self.registry_address())
    }

    pub fn host(&self, n: u8) -> &LabHost {
        &self.hosts[n as usize - 1]
    }

    /// `runc-etcd host create` on host `n` with etcd `version`, with TLS unless `plain`.
    pub fn create(&self, n: u8, version: &str, plain: bool) -> LabResult<String> {
        let h = self.host(n);
        let (ip, image) = (h.ip().to_string(), self.image(version));
        let mut args = vec!["create", "--ip", &ip, "--image", &image];
        if plain {
            args.push("--plain-http");
        }
        h.runc_etcd(&args)
    }

    /// `runc-etcd host join` on host `n` through host `via`. For a TLS cluster the CA folder is
    /// copied from `via` first, as a person would with scp.
    pub fn join(&self, n: u8, via: u8, version: &str) -> LabResult<String> {
        let (h, v) = (self.host(n), self.host(via));
        let (ip, image, endpoint) = (h.ip().to_string(), self.image(version), v.client_url());
        let mut args = vec!["join", "--ip", &ip, "--image", &image, "--endpoint", &endpoint];
        if endpoint.starts_with("https") {
            h.copy_dir_from(v, "/var/lib/runc-etcd/etcd/ca", "/root/ca")?;
            args.extend(["--ca-from", "/root/ca"]);
        }
        h.runc_etcd(&args)
    }

    /// The switch namespace: code run there (see [`netns`]) reaches every host.
    pub fn client_ns(&self) -> String {
        self.net.switch_ns()
    }

    pub fn down(&mut self) {
        for h in &self.hosts {
            h.destroy();
        }
        self.hosts.clear();
        self.registry = None;
        self.net.down_all();
        let _ = sh::sh(&format!(
            "umount -l {0}/hosts 2>/dev/null; rm -rf {0}",
            self.dir.display()
        ));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.down();
        } else {
            let _ = std::fs::write(self.dir.join("kept"), "");
            // Leave the registry running with the hosts.
            std::mem::forget(self.registry.take());
        }
    }
}

/// Tears down every lab no running process holds: kept ones and ones left by killed runs.
pub fn down_all() -> Vec<u8> {
    let root = Path::new(LAB_ROOT);
    let mut downed = Vec::new();
    for id in 1..=60u8 {
        let dir = root.join(id.to_string());
        if dir.exists()
            && let Some(_lock) = try_lock(&root.join(format!("{id}.lock")))
        {
            cleanup_stale(id, &dir);
            downed.push(id);
        }
    }
    downed
}

/// Hosts of a kept lab, to act on them after the process that made them has gone.
pub fn kept_hosts(id: u8) -> Vec<LabHost> {
    let dir = Path::new(LAB_ROOT).join(id.to_string()).join("hosts");
    (1..=9u8)
        .map(|n| LabHost {
            n,
            net: Net { lab: id },
            dir: dir.join(format!("h{n}")),
            bin_dir: PathBuf::new(),
            oci_dir: PathBuf::new(),
            image_dir: PathBuf::new(),
            insecure_registries: format!("{}:{}", Net { lab: id }.gateway(), registry::PORT),
        })
        .filter(|h| h.pid().is_some())
        .collect()
}

/// Tears down whatever a previous holder of lab number `id` left (killed test, `up` without `down`).
pub fn cleanup_stale(id: u8, dir: &Path) {
    let net = Net { lab: id };
    for n in 1..=9 {
        let h = LabHost {
            n,
            net,
            dir: dir.join("hosts").join(format!("h{n}")),
            bin_dir: PathBuf::new(),
            oci_dir: PathBuf::new(),
            image_dir: PathBuf::new(),
            insecure_registries: String::new(),
        };
        if h.dir.exists() {
            h.destroy();
        }
    }
    // a registry left running in the switch namespace
    let _ = sh::sh(&format!(
        "for p in $(ip netns pids {} 2>/dev/null); do kill -9 $p; done; true",
        net.switch_ns()
    ));
    net.down_all();
    let _ = sh::sh(&format!("umount -l {0}/hosts 2>/dev/null; rm -rf {0}", dir.display()));
}
