//! `runc-etcd-bench backup`: on one simulated host, a member filled to about 256 MB; then the
//! time and throughput of `runc-etcd host backup` (the same snapshot stream the agents use for
//! EtcdBackups) next to `etcdctl snapshot save` of the same database, and of `runc-etcd host
//! restore` from that backup.

use std::process::{Command, ExitCode};
use std::time::Instant;

use runc_etcd_testkit::lab::netns;

use super::{lab_up, secs};

const MIB: usize = 1 << 20;

pub fn run(version: &str, mib: usize) -> ExitCode {
    let Some(lab) = lab_up(1, version) else {
        return ExitCode::FAILURE;
    };
    let h = lab.host(1);
    if let Err(e) = lab.create(1, version, true) {
        eprintln!("create: {e}");
        return ExitCode::FAILURE;
    }
    let endpoint = h.client_url();
    let t = Instant::now();
    let ep = endpoint.clone();
    netns::run_in(&lab.client_ns(), move || async move {
        let mut c = etcd_client::Client::connect([ep], None).await.expect("connect");
        let value = "x".repeat(MIB);
        for i in 0..mib {
            c.put(format!("fill/{i:05}"), value.clone(), None).await.expect("put");
        }
    });
    println!("filled {mib} MiB in {}", secs(t.elapsed()));

    let t = Instant::now();
    let out = match h.runc_etcd(&["backup"]) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("backup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ours = t.elapsed();
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("Backed up at ")?.strip_suffix(':').map(String::from))
        .unwrap_or_default();
    let size = std::fs::metadata(h.path(&format!("{dir}/snapshot.db"))).map_or(0, |m| m.len());
    let mb = size as f64 / 1e6;

    // etcdctl from the same Debian build, run in the LAN like a client.
    let etcdctl = runc_etcd_testkit::lab::images::cache_dir().join(format!("etcd/{version}/etcdctl"));
    let file = lab.dir.join("etcdctl-snapshot.db");
    let t = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns()])
        .arg(&etcdctl)
        .args(["--endpoints", &endpoint, "snapshot", "save"])
        .arg(&file)
        .env("ETCDCTL_API", "3")
        .output();
    let theirs = t.elapsed();
    let ok = status.as_ref().is_ok_and(|o| o.status.success());
    let their_size = std::fs::metadata(&file).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&file);

    let t = Instant::now();
    let restored = h.runc_etcd(&["restore", "--snapshot", &dir, "--yes"]);
    let restore = t.elapsed();

    println!("database snapshot: {mb:.0} MB");
    println!(
        "runc-etcd host backup:     {} ({:.0} MB/s, with sha256 and the member's config)",
        secs(ours),
        mb / ours.as_secs_f64()
    );
    if ok {
        println!(
            "etcdctl snapshot save:     {} ({:.0} MB/s, {} MB)",
            secs(theirs),
            their_size as f64 / 1e6 / theirs.as_secs_f64(),
            their_size / 1_000_000
        );
    } else {
        println!("etcdctl snapshot save failed: {status:?}");
    }
    match restored {
        Ok(_) => println!(
            "runc-etcd host restore:    {} (checksum, backup of what ran, restore, start, healthy)",
            secs(restore)
        ),
        Err(e) => println!("runc-etcd host restore failed: {e}"),
    }
    ExitCode::SUCCESS
}
