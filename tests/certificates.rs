//! Certificates on real hosts with a real etcd (issue 13): renewed before they expire, under a
//! writer, with no member restarted and no acknowledged write lost; serving certificates that
//! name the client Service, so that a client verifying by that name connects; applications'
//! own identities; and the CA rotated under a writer, one member restart at a time.

mod common;

use std::time::Duration;

use common::hazard::*;
use common::plane::*;
use common::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use runc_etcd_testkit::lab::netns;

/// The client Secret's files, PEM: (ca.crt, tls.crt, tls.key).
fn client_files(p: &Plane) -> (String, String, String) {
    identity_files(p, "main-client-tls").unwrap()
}

/// A client identity Secret's files, if it is there.
fn identity_files(p: &Plane, secret: &str) -> Option<(String, String, String)> {
    let api: Api<Secret> = Api::namespaced(p.cp.client.clone(), p.ns());
    let s = p.rt.block_on(api.get_opt(secret)).unwrap()?;
    let data = s.data.unwrap();
    let f = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    Some((f("ca.crt"), f("tls.crt"), f("tls.key")))
}

/// Writes a key through `endpoint` with the client Secret's identity, verifying the server as
/// `server_name`.
fn put_as(p: &Plane, endpoint: &str, server_name: &str) -> Result<(), String> {
    put_with(p, client_files(p), endpoint, server_name)
}

/// Writes a key through `endpoint` with the identity `(ca.crt, tls.crt, tls.key)`, on a new
/// connection, verifying the server as `server_name`.
fn put_with(
    p: &Plane,
    (ca, cert, key): (String, String, String),
    endpoint: &str,
    server_name: &str,
) -> Result<(), String> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(server_name);
    let endpoint = endpoint.to_string();
    let name = server_name.to_string();
    netns::run_in(&p.lab.client_ns(), move || async move {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_tls(tls);
        let mut c = etcd_client::Client::connect([endpoint], Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        c.put("by-name", name, None).await.map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// What a host's member files and its etcd say of the serving certificate: the file's SHA-256
/// fingerprint and key, and the fingerprint of the certificate etcd presents on a new connection.
fn served(p: &Plane, h: &runc_etcd_testkit::lab::LabHost) -> (String, String, String) {
    let state = format!("/var/lib/runc-etcd/{}", p.instance("main"));
    let file = h
        .check(&[
            "openssl",
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &format!("{state}/pki/server.crt"),
        ])
        .unwrap();
    let key = std::fs::read_to_string(h.path(&format!("{state}/pki/server.key"))).unwrap();
    let c = format!("{state}/client");
    let live = h
        .check(&[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect {}:2379 -CAfile {c}/ca.crt -cert {c}/client.crt -key {c}/client.key </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
                h.ip()
            ),
        ])
        .unwrap();
    (file.trim().to_string(), key, live.trim().to_string())
}

/// Each member's key was made on its host and is nowhere in the API; the agents' own token reads
/// their members' certificates and is refused the CA's Secret, every other Secret, and writes
/// to EtcdMember specs.
fn keys_stay_on_their_hosts_and_agents_read_only_their_secrets(p: &Plane) {
    use std::os::unix::fs::PermissionsExt;
    let admin: Api<Secret> = Api::namespaced(p.cp.client.clone(), p.ns());
    let stored: Vec<Secret> = p.rt.block_on(admin.list(&Default::default())).unwrap().items;
    let in_api: Vec<String> = stored
        .iter()
        .flat_map(|s| {
            s.data
                .iter()
                .flatten()
                .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
        })
        .collect();
    let members: Api<runc_etcd_api::EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    let members = p.rt.block_on(members.list(&Default::default())).unwrap().items;
    assert_eq!(members.len(), 3);
    for m in &members {
        let secret = stored
            .iter()
            .find(|s| s.metadata.name == m.spec.tls_secret)
            .expect("the member's Secret");
        let files: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert!(files.iter().all(|f| f.ends_with(".crt")), "{files:?}");
        let h = p.lab.host(host_of(p, &m.spec.node_name));
        let key_file = h.path(&format!(
            "/var/lib/runc-etcd/{}/keys/{}.key",
            p.instance("main"),
            m.spec.member_name
        ));
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key_file.display());
        let key = std::fs::read_to_string(&key_file).unwrap();
        assert!(
            !in_api.iter().any(|v| v.contains(key.trim())),
            "a member's key is in a Secret"
        );
    }
    let agent = p.service_account_client("runc-etcd-agent");
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), p.ns());
    let mine = members[0].spec.tls_secret.clone().unwrap();
    assert!(
        p.rt.block_on(secrets.get(&mine)).is_ok(),
        "an agent reads its member's certificates"
    );
    let who = format!("system:serviceaccount:{}:runc-etcd-agent", p.ns());
    for name in ["main-ca", "main-client-tls", "main-app-billing-tls"] {
        match p.rt.block_on(secrets.get(name)) {
            Err(kube::Error::Api(e)) => assert_eq!(
                (e.code, e.message),
                (
                    403,
                    format!(
                        "secrets \"{name}\" is forbidden: User \"{who}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"{}\"",
                        p.ns()
                    )
                )
            ),
            other => panic!("the agent read Secret {name}: {other:?}"),
        }
    }
    let members_as_agent: Api<runc_etcd_api::EtcdMember> = Api::namespaced(agent, p.ns());
    let patch = serde_json::json!({"spec": {"image": "elsewhere"}});
    match p.rt.block_on(members_as_agent.patch(
        &members[0].metadata.name.clone().unwrap(),
        &Default::default(),
        &kube::api::Patch::Merge(&patch),
    )) {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{}", e.message),
        other => panic!("the agent patched an EtcdMember's spec: {other:?}"),
    }
}

#[test]
fn certificates_are_renewed_under_writes_without_a_restart_and_name_the_client_service() {
    let p = Plane::up(3);
    // Three minutes of validity: renewed after two.
    let c = main_cluster(
        &p,
        3,
        "  tls: {certificateValidity: 3m, clients: [{name: billing}, {name: reports}]}\n",
    );
    let w = writer(&p, &c);
    every_unit_active(&p);
    keys_stay_on_their_hosts_and_agents_read_only_their_secrets(&p);
    let since = Since::now();
    let before: Vec<_> = p.lab.hosts.iter().map(|h| served(&p, h)).collect();
    for (file, _, live) in &before {
        assert_eq!(file, live, "etcd serves the certificate in its files");
    }
    let (_, client_cert, client_key) = client_files(&p);
    // Each application has its own identity, named in its certificate, that connects.
    let billing = identity_files(&p, "main-app-billing-tls").expect("billing's Secret");
    assert_eq!(runc_etcd_host::pki::subject(&billing.1).as_deref(), Some("CN=billing"));
    assert_eq!(
        runc_etcd_host::pki::subject(&identity_files(&p, "main-app-reports-tls").unwrap().1).as_deref(),
        Some("CN=reports")
    );
    let c = p.wait("main", "the certificates' expiry reported", 60, |c| {
        c.status.as_ref().is_some_and(|s| s.certificates_not_after.is_some())
    });
    let first_expiry = c.status.clone().unwrap().certificates_not_after.unwrap();

    // A client that verifies the server by the client Service's name connects and writes;
    // verification is real: another name is refused.
    let member = c.status.clone().unwrap().client_endpoints[0].clone();
    let svc = format!("main-client.{}.svc", p.ns());
    put_as(&p, &member, &svc).unwrap();
    put_as(&p, &member, &format!("main-client.{}.svc.cluster.local", p.ns())).unwrap();
    put_with(&p, billing.clone(), &member, &svc).expect("billing's identity connects and writes");
    let other = put_as(&p, &member, &format!("other-client.{}.svc", p.ns()));
    assert!(other.is_err(), "a name the certificate does not carry is refused");

    // Renewed on every host, with the same keys, before expiry; etcd serves the new one.
    eventually("every member's certificate renewed and served", 150, || {
        p.lab.hosts.iter().zip(&before).all(|(h, (old, _, _))| {
            let (file, _, live) = served(&p, h);
            file != *old && file == live
        })
    });
    for (h, (_, old_key, _)) in p.lab.hosts.iter().zip(&before) {
        assert_eq!(served(&p, h).1, *old_key, "{}: the key is kept", h.name());
    }
    let (_, cert, key) = client_files(&p);
    assert!(
        cert != client_cert && key == client_key,
        "the client identity is renewed too"
    );
    eventually("billing's identity renewed", 60, || {
        identity_files(&p, "main-app-billing-tls").is_some_and(|now| now.1 != billing.1 && now.2 == billing.2)
    });
    put_with(&p, identity_files(&p, "main-app-billing-tls").unwrap(), &member, &svc)
        .expect("renewed, it still connects");

    // An application taken off the list loses its Secret.
    let drop = serde_json::json!({"spec": {"tls": {"clients": [{"name": "billing"}]}}});
    p.rt.block_on(p.clusters().patch(
        "main",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&drop),
    ))
    .unwrap();
    eventually("reports' Secret deleted", 30, || {
        identity_files(&p, "main-app-reports-tls").is_none()
    });
    assert!(
        identity_files(&p, "main-app-billing-tls").is_some(),
        "billing keeps its own"
    );
    let c = p.wait("main", "the later expiry reported", 60, |c| {
        let s = c.status.clone().unwrap_or_default();
        available_with(c, 3) && s.certificates_not_after.as_deref().is_some_and(|t| *t > *first_expiry)
    });
    let reasons = p.event_reasons("main");
    for reason in ["CertificateRenewed", "ClientIdentityIssued", "ClientIdentityDeleted"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
    put_as(&p, &member, &svc).expect("the renewed certificate names the Service too");
    let restarts = since.restarts(&p);
    assert!(
        restarts.iter().all(|(_, n)| *n == 0),
        "no member restarted: {restarts:?}"
    );
    nothing_lost(&p, &c, w, 100, 3);
}

fn tls_of((ca, cert, key): &(String, String, String)) -> Option<TlsOptions> {
    Some(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key)),
    )
}

#[test]
fn the_ca_is_rotated_under_writes_one_restart_at_a_time() {
    let p = Plane::up(3);
    let c = main_cluster(&p, 3, "  tls: {caRotationHold: 10s, clients: [{name: billing}]}\n");
    let old = client_files(&p);
    let old_ca = c.status.clone().unwrap().ca_fingerprint.unwrap();
    // The writer re-reads the client Secret as an application would (reconnecting with what it
    // holds once a write fails after it changed).
    let tls = ReloadableTls::new(tls_of(&old));
    let endpoints = client_urls(&c);
    let w = Writer::start_reloading(&p.lab.client_ns(), endpoints.clone(), tls.clone());
    every_unit_active(&p);
    let since = Since::now();
    let svc = format!("main-client.{}.svc", p.ns());

    ask_ca_rotation(&p, "2026-12-03");
    let mut held = old.clone();
    let mut stages = Vec::new();
    let mut old_identity_in_reissue = None;
    eventually("the CA rotation finished", 240, || {
        let files = client_files(&p);
        if files != held {
            tls.set(tls_of(&files));
            held = files.clone();
        }
        let c = p.get("main").unwrap();
        let s = c.status.clone().unwrap_or_default();
        if let Some(stage) = s.ca_rotation
            && stages.last() != Some(&stage)
        {
            stages.push(stage);
            if stage == "Reissue" {
                // every member trusts both CAs: the old identity still works, with the bundle
                let old_identity = (files.0.clone(), old.1.clone(), old.2.clone());
                old_identity_in_reissue = Some(put_with(&p, old_identity, &endpoints[0], &svc));
            }
        }
        s.ca_rotation.is_none() && s.ca_fingerprint.as_deref().is_some_and(|f| f != old_ca)
    });
    assert_eq!(stages, ["TrustBoth", "Reissue", "DropOld"], "every stage, in order");
    assert_eq!(
        old_identity_in_reissue,
        Some(Ok(())),
        "the old identity works until the last stage"
    );
    let reasons = p.event_reasons("main");
    assert!(reasons.iter().any(|r| r == "CaRotationFinished"), "{reasons:?}");

    // Only the new CA is trusted anywhere: the client Secret's and every host's bundle.
    let new = client_files(&p);
    let new_ca = p.get("main").unwrap().status.unwrap().ca_fingerprint.unwrap();
    let only_new = vec![new_ca];
    assert_eq!(runc_etcd_host::pki::bundle_fingerprints(&new.0), only_new);
    for h in &p.lab.hosts {
        let bundle =
            std::fs::read_to_string(h.path(&format!("/var/lib/runc-etcd/{}/pki/ca.crt", p.instance("main")))).unwrap();
        assert_eq!(
            runc_etcd_host::pki::bundle_fingerprints(&bundle),
            only_new,
            "{}",
            h.name()
        );
    }
    // Every member serves a certificate of the new CA (verified with it alone), and takes the
    // new identity; the old identity is refused.
    for e in &endpoints {
        put_with(&p, new.clone(), e, &svc).unwrap_or_else(|err| panic!("{e}: {err}"));
        let refused = put_with(&p, (new.0.clone(), old.1.clone(), old.2.clone()), e, &svc);
        assert!(refused.is_err(), "{e}: the old CA's identity is no longer accepted");
    }
    // An application's identity went through the same stages.
    let billing = identity_files(&p, "main-app-billing-tls").unwrap();
    assert_eq!(runc_etcd_host::pki::bundle_fingerprints(&billing.0), only_new);
    put_with(&p, billing, &endpoints[0], &svc).expect("billing's renewed identity connects");
    // Two restarts per member (the new CA in, the old one out), never two members down at once.
    since.restarts_each_one_at_a_time(&p, 2);
    let c = p.wait("main", "Available with 3 members", 60, |c| available_with(c, 3));
    nothing_lost(&p, &c, w, 100, 3);
}
