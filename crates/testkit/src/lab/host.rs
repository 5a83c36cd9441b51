//! A simulated host: its own network namespace and a real systemd as PID 1 of its own pid, mount,
//! uts, ipc and cgroup namespaces, on an overlay of this machine's `/` whose upper layer is the
//! host's "disk". Rebooting keeps the disk; destroying drops it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::net::Net;
use super::sh::{CommandFailed, LabResult, describe, sh};

const INIT: &str = include_str!("host-init.sh");

#[derive(Debug, Clone)]
pub struct LabHost {
    pub n: u8,
    pub net: Net,
    /// `<lab dir>/hosts/h<n>`: upper/work/merged dirs, logs, pid files.
    pub dir: PathBuf,
    /// Folder of the runc-etcd binaries, bound read-only at /opt/lab/bin.
    pub bin_dir: PathBuf,
    /// The local OCI image layout, bound read-only at /opt/lab/oci.
    pub oci_dir: PathBuf,
    /// The pods' image root (`pod_image`), bound read-only at /opt/lab/image.
    pub image_dir: PathBuf,
    /// Registries the host CLI may reach over plain HTTP.
    pub insecure_registries: String,
}

/// Folders of this host's cgroup in every hierarchy this process sees (so its systemd, etcd and
/// everything else are accounted and killed together).
fn cgroup_dirs(leaf: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            let base = match ctrl {
                "" if Path::new("/sys/fs/cgroup/unified").is_dir() => PathBuf::from("/sys/fs/cgroup/unified"),
                "" => PathBuf::from("/sys/fs/cgroup"),
                c => PathBuf::from("/sys/fs/cgroup").join(c.trim_start_matches("name=")),
            };
            let dir = base.join(path.trim_start_matches('/')).join("runc-etcd-lab").join(leaf);
            base.is_dir().then_some(dir)
        })
        .collect()
}

impl LabHost {
    pub fn name(&self) -> String {
        format!("h{}", self.n)
    }
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.net.host_ip(self.n)
    }
    pub fn ns(&self) -> String {
        self.net.host_ns(self.n)
    }
    fn cgroup_leaf(&self) -> String {
        format!("{}-h{}", self.net.lab, self.n)
    }

    /// The PID (in this machine's namespace) of the host's systemd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("systemd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// A path of the host's file system, seen from outside (only while it runs).
    pub fn path(&self, inside: &str) -> PathBuf {
        let pid = self.pid().expect("host is running");
        PathBuf::from(format!("/proc/{pid}/root")).join(inside.trim_start_matches('/'))
    }

    /// Boots the host; with `reuse`, on the disk it had (a reboot), else on a fresh one.
    pub fn boot(&self, reuse: bool) -> LabResult<()> {
        if self.pid().is_some() {
            return Ok(());
        }
        self.net.up_host(self.n)?;
        let upper = self.dir.join("upper");
        if !reuse || !upper.join("etc").is_dir() {
            let _ = std::fs::remove_dir_all(&self.dir);
            self.write_identity()?;
        }
        for d in ["work", "merged"] {
            let _ = std::fs::remove_dir_all(self.dir.join(d));
            std::fs::create_dir_all(self.dir.join(d)).map_err(io_err("creating host dirs"))?;
        }
        std::fs::write(self.dir.join("console.log"), "").map_err(io_err("creating console.log"))?;
        let init = self.dir.join("host-init.sh");
        std::fs::write(&init, INIT).map_err(io_err("writing host-init.sh"))?;

        let cgroups = cgroup_dirs(&self.cgroup_leaf());
        let mut join = String::new();
        for d in &cgroups {
            std::fs::create_dir_all(d).map_err(io_err("creating a cgroup"))?;
            if d.starts_with("/sys/fs/cgroup/cpuset") {
                // A new v1 cpuset is empty: no task could join it.
                for c in [d.parent().unwrap(), d.as_path()] {
                    let parent = c.parent().unwrap();
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        let _ = std::fs::write(c.join(f), v.trim());
                    }
                }
            }
            join.push_str(&format!("echo $$ > {}/cgroup.procs; ", d.display()));
        }
        let launcher = format!(
            "{join} exec nsenter --net=/run/netns/{ns} -- unshare --pid --fork --kill-child --mount --uts --ipc --cgroup -- bash {init} {dir} {bin} {oci} {image}",
            ns = self.ns(),
            init = init.display(),
            dir = self.dir.display(),
            bin = self.bin_dir.display(),
            oci = self.oci_dir.display(),
            image = self.image_dir.display(),
        );
        let log = std::fs::File::create(self.dir.join("unshare.log")).map_err(io_err("creating unshare.log"))?;
        let child = Command::new("bash")
            .args(["-c", &launcher])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("log"))?)
            .stderr(log)
            .spawn()
            .map_err(io_err("starting the host"))?;
        let unshare = child.id();
        std::fs::write(self.dir.join("unshare.pid"), unshare.to_string()).map_err(io_err("unshare.pid"))?;
        // unshare forks the new namespace's PID 1, which execs systemd once its root is ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
            let systemd = children
                .split_whitespace()
                .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e.ends_with("systemd")));
            if let Some(p) = systemd {
                break p.to_string();
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("unshare.log")).unwrap_or_default();
                return Err(failed(
                    "boot",
                    format!("systemd did not start on {}: {log}", self.name()),
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        };
        std::fs::write(self.dir.join("systemd.pid"), &pid).map_err(io_err("systemd.pid"))?;
        std::mem::forget(child); // reaped by nobody on purpose: the host outlives this handle
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self
                .exec(&["systemctl", "is-system-running"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            let state = String::from_utf8_lossy(&state).trim().to_string();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed("boot", format!("{} stuck in state {state:?}", self.name())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_identity(&self) -> LabResult<()> {
        let u = self.dir.join("upper");
        let etc = u.join("etc/systemd/system");
        std::fs::create_dir_all(&etc).map_err(io_err("creating the host disk"))?;
        std::fs::write(u.join("etc/hostname"), format!("{}\n", self.name())).map_err(io_err("hostname"))?;
        let mut hosts = "127.0.0.1 localhost\n".to_string();
        for i in 1..=9 {
            hosts.push_str(&format!("{} h{i}\n", self.net.host_ip(i)));
        }
        std::fs::write(u.join("etc/hosts"), hosts).map_err(io_err("hosts"))?;
        let id: String = (0..16).map(|_| format!("{:02x}", rand_byte())).collect();
        std::fs::write(u.join("etc/machine-id"), format!("{id}\n")).map_err(io_err("machine-id"))?;
        // A minimal multi-user system: whatever this machine's image enables (getty, logind,
        // databases, timers…) is masked, so a host runs systemd, journald, dbus and our units.
        std::os::unix::fs::symlink("/lib/systemd/system/multi-user.target", etc.join("default.target"))
            .map_err(io_err("default.target"))?;
        let mut masked: Vec<String> = [
            "systemd-logind.service",
            "systemd-sysctl.service",
            "systemd-modules-load.service",
            "systemd-timesyncd.service",
            "systemd-pstore.service",
            "getty@tty1.service",
            "console-getty.service",
            "etcd.service",
            "docker-registry.service",
        ]
        .map(String::from)
        .to_vec();
        for dir in ["/etc/systemd/system", "/lib/systemd/system"] {
            for target in ["multi-user.target.wants", "timers.target.wants", "sockets.target.wants"] {
                for e in std::fs::read_dir(Path::new(dir).join(target))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with("dbus.") && !name.starts_with("systemd-journald") {
                        masked.push(name);
                    }
                }
            }
        }
        for unit in masked {
            let _ = std::os::unix::fs::symlink("/dev/null", etc.join(unit));
        }
        Ok(())
    }

    /// Runs a command inside the host (all its namespaces), returning its output whatever the exit.
    pub fn exec(&self, args: &[&str]) -> LabResult<Output> {
        let pid = self
            .pid()
            .ok_or_else(|| failed("exec", format!("{} is not running", self.name())))?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/opt/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("RUNC_ETCD_INSECURE_REGISTRIES", &self.insecure_registries)
            .stdin(Stdio::null());
        cmd.output().map_err(|e| failed(&describe(&cmd), e.to_string()))
    }

    /// Runs a command inside the host and fails unless it exits 0.
    pub fn check(&self, args: &[&str]) -> LabResult<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            return Err(CommandFailed {
                command: format!("{}: {}", self.name(), args.join(" ")),
                status: out.status.to_string(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `runc-etcd host <args>` inside the host, which must succeed; returns its output.
    pub fn runc_etcd(&self, args: &[&str]) -> LabResult<String> {
        let mut full = vec!["runc-etcd", "host"];
        full.extend_from_slice(args);
        self.check(&full)
    }

    /// The client URL of this host's member of cluster `etcd`: https unless it was made with
    /// --plain-http (as its member record says).
    pub fn client_url(&self) -> String {
        let record: Option<runc_etcd_host::member::MemberRecord> =
            std::fs::read(self.path("/var/lib/runc-etcd/etcd/member.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let plain = record.is_some_and(|r| !r.tls);
        format!("{}://{}:2379", if plain { "http" } else { "https" }, self.ip())
    }

    /// `runc-etcd <args>` inside the host.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec!["runc-etcd"];
        full.extend_from_slice(args);
        self.exec(&full).expect("nsenter runs")
    }

    /// Copies the files of folder `from` on `other` into folder `to` on this host, keeping modes
    /// (what a person does with scp, e.g. for the CA folder a joining host needs).
    pub fn copy_dir_from(&self, other: &LabHost, from: &str, to: &str) -> LabResult<()> {
        let (src, dst) = (other.path(from), self.path(to));
        std::fs::create_dir_all(&dst).map_err(io_err("creating the copy's folder"))?;
        for e in std::fs::read_dir(&src)
            .map_err(io_err("reading the folder to copy"))?
            .flatten()
        {
            std::fs::copy(e.path(), dst.join(e.file_name())).map_err(io_err("copying a file"))?;
        }
        Ok(())
    }

    /// Powers the host off: gracefully (systemd stops every unit) or as a power cut.
    pub fn power_off(&self, graceful: bool) {
        if let Some(pid) = self.pid() {
            let signal = if graceful { libc::SIGRTMIN() + 4 } else { libc::SIGKILL };
            // SAFETY: sending a signal to a pid we started.
            unsafe { libc::kill(pid as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(if graceful { 30 } else { 5 });
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above; the host did not stop in time.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(u) = std::fs::read_to_string(self.dir.join("unshare.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: the unshare launcher we started; its child (the host's PID 1) is gone.
            unsafe { libc::kill(u, libc::SIGKILL) };
            wait_gone(u);
        }
        for d in cgroup_dirs(&self.cgroup_leaf()).iter().rev() {
            let _ = sh(&format!(
                "for p in $(cat $(find {0} -name cgroup.procs) 2>/dev/null); do kill -9 $p 2>/dev/null; done; find {0} -depth -type d -exec rmdir {{}} \\; 2>/dev/null; true",
                d.display()
            ));
        }
        let _ = std::fs::remove_file(self.dir.join("systemd.pid"));
        let _ = sh(&format!("umount -l {}/merged 2>/dev/null; true", self.dir.display()));
    }

    /// Cuts (or restores) this host's TCP traffic on `port` with every other host, both ways,
    /// while everything else still flows: e.g. etcd's peer port, so its peers are unreachable
    /// from it while clients and the operator still reach it.
    pub fn cut_port(&self, port: u16, cut: bool) -> LabResult<()> {
        let op = if cut { "-A" } else { "-D" };
        let ns = self.ns();
        sh(&format!(
            "ip netns exec {ns} iptables {op} INPUT -p tcp --dport {port} -j DROP && \
             ip netns exec {ns} iptables {op} OUTPUT -p tcp --dport {port} -j DROP"
        ))
        .map(|_| ())
    }

    /// Refuses (or accepts again) new TCP connections to and from this host's `port`, while the
    /// established ones go on: a firewall rule that bites only when a member restarts.
    pub fn refuse_new(&self, port: u16, refuse: bool) -> LabResult<()> {
        let op = if refuse { "-A" } else { "-D" };
        let ns = self.ns();
        let new = "-m conntrack --ctstate NEW -j DROP";
        sh(&format!(
            "ip netns exec {ns} iptables {op} INPUT -p tcp --dport {port} {new} && \
             ip netns exec {ns} iptables {op} OUTPUT -p tcp --dport {port} {new}"
        ))
        .map(|_| ())
    }

    /// Drops (or lets through again) TCP traffic from `from` to this host's `port`: e.g. the
    /// operator's route to etcd's client port, while the hosts still reach each other.
    pub fn refuse_from(&self, from: std::net::Ipv4Addr, port: u16, refuse: bool) -> LabResult<()> {
        let op = if refuse { "-A" } else { "-D" };
        sh(&format!(
            "ip netns exec {} iptables {op} INPUT -s {from} -p tcp --dport {port} -j DROP",
            self.ns()
        ))
        .map(|_| ())
    }

    /// Power off (keeping the disk) and boot again.
    pub fn reboot(&self, graceful: bool) -> LabResult<()> {
        self.power_off(graceful);
        self.boot(true)
    }

    pub fn destroy(&self) {
        self.power_off(false);
        let _ = std::fs::remove_dir_all(&self.dir);
        self.net.down_host(self.n);
    }
}

/// Waits until `pid` has exited: reaped if it is our child, else gone or a zombie.
fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // SAFETY: waitpid with WNOHANG on a pid; fails harmlessly if it is not our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) if stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    // SAFETY: getrandom into a 1-byte buffer we own.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, 0) };
    b[0]
}

pub(super) fn failed(command: &str, stderr: String) -> CommandFailed {
    CommandFailed {
        command: command.into(),
        status: "error".into(),
        stderr,
    }
}

pub(super) fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> CommandFailed {
    move |e| failed(what, e.to_string())
}
