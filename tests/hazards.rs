//! The faults an etcd operator exists to survive, one test per hazard (README "Hazards"), each on
//! real hosts with a writer running: afterwards every acknowledged write is still there, and
//! every member lists the same members and names the same leader.

mod common;

use std::time::Duration;

use common::hazard::*;
use common::plane::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use runc_etcd_api::{EtcdMember, InitialClusterState};

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
    let seed = etcd_members(&p)
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
    nothing_lost(&p, &c, w, 100, 3);
    assert_eq!(etcd_members(&p).len(), 3, "one EtcdMember per member, none grown");
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

    // Read with the re-issued identity: it is of the same CA the members trust.
    nothing_lost(&p, &c, w, 100, 3);
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
    nothing_lost(&p, &second, w, 20, 1);
    assert!(
        !p.all_keys("main").keys().any(|k| k.starts_with("old/")),
        "the new cluster starts empty"
    );
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
    let before: Vec<String> = etcd_members(&p).iter().map(|m| m.spec.member_name.clone()).collect();
    // An application on a node keeps writing; the operator is on the LAN.
    let w = Writer::start_in(&p.lab.host(1).ns(), client_urls(&c), p.client_tls("main"));
    // Replacements and rebuilds so far (a learner slow to catch up while the cluster was made,
    // under the 10 s timeout, may have been replaced): none may follow the cut.
    let changes = || {
        p.event_reasons("main")
            .iter()
            .filter(|r| r.contains("Rebuild") || r.contains("Replace"))
            .count()
    };
    let changes_before = changes();
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
    let after: Vec<String> = etcd_members(&p).iter().map(|m| m.spec.member_name.clone()).collect();
    assert_eq!(after, before, "members were replaced");
    assert_eq!(changes(), changes_before, "{:?}", p.event_reasons("main"));
    cut(false);
    let c = p.wait("main", "reached again", 90, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });
    nothing_lost(&p, &c, w, 100, 3);
}

/// Hazard 7. A new version and new etcd settings applied together. Before: an agent acknowledged
/// the generation after the image swap and restarted its member again for the settings, while
/// the controller could already move to the next member: two restarts per member, and two members
/// down at once when they met. Now both move in one restart, and a generation is acknowledged
/// only when all of it runs.
#[test]
fn a_version_and_settings_changed_together_restart_one_member_at_a_time() {
    let p = Plane::up(3);
    let (_, w) = settled_under_writes(&p);
    let since = Since::now();
    let both = cluster_yaml("main", 3, &p.lab.image(V_NEW), "  etcd: {snapshotCount: 5000}\n")
        .replace(&format!("version: {V_MID}"), &format!("version: {V_NEW}"));
    p.apply(&both).unwrap();
    let c = p.wait("main", "every member on the new version and settings", 280, |c| {
        let s = c.status.clone().unwrap_or_default();
        available_with(c, 3)
            && s.members.iter().all(|m| m.version.as_deref() == Some(V_NEW))
            && condition(c, "Progressing") == Some("False")
    });
    let state = format!("/var/lib/runc-etcd/{}", p.instance("main"));
    for h in &p.lab.hosts {
        let conf = std::fs::read_to_string(h.path(&format!("{state}/etcd.conf.yml"))).unwrap();
        assert!(conf.contains("snapshot-count: 5000"), "{}: {conf}", h.name());
    }
    since.one_restart_each_one_at_a_time(&p);
    nothing_lost(&p, &c, w, 100, 3);
}

/// Hazard 5. One EtcdMember deleted by hand, another's node label changed by hand. Before: the
/// agent stopped and archived a deleted member at once, with no etcd removal and no quorum check.
/// Now a member leaves only through the controller's steps: both keep running, the controller
/// makes the deleted EtcdMember again and puts the label back.
#[test]
fn a_member_deleted_or_relabelled_by_hand_keeps_running() {
    let p = Plane::up(3);
    let c = main_cluster(&p, 3, "");
    let w = writer(&p, &c);
    let ids = |c: &runc_etcd_api::EtcdCluster| {
        let mut ids: Vec<String> = c
            .status
            .clone()
            .unwrap()
            .members
            .iter()
            .filter_map(|m| m.member_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&c);
    let unit = format!("runc-etcd@{}.service", p.instance("main"));
    // Each unit's invocation: a new one means the member was stopped or restarted.
    let invocations = || -> Vec<String> {
        p.lab
            .hosts
            .iter()
            .map(|h| {
                h.check(&["systemctl", "show", "--value", "-p", "InvocationID", &unit])
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let started = invocations();
    let ms = etcd_members(&p);
    let api: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    let (deleted, relabelled) = (
        ms[0].metadata.name.clone().unwrap(),
        ms[1].metadata.name.clone().unwrap(),
    );
    p.rt.block_on(api.delete(&deleted, &DeleteParams::default())).unwrap();
    let label = serde_json::json!({"metadata": {"labels": {"runc-etcd.io/node": "somewhere-else"}}});
    p.rt.block_on(api.patch(
        &relabelled,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&label),
    ))
    .unwrap();
    eventually("both EtcdMembers made whole again", 60, || {
        let now = etcd_members(&p);
        let again = now.iter().find(|m| m.metadata.name.as_deref() == Some(&deleted));
        let other = now.iter().find(|m| m.metadata.name.as_deref() == Some(&relabelled));
        again.is_some_and(|m| m.metadata.deletion_timestamp.is_none())
            && other.is_some_and(|m| m.metadata.labels.as_ref().unwrap()["runc-etcd.io/node"] == m.spec.node_name)
    });
    assert!(p.event_count("main", "MemberRestored") >= 2);
    // Past the agents' sweep for members with no EtcdMember (every 30 s).
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(invocations(), started, "a member was stopped or restarted");
    let c = p.wait_ready("main", 3, 60);
    assert_eq!(ids(&c), before, "the same three members");
    nothing_lost(&p, &c, w, 100, 3);
}

/// Debian's libfaketime (package faketime): wall clock moved, monotonic clock left alone.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Hazard 8. A second operator whose clock is an hour ahead. Before: it compared the leader's
/// renewTime with its own clock, found the Lease an hour old, and led at once beside the leader.
/// Now a Lease expires only after it has not changed for its duration on the candidate's own
/// clock: the standby waits while the leader renews, and takes over once it is gone.
#[test]
fn an_operator_whose_clock_is_an_hour_ahead_does_not_lead_beside_the_leader() {
    let mut p = Plane::up(1);
    let c = main_cluster(&p, 1, "");
    let w = writer(&p, &c);
    let ahead =
        p.cp.start_operator(&[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME", "+1h"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ])
        .unwrap();
    // Several lease durations (the lab's is 4 s) while the leader renews.
    std::thread::sleep(Duration::from_secs(16));
    let log = p.cp.operator_log(ahead);
    assert!(log.contains("waiting to lead"), "the second operator runs: {log}");
    assert!(!log.contains("leading as"), "two operators lead at once:\n{log}");
    assert_eq!(p.cp.operator_exit(0), None, "the leader still runs");
    // The leader dies: the operator ahead takes over and carries on.
    p.cp.kill_operator(0);
    eventually("the operator ahead to lead", 60, || {
        p.cp.operator_log(ahead)
            .contains(&format!("leading as operator-{ahead}"))
    });
    p.apply(&cluster_yaml("main", 3, &p.lab.image(V_MID), "")).unwrap();
    let c = p.wait(
        "main",
        "the new leader's report of the spec it cannot carry out",
        60,
        |c| degraded_by(c, "InsufficientNodes", ""),
    );
    nothing_lost(&p, &c, w, 100, 1);
}

/// Hazard 6. A cluster deleted with a foreground cascade, then a namespace with a cluster in it
/// deleted. Before: the agent DaemonSet lived in the cluster's namespace and was owned by the
/// cluster, so either deletion could take the agents before they retired the members: the
/// members' finalizers were never released, the namespace stayed Terminating and the units kept
/// running. Now the agents live in the operator's namespace: every member is stopped and
/// archived on its host, and the cluster and the namespace go.
#[test]
fn deleting_a_cluster_in_the_foreground_or_its_namespace_archives_every_member() {
    let mut p = Plane::up(3);
    let apps = p.use_namespace("apps");
    let stopped_and_archived = |p: &Plane, n: usize| {
        let unit = format!("runc-etcd@{}.service", p.instance("main"));
        let state = format!("/var/lib/runc-etcd/{}", p.instance("main"));
        let hosts: Vec<_> = p
            .lab
            .hosts
            .iter()
            .filter(|h| {
                std::fs::read_dir(h.path(&format!("{state}/archive"))).is_ok_and(|d| {
                    d.flatten().any(|e| {
                        // An archive is root's alone (issue 12, item 5).
                        let wrong = not_private(&h.path(&state), &e.path());
                        assert!(wrong.is_empty(), "{wrong:?}");
                        e.path().join("data/member/wal").is_dir()
                    })
                })
            })
            .collect();
        assert_eq!(hosts.len(), n, "hosts holding an archived member");
        for h in p.lab.hosts.iter() {
            let active = h
                .exec(&["systemctl", "is-active", "--quiet", &unit])
                .unwrap()
                .status
                .success();
            assert!(!active, "{}: the unit still runs", h.name());
        }
    };

    // A foreground cascade: Kubernetes deletes the cluster's dependents first.
    let c = main_cluster(&p, 1, "");
    let w = writer(&p, &c);
    std::thread::sleep(Duration::from_secs(2));
    assert!(w.stop().len() > 10);
    p.rt.block_on(p.clusters().delete("main", &DeleteParams::foreground()))
        .unwrap();
    eventually("the cluster deleted in the foreground to go", 120, || {
        p.get("main").is_none()
    });
    stopped_and_archived(&p, 1);

    // The namespace, with a three-member cluster and a writer.
    let c = main_cluster(&p, 3, "");
    let w = writer(&p, &c);
    std::thread::sleep(Duration::from_secs(3));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(p.cp.client.clone());
    p.rt.block_on(namespaces.delete(&apps, &DeleteParams::default()))
        .unwrap();
    eventually("the namespace to finish deleting", 180, || {
        p.rt.block_on(namespaces.get_opt(&apps)).unwrap().is_none()
    });
    let acked = w.stop();
    assert!(acked.len() > 20, "the writer kept writing: {}", acked.len());
    stopped_and_archived(&p, 3);
    // Its agents went with it (they live in the operator's namespace, and only as long as a
    // cluster needs them).
    let agents: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(p.cp.client.clone(), &p.cp.namespace);
    let left = p.rt.block_on(agents.list(&Default::default())).unwrap().items;
    assert!(
        left.is_empty(),
        "{:?}",
        left.iter().map(|d| d.metadata.name.clone()).collect::<Vec<_>>()
    );
}

/// Hazard 7, the failure path. New settings that a member cannot come back with: its host takes
/// no new peer connections (a firewall rule that bites only at a restart). Before: the agent put
/// the old settings back, then tried again on its next pass, restarting the member forever. Now
/// the change is tried once: rolled back, reported (the member's phase, the rollout stopped with
/// its reason), and not tried again until the spec changes; no other member is touched.
#[test]
fn a_change_a_member_cannot_take_is_rolled_back_once_and_stops_the_rollout() {
    let p = Plane::up(3);
    let (_, w) = settled_under_writes(&p);
    for h in &p.lab.hosts {
        h.refuse_new(2380, true).unwrap();
    }
    let since = Since::now();
    p.apply(&cluster_yaml(
        "main",
        3,
        &p.lab.image(V_MID),
        "  etcd: {snapshotCount: 5000}\n",
    ))
    .unwrap();
    let c = p.wait("main", "the rollout stopped", 240, |c| {
        let op = c.status.as_ref().and_then(|s| s.last_operation.clone());
        op.is_some_and(|op| op.kind.as_str() == "UpgradeMember" && op.state.as_str() == "Failed")
    });
    let op = c.status.clone().unwrap().last_operation.unwrap();
    let failed = op.member.clone().unwrap();
    assert!(
        op.message.as_deref().unwrap_or_default().contains("not tried again"),
        "{op:?}\n{}",
        p.cp.agent_logs(60)
    );
    let member = etcd_members(&p)
        .into_iter()
        .find(|m| m.spec.member_name == failed)
        .unwrap();
    assert_eq!(
        member.status.unwrap().phase.map(|p| p.to_string()).as_deref(),
        Some("Failed")
    );
    // Quiet: no more restarts of it, none of the others.
    std::thread::sleep(Duration::from_secs(20));
    let restarts = since.restarts(&p);
    let host = p.lab.host(host_of(&p, &member.spec.node_name)).name().to_string();
    for (h, n) in &restarts {
        let want = if *h == host { 2 } else { 0 };
        assert_eq!(
            *n, want,
            "{h}: restarts (one with the new settings, one with the old): {restarts:?}"
        );
    }
    let state = format!("/var/lib/runc-etcd/{}", p.instance("main"));
    let conf = std::fs::read_to_string(
        p.lab
            .host(host_of(&p, &member.spec.node_name))
            .path(&format!("{state}/etcd.conf.yml")),
    )
    .unwrap();
    assert!(
        !conf.contains("snapshot-count: 5000"),
        "the old settings are back: {conf}"
    );

    // The firewall fixed, the member serves again as it was; the spec put back, all is settled.
    for h in &p.lab.hosts {
        h.refuse_new(2380, false).unwrap();
    }
    // As `kubectl edit` would put it back (the lab's server-side apply is a merge patch, which
    // cannot drop a field: issue 14).
    let back = serde_json::json!({"spec": {"etcd": null}});
    p.rt.block_on(
        p.clusters()
            .patch("main", &PatchParams::default(), &Patch::Merge(&back)),
    )
    .unwrap();
    let c = p.wait("main", "healthy and settled", 120, |c| {
        available_with(c, 3)
            && condition(c, "Progressing") == Some("False")
            && condition(c, "Degraded") == Some("False")
    });
    nothing_lost(&p, &c, w, 100, 3);
}

/// What a paused cluster's objects are: each one's name and resourceVersion (Secrets, the
/// Service, its EndpointSlice, the agent DaemonSet) and each EtcdMember's spec generation.
fn objects_of_main(p: &Plane) -> Vec<(String, String)> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::ResourceExt;
    let lp = kube::api::ListParams::default().labels("runc-etcd.io/cluster=main");
    let rv = |kind: &str, m: &kube::api::ObjectMeta| {
        (
            format!("{kind}/{}", m.name.clone().unwrap_or_default()),
            m.resource_version.clone().unwrap_or_default(),
        )
    };
    let mut all = Vec::new();
    let secrets = p.rt.block_on(secrets(p).list(&lp)).unwrap().items;
    all.extend(secrets.iter().map(|s| rv("secret", &s.metadata)));
    let svc: Api<Service> = Api::namespaced(p.cp.client.clone(), p.ns());
    all.push(rv("service", &p.rt.block_on(svc.get("main-client")).unwrap().metadata));
    let slices: Api<EndpointSlice> = Api::namespaced(p.cp.client.clone(), p.ns());
    all.push(rv(
        "endpointslice",
        &p.rt.block_on(slices.get("main-client")).unwrap().metadata,
    ));
    let ds: Api<DaemonSet> = Api::all(p.cp.client.clone());
    let ds = p.rt.block_on(ds.list(&lp)).unwrap().items;
    assert_eq!(ds.len(), 1, "one agent DaemonSet");
    all.push(rv("daemonset", &ds[0].metadata));
    for m in etcd_members(p) {
        all.push((
            format!("etcdmember/{}", m.name_any()),
            format!("generation {:?}", m.metadata.generation),
        ));
    }
    all.sort();
    all
}

/// Pause that pauses (issue 16, item 4). Before: `spec.paused` only skipped planning, while
/// children were still applied, scheduled backups still taken and agents still converged.
#[test]
fn a_paused_cluster_is_left_exactly_as_it_runs() {
    let p = Plane::up(3);
    let schedule =
        "  backup:\n    schedule: '*/5 * * * * *'\n    retention: 50\n    hostPath:\n      path: /var/backups/etcd\n";
    let c = main_cluster(&p, 3, schedule);
    let w = writer(&p, &c);
    every_unit_active(&p);
    eventually("a scheduled backup", 60, || backups(&p).iter().any(|b| b.succeeded()));

    let set = |patch: serde_json::Value| {
        p.rt.block_on(
            p.clusters()
                .patch("main", &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .unwrap();
    };
    set(serde_json::json!({"spec": {"paused": true}}));
    p.wait("main", "phase Paused", 60, |c| phase(c) == "Paused");
    // A backup started before the pause may still finish: let it.
    std::thread::sleep(Duration::from_secs(6));
    let (backups_then, objects_then) = (backups(&p).len(), objects_of_main(&p));
    let since = Since::now();
    // A change that would restart every member, and a member stopped by hand.
    set(serde_json::json!({"spec": {"etcd": {"snapshotCount": 5000}}}));
    let unit = format!("runc-etcd@{}.service", p.instance("main"));
    p.lab.hosts[2].check(&["systemctl", "stop", &unit]).unwrap();
    std::thread::sleep(Duration::from_secs(35));

    let state = unit_prop_of(&p.lab.hosts[2], &unit, "ActiveState");
    assert_eq!(state, "inactive", "the agent left the stopped member stopped");
    assert_eq!(
        since.restarts(&p).iter().map(|(_, n)| *n).sum::<usize>(),
        0,
        "no member restarted"
    );
    assert_eq!(backups(&p).len(), backups_then, "no backup scheduled or expired");
    assert_eq!(objects_of_main(&p), objects_then, "no object of the cluster changed");
    let c = p.get("main").unwrap();
    assert_eq!(phase(&c), "Paused");
    assert_eq!(condition(&c, "Progressing"), Some("False"));
    assert!(
        degraded_by(&c, "MembersUnhealthy", ""),
        "status still reports what it sees: {:?}",
        c.status.as_ref().map(|s| &s.conditions)
    );

    // Unpaused, it converges: the member runs again, the setting rolls, backups resume.
    set(serde_json::json!({"spec": {"paused": false}}));
    let c = p.wait("main", "Available, converged, the setting rolled", 240, |c| {
        available_with(c, 3)
            && c.status.as_ref().and_then(|s| s.converged_generation) == c.metadata.generation
            && phase(c) == "Running"
    });
    every_unit_active(&p);
    eventually("scheduled backups again", 60, || backups(&p).len() > backups_then);
    nothing_lost(&p, &c, w, 100, 3);
}

fn unit_prop_of(h: &runc_etcd_testkit::lab::LabHost, unit: &str, prop: &str) -> String {
    h.check(&["systemctl", "show", "--value", "-p", prop, unit])
        .unwrap()
        .trim()
        .to_string()
}

/// The agents' namespace enforcing a Pod Security level that refuses privileged pods: a real
/// cluster makes no agent pod. The cluster says why and how to fix it, decides nothing on the
/// agents' silence (no member is placed), and comes up once the namespace is relabelled.
#[test]
fn agents_refused_by_pod_security_are_reported_with_the_fix() {
    use k8s_openapi::api::core::v1::Namespace;
    let p = Plane::up(1);
    let namespaces: Api<Namespace> = Api::all(p.cp.client.clone());
    let label = |level: &str| {
        let patch = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}});
        p.rt.block_on(namespaces.patch(p.ns(), &PatchParams::default(), &Patch::Merge(&patch)))
            .unwrap();
    };
    label("baseline");
    p.apply(&cluster_yaml("main", 1, &p.lab.image(V_MID), "")).unwrap();
    p.wait("main", "Degraded/AgentsForbidden with the fix", 60, |c| {
        degraded_by(
            c,
            "AgentsForbidden",
            &format!(
                "kubectl label namespace {} pod-security.kubernetes.io/enforce=privileged",
                p.ns()
            ),
        )
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        p.owned::<EtcdMember>("main").is_empty(),
        "no member placed while no agent can run"
    );
    // What `kubectl describe daemonset` shows: admission refused its pods, and none exists.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(p.cp.client.clone(), &p.cp.namespace);
    let refused = p.rt.block_on(events.list(&Default::default())).unwrap().items;
    assert!(
        refused.iter().any(|e| e.reason.as_deref() == Some("FailedCreate")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("violates PodSecurity \"baseline:latest\""))),
        "{:?}",
        refused.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>()
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(p.cp.client.clone(), &p.cp.namespace);
    assert!(p.rt.block_on(pods.list(&Default::default())).unwrap().items.is_empty());
    label("privileged");
    p.wait_ready("main", 1, 120);
}
