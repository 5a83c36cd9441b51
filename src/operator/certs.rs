//! Certificates kept valid for years of service, for keys that stay where they are used. A
//! member's key is made by its agent on its host, which asks for certificates with a signing
//! request in the EtcdMember's status; the controller checks it (its signature, the member's
//! name) and writes the certificates, never a key, into the member's Secret, with the names it
//! chooses itself. Every member's Secret and the client identity
//! are issued again from the cluster CA, each certificate keeping its key, once two thirds of
//! `spec.tls.certificateValidity` has passed, or when a member's serving certificate lacks a
//! name it must carry (the client Service's DNS names and ClusterIP, new since it was issued).
//! The agents write the renewed files on their hosts, and etcd, which reads them at every new
//! connection, serves them without a restart: no member goes down for a renewal.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;

use crate::error::Result;
use crate::operator::children;
use crate::operator::context::{Ctx, selector};
use runc_etcd_api::contract::{self, ClusterNames, Keyring};
use runc_etcd_api::objects::create_or_keep;
use runc_etcd_api::{EtcdCluster, EtcdMember};
use runc_etcd_host::names::{MemberName, parse_ip};
use runc_etcd_host::pki::{self, Ca, ClientTls, IssuedCerts, Policy};

/// How the cluster's leaves are issued: its validity, and the client Service's names in every
/// form a client in the cluster may use, with its ClusterIP once the API server gave it one.
pub fn policy(c: &EtcdCluster, cluster_domain: &str, cluster_ip: Option<IpAddr>) -> Policy {
    let svc = c.client_service();
    let ns = c.ns();
    Policy {
        validity: c.spec.tls.validity(),
        service_names: vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.{cluster_domain}"),
        ],
        service_ips: cluster_ip.into_iter().collect(),
    }
}

/// The policy, with the client Service's ClusterIP as the API server reports it.
pub async fn current_policy(c: &EtcdCluster, ctx: &Ctx) -> Result<Policy> {
    let svc: Api<Service> = ctx.api(c);
    let cluster_ip = svc
        .get_opt(&c.client_service())
        .await?
        .and_then(|s| s.spec?.cluster_ip)
        .and_then(|ip| ip.parse().ok());
    Ok(policy(c, &ctx.cluster_domain, cluster_ip))
}

/// Whether a certificate was signed by another CA than `signing` (a rotation moved on).
fn foreign(pem: &str, signing: &Ca) -> bool {
    pki::cert_info(pem).map(|i| i.issuer) != pki::subject(&signing.cert)
}

/// Whether a member's certificates are to be issued again at `now` by `signing`.
pub fn member_due(certs: &IssuedCerts, signing: &Ca, policy: &Policy, now: chrono::DateTime<chrono::Utc>) -> bool {
    [&certs.server, &certs.peer, &certs.client]
        .iter()
        .any(|cert| pki::renewal_due(cert, policy.validity, now) || foreign(cert, signing))
        || pki::lacks_names(&certs.server, policy)
}

/// Whether a certificate expiring at `not_after` is overdue for renewal at `now`: in the last
/// sixth of its validity, half the renewal window (the last third) gone without a renewal
/// reaching it. Far enough ahead of expiry to act, late enough that a renewal in flight (a
/// Secret written, its agent about to install it) does not raise it.
pub fn overdue(
    not_after: chrono::DateTime<chrono::Utc>,
    validity: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let window = chrono::Duration::from_std(validity / 6).unwrap_or(chrono::Duration::MAX);
    now + window >= not_after
}

/// A client identity renewed (same key, same trust bundle: that is the rotation's to change)
/// when due or signed by a CA a rotation moved away from; None when it is not due.
fn renewed_identity(c: &EtcdCluster, signing: &Ca, cn: &str, stored: &ClientTls) -> Result<Option<ClientTls>> {
    let validity = c.spec.tls.validity();
    if !pki::renewal_due(&stored.cert, validity, chrono::Utc::now()) && !foreign(&stored.cert, signing) {
        return Ok(None);
    }
    Ok(Some(ClientTls {
        ca: stored.ca.clone(),
        ..pki::issue_client(signing, cn, validity, Some(&stored.key))?
    }))
}

/// The controller's client identity, renewed when due. Returns what to connect with.
pub async fn client(c: &EtcdCluster, ctx: &Ctx, ca: &Ca, stored: ClientTls) -> Result<ClientTls> {
    let Some(renewed) = renewed_identity(c, ca, &format!("{} client", c.instance()), &stored)? else {
        return Ok(stored);
    };
    replace(c, ctx, &children::client_secret(c, &renewed)).await?;
    let note = format!(
        "the client identity in Secret {} was renewed (same key), valid until {}",
        c.client_secret(),
        not_after(&renewed.cert)
    );
    ctx.event(c, EventType::Normal, "CertificateRenewed", None, note).await;
    Ok(renewed)
}

/// The applications' identities (`spec.tls.clients`): issued when asked for (CN: the name),
/// renewed like the controller's, and deleted once no longer asked for.
pub async fn apps(c: &EtcdCluster, ctx: &Ctx, keyring: &Keyring) -> Result<()> {
    let secrets: Api<Secret> = ctx.api(c);
    let wanted: BTreeSet<&str> = c.spec.tls.clients.iter().map(|a| a.name.as_str()).collect();
    for app in &wanted {
        let name = c.app_secret(app);
        match secrets.get_opt(&name).await?.as_ref().and_then(contract::read_client) {
            Some(stored) => {
                if let Some(renewed) = renewed_identity(c, &keyring.signing, app, &stored)? {
                    replace(c, ctx, &children::app_secret(c, app, &renewed)).await?;
                    let note = format!(
                        "the identity of application {app} in Secret {name} was renewed (same key), valid until {}",
                        not_after(&renewed.cert)
                    );
                    ctx.event(c, EventType::Normal, "CertificateRenewed", None, note).await;
                }
            }
            None => {
                let tls = ClientTls {
                    ca: keyring.trust.clone(),
                    ..pki::issue_client(&keyring.signing, app, c.spec.tls.validity(), None)?
                };
                create_or_keep(&secrets, &children::app_secret(c, app, &tls)).await?;
                let note = format!("application {app} has its client identity in Secret {name} (CN {app})");
                ctx.event(c, EventType::Normal, "ClientIdentityIssued", None, note)
                    .await;
            }
        }
    }
    for (app, _) in app_identities(c, ctx).await? {
        if !wanted.contains(app.as_str()) {
            secrets.delete(&c.app_secret(&app), &Default::default()).await?;
            let note = format!(
                "application {app} is no longer in spec.tls.clients: Secret {} deleted (its certificate stays valid until it expires; see docs/operations.md)",
                c.app_secret(&app)
            );
            ctx.event(c, EventType::Normal, "ClientIdentityDeleted", None, note)
                .await;
        }
    }
    Ok(())
}

/// The applications' identity Secrets there are (application name, identity).
pub async fn app_identities(c: &EtcdCluster, ctx: &Ctx) -> Result<Vec<(String, ClientTls)>> {
    let secrets: Api<Secret> = ctx.api(c);
    let selector = format!("{}={},{}", contract::CLUSTER_LABEL, c.name_any(), contract::APP_LABEL);
    Ok(secrets
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(|s| {
            let app = s.labels().get(contract::APP_LABEL)?.clone();
            Some((app, contract::read_client(s)?))
        })
        .collect())
}

/// Every client identity Secret of the cluster (the controller's, then the applications'), by
/// Secret name: what a CA rotation gives the trust bundle to.
pub async fn client_identities(c: &EtcdCluster, ctx: &Ctx) -> Result<Vec<(String, ClientTls)>> {
    let secrets: Api<Secret> = ctx.api(c);
    let own = secrets
        .get_opt(&c.client_secret())
        .await?
        .as_ref()
        .and_then(contract::read_client)
        .map(|tls| (c.client_secret(), tls));
    let apps = app_identities(c, ctx)
        .await?
        .into_iter()
        .map(|(app, tls)| (c.app_secret(&app), tls));
    Ok(own.into_iter().chain(apps).collect())
}

/// Every member's Secret written from its agent's request: issued when the member has none or
/// its certificates are for another key (a host that made a new one), renewed where due (same
/// key, same trust bundle: a rotation paces trust changes itself, one member at a time).
pub async fn members(c: &EtcdCluster, ctx: &Ctx, keyring: &Keyring) -> Result<()> {
    let ca = &keyring.signing;
    let policy = current_policy(c, ctx).await?;
    let now = chrono::Utc::now();
    let members: Api<EtcdMember> = ctx.api(c);
    let members = members.list(&selector(c)).await?.items;
    let stored = of_members(c, ctx, &members).await?;
    for m in members.iter().filter(|m| m.metadata.deletion_timestamp.is_none()) {
        let Some(csr) = m.status.as_ref().and_then(|s| s.certificate_request.as_deref()) else {
            continue; // its agent has not asked yet
        };
        let current = stored
            .iter()
            .find(|(s, _)| s.name_any() == m.name_any())
            .map(|(_, c)| c);
        let (why, reason) = match current {
            None => ("issued", "CertificateIssued"),
            Some(certs) if !certs.certify(csr) => ("issued for the new key its host made", "CertificateIssued"),
            Some(certs) if member_due(certs, ca, &policy, now) => ("renewed (same key)", "CertificateRenewed"),
            Some(_) => continue,
        };
        let member = MemberName::new(m.spec.member_name.clone())?;
        let issued = match pki::issue_requested(ca, &member, parse_ip(&m.spec.ip)?, &policy, csr) {
            Ok(issued) => issued,
            Err(e) => {
                let note = format!("member {member}'s certificate request is refused: {e}");
                ctx.event(
                    c,
                    EventType::Warning,
                    "CertificateRequestRefused",
                    Some(&m.name_any()),
                    note,
                )
                .await;
                continue;
            }
        };
        // A new member trusts what the others are to trust (a rotation's bundle); a renewal
        // keeps the member's bundle, which only the rotation changes.
        let issued = IssuedCerts {
            ca_cert: current.map_or_else(|| keyring.trust.clone(), |c| c.ca_cert.clone()),
            ..issued
        };
        let secret = children::member_tls_secret(c, &m.spec.member_name, &issued);
        if current.is_none() {
            create_or_keep(&ctx.api(c), &secret).await?;
        } else {
            replace(c, ctx, &secret).await?;
        }
        let note = format!(
            "the certificates of member {member} were {why}, valid until {}; its agent installs them (a renewal is served from etcd's next connection, without a restart)",
            not_after(&issued.server)
        );
        ctx.event(c, EventType::Normal, reason, Some(&m.name_any()), note).await;
    }
    Ok(())
}

/// Each of `members` with the certificates in its Secret (those whose Secret is there), from
/// one list of the cluster's Secrets.
pub async fn of_members<'a>(
    c: &EtcdCluster,
    ctx: &Ctx,
    members: &'a [EtcdMember],
) -> Result<Vec<(&'a EtcdMember, IssuedCerts)>> {
    let secrets: Api<Secret> = ctx.api(c);
    let selector = format!("{}={}", contract::CLUSTER_LABEL, c.name_any());
    let stored = secrets.list(&ListParams::default().labels(&selector)).await?.items;
    Ok(members
        .iter()
        .filter_map(|m| {
            let name = m.spec.tls_secret.as_ref()?;
            let secret = stored.iter().find(|s| s.name_any() == *name)?;
            Some((m, contract::read_member_certs(secret)?))
        })
        .collect())
}

fn not_after(pem: &str) -> String {
    pki::cert_info(pem).map_or_else(|| "?".into(), |i| i.not_after.to_rfc3339())
}

/// Writes a Secret's files over the stored ones. A member Secret made by an older version
/// loses the private keys it held.
async fn replace(c: &EtcdCluster, ctx: &Ctx, s: &Secret) -> Result<()> {
    let api: Api<Secret> = ctx.api(c);
    let mut data = serde_json::json!(s.data);
    if s.name_any().ends_with("-tls") && data.get("server.crt").is_some() {
        for key in ["server.key", "peer.key", "client.key"] {
            data[key] = serde_json::Value::Null;
        }
    }
    let patch = serde_json::json!({ "data": data });
    api.patch(&s.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cluster(validity: &str) -> EtcdCluster {
        let mut c: EtcdCluster = serde_saphyr::from_str(&format!(
            "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: main, namespace: prod}}\nspec:\n  version: 3.5.16\n  tls: {{certificateValidity: {validity}}}\n"
        ))
        .unwrap();
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn serving_certificates_name_the_client_service_every_way() {
        let p = policy(&cluster("90m"), "cluster.local", Some("10.96.0.10".parse().unwrap()));
        assert_eq!(p.validity, Duration::from_secs(5400));
        assert_eq!(
            p.names().collect::<Vec<_>>(),
            [
                "main-client",
                "main-client.prod",
                "main-client.prod.svc",
                "main-client.prod.svc.cluster.local",
                "10.96.0.10"
            ]
        );
        assert_eq!(
            policy(&cluster("1s"), "x", None).validity,
            Duration::from_secs(60),
            "at least a minute"
        );
    }

    #[test]
    fn members_are_renewed_late_in_their_validity_or_for_a_new_name() {
        let ca = pki::new_ca("prod.main").unwrap();
        let c = cluster("90m");
        let without_ip = policy(&c, "cluster.local", None);
        let certs = pki::issue(
            &ca,
            &"m1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            &without_ip,
            None,
        )
        .unwrap()
        .issued();
        let now = chrono::Utc::now();
        assert!(!member_due(&certs, &ca, &without_ip, now));
        assert!(member_due(
            &certs,
            &ca,
            &without_ip,
            now + chrono::Duration::minutes(61)
        ));
        let with_ip = policy(&c, "cluster.local", Some("10.96.0.10".parse().unwrap()));
        assert!(member_due(&certs, &ca, &with_ip, now), "the Service got its address");
        let rotated = pki::new_ca("prod.main").unwrap();
        assert!(
            member_due(&certs, &rotated, &without_ip, now),
            "signed by the CA a rotation left"
        );
    }
}
