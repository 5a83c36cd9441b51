//! Leases (coordination.k8s.io/v1): leader election for the controller, and the agents'
//! per-member heartbeats.
//!
//! Leader election is the client-go scheme: a holder renews the Lease well within
//! `leaseDurationSeconds`; anyone may take a Lease that has not changed for that long *as seen on
//! its own clock* (client-go's observedTime rule). The holder's `renewTime` is never compared with
//! the local clock: with the two clocks apart, that comparison lets a candidate take a Lease its
//! holder still renews, and two operators lead at once. Writes go through resourceVersion, so two
//! candidates cannot both win. A leader that cannot renew in time stops acting (the process
//! exits) before anyone else may take over.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::error::Result;

pub struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The Lease as last seen, and when (on this process's monotonic clock) it was first seen so.
    observed: Mutex<Option<(LeaseSpec, Instant)>>,
}

impl Election {
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Election {
        Election {
            api,
            name,
            identity,
            duration,
            observed: Mutex::new(None),
        }
    }

    /// Whether another holder's Lease has expired: it has not changed for its duration since this
    /// process first saw it as it is now. A Lease never renewed is free.
    fn expired(&self, spec: &LeaseSpec, now: Instant) -> bool {
        if spec.renew_time.is_none() {
            return true;
        }
        let mut observed = self.observed.lock().expect("not poisoned");
        let since = match observed.as_ref() {
            Some((seen, at)) if seen == spec => *at,
            _ => {
                *observed = Some((spec.clone(), now));
                now
            }
        };
        let secs = spec.lease_duration_seconds.unwrap_or(15).max(1) as u64;
        now.duration_since(since) > Duration::from_secs(secs)
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease. Ok(true): we lead until `now + duration`.
    pub async fn try_lead(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !self.expired(&spec, Instant::now()) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // replace carries our resourceVersion: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this process leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_lead().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews every third of the lease; returns when leadership is lost or could not be renewed
    /// before the lease ran out.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_lead().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader election: another instance holds lease {}", self.name);
                    return;
                }
                Err(e) => tracing::warn!("leader election: renewing: {e}"),
            }
            // Stop before the lease can have expired for others (keep a margin of a third).
            if last_ok.elapsed() > self.duration * 2 / 3 {
                tracing::error!("leader election: could not renew lease {} in time", self.name);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn election() -> Election {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        Election::new(Api::all(client), "lease".into(), "me".into(), Duration::from_secs(15))
    }

    /// The holder's clock is an hour behind: its `renewTime` looks stale, but it renews. Read
    /// against the local clock (the old rule) the Lease was expired at once and a second
    /// operator led beside the first.
    #[tokio::test]
    async fn a_lease_expires_only_after_it_stops_changing_for_its_duration_on_our_clock() {
        let e = election();
        let skewed = Timestamp::now() - SignedDuration::from_secs(3600);
        let renewed = |secs: i64| LeaseSpec {
            holder_identity: Some("other".into()),
            renew_time: Some(MicroTime(skewed + SignedDuration::from_secs(secs))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let t0 = Instant::now();
        assert!(!e.expired(&renewed(0), t0), "first seen: the clock starts now");
        assert!(!e.expired(&renewed(5), t0 + Duration::from_secs(14)));
        assert!(
            !e.expired(&renewed(10), t0 + Duration::from_secs(28)),
            "renewed: not expired"
        );
        assert!(!e.expired(&renewed(10), t0 + Duration::from_secs(42)));
        assert!(
            e.expired(&renewed(10), t0 + Duration::from_secs(44)),
            "unchanged for 16 s"
        );
        assert!(e.expired(&LeaseSpec::default(), t0), "never renewed");
    }
}
