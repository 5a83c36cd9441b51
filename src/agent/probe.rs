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
}

pub(super) async fn run(ctx: &Ctx, record: &MemberRecord) -> Result<Seen> {
    let unit = systemd::show(&ctx.instance).await?;
    let etcd = match ctx.engine.access(record) {
        Ok(access) => tokio::time::timeout(Duration::from_secs(4), access.status(&record.client_url()))
            .await
            .map_err(|_| Error::transient("etcd status", "timed out"))
            .and_then(|r| r.map_err(Error::from)),
        Err(e) => Err(e.into()),
    };
    Ok(Seen {
        unit,
        etcd: etcd.map_err(|e| e.to_string()),
    })
}

/// The member's status from what was seen: Running once etcd answers (observedGeneration then
/// moves to `generation`), Failed when the unit failed, else Starting.
pub(super) fn status(base: EtcdMemberStatus, seen: &Seen, generation: Option<i64>) -> EtcdMemberStatus {
    let status = EtcdMemberStatus {
        unit_state: Some(format!("{}/{}", seen.unit.active_state, seen.unit.sub_state)),
        restart_count: seen.unit.n_restarts as i32,
        ..base
    };
    match &seen.etcd {
        Ok(s) => EtcdMemberStatus {
            member_id: Some(format!("{:x}", s.member_id)),
            version: Some(s.version.clone()),
            observed_generation: generation,
            ..phase(
                status,
                MemberPhase::Running,
                if s.is_learner { "learner" } else { "voting member" }.into(),
            )
        },
        Err(e) if seen.unit.active_state == "failed" => phase(status, MemberPhase::Failed, e.clone()),
        Err(e) => phase(status, MemberPhase::Starting, format!("etcd does not answer yet: {e}")),
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
                version: "3.5.16".into(),
                is_learner: true,
                ..Default::default()
            }),
        };
        let s = status(EtcdMemberStatus::default(), &answered, Some(3));
        assert_eq!((s.phase, s.observed_generation), (Some(MemberPhase::Running), Some(3)));
        assert_eq!(
            (s.member_id.as_deref(), s.message.as_deref()),
            (Some("ab"), Some("learner"))
        );
        assert_eq!(s.restart_count, 2);
        let silent = |active| Seen {
            unit: unit(active),
            etcd: Err("connection refused".into()),
        };
        let s = status(EtcdMemberStatus::default(), &silent("failed"), Some(3));
        assert_eq!((s.phase, s.observed_generation), (Some(MemberPhase::Failed), None));
        let s = status(EtcdMemberStatus::default(), &silent("activating"), Some(3));
        assert_eq!(s.phase, Some(MemberPhase::Starting));
    }
}
