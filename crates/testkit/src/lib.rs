//! The test harness of runc-etcd, linked only by tests, benchmarks and the `runc-etcd-lab` tool:
//!
//! - [`apiserver`]: an in-process Kubernetes API server, as strict as a real one where the
//!   operator depends on it (schemas, CEL rules, resourceVersion preconditions, watches);
//! - [`lab`]: simulated hosts (network namespaces with a real systemd as PID 1), their images,
//!   a registry, and a control plane that plays the DaemonSet's agents on them.

pub mod apiserver;
pub mod lab;

/// What the harness's own steps fail with: the host engine's errors and the API's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Host(#[from] runc_etcd_host::Error),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        runc_etcd_host::Error::invalid(field, problem, fix).into()
    }

    pub fn transient(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        runc_etcd_host::Error::transient(what, message).into()
    }
}
