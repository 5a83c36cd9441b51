//! The contract between the controller and the host agents, beside the custom resources: the
//! labels and finalizers both sides set and select on, the names derived from a cluster's, the
//! Secrets the controller writes and the agents read, and the agents' heartbeats.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use runc_etcd_host::pki::{Ca, ClientTls, IssuedCerts};

use crate::EtcdCluster;

/// Label on every object the controller makes for a cluster (value: the cluster's name).
pub const CLUSTER_LABEL: &str = "runc-etcd.io/cluster";
/// Label on EtcdMembers: the node that runs them (agents select on it; CRDs have no field
/// selectors). Its value is `node_label(node)`.
pub const NODE_LABEL: &str = "runc-etcd.io/node";

/// `NODE_LABEL`'s value for `node`: the name itself, or, for a name longer than a label value
/// may be (63 characters; node names may have 253), its first 54 characters and 8 hex digits of
/// its SHA-256 (an API server refuses the longer label, and the member would never be made).
pub fn node_label(node: &str) -> String {
    if node.len() <= 63 {
        return node.to_string();
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(node.as_bytes()));
    format!("{}.{}", &node[..54], &digest[..8])
}
/// The controller's finalizer on EtcdClusters: members retired and hosts clean before it goes.
pub const CLUSTER_FINALIZER: &str = "runc-etcd.io/cluster";
/// The agent's finalizer on EtcdMembers, set by the controller at creation so no member can be
/// deleted before its host has stopped and archived it.
pub const MEMBER_FINALIZER: &str = "runc-etcd.io/agent";
/// On EtcdMembers the controller deletes: etcd has let the member go (or the whole cluster goes),
/// so its agent may stop and archive it. An EtcdMember deleted without it (by hand) is never
/// stopped: members leave only through the controller's steps, which keep quorum.
pub const RELEASED_ANNOTATION: &str = "runc-etcd.io/released";
/// On EtcdBackups: the stored snapshot is deleted before the object goes.
pub const BACKUP_FINALIZER: &str = "runc-etcd.io/snapshot";
/// A user's request to rebuild a cluster that lost quorum from a backup (`latest` or a name).
pub const RESTORE_ANNOTATION: &str = "runc-etcd.io/restore-from-backup";

/// Host folders the agent works in (ARCHITECTURE.md §5), mounted at the same place in its pod:
/// (volume name, path). A host-folder backup destination may overlap none of them (the CRD's
/// rule on `spec.backup.hostPath.path` lists them too, checked against this list in a test).
pub const AGENT_HOST_PATHS: [(&str, &str); 7] = [
    ("state", "/var/lib/runc-etcd"),
    ("units", "/etc/systemd/system"),
    ("systemd", "/run/systemd"),
    ("dbus", "/run/dbus"),
    ("runc-root", "/run/runc-etcd"),
    ("locks", "/run/lock/runc-etcd"),
    ("runc-bin", "/opt/runc-etcd"),
];
/// Where backups go without a destination: the one backup folder inside the state folder (no
/// member's folder is named so: instance names hold a dot).
pub const DEFAULT_BACKUP_DIR: &str = "/var/lib/runc-etcd/backups";

/// Where the agent image carries runc (Debian's runc package): the agent installs it on the
/// host, whose systemd runs it.
pub const IMAGE_RUNC: &str = "/usr/sbin/runc";

pub trait ClusterNames {
    fn name(&self) -> String;
    fn ns(&self) -> String;
    fn agent_name(&self) -> String {
        format!("{}-agent", self.name())
    }
    fn client_service(&self) -> String {
        format!("{}-client", self.name())
    }
    fn ca_secret(&self) -> String {
        format!("{}-ca", self.name())
    }
    fn client_secret(&self) -> String {
        format!("{}-client-tls", self.name())
    }
    /// An application's client identity (`spec.tls.clients`).
    fn app_secret(&self, app: &str) -> String {
        format!("{}-app-{app}-tls", self.name())
    }
    /// The host engine's instance: `<namespace>.<cluster>` (unit runc-etcd@<instance>.service).
    fn instance(&self) -> String {
        format!("{}.{}", self.ns(), self.name())
    }
}

impl ClusterNames for EtcdCluster {
    fn name(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }
    fn ns(&self) -> String {
        self.meta().namespace.clone().unwrap_or_else(|| "default".into())
    }
}

pub fn member_secret(member: &str) -> String {
    format!("{member}-tls")
}

fn file(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// Label on an application's client identity Secret (value: the application's name).
pub const APP_LABEL: &str = "runc-etcd.io/app";

/// A user's request to rotate a cluster's CA (on the EtcdCluster; any value, e.g. the date: a
/// value already served is not served again).
pub const ROTATE_CA_ANNOTATION: &str = "runc-etcd.io/rotate-ca";
/// On the CA Secret during a rotation: its stage, when the stage began, and the request served.
pub const ROTATION_STAGE_ANNOTATION: &str = "runc-etcd.io/ca-rotation-stage";
pub const ROTATION_SINCE_ANNOTATION: &str = "runc-etcd.io/ca-rotation-since";
pub const ROTATION_REQUEST_ANNOTATION: &str = "runc-etcd.io/ca-rotation-request";
/// On the CA Secret: the request the last rotation served.
pub const ROTATED_FOR_ANNOTATION: &str = "runc-etcd.io/ca-rotated-for";

/// The cluster's CAs as its CA Secret keeps them (`ca.crt`/`ca.key`: the CA that signs; during
/// a rotation also `trust.crt`, the bundle members and clients are to trust, and in its first
/// stage `next.crt`/`next.key`, the CA that will sign). Only the controller reads it.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub signing: Ca,
    /// The trust bundle (PEM): the signing CA alone outside a rotation.
    pub trust: String,
    pub next: Option<Ca>,
    pub rotation: Option<Rotation>,
    /// The request the last finished rotation served.
    pub rotated_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub stage: crate::CaRotationStage,
    pub since: Timestamp,
    pub request: String,
}

pub fn read_keyring(s: &Secret) -> Option<Keyring> {
    let signing = Ca {
        cert: file(s, "ca.crt")?,
        key: file(s, "ca.key")?,
    };
    let annotation = |k: &str| s.metadata.annotations.as_ref()?.get(k).cloned();
    let rotation = annotation(ROTATION_STAGE_ANNOTATION).and_then(|stage| {
        Some(Rotation {
            stage: *crate::CaRotationStage::ALL.iter().find(|s| s.as_str() == stage)?,
            since: annotation(ROTATION_SINCE_ANNOTATION)?.parse().ok()?,
            request: annotation(ROTATION_REQUEST_ANNOTATION).unwrap_or_default(),
        })
    });
    let next = match (file(s, "next.crt"), file(s, "next.key")) {
        (Some(cert), Some(key)) => Some(Ca { cert, key }),
        _ => None,
    };
    Some(Keyring {
        trust: file(s, "trust.crt").unwrap_or_else(|| signing.cert.clone()),
        signing,
        next,
        rotation,
        rotated_for: annotation(ROTATED_FOR_ANNOTATION),
    })
}

pub fn read_client(s: &Secret) -> Option<ClientTls> {
    Some(ClientTls {
        ca: file(s, "ca.crt")?,
        cert: file(s, "tls.crt")?,
        key: file(s, "tls.key")?,
    })
}

/// A member's certificates as its Secret holds them: certificates only, for the key its host
/// made (the request in the EtcdMember's `status.certificateRequest`).
pub fn read_member_certs(s: &Secret) -> Option<IssuedCerts> {
    Some(IssuedCerts {
        ca_cert: file(s, "ca.crt")?,
        server: file(s, "server.crt")?,
        peer: file(s, "peer.crt")?,
        client: file(s, "client.crt")?,
    })
}

/// Whether the controller released this member (`RELEASED_ANNOTATION`).
pub fn released(m: &crate::EtcdMember) -> bool {
    m.annotations().contains_key(RELEASED_ANNOTATION)
}

/// Releases the member (why: the step), then deletes it. Idempotent.
pub async fn release_and_delete(api: &Api<crate::EtcdMember>, m: &crate::EtcdMember, why: &str) -> kube::Result<()> {
    let name = m.metadata.name.clone().unwrap_or_default();
    if !released(m) {
        let patch = serde_json::json!({"metadata": {"annotations": {RELEASED_ANNOTATION: why}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if m.metadata.deletion_timestamp.is_none() {
        crate::objects::delete_if_present(api, &name).await?;
    }
    Ok(())
}

/// Drops the agent's finalizer from a released member its agent reports `Retired` (stopped and
/// archived on its host): the controller's to do, since agents do not write EtcdMember
/// metadata. Returns whether it did. Idempotent.
pub async fn let_go_if_retired(api: &Api<crate::EtcdMember>, m: &crate::EtcdMember) -> kube::Result<bool> {
    let retired = m.status.as_ref().and_then(|s| s.phase) == Some(crate::MemberPhase::Retired);
    if m.metadata.deletion_timestamp.is_none()
        || !released(m)
        || !retired
        || !m.finalizers().iter().any(|f| f == MEMBER_FINALIZER)
    {
        return Ok(false);
    }
    let patch = crate::objects::finalizers_patch(m, None, Some(MEMBER_FINALIZER));
    match api.patch(&m.name_any(), &PatchParams::default(), &patch).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
        Err(e) => Err(e),
    }
}

/// The agent's heartbeat for a member: a Lease named after it, renewed by its node.
pub async fn heartbeat(api: &Api<Lease>, name: &str, holder: &str, duration: Duration) -> kube::Result<()> {
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration.as_secs(),
            "renewTime": MicroTime(Timestamp::now()),
        }
    });
    api.patch(
        name,
        &PatchParams::apply("runc-etcd-agent").force(),
        &Patch::Apply(&lease),
    )
    .await?;
    Ok(())
}
