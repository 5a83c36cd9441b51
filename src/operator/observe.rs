//! Observing a cluster: its EtcdMembers, the nodes it may use, and etcd's own view (member list,
//! each member's status and health). Gathering is I/O; joining them into the planner's input is
//! pure and unit-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::error::Result;
use crate::operator::agree::{self, Answer};
use crate::operator::children;
use crate::operator::context::{Ctx, selector};
use crate::operator::disaster;
use crate::operator::evidence::Said;
use crate::operator::{maintenance, plan, upgrade};
use runc_etcd_api::contract::ClusterNames;
use runc_etcd_api::{EtcdBackup, EtcdCluster, EtcdMember, MemberPhase, OperationKind, OperationState};
use runc_etcd_host::etcd::{self, Access, EndpointStatus, MemberInfo};

/// A node as the controller sees it for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ip: Option<String>,
    pub eligible: bool,
    /// Its kubelet reports Ready (else its host may be gone, and its agent with it).
    pub ready: bool,
}

/// etcd's view, from any member that answers.
#[derive(Debug, Clone, Default)]
pub struct EtcdView {
    pub members: Vec<MemberInfo>,
    /// Status of each member that answered its health check, by member ID.
    pub healthy: BTreeMap<u64, EndpointStatus>,
    pub leader: u64,
    pub cluster_id: u64,
    /// Members with an active NOSPACE alarm.
    pub nospace: Vec<u64>,
    /// Members whose own view disagrees with the agreed one (`agree`), each with what it sees.
    pub diverged: Vec<String>,
}

/// Everything one reconcile looks at.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub members: Vec<EtcdMember>,
    /// The cluster's EtcdBackups.
    pub backups: Vec<runc_etcd_api::EtcdBackup>,
    /// The backup a new seed would start from (`disaster::restore_source`; it may be another
    /// cluster's).
    pub restore: Option<runc_etcd_api::EtcdBackup>,
    pub nodes: Vec<NodeInfo>,
    /// None: no member answered (none started yet, or quorum lost).
    pub etcd: Option<EtcdView>,
    /// Each live member as its own side reports it (`evidence`), by member name.
    pub said: BTreeMap<String, Said>,
}

/// Whether a member of `c` may be placed on `node`: selector and taints allow it, and the node
/// is schedulable, Ready and has an internal address.
pub fn node_info(c: &EtcdCluster, node: &Node) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let ip = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address);
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    NodeInfo {
        eligible: runc_etcd_api::scheduling::placeable(&c.spec.node_selector, &c.spec.tolerations, node)
            && ready
            && schedulable
            && ip.is_some(),
        ready,
        name,
        ip,
    }
}

/// The EtcdMember whose peer URL is this etcd member's.
pub fn object_of<'a>(c: &EtcdCluster, members: &'a [EtcdMember], m: &MemberInfo) -> Option<&'a EtcdMember> {
    members
        .iter()
        .find(|o| m.peer_urls.contains(&children::peer_url(c, &o.spec.ip)))
}

/// The least time a learner that is not healthy is given before it is replaced (a voter gets
/// `spec.recovery.memberUnhealthyTimeout`).
const LEARNER_TIMEOUT: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_secs(300);

/// How long a learner that is not healthy is given before it counts as failed: the member
/// timeout, and at least LEARNER_TIMEOUT.
pub fn learner_timeout(c: &EtcdCluster) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(c.spec.recovery.member_timeout())
        .unwrap_or_default()
        .max(LEARNER_TIMEOUT)
}

/// Since when the last status saw member `name` unhealthy.
fn unhealthy_since(c: &EtcdCluster, name: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let status = c.status.as_ref()?;
    let m = status.members.iter().find(|m| m.name == name)?;
    m.unhealthy_since.as_ref().map(|t| t.0)
}

/// Joins etcd's view with the EtcdMembers and nodes into the planner's input, as of `now`.
pub fn planner_input(c: &EtcdCluster, view: &View, now: k8s_openapi::jiff::Timestamp) -> plan::Observed {
    let timeout = k8s_openapi::jiff::SignedDuration::try_from(c.spec.recovery.member_timeout()).unwrap_or_default();
    let members = match &view.etcd {
        Some(etcd) => etcd
            .members
            .iter()
            .map(|m| {
                let obj = object_of(c, &view.members, m);
                let name = obj
                    .map(|o| o.spec.member_name.clone())
                    .unwrap_or_else(|| display_name(m));
                let healthy = etcd.healthy.contains_key(&m.id);
                // Its data is gone (its agent says): waiting cannot bring it back.
                let lost = obj.is_some_and(|o| o.status.as_ref().and_then(|s| s.phase) == Some(MemberPhase::DataLost));
                // Replaced only on its own side's word (or its node's): one the operator cannot
                // reach but whose agent says it serves is left alone.
                let down = obj.is_none() || view.said.get(&name).is_some_and(Said::down);
                // A learner not healthy yet is usually still being made (its image pulled, the
                // snapshot sent): it gets at least LEARNER_TIMEOUT, or a short member timeout
                // would replace it again and again on a slow node, each successor starting over.
                let timeout = if m.is_learner { learner_timeout(c) } else { timeout };
                let overdue =
                    !healthy && down && (lost || unhealthy_since(c, &name).is_some_and(|since| since + timeout <= now));
                plan::Member {
                    node: obj.map(|o| o.spec.node_name.clone()).unwrap_or_default(),
                    voter: !m.is_learner,
                    started: m.started(),
                    healthy,
                    leader: m.id == etcd.leader,
                    overdue,
                    name,
                }
            })
            .collect(),
        // Nobody answers: every planned member counts as a voter that is down.
        None => view
            .members
            .iter()
            .map(|o| plan::Member {
                name: o.spec.member_name.clone(),
                node: o.spec.node_name.clone(),
                voter: true,
                started: false,
                healthy: false,
                leader: false,
                overdue: false,
            })
            .collect(),
    };
    // The node of a member just replaced gets its successor, if it is still eligible.
    let prefer_node = c
        .status
        .as_ref()
        .and_then(|s| s.last_operation.as_ref())
        .filter(|op| op.kind == OperationKind::ReplaceMember && op.state == OperationState::Succeeded)
        .and_then(|op| op.node.clone());
    plan::Observed {
        size: c.spec.size.max(1) as usize,
        members,
        nodes: view
            .nodes
            .iter()
            .map(|n| plan::Node {
                name: n.name.clone(),
                eligible: n.eligible,
            })
            .collect(),
        prefer_node,
    }
}

/// The members as the upgrade planner sees them (those not being removed).
pub fn upgrade_input(c: &EtcdCluster, view: &View) -> Vec<upgrade::Member> {
    view.members
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| {
            let peer = children::peer_url(c, &o.spec.ip);
            let found = view
                .etcd
                .as_ref()
                .and_then(|e| Some((e, e.members.iter().find(|m| m.peer_urls.contains(&peer))?)));
            let status = found.and_then(|(e, m)| e.healthy.get(&m.id));
            upgrade::Member {
                name: o.spec.member_name.clone(),
                image: o.spec.image.clone(),
                settings_current: o.spec.etcd == children::tuning(c),
                prepared: o.status.as_ref().and_then(|s| s.prepared_image.clone()),
                version: status.map(|s| s.version.clone()),
                healthy: status.is_some(),
                leader: found.is_some_and(|(e, m)| m.id == e.leader),
            }
        })
        .collect()
}

/// The members' databases as the maintenance planner sees them.
pub fn maintenance_input(c: &EtcdCluster, view: &View) -> Vec<maintenance::Member> {
    let Some(etcd) = &view.etcd else {
        return Vec::new();
    };
    etcd.members
        .iter()
        .map(|m| {
            let status = etcd.healthy.get(&m.id);
            maintenance::Member {
                name: object_of(c, &view.members, m)
                    .map(|o| o.spec.member_name.clone())
                    .unwrap_or_else(|| display_name(m)),
                db_size: status.map_or(0, |s| s.db_size),
                db_size_in_use: status.map_or(0, |s| s.db_size_in_use),
                healthy: status.is_some(),
                leader: m.id == etcd.leader,
            }
        })
        .collect()
}

/// etcd's name for a member, or its ID while it has not started.
pub fn display_name(m: &MemberInfo) -> String {
    if m.started() {
        m.name.clone()
    } else {
        format!("{:x}", m.id)
    }
}

/// What one member says of itself, each question within a few seconds.
enum Asked {
    /// A voter: its view of the membership, and its health.
    Voter(Answer),
    /// A learner (it cannot list members): its health, if it is healthy.
    Learner(Option<EndpointStatus>),
}

/// `what` of `endpoint`, within a few seconds; None (logged) when it fails or times out.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    endpoint: &str,
    question: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(4), question).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::debug!("{what} of {endpoint}: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("{what} of {endpoint}: timed out");
            None
        }
    }
}

async fn ask(access: &Access, endpoint: String) -> Option<Asked> {
    // The health check reads the member's status first: the status is asked alone only when
    // the member is not healthy.
    let health = within("health", &endpoint, access.health(&endpoint)).await;
    let is_learner = match &health {
        Some(s) => s.is_learner,
        None => within("status", &endpoint, access.status(&endpoint)).await?.is_learner,
    };
    if is_learner {
        return Some(Asked::Learner(health));
    }
    let list = async {
        let client = access.connect(std::slice::from_ref(&endpoint)).await?;
        etcd::membership(&client).await
    };
    let membership = within("member list", &endpoint, list).await?;
    Some(Asked::Voter(Answer {
        endpoint,
        membership,
        health,
    }))
}

/// Asks every planned member for its own view and keeps the one they agree on (`agree`); None
/// when none answers or no view is agreed on.
pub async fn etcd_view(c: &EtcdCluster, members: &[EtcdMember], access: &Access) -> Option<EtcdView> {
    let live: Vec<&EtcdMember> = members
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    let endpoints: std::collections::BTreeSet<String> =
        members.iter().map(|m| children::client_url(c, &m.spec.ip)).collect();
    let (mut answers, mut learners) = (Vec::new(), Vec::new());
    for asked in futures::future::join_all(endpoints.iter().map(|e| ask(access, e.clone())))
        .await
        .into_iter()
        .flatten()
    {
        match asked {
            Asked::Voter(a) => answers.push(a),
            Asked::Learner(health) => learners.extend(health),
        }
    }
    let recorded = live
        .iter()
        .filter_map(|m| m.status.as_ref()?.member_id.as_deref())
        .filter_map(|id| u64::from_str_radix(id, 16).ok())
        .collect();
    let agreed = agree::agree(&answers, live.len(), &recorded);
    if agreed.is_none() && !answers.is_empty() {
        tracing::warn!(
            "{}: {} member(s) answered, but no view of the membership is agreed on",
            c.instance(),
            answers.len()
        );
    }
    let agreed = agreed?;
    let mut healthy = agreed.healthy;
    // Learners of the agreed cluster, as it lists them.
    let listed_learner = |s: &EndpointStatus| {
        s.cluster_id == agreed.membership.cluster_id
            && agreed
                .membership
                .members
                .iter()
                .any(|m| m.id == s.member_id && m.is_learner)
    };
    healthy.extend(learners.into_iter().filter(listed_learner).map(|s| (s.member_id, s)));
    // Members etcd lists that no EtcdMember places (added by hand): asked as before.
    let unplaced = agreed
        .membership
        .members
        .iter()
        .filter(|m| m.started() && !m.client_urls.iter().any(|u| endpoints.contains(u)));
    let checks = unplaced.map(|m| async move {
        let url = m.client_urls.first()?;
        let status = tokio::time::timeout(Duration::from_secs(4), access.health(url))
            .await
            .ok()?
            .ok()?;
        (status.cluster_id == agreed.membership.cluster_id).then_some((m.id, status))
    });
    healthy.extend(futures::future::join_all(checks).await.into_iter().flatten());
    // Alarms are cluster-wide: asked of one agreeing, healthy member.
    let nospace = match healthy.values().next() {
        Some(s) => match access.connect(std::slice::from_ref(&s.endpoint)).await {
            Ok(client) => etcd::nospace_alarms(&client).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        },
        None => Vec::new(),
    };
    let diverged = agreed
        .diverged
        .iter()
        .map(|(endpoint, what)| {
            let who = members
                .iter()
                .find(|m| children::client_url(c, &m.spec.ip) == *endpoint)
                .map_or(endpoint.clone(), |m| {
                    format!("{} on node {}", m.spec.member_name, m.spec.node_name)
                });
            format!("{who}: {what}")
        })
        .collect();
    Some(EtcdView {
        members: agreed.membership.members,
        healthy,
        leader: agreed.leader,
        cluster_id: agreed.membership.cluster_id,
        nospace,
        diverged,
    })
}

/// Gathers everything one pass looks at.
pub async fn all(c: &EtcdCluster, ctx: &Ctx, access: &Access) -> Result<View> {
    let members: Api<EtcdMember> = ctx.api(c);
    let members = members.list(&selector(c)).await?.items;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let nodes: Vec<NodeInfo> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| node_info(c, n))
        .collect();
    let etcd = etcd_view(c, &members, access).await;
    let said = evidence(c, ctx, &members, &nodes).await?;
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
        said,
    })
}

/// How long an agent's heartbeat may stay unchanged before it counts as silent, when its Lease
/// does not say (agents renew every 10 s, for 40 s).
const HEARTBEAT_TTL: Duration = Duration::from_secs(40);

/// What each live member's own side says: its node, its agent's heartbeat and report.
async fn evidence(
    c: &EtcdCluster,
    ctx: &Ctx,
    members: &[EtcdMember],
    nodes: &[NodeInfo],
) -> Result<BTreeMap<String, Said>> {
    let leases: Api<Lease> = ctx.api(c);
    let leases = leases.list(&ListParams::default()).await?.items;
    let now = tokio::time::Instant::now();
    Ok(members
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .map(|m| {
            let ready = nodes.iter().find(|n| n.name == m.spec.node_name).map(|n| n.ready);
            let fresh = leases.iter().find(|l| l.metadata.name == m.metadata.name).map(|l| {
                let ttl = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_duration_seconds)
                    .map_or(HEARTBEAT_TTL, |s| Duration::from_secs(s.max(1) as u64));
                let key = format!("{}/{}", c.ns(), m.name_any());
                let version = l.metadata.resource_version.clone().unwrap_or_default();
                ctx.heartbeats.fresh(&key, &version, now, ttl)
            });
            (
                m.spec.member_name.clone(),
                crate::operator::evidence::said(m, ready, fresh),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus, Taint};

    fn cluster(extra: &str) -> EtcdCluster {
        serde_saphyr::from_str(&format!(
            "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: main, namespace: prod, uid: u1}}\nspec:\n  version: 3.5.16\n{extra}"
        ))
        .unwrap()
    }

    fn node(labels: &[(&str, &str)], taint: Option<&str>, ready: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        n.spec = Some(NodeSpec {
            taints: taint.map(|k| {
                vec![Taint {
                    key: k.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "10.0.0.1".into(),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn eligibility_follows_selector_taints_and_readiness() {
        let plain = cluster("");
        assert!(node_info(&plain, &node(&[], None, true)).eligible);
        assert!(!node_info(&plain, &node(&[], None, false)).eligible, "not Ready");
        assert!(
            !node_info(&plain, &node(&[], Some("dedicated"), true)).eligible,
            "tainted"
        );
        let selective =
            cluster("  nodeSelector: {etcd: \"yes\"}\n  tolerations: [{key: dedicated, operator: Exists}]\n");
        assert!(!node_info(&selective, &node(&[], None, true)).eligible, "not selected");
        let ok = node_info(&selective, &node(&[("etcd", "yes")], Some("dedicated"), true));
        assert!(ok.eligible);
        assert_eq!(ok.ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn etcd_members_are_matched_to_objects_by_peer_url() {
        let c = cluster("");
        let p = children::PlannedMember {
            name: "main-a".into(),
            node: "n1".into(),
            ip: "10.0.0.1".into(),
            initial_cluster: vec![],
            state: runc_etcd_api::InitialClusterState::Existing,
            restore_from: None,
        };
        let obj = children::etcd_member(&c, &p);
        let learner = MemberInfo {
            id: 0xab,
            name: String::new(),
            peer_urls: vec!["https://10.0.0.1:2380".into()],
            client_urls: vec![],
            is_learner: true,
        };
        let view = View {
            members: vec![obj],
            backups: vec![],
            restore: None,
            nodes: vec![],
            said: BTreeMap::new(),
            etcd: Some(EtcdView {
                members: vec![learner],
                ..Default::default()
            }),
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let input = planner_input(&c, &view, now);
        assert_eq!(input.members[0].name, "main-a");
        assert_eq!(input.members[0].node, "n1");
        assert!(!input.members[0].voter && !input.members[0].started);
        assert!(!input.members[0].overdue, "no recovery clock yet");
    }

    #[test]
    fn a_member_is_overdue_once_unhealthy_past_the_timeout() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let mut c = cluster("  recovery: {memberUnhealthyTimeout: 30s}\n");
        let sick = MemberInfo {
            id: 7,
            name: "main-b".into(),
            peer_urls: vec!["https://10.0.0.2:2380".into()],
            client_urls: vec!["https://10.0.0.2:2379".into()],
            is_learner: false,
        };
        let view = View {
            members: vec![],
            backups: vec![],
            restore: None,
            nodes: vec![],
            said: BTreeMap::new(),
            etcd: Some(EtcdView {
                members: vec![sick],
                ..Default::default()
            }),
        };
        let now = Timestamp::now();
        let since = |secs: i64| {
            let mut status = runc_etcd_api::EtcdClusterStatus::default();
            status.members.push(runc_etcd_api::MemberStatus {
                name: "main-b".into(),
                unhealthy_since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    now - SignedDuration::from_secs(secs),
                )),
                ..Default::default()
            });
            Some(status)
        };
        c.status = since(20);
        assert!(!planner_input(&c, &view, now).members[0].overdue);
        c.status = since(31);
        assert!(planner_input(&c, &view, now).members[0].overdue);
        // A learner still being made is not replaced at the short timeout, only past 5 min.
        let mut learner = view;
        learner.etcd.as_mut().unwrap().members[0].is_learner = true;
        assert!(!planner_input(&c, &learner, now).members[0].overdue);
        c.status = since(301);
        assert!(planner_input(&c, &learner, now).members[0].overdue);
    }
}
