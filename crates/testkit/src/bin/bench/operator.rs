//! `runc-etcd-bench operator`: time from applying an EtcdCluster to Available (3 members, TLS),
//! first with images pulled from the registry, then with them already on the hosts; and the
//! operator process's memory and CPU while it manages many clusters.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use runc_etcd_api::EtcdCluster;
use runc_etcd_testkit::lab::control::ControlPlane;

use super::{bin_dir, lab_up, secs};

pub fn spec(name: &str, size: u32, image: &str, version: &str, base_port: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name},
        "spec": {"size": size, "version": version, "image": image,
                 "ports": {"client": base_port, "peer": base_port + 1, "metrics": base_port + 2}},
    })
}

pub fn available(c: &EtcdCluster, size: i32) -> bool {
    let s = c.status.clone().unwrap_or_default();
    let cond = |t: &str| s.conditions.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
    s.ready_members == size
        && s.members.len() == size as usize
        && cond("Available").as_deref() == Some("True")
        && cond("Progressing").as_deref() == Some("False")
}

pub async fn wait_until(api: &Api<EtcdCluster>, what: &str, cond: impl Fn(&[EtcdCluster]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = api.list(&Default::default()).await.expect("list").items;
        if cond(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// CPU seconds (user + system) a process has used.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<f64> = after_comm.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the command name
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn run(version: &str, rounds: u32, clusters: u32) -> ExitCode {
    let Some(lab) = lab_up(3, version) else {
        return ExitCode::FAILURE;
    };
    runc_etcd_host::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let image = lab.image(version);
    rt.block_on(async {
        let mut cp = ControlPlane::start(&lab, &bin_dir()).await.expect("control plane");
        cp.start_operator(&[]).expect("operator");
        let pid = cp.operator_pid(0);
        let api: Api<EtcdCluster> = Api::namespaced(cp.client.clone(), &cp.namespace);
        let apply = PatchParams::apply("bench").force();
        let spec_of = |name: &str, size, port| spec(name, size, &image, version, port);

        let mut warm = Vec::new();
        for round in 0..=rounds {
            let t = Instant::now();
            api.patch("bench", &apply, &Patch::Apply(spec_of("bench", 3, 2379)))
                .await
                .expect("apply");
            wait_until(&api, "Available", |l| l.iter().any(|c| available(c, 3))).await;
            let took = t.elapsed();
            let how = if round == 0 {
                "images pulled from the registry"
            } else {
                warm.push(took);
                "images already on the hosts    "
            };
            println!("apply → Available, 3 members, TLS, {how}: {}", secs(took));
            api.delete("bench", &DeleteParams::default()).await.expect("delete");
            wait_until(&api, "deletion", |l| l.is_empty()).await;
        }
        warm.sort();
        if let Some(median) = warm.get(warm.len() / 2) {
            println!("median warm apply → Available: {}", secs(*median));
        }

        let (idle_rss, _) = memory(pid);
        let t = Instant::now();
        for i in 0..clusters {
            let name = format!("c{i:02}");
            api.patch(&name, &apply, &Patch::Apply(spec_of(&name, 1, 20000 + 10 * i)))
                .await
                .expect("apply");
        }
        wait_until(&api, "every cluster Available", |l| {
            l.len() == clusters as usize && l.iter().all(|c| available(c, 1))
        })
        .await;
        println!("{clusters} one-member clusters applied at once → all Available: {}", secs(t.elapsed()));
        let (busy_rss, peak) = memory(pid);
        let cpu_before = cpu(pid);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let idle_cpu = (cpu(pid) - cpu_before) / 30.0;
        let (rss, _) = memory(pid);
        println!(
            "operator memory: {idle_rss:.1} MiB with no cluster; {busy_rss:.1} MiB with {clusters} (peak {peak:.1} MiB), \
             {rss:.1} MiB after 30 s; {:.2} MiB per cluster",
            (rss - idle_rss) / f64::from(clusters.max(1))
        );
        println!(
            "operator CPU with {clusters} converged clusters: {:.1}% of a core ({:.3}% per cluster)",
            idle_cpu * 100.0,
            idle_cpu * 100.0 / f64::from(clusters.max(1))
        );
        for i in 0..clusters {
            let _ = api.delete(&format!("c{i:02}"), &DeleteParams::default()).await;
        }
        wait_until(&api, "deletion", |l| l.is_empty()).await;
        ExitCode::SUCCESS
    })
}
