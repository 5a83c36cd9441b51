//! The EtcdCluster status the controller reports, computed from what it observed and the step it
//! chose (pure). Conditions keep their lastTransitionTime while their status stays the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::operator::certs;
use crate::operator::children;
use crate::operator::evidence;
use crate::operator::observe::{self, View};
use crate::operator::plan::{self, Step};
use runc_etcd_api::{ClusterPhase, EtcdCluster, EtcdClusterStatus, MemberPhase, MemberRole, MemberStatus};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
/// The Degraded reason (and Warning Event) of certificates renewal has not reached in time.
pub const CERTIFICATES_EXPIRING: &str = "CertificatesExpiring";

/// The Progressing message of a paused cluster (`spec.paused`).
pub const PAUSED: &str =
    "paused (spec.paused is true): the operator and the agents change nothing until it is false; status still reports";

/// Why the cluster is not where the spec wants it, when the reason is the spec or the nodes
/// rather than a change in flight: the Degraded reason (and Event) for a wait.
pub fn spec_problem(reason: &str) -> Option<&'static str> {
    if reason.starts_with("fewer eligible nodes") || reason.starts_with("no eligible node") {
        Some("InsufficientNodes")
    } else if reason.starts_with("upgrade refused") {
        Some("UnsupportedUpgrade")
    } else if reason.starts_with("upgrade stopped") {
        Some("UpgradeFailed")
    } else if reason.starts_with("operator cannot reach members") {
        Some("OperatorCannotReachMembers")
    } else if reason.starts_with("quorum lost") {
        Some("QuorumLost")
    } else if reason.starts_with("restore:") {
        Some("RestoreNotPossible")
    } else if reason.starts_with("backup failed") {
        Some("BackupFailed")
    } else if reason.starts_with("agents cannot run") {
        Some("AgentsForbidden")
    } else {
        None
    }
}

fn members(c: &EtcdCluster, view: &View) -> Vec<MemberStatus> {
    let Some(etcd) = &view.etcd else {
        return view
            .members
            .iter()
            .map(|o| MemberStatus {
                name: o.spec.member_name.clone(),
                node: o.spec.node_name.clone(),
                peer_url: children::peer_url(c, &o.spec.ip),
                client_url: children::client_url(c, &o.spec.ip),
                healthy: false,
                ..Default::default()
            })
            .collect();
    };
    etcd.members
        .iter()
        .map(|m| {
            let obj = observe::object_of(c, &view.members, m);
            let status = etcd.healthy.get(&m.id);
            let role = if m.is_learner {
                MemberRole::Learner
            } else if m.id == etcd.leader {
                MemberRole::Leader
            } else {
                MemberRole::Follower
            };
            MemberStatus {
                name: obj
                    .map(|o| o.spec.member_name.clone())
                    .unwrap_or_else(|| observe::display_name(m)),
                node: obj.map(|o| o.spec.node_name.clone()).unwrap_or_default(),
                member_id: Some(format!("{:x}", m.id)),
                peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
                client_url: m.client_urls.first().cloned().unwrap_or_default(),
                version: status.map(|s| s.version.clone()),
                role: Some(role),
                healthy: status.is_some(),
                db_size_bytes: status.map(|s| s.db_size),
                unhealthy_since: None,
            }
        })
        .collect()
}

fn condition(prev: &[Condition], type_: &str, ok: bool, reason: &str, message: String, generation: i64) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// A pass that stopped before observing (a Secret the members depend on is gone): Degraded with
/// `reason`, phase Degraded; the other conditions and the members stay as last observed, so a
/// cluster the operator cannot reach is not reported lost.
pub fn blocked(c: &EtcdCluster, reason: &str, message: &str) -> serde_json::Value {
    let prev = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation.unwrap_or(0);
    let degraded = condition(
        &prev.conditions,
        DEGRADED,
        true,
        reason,
        message.to_string(),
        generation,
    );
    let conditions: Vec<Condition> = prev
        .conditions
        .iter()
        .filter(|x| x.type_ != DEGRADED)
        .cloned()
        .chain([degraded])
        .collect();
    serde_json::json!({"phase": ClusterPhase::Degraded, "conditions": conditions})
}

/// The members' health, counted once for the conditions and the phase.
struct Health<'a> {
    voters: usize,
    /// Healthy voters.
    ready: usize,
    quorum: bool,
    unhealthy: Vec<&'a str>,
    /// What an agent could not do (a port taken on its node, an image it cannot pull, …).
    failed: Vec<String>,
    /// Members whose data is gone from their hosts (their agents say DataLost).
    lost: Vec<String>,
    /// Members whose own view of the cluster disagrees with the others' (`agree`).
    diverged: Vec<String>,
    nospace: bool,
    /// Some member ran (a cluster that loses every answer then has lost quorum, it is not new).
    ran: bool,
    /// Too many voters are down by their own side's evidence (`evidence::quorum_lost`).
    lost_by_evidence: bool,
    /// Members whose installed certificates are late in their validity: renewal (due at two
    /// thirds) has not reached their hosts (`certs::overdue`).
    expiring: Vec<String>,
}

impl Health<'_> {
    /// Quorum lost: the operator does not see a quorum, and the members' own side agrees.
    fn quorum_lost(&self) -> bool {
        self.voters > 0 && !self.quorum && self.lost_by_evidence
    }

    /// The operator does not see a quorum, but the members' own side says a majority serves.
    fn unreached(&self) -> bool {
        self.voters > 0 && !self.quorum && !self.lost_by_evidence
    }
}

fn health<'a>(c: &EtcdCluster, view: &View, members: &'a [MemberStatus]) -> Health<'a> {
    let voters = members.iter().filter(|m| m.role != Some(MemberRole::Learner)).count();
    let ready = members
        .iter()
        .filter(|m| m.healthy && m.role != Some(MemberRole::Learner))
        .count();
    let reported = |phase: MemberPhase| {
        view.members
            .iter()
            .filter_map(|m| {
                let s = m.status.as_ref()?;
                (s.phase == Some(phase)).then(|| {
                    let why = s.message.clone().unwrap_or_default();
                    format!("{} on node {}: {why}", m.spec.member_name, m.spec.node_name)
                })
            })
            .collect::<Vec<_>>()
    };
    Health {
        voters,
        ready,
        quorum: plan::has_quorum(voters, ready),
        unhealthy: members
            .iter()
            .filter(|m| !m.healthy && !catching_up(c, m, k8s_openapi::jiff::Timestamp::now()))
            .map(|m| m.name.as_str())
            .collect(),
        failed: reported(MemberPhase::Failed),
        lost: reported(MemberPhase::DataLost),
        diverged: view.etcd.as_ref().map(|e| e.diverged.clone()).unwrap_or_default(),
        nospace: view.etcd.as_ref().is_some_and(|e| !e.nospace.is_empty()),
        ran: view
            .members
            .iter()
            .any(|m| m.status.as_ref().is_some_and(|s| s.member_id.is_some())),
        lost_by_evidence: {
            let voters: Vec<&str> = members
                .iter()
                .filter(|m| m.role != Some(MemberRole::Learner))
                .map(|m| m.name.as_str())
                .collect();
            evidence::quorum_lost(&voters, &view.said)
        },
        expiring: expiring(c, &view.members, chrono::Utc::now()),
    }
}

/// A learner not healthy yet, within the time it is given (`observe::learner_timeout`): a member
/// being added (its image pulled, the snapshot sent), which is progress, not degradation.
fn catching_up(c: &EtcdCluster, m: &MemberStatus, now: k8s_openapi::jiff::Timestamp) -> bool {
    m.role == Some(MemberRole::Learner)
        && m.unhealthy_since
            .as_ref()
            .is_none_or(|since| since.0 + observe::learner_timeout(c) > now)
}

/// The members whose installed certificates renewal should have replaced by `now`, each with
/// when it expires.
fn expiring(c: &EtcdCluster, members: &[runc_etcd_api::EtcdMember], now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let validity = c.spec.tls.validity();
    members
        .iter()
        .filter_map(|m| {
            let at = m.status.as_ref()?.certificate_not_after.as_deref()?;
            let at = chrono::DateTime::parse_from_rfc3339(at).ok()?.to_utc();
            certs::overdue(at, validity, now).then(|| {
                format!(
                    "{} on node {} (expires {})",
                    m.spec.member_name,
                    m.spec.node_name,
                    at.to_rfc3339()
                )
            })
        })
        .collect()
}

/// The members as etcd reports them, each sick one with the time it fell sick: the recovery
/// clock, kept across passes (and controller restarts) while it stays sick.
fn members_with_clock(c: &EtcdCluster, view: &View, prev: &EtcdClusterStatus) -> Vec<MemberStatus> {
    let mut members = members(c, view);
    for m in members.iter_mut().filter(|m| !m.healthy) {
        let before = prev.members.iter().find(|p| p.name == m.name);
        m.unhealthy_since = Some(
            before
                .and_then(|p| p.unhealthy_since.clone())
                .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
        );
    }
    members
}

/// Progressing: whether, why and what (the step being taken or waited for).
fn progress(step: &Step, ready: usize, size: usize) -> (bool, &'static str, String) {
    match step {
        Step::Converged => (false, "Converged", format!("{ready} of {size} members ready")),
        Step::Wait { reason } if reason == PAUSED => (false, "Paused", reason.clone()),
        Step::Wait { reason } => (true, "Waiting", reason.clone()),
        other => (true, "Changing", format!("{other:?}")),
    }
}

/// Degraded: whether, its reason (the worst problem first) and its message.
fn degraded(h: &Health, step: &Step) -> (bool, &'static str, String) {
    let problem = match step {
        Step::Wait { reason } => spec_problem(reason).map(|p| (p, reason.clone())),
        _ => None,
    };
    let on = problem.is_some()
        || h.nospace
        || !h.unhealthy.is_empty()
        || !h.failed.is_empty()
        || !h.lost.is_empty()
        || !h.diverged.is_empty()
        || h.quorum_lost()
        || h.unreached()
        || !h.expiring.is_empty();
    let reason = if h.quorum_lost() {
        "QuorumLost"
    } else if h.unreached() {
        "OperatorCannotReachMembers"
    } else if h.nospace {
        "NoSpace"
    } else if !h.diverged.is_empty() {
        "MemberDiverged"
    } else if !h.lost.is_empty() {
        "DataLost"
    } else if let Some((problem, _)) = &problem {
        problem
    } else if !h.failed.is_empty() {
        "MemberFailed"
    } else if !h.unhealthy.is_empty() {
        "MembersUnhealthy"
    } else if !h.expiring.is_empty() {
        CERTIFICATES_EXPIRING
    } else {
        "AllHealthy"
    };
    let message = if h.unreached() && !h.quorum_lost() {
        evidence::cannot_reach(h.ready, h.voters)
    } else if h.nospace {
        "the database reached its quota (NOSPACE): etcd refuses writes until space is recovered".into()
    } else if !h.diverged.is_empty() {
        format!("{} (counted as failed; replaced one at a time)", h.diverged.join("; "))
    } else if !h.lost.is_empty() {
        format!("{} (kept stopped; replaced one at a time)", h.lost.join("; "))
    } else if let Some((_, why)) = problem {
        why
    } else if !h.failed.is_empty() {
        h.failed.join("; ")
    } else if !h.unhealthy.is_empty() {
        format!("unhealthy: {}", h.unhealthy.join(", "))
    } else if !h.expiring.is_empty() {
        format!(
            "certificates not renewed in time: {}; the operator renews them in the member's Secret and its agent installs them: check the agent on that node and the operator's log",
            h.expiring.join("; ")
        )
    } else {
        "every member is healthy".into()
    };
    (on, reason, message)
}

fn never_converged(c: &EtcdCluster) -> bool {
    c.status.as_ref().is_none_or(|s| s.converged_generation.is_none())
}

fn phase(c: &EtcdCluster, view: &View, h: &Health, degraded: bool, progressing: bool) -> ClusterPhase {
    if c.metadata.deletion_timestamp.is_some() {
        ClusterPhase::Deleting
    } else if h.quorum_lost() && (view.etcd.is_some() || h.ran) {
        ClusterPhase::QuorumLost
    } else if c.spec.paused {
        ClusterPhase::Paused
    } else if h.ready == 0 || (progressing && !degraded && never_converged(c)) {
        // A new cluster growing to its size is being created, learners catching up included.
        ClusterPhase::Creating
    } else if degraded {
        ClusterPhase::Degraded
    } else if progressing {
        ClusterPhase::Scaling
    } else {
        ClusterPhase::Running
    }
}

/// BackupSucceeded, from the newest finished backup (absent until one finished).
fn backup_condition(prev: &[Condition], view: &View, generation: i64) -> Option<Condition> {
    let newest = view
        .backups
        .iter()
        .filter(|b| b.finished())
        .max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.clone()).map(|t| t.0))?;
    let ok = newest.succeeded();
    let why = newest
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    Some(condition(
        prev,
        BACKUP_SUCCEEDED,
        ok,
        if ok { "Succeeded" } else { "Failed" },
        format!("{}: {why}", newest.name_any()),
        generation,
    ))
}

/// The message of a Degraded condition that has just become CertificatesExpiring: the once
/// per episode a Warning Event says it (the condition keeps saying it while it lasts).
pub fn newly_expiring(c: &EtcdCluster, next: &EtcdClusterStatus) -> Option<String> {
    let expiring = |s: &EtcdClusterStatus| {
        s.conditions
            .iter()
            .find(|d| d.type_ == DEGRADED && d.reason == CERTIFICATES_EXPIRING)
            .map(|d| d.message.clone())
    };
    let before = c.status.as_ref().and_then(expiring);
    expiring(next).filter(|_| before.is_none())
}

/// The status after observing `view` and choosing `step`.
pub fn build(c: &EtcdCluster, view: &View, step: &Step) -> EtcdClusterStatus {
    let prev = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation.unwrap_or(0);
    let members = members_with_clock(c, view, &prev);
    let h = health(c, view, &members);
    let (progressing, progress_reason, progress_msg) = progress(step, h.ready, c.spec.size.max(1) as usize);
    let (is_degraded, degraded_reason, degraded_msg) = degraded(&h, step);
    let mut conditions = vec![
        condition(
            &prev.conditions,
            AVAILABLE,
            h.quorum || h.unreached(),
            if h.quorum {
                "Quorum"
            } else if h.unreached() {
                "QuorumByItsMembers"
            } else {
                "NoQuorum"
            },
            if h.unreached() {
                format!(
                    "{} of {} voting members reached by the operator; by their agents' reports a majority serves",
                    h.ready, h.voters
                )
            } else {
                format!("{} of {} voting members healthy", h.ready, h.voters)
            },
            generation,
        ),
        condition(
            &prev.conditions,
            PROGRESSING,
            progressing,
            progress_reason,
            progress_msg,
            generation,
        ),
        condition(
            &prev.conditions,
            DEGRADED,
            is_degraded,
            degraded_reason,
            degraded_msg,
            generation,
        ),
    ];
    conditions.extend(backup_condition(&prev.conditions, view, generation));
    // Quorum lost by a cluster that ran (not one still starting): the clock of the
    // RestoreFromBackup policy, kept across passes.
    let quorum_lost_since = (h.quorum_lost() && h.ran).then(|| {
        prev.quorum_lost_since
            .clone()
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()))
    });
    let versions: std::collections::BTreeSet<&str> = members.iter().filter_map(|m| m.version.as_deref()).collect();
    EtcdClusterStatus {
        phase: Some(phase(c, view, &h, is_degraded, progressing)),
        conditions,
        observed_generation: Some(generation),
        ready_members: h.ready as i32,
        client_endpoints: members
            .iter()
            .filter(|m| m.healthy && m.role != Some(MemberRole::Learner))
            .map(|m| m.client_url.clone())
            .collect(),
        current_version: (versions.len() == 1).then(|| versions.first().unwrap().to_string()),
        target_version: Some(c.spec.version.clone()),
        cluster_id: view
            .etcd
            .as_ref()
            .filter(|e| e.cluster_id != 0)
            .map(|e| format!("{:x}", e.cluster_id)),
        last_backup: crate::backup::newest_good(&view.backups, &c.name_any())
            .map(|b| b.name_any())
            .or(prev.last_backup),
        converged_generation: match step {
            Step::Converged => Some(generation),
            _ => prev.converged_generation,
        },
        quorum_lost_since,
        last_operation: prev.last_operation,
        ca_fingerprint: prev.ca_fingerprint,
        cluster_token: prev.cluster_token,
        certificates_not_after: certificates_not_after(&view.members),
        ca_rotation: prev.ca_rotation, // not patched by `report`: `rotation` writes it
        members,
    }
}

/// The earliest expiry the members' agents report for their installed certificates.
fn certificates_not_after(members: &[runc_etcd_api::EtcdMember]) -> Option<String> {
    members
        .iter()
        .filter_map(|m| m.status.as_ref()?.certificate_not_after.as_deref())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .min()
        .map(|t| t.to_utc().to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::testing::view;

    fn cluster() -> EtcdCluster {
        serde_saphyr::from_str(
            "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main, namespace: prod, generation: 4}\nspec: {size: 3, version: 3.5.16}\n",
        )
        .unwrap()
    }

    fn cond<'a>(s: &'a runc_etcd_api::EtcdClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_converged_healthy_cluster_is_running_and_available() {
        let s = build(&cluster(), &view(3, 3), &Step::Converged);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.ready_members, 3);
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, AVAILABLE).observed_generation, Some(4));
        assert_eq!(s.current_version.as_deref(), Some("3.5.16"));
        assert_eq!(s.cluster_id.as_deref(), Some("c1"));
        assert_eq!(s.members[0].role.as_deref(), Some("leader"));
        assert_eq!(s.client_endpoints.len(), 3);
    }

    #[test]
    fn too_few_nodes_is_degraded_but_available() {
        let step = Step::Wait {
            reason: "fewer eligible nodes than size: 3 members wanted, 2 eligible nodes".into(),
        };
        let s = build(&cluster(), &view(2, 2), &step);
        assert_eq!(cond(&s, DEGRADED).reason, "InsufficientNodes");
        assert!(cond(&s, DEGRADED).message.contains("2 eligible nodes"));
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn what_an_agent_could_not_do_is_reported() {
        let c = cluster();
        let mut v = view(1, 1);
        let mut m = runc_etcd_api::EtcdMember::new(
            "main-a",
            serde_json::from_value(serde_json::json!({
                "cluster": "main", "memberName": "main-a", "nodeName": "n2", "ip": "10.0.0.2",
                "clientPort": 2379, "peerPort": 2380, "initialCluster": [], "initialClusterState": "existing",
                "image": "etcd:v3.5.16"}))
            .unwrap(),
        );
        m.status = Some(runc_etcd_api::EtcdMemberStatus {
            phase: Some(MemberPhase::Failed),
            message: Some("10.0.0.2:2379 is already in use".into()),
            ..Default::default()
        });
        v.members.push(m);
        let s = build(
            &c,
            &v,
            &Step::Wait {
                reason: "learner main-a is catching up".into(),
            },
        );
        assert_eq!(cond(&s, DEGRADED).reason, "MemberFailed");
        assert!(
            cond(&s, DEGRADED)
                .message
                .contains("main-a on node n2: 10.0.0.2:2379 is already in use")
        );
    }

    #[test]
    fn certificates_renewal_has_not_reached_are_warned_of_ahead_of_expiry() {
        let mut c = cluster();
        c.spec.tls.certificate_validity = "600m".into();
        let installed = |v: &mut View, id: usize, left: chrono::Duration| {
            v.members[id].status = Some(runc_etcd_api::EtcdMemberStatus {
                certificate_not_after: Some((chrono::Utc::now() + left).to_rfc3339()),
                ..Default::default()
            });
        };
        let mut v = crate::operator::testing::view_with_objects(3, 3);
        for id in 0..3 {
            installed(&mut v, id, chrono::Duration::minutes(300));
        }
        let s = build(&c, &v, &Step::Converged);
        assert_eq!(cond(&s, DEGRADED).status, "False", "renewal is due, not yet late");
        assert!(newly_expiring(&c, &s).is_none());

        // m2's renewal has not reached it with a sixth of its validity (100m) left
        installed(&mut v, 1, chrono::Duration::minutes(90));
        let s = build(&c, &v, &Step::Converged);
        let d = cond(&s, DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", CERTIFICATES_EXPIRING));
        assert!(d.message.contains("m2 on node n2 (expires "), "{}", d.message);
        assert!(d.message.contains("check the agent on that node"), "{}", d.message);
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(s.certificates_not_after.as_deref().map(|t| t < "9"), Some(true));
        let warning = newly_expiring(&c, &s).expect("a Warning Event when it starts");
        assert_eq!(warning, d.message);
        c.status = Some(s.clone());
        assert!(
            newly_expiring(&c, &build(&c, &v, &Step::Converged)).is_none(),
            "once per episode"
        );

        // a member that is down outranks it
        let mut down = v.clone();
        down.etcd.as_mut().unwrap().healthy.clear();
        assert_ne!(
            cond(&build(&c, &down, &Step::Converged), DEGRADED).reason,
            CERTIFICATES_EXPIRING
        );
    }

    #[test]
    fn a_learner_catching_up_is_progress_not_degradation() {
        let c = cluster();
        // a new cluster: two voters, the third joining as a learner that is not healthy yet
        let mut v = view(3, 2);
        v.etcd.as_mut().unwrap().members[2].is_learner = true;
        let step = Step::Wait {
            reason: "learner m3 is catching up".into(),
        };
        let s = build(&c, &v, &step);
        assert_eq!(cond(&s, DEGRADED).status, "False", "{:?}", cond(&s, DEGRADED));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(
            s.phase.as_deref(),
            Some("Creating"),
            "a cluster that never converged is being created"
        );

        // one that ran before is growing, not being created
        let mut grown = c.clone();
        grown.status = Some(EtcdClusterStatus {
            converged_generation: Some(3),
            ..Default::default()
        });
        assert_eq!(build(&grown, &v, &step).phase.as_deref(), Some("Scaling"));

        // past the time a learner is given, it is a problem again
        let mut late = c.clone();
        late.status = Some(EtcdClusterStatus {
            members: vec![MemberStatus {
                name: "m3".into(),
                unhealthy_since: Some(Time(
                    k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_mins(6),
                )),
                ..Default::default()
            }],
            ..Default::default()
        });
        let s = build(&late, &v, &step);
        assert_eq!(cond(&s, DEGRADED).reason, "MembersUnhealthy");
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn a_paused_cluster_says_so_and_still_reports_health() {
        let mut c = cluster();
        c.spec.paused = true;
        let paused = Step::Wait { reason: PAUSED.into() };
        let s = build(&c, &view(3, 2), &paused);
        assert_eq!(s.phase.as_deref(), Some("Paused"));
        let p = cond(&s, PROGRESSING);
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("False", "Paused"));
        assert!(p.message.contains("spec.paused"));
        assert_eq!(cond(&s, DEGRADED).reason, "MembersUnhealthy");
        assert_eq!(
            build(&c, &view(3, 1), &paused).phase.as_deref(),
            Some("QuorumLost"),
            "a lost quorum outranks it"
        );
    }

    #[test]
    fn lost_quorum_is_reported() {
        let s = build(
            &cluster(),
            &view(3, 1),
            &Step::Wait {
                reason: "quorum lost".into(),
            },
        );
        assert_eq!(s.phase.as_deref(), Some("QuorumLost"));
        assert_eq!(cond(&s, AVAILABLE).status, "False");
        assert_eq!(cond(&s, DEGRADED).reason, "QuorumLost");
        assert!(s.current_version.is_some(), "one member still reports its version");
    }

    #[test]
    fn members_the_operator_cannot_reach_but_whose_agents_say_serve_are_not_lost() {
        let mut v = view(3, 1);
        for said in v.said.values_mut() {
            *said = crate::operator::evidence::Said::Serving;
        }
        let s = build(&cluster(), &v, &Step::Converged);
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, DEGRADED).reason, "OperatorCannotReachMembers");
        assert!(cond(&s, DEGRADED).message.contains("NetworkPolicy"));
        assert_eq!(
            (cond(&s, AVAILABLE).status.as_str(), cond(&s, AVAILABLE).reason.as_str()),
            ("True", "QuorumByItsMembers")
        );
        assert!(s.quorum_lost_since.is_none(), "no clock towards a rebuild");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_it_holds() {
        let mut c = cluster();
        let first = build(&c, &view(3, 3), &Step::Converged);
        let since = cond(&first, AVAILABLE).last_transition_time.clone();
        c.status = Some(first);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = build(&c, &view(3, 3), &Step::Converged);
        assert_eq!(cond(&again, AVAILABLE).last_transition_time, since);
        let lost = build(&c, &view(3, 1), &Step::Converged);
        assert_ne!(cond(&lost, AVAILABLE).last_transition_time, since);
    }
}
