//! An in-process Kubernetes API server for the control-plane tests (ARCHITECTURE.md §7): no
//! kube-apiserver can be installed here, so the tests run the operator and agents against this.
//! It keeps the semantics the controller relies on:
//! - resourceVersion on every write, and 409 Conflict for a stale one;
//! - watches from a resourceVersion, with label and field selectors;
//! - the status subresource (spec writes leave status alone and the reverse);
//! - metadata.generation bumped on spec changes;
//! - finalizers and deletionTimestamp;
//! - ownerReference garbage collection;
//! - merge, JSON and apply patches (apply and strategic merge act as JSON merge patches);
//! - schema and CEL validation of the project's custom resources;
//! - discovery, a minimal OpenAPI v3 and Tables, so kubectl get/apply/delete work against it.
//!
//! Not kept: field managers, admission, defaulting from the schema (the Rust types default on
//! read), bookmarks, Tables in watches.

mod discovery;
mod http;
mod resources;
mod store;
mod table;
mod validate;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use store::ApiError;

/// A running test API server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<ApiServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Self::serve(vec![listener])
    }

    /// Serves one store on every listener (e.g. loopback for the tests and a lab address for
    /// the operator and agents; a listener keeps the network namespace it was bound in). The
    /// first listener is the server's address.
    pub fn serve(listeners: Vec<std::net::TcpListener>) -> std::io::Result<ApiServer> {
        let store = Arc::new(Mutex::new(store::Store::new()));
        let app = axum::Router::new().fallback(http::handle).with_state(store);
        let addr = listeners
            .first()
            .ok_or_else(|| std::io::Error::other("no listener"))?
            .local_addr()?;
        let mut tasks = Vec::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(l)?;
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Ok(ApiServer { addr, tasks })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server, as the operator would get from a kubeconfig.
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
