//! The one error type of everything that talks to Kubernetes — the product crate (operator,
//! agent, host CLI, backups) uses it crate-wide as `runc_etcd::Error`, and the test harness too —
//! split by what the caller should do about it:
//!
//! - the user must change something (an invalid spec, a refused action): [`Error::is_user_error`];
//!   for an invalid spec ([`Error::is_invalid`]) the controllers wait for the object to change
//!   (`Action::await_change`) instead of retrying;
//! - everything else may work later (etcd, a registry, the API server, the host): the controllers
//!   retry with exponential backoff and jitter (`runc_etcd::retry`).
//!
//! The host engine's own errors ([`runc_etcd_host::Error`]) are kept whole, so the CLI prints the
//! same field-and-fix message the engine wrote.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the host engine: bad input, a refusal, or a host/etcd/registry failure.
    #[error(transparent)]
    Engine(#[from] runc_etcd_host::Error),
    /// The Kubernetes API refused or did not answer.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Bad input: names the field and the fix. Nothing was changed.
    pub fn invalid(field: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        runc_etcd_host::Error::invalid(field, problem, fix).into()
    }

    /// A valid request that is unsafe or impossible in the current state. Nothing was changed.
    pub fn refused(why: impl Into<String>) -> Self {
        runc_etcd_host::Error::Refused(why.into()).into()
    }

    /// Something outside did not answer as hoped; the same call may work later.
    pub fn transient(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        runc_etcd_host::Error::transient(what, message).into()
    }

    /// The input was wrong or the action unsafe: the user must change something, retrying won't help.
    pub fn is_user_error(&self) -> bool {
        matches!(self, Error::Engine(e) if e.is_user_error())
    }

    /// The spec itself is wrong: only a change to it can help (a refusal, by contrast, may pass
    /// once the state it depends on changes).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Engine(runc_etcd_host::Error::Invalid { .. }))
    }

    /// The API server's refusal of a request this identity may not make (403), in its words:
    /// a permission is missing, and only an administrator can grant it.
    pub fn forbidden(&self) -> Option<&str> {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => Some(&s.message),
            _ => None,
        }
    }
}
