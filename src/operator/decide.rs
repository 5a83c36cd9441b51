//! Step 3 of a reconcile, pure: from what was observed, what this pass does — carry on the
//! recorded change, or choose the next one (a full database first, then the membership, then
//! upgrades and maintenance), the step the status reports, when to look again and the Events to
//! emit. No I/O: every rule here is unit-tested with plain values.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::Error;
use crate::operator::act::Outcome;
use crate::operator::backups::{self, Gate};
use crate::operator::evidence;
use crate::operator::observe::{self, View};
use crate::operator::plan::{self, Step};
use crate::operator::{children, disaster, maintenance, status, upgrade};
use runc_etcd_api::contract::{ClusterNames, RESTORE_ANNOTATION};
use runc_etcd_api::{EtcdCluster, EtcdMember, Operation, OperationKind, OperationState};

/// An Event to publish about the cluster (and the member it concerns).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub type_: EventType,
    pub reason: String,
    pub member: Option<String>,
    pub note: String,
}

impl Note {
    fn new(type_: EventType, reason: impl Into<String>, member: Option<&str>, note: impl Into<String>) -> Note {
        Note {
            type_,
            reason: reason.into(),
            member: member.map(str::to_string),
            note: note.into(),
        }
    }
}

/// What a pass does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A recorded change is unfinished: carry it on (`act`), then record how it ended
    /// ([`ended`]). Every change is idempotent, so this also resumes one a crashed controller
    /// left half-done.
    Resume(Operation),
    /// Anything else: the work to do now, the step the status reports, when to look again.
    Next {
        work: Work,
        step: Step,
        requeue: Duration,
        events: Vec<Note>,
    },
}

/// The one write a [`Decision::Next`] makes before the status.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    None,
    /// Record this change; the next pass (or the next leader) makes it.
    Record {
        op: Operation,
        /// A rebuild uses up its `restore-from-backup` request first: a crash in between asks
        /// the person again rather than rebuilding twice.
        clear_restore_request: bool,
    },
    /// Before an upgrade: have these members' nodes pull `target` (EtcdMember `nextImage`).
    PullFirst {
        target: String,
        members: Vec<String>,
    },
    /// Before a resize or upgrade: take this EtcdBackup.
    BackupFirst {
        name: String,
    },
}

/// The decision for `c` at `now`; `seed` picks the name of a member this pass would create.
pub fn next(c: &EtcdCluster, view: &View, now: Timestamp, seed: u64) -> Decision {
    let in_flight = c
        .status
        .as_ref()
        .and_then(|s| s.last_operation.clone())
        .filter(|op| op.state == OperationState::InProgress);
    if let Some(op) = in_flight {
        return Decision::Resume(op);
    }
    let hold = |reason: String| Decision::Next {
        work: Work::None,
        step: Step::Wait { reason },
        requeue: Duration::from_secs(30),
        events: vec![],
    };
    if let Some(reason) = upgrade_stopped(c) {
        return hold(reason);
    }
    choose(c, view, now, seed)
}

/// The next change (a full database first, then membership, then upgrades and maintenance).
fn choose(c: &EtcdCluster, view: &View, now: Timestamp, seed: u64) -> Decision {
    let nospace = view.etcd.as_ref().is_some_and(|e| !e.nospace.is_empty());
    let mut step = if nospace {
        // A full database refuses every write: answered before anything else.
        Step::RecoverSpace
    } else if view.etcd.is_none() && !view.members.is_empty() && !view.members.iter().any(ever_ran) {
        Step::Wait {
            reason: "waiting for the first member to start".into(),
        }
    } else {
        membership_step(c, view, now)
    };
    let mut work = Work::None;
    let mut events = vec![];
    if step == Step::Converged {
        (step, work) = upgrade_step(c, view);
    }
    if let Some(why) = backups::before_change(c, &step) {
        match backups::gate(c, view, why) {
            Gate::Passed => {}
            Gate::Take { name } => {
                events.push(Note::new(
                    EventType::Normal,
                    "BackupBeforeChange",
                    None,
                    format!("{name}, before the {why}"),
                ));
                step = Step::Wait {
                    reason: format!("taking backup {name} before the {why}"),
                };
                work = Work::BackupFirst { name };
            }
            Gate::Wait(reason) => step = Step::Wait { reason },
        }
    }
    if let Some(op) = operation(c, view, &step, now, seed) {
        let note = format!(
            "{} {} on node {}",
            op.kind,
            op.member.clone().unwrap_or_default(),
            op.node.clone().unwrap_or_default()
        );
        events.push(Note::new(
            EventType::Normal,
            format!("{}Started", op.kind),
            op.member.as_deref(),
            note,
        ));
        let clear_restore_request =
            matches!(step, Step::Rebuild { .. }) && c.annotations().contains_key(RESTORE_ANNOTATION);
        return Decision::Next {
            work: Work::Record {
                op,
                clear_restore_request,
            },
            step,
            requeue: Duration::ZERO,
            events,
        };
    }
    let requeue = match &step {
        // A sick member is looked at often enough to replace it on time.
        Step::Converged if view.etcd.as_ref().is_some_and(|e| e.healthy.len() < e.members.len()) => {
            Duration::from_secs(5)
        }
        // Often enough to answer a full database (NOSPACE) soon.
        Step::Converged => Duration::from_secs(15),
        // A problem with the spec or the nodes waits for a change (or a slow resync); anything
        // else is etcd or an agent catching up, worth a quick look.
        Step::Wait { reason } if let Some(problem) = status::spec_problem(reason) => {
            events.push(Note::new(EventType::Warning, problem, None, reason.clone()));
            Duration::from_secs(15)
        }
        _ => Duration::from_secs(1),
    };
    Decision::Next {
        work,
        step,
        requeue,
        events,
    }
}

/// How a resumed change ended: the operation to record (None while it is not done yet), the
/// step to report, when to look again, and the Event.
pub struct Ended {
    pub record: Option<Operation>,
    pub step: Step,
    pub requeue: Duration,
    pub events: Vec<Note>,
}

/// The end of a resumed change, from what `act` returned. A refusal or bad input fails the
/// change (recorded, with a Warning); any other error is "not yet", tried again in a second.
pub fn ended(mut op: Operation, outcome: Result<Outcome, Error>) -> Ended {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) if e.is_user_error() => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::NotYet(e.to_string()),
    };
    let (state, type_, msg) = match outcome {
        Outcome::NotYet(reason) => {
            return Ended {
                record: None,
                step: Step::Wait { reason },
                requeue: Duration::from_secs(1),
                events: vec![],
            };
        }
        Outcome::Done(msg) => (OperationState::Succeeded, EventType::Normal, msg),
        Outcome::Failed(msg) => (OperationState::Failed, EventType::Warning, msg),
    };
    op.state = state;
    op.message = Some(msg.clone());
    let note = Note::new(type_, format!("{}{state}", op.kind), op.member.as_deref(), msg);
    let reason = format!("{} {state}", op.kind);
    Ended {
        record: Some(op),
        step: Step::Wait { reason },
        requeue: Duration::from_millis(200),
        events: vec![note],
    }
}

/// The membership's next step: the planner's, except when quorum is lost (the quorum-loss
/// policy decides) and for the seed of a restored cluster (on its backup's node when the
/// backup is kept on a host).
fn membership_step(c: &EtcdCluster, view: &View, now: Timestamp) -> Step {
    let mut obs = observe::planner_input(c, view, now);
    let voters = obs.members.iter().filter(|m| m.voter).count();
    let healthy = obs.members.iter().filter(|m| m.voter && m.healthy).count();
    if voters > 0 && !plan::has_quorum(voters, healthy) && view.members.iter().any(ever_ran) {
        let names: Vec<&str> = obs
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.name.as_str())
            .collect();
        if !evidence::quorum_lost(&names, &view.said) {
            // The operator's own view is not evidence: a NetworkPolicy or a broken route would
            // otherwise make it rebuild a healthy cluster from a backup.
            return Step::Wait {
                reason: evidence::cannot_reach(healthy, voters),
            };
        }
        let since = c
            .status
            .as_ref()
            .and_then(|s| s.quorum_lost_since.as_ref())
            .map(|t| t.0);
        return disaster::quorum_lost(c, &view.backups, (healthy, voters), since, now);
    }
    if obs.members.is_empty()
        && let Some(name) = disaster::restore_source(c)
    {
        let eligible: Vec<&str> = obs
            .nodes
            .iter()
            .filter(|n| n.eligible)
            .map(|n| n.name.as_str())
            .collect();
        match disaster::seed_node(view.restore.as_ref(), &name, &eligible) {
            Ok(Some(node)) => obs.prefer_node = Some(node),
            Ok(None) => {}
            Err(reason) => return Step::Wait { reason },
        }
    }
    plan::next(&obs)
}

/// Once the membership has converged: the next step of a rolling upgrade, if one is due, or
/// else of maintenance; with the pulls an upgrade needs first.
fn upgrade_step(c: &EtcdCluster, view: &View) -> (Step, Work) {
    let target = children::image(c);
    let members = observe::upgrade_input(c, view);
    let step = match upgrade::next(&members, &target, &c.spec.version) {
        upgrade::Step::Done => {
            let m = &c.spec.maintenance;
            match maintenance::next(
                &observe::maintenance_input(c, view),
                m.defrag_threshold_percent,
                m.defrag_min_bytes,
            ) {
                maintenance::Step::None => Step::Converged,
                maintenance::Step::Defragment { member } => Step::Defragment { member },
            }
        }
        upgrade::Step::Refuse(why) => Step::Wait {
            reason: format!("upgrade refused: {why}"),
        },
        upgrade::Step::Wait(reason) => Step::Wait { reason },
        upgrade::Step::Prepare => {
            let behind = view
                .members
                .iter()
                .filter(|m| m.spec.image != target && m.spec.next_image.as_deref() != Some(target.as_str()))
                .map(|m| m.name_any())
                .collect();
            let reason = format!("pulling {target} on every member's node before the upgrade");
            return (
                Step::Wait { reason },
                Work::PullFirst {
                    target,
                    members: behind,
                },
            );
        }
        upgrade::Step::Upgrade { member } => Step::Upgrade { member },
    };
    (step, Work::None)
}

/// A member upgrade that failed for this very spec stops everything until the spec changes.
fn upgrade_stopped(c: &EtcdCluster) -> Option<String> {
    let op = c.status.as_ref()?.last_operation.as_ref()?;
    (op.kind == OperationKind::UpgradeMember
        && op.state == OperationState::Failed
        && op.generation == c.metadata.generation)
        .then(|| format!("upgrade stopped: {}", op.message.clone().unwrap_or_default()))
}

/// The change a step stands for, with the member it will create named now (so a resumed change
/// creates the same one).
fn operation(c: &EtcdCluster, view: &View, step: &Step, now: Timestamp, seed: u64) -> Option<Operation> {
    use OperationKind::*;
    let backup = match step {
        Step::Rebuild { backup } => Some(backup.clone()),
        Step::Bootstrap { .. } => disaster::restore_source(c),
        _ => None,
    };
    let (kind, member, node) = match step {
        Step::Bootstrap { node } => (BootstrapMember, new_member_name(c, view, seed), node.clone()),
        Step::AddLearner { node } => (AddLearner, new_member_name(c, view, seed), node.clone()),
        Step::Promote { member } => (PromoteMember, member.clone(), node_of(view, member)),
        Step::Remove { member } => (RemoveMember, member.clone(), node_of(view, member)),
        Step::Replace { member } => (ReplaceMember, member.clone(), node_of(view, member)),
        Step::Upgrade { member } => (UpgradeMember, member.clone(), node_of(view, member)),
        Step::Defragment { member } => (DefragmentMember, member.clone(), node_of(view, member)),
        Step::RecoverSpace => (RecoverSpace, String::new(), String::new()),
        Step::Rebuild { .. } => (RebuildFromBackup, String::new(), String::new()),
        Step::Wait { .. } | Step::Converged => return None,
    };
    Some(Operation {
        member: (!member.is_empty()).then_some(member),
        node: (!node.is_empty()).then_some(node),
        started_at: Some(Time(now)),
        generation: c.metadata.generation,
        backup,
        ..Operation::new(kind)
    })
}

/// Whether the member's agent ever saw etcd answer (it then has an etcd member ID).
pub fn ever_ran(m: &EtcdMember) -> bool {
    m.status.as_ref().is_some_and(|s| s.member_id.is_some())
}

fn node_of(view: &View, member: &str) -> String {
    view.members
        .iter()
        .find(|m| m.spec.member_name == member)
        .map(|m| m.spec.node_name.clone())
        .unwrap_or_default()
}

/// `<cluster>-<5 hex digits>` drawn from `seed`, not used by any member of the cluster.
fn new_member_name(c: &EtcdCluster, view: &View, seed: u64) -> String {
    use std::hash::{Hash, Hasher};
    (0u64..)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, i).hash(&mut h);
            format!("{}-{:05x}", c.name(), h.finish() & 0xfffff)
        })
        .find(|name| !view.members.iter().any(|m| m.spec.member_name == *name))
        .expect("an unused name among 2^20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use runc_etcd_api::EtcdClusterStatus;

    fn cluster() -> EtcdCluster {
        let mut c = EtcdCluster::new(
            "main",
            serde_json::from_value(serde_json::json!({"version": "3.5.16"})).unwrap(),
        );
        c.metadata.namespace = Some("prod".into());
        c
    }

    fn with_operation(mut c: EtcdCluster, op: Operation) -> EtcdCluster {
        c.status = Some(EtcdClusterStatus {
            last_operation: Some(op),
            ..Default::default()
        });
        c
    }

    #[test]
    fn a_failed_upgrade_stops_everything_until_the_spec_changes() {
        let mut c = cluster();
        c.metadata.generation = Some(4);
        let failed = |generation| Operation {
            state: OperationState::Failed,
            message: Some("main-a did not come back".into()),
            generation: Some(generation),
            ..Operation::new(OperationKind::UpgradeMember)
        };
        c = with_operation(c, failed(4));
        let why = upgrade_stopped(&c).expect("stopped");
        assert!(why.contains("main-a did not come back"), "{why}");
        assert!(status::spec_problem(&why) == Some("UpgradeFailed"));
        let Decision::Next { step, work, .. } = next(&c, &View::default(), Timestamp::now(), 1) else {
            panic!("not a resume")
        };
        assert_eq!((step, work), (Step::Wait { reason: why }, Work::None));
        c.metadata.generation = Some(5);
        assert!(
            upgrade_stopped(&c).is_none(),
            "a new spec goes on (e.g. back to the old version)"
        );
    }

    #[test]
    fn quorum_is_declared_lost_only_on_the_members_own_evidence() {
        use crate::operator::evidence::Said;
        let c = cluster();
        // The operator reaches one of three voters; every member ran.
        let mut view = crate::operator::testing::view_with_objects(3, 1);
        for m in &mut view.members {
            m.status = Some(runc_etcd_api::EtcdMemberStatus {
                member_id: Some("1".into()),
                ..Default::default()
            });
        }
        let lost = membership_step(&c, &view, Timestamp::now());
        assert!(
            matches!(&lost, Step::Wait { reason } if reason.starts_with("quorum lost")),
            "{lost:?}"
        );
        // Their agents say all three serve: the operator's view is not evidence.
        for said in view.said.values_mut() {
            *said = Said::Serving;
        }
        let step = membership_step(&c, &view, Timestamp::now());
        let Step::Wait { reason } = &step else {
            panic!("{step:?}")
        };
        assert_eq!(
            status::spec_problem(reason),
            Some("OperatorCannotReachMembers"),
            "{reason}"
        );
    }

    #[test]
    fn an_unfinished_change_is_resumed_before_anything_else() {
        let c = with_operation(cluster(), Operation::new(OperationKind::AddLearner));
        assert!(matches!(
            next(&c, &View::default(), Timestamp::now(), 1),
            Decision::Resume(op) if op.kind == OperationKind::AddLearner
        ));
    }

    #[test]
    fn a_new_change_is_recorded_with_its_member_named_and_an_event() {
        let c = cluster();
        let view = View {
            nodes: vec![observe::NodeInfo {
                name: "n1".into(),
                ip: Some("10.0.0.1".into()),
                eligible: true,
                ready: true,
            }],
            ..Default::default()
        };
        let Decision::Next {
            work,
            step,
            requeue,
            events,
        } = next(&c, &view, Timestamp::now(), 7)
        else {
            panic!("not a resume")
        };
        assert_eq!(step, Step::Bootstrap { node: "n1".into() });
        assert_eq!(requeue, Duration::ZERO);
        let Work::Record {
            op,
            clear_restore_request,
        } = work
        else {
            panic!("{work:?}")
        };
        assert!(!clear_restore_request);
        assert_eq!(
            (op.kind, op.state),
            (OperationKind::BootstrapMember, OperationState::InProgress)
        );
        let member = op.member.clone().unwrap();
        assert!(
            member.starts_with("main-") && member.len() == "main-".len() + 5,
            "{member}"
        );
        assert_eq!(op.node.as_deref(), Some("n1"));
        assert_eq!(events[0].reason, "BootstrapMemberStarted");
        // The same seed names the same member; the name never collides with an existing one.
        assert_eq!(new_member_name(&c, &view, 7), member);
    }

    #[test]
    fn an_ended_change_is_recorded_and_not_yet_is_not() {
        let op = Operation::new(OperationKind::PromoteMember);
        let done = ended(op.clone(), Ok(Outcome::Done("promoted".into())));
        let recorded = done.record.unwrap();
        assert_eq!(recorded.state, OperationState::Succeeded);
        assert_eq!(done.events[0].reason, "PromoteMemberSucceeded");
        let refused = ended(op.clone(), Err(Error::refused("would break quorum")));
        assert_eq!(refused.record.unwrap().state, OperationState::Failed);
        assert_eq!(refused.events[0].type_, EventType::Warning);
        let later = ended(op, Err(Error::transient("etcd", "no leader")));
        assert!(later.record.is_none() && later.events.is_empty());
        assert_eq!(
            later.step,
            Step::Wait {
                reason: "etcd: no leader".into()
            }
        );
    }
}
