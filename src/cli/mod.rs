//! The `runc-etcd` command line. Subcommands map one to one onto library calls.

mod host;
mod kube;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "runc-etcd",
    version,
    about = "etcd clusters on the hosts themselves: systemd → runc → etcd"
)]
pub struct Cli {
    /// Log every step in detail.
    #[arg(long, short = 'x', global = true, env = "RUNC_ETCD_DEBUG")]
    pub debug: bool,
    /// Logs as JSON lines (for collectors) instead of text for a person.
    #[arg(long, global = true, env = "RUNC_ETCD_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the etcd member of this host by hand, with no Kubernetes (the runc-etcd.sh actions).
    Host(host::HostArgs),
    /// Run the controller: EtcdClusters → agents, members, Services (leader-elected).
    Operator(kube::OperatorArgs),
    /// Run the host agent of one node for one cluster: makes its EtcdMembers real.
    Agent(kube::AgentArgs),
    /// Print the CustomResourceDefinitions (EtcdCluster, EtcdMember) as YAML.
    Crd,
}

/// Logs to stderr. `timed`: with timestamps (the long-running operator and agent); a person
/// running a host command reads them without.
pub fn init_tracing(debug: bool, json: bool, timed: bool) {
    let filter = if debug {
        "runc_etcd=debug,info"
    } else {
        "runc_etcd=info,warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNC_ETCD_LOG").unwrap_or_else(|_| filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        use std::io::IsTerminal;
        let builder = builder.with_target(false).with_ansi(std::io::stderr().is_terminal());
        if timed {
            builder.init();
        } else {
            builder.without_time().init();
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let timed = matches!(cli.command, Command::Operator(_) | Command::Agent(_));
    init_tracing(cli.debug, cli.log_json, timed);
    runc_etcd_host::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Host(args) => host::run(args).await,
            Command::Operator(args) => kube::operator(args).await,
            Command::Agent(args) => kube::agent(args).await,
            Command::Crd => {
                print!("{}", runc_etcd_api::crds_yaml());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            // 2: fix the input; 1: something on the host or in etcd failed.
            ExitCode::from(if e.is_user_error() { 2 } else { 1 })
        }
    }
}
