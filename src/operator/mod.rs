//! The operator (`runc-etcd operator`): turns EtcdClusters into members on nodes.
//!
//! - [`reconcile`]: the pipeline of one cluster's pass, its steps one module each: `ensure` →
//!   `observe` → `decide` (pure) → `record` → `act` → `report`, and `finalize` on deletion;
//!   `context` holds what they share;
//! - the pure planners `decide` draws on: [`plan`] (membership), [`upgrade`] (etcd's version
//!   rules, rolling upgrades), [`maintenance`] (defragmentation, NOSPACE), [`disaster`] (quorum
//!   loss, restores);
//! - [`certs`] (renewal) and [`rotation`] (the CA, in three stages): certificates for years;
//! - [`status`]: the status and conditions reported (pure);
//! - [`children`]: the objects made per cluster (DaemonSet, Service, EndpointSlice, Secrets,
//!   EtcdMembers);
//! - [`backups`]: the cluster's EtcdBackups (schedule, placement, retention, deletion);
//! - [`lease`]: leader election.
//!
//! Nothing here is public but [`run`] with its [`OperatorConfig`] and [`AgentImage`]: the agent
//! and the CLI cannot reach into the controller.

mod act;
mod agree;
mod backups;
mod certs;
mod children;
mod context;
mod decide;
mod disaster;
mod ensure;
mod evidence;
mod finalize;
mod lease;
mod maintenance;
mod observe;
mod plan;
mod reconcile;
mod record;
mod report;
mod retention;
mod rotation;
mod status;
#[cfg(test)]
mod testing;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::error::Result;
use crate::metrics::Metrics;
pub use children::AgentImage;
use runc_etcd_api::{EtcdBackup, EtcdCluster, EtcdMember};

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Namespace of the leader-election Lease.
    pub namespace: String,
    /// This instance's identity in the Lease (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub agent: children::AgentImage,
    /// The Kubernetes cluster's DNS domain (`cluster.local` unless set up otherwise).
    pub cluster_domain: String,
}

/// Waits for leadership, then reconciles every EtcdCluster until leadership is lost (then it
/// returns an error: the process exits and its restart competes again).
pub async fn run(client: kube::Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Result<()> {
    // Ready once it runs: a standby is a healthy replica waiting for the Lease.
    metrics.set_ready();
    let election = lease::Election::new(
        Api::namespaced(client.clone(), &config.namespace),
        "runc-etcd-operator".into(),
        config.identity.clone(),
        config.lease_duration,
    );
    tracing::info!("waiting to lead (lease {}/{})", config.namespace, election.name);
    election.acquire().await;
    tracing::info!("leading as {}", config.identity);
    metrics.leader.set(1);

    let ctx = Arc::new(context::Ctx {
        client: client.clone(),
        agent: config.agent.clone(),
        metrics: metrics.clone(),
        retries: Default::default(),
        heartbeats: Default::default(),
        cluster_domain: config.cluster_domain.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "runc-etcd-operator".into(),
                instance: Some(config.identity.clone()),
            },
        ),
    });
    let clusters: Api<EtcdCluster> = Api::all(client.clone());
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    let controller = controller
        .owns(Api::<EtcdMember>::all(client.clone()), watcher::Config::default())
        // The agent DaemonSets, in the operator's namespace, name their cluster by labels.
        .watches(
            Api::<DaemonSet>::namespaced(client.clone(), &config.agent.namespace),
            watcher::Config::default().labels(children::CLUSTER_NAMESPACE_LABEL),
            |ds: DaemonSet| {
                let labels = ds.metadata.labels.unwrap_or_default();
                let ns = labels.get(children::CLUSTER_NAMESPACE_LABEL)?;
                let name = labels.get(runc_etcd_api::contract::CLUSTER_LABEL)?;
                Some(ObjectRef::<EtcdCluster>::new(name).within(ns))
            },
        )
        // A node coming, going or changing readiness concerns every cluster.
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_node: Node| {
                store
                    .state()
                    .into_iter()
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<EtcdBackup>::all(client.clone()),
            watcher::Config::default(),
            |b: EtcdBackup| {
                let ns = b.metadata.namespace.clone().unwrap_or_default();
                Some(ObjectRef::<EtcdCluster>::new(&b.spec.cluster_name).within(&ns))
            },
        )
        .with_config(Config::default().debounce(Duration::from_millis(100)))
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|res| {
            crate::metrics::count_reconcile(&metrics, "cluster", &res);
            async move {
                if let Err(e) = res {
                    tracing::debug!("reconcile: {e}");
                }
            }
        });
    // Deleted EtcdBackups, also of clusters that no longer exist.
    let deleted_backups = Controller::new(Api::<EtcdBackup>::all(client.clone()), watcher::Config::default())
        .run(backups::finalize, backups::finalize_error, ctx)
        .for_each(|res| {
            crate::metrics::count_reconcile(&metrics, "backup", &res);
            async move {
                if let Err(e) = res {
                    tracing::debug!("backup finalize: {e}");
                }
            }
        });
    let controller = async {
        tokio::join!(controller, deleted_backups);
    };
    tokio::select! {
        () = controller => Ok(()),
        () = election.hold() => Err(crate::Error::refused("leadership lost; exiting so a restart competes again")),
    }
}
