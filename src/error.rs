//! The crate-wide error type: [`runc_etcd_api::error::Error`], the host engine's errors and the
//! Kubernetes API's, split by what the caller should do (see there).

pub use runc_etcd_api::error::{Error, Result};
pub use runc_etcd_host::error::IoContext;
