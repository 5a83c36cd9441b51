//! `EtcdBackup`: one snapshot of one cluster, taken on demand (a user creates it) or by the
//! cluster's `spec.backup.schedule`. The destination is the cluster's (`spec.backup`: an
//! S3-compatible bucket or a folder on the member's host; without it, the host folder
//! `/var/lib/runc-etcd/backups`). Deleting the object deletes its stored snapshot (finalizer).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{BackupPhase, HostPathDestination, S3Destination};

/// One backup (snapshot) of an EtcdCluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runc-etcd.io",
    doc = "One snapshot of an EtcdCluster, taken by the runc-etcd agent on a member's node and stored at the cluster's backup destination.",
    version = "v1alpha1",
    kind = "EtcdBackup",
    namespaced,
    status = "EtcdBackupStatus",
    category = "runc-etcd",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.sizeBytes"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.clusterName == oldSelf.clusterName").message("clusterName cannot change: create a new EtcdBackup instead"))]
pub struct EtcdBackupSpec {
    /// The EtcdCluster (in this namespace) to back up.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub cluster_name: String,
}

/// Where a snapshot is kept (resolved from the cluster's `spec.backup` when the backup starts).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A folder on the host of `status.nodeName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathDestination>,
}

/// What the operator and the agent that took the backup report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// Pending (a node is being chosen), Running (the node's agent takes it), Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The node whose agent takes (and, for a host folder, keeps) the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The member the snapshot was streamed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Where it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// s3://bucket/key, or the snapshot file's path on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Snapshot size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// sha256 of the snapshot file (checked again before a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// etcd's key-value revision at the time of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The etcd version that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// When the agent started taking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When it was stored (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What went wrong, or what is being done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl EtcdBackup {
    /// Its phase; None until the controller first looked at it.
    pub fn phase(&self) -> Option<BackupPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn succeeded(&self) -> bool {
        self.phase() == Some(BackupPhase::Succeeded)
    }

    /// Succeeded or Failed: nothing more happens to it.
    pub fn finished(&self) -> bool {
        matches!(self.phase(), Some(BackupPhase::Succeeded | BackupPhase::Failed))
    }
}
