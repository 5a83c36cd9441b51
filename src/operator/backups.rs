//! Backups from the controller's side: it picks the node whose agent takes each backup (a healthy
//! member's, followers before the leader) and writes the destination into its status, creates
//! scheduled backups (`spec.backup.schedule`) and deletes the oldest past `retention`, takes one
//! before every resize and upgrade, and deletes S3 snapshots of deleted EtcdBackups. The agents
//! stream and store the snapshots (`agent::backup`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use crate::backup::{self, Bucket};
use crate::error::{Error, Result};
use crate::operator::context::Ctx;
use crate::operator::observe::View;
use crate::operator::plan::Step;
use crate::operator::retention::{self, Keep, Kind};
use runc_etcd_api::contract::{BACKUP_FINALIZER, CLUSTER_LABEL, NODE_LABEL, node_label};
use runc_etcd_api::objects::create_or_keep;
use runc_etcd_api::objects::finalizers_patch;
use runc_etcd_api::{BackupPhase, EtcdBackup, EtcdBackupSpec, EtcdBackupStatus, EtcdCluster};

/// Why a backup was made: scheduled, before-change (or absent: on demand by a user).
pub const REASON_LABEL: &str = "runc-etcd.io/backup-reason";
/// The schedule's fire time a scheduled backup stands for (RFC 3339).
pub const SCHEDULED_FOR: &str = "runc-etcd.io/scheduled-for";

/// A cron expression (5 fields, or 6 with leading seconds), UTC.
pub fn parse_schedule(s: &str) -> std::result::Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(s)
        .map_err(|e| format!("spec.backup.schedule {s:?} is not a cron expression: {e}"))
}

/// The schedule's state: the fire time a backup is due for now (if any), and when to look next.
pub fn due(
    cron: &croner::Cron,
    last: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let base = last.unwrap_or(since);
    let Ok(next) = cron.find_next_occurrence(&base, false) else {
        return (None, None);
    };
    if next > now {
        return (None, Some(next));
    }
    // Missed occurrences (the controller was down) make one backup, for the latest of them.
    let mut fire = next;
    while let Ok(n) = cron.find_next_occurrence(&fire, false) {
        if n > now {
            return (Some(fire), Some(n));
        }
        fire = n;
    }
    (Some(fire), None)
}

/// The healthy voters a backup can be taken from, as (is leader, member, node): a follower
/// sorts before the leader (a snapshot loads the member that sends it).
fn sources(view: &View) -> Vec<(bool, String, String)> {
    let Some(etcd) = view.etcd.as_ref() else {
        return Vec::new();
    };
    let mut all: Vec<_> = view
        .members
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter_map(|o| {
            let m = etcd
                .members
                .iter()
                .find(|m| m.name == o.spec.member_name && !m.is_learner && etcd.healthy.contains_key(&m.id))?;
            Some((
                m.id == etcd.leader,
                o.spec.member_name.clone(),
                o.spec.node_name.clone(),
            ))
        })
        .collect();
    all.sort();
    all
}

/// The member and node a backup should (now) be taken on, when that changes: a new backup goes
/// to the first of `sources`; a Pending one whose member is no longer a healthy voter (its host lost,
/// the member replaced) moves, since no agent may ever come for it. One that is Running or
/// finished stays where it is.
pub fn assignment(b: &EtcdBackup, view: &View) -> Option<(String, String)> {
    if b.finished() || b.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = b.status.clone().unwrap_or_default();
    let sources = sources(view);
    if status.node_name.is_some() {
        let pending = status.phase.is_none_or(|p| p == BackupPhase::Pending);
        let source_left = !sources.iter().any(|(_, m, _)| Some(m) == status.member.as_ref());
        if !(pending && source_left) {
            return None;
        }
    }
    sources.into_iter().next().map(|(_, member, node)| (member, node))
}

/// How long a Running backup may go on once its member is no longer a healthy voter, before it
/// is given up as Failed: its host was lost mid-snapshot, and no agent will ever finish it.
const ABANDONED_AFTER: Duration = Duration::from_secs(300);

/// Whether a Running backup is to be given up (see `ABANDONED_AFTER`).
pub fn abandoned(b: &EtcdBackup, view: &View, now: DateTime<Utc>) -> bool {
    if b.phase() != Some(BackupPhase::Running) || b.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let status = b.status.clone().unwrap_or_default();
    let source_left = !sources(view).iter().any(|(_, m, _)| Some(m) == status.member.as_ref());
    let started = status
        .start_time
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    source_left && started.is_some_and(|t| (now - t).to_std().is_ok_and(|d| d > ABANDONED_AFTER))
}

/// Whether `step` changes a cluster that had converged on an earlier spec (a resize or an
/// upgrade, not its first build or a member replacement): such a change waits for a backup.
pub fn before_change(c: &EtcdCluster, step: &Step) -> Option<&'static str> {
    let converged = c.status.as_ref()?.converged_generation?;
    if Some(converged) >= c.metadata.generation {
        return None;
    }
    match step {
        Step::AddLearner { .. } | Step::Remove { .. } => Some("resize"),
        Step::Upgrade { .. } => Some("upgrade"),
        _ => None,
    }
}

fn new_backup(c: &EtcdCluster, name: &str, kind: Kind, scheduled: Option<DateTime<Utc>>) -> EtcdBackup {
    let mut b = EtcdBackup::new(
        name,
        EtcdBackupSpec {
            cluster_name: c.name_any(),
        },
    );
    b.metadata.namespace = c.namespace();
    b.metadata.labels = kind
        .label()
        .map(|reason| [(REASON_LABEL.to_string(), reason.to_string())].into());
    if let Some(at) = scheduled {
        b.metadata.annotations = Some([(SCHEDULED_FOR.to_string(), at.to_rfc3339())].into());
    }
    b
}

/// Where the backup before a resize or upgrade stands (one per spec generation).
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// It succeeded: the change may go on.
    Passed,
    /// It does not exist yet: take it (`take_before_change`).
    Take { name: String },
    /// It is being taken, or failed: wait, for this reason.
    Wait(String),
}

pub(super) fn before_change_name(c: &EtcdCluster) -> String {
    format!("{}-before-gen{}", c.name_any(), c.metadata.generation.unwrap_or(0))
}

/// The gate before a resize or upgrade (pure).
pub fn gate(c: &EtcdCluster, view: &View, why: &str) -> Gate {
    let name = before_change_name(c);
    let Some(b) = view.backups.iter().find(|b| b.name_any() == name) else {
        return Gate::Take { name };
    };
    match b.phase() {
        Some(BackupPhase::Succeeded) => Gate::Passed,
        Some(BackupPhase::Failed) => Gate::Wait(format!(
            "backup failed: {name} (before the {why}): {}; fix the destination, or delete EtcdBackup {name} to try again",
            b.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
        )),
        _ => Gate::Wait(format!("taking backup {name} before the {why}")),
    }
}

/// Creates the backup a gate asked for (kept if it exists).
pub async fn take_before_change(c: &EtcdCluster, ctx: &Ctx, name: &str) -> Result<()> {
    create_or_keep(&ctx.api(c), &new_backup(c, name, Kind::BeforeChange, None)).await?;
    Ok(())
}

/// Assigns backups to a node, keeps the schedule and retention. Returns when to look again.
pub async fn tend(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<Option<Duration>> {
    let api: Api<EtcdBackup> = ctx.api(c);
    for b in &view.backups {
        if abandoned(b, view, Utc::now()) {
            give_up(c, ctx, &api, b).await?;
        } else if let Some(node) = place(c, ctx, &api, b, view).await? {
            label(c, &api, b, &node).await?;
        }
    }

    let Some(spec) = &c.spec.backup else {
        return Ok(None);
    };
    expire(c, ctx, view, &api, Keep::of(spec)).await?;
    let Some(schedule) = &spec.schedule else {
        return Ok(None);
    };
    let cron = parse_schedule(schedule).map_err(|e| {
        Error::invalid(
            "spec.backup.schedule",
            e,
            "use a cron expression such as \"0 */6 * * *\"",
        )
    })?;
    let last = view
        .backups
        .iter()
        .filter(|b| Kind::of(b) == Kind::Scheduled)
        .filter_map(retention::taken_at)
        .max();
    let since = c
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or_else(Utc::now);
    let now = Utc::now();
    let (fire, next) = due(&cron, last, since, now);
    if let Some(at) = fire {
        let name = format!("{}-{}", c.name_any(), at.format("%Y%m%d-%H%M%S"));
        create_or_keep(&api, &new_backup(c, &name, Kind::Scheduled, Some(at))).await?;
        ctx.event(c, EventType::Normal, "BackupScheduled", None, name).await;
    }
    Ok(next.map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(50)))
}

/// Deletes the backups past retention (`retention::expired`), each named in an Event. The
/// namespace's clusters are read only when something would expire: one being restored from a
/// backup of this cluster keeps it.
async fn expire(c: &EtcdCluster, ctx: &Ctx, view: &View, api: &Api<EtcdBackup>, keep: Keep) -> Result<()> {
    let seeds: Vec<String> = view
        .members
        .iter()
        .filter_map(|m| m.spec.restore_from.clone())
        .collect();
    let candidates = retention::expired(&view.backups, keep, &retention::in_use(c, &seeds, &[]));
    if candidates.is_empty() {
        return Ok(());
    }
    let others = ctx.api::<EtcdCluster>(c).list(&Default::default()).await?.items;
    let used = retention::in_use(c, &seeds, &others);
    for name in candidates.into_iter().filter(|n| !used.contains(n)) {
        api.delete(&name, &DeleteParams::default()).await?;
        let kind = view.backups.iter().find(|b| b.name_any() == name).map(Kind::of);
        let kind = kind.and_then(Kind::label).unwrap_or("on-demand");
        let note = format!("{name}: past the retention of {kind} backups (spec.backup)");
        ctx.event(c, EventType::Normal, "BackupExpired", None, note).await;
    }
    Ok(())
}

/// Marks an abandoned backup Failed, saying why.
async fn give_up(c: &EtcdCluster, ctx: &Ctx, api: &Api<EtcdBackup>, b: &EtcdBackup) -> Result<()> {
    let status = b.status.clone().unwrap_or_default();
    let member = status.member.clone().unwrap_or_default();
    let why = format!(
        "{member} stopped being a healthy voter while this backup ran, and did not come back within {}s (its host lost?); delete it to take another",
        ABANDONED_AFTER.as_secs()
    );
    let failed = EtcdBackupStatus {
        phase: Some(BackupPhase::Failed),
        completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
        message: Some(why.clone()),
        ..status
    };
    if backup::write_status_if_unchanged(api, b, &failed).await? {
        let note = format!("{}: {why}", b.name_any());
        ctx.event(c, EventType::Warning, "BackupAbandoned", None, note).await;
    }
    Ok(())
}

/// Assigns or moves the backup when `assignment` says so. Returns the node it is on (None while
/// it has none, or is finished or going away).
async fn place(
    c: &EtcdCluster,
    ctx: &Ctx,
    api: &Api<EtcdBackup>,
    b: &EtcdBackup,
    view: &View,
) -> Result<Option<String>> {
    let status = b.status.clone().unwrap_or_default();
    let Some((member, node)) = assignment(b, view) else {
        let current = !b.finished() && b.metadata.deletion_timestamp.is_none();
        return Ok(status.node_name.filter(|_| current));
    };
    if !assign(api, b, c, &member, &node).await? {
        return Ok(None); // its agent started it meanwhile: it stays there
    }
    if let (Some(was), Some(from)) = (&status.node_name, &status.member) {
        let note = format!(
            "{}: {from} on {was} is not a healthy voter; {member} on {node} takes it",
            b.name_any()
        );
        ctx.event(c, EventType::Normal, "BackupMoved", None, note).await;
    }
    Ok(Some(node))
}

/// The node's agent finds the backup by label; the finalizer lets the snapshot be deleted with
/// it. Written after the status (a crash in between is mended on the next pass).
async fn label(c: &EtcdCluster, api: &Api<EtcdBackup>, b: &EtcdBackup, node: &str) -> Result<()> {
    let has_finalizer = b.finalizers().iter().any(|f| f == BACKUP_FINALIZER);
    if b.labels().get(NODE_LABEL) == Some(&node_label(node)) && has_finalizer {
        return Ok(());
    }
    let mut labels = b.labels().clone();
    labels.insert(CLUSTER_LABEL.into(), c.name_any());
    labels.insert(NODE_LABEL.into(), node_label(node));
    let mut finalizers = b.finalizers().to_vec();
    if !has_finalizer {
        finalizers.push(BACKUP_FINALIZER.into());
    }
    let meta = json!({"metadata": {"labels": labels, "finalizers": finalizers}});
    api.patch(&b.name_any(), &PatchParams::default(), &Patch::Merge(meta))
        .await?;
    Ok(())
}

/// Writes the backup's node, member and destination into its status, if it is still as this
/// pass saw it: an agent that started it meanwhile keeps it. Returns whether it was written.
async fn assign(api: &Api<EtcdBackup>, b: &EtcdBackup, c: &EtcdCluster, member: &str, node: &str) -> Result<bool> {
    let status = EtcdBackupStatus {
        phase: Some(BackupPhase::Pending),
        node_name: Some(node.into()),
        member: Some(member.into()),
        destination: Some(backup::destination(c.spec.backup.as_ref())),
        message: Some(format!("the agent on node {node} takes it from {member}")),
        ..Default::default()
    };
    backup::write_status_if_unchanged(api, b, &status).await
}

/// Deleted EtcdBackups: the controller deletes S3 snapshots itself; a host-folder snapshot is
/// the agent's (on the node that keeps it), unless no agent will ever come (the cluster or the
/// node is gone): then the object goes and an Event says where the files stay.
#[tracing::instrument(skip_all, fields(backup = %b.name_any(), cluster = %b.spec.cluster_name, namespace = %b.namespace().unwrap_or_default()))]
pub async fn finalize(b: Arc<EtcdBackup>, ctx: Arc<Ctx>) -> Result<Action> {
    if b.metadata.deletion_timestamp.is_none() || !b.finalizers().iter().any(|f| f == BACKUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = b.namespace().unwrap_or_default();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let status = b.status.clone().unwrap_or_default();
    let dest = status.destination.clone().unwrap_or(runc_etcd_api::BackupDestination {
        s3: None,
        host_path: None,
    });
    match (&dest.s3, &status.location) {
        (Some(s3), Some(location)) => {
            let creds = backup::read_credentials(&ctx.client, &ns, &s3.credentials_secret).await?;
            let bucket = Bucket::open(s3, &creds)?;
            bucket.delete(bucket.key_of(location)?).await?;
            tracing::info!("backup {}: deleted {location}", b.name_any());
        }
        (None, Some(location)) => {
            let clusters: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
            let cluster = clusters.get_opt(&b.spec.cluster_name).await?;
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
            let node = match &status.node_name {
                Some(n) => nodes.get_opt(n).await?,
                None => None,
            };
            let agent_comes = cluster.is_some_and(|c| c.metadata.deletion_timestamp.is_none()) && node.is_some();
            if agent_comes {
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            tracing::warn!(
                "backup {}: no agent will delete {location} on node {:?}; the file stays there",
                b.name_any(),
                status.node_name
            );
        }
        _ => {} // never stored
    }
    let patch = finalizers_patch(&*b, None, Some(BACKUP_FINALIZER));
    api.patch(&b.name_any(), &PatchParams::default(), &patch).await?;
    Ok(Action::await_change())
}

pub fn finalize_error(b: Arc<EtcdBackup>, e: &Error, ctx: Arc<Ctx>) -> Action {
    let _span =
        tracing::warn_span!("backup", backup = %b.name_any(), namespace = %b.namespace().unwrap_or_default()).entered();
    ctx.retries.failed(&format!("backup:{}", crate::retry::key(&*b)), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_take_five_fields_or_six_with_seconds() {
        assert!(parse_schedule("0 */6 * * *").is_ok());
        assert!(parse_schedule("*/15 * * * * *").is_ok());
        let e = parse_schedule("every hour").unwrap_err();
        assert!(e.contains("spec.backup.schedule"), "{e}");
    }

    #[test]
    fn a_due_backup_is_made_once_for_the_latest_missed_time() {
        let cron = parse_schedule("0 * * * *").unwrap();
        let created = at("2026-01-01T10:30:00Z");
        // Not yet due: look again at 11:00.
        let (fire, next) = due(&cron, None, created, at("2026-01-01T10:59:00Z"));
        assert_eq!((fire, next), (None, Some(at("2026-01-01T11:00:00Z"))));
        // Due at 11:00.
        let (fire, next) = due(&cron, None, created, at("2026-01-01T11:00:05Z"));
        assert_eq!(fire, Some(at("2026-01-01T11:00:00Z")));
        assert_eq!(next, Some(at("2026-01-01T12:00:00Z")));
        // Made at 11:00; the controller was down until 14:20: one backup, for 14:00.
        let (fire, _) = due(
            &cron,
            Some(at("2026-01-01T11:00:00Z")),
            created,
            at("2026-01-01T14:20:00Z"),
        );
        assert_eq!(fire, Some(at("2026-01-01T14:00:00Z")));
        // And once 14:00 is made, nothing until 15:00.
        let (fire, next) = due(
            &cron,
            Some(at("2026-01-01T14:00:00Z")),
            created,
            at("2026-01-01T14:20:00Z"),
        );
        assert_eq!((fire, next), (None, Some(at("2026-01-01T15:00:00Z"))));
    }

    fn backup(name: &str, hour: u32, phase: BackupPhase, scheduled: bool) -> EtcdBackup {
        let c: EtcdCluster = serde_json::from_value(json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "prod"}, "spec": {"version": "3.5.16"}}))
        .unwrap();
        let when = at(&format!("2026-01-01T{hour:02}:00:00Z"));
        let kind = if scheduled { Kind::Scheduled } else { Kind::BeforeChange };
        let mut b = new_backup(&c, name, kind, scheduled.then_some(when));
        b.status = Some(EtcdBackupStatus {
            phase: Some(phase),
            ..Default::default()
        });
        b
    }

    #[test]
    fn a_backup_goes_to_a_healthy_follower_and_moves_only_while_pending() {
        use crate::operator::testing::view_with_objects;
        // m1 leads; m2 and m3 answer: a new backup goes to a follower.
        let all_up = view_with_objects(3, 3);
        let mut b = backup("b", 10, BackupPhase::Pending, false);
        b.status = None;
        assert_eq!(assignment(&b, &all_up), Some(("m2".into(), "n2".into())));
        // Assigned to m2, which still answers: it stays.
        b.status = Some(EtcdBackupStatus {
            phase: Some(BackupPhase::Pending),
            node_name: Some("n2".into()),
            member: Some("m2".into()),
            ..Default::default()
        });
        assert_eq!(assignment(&b, &all_up), None);
        // m2 and m3 stop answering (m3's host is lost): it moves to the one left, the leader.
        let only_leader = view_with_objects(3, 1);
        assert_eq!(assignment(&b, &only_leader), Some(("m1".into(), "n1".into())));
        // m2's EtcdMember is being deleted (replaced): it moves too.
        let mut replacing = view_with_objects(3, 3);
        replacing.members[1].metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_eq!(assignment(&b, &replacing), Some(("m3".into(), "n3".into())));
        // Once its agent has started it, or it is done, it stays whatever happens.
        for phase in [BackupPhase::Running, BackupPhase::Succeeded, BackupPhase::Failed] {
            b.status.as_mut().unwrap().phase = Some(phase);
            assert_eq!(assignment(&b, &only_leader), None, "{phase}");
        }
        // Running on a member that left: given up only after ABANDONED_AFTER.
        let started = |mins: i64| {
            let t = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_mins(mins);
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t))
        };
        b.status.as_mut().unwrap().phase = Some(BackupPhase::Running);
        b.status.as_mut().unwrap().start_time = started(6);
        assert!(abandoned(&b, &only_leader, Utc::now()));
        assert!(!abandoned(&b, &all_up, Utc::now()), "its member still answers");
        b.status.as_mut().unwrap().start_time = started(1);
        assert!(!abandoned(&b, &only_leader, Utc::now()), "not for long yet");
        // Nobody answers: nothing is assigned.
        let mut dark = view_with_objects(3, 0);
        dark.etcd = None;
        b.status = None;
        assert_eq!(assignment(&b, &dark), None);
    }

    #[test]
    fn only_a_resize_or_upgrade_of_a_converged_cluster_waits_for_a_backup() {
        let mut c: EtcdCluster = serde_json::from_value(json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "prod", "generation": 3}, "spec": {"version": "3.5.16"}}))
        .unwrap();
        let grow = Step::AddLearner { node: "n4".into() };
        assert_eq!(before_change(&c, &grow), None, "never converged: its first build");
        c.status = Some(runc_etcd_api::EtcdClusterStatus {
            converged_generation: Some(3),
            ..Default::default()
        });
        assert_eq!(before_change(&c, &grow), None, "same spec: a replacement");
        c.status.as_mut().unwrap().converged_generation = Some(2);
        assert_eq!(before_change(&c, &grow), Some("resize"));
        let up = Step::Upgrade { member: "m1".into() };
        assert_eq!(before_change(&c, &up), Some("upgrade"));
        let promote = Step::Promote { member: "m1".into() };
        assert_eq!(before_change(&c, &promote), None);
    }
}
