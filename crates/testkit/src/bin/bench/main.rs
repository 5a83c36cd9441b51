//! `runc-etcd-bench`: commands that print figures (not timed tests), each measured on simulated
//! hosts in one run:
//! - `host`: the host CLI's time to a 3-member cluster, next to plain etcd processes;
//! - `operator`: apply → Available for 3 members, and the operator's memory and CPU with many
//!   clusters;
//! - `backup`: backup throughput next to `etcdctl snapshot save` on the same database, and
//!   restore time;
//! - `day2`: fault → replacement healthy, and the time per member of a rolling upgrade.

mod backup;
mod day2;
mod host;
mod operator;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "runc-etcd-bench", about = "Figures for runc-etcd on simulated hosts")]
struct Args {
    /// etcd version (image tag / Debian build) to use.
    #[arg(long, global = true, default_value = "3.5.16")]
    version: String,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Time to a healthy 3-member cluster with `runc-etcd host`, vs plain etcd processes.
    Host {
        /// How many times to repeat the warm (image already unpacked) run.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Time from `apply` to Available (3 members), and operator memory/CPU with many clusters.
    Operator {
        /// How many times to repeat the warm (image already on the hosts) run.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// How many one-member clusters to run at once for the memory figure.
        #[arg(long, default_value_t = 20)]
        clusters: u32,
    },
    /// Backup MB/s next to `etcdctl snapshot save` on the same database, and restore time.
    Backup {
        /// Database size to fill, in MiB.
        #[arg(long, default_value_t = 256)]
        mib: usize,
    },
    /// Through the operator: a host powered off → its replacement healthy; per-member upgrade time.
    Day2,
}

pub fn bin_dir() -> std::path::PathBuf {
    std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

/// A lab of `hosts` hosts, saying how long it took to boot; None (after saying why) when it fails.
pub fn lab_up(hosts: u8, version: &str) -> Option<runc_etcd_testkit::lab::Lab> {
    let t = std::time::Instant::now();
    match runc_etcd_testkit::lab::Lab::up(hosts, &bin_dir()) {
        Ok(lab) => {
            println!(
                "lab {}: {hosts} hosts up in {} (etcd {version})",
                lab.id,
                secs(t.elapsed())
            );
            Some(lab)
        }
        Err(e) => {
            eprintln!("lab: {e}");
            None
        }
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.what {
        What::Host { rounds } => host::run(&args.version, rounds),
        What::Operator { rounds, clusters } => operator::run(&args.version, rounds, clusters),
        What::Backup { mib } => backup::run(&args.version, mib),
        What::Day2 => day2::run(),
    }
}
