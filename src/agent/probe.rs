//! What the host says about a placed member — its unit's state and etcd's own answer — and the
//! member's status built from that (pure).

use std::time::Duration;

use super::{Ctx, phase};
use crate::error::{Error, Result};
use runc_etcd_api::{EtcdMemberStatus, MemberPhase};
use runc_etcd_host::etcd::EndpointStatus;
use runc_etcd_host::member::MemberRecord;
use runc_etcd_host::systemd::{self, UnitState};

/// The unit, and etcd's answer (or why there was none).
pub(super) struct Seen {
    unit: UnitState,
    etcd: std::result::Result<EndpointStatus, String>,
    /// Whether it serves (`etcdctl endpoint health`: a leader, and for a voter a quorum read).
    serving: std::result::Result<(), String>,
    /// When the first of its installed certificates expires (RFC 3339).
    certificate_not_after: Option<String>,
    /// `pki::digest` of its installed certificates and trust bundle.
    certificates_digest: Option<String>,
}

pub(super) async fn run(ctx: &Ctx, record: &MemberRecord) -> Result<Seen> {
    let unit = systemd::show(&ctx.instance).await?;
    let within = Duration::from_secs(4);
    let url = record.client_url();
    let (etcd, serving) = match ctx.engine.access(record) {
        Ok(access) => {
            // The health check reads the status first: the status is asked alone only when
            // the member does not serve.
            let health = tokio::time::timeout(within, access.health(&url))
                .await
                .map_err(|_| "the health check timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            match health {
                Ok(status) => (Ok(status), Ok(())),
                Err(why) => {
                    let status = tokio::time::timeout(within, access.status(&url))
                        .await
                        .map_err(|_| Error::transient("etcd status", "timed out"))
                        .and_then(|r| r.map_err(Error::from));
                    (status, Err(why))
                }
            }
        }
        Err(e) => (Err(Error::from(e)), Err("no client identity".to_string())),
    };
    let paths = ctx.engine.paths(&ctx.instance);
    let certificate_not_after = record
        .tls
        .then(|| runc_etcd_host::pki::installed_not_after(&paths))
        .flatten()
        .map(|t| t.to_rfc3339());
    let certificates_digest = record
        .tls
        .then(|| runc_etcd_host::pki::installed_digest(&paths))
        .flatten();
    Ok(Seen {
        unit,
        etcd: etcd.map_err(|e| e.to_string()),
        serving,
        certificate_not_after,
        certificates_digest,
    })
}

/// The member's status from what was seen: Running once etcd answers (observedGeneration then
/// moves to `ack`, the generation this pass made whole, if any), Failed when the unit failed,
/// else Starting.
pub(super) fn status(base: EtcdMemberStatus, seen: &Seen, ack: Option<i64>) -> EtcdMemberStatus {
    let status = EtcdMemberStatus {
        unit_state: Some(format!("{}/{}", seen.unit.active_state, seen.unit.sub_state)),
        restart_count: seen.unit.n_restarts as i32,
        certificate_not_after: seen.certificate_not_after.clone(),
        certificates_digest: seen.certificates_digest.clone(),
        ..base
    };
    let silent = EtcdMemberStatus {
        serving: Some(false),
        leader: None,
        ..status.clone()
    };
    match &seen.etcd {
        Ok(s) => {
            let role = if s.is_learner { "learner" } else { "voting member" };
            let message = match &seen.serving {
                Ok(()) => role.to_string(),
                Err(e) => format!("{role}, not serving: {e}"),
            };
            EtcdMemberStatus {
                member_id: Some(format!("{:x}", s.member_id)),
                version: Some(s.version.clone()),
                observed_generation: ack.or(status.observed_generation),
                serving: Some(seen.serving.is_ok()),
                cluster_id: Some(format!("{:x}", s.cluster_id)),
                leader: (s.leader != 0).then(|| format!("{:x}", s.leader)),
                ..phase(status, MemberPhase::Running, message)
            }
        }
        Err(e) if seen.unit.active_state == "failed" => phase(silent, MemberPhase::Failed, e.clone()),
        Err(e) => phase(silent, MemberPhase::Starting, format!("etcd does not answer yet: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str) -> UnitState {
        UnitState {
            active_state: active.into(),
            sub_state: "running".into(),
            unit_file_state: String::new(),
            n_restarts: 2,
            main_pid: 0,
        }
    }

    #[test]
    fn running_once_etcd_answers_failed_when_the_unit_failed() {
        let answered = Seen {
            unit: unit("active"),
            etcd: Ok(EndpointStatus {
                member_id: 0xab,
                cluster_id: 0xc1,
                leader: 0xcd,
                version: "3.5.16".into(),
                is_learner: true,
                ..Default::default()
            }),
            serving: Ok(()),
            certificate_not_after: None,
            certificates_digest: None,
        };
        let s = status(EtcdMemberStatus::default(), &answered, Some(3));
        assert_eq!((s.phase, s.observed_generation), (Some(MemberPhase::Running), Some(3)));
        assert_eq!(
            (s.member_id.as_deref(), s.message.as_deref()),
            (Some("ab"), Some("learner"))
        );
        assert_eq!(s.restart_count, 2);
        assert_eq!(
            (s.serving, s.cluster_id.as_deref(), s.leader.as_deref()),
            (Some(true), Some("c1"), Some("cd"))
        );
        let acked_before = EtcdMemberStatus {
            observed_generation: Some(2),
            ..Default::default()
        };
        let s = status(acked_before, &answered, None);
        assert_eq!(
            s.observed_generation,
            Some(2),
            "a pass that did not make all of generation 3 real does not acknowledge it"
        );
        let cut_off = Seen {
            serving: Err("no leader".into()),
            ..answered
        };
        let s = status(EtcdMemberStatus::default(), &cut_off, Some(3));
        assert_eq!((s.phase, s.serving), (Some(MemberPhase::Running), Some(false)));
        assert!(s.message.unwrap().contains("not serving: no leader"));
        let silent = |active| Seen {
            unit: unit(active),
            etcd: Err("connection refused".into()),
            serving: Err("connection refused".into()),
            certificate_not_after: None,
            certificates_digest: None,
        };
        let s = status(EtcdMemberStatus::default(), &silent("failed"), Some(3));
        assert_eq!((s.phase, s.observed_generation), (Some(MemberPhase::Failed), None));
        assert_eq!(s.serving, Some(false));
        let s = status(EtcdMemberStatus::default(), &silent("activating"), Some(3));
        assert_eq!(s.phase, Some(MemberPhase::Starting));
    }
}
