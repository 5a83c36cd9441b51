//! `runc-etcd-bench host`: how long the host CLI takes to bring up a 3-member cluster (create +
//! 2 joins → healthy) on simulated hosts, next to the same three etcd members started by hand as
//! plain processes in the same lab, measured in one run.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use runc_etcd_testkit::lab::{Lab, LabHost, images, netns};

use super::{lab_up, secs};

/// create on the first host, join the other two; returns the time of each step. Plain HTTP,
/// so the comparison with plain etcd processes is like for like.
fn runc_etcd_cluster(lab: &Lab, hosts: [u8; 3], version: &str) -> Vec<Duration> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let t = Instant::now();
            let step = if i == 0 {
                lab.create(n, version, true)
            } else {
                lab.join(n, hosts[0], version)
            };
            step.unwrap_or_else(|e| panic!("{e}"));
            t.elapsed()
        })
        .collect()
}

fn teardown(lab: &Lab, hosts: [u8; 3]) {
    for (n, args) in [
        (hosts[2], vec!["remove", "--yes"]),
        (hosts[1], vec!["remove", "--yes"]),
        (hosts[0], vec!["remove", "--yes", "--force"]),
    ] {
        lab.host(n).runc_etcd(&args).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Three plain etcd processes, bootstrapped statically as one would by hand; time to all healthy.
fn plain_cluster(lab: &Lab, hosts: [&LabHost; 3], version: &str) -> (Duration, Vec<Child>) {
    let etcd = images::cache_dir().join("etcd").join(version).join("etcd");
    let peers: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}=http://{}:2380", h.name(), h.ip()))
        .collect();
    let t = Instant::now();
    let children = hosts
        .iter()
        .map(|h| {
            let ip = h.ip();
            Command::new("nsenter")
                .args(["-t", &h.pid().expect("host runs").to_string(), "-a", "--"])
                .arg(&etcd)
                .args(["--name", &h.name(), "--data-dir", "/tmp/plain-etcd"])
                .args(["--listen-client-urls", &format!("http://{ip}:2379")])
                .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
                .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
                .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
                .args(["--initial-cluster", &peers.join(","), "--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nsenter runs")
        })
        .collect();
    let endpoints: Vec<String> = hosts.iter().map(|h| format!("http://{}:2379", h.ip())).collect();
    netns::run_in(&lab.client_ns(), move || async move {
        loop {
            let mut healthy = 0;
            for ep in &endpoints {
                if runc_etcd_host::etcd::Access::plain().health(ep).await.is_ok() {
                    healthy += 1;
                }
            }
            if healthy == endpoints.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (t.elapsed(), children)
}

pub fn run(version: &str, rounds: u32) -> ExitCode {
    let Some(lab) = lab_up(6, version) else {
        return ExitCode::FAILURE;
    };
    let ours = [1, 2, 3];
    let plain = [lab.host(4), lab.host(5), lab.host(6)];

    let cold = runc_etcd_cluster(&lab, ours, version);
    let fmt = |steps: &[Duration]| {
        format!(
            "create {} + join {} + join {} = {}",
            secs(steps[0]),
            secs(steps[1]),
            secs(steps[2]),
            secs(steps.iter().sum())
        )
    };
    println!("runc-etcd, images pulled from the registry:   {}", fmt(&cold));
    let mut warm_totals = Vec::new();
    for _ in 0..rounds {
        teardown(&lab, ours);
        let warm = runc_etcd_cluster(&lab, ours, version);
        println!("runc-etcd, images already unpacked:           {}", fmt(&warm));
        warm_totals.push(warm.iter().sum::<Duration>());
    }
    let (plain_time, mut children) = plain_cluster(&lab, plain, version);
    println!(
        "plain etcd processes, static bootstrap:       3 started at once → 3 healthy in {}",
        secs(plain_time)
    );
    if !warm_totals.is_empty() {
        warm_totals.sort();
        let median = warm_totals[warm_totals.len() / 2];
        println!(
            "median warm runc-etcd / plain: {:.1}x ({} vs {}). runc-etcd adds members one at a time, as learners promoted \
             once caught up; etcd refuses the next member add for ~5 s after a promotion (strict reconfig check), \
             which the second join waits out.",
            median.as_secs_f64() / plain_time.as_secs_f64(),
            secs(median),
            secs(plain_time)
        );
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    ExitCode::SUCCESS
}
