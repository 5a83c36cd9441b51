//! `runc-etcd operator` and `runc-etcd agent`: the two long-running parts. Both find the API
//! server as kubectl does (in-cluster service account, or $KUBECONFIG / ~/.kube/config).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::operator::AgentImage;
use runc_etcd_host::image::PullOptions;
use runc_etcd_host::layout::Layout;
use runc_etcd_host::{Engine, find_runc};

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "runc-etcd")]
    namespace: String,
    /// This instance's name in the Lease. Default: the host name and process ID.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing it; a standby takes over after that.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_seconds: u64,
    /// The image the agent DaemonSets run (this operator's own image, normally).
    #[arg(long, env = "RUNC_ETCD_AGENT_IMAGE", default_value = concat!("ghcr.io/runc-etcd/runc-etcd:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// The service account of the agent pods (made by the Helm chart, with its RBAC).
    #[arg(long, env = "RUNC_ETCD_AGENT_SERVICE_ACCOUNT", default_value = "runc-etcd-agent")]
    agent_service_account: String,
    /// The PriorityClass of the agent pods; empty for none. Some clusters limit the critical
    /// classes to kube-system with a ResourceQuota: name a class of your own there.
    #[arg(long, env = "RUNC_ETCD_AGENT_PRIORITY_CLASS", default_value = "system-node-critical", value_parser = priority_class)]
    agent_priority_class: String,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// The Kubernetes cluster's DNS domain: member serving certificates name the client Service
    /// as `<cluster>-client.<namespace>.svc.<domain>` too.
    #[arg(long, env = "RUNC_ETCD_CLUSTER_DOMAIN", default_value = "cluster.local", value_parser = dns_domain)]
    cluster_domain: String,
}

/// Whether `s` is a DNS subdomain: lowercase labels of letters, digits and inner hyphens.
fn subdomain(s: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    s.len() <= 253 && s.split('.').all(label)
}

/// A PriorityClass name (a DNS subdomain), or empty for none.
fn priority_class(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a PriorityClass name; use lowercase letters, digits, '-' and '.', such as system-node-critical, or empty for none"
        ))
    }
}

/// A DNS domain such as `cluster.local`: lowercase labels of letters, digits and inner hyphens.
fn dns_domain(s: &str) -> std::result::Result<String, String> {
    if subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a DNS domain; use lowercase labels such as cluster.local"
        ))
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Namespace of the EtcdCluster this agent serves.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Name of the EtcdCluster this agent serves.
    #[arg(long)]
    cluster: String,
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The runc binary the units run. Default: /opt/runc-etcd/bin/runc if present, else runc in PATH.
    #[arg(long, env = "RUNC_ETCD_RUNC")]
    runc: Option<PathBuf>,
    /// A registry (host:port) to reach over plain HTTP instead of HTTPS. Repeatable.
    #[arg(
        long = "insecure-registry",
        env = "RUNC_ETCD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Where to serve /metrics, /healthz and /readyz (the DaemonSet passes the cluster's
    /// `ports.agent` on the node's address). None: not served.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// Copy this runc binary to /opt/runc-etcd/bin/runc on the host first (the agent image's
    /// own runc: the units run it from the host).
    #[arg(long)]
    install_runc: Option<PathBuf>,
    /// How many archives of old member files to keep on this node (the cluster's
    /// `spec.recovery.keepArchives`); older ones are deleted, each with an Event.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    keep_archives: u16,
}

async fn client() -> Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        Error::invalid(
            "kubeconfig",
            format!("no Kubernetes API server found: {e}"),
            "run in a pod with a service account, or set KUBECONFIG",
        )
    })
}

pub async fn operator(args: OperatorArgs) -> Result<()> {
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = crate::metrics::Metrics::new();
    tokio::spawn(crate::metrics::serve(args.metrics_address, metrics.clone()));
    let config = crate::operator::OperatorConfig {
        namespace: args.namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_seconds),
        agent: AgentImage {
            image: args.agent_image,
            service_account: args.agent_service_account,
            priority_class: Some(args.agent_priority_class).filter(|p| !p.is_empty()),
            namespace: args.namespace,
        },
        cluster_domain: args.cluster_domain,
    };
    crate::operator::run(client().await?, config, metrics).await
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    if let Some(from) = &args.install_runc {
        runc_etcd_host::install_runc(from)?;
    }
    let metrics = crate::metrics::Metrics::new();
    if let Some(addr) = args.metrics_address {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!("{e}");
            }
        });
    }
    let engine = Engine {
        layout: Layout::default(),
        runc: find_runc(args.runc.as_deref())?,
        pull: PullOptions {
            insecure_registries: args.insecure_registries,
        },
    };
    let config = crate::agent::AgentConfig {
        namespace: args.namespace,
        cluster: args.cluster,
        node: args.node,
        keep_archives: args.keep_archives.into(),
    };
    crate::agent::run(client().await?, engine, config, metrics).await
}
