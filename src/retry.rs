//! How every controller of this crate (the cluster's, the backups', the agents') answers a failed
//! reconcile, by what the error asks for (see [`crate::Error`]):
//!
//! - an invalid spec waits for the object to change (`Action::await_change`): retrying cannot help;
//! - anything else is retried with exponential backoff and jitter, per object, so a cluster whose
//!   API calls fail does not hammer the API server, and many failing at once do not retry in step.
//!
//! "Not yet" is not an error: a reconcile that must wait returns `Ok` with a requeue and says why
//! in the status (`Step::Wait { reason }`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;

use crate::Error;

/// The first retry comes after about this long; each failure in a row doubles it.
const FIRST: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
const CAP: Duration = Duration::from_secs(300);

/// Failures in a row, per object (`namespace/name`).
#[derive(Default)]
pub struct Retries {
    failures: Mutex<HashMap<String, u32>>,
}

impl Retries {
    /// A reconcile of `key` succeeded: its next failure starts the backoff again.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }

    /// The action after a failed reconcile of `key`.
    pub fn failed(&self, key: &str, e: &Error) -> Action {
        if e.is_invalid() {
            tracing::warn!("{e}; waiting for the spec to change");
            self.succeeded(key);
            return Action::await_change();
        }
        let n = {
            let mut failures = self.failures.lock().expect("not poisoned");
            let n = failures.entry(key.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let wait = backoff(n, fastrand::f64());
        tracing::warn!("{e}; retrying in {wait:.1?} (failure {n} in a row)");
        Action::requeue(wait)
    }
}

/// The wait after `failures` failures in a row (≥ 1): `FIRST` doubled each time up to `CAP`,
/// then scaled into [½, 1) of that by `jitter` (uniform in [0, 1)).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = FIRST.saturating_mul(1 << doublings).min(CAP);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The key [`Retries`] counts an object under.
pub fn key<K: kube::ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff(1, 1.0), FIRST);
        assert_eq!(backoff(1, 0.0), FIRST / 2);
        assert_eq!(backoff(2, 1.0), FIRST * 2);
        assert_eq!(backoff(5, 1.0), FIRST * 16);
        assert_eq!(backoff(40, 1.0), CAP);
        assert_eq!(backoff(u32::MAX, 0.0), CAP / 2);
        assert!(backoff(3, 0.3) > backoff(3, 0.2));
    }

    #[test]
    fn an_invalid_spec_waits_and_a_transient_error_backs_off() {
        let r = Retries::default();
        let invalid = Error::invalid("spec.version", "not a version", "write 3.5.16");
        assert_eq!(r.failed("ns/a", &invalid), Action::await_change());
        let transient = Error::transient("etcd", "no answer");
        let waits: Vec<Action> = (0..4).map(|_| r.failed("ns/a", &transient)).collect();
        assert!(waits.iter().all(|a| *a != Action::await_change()));
        assert_eq!(r.failures.lock().unwrap()["ns/a"], 4);
        r.succeeded("ns/a");
        assert!(!r.failures.lock().unwrap().contains_key("ns/a"));
    }
}
