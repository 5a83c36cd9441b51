//! What every step of a cluster's reconcile shares: the client, the metrics, the agent image,
//! the Event recorder and the retry counters, with the few writes every step makes the same way.

use std::sync::Arc;

use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::json;

use crate::error::Result;
use crate::operator::children::{AgentImage, MANAGER};
use crate::retry::Retries;
use runc_etcd_api::EtcdCluster;
use runc_etcd_api::contract::{CLUSTER_LABEL, ClusterNames};

pub struct Ctx {
    pub client: kube::Client,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub agent: AgentImage,
    pub recorder: Recorder,
    pub retries: Retries,
    /// The agents' heartbeats as this process saw them change (`evidence`).
    pub heartbeats: crate::operator::evidence::Heartbeats,
    /// The Kubernetes cluster's DNS domain, named in serving certificates (`certs`).
    pub cluster_domain: String,
}

pub fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub fn selector(c: &EtcdCluster) -> ListParams {
    ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", c.name()))
}

impl Ctx {
    pub(super) fn api<K>(&self, c: &EtcdCluster) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &c.ns())
    }

    /// An Event about the cluster; `member` names the EtcdMember it concerns (also what keeps
    /// the same step for different members from being folded into one Event series).
    pub(super) async fn event(
        &self,
        c: &EtcdCluster,
        type_: EventType,
        reason: &str,
        member: Option<&str>,
        note: String,
    ) {
        let secondary = member.map(|name| k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("runc-etcd.io/v1alpha1".into()),
            kind: Some("EtcdMember".into()),
            name: Some(name.into()),
            namespace: Some(c.ns()),
            ..Default::default()
        });
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(runc_etcd_api::objects::event_note(note)),
            action: reason.into(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&ev, &c.object_ref(&())).await {
            tracing::warn!("{}: publishing an event: {e}", c.instance());
        }
    }

    /// Merges `status` into the cluster's status, unless that changes nothing in the status
    /// this pass started from: a settled cluster costs the API server no writes.
    pub(super) async fn patch_status(&self, c: &EtcdCluster, status: serde_json::Value) -> Result<()> {
        let now = serde_json::to_value(&c.status).unwrap_or_default();
        let mut merged = now.clone();
        json_patch::merge(&mut merged, &status);
        if merged == now && !now.is_null() {
            return Ok(());
        }
        let api: Api<EtcdCluster> = self.api(c);
        api.patch_status(
            &c.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        Ok(())
    }
}

/// The annotation that holds a fingerprint of what the operator last applied to a child.
const APPLIED: &str = "runc-etcd.io/applied";

/// Server-side applies `desired` (the operator's child of a cluster) unless the live object
/// has it already: the same fingerprint as last applied (so a field the operator stopped
/// setting is still removed by an apply) and every field it sets equal (so a hand edit of one
/// is put back; what the API server defaults is no difference). At rest a pass reads, and
/// writes nothing.
pub async fn apply_changed<K>(api: &Api<K>, name: &str, desired: &K) -> Result<()>
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
{
    let mut want = serde_json::to_value(desired).expect("a Kubernetes object serializes");
    let fingerprint = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(want.to_string().as_bytes())[..12])
    };
    if let Some(live) = api.get_opt(name).await? {
        let live = serde_json::to_value(&live).expect("a Kubernetes object serializes");
        if live["metadata"]["annotations"][APPLIED] == fingerprint.as_str() && contains(&live, &want) {
            return Ok(());
        }
    }
    want["metadata"]["annotations"][APPLIED] = json!(fingerprint);
    api.patch(name, &apply(), &Patch::Apply(&want)).await?;
    Ok(())
}

/// Whether `live` holds everything `want` sets: maps key by key, lists item by item.
fn contains(live: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| v.is_null() || l.get(k).is_some_and(|lv| contains(lv, v))),
        (Value::Array(l), Value::Array(w)) => l.len() == w.len() && l.iter().zip(w).all(|(l, w)| contains(l, w)),
        (l, w) => l == w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_the_server_adds_are_no_difference_and_an_edit_is() {
        let want = json!({"spec": {"ports": [{"port": 2379, "protocol": "TCP"}], "selector": null}});
        let defaulted = json!({"spec": {"ports": [{"port": 2379, "protocol": "TCP", "targetPort": 2379}],
            "clusterIP": "10.0.0.1", "sessionAffinity": "None"}});
        assert!(contains(&defaulted, &want));
        let edited = json!({"spec": {"ports": [{"port": 2380, "protocol": "TCP"}]}});
        assert!(!contains(&edited, &want));
        let more = json!({"spec": {"ports": [{"port": 2379, "protocol": "TCP"}, {"port": 1, "protocol": "TCP"}]}});
        assert!(!contains(&more, &want), "an item added by hand is a difference");
    }
}
