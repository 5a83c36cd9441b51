//! `EtcdMember`: the contract between the controller (writes spec) and the host agent on
//! `spec.nodeName` (makes it real with the host engine, writes status). One per member, owned by
//! its EtcdCluster. The spec carries what the engine's `member.json` holds.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::MemberPhase;

/// One etcd member on one node, as the controller wants it and the node's agent reports it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runc-etcd.io",
    doc = "One etcd member on one node: written by the runc-etcd controller, made real and reported by the node's host agent.",
    version = "v1alpha1",
    kind = "EtcdMember",
    namespaced,
    status = "EtcdMemberStatus",
    category = "runc-etcd",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.nodeName == oldSelf.nodeName").message("nodeName cannot change: a member lives on one node; replace the member instead"))]
#[x_kube(validation = Rule::new("self.clientPort != self.peerPort").message("clientPort and peerPort must differ"))]
pub struct EtcdMemberSpec {
    /// The EtcdCluster this member belongs to.
    pub cluster: String,
    /// etcd member name (also a DNS label).
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"))]
    pub member_name: String,
    /// The node whose agent runs this member.
    pub node_name: String,
    /// The node address etcd listens on and advertises.
    pub ip: String,
    /// etcd's client port on the node.
    #[schemars(range(min = 1, max = 65535))]
    pub client_port: i32,
    /// etcd's peer port on the node.
    #[schemars(range(min = 1, max = 65535))]
    pub peer_port: i32,
    /// `name=peerURL` of every member at the time this one was added.
    pub initial_cluster: Vec<String>,
    /// new: only for the seed of a new cluster; existing: every member that joins.
    pub initial_cluster_state: InitialClusterState,
    /// The etcd image, by digest once resolved.
    pub image: String,
    /// Secret holding this member's TLS files (absent: plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// etcd settings (the cluster's `spec.etcd`); absent: runc-etcd's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<crate::EtcdTuning>,
    /// An image to pull now, ahead of an upgrade to it (set by the controller on every member
    /// before the first one is upgraded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_image: Option<String>,
    /// The token of the cluster incarnation this member belongs to (its EtcdCluster's
    /// `status.clusterToken`): a new cluster's seed bootstraps with it, so a cluster made again
    /// under the same name gets other member and cluster IDs. Absent: `<namespace>.<cluster>`, as
    /// members made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub cluster_token: Option<String>,
    /// Start from this backup's snapshot instead of empty data (the seed of a restored cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// With `restoreFrom`: raise the restored revision and mark it compacted (the cluster's
    /// `spec.recovery.bumpRevisionOnRestore`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_bump_revision: bool,
}

/// etcd's `initial-cluster-state`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    New,
    Existing,
}

/// What the agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberStatus {
    /// Pending, Pulling, Starting, Running, Upgrading, Reconfiguring, Failed, Stopping, DataLost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MemberPhase>,
    /// systemd's ActiveState/SubState of the member's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_state: Option<String>,
    /// How often systemd restarted etcd.
    #[serde(default)]
    pub restart_count: i32,
    /// etcd member ID (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// etcd version the member runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether etcd serves, asked on its own host as `etcdctl endpoint health` asks (it knows a
    /// leader and, a voter, passes a quorum read). The evidence the controller needs before it
    /// declares quorum lost or replaces the member; current while the heartbeat Lease is renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// The cluster the member says it belongs to (etcd's cluster ID, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The leader the member says it follows (member ID, hex; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// `spec.nextImage`, once it is pulled and unpacked on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_image: Option<String>,
    /// A spec generation whose change failed on the host (and was rolled back): the agent does
    /// not try it again, and the member runs as before, until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// The spec generation the agent has made real.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the agent is doing, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the first of the certificates installed on the host for this member expires
    /// (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// The member's certificate signing request (PEM), for the key its agent made on the host
    /// (the key never leaves it): the controller signs it into the member's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_request: Option<String>,
    /// A digest of the certificates and trust bundle installed on the host for this member
    /// (not its keys): the controller compares it with the member's Secret to know a change
    /// has reached the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_digest: Option<String>,
}
