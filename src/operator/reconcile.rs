//! The reconcile pipeline for one EtcdCluster:
//!
//! 1. deleting? retire every member through its agent, then the cluster's objects (finalizer);
//! 2. ensure the cluster's objects: finalizer, TLS Secrets, agent DaemonSet, client Service;
//! 3. observe: EtcdMembers, nodes, etcd's view;
//! 4. a change recorded in `status.lastOperation` and not finished is carried on (every change is
//!    idempotent, so this also resumes one a crashed controller left half-done);
//! 5. otherwise plan (pure, `plan::next`) and, for a change, record it in status *before* making
//!    it; the next pass makes it;
//! 6. write status (pure, `status::build`), the EndpointSlice, and an Event per step.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{EtcdCluster, EtcdMember, InitialClusterState, Operation};
use crate::error::{Error, Result};
use crate::host::etcd::{self, Access};
use crate::host::pki;
use crate::names::{InstanceName, MemberName};
use crate::operator::children::{
    self, AgentImage, CLUSTER_FINALIZER, CLUSTER_LABEL, ClusterNames, MANAGER, MEMBER_FINALIZER,
};
use crate::operator::observe::{self, View};
use crate::operator::plan::{self, Step};
use crate::operator::{status, upgrade};

pub struct Ctx {
    pub client: kube::Client,
    pub agent: AgentImage,
    pub recorder: Recorder,
}

/// The result of carrying out (part of) a recorded change.
#[derive(Debug)]
enum Outcome {
    Done(String),
    /// Not possible yet; the change stays recorded and is tried again.
    NotYet(String),
    /// It cannot be done as recorded (e.g. its node went away before anything was changed).
    Failed(String),
}

/// Test hook: `RUNC_ETCD_FAILPOINT=after-add-learner` makes the process die right after etcd
/// registered a learner, before its EtcdMember exists: the worst moment for a crash.
fn failpoint(name: &str) {
    if std::env::var("RUNC_ETCD_FAILPOINT").is_ok_and(|f| f == name) {
        tracing::error!("failpoint {name}: exiting");
        std::process::exit(86);
    }
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn selector(c: &EtcdCluster) -> ListParams {
    ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", c.name()))
}

impl Ctx {
    fn api<K>(&self, c: &EtcdCluster) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &c.ns())
    }

    /// An Event about the cluster; `member` names the EtcdMember it concerns (also what keeps
    /// the same step for different members from being folded into one Event series).
    async fn event(&self, c: &EtcdCluster, type_: EventType, reason: &str, member: Option<&str>, note: String) {
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
fn status_patch(s: &crate::api::EtcdClusterStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("status serializes");
    let obj = v.as_object_mut().expect("status is an object");
    for key in [
        "phase",
        "conditions",
        "members",
        "clientEndpoints",
        "currentVersion",
        "clusterId",
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
        let patch = children::finalizers_patch(&*c, Some(CLUSTER_FINALIZER), None);
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
    let in_flight = c
        .status
        .as_ref()
        .and_then(|s| s.last_operation.clone())
        .filter(|op| op.state == "InProgress");
    let (step, requeue) = if let Some(mut op) = in_flight {
        let outcome = match act(&c, &ctx, &view, &access, &op).await {
            Ok(o) => o,
            Err(e) if e.is_user_error() => Outcome::Failed(e.to_string()),
            Err(e) => Outcome::NotYet(e.to_string()),
        };
        tracing::info!("{}: {} {:?}: {outcome:?}", c.instance(), op.kind, op.member);
        let (state, type_, msg) = match outcome {
            Outcome::NotYet(why) => {
                return finish(&c, &ctx, &view, Step::Wait { reason: why }, Duration::from_secs(1)).await;
            }
            Outcome::Done(msg) => ("Succeeded", EventType::Normal, msg),
            Outcome::Failed(msg) => ("Failed", EventType::Warning, msg),
        };
        op.state = state.into();
        op.message = Some(msg.clone());
        ctx.record(&c, &op).await?;
        ctx.event(&c, type_, &format!("{}{state}", op.kind), op.member.as_deref(), msg)
            .await;
        let reason = format!("{} {state}", op.kind);
        (Step::Wait { reason }, Duration::from_millis(200))
    } else if c.spec.paused {
        (
            Step::Wait {
                reason: "paused: spec.paused is true".into(),
            },
            Duration::from_secs(30),
        )
    } else if let Some(reason) = upgrade_stopped(&c) {
        (Step::Wait { reason }, Duration::from_secs(30))
    } else {
        let mut step = if view.etcd.is_none() && !view.members.is_empty() && !view.members.iter().any(ever_ran) {
            Step::Wait {
                reason: "waiting for the first member to start".into(),
            }
        } else {
            plan::next(&observe::planner_input(&c, &view, k8s_openapi::jiff::Timestamp::now()))
        };
        if step == Step::Converged {
            step = upgrade_step(&c, &ctx, &view).await?;
        }
        match operation(&c, &view, &step) {
            Some(op) => {
                // Recorded before it is made: the next pass (or the next leader) makes it.
                ctx.record(&c, &op).await?;
                ctx.event(
                    &c,
                    EventType::Normal,
                    &format!("{}Started", op.kind),
                    op.member.as_deref(),
                    format!(
                        "{} {} on node {}",
                        op.kind,
                        op.member.clone().unwrap_or_default(),
                        op.node.clone().unwrap_or_default()
                    ),
                )
                .await;
                (step, Duration::ZERO)
            }
            None => {
                let requeue = match &step {
                    // A sick member is looked at often enough to replace it on time.
                    Step::Converged if view.etcd.as_ref().is_some_and(|e| e.healthy.len() < e.members.len()) => {
                        Duration::from_secs(5)
                    }
                    Step::Converged => Duration::from_secs(30),
                    // Too few nodes waits for a Node event (or a slow resync); anything else is
                    // etcd or an agent catching up, worth a quick look.
                    Step::Wait { reason } if let Some(problem) = status::spec_problem(reason) => {
                        ctx.event(&c, EventType::Warning, problem, None, reason.clone()).await;
                        Duration::from_secs(15)
                    }
                    Step::Wait { .. } => Duration::from_secs(1),
                    _ => Duration::from_secs(1),
                };
                (step, requeue)
            }
        }
    };
    finish(&c, &ctx, &view, step, requeue).await
}

/// Reports what was seen and chosen: status and the Service's endpoints.
async fn finish(c: &EtcdCluster, ctx: &Ctx, view: &View, step: Step, requeue: Duration) -> Result<Action> {
    let report = status::build(c, view, &step);
    ctx.patch_status(c, status_patch(&report)).await?;
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
    let (kind, member, node) = match step {
        Step::Bootstrap { node } => ("BootstrapMember", new_member_name(c, view), node.clone()),
        Step::AddLearner { node } => ("AddLearner", new_member_name(c, view), node.clone()),
        Step::Promote { member } => ("PromoteMember", member.clone(), node_of(view, member)),
        Step::Remove { member } => ("RemoveMember", member.clone(), node_of(view, member)),
        Step::Replace { member } => ("ReplaceMember", member.clone(), node_of(view, member)),
        Step::Upgrade { member } => ("UpgradeMember", member.clone(), node_of(view, member)),
        Step::Wait { .. } | Step::Converged => return None,
    };
    Some(Operation {
        kind: kind.into(),
        member: Some(member),
        node: Some(node),
        state: "InProgress".into(),
        message: None,
        started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        generation: c.metadata.generation,
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
        upgrade::Step::Done => Step::Converged,
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
    Ok(View { members, nodes, etcd })
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
        .and_then(|s| children::read_ca(&s))
    {
        Some(ca) => ca,
        None => {
            let ca = pki::new_ca(&c.instance())?;
            create_or_keep(&secrets, &children::ca_secret(c, &ca)).await?;
            // Another pass may have won the race: use what is stored.
            let stored = secrets.get(&c.ca_secret()).await?;
            children::read_ca(&stored).ok_or_else(|| Error::transient("reading the CA Secret", "no ca.crt/ca.key"))?
        }
    };
    if let Some(tls) = secrets
        .get_opt(&c.client_secret())
        .await?
        .and_then(|s| children::read_client(&s))
    {
        return Ok(Access::tls(tls));
    }
    let tls = pki::issue_client(&ca, &format!("{} client", c.instance()))?;
    create_or_keep(&secrets, &children::client_secret(c, &tls)).await?;
    let stored = secrets.get(&c.client_secret()).await?;
    Ok(Access::tls(children::read_client(&stored).unwrap_or(tls)))
}

async fn create_or_keep<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_endpoints(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<()> {
    let healthy = |o: &EtcdMember| {
        view.etcd.as_ref().is_some_and(|e| {
            e.members.iter().any(|m| {
                !m.is_learner
                    && e.healthy.contains_key(&m.id)
                    && observe::object_of(c, std::slice::from_ref(o), m).is_some()
            })
        })
    };
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

fn node_ip(view: &View, node: &str) -> Option<String> {
    view.nodes.iter().find(|n| n.name == node && n.eligible)?.ip.clone()
}

/// Carries out a recorded change. Every branch is idempotent: it checks what is already done.
async fn act(c: &EtcdCluster, ctx: &Ctx, view: &View, access: &Access, op: &Operation) -> Result<Outcome> {
    let name = op.member.clone().unwrap_or_default();
    let node = op.node.clone().unwrap_or_default();
    let members: Api<EtcdMember> = ctx.api(c);
    let existing = view.members.iter().find(|m| m.spec.member_name == name);
    match op.kind.as_str() {
        "BootstrapMember" | "AddLearner" => {
            let ip = match (existing, node_ip(view, &node)) {
                (Some(m), _) => m.spec.ip.clone(),
                (None, Some(ip)) => ip,
                (None, None) => return Ok(Outcome::Failed(format!("node {node} is no longer eligible"))),
            };
            MemberName::new(name.clone())?;
            let peer = children::peer_url(c, &ip);
            ensure_member_secret(c, ctx, &name, &ip).await?;
            let state = if op.kind == "AddLearner" {
                let Some(etcd_view) = &view.etcd else {
                    return Ok(Outcome::NotYet(
                        "no member answers; a learner is added only to a serving cluster".into(),
                    ));
                };
                if !etcd_view.members.iter().any(|m| m.peer_urls.contains(&peer)) {
                    let endpoints: Vec<String> = etcd_view
                        .members
                        .iter()
                        .filter_map(|m| m.client_urls.first().cloned())
                        .collect();
                    let client = access.connect(&endpoints).await?;
                    match etcd::add_learner(&client, &peer, Duration::from_secs(5)).await {
                        Ok(id) => tracing::info!("{}: learner {id:x} ({peer}) registered", c.instance()),
                        Err(e) => return Ok(Outcome::NotYet(format!("etcd did not add the learner yet: {e}"))),
                    }
                    failpoint("after-add-learner");
                }
                InitialClusterState::Existing
            } else {
                InitialClusterState::New
            };
            if existing.is_none() {
                let mut initial: Vec<String> = view
                    .etcd
                    .iter()
                    .flat_map(|e| e.members.iter())
                    .filter(|m| m.started())
                    .filter_map(|m| Some(format!("{}={}", m.name, m.peer_urls.first()?)))
                    .collect();
                initial.push(format!("{name}={peer}"));
                let planned = children::PlannedMember {
                    name: name.clone(),
                    node: node.clone(),
                    ip,
                    initial_cluster: initial,
                    state,
                };
                create_or_keep(&members, &children::etcd_member(c, &planned)).await?;
            }
            Ok(Outcome::Done(format!("{name} placed on node {node} ({peer})")))
        }
        "PromoteMember" => {
            let (Some(etcd_view), Some(obj)) = (&view.etcd, existing) else {
                return Ok(Outcome::NotYet("waiting for etcd and the member to answer".into()));
            };
            let peer = children::peer_url(c, &obj.spec.ip);
            let Some(m) = etcd_view.members.iter().find(|m| m.peer_urls.contains(&peer)) else {
                return Ok(Outcome::Failed(format!("{name} is not a member of etcd")));
            };
            if !m.is_learner {
                return Ok(Outcome::Done(format!("{name} is a voting member")));
            }
            let endpoints: Vec<String> = etcd_view
                .members
                .iter()
                .filter(|x| !x.is_learner)
                .filter_map(|x| x.client_urls.first().cloned())
                .collect();
            let client = access.connect(&endpoints).await?;
            match etcd::promote(&client, m.id, Duration::from_secs(3)).await {
                Ok(()) => Ok(Outcome::Done(format!("{name} promoted to a voting member"))),
                Err(e) => Ok(Outcome::NotYet(format!("learner {name} is catching up: {e}"))),
            }
        }
        "RemoveMember" | "ReplaceMember" => remove(c, ctx, view, access, &name).await,
        "UpgradeMember" => upgrade_member(c, ctx, view, access, op).await,
        other => Ok(Outcome::Failed(format!("unknown operation {other}"))),
    }
}

async fn remove(c: &EtcdCluster, ctx: &Ctx, view: &View, access: &Access, name: &str) -> Result<Outcome> {
    let members: Api<EtcdMember> = ctx.api(c);
    let obj = view.members.iter().find(|m| m.spec.member_name == name);
    if let Some(etcd_view) = &view.etcd {
        let target = etcd_view.members.iter().find(|m| match obj {
            Some(o) => m.peer_urls.contains(&children::peer_url(c, &o.spec.ip)),
            None => observe::display_name(m) == name,
        });
        if let Some(m) = target {
            let voters: Vec<_> = etcd_view.members.iter().filter(|x| !x.is_learner).collect();
            if !m.is_learner {
                let healthy_after = voters
                    .iter()
                    .filter(|x| x.id != m.id && etcd_view.healthy.contains_key(&x.id))
                    .count();
                if !plan::has_quorum(voters.len() - 1, healthy_after) {
                    return Ok(Outcome::NotYet(format!("removing {name} now would lose quorum")));
                }
            }
            if m.id == etcd_view.leader {
                return move_leadership(access, etcd_view, m, name).await;
            }
            let endpoints: Vec<String> = voters
                .iter()
                .filter(|x| x.id != m.id)
                .filter_map(|x| x.client_urls.first().cloned())
                .collect();
            let client = access.connect(&endpoints).await?;
            if let Err(e) = etcd::remove(&client, m.id, Duration::from_secs(5)).await {
                return Ok(Outcome::NotYet(format!("etcd did not remove {name} yet: {e}")));
            }
            tracing::info!("{}: {name} ({:x}) removed from etcd", c.instance(), m.id);
        }
    } else if obj.is_some() {
        return Ok(Outcome::NotYet(format!(
            "no member answers; {name} is removed from etcd first"
        )));
    }
    if let Some(o) = obj {
        if o.metadata.deletion_timestamp.is_none() {
            members.delete(&o.name_any(), &DeleteParams::default()).await?;
        }
        let node = view.nodes.iter().find(|n| n.name == o.spec.node_name);
        if node.is_none_or(|n| !n.ready) && o.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
            // Its host is gone or unreachable, and its agent with it: nobody can archive the data
            // now. etcd has already let the member go; the agent archives what is left when the
            // host comes back (a member record with no EtcdMember is an orphan to it).
            let patch = children::finalizers_patch(o, None, Some(MEMBER_FINALIZER));
            members.patch(&o.name_any(), &PatchParams::default(), &patch).await?;
            ctx.event(
                c,
                EventType::Warning,
                "MemberHostLost",
                Some(name),
                format!(
                    "node {} is not Ready: {name} was removed from etcd without its host; its data is archived there when it returns",
                    o.spec.node_name
                ),
            )
            .await;
        }
        return Ok(Outcome::NotYet(format!(
            "waiting for the agent on node {} to stop and archive {name}",
            o.spec.node_name
        )));
    }
    let secrets: Api<Secret> = ctx.api(c);
    let _ = secrets
        .delete(&children::member_secret(name), &DeleteParams::default())
        .await;
    Ok(Outcome::Done(format!("{name} removed, stopped and archived")))
}

/// Hands the leadership of `m` to a healthy voter (sent to the leader itself, as etcd wants).
async fn move_leadership(
    access: &Access,
    etcd_view: &observe::EtcdView,
    m: &crate::host::etcd::MemberInfo,
    name: &str,
) -> Result<Outcome> {
    let Some(to) = etcd_view
        .members
        .iter()
        .find(|x| x.id != m.id && !x.is_learner && etcd_view.healthy.contains_key(&x.id))
    else {
        return Ok(Outcome::NotYet("no healthy member to hand leadership to".into()));
    };
    let url = m.client_urls.first().cloned().unwrap_or_default();
    let mut client = access.connect(&[url]).await?;
    client
        .move_leader(to.id)
        .await
        .map_err(|e| Error::transient("moving leadership", e))?;
    Ok(Outcome::NotYet(format!("leadership moved from {name}")))
}

/// Moves one member to the cluster's image: leadership handed away first, then the EtcdMember's
/// image changed (its agent swaps it, keeping the old rootfs), then done once etcd reports the
/// target version through it. One that does not come back stops the upgrade.
async fn upgrade_member(c: &EtcdCluster, ctx: &Ctx, view: &View, access: &Access, op: &Operation) -> Result<Outcome> {
    let name = op.member.clone().unwrap_or_default();
    let Some(obj) = view.members.iter().find(|m| m.spec.member_name == name) else {
        return Ok(Outcome::Failed(format!("{name} is no longer a member")));
    };
    let Some(etcd_view) = &view.etcd else {
        return Ok(Outcome::NotYet("no member answers".into()));
    };
    let target = children::image(c);
    let peer = children::peer_url(c, &obj.spec.ip);
    let me = etcd_view.members.iter().find(|m| m.peer_urls.contains(&peer));
    if let Some(m) = me
        && m.id == etcd_view.leader
        && etcd_view.members.len() > 1
    {
        return move_leadership(access, etcd_view, m, &name).await;
    }
    let settings = children::tuning(c);
    if obj.spec.image != target || obj.spec.etcd != settings {
        // A JSON patch replaces spec.etcd whole (a merge patch would keep settings now unset).
        let mut ops = vec![json!({"op": "add", "path": "/spec/image", "value": target})];
        match &settings {
            Some(t) => ops.push(json!({"op": "add", "path": "/spec/etcd", "value": t})),
            None if obj.spec.etcd.is_some() => ops.push(json!({"op": "remove", "path": "/spec/etcd"})),
            None => {}
        }
        let patch: json_patch::Patch = serde_json::from_value(json!(ops)).expect("a valid JSON patch");
        let members: Api<EtcdMember> = ctx.api(c);
        members
            .patch(&obj.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        return Ok(Outcome::NotYet(format!("{name} is being moved to {target}")));
    }
    let running = me.and_then(|m| etcd_view.healthy.get(&m.id)).map(|s| s.version.clone());
    let applied = obj
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation >= obj.metadata.generation);
    if applied && running.as_deref() == Some(c.spec.version.as_str()) {
        return Ok(Outcome::Done(format!(
            "{name} runs etcd {} with the cluster's settings",
            c.spec.version
        )));
    }
    let started = op
        .started_at
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
    if started + k8s_openapi::jiff::SignedDuration::from_secs(UPGRADE_TIMEOUT_SECS)
        < k8s_openapi::jiff::Timestamp::now()
    {
        return Ok(Outcome::Failed(format!(
            "{name} did not come back healthy on {target} within {UPGRADE_TIMEOUT_SECS}s; the upgrade is stopped. \
             Its previous image is kept on its host: set spec.version (and image) back to roll back"
        )));
    }
    Ok(Outcome::NotYet(format!(
        "waiting for {name} to come back on etcd {}",
        c.spec.version
    )))
}

/// How long one member may take to come back on a new image.
const UPGRADE_TIMEOUT_SECS: i64 = 180;

async fn ensure_member_secret(c: &EtcdCluster, ctx: &Ctx, name: &str, ip: &str) -> Result<()> {
    if !c.spec.tls.enabled {
        return Ok(());
    }
    let secrets: Api<Secret> = ctx.api(c);
    if secrets.get_opt(&children::member_secret(name)).await?.is_some() {
        return Ok(());
    }
    let ca_secret = secrets.get(&c.ca_secret()).await?;
    let ca =
        children::read_ca(&ca_secret).ok_or_else(|| Error::transient("reading the CA Secret", "no ca.crt/ca.key"))?;
    let ip = crate::names::parse_ip(ip)?;
    let certs = pki::issue(&ca, &MemberName::new(name)?, ip)?;
    create_or_keep(&secrets, &children::member_tls_secret(c, name, &certs)).await
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
    let patch = children::finalizers_patch(c, None, Some(CLUSTER_FINALIZER));
    api.patch(&c.name(), &PatchParams::default(), &patch).await?;
    tracing::info!("{}: deleted; every member archived on its host", c.instance());
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
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
        c.status = Some(crate::api::EtcdClusterStatus {
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
        let s = crate::api::EtcdClusterStatus {
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
