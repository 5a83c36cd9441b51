//! Deletion as a real cluster does it: the request marks or removes the object, and the rest
//! happens later, over passes of the controllers that do it in Kubernetes (`collect`, run by the
//! server every `PASS`):
//! - the garbage collector: dependents of an owner deleted in the background go after it; an
//!   owner deleted in the foreground (`foregroundDeletion`) has its dependents deleted and goes
//!   once none that blocks it (`blockOwnerDeletion`) is left; an orphaning deletion (`orphan`)
//!   takes the owner out of its dependents' references first;
//! - graceful pod deletion: a pod bound to a node is marked and goes when its kubelet deletes it
//!   again with a grace period of 0, once its containers are stopped; the pod garbage collector
//!   force-deletes pods whose node is gone;
//! - the namespace controller, with OrderedNamespaceDeletion (on by default since Kubernetes
//!   1.33, GA in 1.34): a Terminating namespace's pods are deleted first, the rest once no pod is left, and
//!   the namespace goes once nothing is left in it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::resources::{self, Resource};
use super::store::{ApiError, ApiResult, Key, Store, meta, now};

/// How often the background controllers pass.
pub const PASS: Duration = Duration::from_millis(100);

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
const PODS: &str = "core/pods";

/// DeleteOptions.propagationPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(policy: Option<&str>) -> ApiResult<Propagation> {
        match policy {
            None | Some("Background") => Ok(Propagation::Background),
            Some("Foreground") => Ok(Propagation::Foreground),
            Some("Orphan") => Ok(Propagation::Orphan),
            Some(other) => Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            )),
        }
    }
}

/// Whether a marked object waits for more than its finalizers: a pod bound to a node, until
/// its kubelet deletes it with a grace period of 0.
pub fn graceful(r: &Resource, obj: &Value) -> bool {
    r.key() == PODS && meta(obj)["deletionGracePeriodSeconds"] != 0 && obj["spec"]["nodeName"].is_string()
}

fn finalizers(obj: &Value) -> Vec<Value> {
    meta(obj)["finalizers"].as_array().cloned().unwrap_or_default()
}

fn resource(key: &str) -> &'static Resource {
    resources::by_key(key).expect("stored resources are known")
}

impl Store {
    /// A delete request. `grace`: DeleteOptions.gracePeriodSeconds (pods only).
    pub fn delete(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        policy: Propagation,
        grace: Option<i64>,
    ) -> ApiResult<Value> {
        let key = (r.key(), ns.to_string(), name.to_string());
        let mut obj = self.get(r, ns, name)?;
        if r.key() == "core/namespaces" {
            if meta(&obj).get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
                obj["status"]["phase"] = json!("Terminating");
                self.store(key, obj.clone());
            }
            return Ok(obj);
        }
        let mut marks = finalizers(&obj);
        let add = match policy {
            Propagation::Foreground => Some(FOREGROUND),
            Propagation::Orphan => Some(ORPHAN),
            Propagation::Background => None,
        };
        if let Some(f) = add
            && !marks.contains(&json!(f))
        {
            marks.push(json!(f));
            obj["metadata"]["finalizers"] = json!(marks);
        }
        if r.key() == PODS {
            let seconds = grace.unwrap_or(30).max(0);
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
        }
        if marks.is_empty() && !graceful(r, &obj) {
            self.remove(key, obj.clone());
            return Ok(obj);
        }
        let before = self.get(r, ns, name)?;
        if meta(&obj).get("deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = json!(now());
        }
        if obj != before {
            self.store(key, obj.clone());
        }
        Ok(self.get(r, ns, name).unwrap_or(obj))
    }

    fn store(&mut self, key: Key, mut obj: Value) {
        let r = resource(key.0);
        self.bump(&mut obj);
        self.objects.insert(key, obj.clone());
        self.record("MODIFIED", r, obj);
    }

    fn remove(&mut self, key: Key, mut obj: Value) {
        let r = resource(key.0);
        self.bump(&mut obj);
        self.objects.remove(&key);
        self.record("DELETED", r, obj);
    }

    /// The objects with an ownerReference to `uid`, and whether each blocks its deletion.
    fn dependents(&self, uid: &str) -> Vec<(Key, bool)> {
        self.objects
            .iter()
            .filter_map(|(k, o)| {
                let refs = meta(o)["ownerReferences"].as_array()?;
                let r = refs.iter().find(|r| r["uid"] == uid)?;
                Some((k.clone(), r["blockOwnerDeletion"] == true))
            })
            .collect()
    }

    fn deleting(&self, key: &Key) -> bool {
        self.objects
            .get(key)
            .is_some_and(|o| meta(o).get("deletionTimestamp").is_some())
    }

    fn drop_finalizer(&mut self, key: &Key, finalizer: &str) {
        let Some(mut o) = self.objects.get(key).cloned() else {
            return;
        };
        let left: Vec<Value> = finalizers(&o).into_iter().filter(|f| f != finalizer).collect();
        o["metadata"]["finalizers"] = json!(left);
        let _ = self.replace(resource(key.0), &key.1, o, false);
    }

    /// One pass of the background controllers; whether it changed anything.
    pub fn collect(&mut self) -> bool {
        let before = self.resource_version();
        self.collect_pods();
        self.orphan_dependents();
        self.delete_in_foreground();
        self.collect_garbage();
        self.finish_namespaces();
        self.resource_version() != before
    }

    /// The pod garbage collector: a pod bound to a node that does not exist is force-deleted.
    fn collect_pods(&mut self) {
        let nodes: BTreeSet<String> = self
            .objects
            .keys()
            .filter(|k| k.0 == "core/nodes")
            .map(|k| k.2.clone())
            .collect();
        let lost: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, o)| k.0 == PODS && o["spec"]["nodeName"].as_str().is_some_and(|n| !nodes.contains(n)))
            .map(|(k, _)| k.clone())
            .collect();
        for (_, ns, name) in lost {
            let _ = self.delete(resource(PODS), &ns, &name, Propagation::Background, Some(0));
        }
    }

    /// The objects being deleted that `finalizer` holds, with their uids.
    fn held_by(&self, finalizer: &str) -> Vec<(Key, String)> {
        self.objects
            .iter()
            .filter(|(_, o)| finalizers(o).contains(&json!(finalizer)) && meta(o).get("deletionTimestamp").is_some())
            .map(|(k, o)| (k.clone(), meta(o)["uid"].as_str().unwrap_or_default().to_string()))
            .collect()
    }

    /// Owners deleted with `orphan`: their dependents keep running without them.
    fn orphan_dependents(&mut self) {
        for (owner, uid) in self.held_by(ORPHAN) {
            for (key, _) in self.dependents(&uid) {
                let Some(mut o) = self.objects.get(&key).cloned() else {
                    continue;
                };
                let refs: Vec<Value> = meta(&o)["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"] != uid.as_str())
                    .cloned()
                    .collect();
                o["metadata"]["ownerReferences"] = json!(refs);
                let _ = self.replace(resource(key.0), &key.1, o, false);
            }
            self.drop_finalizer(&owner, ORPHAN);
        }
    }

    /// Owners deleted in the foreground: every dependent is deleted (in the foreground itself
    /// when it has dependents), and the owner goes once no blocking one is left.
    fn delete_in_foreground(&mut self) {
        for (owner, uid) in self.held_by(FOREGROUND) {
            let dependents = self.dependents(&uid);
            for (key, _) in &dependents {
                if self.deleting(key) {
                    continue;
                }
                let uid = self
                    .objects
                    .get(key)
                    .map(|o| meta(o)["uid"].clone())
                    .unwrap_or_default();
                let nested = !self.dependents(uid.as_str().unwrap_or_default()).is_empty();
                let policy = if nested {
                    Propagation::Foreground
                } else {
                    Propagation::Background
                };
                let _ = self.delete(resource(key.0), &key.1, &key.2, policy, None);
            }
            let blocked = self.dependents(&uid).iter().any(|(_, blocks)| *blocks);
            if !blocked {
                self.drop_finalizer(&owner, FOREGROUND);
            }
        }
    }

    /// Dependents whose owners are all gone are deleted in the background.
    fn collect_garbage(&mut self) {
        let uids: BTreeSet<String> = self
            .objects
            .values()
            .filter_map(|o| meta(o)["uid"].as_str().map(String::from))
            .collect();
        let orphans: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                let refs = meta(o)["ownerReferences"].as_array();
                refs.is_some_and(|refs| {
                    !refs.is_empty()
                        && refs
                            .iter()
                            .all(|r| !uids.contains(r["uid"].as_str().unwrap_or_default()))
                }) && meta(o).get("deletionTimestamp").is_none()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (res, ns, name) in orphans {
            let _ = self.delete(resource(res), &ns, &name, Propagation::Background, None);
        }
    }

    /// The namespace controller: pods first, then everything else, then the namespace.
    fn finish_namespaces(&mut self) {
        let terminating: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, o)| k.0 == "core/namespaces" && meta(o).get("deletionTimestamp").is_some())
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, ns) in terminating {
            let name = &key.2;
            let inside: Vec<Key> = self.objects.keys().filter(|k| k.1 == *name).cloned().collect();
            if inside.is_empty() {
                self.remove(key, ns);
                continue;
            }
            let pods: Vec<&Key> = inside.iter().filter(|k| k.0 == PODS).collect();
            let now: Vec<&Key> = if pods.is_empty() { inside.iter().collect() } else { pods };
            for k in now {
                if !self.deleting(k) {
                    let _ = self.delete(resource(k.0), &k.1, &k.2, Propagation::Background, None);
                }
            }
        }
    }
}
