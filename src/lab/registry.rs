//! A real OCI registry (Debian's docker-registry, the CNCF distribution server) in the lab's
//! switch namespace, on the LAN address every host can reach.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::host::{failed, io_err};
use super::net::Net;
use super::sh::LabResult;

pub const PORT: u16 = 5000;

pub struct Registry {
    pub child: Child,
    /// `10.77.<lab>.1:5000`
    pub address: String,
}

impl Registry {
    pub fn start(net: &Net, dir: &Path) -> LabResult<Registry> {
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
        let log = std::fs::File::create(dir.join("registry.log")).map_err(io_err("registry.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &net.switch_ns(), "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("log"))?)
            .stderr(log)
            .spawn()
            .map_err(io_err("starting docker-registry"))?;
        let mut registry = Registry { child, address };
        let addr = registry.address.clone();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let a = addr.clone();
            let up = super::netns::run_in(&net.switch_ns(), move || async move {
                tokio::net::TcpStream::connect(a).await.is_ok()
            });
            if up {
                return Ok(registry);
            }
            if Instant::now() > deadline || registry.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
                return Err(failed("docker-registry", format!("did not listen on {addr}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
