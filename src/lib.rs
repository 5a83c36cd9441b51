//! runc-etcd: etcd clusters on the hosts themselves (systemd → runc → etcd).
//!
//! - [`operator`]: the controller; [`agent`]: the host agent it drives through EtcdMembers.
//! - [`api`]: the custom resources EtcdCluster and EtcdMember.
//! - [`host`]: the host engine (images, bundles, units, etcd membership) — no Kubernetes.
//! - [`cli`]: the `runc-etcd` command line.
//! - [`lab`]: simulated hosts with a real systemd, runc, etcd and registry, for tests and demos.

pub mod agent;
pub mod api;
pub mod apiserver;
pub mod backup;
pub mod cli;
pub mod error;
pub mod host;
pub mod lab;
pub mod metrics;
pub mod names;
pub mod operator;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
