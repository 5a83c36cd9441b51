//! The reconcile pipeline for one EtcdCluster:
//!
//! 1. deleting? retire every member through its agent, then the cluster's objects (finalizer);
//! 2. ensure the cluster's objects: finalizer, TLS Secrets, agent DaemonSet, client Service;
//! 3. observe: EtcdMembers, nodes, etcd's view;
//! 4. a change recorded in `status.lastOperation` and not finished is carried on (every change is
//!    idempotent, so this also resumes one a crashed controller left half-done);
//! 5. otherwise plan (pure): the membership (`plan::next`) and, once it has converged, a rolling
//!    upgrade (`upgrade::next`); a change is recorded in status *before* it is made, and the next
//!    pass makes it (`act`);
//! 6. write status (pure, `status::build`), the EndpointSlice, and an Event per step.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::error::{Error, Result};
use crate::operator::act::{Outcome, act};
use crate::operator::children::{self, AgentImage, MANAGER};
use crate::operator::observe::{self, View};
use crate::operator::plan::{self, Step};
use crate::operator::{backups, disaster, maintenance, status, upgrade};
use runc_etcd_api::contract::{CLUSTER_FINALIZER, CLUSTER_LABEL, ClusterNames, RESTORE_ANNOTATION};
use runc_etcd_api::objects::{create_or_keep, delete_if_present};
use runc_etcd_api::{EtcdBackup, EtcdCluster, EtcdMember, Operation};
use runc_etcd_host::etcd::Access;
use runc_etcd_host::names::{InstanceName, MemberName};
use runc_etcd_host::pki;

pub struct Ctx {
    pub client: kube::Client,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub agent: AgentImage,
    pub recorder: Recorder,
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn selector(c: &EtcdCluster) -> ListParams {
    ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", c.name()))
}

impl Ctx {
    pub(super) fn api<K>(&self, c: &EtcdCluster) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &c.ns())
    }

    /// An Event about the cluster; `member` names the EtcdMember it concerns (also what keeps
    /// the same step for different members from being folded into one Event series).
    pub(super) async fn event(
        &self,
        c: &EtcdCluster,
        type_: EventType,
        reason: &str,
        member: Option<&str>,
        note: String,
    ) {
        let secondary = member.map(|name| k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("runc-etcd.io/v1alpha1".into()),
            kind: Some("EtcdMember".into()),
            name: Some(name.into()),
            namespace: Some(c.ns()),
            ..Default::default()
        });
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&ev, &c.object_ref(&())).await {
            tracing::warn!("{}: publishing an event: {e}", c.instance());
        }
    }

    async fn patch_status(&self, c: &EtcdCluster, status: serde_json::Value) -> Result<()> {
        let api: Api<EtcdCluster> = self.api(c);
        api.patch_status(
            &c.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        Ok(())
    }

    async fn record(&self, c: &EtcdCluster, op: &Operation) -> Result<()> {
        self.patch_status(c, json!({ "lastOperation": op })).await
    }
}

/// The whole status as a merge patch: fields that are now empty are cleared, not left stale.
fn status_patch(s: &runc_etcd_api::EtcdClusterStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("status serializes");
    let obj = v.as_object_mut().expect("status is an object");
    for key in [
        "phase",
        "conditions",
        "members",
        "clientEndpoints",
        "currentVersion",
        "clusterId",
        "quorumLostSince",
    ] {
        obj.entry(key).or_insert(serde_json::Value::Null);
    }
    obj.remove("lastOperation"); // written only by `record`
    v
}

pub async fn reconcile(c: Arc<EtcdCluster>, ctx: Arc<Ctx>) -> Result<Action> {
    if c.metadata.deletion_timestamp.is_some() {
        return finalize(&c, &ctx).await;
    }
    if !c.finalizers().iter().any(|f| f == CLUSTER_FINALIZER) {
        let api: Api<EtcdCluster> = ctx.api(&c);
        let patch = runc_etcd_api::objects::finalizers_patch(&*c, Some(CLUSTER_FINALIZER), None);
        api.patch(&c.name(), &PatchParams::default(), &patch).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    if let Err(msg) = check_names(&c) {
        ctx.event(&c, EventType::Warning, "InvalidSpec", None, msg.clone())
            .await;
        let degraded = json!({"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": msg,
            "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now())});
        ctx.patch_status(&c, json!({"phase": "Failed", "conditions": [degraded]}))
            .await?;
        return Ok(Action::await_change());
    }
    let access = ensure_tls(&c, &ctx).await?;
    let ds: Api<DaemonSet> = ctx.api(&c);
    ds.patch(
        &c.agent_name(),
        &apply(),
        &Patch::Apply(&children::agent_daemonset(&c, &ctx.agent)),
    )
    .await?;
    let svc: Api<Service> = ctx.api(&c);
    svc.patch(
        &c.client_service(),
        &apply(),
        &Patch::Apply(&children::client_service(&c)),
    )
    .await?;

    let view = observe_all(&c, &ctx, &access).await?;
    let backup_due = backups::tend(&c, &ctx, &view).await?;
    let in_flight = c
        .status
        .as_ref()
        .and_then(|s| s.last_operation.clone())
        .filter(|op| op.state == "InProgress");
    let (step, requeue) = match in_flight {
        Some(op) => carry_on(&c, &ctx, &view, &access, op).await?,
        None if c.spec.paused => (
            Step::Wait {
                reason: "paused: spec.paused is true".into(),
            },
            Duration::from_secs(30),
        ),
        None => match upgrade_stopped(&c) {
            Some(reason) => (Step::Wait { reason }, Duration::from_secs(30)),
            None => plan_next(&c, &ctx, &view).await?,
        },
    };
    let requeue = backup_due.map_or(requeue, |due| requeue.min(due));
    finish(&c, &ctx, &view, step, requeue).await
}

/// Step 4: the recorded change, carried on; its end is recorded, with an Event.
async fn carry_on(
    c: &EtcdCluster,
    ctx: &Ctx,
    view: &View,
    access: &Access,
    mut op: Operation,
) -> Result<(Step, Duration)> {
    let outcome = match act(c, ctx, view, access, &op).await {
        Ok(o) => o,
        Err(e) if e.is_user_error() => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::NotYet(e.to_string()),
    };
    tracing::info!("{}: {} {:?}: {outcome:?}", c.instance(), op.kind, op.member);
    let (state, type_, msg) = match outcome {
        Outcome::NotYet(reason) => return Ok((Step::Wait { reason }, Duration::from_secs(1))),
        Outcome::Done(msg) => ("Succeeded", EventType::Normal, msg),
        Outcome::Failed(msg) => ("Failed", EventType::Warning, msg),
    };
    op.state = state.into();
    op.message = Some(msg.clone());
    ctx.record(c, &op).await?;
    ctx.event(c, type_, &format!("{}{state}", op.kind), op.member.as_deref(), msg)
        .await;
    let reason = format!("{} {state}", op.kind);
    Ok((Step::Wait { reason }, Duration::from_millis(200)))
}

/// Step 5: the one next step (a full database first, then membership, then upgrades and
/// maintenance); a change is recorded, with an Event, and made by the next pass.
async fn plan_next(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<(Step, Duration)> {
    let nospace = view.etcd.as_ref().is_some_and(|e| !e.nospace.is_empty());
    let mut step = if nospace {
        // A full database refuses every write: answered before anything else.
        Step::RecoverSpace
    } else if view.etcd.is_none() && !view.members.is_empty() && !view.members.iter().any(ever_ran) {
        Step::Wait {
            reason: "waiting for the first member to start".into(),
        }
    } else {
        membership_step(c, view)
    };
    if step == Step::Converged {
        step = upgrade_step(c, ctx, view).await?;
    }
    if let Some(why) = backups::before_change(c, &step)
        && let Some(reason) = backups::gate(c, ctx, view, why).await?
    {
        step = Step::Wait { reason };
    }
    if let Some(op) = operation(c, view, &step) {
        if matches!(step, Step::Rebuild { .. }) && c.annotations().contains_key(RESTORE_ANNOTATION) {
            // The request is used up before the rebuild is recorded: a crash in between asks
            // the person again rather than rebuilding twice.
            let api: Api<EtcdCluster> = ctx.api(c);
            let patch = json!({"metadata": {"annotations": {RESTORE_ANNOTATION: null}}});
            api.patch(&c.name(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        // Recorded before it is made: the next pass (or the next leader) makes it.
        ctx.record(c, &op).await?;
        let note = format!(
            "{} {} on node {}",
            op.kind,
            op.member.clone().unwrap_or_default(),
            op.node.clone().unwrap_or_default()
        );
        ctx.event(
            c,
            EventType::Normal,
            &format!("{}Started", op.kind),
            op.member.as_deref(),
            note,
        )
        .await;
        return Ok((step, Duration::ZERO));
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
            ctx.event(c, EventType::Warning, problem, None, reason.clone()).await;
            Duration::from_secs(15)
        }
        _ => Duration::from_secs(1),
    };
    Ok((step, requeue))
}

/// The membership's next step: the planner's, except when quorum is lost (the quorum-loss
/// policy decides) and for the seed of a restored cluster (on its backup's node when the
/// backup is kept on a host).
fn membership_step(c: &EtcdCluster, view: &View) -> Step {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut obs = observe::planner_input(c, view, now);
    let voters = obs.members.iter().filter(|m| m.voter).count();
    let healthy = obs.members.iter().filter(|m| m.voter && m.healthy).count();
    if voters > 0 && !plan::has_quorum(voters, healthy) && view.members.iter().any(ever_ran) {
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

/// Reports what was seen and chosen: status and the Service's endpoints.
async fn finish(c: &EtcdCluster, ctx: &Ctx, view: &View, step: Step, requeue: Duration) -> Result<Action> {
    let report = status::build(c, view, &step);
    ctx.patch_status(c, status_patch(&report)).await?;
    ctx.metrics.observe_cluster(c, &report, &view.backups);
    write_endpoints(c, ctx, view).await?;
    Ok(Action::requeue(requeue))
}

/// The names derived from the cluster's must be valid on the hosts: the instance
/// `<namespace>.<cluster>` (unit, folder) and member names `<cluster>-xxxxx` (DNS labels).
fn check_names(c: &EtcdCluster) -> std::result::Result<(), String> {
    InstanceName::new(c.instance()).map_err(|e| {
        format!(
            "namespace and name together are too long for a host instance {}: {e}",
            c.instance()
        )
    })?;
    MemberName::new(format!("{}-00000", c.name())).map_err(|e| {
        format!("the name is too long for its members' names (<name>-xxxxx, at most 63 characters): {e}")
    })?;
    Ok(())
}

/// The change a step stands for, with the member it will create named now (so a resumed change
/// creates the same one).
fn operation(c: &EtcdCluster, view: &View, step: &Step) -> Option<Operation> {
    let backup = match step {
        Step::Rebuild { backup } => Some(backup.clone()),
        Step::Bootstrap { .. } => disaster::restore_source(c),
        _ => None,
    };
    let (kind, member, node) = match step {
        Step::Bootstrap { node } => ("BootstrapMember", new_member_name(c, view), node.clone()),
        Step::AddLearner { node } => ("AddLearner", new_member_name(c, view), node.clone()),
        Step::Promote { member } => ("PromoteMember", member.clone(), node_of(view, member)),
        Step::Remove { member } => ("RemoveMember", member.clone(), node_of(view, member)),
        Step::Replace { member } => ("ReplaceMember", member.clone(), node_of(view, member)),
        Step::Upgrade { member } => ("UpgradeMember", member.clone(), node_of(view, member)),
        Step::Defragment { member } => ("DefragmentMember", member.clone(), node_of(view, member)),
        Step::RecoverSpace => ("RecoverSpace", String::new(), String::new()),
        Step::Rebuild { .. } => ("RebuildFromBackup", String::new(), String::new()),
        Step::Wait { .. } | Step::Converged => return None,
    };
    Some(Operation {
        kind: kind.into(),
        member: (!member.is_empty()).then_some(member),
        node: (!node.is_empty()).then_some(node),
        state: "InProgress".into(),
        message: None,
        started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        generation: c.metadata.generation,
        backup,
    })
}

/// A member upgrade that failed for this very spec stops everything until the spec changes.
fn upgrade_stopped(c: &EtcdCluster) -> Option<String> {
    let op = c.status.as_ref()?.last_operation.as_ref()?;
    (op.kind == "UpgradeMember" && op.state == "Failed" && op.generation == c.metadata.generation)
        .then(|| format!("upgrade stopped: {}", op.message.clone().unwrap_or_default()))
}

/// Once the membership has converged: the next step of a rolling upgrade, if one is due.
async fn upgrade_step(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<Step> {
    let target = children::image(c);
    let members = observe::upgrade_input(c, view);
    Ok(match upgrade::next(&members, &target, &c.spec.version) {
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
            let api: Api<EtcdMember> = ctx.api(c);
            let behind = view
                .members
                .iter()
                .filter(|m| m.spec.image != target && m.spec.next_image.as_deref() != Some(target.as_str()));
            for m in behind {
                let patch = json!({"spec": {"nextImage": target}});
                api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            Step::Wait {
                reason: format!("pulling {target} on every member's node before the upgrade"),
            }
        }
        upgrade::Step::Upgrade { member } => Step::Upgrade { member },
    })
}

/// Whether the member's agent ever saw etcd answer (it then has an etcd member ID).
fn ever_ran(m: &EtcdMember) -> bool {
    m.status.as_ref().is_some_and(|s| s.member_id.is_some())
}

fn node_of(view: &View, member: &str) -> String {
    view.members
        .iter()
        .find(|m| m.spec.member_name == member)
        .map(|m| m.spec.node_name.clone())
        .unwrap_or_default()
}

/// `<cluster>-<5 hex digits>`, not used by any member of the cluster.
fn new_member_name(c: &EtcdCluster, view: &View) -> String {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        let name = format!("{}-{:05x}", c.name(), h.finish() & 0xfffff);
        if !view.members.iter().any(|m| m.spec.member_name == name) {
            return name;
        }
    }
}

async fn observe_all(c: &EtcdCluster, ctx: &Ctx, access: &Access) -> Result<View> {
    let members: Api<EtcdMember> = ctx.api(c);
    let members = members.list(&selector(c)).await?.items;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| observe::node_info(c, n))
        .collect();
    let etcd = observe::etcd_view(c, &members, access).await;
    let backups: Api<EtcdBackup> = ctx.api(c);
    let (backups, others): (Vec<_>, Vec<_>) = backups
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .partition(|b| b.spec.cluster_name == c.name());
    let restore = disaster::restore_source(c)
        .and_then(|name| backups.iter().chain(&others).find(|b| b.name_any() == name).cloned());
    Ok(View {
        members,
        backups,
        restore,
        nodes,
        etcd,
    })
}

/// The cluster CA and the controller's client identity, created once and kept in Secrets.
async fn ensure_tls(c: &EtcdCluster, ctx: &Ctx) -> Result<Access> {
    if !c.spec.tls.enabled {
        return Ok(Access::plain());
    }
    let secrets: Api<Secret> = ctx.api(c);
    let ca = match secrets
        .get_opt(&c.ca_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_ca(&s))
    {
        Some(ca) => ca,
        None => {
            let ca = pki::new_ca(&c.instance())?;
            create_or_keep(&secrets, &children::ca_secret(c, &ca)).await?;
            // Another pass may have won the race: use what is stored.
            let stored = secrets.get(&c.ca_secret()).await?;
            runc_etcd_api::contract::read_ca(&stored)
                .ok_or_else(|| Error::transient("reading the CA Secret", "no ca.crt/ca.key"))?
        }
    };
    if let Some(tls) = secrets
        .get_opt(&c.client_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_client(&s))
    {
        return Ok(Access::tls(tls));
    }
    let tls = pki::issue_client(&ca, &format!("{} client", c.instance()))?;
    create_or_keep(&secrets, &children::client_secret(c, &tls)).await?;
    let stored = secrets.get(&c.client_secret()).await?;
    Ok(Access::tls(
        runc_etcd_api::contract::read_client(&stored).unwrap_or(tls),
    ))
}

async fn write_endpoints(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<()> {
    // Peer URLs of the voters that answered their health check.
    let healthy: Vec<&String> = view
        .etcd
        .iter()
        .flat_map(|e| {
            e.members
                .iter()
                .filter(|m| !m.is_learner && e.healthy.contains_key(&m.id))
        })
        .flat_map(|m| m.peer_urls.iter())
        .collect();
    let healthy = |o: &EtcdMember| healthy.contains(&&children::peer_url(c, &o.spec.ip));
    let members: Vec<(String, String, bool)> = view
        .members
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| (o.spec.ip.clone(), o.spec.node_name.clone(), healthy(o)))
        .collect();
    let slices: Api<EndpointSlice> = ctx.api(c);
    slices
        .patch(
            &c.client_service(),
            &apply(),
            &Patch::Apply(&children::client_endpoints(c, &members)),
        )
        .await?;
    Ok(())
}

/// Deletion: every member is retired by its agent (unit stopped, data archived) before the
/// DaemonSet goes, then the cluster's objects, then the finalizer.
async fn finalize(c: &EtcdCluster, ctx: &Ctx) -> Result<Action> {
    if !c.finalizers().iter().any(|f| f == CLUSTER_FINALIZER) {
        return Ok(Action::await_change());
    }
    let members: Api<EtcdMember> = ctx.api(c);
    let left = members.list(&selector(c)).await?.items;
    if !left.is_empty() {
        for m in left.iter().filter(|m| m.metadata.deletion_timestamp.is_none()) {
            members.delete(&m.name_any(), &DeleteParams::default()).await?;
            ctx.event(
                c,
                EventType::Normal,
                "RetireMember",
                Some(&m.name_any()),
                format!("{} on node {}", m.name_any(), m.spec.node_name),
            )
            .await;
        }
        ctx.patch_status(c, json!({"phase": "Deleting"})).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    delete_if_present(&ctx.api::<DaemonSet>(c), &c.agent_name()).await?;
    delete_if_present(&ctx.api::<EndpointSlice>(c), &c.client_service()).await?;
    delete_if_present(&ctx.api::<Service>(c), &c.client_service()).await?;
    let secrets: Api<Secret> = ctx.api(c);
    for s in secrets.list(&selector(c)).await?.items {
        delete_if_present(&secrets, &s.name_any()).await?;
    }
    let api: Api<EtcdCluster> = ctx.api(c);
    let patch = runc_etcd_api::objects::finalizers_patch(c, None, Some(CLUSTER_FINALIZER));
    api.patch(&c.name(), &PatchParams::default(), &patch).await?;
    tracing::info!("{}: deleted; every member archived on its host", c.instance());
    ctx.metrics.forget_cluster(&c.ns(), &c.name());
    Ok(Action::await_change())
}

/// Requeue policy for errors: a bad spec waits for a change; anything else is retried.
pub fn error_policy(c: Arc<EtcdCluster>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("{}: {e}", c.instance());
    if e.is_user_error() {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(ns: &str, name: &str) -> EtcdCluster {
        let mut c = EtcdCluster::new(name, serde_json::from_value(json!({"version": "3.5.16"})).unwrap());
        c.metadata.namespace = Some(ns.into());
        c
    }

    #[test]
    fn names_that_do_not_fit_on_the_hosts_are_refused() {
        assert!(check_names(&cluster("prod", "main")).is_ok());
        let long = "a".repeat(58);
        let e = check_names(&cluster("p", &long)).unwrap_err();
        assert!(e.contains("members' names"), "{e}");
        let e = check_names(&cluster(&"n".repeat(40), &"c".repeat(30))).unwrap_err();
        assert!(e.contains("host instance"), "{e}");
    }

    #[test]
    fn a_failed_upgrade_stops_everything_until_the_spec_changes() {
        let mut c = cluster("prod", "main");
        c.metadata.generation = Some(4);
        let failed = |generation| Operation {
            kind: "UpgradeMember".into(),
            state: "Failed".into(),
            message: Some("main-a did not come back".into()),
            generation: Some(generation),
            ..Default::default()
        };
        c.status = Some(runc_etcd_api::EtcdClusterStatus {
            last_operation: Some(failed(4)),
            ..Default::default()
        });
        let why = upgrade_stopped(&c).expect("stopped");
        assert!(why.contains("main-a did not come back"), "{why}");
        assert!(status::spec_problem(&why) == Some("UpgradeFailed"));
        c.metadata.generation = Some(5);
        assert!(
            upgrade_stopped(&c).is_none(),
            "a new spec goes on (e.g. back to the old version)"
        );
    }

    #[test]
    fn the_status_patch_clears_what_is_gone_and_leaves_the_operation_alone() {
        let s = runc_etcd_api::EtcdClusterStatus {
            last_operation: Some(Operation::default()),
            ..Default::default()
        };
        let patch = status_patch(&s);
        assert!(patch["currentVersion"].is_null() && patch.get("currentVersion").is_some());
        assert!(patch["members"].is_null());
        assert!(
            patch.get("lastOperation").is_none(),
            "written only when a change is recorded"
        );
    }
}
