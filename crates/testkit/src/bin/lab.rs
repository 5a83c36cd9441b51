//! `runc-etcd-lab`: simulated hosts for trying runc-etcd by hand (the tests use the same lab).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runc_etcd_testkit::lab::control::ControlPlane;
use runc_etcd_testkit::lab::{self, Lab};

#[derive(Parser)]
#[command(
    name = "runc-etcd-lab",
    about = "Simulated systemd hosts with runc, etcd images and a registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot hosts and a registry; with --cluster, create a cluster on them with `runc-etcd host`.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u8,
        /// etcd version (image tag) for the cluster.
        #[arg(long, default_value = "3.5.16")]
        version: String,
        /// Only boot the hosts.
        #[arg(long)]
        no_cluster: bool,
        /// Instead of a hand-made cluster, run a Kubernetes API server (in-process) and the
        /// operator, with a Node per host: `kubectl apply` EtcdClusters against it. Runs in the
        /// foreground until Ctrl-C, then tears the lab down.
        #[arg(long, conflicts_with = "no_cluster")]
        operator: bool,
    },
    /// Run a command on a host of a kept lab, e.g. `exec 1 h2 -- runc-etcd host status`.
    Exec {
        lab: u8,
        host: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Serve a Kubernetes API on its own, as a real cluster would be reached: HTTPS with its own
    /// CA, a bearer token, and a kubeconfig written into --dir. Point RUNC_ETCD_TEST_KUBECONFIG
    /// at that kubeconfig to run the control-plane tests through their real-cluster path.
    /// Runs in the foreground until Ctrl-C or SIGTERM.
    Apiserver {
        /// The address clients use (its certificate names this IP); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "/var/tmp/runc-etcd-lab/apiserver")]
        dir: std::path::PathBuf,
    },
    /// Tear down every lab no running process holds (kept ones, and leftovers of killed runs).
    Down,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Up {
            hosts,
            version,
            operator: true,
            ..
        } => up_operator(hosts, &version),
        Cmd::Up {
            hosts,
            version,
            no_cluster,
            ..
        } => up(hosts, &version, no_cluster),
        Cmd::Exec { lab, host, command } => {
            let Some(h) = lab::kept_hosts(lab).into_iter().find(|h| h.name() == host) else {
                eprintln!("no running host {host} in lab {lab} (see `runc-etcd-lab up`)");
                return ExitCode::FAILURE;
            };
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = h.exec(&args).expect("nsenter runs");
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            ExitCode::from(out.status.code().unwrap_or(1) as u8)
        }
        Cmd::Apiserver { listen, dir } => apiserver(listen, &dir),
        Cmd::Down => {
            for id in lab::down_all() {
                println!("lab {id} down");
            }
            ExitCode::SUCCESS
        }
    }
}

fn up(hosts: u8, version: &str, no_cluster: bool) -> ExitCode {
    let mut lab = match Lab::up(hosts, &bin_dir()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    lab.keep = true;
    println!(
        "lab {}: registry {} with etcd {}",
        lab.id,
        lab.registry_address(),
        lab.versions.join(", ")
    );
    for h in &lab.hosts {
        println!("  {} {} (network namespace {})", h.name(), h.ip(), h.ns());
    }
    if !no_cluster {
        for n in 1..=hosts {
            let step = if n == 1 {
                lab.create(1, version, false)
            } else {
                lab.join(n, 1, version)
            };
            let action = if n == 1 { "create" } else { "join" };
            println!("\n$ h{n}: runc-etcd host {action} …");
            match step {
                Ok(out) => print!("{out}"),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let id = lab.id;
    println!("\nReach it:");
    println!("  runc-etcd-lab exec {id} h1 -- runc-etcd host status");
    println!("  runc-etcd-lab exec {id} h2 -- journalctl -u runc-etcd@etcd --no-pager");
    let etcdctl = runc_etcd_testkit::lab::images::cache_dir()
        .join("etcd")
        .join(version)
        .join("etcdctl");
    println!(
        "  runc-etcd-lab exec {id} h2 -- {} --endpoints https://{}:2379 --cacert {c}/ca.crt --cert {c}/client.crt --key {c}/client.key member list",
        etcdctl.display(),
        lab.host(1).ip(),
        c = "/var/lib/runc-etcd/etcd/client"
    );
    println!("  runc-etcd-lab down");
    ExitCode::SUCCESS
}

fn bin_dir() -> std::path::PathBuf {
    std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

/// The lab with a control plane: API server, Nodes, operator, agents played from DaemonSets.
fn up_operator(hosts: u8, version: &str) -> ExitCode {
    let lab = match Lab::up(hosts, &bin_dir()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    runc_etcd_host::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut cp = match ControlPlane::start(&lab, &bin_dir()).await {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("control plane: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = cp.start_operator(&[]) {
            eprintln!("operator: {e}");
            return ExitCode::FAILURE;
        }
        println!("lab {}: {} hosts, registry {}", lab.id, hosts, lab.registry_address());
        println!("API server: {}", cp.server.as_ref().map(|s| s.url()).unwrap_or_default());
        println!("operator log: {}", lab.dir.join("operator-0.log").display());
        println!("\nTry:");
        println!("  export KUBECONFIG={}", cp.local_kubeconfig.display());
        println!("  kubectl get nodes");
        println!(
            "  printf 'apiVersion: runc-etcd.io/v1alpha1\\nkind: EtcdCluster\\nmetadata: {{name: main}}\\nspec: {{size: 3, version: {version}, image: {}}}\\n' | kubectl apply -f -",
            lab.image(version)
        );
        println!("  kubectl get etcdclusters -w");
        println!("  kubectl delete etcdcluster main");
        println!("\nCtrl-C stops everything.");
        let _ = tokio::signal::ctrl_c().await;
        if let Err(e) = cp.release().await {
            eprintln!("releasing the control plane: {e}");
        }
        ExitCode::SUCCESS
    })
}

/// The standalone API server, until Ctrl-C or SIGTERM.
fn apiserver(listen: std::net::SocketAddr, dir: &std::path::Path) -> ExitCode {
    runc_etcd_host::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let (server, kubeconfig) = match lab::external::standalone(listen, dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("apiserver: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("API server: {}", server.url());
        println!("kubeconfig: {}", kubeconfig.display());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        ExitCode::SUCCESS
    })
}
