//! The object store behind the test API server: JSON objects by (resource, namespace, name),
//! one resourceVersion counter, an event log for watches, and Kubernetes' write rules
//! (optimistic concurrency, generation, status subresource, finalizers). Deleting is `deletion`.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::Resource;

/// An API error, shaped as Kubernetes' `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `Status.details`, where the error names what it is about.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{}.{} \"{name}\" not found", r.plural, r.group),
        )
    }
    pub fn status(&self) -> Value {
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: &'static str,
    pub resource: &'static str,
    pub object: Value,
}

pub(super) type Key = (&'static str, String, String);

pub struct Store {
    pub(super) objects: BTreeMap<Key, Value>,
    rv: u64,
    pub log: Vec<Event>,
    pub events: broadcast::Sender<Event>,
    /// The bearer tokens the server knows (`auth`).
    pub tokens: super::auth::Tokens,
    /// Resource requests served, by user, verb and resource (`ApiServer::requests`).
    pub requests: BTreeMap<super::Counted, u64>,
    uid: u64,
}

pub(super) fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

pub fn name_of(obj: &Value) -> String {
    meta(obj)["name"].as_str().unwrap_or_default().to_string()
}

/// A Secret's write-only `stringData` goes into `data` (base64), overriding the same keys.
fn secret_string_data(r: &Resource, obj: &mut Value) {
    if r.kind != "Secret" {
        return;
    }
    let Some(strings) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    for (k, v) in strings.as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(k8s_openapi::ByteString(text.as_bytes().to_vec()));
    }
}

pub(super) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    /// An empty store with the namespaces every cluster starts with.
    pub fn new() -> Self {
        let mut store = Store {
            objects: BTreeMap::new(),
            rv: 1,
            log: Vec::new(),
            events: broadcast::channel(4096).0,
            tokens: Default::default(),
            requests: BTreeMap::new(),
            uid: 0,
        };
        let namespaces = super::resources::by_key("core/namespaces").expect("namespaces are served");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}});
            store
                .create(namespaces, "", obj)
                .expect("a new store has no namespaces yet");
        }
        // Every cluster has the two critical priority classes.
        let classes = super::resources::by_key("scheduling.k8s.io/priorityclasses").expect("served");
        for (name, value) in [
            ("system-node-critical", 2_000_001_000),
            ("system-cluster-critical", 2_000_000_000),
        ] {
            let obj = json!({"metadata": {"name": name}, "value": value, "globalDefault": false,
                             "description": "built in"});
            store
                .create(classes, "", obj)
                .expect("a new store has no priority classes yet");
        }
        for (key, obj) in super::rbac::bootstrap() {
            let r = super::resources::by_key(key).expect("RBAC is served");
            store.create(r, "", obj).expect("a new store has no roles yet");
        }
        store
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .contains_key(&("core/namespaces", String::new(), ns.to_string()))
    }

    pub(super) fn namespace_terminating(&self, ns: &str) -> bool {
        self.objects
            .get(&("core/namespaces", String::new(), ns.to_string()))
            .is_some_and(|n| meta(n).get("deletionTimestamp").is_some())
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(super) fn record(&mut self, kind: &'static str, r: &Resource, object: Value) {
        let ev = Event {
            rv: self.rv,
            kind,
            resource: r.key(),
            object,
        };
        self.log.push(ev.clone());
        let _ = self.events.send(ev);
    }

    pub(super) fn bump(&mut self, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }

    pub fn get(&self, r: &Resource, ns: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&(r.key(), ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Objects of `r` in `ns` (all namespaces for None).
    pub fn list(&self, r: &Resource, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, n, _), _)| *k == r.key() && ns.is_none_or(|ns| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn create(&mut self, r: &Resource, ns: &str, mut obj: Value) -> ApiResult<Value> {
        let mut name = name_of(&obj);
        if name.is_empty() {
            let prefix = meta(&obj)["generateName"].as_str().unwrap_or_default().to_string();
            if prefix.is_empty() {
                return Err(ApiError::new(422, "Invalid", "metadata.name: Required value"));
            }
            self.uid += 1;
            name = format!("{prefix}{:05x}", self.uid);
        }
        // As in Kubernetes, a namespaced object needs its namespace to exist.
        if r.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found")));
        }
        // NamespaceLifecycle admission: nothing new in a namespace being deleted.
        if r.namespaced && self.namespace_terminating(ns) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            ));
        }
        let key = (r.key(), ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{name}\" already exists", r.plural, r.group),
            ));
        }
        self.uid += 1;
        let m = &mut obj["metadata"];
        m["name"] = json!(name);
        if r.namespaced {
            m["namespace"] = json!(ns);
        }
        m["uid"] = json!(format!("00000000-0000-0000-0000-{:012x}", self.uid));
        m["creationTimestamp"] = json!(now());
        m["generation"] = json!(1);
        if let Some(m) = m.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        if r.status_subresource
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        secret_string_data(r, &mut obj);
        self.bump(&mut obj);
        self.objects.insert(key, obj.clone());
        self.record("ADDED", r, obj.clone());
        Ok(obj)
    }

    /// Replaces an object (update, patch or status write already applied to a copy of it).
    /// A Secret's `stringData` is folded into `data`, as a real API server does.
    /// `status_only`: a write to the status subresource, which changes nothing else.
    pub fn replace(&mut self, r: &Resource, ns: &str, mut new: Value, status_only: bool) -> ApiResult<Value> {
        secret_string_data(r, &mut new);
        let name = name_of(&new);
        let key = (r.key(), ns.to_string(), name.clone());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, &name))?;
        if let Some(rv) = meta(&new)["resourceVersion"].as_str()
            && rv != meta(&old)["resourceVersion"].as_str().unwrap_or_default()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    r.plural
                ),
            ));
        }
        // A write that names no resourceVersion is not compared, and leaves it to the server.
        if meta(&new).get("resourceVersion").is_none() {
            new["metadata"]["resourceVersion"] = meta(&old)["resourceVersion"].clone();
        }
        if status_only {
            let status = new["status"].take();
            let owners = new["metadata"].get("managedFields").cloned();
            new = old.clone();
            new["status"] = status;
            match (owners, new["metadata"].as_object_mut()) {
                (Some(owners), Some(m)) if !owners.is_null() => {
                    m.insert("managedFields".into(), owners);
                }
                (_, Some(m)) => {
                    m.remove("managedFields");
                }
                _ => {}
            }
        } else {
            // Immutable metadata comes from the stored object; status only through its subresource.
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "namespace",
                "name",
            ] {
                match meta(&old).get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            if r.status_subresource {
                new["status"] = old["status"].clone();
                if new["status"].is_null()
                    && let Some(o) = new.as_object_mut()
                {
                    o.remove("status");
                }
            }
            if new["spec"] != old["spec"] {
                new["metadata"]["generation"] = json!(meta(&old)["generation"].as_i64().unwrap_or(1) + 1);
            }
        }
        new["apiVersion"] = json!(r.api_version());
        new["kind"] = json!(r.kind);
        if new == old {
            return Ok(old); // a no-op write changes no resourceVersion and sends no event
        }
        // A deleted object whose last finalizer goes away is gone (a pod once its kubelet has
        // also let it go: `deletion`).
        let finalizers_left = meta(&new)["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if meta(&new).get("deletionTimestamp").is_some() && !finalizers_left && !super::deletion::graceful(r, &new) {
            self.bump(&mut new);
            self.objects.remove(&key);
            self.record("DELETED", r, new.clone());
            return Ok(new);
        }
        self.bump(&mut new);
        self.objects.insert(key, new.clone());
        self.record("MODIFIED", r, new.clone());
        Ok(new)
    }
}
