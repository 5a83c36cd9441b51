//! The DaemonSet controller, as kube-controller-manager runs it beside a real API server: one
//! pod per DaemonSet and eligible Node (its template's node selector and tolerations), made
//! through admission (`admission::pod`: a refusal is a `FailedCreate` Event on the DaemonSet,
//! and no pod), owned by the DaemonSet, and replaced one node at a time when the template
//! changes (`RollingUpdate` with one unavailable). Pods run where a kubelet runs them: in the
//! lab, its stand-in (`lab::kubelet`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Toleration};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::deletion::Propagation;
use super::resources::{self, Resource};
use super::store::{Store, meta, name_of, now};

/// The annotation a pod carries of its template's hash (the controller's
/// `controller-revision-hash` label, simplified).
const TEMPLATE_HASH: &str = "runc-etcd.io/lab-template-hash";

fn served(key: &str) -> &'static Resource {
    resources::by_key(key).expect("served")
}

fn short_hash(v: &impl ToString) -> String {
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>()[..5].to_string()
}

impl Store {
    /// One pass of the DaemonSet controller over every DaemonSet.
    pub fn run_daemonsets(&mut self) {
        let nodes: Vec<Node> = self
            .list(served("core/nodes"), None)
            .into_iter()
            .filter_map(|n| serde_json::from_value(n).ok())
            .collect();
        let mut pods: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for p in self.list(served("core/pods"), None) {
            if let Some(owner) = meta(&p)["ownerReferences"][0]["uid"].as_str() {
                pods.entry(owner.to_string()).or_default().push(p);
            }
        }
        for ds in self.list(served("apps/daemonsets"), None) {
            let mine = pods
                .remove(meta(&ds)["uid"].as_str().unwrap_or_default())
                .unwrap_or_default();
            if meta(&ds).get("deletionTimestamp").is_none() {
                self.run_daemonset(&ds, &nodes, &mine);
            }
        }
    }

    /// `mine`: the DaemonSet's pods.
    fn run_daemonset(&mut self, ds: &Value, nodes: &[Node], mine: &[Value]) {
        let pods_resource = served("core/pods");
        let ns = meta(ds)["namespace"].as_str().unwrap_or_default().to_string();
        let uid = meta(ds)["uid"].clone();
        let template = &ds["spec"]["template"];
        let hash = short_hash(template);
        let selector: BTreeMap<String, String> =
            serde_json::from_value(template["spec"]["nodeSelector"].clone()).unwrap_or_default();
        let tolerations: Vec<Toleration> =
            serde_json::from_value(template["spec"]["tolerations"].clone()).unwrap_or_default();
        let eligible: Vec<&str> = nodes
            .iter()
            .filter(|n| runc_etcd_api::scheduling::placeable(&selector, &tolerations, n))
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let on = |p: &Value| p["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
        // Pods on nodes no longer eligible go.
        for p in mine.iter().filter(|p| !eligible.contains(&on(p).as_str())) {
            let _ = self.delete(pods_resource, &ns, &name_of(p), Propagation::Background, None);
        }
        // One outdated pod at a time, and only while every eligible node has one up.
        let up = |node: &&str| {
            mine.iter()
                .any(|p| on(p) == *node && meta(p).get("deletionTimestamp").is_none())
        };
        if eligible.iter().all(up)
            && let Some(old) = mine
                .iter()
                .find(|p| meta(p)["annotations"][TEMPLATE_HASH] != hash.as_str())
        {
            let _ = self.delete(pods_resource, &ns, &name_of(old), Propagation::Background, None);
        }
        let ds_name = name_of(ds);
        for node in eligible {
            if mine.iter().any(|p| on(p) == node) {
                continue;
            }
            let mut pod = json!({
                "metadata": {
                    "name": format!("{ds_name}-{}", short_hash(&node)),
                    "labels": template["metadata"]["labels"].clone(),
                    "annotations": {TEMPLATE_HASH: hash},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds_name,
                        "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"].clone(),
            });
            pod["spec"]["nodeName"] = json!(node);
            let made = super::admission::pod(self, &ns, &pod).and_then(|()| self.create(pods_resource, &ns, pod));
            if let Err(e) = made {
                self.failed_create(ds, &format!("Error creating: {}", e.message));
            }
        }
    }

    /// A `FailedCreate` Event on the DaemonSet (one per distinct message, as a recorder's series).
    fn failed_create(&mut self, ds: &Value, note: &str) {
        let ns = meta(ds)["namespace"].as_str().unwrap_or_default().to_string();
        let name = format!("{}.{}", name_of(ds), short_hash(&note));
        let events = served("events.k8s.io/events");
        if self.get(events, &ns, &name).is_ok() {
            return;
        }
        let note: String = note.chars().take(1024).collect();
        let event = json!({
            "metadata": {"name": name},
            "eventTime": now(), "reportingController": "daemonset-controller",
            "reportingInstance": "lab", "action": "Create", "reason": "FailedCreate", "type": "Warning",
            "note": note,
            "regarding": {"apiVersion": "apps/v1", "kind": "DaemonSet", "namespace": ns,
                "name": name_of(ds), "uid": meta(ds)["uid"]},
        });
        let _ = self.create(events, &ns, event);
    }
}
