//! The faults an etcd operator exists to survive, one test per hazard (README "Hazards"), each on
//! real hosts with a writer running: afterwards every acknowledged write is still there, and
//! every member lists the same members and names the same leader.

mod common;

use std::time::Duration;

use common::plane::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use runc_etcd_api::{EtcdMember, InitialClusterState};

/// The cluster "main" at the lab's 3.5 image, with `extra` spec lines.
fn main_cluster(p: &Plane, size: u32, extra: &str) -> runc_etcd_api::EtcdCluster {
    p.apply(&cluster_yaml("main", size, &p.lab.image(V_MID), extra))
        .unwrap();
    p.wait_ready("main", size as i32, 240)
}

fn writer(p: &Plane, c: &runc_etcd_api::EtcdCluster) -> Writer {
    let endpoints = c
        .status
        .clone()
        .unwrap()
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect();
    Writer::start_with(&p.lab, endpoints, p.client_tls("main"))
}

fn members(p: &Plane) -> Vec<EtcdMember> {
    let api: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    p.rt.block_on(api.list(&ListParams::default())).unwrap().items
}

fn secrets(p: &Plane) -> Api<Secret> {
    Api::namespaced(p.cp.client.clone(), p.ns())
}

fn phase(c: &runc_etcd_api::EtcdCluster) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.to_string())
        .unwrap_or_default()
}

/// Hazard 1. The seed's data dir is wiped and its unit restarted while its peers are unreachable
/// from it. Before: etcd bootstrapped a new one-member cluster with the same IDs, acknowledged
/// writes as a separate cluster, and the controller, reading its member list, grew it. Now the
/// member refuses to start on lost data, its agent reports DataLost, and the controller replaces
/// it through the normal path.
#[test]
fn a_member_whose_data_is_lost_does_not_start_a_second_cluster() {
    let p = Plane::up(3);
    let c = main_cluster(&p, 3, "");
    let w = writer(&p, &c);
    let seed = members(&p)
        .into_iter()
        .find(|m| m.spec.initial_cluster_state == InitialClusterState::New)
        .expect("the seed's EtcdMember");
    let (name, node) = (seed.spec.member_name.clone(), seed.spec.node_name.clone());
    let h = p.lab.host(host_of(&p, &node));
    let (unit, state) = (
        format!("runc-etcd@{}.service", p.instance("main")),
        format!("/var/lib/runc-etcd/{}", p.instance("main")),
    );
    h.cut_port(2380, true).unwrap();
    h.check(&[
        "sh",
        "-c",
        // Killed, wiped, and restarted by systemd 2 s later (Restart=always): no stop job for
        // the agent's own start to cancel.
        &format!("systemctl kill -s KILL {unit} && sleep 0.3 && rm -rf {state}/data/*"),
    ])
    .unwrap();
    p.wait("main", "the lost data reported", 60, |c| {
        degraded_by(c, "DataLost", &name)
    });
    std::thread::sleep(Duration::from_secs(20));
    // Nothing answers on its client port: no second cluster took writes.
    let (url, tls) = (c.status.clone().unwrap().members, p.client_tls("main"));
    let url = url.iter().find(|m| m.name == name).unwrap().client_url.clone();
    let answered = runc_etcd_testkit::lab::netns::run_in(&p.lab.client_ns(), move || async move {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3))
            .with_tls(tls.unwrap());
        let serializable = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_serializable();
        match etcd_client::Client::connect([url], Some(opts)).await {
            Ok(mut c) => c.get("w/", Some(serializable)).await.is_ok(),
            Err(_) => false,
        }
    });
    assert!(!answered, "the member with lost data serves");
    h.cut_port(2380, false).unwrap();
    let c = p.wait("main", "the member replaced", 300, |c| {
        available_with(c, 3) && c.status.as_ref().unwrap().members.iter().all(|m| m.name != name)
    });
    let acked = w.stop();
    assert!(acked.len() > 100, "the writer kept writing: {} writes", acked.len());
    assert_no_write_lost(&p, &c, &acked);
    assert_one_cluster(&p, &c, 3);
    assert_eq!(members(&p).len(), 3, "one EtcdMember per member, none grown");
}

/// Hazard 3. The CA Secret is deleted, then the client Secret. Before: a new CA was generated
/// silently, and with the client identity re-issued from it the operator could verify no member
/// and called the healthy cluster QuorumLost. Now the missing CA is reported and nothing else
/// happens until it is back; then the client identity is issued again from the same CA.
#[test]
fn a_missing_ca_is_reported_and_never_made_again() {
    let p = Plane::up(3);
    let c = main_cluster(&p, 3, "");
    let w = writer(&p, &c);
    let api = secrets(&p);
    let ca = p.rt.block_on(api.get("main-ca")).unwrap();
    let ca_cert = String::from_utf8(ca.data.as_ref().unwrap()["ca.crt"].0.clone()).unwrap();
    let fingerprint = runc_etcd_host::pki::fingerprint(&ca_cert).unwrap();
    assert_eq!(
        c.status.as_ref().unwrap().ca_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    let delete = |name: &str| {
        p.rt.block_on(api.delete(name, &DeleteParams::default())).unwrap();
    };
    let exists = |name: &str| p.rt.block_on(api.get_opt(name)).unwrap().is_some();

    delete("main-ca");
    p.wait("main", "the missing CA reported", 60, |c| {
        degraded_by(c, "CertificateAuthorityMissing", "main-ca")
    });
    delete("main-client-tls");
    // Several passes later (they look again every 10 s): nothing was made, nothing declared lost.
    std::thread::sleep(Duration::from_secs(25));
    assert!(!exists("main-ca"), "a new CA was generated");
    assert!(
        !exists("main-client-tls"),
        "a client identity was issued without the CA"
    );
    let now = p.get("main").unwrap();
    assert_eq!(phase(&now), "Degraded", "{:?}", now.status);
    assert!(degraded_by(&now, "CertificateAuthorityMissing", "restore the Secret"));

    // The CA comes back (from the user's copy): the client identity is issued again from it.
    let mut restored = ca.clone();
    restored.metadata = kube::api::ObjectMeta {
        name: ca.metadata.name.clone(),
        labels: ca.metadata.labels.clone(),
        ..Default::default()
    };
    p.rt.block_on(api.create(&PostParams::default(), &restored)).unwrap();
    p.wait("main", "Available again", 120, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });
    assert!(p.event_reasons("main").iter().any(|r| r == "ClientCertificateReissued"));

    // Another CA in its place is refused as well.
    let other = runc_etcd_host::pki::new_ca("someone else").unwrap();
    let mut replaced = restored.clone();
    replaced.data = Some(
        [("ca.crt", other.cert), ("ca.key", other.key)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.into_bytes())))
            .collect(),
    );
    delete("main-ca");
    p.rt.block_on(api.create(&PostParams::default(), &replaced)).unwrap();
    p.wait("main", "the replaced CA reported", 60, |c| {
        degraded_by(c, "CertificateAuthorityMismatch", &fingerprint)
    });
    delete("main-ca");
    p.rt.block_on(api.create(&PostParams::default(), &restored)).unwrap();
    let c = p.wait("main", "Available again", 120, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });

    let acked = w.stop();
    assert!(acked.len() > 100, "the writer kept writing: {} writes", acked.len());
    // Read with the re-issued identity: it is of the same CA the members trust.
    assert_no_write_lost(&p, &c, &acked);
    assert_one_cluster(&p, &c, 3);
}

/// Hazard 2. An EtcdCluster deleted and made again under the same name. Before: its token was
/// `<namespace>.<name>`, so the new seed, on the same node, got the old seed's member ID and the
/// old cluster's ID, and a member left over from the old cluster passed for one of the new.
/// Now each incarnation bootstraps with a token of its own (from its UID).
#[test]
fn a_cluster_made_again_under_the_same_name_is_another_cluster() {
    let p = Plane::up(1);
    let first = main_cluster(&p, 1, "");
    let ids = |c: &runc_etcd_api::EtcdCluster| {
        let s = c.status.clone().unwrap();
        (s.cluster_id.unwrap(), s.members[0].member_id.clone().unwrap())
    };
    let before = ids(&first);
    p.put_keys("main", "old/", 10);
    p.delete("main");
    eventually("the first cluster to be gone", 120, || p.get("main").is_none());

    let second = main_cluster(&p, 1, "");
    let after = ids(&second);
    assert_ne!(after.0, before.0, "the new cluster has the old cluster's ID");
    assert_ne!(after.1, before.1, "the new seed has the old seed's member ID");
    let token = second.status.clone().unwrap().cluster_token.unwrap();
    assert!(token.ends_with(second.metadata.uid.as_deref().unwrap()), "{token}");
    let w = writer(&p, &second);
    std::thread::sleep(Duration::from_secs(5));
    let acked = w.stop();
    assert!(acked.len() > 20, "the writer kept writing: {} writes", acked.len());
    assert_no_write_lost(&p, &second, &acked);
    assert!(
        !p.all_keys("main").keys().any(|k| k.starts_with("old/")),
        "the new cluster starts empty"
    );
    assert_one_cluster(&p, &second, 1);
}

/// Hazard 4. The operator loses its route to the members (a NetworkPolicy, a broken route from
/// its node) while the cluster serves, with `quorumLoss: RestoreFromBackup` and a backup at hand.
/// Before: quorum loss was decided from the operator's own view, and the rebuild retired the
/// healthy members. Now only the members' own evidence (their agents' probes, their nodes) counts:
/// the operator reports that it cannot reach them and changes nothing.
#[test]
fn an_operator_cut_off_from_the_members_changes_nothing() {
    let p = Plane::up(3);
    let c = main_cluster(
        &p,
        3,
        "  recovery: {quorumLoss: RestoreFromBackup, quorumLossTimeout: 10s, memberUnhealthyTimeout: 10s}\n  backup:\n    hostPath:\n      path: /var/backups/etcd\n",
    );
    assert!(back_up(&p, "before").succeeded());
    let before: Vec<String> = members(&p).iter().map(|m| m.spec.member_name.clone()).collect();
    // An application on a node keeps writing; the operator is on the LAN.
    let endpoints = c
        .status
        .clone()
        .unwrap()
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect();
    let w = Writer::start_in(&p.lab.host(1).ns(), endpoints, p.client_tls("main"));
    let cut = |on: bool| {
        for h in &p.lab.hosts {
            h.refuse_from(p.lab.gateway(), 2379, on).unwrap();
        }
    };
    cut(true);
    p.wait("main", "the unreachable members reported", 60, |c| {
        degraded_by(c, "OperatorCannotReachMembers", "NetworkPolicy")
    });
    // Past the unhealthy and quorum-loss timeouts, twice over: nothing is declared lost or changed.
    let until = std::time::Instant::now() + Duration::from_secs(35);
    while std::time::Instant::now() < until {
        let now = p.get("main").unwrap();
        assert_ne!(phase(&now), "QuorumLost", "{:?}", now.status);
        assert_eq!(condition(&now, "Available"), Some("True"), "{:?}", now.status);
        std::thread::sleep(Duration::from_millis(500));
    }
    let after: Vec<String> = members(&p).iter().map(|m| m.spec.member_name.clone()).collect();
    assert_eq!(after, before, "members were replaced");
    let reasons = p.event_reasons("main");
    assert!(
        !reasons.iter().any(|r| r.contains("Rebuild") || r.contains("Replace")),
        "{reasons:?}"
    );
    cut(false);
    let c = p.wait("main", "reached again", 90, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });
    let acked = w.stop();
    assert!(acked.len() > 100, "the writer kept writing: {} writes", acked.len());
    assert_no_write_lost(&p, &c, &acked);
    assert_one_cluster(&p, &c, 3);
}
