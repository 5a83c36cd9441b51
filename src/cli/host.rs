//! `runc-etcd host …`: the engine's actions by hand, printing what was done, member health,
//! endpoints "for copy & paste" and the next commands, as runc-etcd.sh did.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::Result;
use runc_etcd_host::image::PullOptions;
use runc_etcd_host::layout::Layout;
use runc_etcd_host::names::{InstanceName, MemberName, parse_ip};
use runc_etcd_host::{self as engine, ClusterStatus, Engine, NewMember, pki};

pub const DEFAULT_IMAGE: &str = "gcr.io/etcd-development/etcd:v3.5.16";

#[derive(Debug, Args)]
pub struct HostArgs {
    /// The cluster this member belongs to: names the unit instance (runc-etcd@<cluster>.service),
    /// the folder /var/lib/runc-etcd/<cluster>/ and etcd's initial cluster token.
    #[arg(long, global = true, default_value = "etcd", env = "RUNC_ETCD_CLUSTER")]
    cluster: String,
    /// The runc binary the unit runs. Default: /opt/runc-etcd/bin/runc if present, else runc in PATH.
    #[arg(long, global = true, env = "RUNC_ETCD_RUNC")]
    runc: Option<PathBuf>,
    /// A registry (host:port) to reach over plain HTTP instead of HTTPS. Repeatable.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "RUNC_ETCD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Args)]
struct MemberArgs {
    /// This host's address that etcd listens on and advertises.
    #[arg(long, short = 'i')]
    ip: String,
    /// The etcd member name. Default: this host's name.
    #[arg(long)]
    name: Option<String>,
    /// The etcd image: REGISTRY/REPOSITORY:TAG, or oci-layout:/PATH:TAG for an air-gapped host.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// Port for clients (on --ip).
    #[arg(long, short = 'c', default_value_t = 2379)]
    client_port: u16,
    /// Port for the other members (on --ip).
    #[arg(long, short = 'e', default_value_t = 2380)]
    peer_port: u16,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Start a new one-member cluster on this host (with a new CA: mutual TLS everywhere).
    Create {
        #[command(flatten)]
        member: MemberArgs,
        /// No TLS: clients and peers talk plain HTTP, without authentication. Only on a trusted network.
        #[arg(long)]
        plain_http: bool,
    },
    /// Join this host to a running cluster (as a learner, promoted once it has caught up).
    Join {
        #[command(flatten)]
        member: MemberArgs,
        /// The client URL of a healthy member, e.g. https://10.0.0.11:2379.
        #[arg(long)]
        endpoint: String,
        /// A copy of a member host's /var/lib/runc-etcd/<cluster>/ca/ folder (ca.crt, ca.key), to
        /// issue this member's certificates. Needed for an https:// endpoint.
        #[arg(long)]
        ca_from: Option<PathBuf>,
    },
    /// Deregister this host's member, stop it and archive its config and data. DANGEROUS.
    Remove {
        #[arg(long, short = 'y')]
        yes: bool,
        /// Also when etcd is unreachable, or for the last member of the cluster.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Health and roles of every member, and the endpoints to use.
    Status,
    /// This member's record, etcd config and OCI bundle.
    Getconf,
    /// Swap this member's etcd image (pulled before anything is stopped; the old one is kept).
    Upgrade {
        #[arg(long)]
        image: String,
        /// Also when another member is unhealthy.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Snapshot the keys and copy the config into a timestamped folder.
    Backup,
    /// Replace the keys with a snapshot's and start a new one-member cluster. DANGEROUS.
    Restore {
        /// A snapshot file, a backup folder, or a backup folder's name.
        #[arg(long, short = 's')]
        snapshot: String,
        /// Keep the snapshot's revision. By default it is raised by 1,000,000,000 and marked
        /// compacted, so that watchers (a Kubernetes API server) list again instead of missing or
        /// replaying events (etcd 3.5+; etcd 3.4 cannot).
        #[arg(long)]
        keep_revision: bool,
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Delete the keys under a prefix, or all keys. DANGEROUS.
    DelKeys {
        #[arg(long, short = 'k', conflicts_with = "all")]
        prefix: Option<String>,
        #[arg(long, short = 'a')]
        all: bool,
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Leave initial-cluster out of this member's config (once its data dir exists).
    HideInitCluster,
    /// List the archives of old member files here, with their sizes; with --keep, delete all
    /// but the newest N. DANGEROUS with --keep.
    Archives {
        /// Keep the newest N archives and delete the older ones (at least 1).
        #[arg(long)]
        keep: Option<usize>,
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

fn new_member(instance: InstanceName, a: MemberArgs, ca: Option<pki::Ca>) -> Result<NewMember> {
    let name = a.name.unwrap_or_else(hostname);
    Ok(NewMember {
        instance,
        name: MemberName::new(name)?,
        ip: parse_ip(&a.ip)?,
        client_port: a.client_port,
        peer_port: a.peer_port,
        image: a.image,
        ca,
    })
}

pub async fn run(args: HostArgs) -> Result<()> {
    let instance = InstanceName::new(args.cluster)?;
    let engine = Engine {
        layout: Layout::default(),
        runc: engine::find_runc(args.runc.as_deref())?,
        pull: PullOptions {
            insecure_registries: args.insecure_registries,
        },
    };
    let me = std::env::args().next().unwrap_or_else(|| "runc-etcd".into());
    match args.action {
        Action::Create { member, plain_http } => {
            let ca = if plain_http {
                None
            } else {
                Some(pki::new_ca(instance.as_str())?)
            };
            let m = engine::create(&engine, new_member(instance.clone(), member, ca)?).await?;
            println!(
                "Created cluster {instance} with member {} at {}",
                m.name,
                m.client_url()
            );
            print_status(&engine::status(&engine, &instance).await?);
            println!("Command reference");
            print_reference(&me, &instance, Some(&m.client_url()));
            if m.tls {
                let paths = engine.paths(&instance);
                let c = paths.client();
                println!(
                    "etcdctl:          etcdctl --endpoints {} --cacert {}/ca.crt --cert {}/client.crt --key {}/client.key member list",
                    m.client_url(),
                    c.display(),
                    c.display(),
                    c.display()
                );
                println!(
                    "Joining hosts need a copy of {} for --ca-from (it holds the CA key: copy it safely)",
                    paths.ca().display()
                );
            }
        }
        Action::Join {
            member,
            endpoint,
            ca_from,
        } => {
            let ca = ca_from.as_deref().map(pki::load_ca).transpose()?;
            let m = engine::join(&engine, new_member(instance.clone(), member, ca)?, &endpoint).await?;
            println!("Joined member {} at {} to cluster {instance}", m.name, m.client_url());
            print_status(&engine::status(&engine, &instance).await?);
        }
        Action::Remove { yes, force } => {
            let r = engine::remove(&engine, &instance, yes, force).await?;
            match r.deregistered {
                Some(id) => println!("Removed member {id:x} from cluster {instance}"),
                None => println!("Stopped the member of {instance} here WITHOUT deregistering it from etcd"),
            }
            println!("Unit {} stopped and disabled", engine::systemd::unit_name(&instance));
            println!("Config and data archived in {}", r.archive.display());
        }
        Action::Status => print_status(&engine::status(&engine, &instance).await?),
        Action::Getconf => {
            for (title, text) in engine::getconf(&engine, &instance)? {
                println!("{title}:\n{}\n", text.trim_end());
            }
        }
        Action::Upgrade { image, force } => {
            let r = engine::upgrade(&engine, &instance, &image, None, force).await?;
            if r.changed {
                println!("Upgraded {instance}: {} -> {} (etcd {})", r.from, r.to, r.version);
                println!(
                    "Previous image kept for rollback: {me} host upgrade --cluster {instance} --image {}",
                    r.from
                );
            } else {
                println!("{instance} already runs {} (etcd {}); nothing to do", r.to, r.version);
            }
            print_status(&engine::status(&engine, &instance).await?);
        }
        Action::Backup => {
            let b = engine::backup(&engine, &instance).await?;
            println!("Backed up at {}:", b.dir.display());
            println!("  snapshot.db  {} bytes  sha256 {}", b.size, b.sha256);
            println!("  etcd {}  raft index {}", b.etcd_version, b.raft_index);
            println!(
                "Restore with: {me} host restore --cluster {instance} --snapshot {} --yes",
                b.dir.display()
            );
        }
        Action::Restore {
            snapshot,
            keep_revision,
            yes,
        } => {
            let r = engine::restore(&engine, &instance, &snapshot, yes, !keep_revision).await?;
            let how = if r.resumed {
                " (an interrupted restore, finished)"
            } else {
                ""
            };
            println!("Restored {} into a new one-member cluster{how}", r.snapshot.display());
            if let Some(b) = r.backup_before {
                println!("What ran before was backed up at {}", b.display());
            }
            match r.archive {
                Some(a) => println!("Old data archived in {}", a.display()),
                None => println!(
                    "Old data was archived by the interrupted run, in {}",
                    engine.paths(&instance).archive().display()
                ),
            }
            print_status(&engine::status(&engine, &instance).await?);
            println!("Other hosts of the old cluster: `{me} host remove --force --yes`, then join again:");
            print_reference(&me, &instance, Some(&r.record.client_url()));
        }
        Action::DelKeys { prefix, all, yes } => {
            let n = engine::del_keys(&engine, &instance, prefix.as_deref(), all, yes).await?;
            println!("Deleted {n} key(s)");
        }
        Action::Archives { keep, yes } => {
            if let Some(keep) = keep {
                for a in engine::prune_archives(&engine, &instance, keep, yes)? {
                    println!("Deleted archive {} ({} bytes)", a.path.display(), a.bytes);
                }
            }
            let dir = engine.paths(&instance).archive();
            let all = engine::archives::list(&dir)?;
            println!("{} archive(s) in {}:", all.len(), dir.display());
            for a in all {
                println!("  {}  {} bytes", a.name, a.bytes);
            }
        }
        Action::HideInitCluster => {
            engine::hide_init_cluster(&engine, &instance)?;
            println!(
                "initial-cluster is no longer written to {}",
                engine.paths(&instance).etcd_conf().display()
            );
        }
    }
    Ok(())
}

fn print_status(s: &ClusterStatus) {
    println!(
        "Local unit {}: {} ({}), restarts {}",
        engine::systemd::unit_name(&s.local.instance),
        s.unit.active_state,
        s.unit.sub_state,
        s.unit.n_restarts
    );
    if let Some(why) = &s.unreachable {
        println!("etcd of this member is not reachable: {why}");
        return;
    }
    let healthy = s.members.iter().filter(|m| m.healthy()).count();
    println!("Cluster health: {healthy}/{} members healthy", s.members.len());
    for m in &s.members {
        let urls = m.member.client_urls.join(",");
        match &m.status {
            Ok(st) => println!(
                "  {:x}: name={} role={} version={} db={}B peer={} client={} healthy",
                m.member.id,
                m.member.name,
                m.role(s.leader),
                st.version,
                st.db_size,
                m.member.peer_urls.join(","),
                urls
            ),
            Err(e) => println!(
                "  {:x}: name={} role={} peer={} client={} UNHEALTHY: {e}",
                m.member.id,
                m.member.name,
                m.role(s.leader),
                m.member.peer_urls.join(","),
                urls
            ),
        }
    }
    let urls = s.client_urls();
    println!("For copy & paste:");
    println!("ETCDCTL_ENDPOINTS={}", urls.join(","));
    println!(
        "{}",
        urls.iter().map(|u| format!("etcd:{u}")).collect::<Vec<_>>().join(",")
    );
    let hosts: Vec<&str> = urls
        .iter()
        .map(|u| u.split_once("://").map_or(u.as_str(), |x| x.1))
        .collect();
    println!("etcd://{}", hosts.join(","));
}

fn print_reference(me: &str, instance: &InstanceName, endpoint: Option<&str>) {
    let unit = engine::systemd::unit_name(instance);
    println!("Watch log:        journalctl -fu {unit}");
    println!("Check health:     {me} host status --cluster {instance}");
    if let Some(ep) = endpoint {
        let ca = if ep.starts_with("https") {
            " --ca-from <copy of the ca/ folder>"
        } else {
            ""
        };
        println!("Expand cluster:   {me} host join --cluster {instance} --endpoint {ep}{ca} --ip <this host's IP>");
    }
}
