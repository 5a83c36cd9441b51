//! Rotating the cluster CA with no member unreachable at any point, in three stages recorded on
//! the CA Secret (so a restarted controller resumes where its predecessor was):
//!
//! 1. **TrustBoth**: a new CA is made; the trust bundle becomes old + new, in the client Secret
//!    at once and in each member's Secret one member at a time. etcd reads its trust bundle
//!    only when it starts, so each member's agent restarts it: the next member goes only once
//!    every member is healthy and runs what its Secret holds.
//! 2. **Reissue**: the new CA signs; `certs` issues every member's certificates and the client
//!    identity again (same keys), which etcd serves from its next connection, without a restart.
//!    Every member trusts both CAs, so old and new certificates are accepted alike.
//! 3. **DropOld**: the trust bundle becomes the new CA alone, member by member as in stage 1;
//!    last, the client Secret's. The old CA is gone.
//!
//! Each stage lasts at least `spec.tls.caRotationHold` from its start and ends only once every
//! member has it: the time clients have to read the client Secret again (the new bundle before
//! stage 2, the new identity before the end). A rotation starts on request
//! (`runc-etcd.io/rotate-ca` on the EtcdCluster, any value not served yet) or by itself once the
//! CA is in the last third of its validity.
//!
//! Which step comes next is `next` (pure); `tend` observes and carries it out.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::error::Result;
use crate::operator::certs;
use crate::operator::context::Ctx;
use crate::operator::observe::View;
use runc_etcd_api::contract::{
    ClusterNames, Keyring, ROTATE_CA_ANNOTATION, ROTATED_FOR_ANNOTATION, ROTATION_REQUEST_ANNOTATION,
    ROTATION_SINCE_ANNOTATION, ROTATION_STAGE_ANNOTATION, Rotation,
};
use runc_etcd_api::{CaRotationStage, EtcdCluster, OperationState};
use runc_etcd_host::pki;

/// One member as the rotation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberTrust {
    pub name: String,
    /// Its Secret's trust bundle is the keyring's.
    pub trusts: bool,
    /// Its Secret's certificates are signed by the signing CA.
    pub signed: bool,
    /// Its agent reports the Secret's files installed (`pki::digest`).
    pub installed: bool,
    /// etcd reports it healthy.
    pub healthy: bool,
}

/// What the rotation sees this pass.
#[derive(Debug, Clone)]
pub struct Facts {
    pub rotation: Option<Rotation>,
    /// A request not served yet: the annotation's value, or "expiry" for a CA late in its life.
    pub request: Option<String>,
    pub members: Vec<MemberTrust>,
    /// Every client identity Secret's trust bundle (the controller's and the applications') is
    /// the keyring's; every one's certificate is signed by the signing CA.
    pub client_trusts: bool,
    pub client_signed: bool,
    /// A membership or maintenance step is recorded and not finished.
    pub operation_in_flight: bool,
    /// Status records the signing CA as the cluster's (`ensure`): until it does, dropping the
    /// old CA would make status name a CA nobody trusts.
    pub signing_recorded: bool,
    pub hold: SignedDuration,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// No rotation, none asked for.
    Idle,
    /// Make the new CA and trust both (the request served).
    Start { request: String },
    /// Give the client identity Secrets the keyring's trust bundle.
    TrustClient,
    /// Give this member's Secret the keyring's trust bundle (its agent restarts it).
    RollMember { member: String },
    /// Move to the next stage.
    Advance { to: CaRotationStage },
    /// The old CA is gone everywhere: clear the rotation.
    Finish,
    /// Not yet. `hold`: no other step of the controller may run this pass (a member is about to
    /// restart for its trust bundle, and a second restart could cost quorum).
    Wait { reason: String, hold: bool },
}

fn wait(reason: impl Into<String>, hold: bool) -> Next {
    Next::Wait {
        reason: reason.into(),
        hold,
    }
}

pub fn next(f: &Facts) -> Next {
    let Some(rotation) = &f.rotation else {
        return match &f.request {
            Some(request) => Next::Start {
                request: request.clone(),
            },
            None => Next::Idle,
        };
    };
    let stage = rotation.stage;
    let held = f.now.duration_since(rotation.since) >= f.hold;
    let hold_left = || {
        let left = f.hold - f.now.duration_since(rotation.since);
        format!(
            "CA rotation {stage}: holding {}s more for clients to read Secret again",
            left.as_secs()
        )
    };
    if matches!(stage, CaRotationStage::TrustBoth | CaRotationStage::Reissue) && !f.client_trusts {
        return Next::TrustClient;
    }
    // A member whose files lag behind its Secret: its agent is installing them (and, for a new
    // trust bundle, restarting it). Nothing else moves until it has, unless etcd says it is down:
    // then replacing it is the controller's other steps' business, which must not wait on this.
    if let Some(m) = f.members.iter().find(|m| !m.installed) {
        return wait(
            format!(
                "CA rotation {stage}: waiting for {} to install its certificates",
                m.name
            ),
            m.healthy,
        );
    }
    match stage {
        CaRotationStage::TrustBoth | CaRotationStage::DropOld => {
            if let Some(m) = f.members.iter().find(|m| !m.trusts) {
                if f.operation_in_flight || f.members.iter().any(|m| !m.healthy) {
                    return wait(
                        format!(
                            "CA rotation {stage}: waiting for every member to be healthy before restarting {}",
                            m.name
                        ),
                        false,
                    );
                }
                return Next::RollMember { member: m.name.clone() };
            }
            if !held {
                return wait(hold_left(), false);
            }
            match stage {
                CaRotationStage::TrustBoth => Next::Advance {
                    to: CaRotationStage::Reissue,
                },
                _ => Next::Finish,
            }
        }
        CaRotationStage::Reissue => {
            // `certs` issues them each pass; here only waited for.
            if let Some(m) = f.members.iter().find(|m| !m.signed) {
                return wait(
                    format!("CA rotation {stage}: {} not yet issued by the new CA", m.name),
                    false,
                );
            }
            if !f.client_signed {
                return wait(
                    format!("CA rotation {stage}: the client identity not yet issued by the new CA"),
                    false,
                );
            }
            if !f.signing_recorded {
                return wait(
                    format!("CA rotation {stage}: the new CA not yet recorded in status"),
                    false,
                );
            }
            if !held {
                return wait(hold_left(), false);
            }
            Next::Advance {
                to: CaRotationStage::DropOld,
            }
        }
    }
}

/// What asks for a rotation: the annotation's value if not served yet, else the CA's age.
fn request(asked: Option<&str>, served: Option<&str>, late: bool) -> Option<String> {
    asked
        .filter(|r| Some(*r) != served)
        .map(str::to_string)
        .or_else(|| late.then(|| "expiry".to_string()))
}

/// Whether a CA is in the last third of its validity at `now`.
fn ca_late(ca: &pki::Ca, now: chrono::DateTime<chrono::Utc>) -> bool {
    pki::cert_info(&ca.cert).is_some_and(|i| (i.not_after - now) < (i.not_after - i.not_before) / 3)
}

/// The rotation's step for this pass, carried out. Returns why the controller's other steps
/// wait this pass, if they must.
pub async fn tend(c: &EtcdCluster, ctx: &Ctx, view: &View, keyring: &Keyring) -> Result<Option<String>> {
    let asked = c.annotations().get(ROTATE_CA_ANNOTATION).cloned();
    let late = ca_late(&keyring.signing, chrono::Utc::now());
    let request = request(asked.as_deref(), keyring.rotated_for.as_deref(), late);
    // Status follows the stage on the CA Secret (a crash between the two writes leaves it behind).
    let stage = keyring.rotation.as_ref().map(|r| r.stage);
    if c.status.as_ref().and_then(|s| s.ca_rotation) != stage {
        ctx.patch_status(c, json!({ "caRotation": stage })).await?;
    }
    if keyring.rotation.is_none() && request.is_none() {
        return Ok(None);
    }
    let secrets: Api<Secret> = ctx.api(c);
    let signer = pki::subject(&keyring.signing.cert);
    let signed = |pem: &str| pki::cert_info(pem).map(|i| i.issuer) == signer;
    let trusts = |pem: &str| pki::bundle_fingerprints(pem) == pki::bundle_fingerprints(&keyring.trust);
    let mut members = Vec::new();
    for (m, certs) in certs::of_members(c, ctx, &view.members).await? {
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let reported = m.status.as_ref().and_then(|s| s.certificates_digest.as_deref());
        members.push(MemberTrust {
            name: m.spec.member_name.clone(),
            trusts: trusts(&certs.ca_cert),
            signed: [&certs.server, &certs.peer, &certs.client].iter().all(|c| signed(c)),
            installed: reported == Some(pki::digest(&certs).as_str()),
            healthy: healthy(c, view, &m.spec.ip),
        });
    }
    let clients = certs::client_identities(c, ctx).await?;
    let facts = Facts {
        rotation: keyring.rotation.clone(),
        request: request.filter(|r| keyring.rotation.as_ref().is_none_or(|now| now.request != *r)),
        members,
        client_trusts: clients.iter().all(|(_, t)| trusts(&t.ca)),
        client_signed: clients.iter().all(|(_, t)| signed(&t.cert)),
        operation_in_flight: c
            .status
            .as_ref()
            .and_then(|s| s.last_operation.as_ref())
            .is_some_and(|o| matches!(o.state, OperationState::Pending | OperationState::InProgress)),
        signing_recorded: c.status.as_ref().and_then(|s| s.ca_fingerprint.clone())
            == pki::fingerprint(&keyring.signing.cert),
        hold: SignedDuration::try_from(c.spec.tls.rotation_hold()).unwrap_or(SignedDuration::MAX),
        now: Timestamp::now(),
    };
    let step = next(&facts);
    tracing::debug!(?step, "CA rotation");
    match step {
        Next::Idle => Ok(None),
        Next::Wait { reason, hold } => Ok(hold.then_some(reason)),
        Next::Start { request } => {
            let new = pki::new_ca(&c.instance())?;
            let trust = pki::bundle([keyring.signing.cert.as_str(), new.cert.as_str()]);
            let patch = json!({
                "metadata": {"annotations": stage_annotations(CaRotationStage::TrustBoth, &request)},
                "data": {"next.crt": b64(&new.cert), "next.key": b64(&new.key), "trust.crt": b64(&trust)},
            });
            write_ca(c, ctx, &patch).await?;
            announce(c, ctx, CaRotationStage::TrustBoth, format!(
                "CA rotation started ({request}): a new CA joins the trust bundle of the client Secret {} and of each member, one restart at a time",
                c.client_secret()
            ))
            .await?;
            Ok(Some("CA rotation: started".into()))
        }
        Next::TrustClient => {
            let patch = json!({"data": {"ca.crt": b64(&keyring.trust)}});
            for (name, _) in clients.iter().filter(|(_, t)| !trusts(&t.ca)) {
                secrets
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Ok(None)
        }
        Next::RollMember { member } => {
            let object = view.members.iter().find(|m| m.spec.member_name == member);
            let Some(secret) = object.and_then(|m| m.spec.tls_secret.clone()) else {
                return Ok(None);
            };
            let patch = json!({"data": {"ca.crt": b64(&keyring.trust)}});
            secrets
                .patch(&secret, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            runc_etcd_host::failpoint::hit("after-ca-trust-rolled");
            let note = format!(
                "member {member} gets the trust bundle of CA rotation stage {}: its agent restarts it",
                stage_of(keyring)
            );
            ctx.event(
                c,
                EventType::Normal,
                "CaTrustRolled",
                object.map(|m| m.name_any()).as_deref(),
                note,
            )
            .await;
            Ok(Some(format!(
                "CA rotation: {member} restarts with its new trust bundle"
            )))
        }
        Next::Advance { to } => {
            let request = keyring.rotation.as_ref().map(|r| r.request.clone()).unwrap_or_default();
            let patch = match to {
                CaRotationStage::Reissue => {
                    let Some(next) = keyring.next.as_ref() else {
                        return Err(crate::Error::refused(format!(
                            "CA rotation: Secret {} is in stage TrustBoth but lost next.crt/next.key (the new CA); restore the Secret from your backup of it",
                            c.ca_secret()
                        )));
                    };
                    json!({
                        "metadata": {"annotations": stage_annotations(to, &request)},
                        "data": {"ca.crt": b64(&next.cert), "ca.key": b64(&next.key), "next.crt": null, "next.key": null},
                    })
                }
                _ => json!({
                    "metadata": {"annotations": stage_annotations(to, &request)},
                    "data": {"trust.crt": b64(&keyring.signing.cert)},
                }),
            };
            write_ca(c, ctx, &patch).await?;
            let note = match to {
                CaRotationStage::Reissue => "every member trusts both CAs: the new one now signs, and every certificate is issued again from it (no restart)".to_string(),
                _ => format!("every certificate comes from the new CA: the old one leaves each member's trust bundle, one restart at a time, then the client Secret {}'s", c.client_secret()),
            };
            announce(c, ctx, to, note).await?;
            Ok(Some(format!("CA rotation: now {to}")))
        }
        Next::Finish => {
            let patch = json!({"data": {"ca.crt": b64(&keyring.signing.cert)}});
            for (name, _) in &clients {
                secrets
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            // The annotation as it is now counts as served, whatever started this rotation: a
            // rotation the CA's age started must not make an old request look new.
            let served = asked.or_else(|| keyring.rotation.as_ref().map(|r| r.request.clone()));
            let patch = json!({
                "metadata": {"annotations": {
                    ROTATION_STAGE_ANNOTATION: null, ROTATION_SINCE_ANNOTATION: null,
                    ROTATION_REQUEST_ANNOTATION: null, ROTATED_FOR_ANNOTATION: served,
                }},
                "data": {"trust.crt": null},
            });
            write_ca(c, ctx, &patch).await?;
            ctx.patch_status(c, json!({"caRotation": null})).await?;
            let note = format!(
                "CA rotation finished: every member and the client Secret trust only the new CA ({})",
                pki::fingerprint(&keyring.signing.cert).unwrap_or_default()
            );
            ctx.event(c, EventType::Normal, "CaRotationFinished", None, note).await;
            Ok(None)
        }
    }
}

/// A Secret value as `data` carries it.
fn b64(pem: &str) -> k8s_openapi::ByteString {
    k8s_openapi::ByteString(pem.as_bytes().to_vec())
}

fn stage_of(keyring: &Keyring) -> String {
    keyring
        .rotation
        .as_ref()
        .map(|r| r.stage.to_string())
        .unwrap_or_default()
}

fn stage_annotations(stage: CaRotationStage, request: &str) -> serde_json::Value {
    json!({
        ROTATION_STAGE_ANNOTATION: stage.as_str(),
        ROTATION_SINCE_ANNOTATION: Timestamp::now().to_string(),
        ROTATION_REQUEST_ANNOTATION: request,
    })
}

async fn write_ca(c: &EtcdCluster, ctx: &Ctx, patch: &serde_json::Value) -> Result<()> {
    let secrets: Api<Secret> = ctx.api(c);
    secrets
        .patch(&c.ca_secret(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

async fn announce(c: &EtcdCluster, ctx: &Ctx, stage: CaRotationStage, note: String) -> Result<()> {
    ctx.patch_status(c, json!({"caRotation": stage})).await?;
    ctx.event(c, EventType::Normal, "CaRotationStage", None, note).await;
    Ok(())
}

/// Whether etcd reports the member at `ip` healthy.
fn healthy(c: &EtcdCluster, view: &View, ip: &str) -> bool {
    let url = crate::operator::children::peer_url(c, ip);
    view.etcd.as_ref().is_some_and(|e| {
        e.members
            .iter()
            .any(|m| m.peer_urls.contains(&url) && e.healthy.contains_key(&m.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaRotationStage::*;

    fn member(name: &str) -> MemberTrust {
        MemberTrust {
            name: name.into(),
            trusts: true,
            signed: true,
            installed: true,
            healthy: true,
        }
    }

    fn facts(stage: Option<CaRotationStage>, members: Vec<MemberTrust>) -> Facts {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        Facts {
            rotation: stage.map(|stage| Rotation {
                stage,
                since: now - SignedDuration::from_mins(30),
                request: "r1".into(),
            }),
            request: None,
            members,
            client_trusts: true,
            client_signed: true,
            operation_in_flight: false,
            signing_recorded: true,
            hold: SignedDuration::from_mins(10),
            now,
        }
    }

    fn untrusting(name: &str) -> MemberTrust {
        MemberTrust {
            trusts: false,
            ..member(name)
        }
    }

    #[test]
    fn a_rotation_starts_only_on_a_request() {
        let mut f = facts(None, vec![member("a")]);
        assert_eq!(next(&f), Next::Idle);
        f.request = Some("r1".into());
        assert_eq!(next(&f), Next::Start { request: "r1".into() });
    }

    #[test]
    fn trust_moves_one_member_at_a_time_and_only_when_all_are_healthy() {
        let f = facts(Some(TrustBoth), vec![member("a"), untrusting("b"), untrusting("c")]);
        assert_eq!(next(&f), Next::RollMember { member: "b".into() });

        // b's Secret written, its agent not yet there: everything else waits for it
        let mut f = facts(Some(TrustBoth), vec![member("a"), member("b"), untrusting("c")]);
        f.members[1].installed = false;
        assert!(matches!(next(&f), Next::Wait { hold: true, ref reason } if reason.contains("b to install")));

        // installed, but not back yet: c waits, and the controller's other steps may run
        f.members[1].installed = true;
        f.members[1].healthy = false;
        assert!(matches!(next(&f), Next::Wait { hold: false, ref reason } if reason.contains("before restarting c")));

        // an agent gone quiet on a member etcd calls down must not hold recovery
        f.members[1].installed = false;
        assert!(matches!(next(&f), Next::Wait { hold: false, .. }));

        let mut f = facts(Some(DropOld), vec![member("a"), untrusting("b")]);
        f.operation_in_flight = true;
        assert!(
            matches!(next(&f), Next::Wait { hold: false, .. }),
            "an upgrade step in flight first"
        );
        f.operation_in_flight = false;
        assert_eq!(next(&f), Next::RollMember { member: "b".into() });
    }

    #[test]
    fn each_stage_holds_for_clients_then_moves_on() {
        let mut f = facts(Some(TrustBoth), vec![member("a"), member("b")]);
        f.client_trusts = false;
        assert_eq!(next(&f), Next::TrustClient, "clients get the new CA first");
        f.client_trusts = true;
        assert_eq!(next(&f), Next::Advance { to: Reissue });
        f.hold = SignedDuration::from_mins(45);
        assert!(matches!(next(&f), Next::Wait { hold: false, ref reason } if reason.contains("900s more")));

        let mut f = facts(Some(Reissue), vec![member("a"), member("b")]);
        f.members[0].signed = false;
        assert!(matches!(next(&f), Next::Wait { hold: false, .. }));
        f.members[0].signed = true;
        f.client_signed = false;
        assert!(matches!(next(&f), Next::Wait { hold: false, .. }));
        f.client_signed = true;
        f.signing_recorded = false;
        assert!(matches!(next(&f), Next::Wait { hold: false, ref reason } if reason.contains("recorded")));
        f.signing_recorded = true;
        assert_eq!(next(&f), Next::Advance { to: DropOld });

        let mut f = facts(Some(DropOld), vec![member("a"), member("b")]);
        f.client_trusts = false; // the client Secret keeps both CAs until the very end
        assert_eq!(next(&f), Next::Finish);
    }

    #[test]
    fn a_request_is_served_once_and_age_asks_on_its_own() {
        assert_eq!(request(Some("d1"), None, false).as_deref(), Some("d1"));
        assert_eq!(request(Some("d1"), Some("d1"), false), None, "served");
        assert_eq!(
            request(Some("d1"), Some("d1"), true).as_deref(),
            Some("expiry"),
            "an old request does not mask age"
        );
        assert_eq!(request(None, None, true).as_deref(), Some("expiry"));
        assert_eq!(request(None, Some("d1"), false), None);
    }

    #[test]
    fn a_ca_is_rotated_by_itself_in_the_last_third_of_its_life() {
        let ca = pki::new_ca("prod.main").unwrap();
        let now = chrono::Utc::now();
        assert!(!ca_late(&ca, now));
        assert!(!ca_late(&ca, now + chrono::Duration::days(6 * 365)));
        assert!(ca_late(&ca, now + chrono::Duration::days(7 * 365)));
    }
}
