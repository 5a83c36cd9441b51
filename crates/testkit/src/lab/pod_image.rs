//! The image the lab's pods run from: built from the Dockerfile with the lab's runc-etcd binary
//! (`scripts/build-image.sh`), once per binary, and its root file system kept in the cache. Each
//! host binds it read-only at `IMAGE_ROOT`; the kubelet stand-in runs every pod on it.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::host::{failed, io_err};
use super::sh::LabResult;

/// Where a host sees the image's root file system.
pub const IMAGE_ROOT: &str = "/opt/lab/image";

/// The root file system of the image built with `bin`, made if this binary has none yet.
/// Concurrent labs wait for one build (a lock); roots of older binaries are removed.
pub fn root_for(bin: &Path) -> LabResult<PathBuf> {
    let meta = std::fs::metadata(bin).map_err(io_err("the lab's binary"))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}-{modified}", meta.len());
    let base = super::images::cache_dir().join("pod-image");
    std::fs::create_dir_all(&base).map_err(io_err("the pod image folder"))?;
    let lock = std::fs::File::create(base.join("lock")).map_err(io_err("the pod image lock"))?;
    lock.lock().map_err(io_err("locking the pod image"))?;
    let root = base.join(&key).join("rootfs");
    if root.join("usr/local/bin/runc-etcd").is_file() {
        return Ok(root);
    }
    for old in std::fs::read_dir(&base)
        .map_err(io_err("the pod image folder"))?
        .flatten()
    {
        if old.path().is_dir() {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(bin)
        .arg("localhost/runc-etcd:lab")
        .arg(&root)
        .output()
        .map_err(io_err("building the pod image"))?;
    if !out.status.success() {
        return Err(failed(
            "building the pod image",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(root)
}

/// The user the image runs as when a pod names none (its `USER`).
pub fn image_user(root: &Path) -> Option<u32> {
    let inspect = std::fs::read(root.with_extension("inspect.json")).ok()?;
    let inspect: serde_json::Value = serde_json::from_slice(&inspect).ok()?;
    let user = inspect["OCIv1"]["config"]["User"].as_str()?;
    user.split(':').next()?.parse().ok()
}
