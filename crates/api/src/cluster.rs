//! `EtcdCluster`: what a user asks for (spec) and what the operator reports (status).
//! Validation lives in the schema (ranges, patterns, CEL rules with messages that say the fix),
//! so the API server refuses a bad object at `kubectl apply`.

use std::collections::BTreeMap;

use crate::{ClusterPhase, MemberRole, OperationKind, OperationState};
use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// An etcd cluster whose members run on Kubernetes nodes as systemd services (systemd → runc →
/// etcd), managed by runc-etcd.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runc-etcd.io",
    doc = "An etcd cluster whose members run on nodes as systemd services (systemd -> runc -> etcd), managed by runc-etcd.",
    version = "v1alpha1",
    kind = "EtcdCluster",
    namespaced,
    status = "EtcdClusterStatus",
    shortname = "etcd",
    category = "runc-etcd",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyMembers"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.currentVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.image) || !has(self.repository)").message("set either image (a full reference) or repository (the version is the tag), not both"))]
pub struct EtcdClusterSpec {
    /// Number of etcd members. Use an odd number: 3 tolerates one failed member, 5 tolerates two.
    #[schemars(range(min = 1, max = 9))]
    #[serde(default = "default_size")]
    pub size: i32,
    /// etcd version to run, e.g. 3.5.16. Changing it starts a rolling upgrade (one minor version
    /// at a time).
    #[schemars(regex(pattern = r"^3\.[0-9]+\.[0-9]+$"))]
    pub version: String,
    /// Image repository; the image is `<repository>:v<version>`. Default gcr.io/etcd-development/etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// A full image reference (overrides repository; use a digest to pin it exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Only nodes with these labels host members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints that member hosts may have (e.g. control-plane nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Ports etcd listens on, on each member's host.
    #[serde(default)]
    pub ports: Ports,
    /// etcd tuning.
    #[serde(default)]
    pub etcd: EtcdTuning,
    /// TLS between members and for clients (on by default).
    #[serde(default)]
    pub tls: TlsSpec,
    /// Scheduled backups and where they go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Start the cluster from existing data instead of empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// How failed members and lost quorum are handled.
    #[serde(default)]
    pub recovery: Recovery,
    /// Defragmentation and the database-full (NOSPACE) alarm.
    #[serde(default)]
    pub maintenance: Maintenance,
    /// Leave the cluster exactly as it runs: the operator changes nothing in etcd or in any
    /// object of the cluster (no step, not even one in flight; no backup scheduled or expired; no
    /// certificate renewed) and its agents start, stop, install and archive nothing; status still
    /// reports, with phase Paused. Deleting the cluster still works.
    #[serde(default)]
    pub paused: bool,
}

fn default_size() -> i32 {
    3
}

/// Host ports of a member. They must differ from each other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.client != self.peer && self.client != self.metrics && self.peer != self.metrics && self.agent != self.client && self.agent != self.peer && self.agent != self.metrics").message("client, peer, metrics and agent ports must all differ"))]
#[x_kube(validation = Rule::new("self.client == oldSelf.client && self.peer == oldSelf.peer").message("ports.client and ports.peer cannot change on a live cluster (every member and client knows the old ones): back up, then restore into a new EtcdCluster with the ports you want (docs/operations.md, \"Changing TLS or ports\")"))]
pub struct Ports {
    /// Client port (etcd default 2379).
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default = "default_client_port")]
    pub client: i32,
    /// Peer port (etcd default 2380).
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default = "default_peer_port")]
    pub peer: i32,
    /// Metrics and health port (plain HTTP, /metrics and /health).
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default = "default_metrics_port")]
    pub metrics: i32,
    /// The host agent's port on each node (plain HTTP: /metrics, /healthz, /readyz).
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default = "default_agent_port")]
    pub agent: i32,
}

fn default_client_port() -> i32 {
    2379
}
fn default_peer_port() -> i32 {
    2380
}
fn default_metrics_port() -> i32 {
    2381
}
fn default_agent_port() -> i32 {
    2382
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            client: default_client_port(),
            peer: default_peer_port(),
            metrics: default_metrics_port(),
            agent: default_agent_port(),
        }
    }
}

/// etcd settings runc-etcd passes through (each one checked here, so no flag reaches etcd unvetted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.heartbeatIntervalMs) || !has(self.electionTimeoutMs) || self.electionTimeoutMs >= 5 * self.heartbeatIntervalMs").message("electionTimeoutMs must be at least 5 times heartbeatIntervalMs (etcd's own rule)"))]
pub struct EtcdTuning {
    /// Backend quota in bytes (etcd default 2 GiB; at most 8 GiB is recommended).
    #[schemars(range(min = 134217728, max = 8589934592_i64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    /// History retention for periodic compaction, e.g. "1h" (default "1h").
    #[schemars(regex(pattern = r"^[0-9]+(m|h)$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
    /// Applied entries between snapshots (etcd default 10000).
    #[schemars(range(min = 1000, max = 1000000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i64>,
    /// Leader heartbeat interval in milliseconds (etcd default 100).
    #[schemars(range(min = 10, max = 5000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<i32>,
    /// Election timeout in milliseconds (etcd default 1000).
    #[schemars(range(min = 50, max = 50000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<i32>,
}

/// TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled == oldSelf.enabled").message("tls.enabled cannot change on a live cluster (members and clients would stop understanding each other): back up, then restore into a new EtcdCluster with the setting you want (docs/operations.md, \"Changing TLS or ports\")"))]
pub struct TlsSpec {
    /// Mutual TLS for peers and clients with a CA runc-etcd generates. Turn off only on a trusted
    /// network: without it any client that reaches the port can read and write every key.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long the members' and clients' certificates are valid, e.g. "8760h" (default 3 years,
    /// at least 60s; short values are for tests). Each is renewed, keeping its key, once two
    /// thirds of it have passed; etcd picks renewed files up at the next connection, without a
    /// restart.
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[serde(default = "default_validity")]
    pub certificate_validity: String,
    /// During a CA rotation (annotation `runc-etcd.io/rotate-ca`, or on its own once the CA is
    /// in the last third of its 10 years), the least time each stage lasts (it also waits for
    /// every member): the time clients have to read the client Secret again (docs/operations.md,
    /// "Rotating the CA"). E.g. "1h" (the default), "10m".
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[serde(default = "default_rotation_hold")]
    pub ca_rotation_hold: String,
    /// Client identities for applications, one Secret each (`<cluster>-app-<name>-tls`: ca.crt,
    /// tls.crt, tls.key; the certificate's CN is the name), renewed and rotated with the rest.
    /// Removing an entry deletes its Secret (docs/operations.md, "Application identities").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub clients: Vec<ClientIdentity>,
}

/// One application's client identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct ClientIdentity {
    /// The application's name: a DNS label of at most 40 characters (in the Secret's name and
    /// the certificate's CN).
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

fn default_rotation_hold() -> String {
    "1h".into()
}

fn yes() -> bool {
    true
}

fn default_validity() -> String {
    "26280h".into()
}

impl TlsSpec {
    /// The validity of leaf certificates, at least 60 s (3 years if unreadable, which the schema
    /// prevents).
    pub fn validity(&self) -> std::time::Duration {
        parse_duration(&self.certificate_validity)
            .unwrap_or(std::time::Duration::from_secs(3 * 365 * 24 * 3600))
            .max(std::time::Duration::from_secs(60))
    }

    /// How long each CA rotation stage holds (1 h if unreadable, which the schema prevents).
    pub fn rotation_hold(&self) -> std::time::Duration {
        parse_duration(&self.ca_rotation_hold).unwrap_or(std::time::Duration::from_secs(3600))
    }
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            certificate_validity: default_validity(),
            ca_rotation_hold: default_rotation_hold(),
            clients: vec![],
        }
    }
}

/// Scheduled backups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.hostPath)").message("give exactly one backup destination: s3 or hostPath"))]
pub struct BackupSpec {
    /// When to take backups, a cron expression such as "0 */6 * * *" (UTC; a sixth leading field
    /// gives seconds). Empty: on demand only (EtcdBackup objects, and before upgrades and resizes).
    #[schemars(regex(pattern = r"^(\S+\s+){4,5}\S+$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How many scheduled backups that succeeded to keep (the oldest are deleted, with their
    /// snapshots). Failed ones do not count: an outage of the destination never deletes the last
    /// good backups.
    #[schemars(range(min = 1, max = 1000))]
    #[serde(default = "default_retention")]
    pub retention: i32,
    /// How many backups taken before a resize or an upgrade to keep, succeeded ones (the one a
    /// change in progress waits for is always kept).
    #[schemars(range(min = 1, max = 1000))]
    #[serde(default = "default_before_change_retention")]
    pub before_change_retention: i32,
    /// How many on-demand backups (EtcdBackups made by a user) to keep, succeeded ones.
    #[schemars(range(min = 1, max = 1000))]
    #[serde(default = "default_on_demand_retention")]
    pub on_demand_retention: i32,
    /// How many failed backups of each kind to keep, the newest (they hold no data; they show
    /// what went wrong).
    #[schemars(range(min = 0, max = 1000))]
    #[serde(default = "default_failed_retention")]
    pub failed_retention: i32,
    /// An S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A folder on the host of the member that takes the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathDestination>,
}

fn default_retention() -> i32 {
    7
}

fn default_before_change_retention() -> i32 {
    3
}

fn default_on_demand_retention() -> i32 {
    10
}

fn default_failed_retention() -> i32 {
    3
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Endpoint URL, e.g. https://s3.eu-west-1.amazonaws.com or http://minio.storage:9000.
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix for this cluster's snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region (some stores need one; default us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret in this namespace with keys accessKeyId and secretAccessKey.
    pub credentials_secret: String,
}

/// A folder on a member's host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.path == '/var/lib/runc-etcd/backups' || ['/var/lib/runc-etcd', '/etc/systemd/system', '/run/systemd', '/run/dbus', '/run/runc-etcd', '/run/lock/runc-etcd', '/opt/runc-etcd'].all(r, self.path != r && !self.path.startsWith(r + '/') && !r.startsWith(self.path + '/'))").message("hostPath.path overlaps a folder the agent works in (member data lives under /var/lib/runc-etcd): choose a folder of its own, such as /var/backups/etcd"))]
pub struct HostPathDestination {
    /// Absolute path of the folder, e.g. /var/backups/etcd: no '.' or '..' parts, no trailing
    /// '/', and outside every folder the agent works in (/var/lib/runc-etcd, where member data
    /// lives, /etc/systemd/system, /run/systemd, /run/dbus, /run/runc-etcd, /run/lock/runc-etcd,
    /// /opt/runc-etcd).
    #[schemars(regex(pattern = r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"))]
    pub path: String,
}

/// How a new cluster starts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// Restore from a backup: the new cluster starts with its keys (and a new cluster ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSource>,
}

/// The backup to start from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// Name of an EtcdBackup in this namespace.
    pub backup_name: String,
}

/// Keeping the members' databases compact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Defragment a member once this share of its database file is free space (one member at a
    /// time, the leader last).
    #[schemars(range(min = 10, max = 90))]
    #[serde(default = "default_defrag_percent")]
    pub defrag_threshold_percent: i32,
    /// Leave databases smaller than this many bytes alone (defragmenting blocks a member).
    #[schemars(range(min = 0))]
    #[serde(default = "default_defrag_min_bytes")]
    pub defrag_min_bytes: i64,
}

fn default_defrag_percent() -> i32 {
    50
}

fn default_defrag_min_bytes() -> i64 {
    64 << 20
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            defrag_threshold_percent: default_defrag_percent(),
            defrag_min_bytes: default_defrag_min_bytes(),
        }
    }
}

/// What to do when quorum is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum QuorumLossPolicy {
    /// Report it and wait for a person (the default: a restore loses the writes since the backup).
    #[default]
    Manual,
    /// Rebuild from the newest good backup once quorum has been lost for `quorumLossTimeout`.
    RestoreFromBackup,
}

/// Member and quorum recovery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// How long a member may be unhealthy (while quorum holds) before it is replaced, e.g. "5m"
    /// (at least 10s: a member restarting must not be replaced). A learner not healthy yet, still
    /// being made, gets at least 5m.
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[serde(default = "default_member_timeout")]
    pub member_unhealthy_timeout: String,
    /// What to do when quorum is lost: Manual (default) or RestoreFromBackup.
    #[serde(default)]
    pub quorum_loss: QuorumLossPolicy,
    /// With RestoreFromBackup: how long quorum must stay lost before the restore, e.g. "15m".
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_loss_timeout: Option<String>,
    /// Every restore of this cluster (`bootstrap.restore`, and a rebuild after quorum loss)
    /// raises the restored revision by 1,000,000,000 and marks it compacted (etcdutl's
    /// `--bump-revision`, `--mark-compacted`), as etcd asks for clusters that serve watchers (a
    /// Kubernetes API server among them): a watcher then neither misses nor replays events, it
    /// is told to list again. etcd 3.4's etcdctl cannot: its restores keep the revision.
    #[serde(default = "default_true")]
    pub bump_revision_on_restore: bool,
    /// How many archives of old member files each node keeps for this cluster (a member
    /// replaced, removed or restored over leaves its data in
    /// `/var/lib/runc-etcd/<namespace>.<cluster>/archive/`). The newest are kept, the older ones
    /// deleted by the node's agent with an Event naming each; the newest is never deleted.
    #[schemars(range(min = 1, max = 100))]
    #[serde(default = "default_keep_archives")]
    pub keep_archives: i32,
}

fn default_keep_archives() -> i32 {
    3
}

fn default_true() -> bool {
    true
}

fn default_member_timeout() -> String {
    "5m".into()
}

/// "90s", "5m", "1h" (the schema's pattern) as a duration.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

impl Recovery {
    /// The member-unhealthy timeout, at least 10 s (5 min if unreadable, which the schema prevents).
    pub fn member_timeout(&self) -> std::time::Duration {
        parse_duration(&self.member_unhealthy_timeout)
            .unwrap_or(std::time::Duration::from_secs(300))
            .max(std::time::Duration::from_secs(10))
    }
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            member_unhealthy_timeout: default_member_timeout(),
            quorum_loss: QuorumLossPolicy::Manual,
            quorum_loss_timeout: None,
            bump_revision_on_restore: true,
            keep_archives: default_keep_archives(),
        }
    }
}

/// What the operator observes and does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// Creating, Running, Scaling, Upgrading, Recovering, Degraded, QuorumLost, Deleting, or
    /// Failed (a spec that cannot be carried out: see the Degraded condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// Available, Progressing, Degraded, BackupSucceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members, as etcd and their hosts report them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Healthy voting members.
    #[serde(default)]
    pub ready_members: i32,
    /// Client URLs of the healthy members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_endpoints: Vec<String>,
    /// The version every member runs (absent while they differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// etcd's cluster ID (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The token new members bootstrap with (etcd's `initial-cluster-token`), chosen once from
    /// this object's UID: every incarnation of a name is a cluster of its own. Clusters made
    /// before it was recorded keep `<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,
    /// The cluster CA's certificate fingerprint (`sha256:<hex>`), recorded when the CA is made or
    /// first read. While members exist, a CA Secret that is gone or holds another CA is
    /// reported (Degraded), never replaced: the members' certificates chain to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// When the first of the members' certificates expires (RFC 3339), as their agents read them
    /// on the hosts. Renewal keeps it in the last two thirds of `tls.certificateValidity` ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_not_after: Option<String>,
    /// A rotation of the cluster CA under way: the stage it is in (docs/operations.md,
    /// "Rotating the CA").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<crate::CaRotationStage>,
    /// Name of the newest successful EtcdBackup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// The spec generation the cluster last fully matched (a later resize or upgrade is backed
    /// up first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_generation: Option<i64>,
    /// Since when fewer than a quorum of voting members answer (absent while quorum holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_lost_since: Option<Time>,
    /// The change being made (recorded before it is made, so a restarted operator resumes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<Operation>,
}

/// One member, as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// etcd member name.
    pub name: String,
    /// The node hosting the member.
    pub node: String,
    /// etcd member ID (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// URL other members reach it on.
    pub peer_url: String,
    /// URL clients reach it on.
    pub client_url: String,
    /// etcd version it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// leader, follower or learner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<MemberRole>,
    /// It answers, and (for a voter) a quorum read through it succeeds.
    pub healthy: bool,
    /// Size of its backend database file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size_bytes: Option<i64>,
    /// Since when it has been unhealthy (absent while healthy); past
    /// `spec.recovery.memberUnhealthyTimeout` the member is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<Time>,
}

/// A membership or maintenance step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// BootstrapMember (the seed of a new cluster), AddLearner, PromoteMember, RemoveMember,
    /// ReplaceMember, UpgradeMember, DefragmentMember, RecoverSpace, RebuildFromBackup.
    #[serde(rename = "type")]
    pub kind: OperationKind,
    /// The member it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The node the member is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Pending, InProgress, Succeeded, Failed.
    pub state: OperationState,
    /// What happened, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The spec generation it was planned for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The EtcdBackup it restores from (a rebuild, or the seed of a restored cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

impl Operation {
    /// A step of `kind`, in progress from now, concerning nothing yet.
    pub fn new(kind: OperationKind) -> Operation {
        Operation {
            kind,
            member: None,
            node: None,
            state: OperationState::InProgress,
            message: None,
            started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            generation: None,
            backup: None,
        }
    }
}
