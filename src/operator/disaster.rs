//! Quorum loss and restores: what to start a seed from, and what to do when too few voting
//! members answer. Never a guess: with `recovery.quorumLoss: Manual` (the default) the
//! controller reports and waits; a person asks for a rebuild with an annotation, or
//! `RestoreFromBackup` rebuilds once quorum has stayed lost for `quorumLossTimeout`. A rebuild
//! loses the writes made after the backup, which is why it is never the default.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::backup;
use crate::operator::plan::Step;
use runc_etcd_api::{EtcdBackup, EtcdCluster, OperationKind, QuorumLossPolicy, parse_duration};

use runc_etcd_api::contract::RESTORE_ANNOTATION;

/// How long quorum must stay lost before `RestoreFromBackup` acts, when no timeout is given.
const DEFAULT_QUORUM_LOSS_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The step for a cluster that has lost quorum.
pub fn quorum_lost(
    c: &EtcdCluster,
    backups: &[EtcdBackup],
    (healthy, voters): (usize, usize),
    lost_since: Option<Timestamp>,
    now: Timestamp,
) -> Step {
    let seen = format!("quorum lost: {healthy} of {voters} voting members healthy");
    let requested = c.annotations().get(RESTORE_ANNOTATION).map(|v| v.trim().to_string());
    let timeout = c
        .spec
        .recovery
        .quorum_loss_timeout
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(DEFAULT_QUORUM_LOSS_TIMEOUT);
    let timed_out = c.spec.recovery.quorum_loss == QuorumLossPolicy::RestoreFromBackup
        && lost_since.is_some_and(|t| t + timeout <= now);
    if requested.is_none() && !timed_out {
        return Step::Wait {
            reason: format!(
                "{seen}; nothing is changed. Bring the members' hosts back if you can; to rebuild from \
                 the newest backup instead (writes made after it are lost): kubectl annotate etcdcluster {} \
                 {RESTORE_ANNOTATION}=latest",
                c.name_any()
            ),
        };
    }
    let choice = match requested.as_deref() {
        Some(name) if !name.is_empty() && name != "latest" => backups
            .iter()
            .find(|b| b.name_any() == name && b.succeeded())
            .ok_or_else(|| format!("EtcdBackup {name} is not a Succeeded backup of this cluster")),
        _ => backup::newest_good(backups, &c.name_any()).ok_or_else(|| "there is no Succeeded backup".to_string()),
    };
    match choice {
        Ok(b) => Step::Rebuild { backup: b.name_any() },
        Err(why) => Step::Wait {
            reason: format!("{seen}; a rebuild was asked for but {why}"),
        },
    }
}

/// The backup a new seed starts from: the one a rebuild recorded, else `spec.bootstrap.restore`.
pub fn restore_source(c: &EtcdCluster) -> Option<String> {
    let op = c.status.as_ref().and_then(|s| s.last_operation.as_ref());
    match op {
        Some(op)
            if op.kind == OperationKind::RebuildFromBackup
                || (op.kind == OperationKind::BootstrapMember && op.backup.is_some()) =>
        {
            op.backup.clone()
        }
        _ => c
            .spec
            .bootstrap
            .as_ref()?
            .restore
            .as_ref()
            .map(|r| r.backup_name.clone()),
    }
}

/// Why a seed cannot start from `backup` yet (it is not Succeeded, or it is kept on a node that
/// cannot host the seed), or the node the seed must go to (a host-folder backup's).
pub fn seed_node(backup: Option<&EtcdBackup>, name: &str, eligible: &[&str]) -> Result<Option<String>, String> {
    let Some(b) = backup.filter(|b| b.succeeded()) else {
        return Err(format!(
            "restore: EtcdBackup {name} is not a Succeeded backup in this namespace; create the cluster from one that is"
        ));
    };
    let s = b.status.clone().unwrap_or_default();
    if s.destination.is_some_and(|d| d.s3.is_some()) {
        return Ok(None); // any node can download it
    }
    match s.node_name {
        Some(node) if eligible.contains(&node.as_str()) => Ok(Some(node)),
        node => Err(format!(
            "restore: EtcdBackup {name} is kept on node {}, which cannot host a member now",
            node.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use runc_etcd_api::{BackupDestination, BackupPhase, EtcdBackupSpec, EtcdBackupStatus, HostPathDestination};

    fn cluster(extra: serde_json::Value) -> EtcdCluster {
        let mut v = serde_json::json!({"apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "prod"}, "spec": {"version": "3.5.16"}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn backup(name: &str, phase: BackupPhase, done_secs: i64, node: Option<&str>) -> EtcdBackup {
        let mut b = EtcdBackup::new(
            name,
            EtcdBackupSpec {
                cluster_name: "main".into(),
            },
        );
        b.status = Some(EtcdBackupStatus {
            phase: Some(phase),
            node_name: node.map(String::from),
            destination: Some(BackupDestination {
                s3: None,
                host_path: Some(HostPathDestination { path: "/b".into() }),
            }),
            completion_time: Some(Time(Timestamp::from_second(done_secs).unwrap())),
            ..Default::default()
        });
        b
    }

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    #[test]
    fn manual_waits_and_says_how_to_rebuild() {
        let c = cluster(serde_json::json!({}));
        let backups = [backup("b1", BackupPhase::Succeeded, T0, Some("n1"))];
        let step = quorum_lost(&c, &backups, (1, 3), Some(at(0)), at(86_400));
        let Step::Wait { reason } = step else {
            panic!("{step:?}")
        };
        assert!(reason.starts_with("quorum lost: 1 of 3"), "{reason}");
        assert!(reason.contains("nothing is changed"), "{reason}");
        assert!(reason.contains(&format!("{RESTORE_ANNOTATION}=latest")), "{reason}");
    }

    #[test]
    fn a_request_rebuilds_from_the_newest_good_or_the_named_backup() {
        let backups = [
            backup("old", BackupPhase::Succeeded, T0 - 100, Some("n1")),
            backup("new", BackupPhase::Succeeded, T0, Some("n2")),
            backup("broken", BackupPhase::Failed, T0 + 10, Some("n2")),
        ];
        let latest = cluster(serde_json::json!({"metadata": {"annotations": {RESTORE_ANNOTATION: "latest"}}}));
        assert_eq!(
            quorum_lost(&latest, &backups, (0, 3), None, at(0)),
            Step::Rebuild { backup: "new".into() }
        );
        let named = cluster(serde_json::json!({"metadata": {"annotations": {RESTORE_ANNOTATION: "old"}}}));
        assert_eq!(
            quorum_lost(&named, &backups, (0, 3), None, at(0)),
            Step::Rebuild { backup: "old".into() }
        );
        let bad = cluster(serde_json::json!({"metadata": {"annotations": {RESTORE_ANNOTATION: "broken"}}}));
        let Step::Wait { reason } = quorum_lost(&bad, &backups, (0, 3), None, at(0)) else {
            panic!()
        };
        assert!(reason.contains("broken is not a Succeeded backup"), "{reason}");
        let Step::Wait { reason } = quorum_lost(&latest, &[], (0, 3), None, at(0)) else {
            panic!()
        };
        assert!(reason.contains("no Succeeded backup"), "{reason}");
    }

    #[test]
    fn restore_from_backup_acts_only_after_its_timeout() {
        let c = cluster(
            serde_json::json!({"spec": {"recovery": {"quorumLoss": "RestoreFromBackup", "quorumLossTimeout": "10m"}}}),
        );
        let backups = [backup("b1", BackupPhase::Succeeded, T0, Some("n1"))];
        assert!(matches!(
            quorum_lost(&c, &backups, (1, 3), Some(at(0)), at(599)),
            Step::Wait { .. }
        ));
        assert_eq!(
            quorum_lost(&c, &backups, (1, 3), Some(at(0)), at(600)),
            Step::Rebuild { backup: "b1".into() }
        );
    }

    #[test]
    fn a_host_folder_backup_pins_the_seed_to_its_node() {
        let b = backup("b1", BackupPhase::Succeeded, T0, Some("n2"));
        assert_eq!(seed_node(Some(&b), "b1", &["n1", "n2"]), Ok(Some("n2".into())));
        let e = seed_node(Some(&b), "b1", &["n1"]).unwrap_err();
        assert!(e.contains("kept on node n2"), "{e}");
        let e = seed_node(None, "gone", &["n1"]).unwrap_err();
        assert!(e.starts_with("restore: EtcdBackup gone"), "{e}");
    }
}
