//! The host engine's error type, split by what the caller should do about it: fix the input
//! (`Invalid`, `Refused`), retry later (`Transient`, `Timeout`), or look at the host (the rest).
//! The product crate wraps it with the Kubernetes errors the engine never sees.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field and the fix. Nothing was changed.
    #[error("invalid {field}: {problem}. Fix: {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: String,
    },
    /// A valid request that is unsafe or impossible in the current state. Nothing was changed.
    #[error("refused: {0}")]
    Refused(String),
    /// etcd or a registry did not answer as hoped; the same call may work later.
    #[error("{what}: {message}")]
    Transient { what: String, message: String },
    #[error("{what} did not happen within {secs}s: {last}")]
    Timeout { what: String, secs: u64, last: String },
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {reference}: {message}")]
    Image { reference: String, message: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    pub fn transient(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Transient {
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// The input was wrong or the action unsafe: the user must change something, retrying won't help.
    pub fn is_user_error(&self) -> bool {
        matches!(self, Error::Invalid { .. } | Error::Refused(_))
    }
}

/// Attach the path and what was being done to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.into(),
            source,
        })
    }
}
