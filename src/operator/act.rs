//! Carrying out one recorded change (`status.lastOperation`). Every change is idempotent: each
//! branch first looks at what is already done (a learner registered under its peer URL, an
//! object that exists, a member already promoted), so running it again after a crash at any
//! point finishes it instead of doing it twice.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::error::{Error, Result};
use crate::operator::children;
use crate::operator::context::Ctx;
use crate::operator::observe::{self, View};
use crate::operator::plan;
use runc_etcd_api::contract::release_and_delete;
use runc_etcd_api::contract::{ClusterNames, MEMBER_FINALIZER};
use runc_etcd_api::objects::create_or_keep;
use runc_etcd_api::{EtcdCluster, EtcdMember, InitialClusterState, Operation, OperationKind};
use runc_etcd_host::etcd::{self, Access};
// Where a crash hurts most, the lab tests kill the operator: after etcd registered a learner,
// before its EtcdMember exists; after etcd removed a member, before its EtcdMember is released;
// after a member was sent to a new image or settings; after the history was compacted for a
// NOSPACE recovery; after every member was released for a rebuild.
use runc_etcd_host::failpoint::hit as failpoint;
use runc_etcd_host::names::MemberName;

/// The result of carrying out (part of) a recorded change.
#[derive(Debug)]
pub(super) enum Outcome {
    Done(String),
    /// Not possible yet; the change stays recorded and is tried again.
    NotYet(String),
    /// It cannot be done as recorded (e.g. its node went away before anything was changed).
    Failed(String),
}

/// Before an upgrade: each member's node pulls `target` while the old image still runs
/// (EtcdMember `nextImage`), so the upgrade itself does not wait on a registry.
pub async fn pull_first(c: &EtcdCluster, ctx: &Ctx, target: &str, members: &[String]) -> Result<()> {
    let api: Api<EtcdMember> = ctx.api(c);
    for m in members {
        let patch = json!({"spec": {"nextImage": target}});
        api.patch(m, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(())
}

fn node_ip(view: &View, node: &str) -> Option<String> {
    view.nodes.iter().find(|n| n.name == node && n.eligible)?.ip.clone()
}

/// Carries out a recorded change. Every branch is idempotent: it checks what is already done.
pub async fn act(c: &EtcdCluster, ctx: &Ctx, view: &View, access: &Access, op: &Operation) -> Result<Outcome> {
    use OperationKind::*;
    let name = op.member.clone().unwrap_or_default();
    let node = op.node.clone().unwrap_or_default();
    let members: Api<EtcdMember> = ctx.api(c);
    let existing = view.members.iter().find(|m| m.spec.member_name == name);
    match op.kind {
        BootstrapMember | AddLearner => {
            let ip = match (existing, node_ip(view, &node)) {
                (Some(m), _) => m.spec.ip.clone(),
                (None, Some(ip)) => ip,
                (None, None) => return Ok(Outcome::Failed(format!("node {node} is no longer eligible"))),
            };
            MemberName::new(name.clone())?;
            let peer = children::peer_url(c, &ip);
            let state = if op.kind == AddLearner {
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
                    restore_from: op.backup.clone().filter(|_| op.kind == BootstrapMember),
                };
                create_or_keep(&members, &children::etcd_member(c, &planned)).await?;
            }
            Ok(Outcome::Done(format!("{name} placed on node {node} ({peer})")))
        }
        PromoteMember => {
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
        RemoveMember | ReplaceMember => remove(c, ctx, view, access, &name).await,
        UpgradeMember => upgrade_member(c, ctx, view, access, op).await,
        DefragmentMember => defragment(c, view, access, &name).await,
        RecoverSpace => recover_space(view, access).await,
        RebuildFromBackup => rebuild(c, ctx, view).await,
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
            failpoint("after-remove-from-etcd");
        }
    } else if obj.is_some() {
        return Ok(Outcome::NotYet(format!(
            "no member answers; {name} is removed from etcd first"
        )));
    }
    if let Some(o) = obj {
        // etcd has let it go: its agent may stop and archive it.
        release_and_delete(&members, o, "removed from etcd").await?;
        let node = view.nodes.iter().find(|n| n.name == o.spec.node_name);
        if node.is_none_or(|n| !n.ready) && o.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
            // Its host is gone or unreachable, and its agent with it: nobody can archive the data
            // now. etcd has already let the member go; the agent archives what is left when the
            // host comes back (a member record with no EtcdMember is an orphan to it).
            let patch = runc_etcd_api::objects::finalizers_patch(o, None, Some(MEMBER_FINALIZER));
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
        .delete(&runc_etcd_api::contract::member_secret(name), &DeleteParams::default())
        .await;
    Ok(Outcome::Done(format!("{name} removed, stopped and archived")))
}

/// The first half of a rebuild after quorum loss: every member is retired (stopped, its data
/// archived on its host by its agent; released at once when its node is not Ready, the agent
/// archives it when the host returns). The planner then bootstraps a seed from the backup
/// recorded in the operation, and the cluster grows back as usual.
async fn rebuild(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<Outcome> {
    let members: Api<EtcdMember> = ctx.api(c);
    for o in &view.members {
        release_and_delete(&members, o, "rebuilt from a backup after quorum loss").await?;
        let node_ready = view.nodes.iter().any(|n| n.name == o.spec.node_name && n.ready);
        if !node_ready && o.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
            let patch = runc_etcd_api::objects::finalizers_patch(o, None, Some(MEMBER_FINALIZER));
            members.patch(&o.name_any(), &PatchParams::default(), &patch).await?;
        }
    }
    failpoint("after-release-for-rebuild");
    if let Some(o) = view.members.first() {
        return Ok(Outcome::NotYet(format!(
            "waiting for the agents to stop and archive {} (and {} more)",
            o.spec.member_name,
            view.members.len() - 1
        )));
    }
    Ok(Outcome::Done(
        "every member stopped and archived; the cluster is bootstrapped again from the backup".into(),
    ))
}

/// Hands the leadership of `m` to a healthy voter (sent to the leader itself, as etcd wants).
async fn move_leadership(
    access: &Access,
    etcd_view: &observe::EtcdView,
    m: &runc_etcd_host::etcd::MemberInfo,
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
        failpoint("after-upgrade-patch");
        return Ok(Outcome::NotYet(format!("{name} is being moved to {target}")));
    }
    // Its agent tried this very change, put the old one back and will not try again until the
    // spec changes: the upgrade stops now, with the agent's reason.
    if let Some(s) = obj.status.as_ref()
        && s.failed_generation.is_some()
        && s.failed_generation == obj.metadata.generation
    {
        return Ok(Outcome::Failed(format!(
            "{name} could not take the change and runs as before: {}",
            s.message.clone().unwrap_or_default()
        )));
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

/// Defragments one member (it is blocked meanwhile; the others keep quorum).
async fn defragment(c: &EtcdCluster, view: &View, access: &Access, name: &str) -> Result<Outcome> {
    let Some(etcd_view) = &view.etcd else {
        return Ok(Outcome::NotYet("no member answers".into()));
    };
    let Some(m) = etcd_view
        .members
        .iter()
        .find(|m| observe::object_of(c, &view.members, m).is_some_and(|o| o.spec.member_name == name))
    else {
        return Ok(Outcome::Failed(format!("{name} is no longer a member")));
    };
    let Some(url) = m.client_urls.first() else {
        return Ok(Outcome::NotYet(format!("{name} has not started")));
    };
    let before = etcd_view.healthy.get(&m.id).map_or(0, |s| s.db_size);
    access.defragment(url).await?;
    let after = access.status(url).await.map_or(0, |s| s.db_size);
    Ok(Outcome::Done(format!(
        "{name} defragmented: database {} MiB → {} MiB",
        before >> 20,
        after >> 20
    )))
}

/// The database reached its quota (NOSPACE) and etcd refuses writes: compact the history,
/// defragment every member (the leader last), then disarm the alarm. Each part may run again.
async fn recover_space(view: &View, access: &Access) -> Result<Outcome> {
    let Some(etcd_view) = &view.etcd else {
        return Ok(Outcome::NotYet("no member answers".into()));
    };
    let mut members: Vec<_> = etcd_view.members.iter().filter(|m| !m.client_urls.is_empty()).collect();
    members.sort_by_key(|m| m.id == etcd_view.leader);
    let endpoints: Vec<String> = members.iter().filter_map(|m| m.client_urls.first().cloned()).collect();
    let client = access.connect(&endpoints).await?;
    let rev = etcd::compact_all(&client).await?;
    failpoint("after-compact");
    for url in &endpoints {
        access.defragment(url).await?;
    }
    for id in etcd::nospace_alarms(&client).await? {
        etcd::disarm_nospace(&client, id).await?;
    }
    Ok(Outcome::Done(format!(
        "the database was full (NOSPACE): history compacted at revision {rev}, {} members defragmented, alarm disarmed",
        endpoints.len()
    )))
}

/// How long one member may take to come back on a new image.
const UPGRADE_TIMEOUT_SECS: i64 = 180;
