//! Prometheus metrics and health endpoints of the operator and the agent: `/metrics` (text
//! exposition), `/healthz` (the process serves) and `/readyz` (it is connected and working:
//! the operator once it has started its controllers, the agent once it watches its members).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use runc_etcd_api::{EtcdBackup, EtcdCluster, EtcdClusterStatus, MemberRole};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub namespace: String,
    pub cluster: String,
    pub member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub namespace: String,
    pub cluster: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub namespace: String,
    pub cluster: String,
    pub member: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub controller: String,
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric either process exports (each sets the ones that are its own).
pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub leader: Gauge,
    pub members: Family<ClusterLabels, Gauge>,
    pub members_healthy: Family<ClusterLabels, Gauge>,
    pub member_healthy: Family<MemberLabels, Gauge>,
    pub member_role: Family<RoleLabels, Gauge>,
    pub member_db_size: Family<MemberLabels, Gauge>,
    pub upgrade_members_done: Family<ClusterLabels, Gauge>,
    pub backup_age: Family<ClusterLabels, FloatGauge>,
    pub backup_size: Family<ClusterLabels, Gauge>,
    pub certificates_expiry: Family<ClusterLabels, Gauge>,
    pub agent_member_running: Family<MemberLabels, Gauge>,
    pub agent_unit_restarts: Family<MemberLabels, Gauge>,
    pub agent_backups: Family<KindLabels, Counter>,
    pub agent_archives: Family<NodeLabels, Gauge>,
    pub agent_archive_bytes: Family<NodeLabels, Gauge>,
    /// The members whose series the operator publishes, per cluster: a member that leaves takes
    /// its series along (a stale `member_healthy 0` would page someone for a member long gone).
    published: Mutex<HashMap<ClusterLabels, BTreeSet<String>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::with_prefix("runc_etcd");
        let m = Metrics {
            ready: AtomicBool::new(false),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            members: Family::default(),
            members_healthy: Family::default(),
            member_healthy: Family::default(),
            member_role: Family::default(),
            member_db_size: Family::default(),
            upgrade_members_done: Family::default(),
            backup_age: Family::default(),
            backup_size: Family::default(),
            certificates_expiry: Family::default(),
            agent_member_running: Family::default(),
            agent_unit_restarts: Family::default(),
            agent_backups: Family::default(),
            agent_archives: Family::default(),
            agent_archive_bytes: Family::default(),
            published: Mutex::default(),
            registry: Registry::default(),
        };
        r.register(
            "reconciles",
            "Reconciles, by controller and result kind (ok, requeue)",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors, by controller and error kind (invalid, transient, kube, io, ...)",
            m.reconcile_errors.clone(),
        );
        r.register(
            "operator_leader",
            "1 while this operator holds the leader Lease",
            m.leader.clone(),
        );
        r.register("cluster_members", "Members in etcd's member list", m.members.clone());
        r.register(
            "cluster_members_healthy",
            "Voting members that answer a quorum read",
            m.members_healthy.clone(),
        );
        r.register("member_healthy", "1 when the member answers", m.member_healthy.clone());
        r.register(
            "member_role",
            "1 for the member's role (leader, follower, learner)",
            m.member_role.clone(),
        );
        r.register(
            "member_db_size_bytes",
            "Size of the member's database file",
            m.member_db_size.clone(),
        );
        r.register(
            "cluster_upgrade_members_done",
            "Members that run the spec's version (equal to the size when no upgrade is under way)",
            m.upgrade_members_done.clone(),
        );
        r.register(
            "cluster_last_backup_age_seconds",
            "Age of the newest successful backup",
            m.backup_age.clone(),
        );
        r.register(
            "cluster_last_backup_size_bytes",
            "Size of the newest successful backup",
            m.backup_size.clone(),
        );
        r.register(
            "cluster_certificates_expiry_timestamp_seconds",
            "When the first of the members' certificates expires (Unix time); renewal keeps it ahead",
            m.certificates_expiry.clone(),
        );
        r.register(
            "agent_member_running",
            "1 while the agent reports its member Running",
            m.agent_member_running.clone(),
        );
        r.register(
            "agent_unit_restarts",
            "How often systemd restarted the member's etcd",
            m.agent_unit_restarts.clone(),
        );
        r.register(
            "agent_backups",
            "Backups this agent took, by result",
            m.agent_backups.clone(),
        );
        r.register(
            "agent_archives",
            "Archives of old member files the cluster keeps on this node",
            m.agent_archives.clone(),
        );
        r.register(
            "agent_archive_bytes",
            "Bytes in the archives of old member files the cluster keeps on this node",
            m.agent_archive_bytes.clone(),
        );
        Arc::new(Metrics { registry: r, ..m })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// The cluster's gauges from the status just reported (and its backups).
    pub fn observe_cluster(&self, c: &EtcdCluster, s: &EtcdClusterStatus, backups: &[EtcdBackup]) {
        let (namespace, cluster) = (
            c.metadata.namespace.clone().unwrap_or_default(),
            c.metadata.name.clone().unwrap_or_default(),
        );
        let labels = ClusterLabels {
            namespace: namespace.clone(),
            cluster: cluster.clone(),
        };
        self.members.get_or_create(&labels).set(s.members.len() as i64);
        self.members_healthy
            .get_or_create(&labels)
            .set(i64::from(s.ready_members));
        let done = s
            .members
            .iter()
            .filter(|m| m.version.as_deref() == Some(c.spec.version.as_str()))
            .count();
        self.upgrade_members_done.get_or_create(&labels).set(done as i64);
        for m in &s.members {
            let ml = MemberLabels {
                namespace: namespace.clone(),
                cluster: cluster.clone(),
                member: m.name.clone(),
            };
            self.member_healthy.get_or_create(&ml).set(i64::from(m.healthy));
            self.member_db_size.get_or_create(&ml).set(m.db_size_bytes.unwrap_or(0));
            for role in MemberRole::ALL {
                let rl = RoleLabels {
                    namespace: namespace.clone(),
                    cluster: cluster.clone(),
                    member: m.name.clone(),
                    role: role.as_str().into(),
                };
                self.member_role
                    .get_or_create(&rl)
                    .set(i64::from(m.role == Some(*role)));
            }
        }
        let now: BTreeSet<String> = s.members.iter().map(|m| m.name.clone()).collect();
        self.forget_members(&labels, now);
        if let Some(b) = crate::backup::newest_good(backups, &cluster) {
            let st = b.status.clone().unwrap_or_default();
            if let Some(done) = st.completion_time {
                let age = (k8s_openapi::jiff::Timestamp::now() - done.0).get_seconds().max(0);
                self.backup_age.get_or_create(&labels).set(age as f64);
            }
            self.backup_size.get_or_create(&labels).set(st.size_bytes.unwrap_or(0));
        }
        match s
            .certificates_not_after
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            Some(t) => {
                self.certificates_expiry.get_or_create(&labels).set(t.timestamp());
            }
            None => {
                self.certificates_expiry.remove(&labels);
            }
        }
    }

    /// Forgets a deleted cluster's series.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let labels = ClusterLabels {
            namespace: namespace.into(),
            cluster: cluster.into(),
        };
        for f in [
            &self.members,
            &self.members_healthy,
            &self.upgrade_members_done,
            &self.backup_size,
            &self.certificates_expiry,
        ] {
            f.remove(&labels);
        }
        self.backup_age.remove(&labels);
        self.forget_members(&labels, BTreeSet::new());
    }

    /// Drops the series of the cluster's members not in `keep`, and remembers `keep` as the
    /// published ones.
    fn forget_members(&self, cluster: &ClusterLabels, keep: BTreeSet<String>) {
        let mut published = self.published.lock().expect("not poisoned");
        let before = published.remove(cluster).unwrap_or_default();
        for gone in before.difference(&keep) {
            let member = MemberLabels {
                namespace: cluster.namespace.clone(),
                cluster: cluster.cluster.clone(),
                member: gone.clone(),
            };
            self.member_healthy.remove(&member);
            self.member_db_size.remove(&member);
            for role in MemberRole::ALL {
                self.member_role.remove(&RoleLabels {
                    namespace: member.namespace.clone(),
                    cluster: member.cluster.clone(),
                    member: member.member.clone(),
                    role: role.as_str().into(),
                });
            }
        }
        if !keep.is_empty() {
            published.insert(cluster.clone(), keep);
        }
    }

    /// Drops an agent's series of a member it retired.
    pub fn forget_agent_member(&self, member: &MemberLabels) {
        self.agent_member_running.remove(member);
        self.agent_unit_restarts.remove(member);
    }
}

/// Counts a reconcile's result in the metrics: ok, or the kind of its error.
pub fn count_reconcile<T, Q: std::error::Error>(
    metrics: &Metrics,
    controller: &str,
    res: &std::result::Result<T, kube::runtime::controller::Error<crate::Error, Q>>,
) {
    let labels = |kind: &str| KindLabels {
        controller: controller.into(),
        kind: kind.into(),
    };
    match res {
        Ok(_) => {
            metrics.reconciles.get_or_create(&labels("ok")).inc();
        }
        Err(kube::runtime::controller::Error::ReconcilerFailed(e, _)) => {
            metrics.reconcile_errors.get_or_create(&labels(error_kind(e))).inc();
        }
        Err(_) => {
            metrics.reconcile_errors.get_or_create(&labels("watch")).inc();
        }
    }
}

/// A result kind for the counters: "ok", or the error's kind.
pub fn error_kind(e: &crate::Error) -> &'static str {
    use runc_etcd_host::Error::*;
    match e {
        crate::Error::Kube(_) => "kube",
        crate::Error::Engine(e) => match e {
            Invalid { .. } => "invalid",
            Refused(_) => "refused",
            Transient { .. } => "transient",
            Timeout { .. } => "timeout",
            Io { .. } => "io",
            Image { .. } => "image",
            Command { .. } => "command",
        },
    }
}

/// Serves /metrics, /healthz and /readyz on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> crate::Result<()> {
    use axum::routing::get;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = metrics.ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::invalid(
            "--metrics-address",
            format!("{addr}: {e}"),
            "pick a free address and port",
        )
    })?;
    tracing::info!("metrics and health on http://{addr}/metrics, /healthz, /readyz");
    axum::serve(listener, app)
        .await
        .map_err(|e| crate::Error::transient("serving metrics", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runc_etcd_api::MemberStatus;

    fn cluster() -> EtcdCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "prod"}, "spec": {"version": "3.5.16"},
        }))
        .unwrap()
    }

    fn status(members: &[&str]) -> EtcdClusterStatus {
        EtcdClusterStatus {
            members: members
                .iter()
                .map(|m| MemberStatus {
                    name: m.to_string(),
                    healthy: true,
                    role: Some(MemberRole::Follower),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn series_of(m: &Metrics, member: &str) -> usize {
        let label = format!("member=\"{member}\"");
        m.encode().lines().filter(|l| l.contains(&label)).count()
    }

    #[test]
    fn a_member_that_leaves_and_a_deleted_cluster_take_their_series_along() {
        let m = Metrics::new();
        m.observe_cluster(&cluster(), &status(&["a", "b", "c"]), &[]);
        assert_eq!(
            series_of(&m, "c"),
            5,
            "healthy, db size and three roles:\n{}",
            m.encode()
        );
        m.observe_cluster(&cluster(), &status(&["a", "b"]), &[]);
        assert_eq!(series_of(&m, "c"), 0, "{}", m.encode());
        assert_eq!(series_of(&m, "a"), 5);
        m.forget_cluster("prod", "main");
        assert_eq!(series_of(&m, "a") + series_of(&m, "b"), 0, "{}", m.encode());
        assert!(!m.encode().contains("cluster=\"main\""), "{}", m.encode());
    }
}
