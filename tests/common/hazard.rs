//! What every hazard test shares (tests/hazards.rs, tests/crashes.rs): the cluster "main" with
//! a writer running, and the end of each: nothing acknowledged lost, one cluster.

use kube::Api;
use kube::api::ListParams;
use runc_etcd_api::EtcdMember;

use super::plane::*;
use super::{V_MID, Writer};
use runc_etcd_testkit::lab::LabHost;

/// The cluster "main" at the lab's 3.5 image, with `extra` spec lines.
pub fn main_cluster(p: &Plane, size: u32, extra: &str) -> runc_etcd_api::EtcdCluster {
    p.apply(&cluster_yaml("main", size, &p.lab.image(V_MID), extra))
        .unwrap();
    p.wait_ready("main", size as i32, 240)
}

/// The client URLs of the members status lists.
pub fn client_urls(c: &runc_etcd_api::EtcdCluster) -> Vec<String> {
    c.status
        .clone()
        .unwrap()
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect()
}

pub fn writer(p: &Plane, c: &runc_etcd_api::EtcdCluster) -> Writer {
    Writer::start_with(&p.lab, client_urls(c), p.client_tls("main"))
}

/// Asks for a rotation of main's CA, as a user does (`runc-etcd.io/rotate-ca`).
pub fn ask_ca_rotation(p: &Plane, request: &str) {
    let ask = serde_json::json!({"metadata": {"annotations": {"runc-etcd.io/rotate-ca": request}}});
    p.rt.block_on(p.clusters().patch(
        "main",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&ask),
    ))
    .unwrap();
}

/// The end of every hazard: the writer stops having made progress (past `writes`, given up to
/// 30 s after the fault), every write it saw acknowledged is there, and the `n` members are one
/// cluster.
pub fn nothing_lost(p: &Plane, c: &runc_etcd_api::EtcdCluster, w: Writer, writes: usize, n: usize) {
    // Writing goes on after the fault: given time (a loaded machine writes slowly), it gets
    // past `writes`; a writer that stays stuck still fails below.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while w.acked() <= writes && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let acked = w.stop();
    assert!(acked.len() > writes, "the writer kept writing: {} writes", acked.len());
    assert_no_write_lost(p, c, &acked);
    assert_one_cluster(p, c, n);
}

/// The EtcdMember objects of the lab namespace.
pub fn etcd_members(p: &Plane) -> Vec<EtcdMember> {
    let api: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    p.rt.block_on(api.list(&ListParams::default())).unwrap().items
}

/// The spans, in seconds since the epoch, in which a unit was down: from its `Stopping`, its
/// main process's exit or its `Starting` (whichever comes first) to its next `Started` (the unit
/// is `Type=notify`, so `Started` is etcd's READY), read from
/// `journalctl -o short-unix`. The journal is the units' own record, so a slow machine cannot
/// turn a slow answer into a member counted down.
pub fn down_spans(journal: &str) -> Vec<(f64, f64)> {
    let mut spans = Vec::new();
    let mut stopping = None;
    for line in journal.lines() {
        let Some((at, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(at) = at.parse::<f64>() else { continue };
        let Some((_, message)) = rest.split_once(": ") else {
            continue;
        };
        let goes_down = message.starts_with("Stopping runc-etcd@")
            || message.starts_with("Starting runc-etcd@")
            || (message.starts_with("runc-etcd@") && message.contains("Main process exited"));
        if goes_down {
            stopping.get_or_insert(at);
        } else if message.starts_with("Started runc-etcd@")
            && let Some(from) = stopping.take()
        {
            spans.push((from, at));
        }
    }
    if let Some(from) = stopping {
        spans.push((from, f64::INFINITY));
    }
    spans
}

/// A moment from which the members' unit journals are read.
pub struct Since(String);

impl Since {
    /// Now (after a pause: journalctl's `--since` has whole seconds, and a start in this second
    /// must not be counted).
    pub fn now() -> Since {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Since(format!("@{}", now.as_secs()))
    }

    /// The journal of `h`'s member unit since then, in journalctl's `format`.
    fn journal(&self, p: &Plane, h: &LabHost, format: &str) -> String {
        let unit = format!("runc-etcd@{}.service", p.instance("main"));
        h.check(&[
            "journalctl",
            "-u",
            &unit,
            "-o",
            format,
            "--no-pager",
            "--since",
            &self.0,
        ])
        .unwrap()
    }

    /// How many times each host's member unit was started since then (host name, count).
    pub fn restarts(&self, p: &Plane) -> Vec<(String, usize)> {
        p.lab
            .hosts
            .iter()
            .map(|h| {
                let journal = self.journal(p, h, "cat");
                let n = journal.lines().filter(|l| l.starts_with("Starting runc-etcd@")).count();
                (h.name().to_string(), n)
            })
            .collect()
    }

    /// A rolling change's promise: every member restarted exactly once, and never two down at
    /// the same time (what breaks a three-member quorum's margin).
    pub fn one_restart_each_one_at_a_time(&self, p: &Plane) {
        self.restarts_each_one_at_a_time(p, 1);
    }

    /// `each` restarts of every member (one per rolling change), never two down at once.
    pub fn restarts_each_one_at_a_time(&self, p: &Plane, each: usize) {
        let mut downs = Vec::new();
        for h in &p.lab.hosts {
            let journal = self.journal(p, h, "short-unix");
            let (host, spans) = (h.name(), down_spans(&journal));
            assert_eq!(
                spans.len(),
                each,
                "{host}: the member restarted {} times, not {each}:\n{journal}",
                spans.len()
            );
            downs.extend(spans);
        }
        for (i, a) in downs.iter().enumerate() {
            for b in &downs[i + 1..] {
                assert!(
                    a.1 <= b.0 || b.1 <= a.0,
                    "two members were down at once: {a:?} and {b:?}"
                );
            }
        }
    }
}

/// A three-member "main" cluster, a writer on it, and every unit active: where a hazard test
/// starts.
pub fn settled_under_writes(p: &Plane) -> (runc_etcd_api::EtcdCluster, Writer) {
    let c = main_cluster(p, 3, "");
    let w = writer(p, &c);
    every_unit_active(p);
    (c, w)
}

/// Waits until every host's member unit is active (the last learner's READY may come after the
/// cluster is Available), so that journal counts from here on are a change's own.
pub fn every_unit_active(p: &Plane) {
    let unit = format!("runc-etcd@{}.service", p.instance("main"));
    super::eventually("every member's unit active", 60, || {
        p.lab.hosts.iter().all(|h| {
            h.check(&["systemctl", "show", "--value", "-p", "ActiveState", &unit])
                .is_ok_and(|s| s.trim() == "active")
        })
    });
}
