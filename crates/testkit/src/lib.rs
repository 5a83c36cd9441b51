//! The test harness of runc-etcd, linked only by tests, benchmarks and the `runc-etcd-lab` tool:
//!
//! - [`apiserver`]: an in-process Kubernetes API server, as strict as a real one where the
//!   operator depends on it (schemas, CEL rules, resourceVersion preconditions, watches);
//! - [`lab`]: simulated hosts (network namespaces with a real systemd as PID 1), their images,
//!   a registry, and a control plane that plays the DaemonSet's agents on them.

pub mod apiserver;
pub mod lab;

/// What the harness's own steps fail with: the product's error type.
pub use runc_etcd_api::error::{Error, Result};
