//! Test hooks that make the process die at a chosen moment: the worst moments for a crash, where
//! a step is half done. Only in builds with the `failpoints` feature (the lab tests'); the
//! release build and the image have none, and there `hit` does nothing.
//!
//! `RUNC_ETCD_FAILPOINT=<name>` arms one point. With `RUNC_ETCD_FAILPOINT_ONCE=<path>` it fires
//! only while `path` does not exist, and creates it first: a process that systemd restarts (an
//! agent) dies once and then finishes what it was doing.

/// Dies (exit status 86) at point `name` if it is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var("RUNC_ETCD_FAILPOINT").is_ok_and(|f| f == name) {
        if let Some(marker) = std::env::var_os("RUNC_ETCD_FAILPOINT_ONCE") {
            // create_new: of two racing callers, only one fires.
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_err()
            {
                return;
            }
        }
        tracing::error!("failpoint {name}: exiting");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "failpoints"))]
pub fn hit(_: &str) {}
