//! An in-process Kubernetes API server for the control-plane tests (ARCHITECTURE.md §7): no
//! kube-apiserver can be installed here, so the tests run the operator and agents against this.
//! It keeps the semantics the controller relies on:
//! - resourceVersion on every write, and 409 Conflict for a stale one;
//! - watches from a resourceVersion, with label and field selectors;
//! - the status subresource (spec writes leave status alone and the reverse);
//! - metadata.generation bumped on spec changes;
//! - finalizers and deletionTimestamp;
//! - deletion as kube-controller-manager finishes it, in passes after the request (`deletion`):
//!   garbage collection in the background, the foreground (the owner goes once its blocking
//!   dependents have) or orphaning; graceful pod deletion; namespaces that delete their pods
//!   first, then the rest;
//! - the DaemonSet controller (`daemonsets`): a pod per eligible Node, through admission;
//! - admission of pods (`admission`): Pod Security by namespace label, PriorityClasses that
//!   exist; OwnerReferencesPermissionEnforcement (`rbac::owner_references`);
//! - merge, JSON and apply patches (a strategic merge acts as a JSON merge patch);
//! - server-side apply with managed fields (`apply`): ownership per field manager, conflicts
//!   without `force` in kube-apiserver's words, removal of what a manager no longer applies;
//! - namespaces: a namespaced object needs its namespace; a deleted namespace is Terminating
//!   (nothing new may be made in it) until its last object is gone;
//! - no unconditional update (a PUT without resourceVersion) of a custom resource;
//! - schema and CEL validation of the project's custom resources (CRDs can be stored, as a
//!   harness installs them on a real cluster, but the schemas used are the code's);
//! - optionally HTTPS and a bearer token (`serve_secured`), as a real cluster is reached;
//! - discovery, a minimal OpenAPI v3 and Tables (in watches too), so kubectl get [-w], apply
//!   and delete work against it.
//!
//! - bearer tokens: one per ServiceAccount through the TokenRequest API, and the administrator's,
//!   with impersonation (`kubectl --as`);
//! - Events as one store served as events.k8s.io/v1 and core v1 (`events`), so `kubectl
//!   describe` shows what the operator records;
//! - SelfSubjectAccessReview and SubjectAccessReview from the same RBAC (`kubectl auth can-i`);
//! - RBAC from the Roles, ClusterRoles and bindings it stores (with the bootstrap discovery
//!   roles), for every request but the administrator's, with kube-apiserver's 403 messages.
//!
//!   and RBAC's escalation check on writes of Roles and bindings (grant only what you hold);
//!
//! Not kept: defaulting (from the schema or the built-in types: the Rust types default on read),
//! a strategic merge's list merging, bookmarks.

mod admission;
mod apply;
mod auth;
mod daemonsets;
mod deletion;
mod discovery;
mod events;
mod http;
mod protobuf;
mod rbac;
mod resources;
mod store;
mod table;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use auth::Access;
pub use rbac::User;
pub use store::ApiError;

/// A running test API server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    store: Arc<Mutex<store::Store>>,
}

/// A request as the server counts it: who (user name), the verb, and the resource
/// (`group/plural`, with `/subresource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counted {
    pub user: String,
    pub verb: String,
    pub resource: String,
}

impl Counted {
    /// Whether the request changes something.
    pub fn writes(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
}

/// Serving as a real cluster does (the standalone server, `runc-etcd-lab apiserver`): HTTPS with
/// a certificate its clients verify, and a bearer token every request must carry.
pub struct Secured {
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

impl ApiServer {
    /// Starts on a free loopback port, where a request without a token is the administrator's.
    pub async fn start() -> std::io::Result<ApiServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Self::serve(vec![(listener, Access::AdminWithoutToken)])
    }

    /// Serves one store on every listener (e.g. loopback for the tests and a lab address for
    /// the operator and agents; a listener keeps the network namespace it was bound in), each
    /// letting in what its `Access` says. The first listener is the server's address. Plain HTTP.
    pub fn serve(listeners: Vec<(std::net::TcpListener, Access)>) -> std::io::Result<ApiServer> {
        Self::serve_with(listeners, None)
    }

    /// Over HTTPS, and every request carries a token: the administrator's (`secured.token`) or
    /// a ServiceAccount's.
    pub fn serve_secured(listeners: Vec<std::net::TcpListener>, secured: Secured) -> std::io::Result<ApiServer> {
        let listeners = listeners.into_iter().map(|l| (l, Access::TokenRequired)).collect();
        Self::serve_with(listeners, Some(secured))
    }

    fn serve_with(
        listeners: Vec<(std::net::TcpListener, Access)>,
        secured: Option<Secured>,
    ) -> std::io::Result<ApiServer> {
        let store = Arc::new(Mutex::new(store::Store::new()));
        let routes = axum::Router::new().fallback(http::handle).with_state(store.clone());
        let addr = listeners
            .first()
            .ok_or_else(|| std::io::Error::other("no listener"))?
            .0
            .local_addr()?;
        let acceptor = match secured {
            Some(s) => {
                store.lock().unwrap().tokens.admin(&s.token);
                Some(tls::acceptor(&s.cert_pem, &s.key_pem)?)
            }
            None => None,
        };
        let mut tasks = Vec::new();
        for (l, access) in listeners {
            l.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(l)?;
            let app = routes.clone().layer(axum::middleware::from_fn_with_state(
                (store.clone(), access),
                auth::authenticate,
            ));
            let acceptor = acceptor.clone();
            tasks.push(tokio::spawn(async move {
                let _ = match acceptor {
                    Some(acceptor) => axum::serve(tls::Listener { listener, acceptor }, app).await,
                    None => axum::serve(listener, app).await,
                };
            }));
        }
        // The controllers kube-controller-manager runs beside a real API server: those that
        // finish deletions (`deletion`) and the DaemonSet controller (`daemonsets`).
        // Their passes depend on nothing but the store: once a pass changes nothing, none runs
        // again until something else does.
        let background = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut settled = 0;
            loop {
                tokio::time::sleep(deletion::PASS).await;
                let mut store = background.lock().unwrap();
                let before = store.resource_version();
                if before != settled {
                    store.collect();
                    store.run_daemonsets();
                    if store.resource_version() == before {
                        settled = before;
                    }
                }
            }
        }));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        Ok(ApiServer {
            addr,
            scheme,
            tasks,
            store,
        })
    }

    /// Every resource request served so far, counted (the server's own count, as the
    /// apiserver_request_total metric keeps it).
    pub fn requests(&self) -> std::collections::BTreeMap<Counted, u64> {
        self.store.lock().unwrap().requests.clone()
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// A client of this server, as the operator would get from a kubeconfig (plain HTTP only).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("a valid URL"));
        kube::Client::try_from(config).expect("a client for a plain-HTTP server")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
