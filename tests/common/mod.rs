//! Helpers for the lab tests: a lab per test, the CLI on its hosts, and etcd clients that run
//! inside the lab's LAN (the switch namespace), as a user's client on that network would.
//! Each test crate uses a part of them.
#![allow(dead_code)]

pub mod hazard;
pub mod plane;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use runc_etcd_testkit::lab::{Lab, LabHost, netns};

pub const V_OLD: &str = "3.4.23";
pub const V_MID: &str = "3.5.16";
pub const V_NEW: &str = "3.5.30";

pub fn lab(hosts: u8) -> Lab {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_runc-etcd"))
        .parent()
        .unwrap()
        .to_path_buf();
    Lab::up(hosts, &bin).unwrap_or_else(|e| panic!("lab: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `runc-etcd host <args>` on `h`, which must succeed.
pub fn ok(h: &LabHost, args: &[&str]) -> String {
    h.runc_etcd(args).unwrap_or_else(|e| panic!("{e}"))
}

/// `runc-etcd host <args>` on `h`, which must fail with `code`; returns stderr.
pub fn fails(h: &LabHost, code: i32, args: &[&str]) -> String {
    let mut full = vec!["host"];
    full.extend_from_slice(args);
    let out = h.cli(&full);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}: runc-etcd {}\n{}",
        h.name(),
        full.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const MEMBER: &str = "/var/lib/runc-etcd/etcd";

pub fn endpoint(h: &LabHost) -> String {
    h.client_url()
}

/// A client identity of the lab's cluster (the first host's, as an admin on it would use).
pub fn identity(lab: &Lab) -> Option<TlsOptions> {
    lab.hosts.iter().find_map(|h| {
        let read = |f: &str| std::fs::read_to_string(h.path(&format!("{MEMBER}/client/{f}"))).ok();
        let (ca, cert, key) = (read("ca.crt")?, read("client.crt")?, read("client.key")?);
        Some(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(cert, key)),
        )
    })
}

pub fn create(lab: &Lab, n: u8, version: &str) {
    lab.create(n, version, false).unwrap_or_else(|e| panic!("{e}"));
}

pub fn create_plain(lab: &Lab, n: u8, version: &str) {
    lab.create(n, version, true).unwrap_or_else(|e| panic!("{e}"));
}

pub fn join(lab: &Lab, n: u8, via: u8, version: &str) {
    lab.join(n, via, version).unwrap_or_else(|e| panic!("{e}"));
}

/// create on h1, join h2 and h3.
pub fn cluster3(lab: &Lab, version: &str) {
    create(lab, 1, version);
    join(lab, 2, 1, version);
    join(lab, 3, 1, version);
}

pub async fn connect(endpoints: Vec<String>, tls: Option<TlsOptions>) -> Client {
    Client::connect(endpoints, Some(options_with(tls)))
        .await
        .expect("connect")
}

fn options_with(tls: Option<TlsOptions>) -> ConnectOptions {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    match tls {
        Some(tls) => opts.with_tls(tls),
        None => opts,
    }
}

/// A client identity a test may replace while a writer uses it (`Writer::start_reloading`).
#[derive(Clone)]
pub struct ReloadableTls(Arc<std::sync::Mutex<(u64, Option<TlsOptions>)>>);

impl ReloadableTls {
    pub fn new(tls: Option<TlsOptions>) -> ReloadableTls {
        ReloadableTls(Arc::new(std::sync::Mutex::new((0, tls))))
    }

    /// A new identity: the writer connects with it after its next failed write.
    pub fn set(&self, tls: Option<TlsOptions>) {
        let mut held = self.0.lock().unwrap();
        *held = (held.0 + 1, tls);
    }

    fn current(&self) -> (u64, Option<TlsOptions>) {
        self.0.lock().unwrap().clone()
    }
}

/// Runs `f` with a client of `endpoints`, inside the lab's LAN.
pub fn with_client<F, Fut, T>(lab: &Lab, endpoints: Vec<String>, f: F) -> T
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let tls = identity(lab);
    netns::run_in(&lab.client_ns(), move || async move {
        f(connect(endpoints, tls).await).await
    })
}

pub fn put(lab: &Lab, via: &LabHost, key: &str, value: &str) {
    let (k, v) = (key.to_string(), value.to_string());
    with_client(lab, vec![endpoint(via)], move |mut c| async move {
        c.put(k, v, None).await.expect("put")
    });
}

/// Every key under `prefix` with its value, read (linearizably) through `via`.
pub fn keys(lab: &Lab, via: &LabHost, prefix: &str) -> BTreeMap<String, String> {
    let p = prefix.to_string();
    with_client(lab, vec![endpoint(via)], move |mut c| async move {
        let resp = c.get(p, Some(GetOptions::new().with_prefix())).await.expect("get");
        resp.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
            .collect()
    })
}

/// (name, is_learner, started) of every member, as `member list` through `via` shows them.
pub fn members(lab: &Lab, via: &LabHost) -> Vec<(String, bool, bool)> {
    with_client(lab, vec![endpoint(via)], |mut c| async move {
        let resp = c.member_list().await.expect("member list");
        let mut v: Vec<_> = resp
            .members()
            .iter()
            .map(|m| (m.name().to_string(), m.is_learner(), !m.client_urls().is_empty()))
            .collect();
        v.sort();
        v
    })
}

/// etcd's version as each endpoint reports it.
pub fn versions(lab: &Lab, hosts: &[&LabHost]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            with_client(lab, vec![endpoint(h)], |mut c| async move {
                c.status().await.expect("status").version().to_string()
            })
        })
        .collect()
}

pub fn unit_prop(h: &LabHost, prop: &str) -> String {
    h.check(&["systemctl", "show", "--value", "-p", prop, "runc-etcd@etcd.service"])
        .unwrap()
        .trim()
        .to_string()
}

/// Waits until `cond` holds (polling), or panics with `what`.
pub fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A client writing `w/<n>` keys in a loop through every endpoint, remembering each write etcd
/// acknowledged. Writes that fail (a member is down, an election) are retried as new keys.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// How many writes were acknowledged so far.
    acked: Arc<std::sync::atomic::AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Writer {
    pub fn start(lab: &Lab, endpoints: Vec<String>) -> Writer {
        Self::start_with(lab, endpoints, identity(lab))
    }

    pub fn start_with(lab: &Lab, endpoints: Vec<String>, tls: Option<TlsOptions>) -> Writer {
        Self::start_in(&lab.client_ns(), endpoints, tls)
    }

    /// A writer in network namespace `ns` (the LAN's, or a host's: an application on a node).
    pub fn start_in(ns: &str, endpoints: Vec<String>, tls: Option<TlsOptions>) -> Writer {
        Self::start_reloading(ns, endpoints, ReloadableTls::new(tls))
    }

    /// A writer that, like an application re-reading its mounted Secret, connects again with
    /// `tls`'s newest identity once a write fails after it changed.
    pub fn start_reloading(ns: &str, endpoints: Vec<String>, tls: ReloadableTls) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = count.clone();
        let handle = netns::spawn_in(ns, move || async move {
            let (mut generation, first) = tls.current();
            let mut c = connect(endpoints.clone(), first).await;
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w/{n:08}");
                if c.put(key.clone(), n.to_string(), None).await.is_ok() {
                    acked.push(key);
                    counter.store(acked.len(), Ordering::Relaxed);
                } else {
                    let (newest, options) = tls.current();
                    if newest != generation
                        && let Ok(again) = Client::connect(endpoints.clone(), Some(options_with(options))).await
                    {
                        (c, generation) = (again, newest);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        });
        Writer {
            stop,
            acked: count,
            handle,
        }
    }

    /// How many writes were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops writing; returns the acknowledged keys.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// Every acknowledged key is readable through `via`.
pub fn assert_all_there(lab: &Lab, via: &LabHost, acked: &[String]) {
    let have = keys(lab, via, "w/");
    assert_none_missing(acked, |k| have.contains_key(k));
}

/// Every key in `acked` is one the cluster `has`; else the first lost ones are named.
pub fn assert_none_missing(acked: &[String], has: impl Fn(&str) -> bool) {
    let lost: Vec<_> = acked.iter().filter(|k| !has(k)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Whether `path` and each folder under `root` above it is readable by root only: 0700 folders
/// and a 0600 file (snapshots, archives and backups hold the whole keyspace). Returns what is not.
pub fn not_private(root: &std::path::Path, path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut wrong = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at.filter(|p| p.starts_with(root) && *p != root) {
        let meta = std::fs::metadata(p).unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        let mode = meta.permissions().mode() & 0o777;
        if mode != want {
            wrong.push(format!("{} is {mode:o}, not {want:o}", p.display()));
        }
        at = p.parent();
    }
    wrong
}
