//! Step 1 of a reconcile: the cluster's own objects, made idempotently each pass — the
//! finalizer, valid names, the TLS Secrets (the CA and the controller's client identity, the
//! members' certificates for their hosts' requests), the agent DaemonSet and the client Service;
//! retired members let go. After `observe`, the agents' Role (`agent_access`).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::error::{Error, Result};
use crate::operator::context::{Ctx, apply, apply_changed, selector};
use crate::operator::observe::View;
use crate::operator::{certs, children};
use runc_etcd_api::contract::{
    CLUSTER_FINALIZER, ClusterNames, Keyring, MEMBER_FINALIZER, NODE_LABEL, let_go_if_retired, node_label, released,
};
use runc_etcd_api::objects::create_or_keep;
use runc_etcd_api::{ClusterPhase, EtcdCluster, EtcdMember};
use runc_etcd_host::etcd::Access;
use runc_etcd_host::names::{InstanceName, MemberName};
use runc_etcd_host::pki;

/// What the cluster's objects give the rest of the pass.
pub enum Ensured {
    /// Something was written on the cluster (the finalizer, the cluster token): the next pass,
    /// on the updated object, goes on.
    Again,
    /// Every object is in place; etcd is reached with this, and the cluster's CAs are these
    /// (None without TLS).
    Ready(Access, Option<Box<Keyring>>),
    /// A Secret the members depend on is gone or replaced: reported, and nothing else is done
    /// until it is back.
    Blocked(Problem),
}

pub async fn objects(c: &EtcdCluster, ctx: &Ctx) -> Result<Ensured> {
    if !c.finalizers().iter().any(|f| f == CLUSTER_FINALIZER) {
        let api: Api<EtcdCluster> = ctx.api(c);
        let patch = runc_etcd_api::objects::finalizers_patch(c, Some(CLUSTER_FINALIZER), None);
        api.patch(&c.name(), &PatchParams::default(), &patch).await?;
        return Ok(Ensured::Again);
    }
    if let Err(msg) = check_names(c) {
        refuse(c, ctx, &msg).await?;
        return Err(Error::invalid(
            "metadata.name",
            msg,
            "use a shorter name or namespace (delete this EtcdCluster and create it under the new name)",
        ));
    }
    let (access, keyring) = match tls(c, ctx).await? {
        Tls::Ready(access, keyring) => (access, keyring),
        Tls::Blocked(problem) => return Ok(Ensured::Blocked(problem)),
    };
    if c.status.as_ref().and_then(|s| s.cluster_token.as_ref()).is_none() {
        let token = cluster_token(c, had_members(c, ctx).await?);
        ctx.patch_status(c, json!({ "clusterToken": token })).await?;
        return Ok(Ensured::Again);
    }
    let ds: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.agent.namespace);
    let restore = restore_dir(c, ctx).await?;
    let agents = children::agent_daemonset(c, &ctx.agent, restore.as_deref());
    apply_changed(&ds, &children::agent_daemonset_name(c), &agents).await?;
    let svc: Api<Service> = ctx.api(c);
    apply_changed(&svc, &c.client_service(), &children::client_service(c)).await?;
    if let Some(keyring) = &keyring {
        certs::members(c, ctx, keyring).await?;
        certs::apps(c, ctx, keyring).await?;
    }
    restore_members(c, ctx).await?;
    Ok(Ensured::Ready(access, keyring))
}

/// The host folder of the backup a new seed would restore from, if it is one in a host folder
/// (checked as a spec's is).
async fn restore_dir(c: &EtcdCluster, ctx: &Ctx) -> Result<Option<std::path::PathBuf>> {
    let Some(name) = crate::operator::disaster::restore_source(c) else {
        return Ok(None);
    };
    let backups: Api<runc_etcd_api::EtcdBackup> = ctx.api(c);
    let Some(b) = backups.get_opt(&name).await? else {
        return Ok(None);
    };
    let dir = b.status.and_then(|s| s.destination).and_then(|d| d.host_path);
    Ok(dir.and_then(|h| crate::backup::check_host_path(&h.path).ok()))
}

/// The agents may read exactly the Secrets they need (`children::agent_role`): each member's
/// certificates, and the S3 credentials of the cluster's backups and of the one a new seed
/// restores from. Written only when the names change.
pub async fn agent_access(c: &EtcdCluster, ctx: &Ctx, view: &View) -> Result<()> {
    let mut secrets: BTreeSet<String> = view.members.iter().filter_map(|m| m.spec.tls_secret.clone()).collect();
    let s3 = |d: Option<&runc_etcd_api::S3Destination>| d.map(|s| s.credentials_secret.clone());
    secrets.extend(s3(c.spec.backup.as_ref().and_then(|b| b.s3.as_ref())));
    for b in view.backups.iter().chain(&view.restore) {
        let dest = b.status.as_ref().and_then(|s| s.destination.as_ref());
        secrets.extend(s3(dest.and_then(|d| d.s3.as_ref())));
    }
    let role = children::agent_role(c, &secrets);
    let roles: Api<Role> = ctx.api(c);
    if roles.get_opt(&c.agent_name()).await?.map(|r| r.rules) != Some(role.rules.clone()) {
        roles.patch(&c.agent_name(), &apply(), &Patch::Apply(&role)).await?;
    }
    let bindings: Api<RoleBinding> = ctx.api(c);
    if bindings.get_opt(&c.agent_name()).await?.is_none() {
        create_or_keep(&bindings, &children::agent_role_binding(c, &ctx.agent)).await?;
    }
    Ok(())
}

/// The label by which a namespace's Pod Security Admission decides which pods it admits.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Why the agents cannot run, if they cannot: the namespace they live in enforces a Pod
/// Security level that refuses privileged pods (`baseline`, `restricted`), so no agent pod is
/// made and no member can be started, changed or stopped. Not knowing (no right to read the
/// namespace) is not a reason.
pub async fn agents_forbidden(ctx: &Ctx) -> Result<Option<String>> {
    let ns = &ctx.agent.namespace;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let found = match namespaces.get_opt(ns).await {
        Ok(found) => found,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let level = found.and_then(|n| n.labels().get(POD_SECURITY_ENFORCE).cloned());
    Ok(level.filter(|l| l == "baseline" || l == "restricted").map(|level| {
        format!(
            "agents cannot run: namespace {ns} enforces Pod Security level {level}, and the agents are privileged pods (they run etcd's units and data on the hosts); nothing is changed until they run. Fix: kubectl label namespace {ns} {POD_SECURITY_ENFORCE}=privileged --overwrite"
        )
    }))
}

/// EtcdMembers deleted or relabelled by hand are made again as they were: members leave only
/// through the controller's steps (etcd removes them first, quorum kept), and their agents keep
/// running a member whose EtcdMember was not released (`contract::released`).
async fn restore_members(c: &EtcdCluster, ctx: &Ctx) -> Result<()> {
    let api: Api<EtcdMember> = ctx.api(c);
    for m in api.list(&selector(c)).await?.items {
        let name = m.name_any();
        if let_go_if_retired(&api, &m).await? {
            continue;
        }
        if m.metadata.deletion_timestamp.is_some() && !released(&m) {
            // A deleting object cannot be taken back: let it go (its member keeps running) and
            // make it again from what it said.
            let patch = runc_etcd_api::objects::finalizers_patch(&m, None, Some(MEMBER_FINALIZER));
            api.patch(&name, &PatchParams::default(), &patch).await?;
            let again = EtcdMember {
                metadata: kube::api::ObjectMeta {
                    name: m.metadata.name.clone(),
                    namespace: m.metadata.namespace.clone(),
                    labels: m.metadata.labels.clone(),
                    owner_references: m.metadata.owner_references.clone(),
                    finalizers: Some(vec![MEMBER_FINALIZER.into()]),
                    ..Default::default()
                },
                spec: m.spec.clone(),
                status: None,
            };
            create_again(&api, &again).await?;
            let note = format!(
                "EtcdMember {name} was deleted by hand: it was made again and its member kept running. Members leave only through the controller (lower spec.size; a failed member is replaced by itself)"
            );
            ctx.event(c, EventType::Warning, "MemberRestored", Some(&name), note)
                .await;
        } else if m.labels().get(NODE_LABEL) != Some(&node_label(&m.spec.node_name)) {
            let patch = json!({"metadata": {"labels": {NODE_LABEL: node_label(&m.spec.node_name)}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            let note = format!(
                "EtcdMember {name}'s node label was changed by hand: put back to {}",
                m.spec.node_name
            );
            ctx.event(c, EventType::Warning, "MemberRestored", Some(&name), note)
                .await;
        }
    }
    Ok(())
}

/// Creates `m` once its deleted predecessor of the same name is gone (a few seconds at most).
async fn create_again(api: &Api<EtcdMember>, m: &EtcdMember) -> Result<()> {
    for _ in 0..25 {
        match api.create(&kube::api::PostParams::default(), m).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::transient(
        "making a hand-deleted EtcdMember again",
        "its predecessor is still being deleted",
    ))
}

/// A spec the hosts cannot carry: said in an Event and in status; nothing else is made.
async fn refuse(c: &EtcdCluster, ctx: &Ctx, msg: &str) -> Result<()> {
    ctx.event(c, EventType::Warning, "InvalidSpec", None, msg.to_string())
        .await;
    let degraded = json!({"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": msg,
        "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now())});
    ctx.patch_status(c, json!({"phase": ClusterPhase::Failed, "conditions": [degraded]}))
        .await
}

/// What the CA Secret means for this pass, from what it holds (the signing CA's fingerprint
/// and those of the trust bundle), the fingerprint status recorded, and whether the cluster has
/// (or had) members.
#[derive(Debug, PartialEq)]
enum CaRule {
    /// The stored CA is the cluster's: use it (recording its fingerprint if status lacks it, or
    /// holds the one a rotation moved away from, which the trust bundle still holds).
    Use { record: bool },
    /// No CA and no member ever: make one.
    Create,
    /// Members exist whose certificates chain to a CA that is gone.
    Missing,
    /// The Secret holds another CA than the one the members trust.
    Replaced { found: String },
}

fn ca_rule(stored: Option<(&str, &[String])>, recorded: Option<&str>, had_members: bool) -> CaRule {
    match stored {
        None if had_members => CaRule::Missing,
        None => CaRule::Create,
        Some((found, trusted)) => match recorded {
            Some(recorded) if !trusted.iter().any(|t| t == recorded) && had_members => {
                CaRule::Replaced { found: found.into() }
            }
            Some(recorded) => CaRule::Use {
                record: recorded != found,
            },
            None => CaRule::Use { record: true },
        },
    }
}

/// The token new members bootstrap with: of this incarnation (its UID), so that a cluster made
/// again under the same name never gets the old one's member and cluster IDs; a cluster that
/// already has members keeps the token they were made with.
fn cluster_token(c: &EtcdCluster, had_members: bool) -> String {
    match (&c.metadata.uid, had_members) {
        (Some(uid), false) => format!("{}-{uid}", c.instance()),
        _ => c.instance(),
    }
}

/// Whether the cluster has or had members: their certificates chain to its CA, so a new CA would
/// lock the operator out of them.
async fn had_members(c: &EtcdCluster, ctx: &Ctx) -> Result<bool> {
    if c.status
        .as_ref()
        .is_some_and(|s| s.cluster_id.is_some() || !s.members.is_empty())
    {
        return Ok(true);
    }
    let members: Api<EtcdMember> = ctx.api(c);
    Ok(!members.list(&selector(c).limit(1)).await?.items.is_empty())
}

/// How to reach etcd, from what is stored, making nothing (a paused cluster's pass): None
/// without a client identity yet.
pub async fn read_access(c: &EtcdCluster, ctx: &Ctx) -> Result<Option<Access>> {
    if !c.spec.tls.enabled {
        return Ok(Some(Access::plain()));
    }
    let secrets: Api<Secret> = ctx.api(c);
    Ok(secrets
        .get_opt(&c.client_secret())
        .await?
        .as_ref()
        .and_then(runc_etcd_api::contract::read_client)
        .map(Access::tls))
}

/// The cluster CA and the controller's client identity, created once and kept in Secrets. A CA
/// Secret that is gone or replaced while members exist blocks the pass (a new CA would make
/// every member unverifiable, hence "lost"); a missing client identity is issued again from the
/// kept CA, which every member still trusts, and one late in its validity is renewed (`certs`).
async fn tls(c: &EtcdCluster, ctx: &Ctx) -> Result<Tls> {
    if !c.spec.tls.enabled {
        return Ok(Tls::Ready(Access::plain(), None));
    }
    let secrets: Api<Secret> = ctx.api(c);
    let stored = secrets
        .get_opt(&c.ca_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_keyring(&s));
    let fingerprint = stored.as_ref().and_then(|k| pki::fingerprint(&k.signing.cert));
    if stored.is_some() && fingerprint.is_none() {
        return Ok(Tls::Blocked(Problem::ca_unreadable(c)));
    }
    let trusted = stored
        .as_ref()
        .map(|k| pki::bundle_fingerprints(&k.trust))
        .unwrap_or_default();
    let recorded = c.status.as_ref().and_then(|s| s.ca_fingerprint.as_deref());
    let had_members = had_members(c, ctx).await?;
    let found = fingerprint.as_deref().map(|f| (f, trusted.as_slice()));
    let keyring = match ca_rule(found, recorded, had_members) {
        CaRule::Missing => return Ok(Tls::Blocked(Problem::ca_missing(c))),
        CaRule::Replaced { found } => {
            return Ok(Tls::Blocked(Problem::ca_replaced(
                c,
                &found,
                recorded.unwrap_or_default(),
            )));
        }
        CaRule::Use { record } => {
            let keyring = stored.expect("a fingerprint comes from a stored CA");
            if record {
                ctx.patch_status(c, json!({"caFingerprint": fingerprint})).await?;
            }
            keyring
        }
        CaRule::Create => {
            let ca = pki::new_ca(&c.instance())?;
            create_or_keep(&secrets, &children::ca_secret(c, &ca)).await?;
            // Another pass may have won the race: use what is stored.
            let stored = secrets.get(&c.ca_secret()).await?;
            let keyring = runc_etcd_api::contract::read_keyring(&stored)
                .ok_or_else(|| Error::transient("reading the CA Secret", "no ca.crt/ca.key"))?;
            ctx.patch_status(c, json!({"caFingerprint": pki::fingerprint(&keyring.signing.cert)}))
                .await?;
            keyring
        }
    };
    let ca = &keyring.signing;
    if let Some(tls) = secrets
        .get_opt(&c.client_secret())
        .await?
        .and_then(|s| runc_etcd_api::contract::read_client(&s))
    {
        let tls = certs::client(c, ctx, ca, tls).await?;
        return Ok(Tls::Ready(Access::tls(tls), Some(Box::new(keyring))));
    }
    let mut tls = pki::issue_client(ca, &format!("{} client", c.instance()), c.spec.tls.validity(), None)?;
    tls.ca = keyring.trust.clone();
    create_or_keep(&secrets, &children::client_secret(c, &tls)).await?;
    if had_members {
        let note = format!(
            "Secret {} was missing: a new client identity was issued from the cluster's CA (clients that used the old one keep working until it expires)",
            c.client_secret()
        );
        ctx.event(c, EventType::Warning, "ClientCertificateReissued", None, note)
            .await;
    }
    let stored = secrets.get(&c.client_secret()).await?;
    Ok(Tls::Ready(
        Access::tls(runc_etcd_api::contract::read_client(&stored).unwrap_or(tls)),
        Some(Box::new(keyring)),
    ))
}

enum Tls {
    /// How to reach etcd, and the cluster's CAs (None without TLS).
    Ready(Access, Option<Box<Keyring>>),
    Blocked(Problem),
}

/// Why a pass stops before touching anything: the Degraded reason and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

const RESTORE: &str = "restore the Secret from your backup of it (kubectl apply -f <saved secret>.yaml); until then the members keep serving and the operator changes nothing";

impl Problem {
    fn ca_missing(c: &EtcdCluster) -> Problem {
        Problem {
            reason: "CertificateAuthorityMissing",
            message: format!(
                "Secret {} (the cluster CA) is gone, and the members' certificates chain to it: a new CA would lock the operator out of them. Fix: {RESTORE}",
                c.ca_secret()
            ),
        }
    }

    fn ca_unreadable(c: &EtcdCluster) -> Problem {
        Problem {
            reason: "CertificateAuthorityMissing",
            message: format!(
                "Secret {} holds no readable CA certificate (ca.crt as PEM, with ca.key). Fix: {RESTORE}",
                c.ca_secret()
            ),
        }
    }

    /// The API server refused the operator a request: its RBAC lacks a permission.
    pub fn forbidden(refusal: &str) -> Problem {
        Problem {
            reason: "OperatorForbidden",
            message: format!(
                "the API server refused the operator: {refusal}. Fix: grant it; the chart's operator ClusterRole holds every permission the operator uses (helm upgrade to this operator's chart version, or restore a ClusterRole edited by hand); the operator retries by itself"
            ),
        }
    }

    fn ca_replaced(c: &EtcdCluster, found: &str, expected: &str) -> Problem {
        Problem {
            reason: "CertificateAuthorityMismatch",
            message: format!(
                "Secret {} holds another CA ({found}) than the one the members' certificates chain to ({expected}). Fix: put the original back: {RESTORE}",
                c.ca_secret()
            ),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(ns: &str, name: &str) -> EtcdCluster {
        let mut c = EtcdCluster::new(name, serde_json::from_value(json!({"version": "3.5.16"})).unwrap());
        c.metadata.namespace = Some(ns.into());
        c
    }

    #[test]
    fn a_ca_is_made_only_for_a_cluster_that_never_had_members() {
        let (a, b) = (vec!["sha256:a".to_string()], vec!["sha256:b".to_string()]);
        assert_eq!(ca_rule(None, None, false), CaRule::Create);
        assert_eq!(ca_rule(None, Some("sha256:a"), false), CaRule::Create, "no member ever");
        assert_eq!(
            ca_rule(None, None, true),
            CaRule::Missing,
            "status lost, members remain"
        );
        assert_eq!(ca_rule(None, Some("sha256:a"), true), CaRule::Missing);
        assert_eq!(
            ca_rule(Some(("sha256:a", &a)), Some("sha256:a"), true),
            CaRule::Use { record: false }
        );
        assert_eq!(
            ca_rule(Some(("sha256:a", &a)), None, true),
            CaRule::Use { record: true },
            "adopted"
        );
        assert_eq!(
            ca_rule(Some(("sha256:b", &b)), Some("sha256:a"), true),
            CaRule::Replaced {
                found: "sha256:b".into()
            }
        );
        assert_eq!(
            ca_rule(Some(("sha256:b", &b)), Some("sha256:a"), false),
            CaRule::Use { record: true },
            "nothing chains to the old one yet"
        );
        let both = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        assert_eq!(
            ca_rule(Some(("sha256:b", &both)), Some("sha256:a"), true),
            CaRule::Use { record: true },
            "a rotation signs with the new CA while the old one is still trusted"
        );
        assert_eq!(
            ca_rule(Some(("sha256:b", &b)), Some("sha256:b"), true),
            CaRule::Use { record: false },
            "and records it before the old one leaves"
        );
    }

    #[test]
    fn every_incarnation_gets_its_own_token_and_old_clusters_keep_theirs() {
        let mut c = cluster("prod", "main");
        c.metadata.uid = Some("5d1c0b5e-0000-4000-8000-000000000001".into());
        let token = cluster_token(&c, false);
        assert_eq!(token, "prod.main-5d1c0b5e-0000-4000-8000-000000000001");
        runc_etcd_host::names::check_token("status.clusterToken", &token).unwrap();
        c.metadata.uid = Some("77aa0b5e-0000-4000-8000-000000000002".into());
        assert_ne!(cluster_token(&c, false), token, "the same name made again");
        assert_eq!(cluster_token(&c, true), "prod.main", "members made before the token");
        let longest = cluster(&"n".repeat(31), &"c".repeat(31));
        let longest = EtcdCluster {
            metadata: kube::api::ObjectMeta {
                uid: Some("5d1c0b5e-0000-4000-8000-000000000001".into()),
                ..longest.metadata
            },
            ..longest
        };
        runc_etcd_host::names::check_token("status.clusterToken", &cluster_token(&longest, false)).unwrap();
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
}
