//! runc-etcd: etcd clusters on the hosts themselves (systemd → runc → etcd). This crate is the
//! product the image ships; it is built from two libraries:
//! [`runc_etcd_host`] (the host engine, no Kubernetes) and [`runc_etcd_api`] (the custom resources
//! and the controller–agent contract).
//!
//! - [`operator`]: the controller; [`agent`]: the host agent it drives through EtcdMembers. The
//!   two share nothing but the API crate.
//! - [`backup`]: snapshot destinations (S3, host folders); [`metrics`]: Prometheus metrics.
//! - [`cli`]: the `runc-etcd` command line.

pub mod agent;
pub mod backup;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod operator;
pub mod retry;

pub use error::{Error, Result};
