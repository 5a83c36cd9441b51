//! Which backups expire (pure). Each kind — scheduled, taken before a change, on demand — keeps
//! its own count of backups that *succeeded*, the newest always among them, so that failures
//! (an S3 outage lasting many schedule periods) never push the last good backups out. Failed
//! backups expire on their own count. A backup still being taken, or one that a restore or a
//! rebuild in progress reads, is never expired.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use runc_etcd_api::{BackupPhase, BackupSpec, EtcdBackup, EtcdCluster, OperationState};

use super::backups::{REASON_LABEL, SCHEDULED_FOR};

/// Why a backup exists (its `REASON_LABEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Scheduled,
    BeforeChange,
    /// Made by a user (no reason label).
    OnDemand,
}

impl Kind {
    pub fn of(b: &EtcdBackup) -> Kind {
        match b.labels().get(REASON_LABEL).map(String::as_str) {
            Some("scheduled") => Kind::Scheduled,
            Some("before-change") => Kind::BeforeChange,
            _ => Kind::OnDemand,
        }
    }

    pub fn label(self) -> Option<&'static str> {
        match self {
            Kind::Scheduled => Some("scheduled"),
            Kind::BeforeChange => Some("before-change"),
            Kind::OnDemand => None,
        }
    }
}

/// How many of each to keep (`spec.backup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub scheduled: usize,
    pub before_change: usize,
    pub on_demand: usize,
    pub failed: usize,
}

impl Keep {
    pub fn of(spec: &BackupSpec) -> Keep {
        let n = |v: i32| usize::try_from(v).unwrap_or(0);
        Keep {
            scheduled: n(spec.retention),
            before_change: n(spec.before_change_retention),
            on_demand: n(spec.on_demand_retention),
            failed: n(spec.failed_retention),
        }
    }

    fn succeeded(&self, kind: Kind) -> usize {
        let n = match kind {
            Kind::Scheduled => self.scheduled,
            Kind::BeforeChange => self.before_change,
            Kind::OnDemand => self.on_demand,
        };
        // The newest good backup of each kind is never expired, whatever the spec says.
        n.max(1)
    }
}

/// When a backup stands for: its schedule's fire time, else when it was made.
pub fn taken_at(b: &EtcdBackup) -> Option<DateTime<Utc>> {
    b.annotations()
        .get(SCHEDULED_FOR)
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            let t = b.metadata.creation_timestamp.as_ref()?;
            DateTime::from_timestamp(t.0.as_second(), 0)
        })
}

/// The backups that a restore or rebuild of `c` in progress reads, or that its change in
/// progress waits for: never expired. (`others` are the namespace's other clusters: one being
/// restored from a backup of `c` reads it too.)
pub fn in_use(c: &EtcdCluster, members_restore_from: &[String], others: &[EtcdCluster]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = members_restore_from.iter().cloned().collect();
    let status = c.status.as_ref();
    if let Some(op) = status.and_then(|s| s.last_operation.as_ref())
        && matches!(op.state, OperationState::Pending | OperationState::InProgress)
        && let Some(b) = &op.backup
    {
        names.insert(b.clone());
    }
    // The gate of the change in progress looks for this generation's backup: expiring it would
    // only make the gate take it again.
    names.insert(super::backups::before_change_name(c));
    for other in others.iter().chain(std::iter::once(c)) {
        let restoring = other.status.as_ref().and_then(|s| s.converged_generation).is_none();
        if let Some(r) = other.spec.bootstrap.as_ref().and_then(|b| b.restore.as_ref())
            && restoring
        {
            names.insert(r.backup_name.clone());
        }
    }
    names
}

/// The backups past retention, the oldest first.
pub fn expired(backups: &[EtcdBackup], keep: Keep, in_use: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for kind in [Kind::Scheduled, Kind::BeforeChange, Kind::OnDemand] {
        for (phase, count) in [
            (BackupPhase::Succeeded, keep.succeeded(kind)),
            (BackupPhase::Failed, keep.failed),
        ] {
            let mut these: Vec<&EtcdBackup> = backups
                .iter()
                .filter(|b| Kind::of(b) == kind && b.phase() == Some(phase))
                .filter(|b| b.metadata.deletion_timestamp.is_none())
                .collect();
            // Newest first; what is past `count` expires, unless in use.
            these.sort_by_key(|b| std::cmp::Reverse((taken_at(b), b.name_any())));
            out.extend(
                these
                    .into_iter()
                    .skip(count)
                    .filter(|b| !in_use.contains(&b.name_any()))
                    .map(|b| (taken_at(b), b.name_any())),
            );
        }
    }
    out.sort();
    out.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runc_etcd_api::EtcdBackupStatus;
    use serde_json::json;

    fn cluster() -> EtcdCluster {
        serde_json::from_value(json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "prod", "generation": 4},
            "spec": {"version": "3.5.16"},
            "status": {"convergedGeneration": 4}}))
        .unwrap()
    }

    fn backup(name: &str, hour: u32, phase: BackupPhase, kind: Kind) -> EtcdBackup {
        let labels = match kind.label() {
            Some(l) => json!({REASON_LABEL: l}),
            None => json!({}),
        };
        let when = format!("2026-01-01T{hour:02}:00:00Z");
        let mut b: EtcdBackup = serde_json::from_value(json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdBackup",
            "metadata": {"name": name, "namespace": "prod", "labels": labels, "creationTimestamp": when},
            "spec": {"clusterName": "main"}}))
        .unwrap();
        if kind == Kind::Scheduled {
            b.metadata.annotations = Some([(SCHEDULED_FOR.to_string(), when)].into());
        }
        b.status = Some(EtcdBackupStatus {
            phase: Some(phase),
            ..Default::default()
        });
        b
    }

    const KEEP: Keep = Keep {
        scheduled: 2,
        before_change: 1,
        on_demand: 1,
        failed: 1,
    };

    #[test]
    fn an_outage_longer_than_the_retention_keeps_the_good_backups() {
        // Two good backups, then the destination fails for five schedule periods. Before, the
        // newest two finished ones were kept (both failed) and every good one deleted.
        let mut all = vec![
            backup("b01", 1, BackupPhase::Succeeded, Kind::Scheduled),
            backup("b02", 2, BackupPhase::Succeeded, Kind::Scheduled),
        ];
        for h in 3..8 {
            all.push(backup(&format!("b0{h}"), h, BackupPhase::Failed, Kind::Scheduled));
        }
        // Both good ones stay, and the newest failure (what went wrong).
        assert_eq!(expired(&all, KEEP, &BTreeSet::new()), vec!["b03", "b04", "b05", "b06"]);
    }

    #[test]
    fn each_kind_keeps_its_own_count_and_its_newest_good_backup() {
        let all = vec![
            backup("s10", 10, BackupPhase::Succeeded, Kind::Scheduled),
            backup("s11", 11, BackupPhase::Succeeded, Kind::Scheduled),
            backup("s12", 12, BackupPhase::Succeeded, Kind::Scheduled),
            backup("s13", 13, BackupPhase::Running, Kind::Scheduled),
            backup("main-before-gen2", 8, BackupPhase::Succeeded, Kind::BeforeChange),
            backup("main-before-gen3", 9, BackupPhase::Succeeded, Kind::BeforeChange),
            backup("mine-1", 5, BackupPhase::Succeeded, Kind::OnDemand),
            backup("mine-2", 6, BackupPhase::Failed, Kind::OnDemand),
            backup("mine-3", 7, BackupPhase::Failed, Kind::OnDemand),
        ];
        let none = BTreeSet::new();
        assert_eq!(
            expired(&all, KEEP, &none),
            vec!["mine-2", "main-before-gen2", "s10"],
            "oldest first; the one still running is never counted or expired"
        );
        let keep_none = Keep {
            scheduled: 0,
            before_change: 0,
            on_demand: 0,
            failed: 0,
        };
        let gone = expired(&all, keep_none, &none);
        for newest in ["s12", "main-before-gen3", "mine-1"] {
            assert!(!gone.contains(&newest.to_string()), "{newest}: {gone:?}");
        }
        assert!(gone.contains(&"mine-3".to_string()), "no failure kept at 0: {gone:?}");
    }

    #[test]
    fn a_backup_a_restore_or_a_rebuild_reads_is_never_expired() {
        let all = vec![
            backup("s10", 10, BackupPhase::Succeeded, Kind::Scheduled),
            backup("s11", 11, BackupPhase::Succeeded, Kind::Scheduled),
            backup("s12", 12, BackupPhase::Succeeded, Kind::Scheduled),
            backup("main-before-gen3", 8, BackupPhase::Failed, Kind::BeforeChange),
            backup("main-before-gen4", 9, BackupPhase::Failed, Kind::BeforeChange),
        ];
        let keep = Keep {
            scheduled: 1,
            failed: 0,
            ..KEEP
        };
        let mut c = cluster();
        // A rebuild in progress reads s10.
        c.status.as_mut().unwrap().last_operation = Some(runc_etcd_api::Operation {
            state: OperationState::InProgress,
            backup: Some("s10".into()),
            ..runc_etcd_api::Operation::new(runc_etcd_api::OperationKind::RebuildFromBackup)
        });
        // Another cluster of the namespace is being restored from s11.
        let mut copy: EtcdCluster = serde_json::from_value(json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "copy", "namespace": "prod"},
            "spec": {"version": "3.5.16", "bootstrap": {"restore": {"backupName": "s11"}}}}))
        .unwrap();
        let used = in_use(&c, &[], std::slice::from_ref(&copy));
        assert_eq!(
            expired(&all, keep, &used),
            vec!["main-before-gen3"],
            "s10 and s11 are read, and generation 4's gate waits on its backup: {used:?}"
        );
        // Once the copy has converged and the rebuild is over, they go.
        copy.status = Some(runc_etcd_api::EtcdClusterStatus {
            converged_generation: Some(1),
            ..Default::default()
        });
        c.status.as_mut().unwrap().last_operation.as_mut().unwrap().state = OperationState::Succeeded;
        let used = in_use(&c, &[], std::slice::from_ref(&copy));
        assert_eq!(expired(&all, keep, &used), vec!["main-before-gen3", "s10", "s11"]);
        // A member seeded from a backup keeps it too.
        let used = in_use(&c, &["s10".to_string()], &[]);
        assert_eq!(expired(&all, keep, &used), vec!["main-before-gen3", "s11"]);
    }
}
