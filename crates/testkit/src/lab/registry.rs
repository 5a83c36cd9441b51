//! Servers in the lab's switch namespace, on the LAN address every host can reach: a real OCI
//! registry (Debian's docker-registry, the CNCF distribution server) and a real S3-compatible
//! object store (s3s-fs from crates.io, installed by scripts/setup.sh) for backups.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::host::{failed, io_err};
use super::net::Net;
use super::sh::LabResult;

pub const PORT: u16 = 5000;
pub const S3_PORT: u16 = 9000;
/// The lab store's keys (a test server on a private network).
pub const S3_ACCESS_KEY: &str = "runc-etcd-lab";
pub const S3_SECRET_KEY: &str = "runc-etcd-lab-secret";

/// A server process, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `10.77.<lab>.1:<port>`
    pub address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program args` in the switch namespace (output to `dir/<log>`) and waits until it listens.
fn serve(net: &Net, dir: &Path, log: &str, address: String, program: &Path, args: &[String]) -> LabResult<Server> {
    let log_path = dir.join(log);
    let out = std::fs::File::create(&log_path).map_err(io_err("creating a server log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &net.switch_ns()])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(io_err("log"))?)
        .stderr(out)
        .spawn()
        .map_err(io_err("starting a lab server"))?;
    let mut server = Server { child, address };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = server.address.clone();
        let up = super::netns::run_in(&net.switch_ns(), move || async move {
            tokio::net::TcpStream::connect(a).await.is_ok()
        });
        if up {
            return Ok(server);
        }
        if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(failed(
                &program.display().to_string(),
                format!("did not listen on {}: {log}", server.address),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn start_registry(net: &Net, dir: &Path) -> LabResult<Server> {
    let address = format!("{}:{PORT}", net.gateway());
    let storage = dir.join("registry");
    std::fs::create_dir_all(&storage).map_err(io_err("creating registry storage"))?;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            storage.display()
        ),
    )
    .map_err(io_err("writing registry.yml"))?;
    let args = ["serve".to_string(), config.display().to_string()];
    serve(net, dir, "registry.log", address, Path::new("docker-registry"), &args)
}

/// The s3s-fs binary: on PATH, or where scripts/setup.sh installs it.
fn s3s_fs() -> PathBuf {
    let installed = super::images::cache_dir().join("tools/bin/s3s-fs");
    if installed.is_file() {
        installed
    } else {
        PathBuf::from("s3s-fs")
    }
}

/// An S3-compatible store with the buckets `buckets` (folders under its root).
pub fn start_s3(net: &Net, dir: &Path, buckets: &[&str]) -> LabResult<Server> {
    let root = dir.join("s3");
    for b in buckets {
        std::fs::create_dir_all(root.join(b)).map_err(io_err("creating a bucket"))?;
    }
    let args = [
        "--host",
        &net.gateway().to_string(),
        "--port",
        &S3_PORT.to_string(),
        "--access-key",
        S3_ACCESS_KEY,
        "--secret-key",
        S3_SECRET_KEY,
        &root.display().to_string(),
    ]
    .map(String::from);
    let address = format!("{}:{S3_PORT}", net.gateway());
    serve(net, dir, "s3.log", address, &s3s_fs(), &args)
}
