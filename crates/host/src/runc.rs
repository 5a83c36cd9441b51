//! One-off commands in a member's image, run by runc in the foreground (the image's own
//! etcdutl/etcdctl restores snapshots, so the tool always matches the etcd version).

use std::path::Path;

use tokio::process::Command;

use crate::error::{Error, IoContext, Result};

/// Runs the bundle in `bundle_dir` as container `id` and returns its output; fails on a non-zero exit.
pub async fn run_oneoff(runc: &Path, runc_root: &Path, bundle_dir: &Path, id: &str) -> Result<String> {
    std::fs::create_dir_all(runc_root).ctx("creating runc's state dir", runc_root)?;
    let root = runc_root.to_string_lossy();
    let out = Command::new(runc)
        .args(["--root", &root, "--systemd-cgroup", "run", "--bundle"])
        .arg(bundle_dir)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Command {
            command: format!("{} run {id}", runc.display()),
            message: e.to_string(),
        })?;
    let _ = Command::new(runc)
        .args(["--root", &root, "delete", "--force", id])
        .output()
        .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("runc run {id}"),
            message: format!("{}: {}", out.status, text.trim()),
        });
    }
    Ok(text)
}
