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

    pub(super) async fn patch_status(&self, c: &EtcdCluster, status: serde_json::Value) -> Result<()> {
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
