//! Hazard 9 (README "Hazards"): crashes in the middle of a step. The operator dies at the worst
//! moment of a scale-down removal, a member replacement, an upgrade, a NOSPACE recovery and a
//! rebuild from backup (failpoints, `runc_etcd_host::failpoint`); an agent dies in the middle of
//! placing, upgrading and retiring its member; the operator dies in a CA rotation right after
//! sending a member its new trust bundle. The next leader, or the agent systemd restarts,
//! finishes each step exactly once, with a writer running and nothing acknowledged lost.
//! (The scale-up's crash is in tests/operator.rs.)

mod common;

use std::time::Duration;

use common::hazard::*;
use common::plane::*;
use common::*;
use runc_etcd_testkit::lab::{LabHost, netns};

fn needs_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!("these tests need the failpoints: cargo nextest run --features runc-etcd/failpoints");
    }
}

/// Waits for operator `i` to die at its failpoint; returns the change it left in status.
fn died(p: &mut Plane, i: usize) -> runc_etcd_api::Operation {
    eventually("the operator to die at its failpoint", 180, || {
        p.cp.operator_exit(i).is_some()
    });
    assert_eq!(p.cp.operator_exit(i), Some(86), "{}", tail(&p.cp.operator_log(i), 40));
    let op = p.get("main").unwrap().status.unwrap().last_operation.unwrap();
    assert_eq!(op.state.as_str(), "InProgress", "{op:?}");
    op
}

fn unit(p: &Plane) -> String {
    format!("runc-etcd@{}.service", p.instance("main"))
}

fn state(p: &Plane) -> String {
    format!("/var/lib/runc-etcd/{}", p.instance("main"))
}

fn active(p: &Plane, h: &LabHost) -> bool {
    h.exec(&["systemctl", "is-active", "--quiet", &unit(p)])
        .unwrap()
        .status
        .success()
}

/// Whether `h` keeps, in its archive, a member's data for which `keep` holds.
fn archived(p: &Plane, h: &LabHost, keep: impl Fn(&std::path::Path) -> bool) -> bool {
    std::fs::read_dir(h.path(&format!("{}/archive", state(p))))
        .map(|d| d.flatten().any(|e| keep(&e.path().join("data/member"))))
        .unwrap_or(false)
}

fn on_new_version(c: &runc_etcd_api::EtcdCluster) -> bool {
    let s = c.status.clone().unwrap_or_default();
    available_with(c, 3)
        && s.members.iter().all(|m| m.version.as_deref() == Some(V_NEW))
        && condition(c, "Progressing") == Some("False")
}

fn at_new_version(p: &Plane, extra: &str) -> String {
    cluster_yaml("main", 3, &p.lab.image(V_NEW), extra)
        .replace(&format!("version: {V_MID}"), &format!("version: {V_NEW}"))
}

/// The operator dies right after etcd removed a member in a scale-down, before the member's
/// EtcdMember is released. A new leader finishes that same removal exactly once: the member is
/// released, stopped and archived on its host, and no other member is removed.
#[test]
fn a_new_leader_finishes_the_removal_its_predecessor_died_in() {
    needs_failpoints();
    let mut p = Plane::up_with(3, &[("RUNC_ETCD_FAILPOINT", "after-remove-from-etcd")]);
    let c = main_cluster(&p, 3, "");
    let w = writer(&p, &c);
    p.apply(&cluster_yaml("main", 2, &p.lab.image(V_MID), "")).unwrap();
    let op = died(&mut p, 0);
    // Mid-change: etcd lists two members, three EtcdMembers remain.
    assert_eq!(op.kind.as_str(), "RemoveMember");
    let removed = op.member.clone().unwrap();
    assert_eq!(etcd_members(&p).len(), 3);

    p.cp.start_operator(&[]).unwrap();
    let c = p.wait_ready("main", 2, 180);
    let op = c.status.clone().unwrap().last_operation.unwrap();
    assert_eq!(
        (op.kind.as_str(), op.member.as_deref(), op.state.as_str()),
        ("RemoveMember", Some(removed.as_str()), "Succeeded")
    );
    assert_eq!(
        p.event_count("main", "RemoveMemberSucceeded"),
        1,
        "removed exactly once"
    );
    let left: Vec<String> = etcd_members(&p).iter().map(|m| m.spec.member_name.clone()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&removed), "{left:?}");
    // Its host stopped it and keeps its data in archive/.
    let stopped: Vec<_> = p.lab.hosts.iter().filter(|h| !active(&p, h)).collect();
    assert_eq!(stopped.len(), 1, "one unit stopped");
    assert!(
        archived(&p, stopped[0], |d| d.is_dir()),
        "the removed member's data is archived"
    );
    nothing_lost(&p, &c, w, 100, 2);
}

/// The operator dies right after sending the first member to a new version; the next dies right
/// after etcd removed a failed member it replaces. Each next leader finishes the step: every
/// member restarted exactly once for the upgrade, never two at once; the failed member replaced
/// exactly once, its broken data archived on its host.
#[test]
fn a_new_leader_finishes_an_upgrade_and_a_replacement_its_predecessors_died_in() {
    needs_failpoints();
    let recovery = "  recovery: {memberUnhealthyTimeout: 10s}\n";
    let mut p = Plane::up_with(3, &[("RUNC_ETCD_FAILPOINT", "after-upgrade-patch")]);
    let c = main_cluster(&p, 3, recovery);
    let w = writer(&p, &c);
    every_unit_active(&p);
    let since = Since::now();
    p.apply(&at_new_version(&p, recovery)).unwrap();
    let op = died(&mut p, 0);
    assert_eq!(op.kind.as_str(), "UpgradeMember");

    p.cp.start_operator(&[("RUNC_ETCD_FAILPOINT", "after-remove-from-etcd")])
        .unwrap();
    p.wait("main", "every member on the new version", 240, on_new_version);
    since.one_restart_each_one_at_a_time(&p);
    assert_eq!(
        p.event_count("main", "UpgradeMemberSucceeded"),
        3,
        "{:?}",
        p.event_reasons("main")
    );

    // A follower's database is destroyed: it crash-loops, and is replaced.
    let c = p.get("main").unwrap();
    let s = c.status.clone().unwrap();
    let broken = s
        .members
        .iter()
        .find(|m| m.role.as_deref() == Some("follower"))
        .unwrap()
        .clone();
    let hn = host_of(&p, &broken.node);
    p.lab
        .host(hn)
        .check(&[
            "sh",
            "-c",
            &format!(
                "systemctl kill -s KILL {}; echo garbage > {}/data/member/snap/db",
                unit(&p),
                state(&p)
            ),
        ])
        .unwrap();
    let op = died(&mut p, 1);
    assert_eq!(
        (op.kind.as_str(), op.member.as_deref()),
        ("ReplaceMember", Some(broken.name.as_str()))
    );

    p.cp.start_operator(&[]).unwrap();
    let c = p.wait("main", "the broken member replaced", 240, |c| {
        available_with(c, 3) && !c.status.clone().unwrap().members.iter().any(|m| m.name == broken.name)
    });
    assert_eq!(
        p.event_count("main", "ReplaceMemberSucceeded"),
        1,
        "replaced exactly once: {:#?}\n{}",
        p.events("main"),
        tail(&p.cp.operator_log(2), 200)
    );
    assert_eq!(etcd_members(&p).len(), 3);
    let garbage = |d: &std::path::Path| std::fs::read(d.join("snap/db")).is_ok_and(|db| db == b"garbage\n");
    assert!(
        archived(&p, p.lab.host(hn), garbage),
        "the broken data is archived on its host"
    );
    nothing_lost(&p, &c, w, 100, 3);
}

/// The operator dies in a NOSPACE recovery, right after compacting the history. The next leader
/// finishes it exactly once (compacting again is a no-op), and writes are taken again: the last
/// acknowledged value is there.
#[test]
fn a_new_leader_finishes_the_nospace_recovery_its_predecessor_died_in() {
    needs_failpoints();
    let mut p = Plane::up_with(3, &[("RUNC_ETCD_FAILPOINT", "after-compact")]);
    let c = main_cluster(&p, 3, "  etcd: {quotaBackendBytes: 134217728}\n");
    let w = writer(&p, &c);
    let (endpoints, tls) = (c.status.clone().unwrap().client_endpoints, p.client_tls("main"));
    let last = netns::run_in(&p.lab.client_ns(), {
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        move || async move {
            let mut c = connect(endpoints, tls).await;
            let mib = "x".repeat(1 << 20);
            for i in 1..400 {
                if let Err(e) = c.put("big", format!("{i}:{mib}"), None).await {
                    assert!(e.to_string().contains("space exceeded"), "{e}");
                    return i - 1;
                }
            }
            panic!("the quota was never reached");
        }
    });
    let op = died(&mut p, 0);
    assert_eq!(op.kind.as_str(), "RecoverSpace");

    p.cp.start_operator(&[]).unwrap();
    let back = netns::run_in(&p.lab.client_ns(), move || async move {
        let mut c = connect(endpoints, tls).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while c.put("after", "recovered", None).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "writes still refused after 120s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let v = c.get("big", None).await.expect("get");
        v.kvs()[0].value_str().unwrap().split(':').next().unwrap().to_string()
    });
    // The put refused with NOSPACE may have been applied (etcd applies it, then refuses).
    assert!(
        [last.to_string(), (last + 1).to_string()].contains(&back),
        "last acknowledged {last}, got {back}"
    );
    let c = p.wait("main", "healthy again", 90, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });
    assert_eq!(
        p.event_count("main", "RecoverSpaceSucceeded"),
        1,
        "recovered exactly once"
    );
    nothing_lost(&p, &c, w, 100, 3);
}

/// The operator dies in a rebuild after quorum loss, right after releasing every member. The
/// next leader finishes it exactly once: one new seed from the same backup, with exactly the
/// backed-up keys, and a new cluster ID.
#[test]
fn a_new_leader_finishes_the_rebuild_its_predecessor_died_in() {
    needs_failpoints();
    let mut p = Plane::up_with(2, &[("RUNC_ETCD_FAILPOINT", "after-release-for-rebuild")]);
    let (s3, spec) = s3_destination(&p);
    let recovery = "  recovery:\n    quorumLoss: RestoreFromBackup\n    quorumLossTimeout: 10s\n";
    p.apply(&cluster_yaml(
        "main",
        1,
        &p.lab.image(V_MID),
        &format!("{spec}{recovery}"),
    ))
    .unwrap();
    let before = p.wait_ready("main", 1, 180).status.unwrap();
    // The writer's acknowledged writes, all taken before the backup, are what it must bring back.
    let w = writer(&p, &p.get("main").unwrap());
    std::thread::sleep(Duration::from_secs(3));
    let acked = w.stop();
    assert!(acked.len() > 20, "the writer kept writing: {}", acked.len());
    back_up(&p, "nightly");
    p.put_keys("main", "after/", 5);

    lose_host(&p, host_of(&p, &before.members[0].node));
    let op = died(&mut p, 0);
    assert_eq!(
        (op.kind.as_str(), op.backup.as_deref()),
        ("RebuildFromBackup", Some("nightly"))
    );

    p.cp.start_operator(&[]).unwrap();
    let c = p.wait_ready("main", 1, 300);
    let after = c.status.clone().unwrap();
    assert_ne!(after.cluster_id, before.cluster_id);
    assert_eq!(
        p.event_count("main", "RebuildFromBackupSucceeded"),
        1,
        "rebuilt exactly once"
    );
    let keys = p.all_keys("main");
    assert!(
        !keys.keys().any(|k| k.starts_with("after/")),
        "only what the backup holds"
    );
    assert_no_write_lost(&p, &c, &acked);
    drop(s3);
}

/// Where an agent marks a failpoint fired: a folder its pod mounts from the host (the agent
/// runs in the image's root, which the test does not see).
const FIRED_DIR: &str = "/run/lock/runc-etcd";

/// Arms failpoint `point` in the agents of `hosts` (systemd's environment for the units it
/// starts, then the agents restarted): each dies there once, and systemd starts it again.
fn arm_agents(hosts: &[&LabHost], point: &str) {
    for h in hosts {
        h.check(&[
            "systemctl",
            "set-environment",
            &format!("RUNC_ETCD_FAILPOINT={point}"),
            &format!("RUNC_ETCD_FAILPOINT_ONCE={FIRED_DIR}/failpoint-{point}"),
        ])
        .unwrap();
        h.check(&["systemctl", "restart", "runc-etcd-agent-*"]).unwrap();
    }
}

fn fired(h: &LabHost, point: &str) -> bool {
    h.path(&format!("{FIRED_DIR}/failpoint-{point}")).exists()
}

/// An agent dies after writing a new member's files but before starting it; agents die after
/// stopping their member for an upgrade; an agent dies after stopping a removed member but
/// before archiving it. Each agent, started again by systemd, finishes: the new member runs,
/// every member is upgraded with one restart (one at a time), the removed one is archived.
#[test]
fn a_killed_agent_finishes_placing_upgrading_and_retiring_its_member() {
    needs_failpoints();
    let p = Plane::up(3);
    let c = main_cluster(&p, 2, "");
    let w = writer(&p, &c);
    let on: Vec<u8> = c
        .status
        .clone()
        .unwrap()
        .members
        .iter()
        .map(|m| host_of(&p, &m.node))
        .collect();
    let spare = p.lab.hosts.iter().find(|h| !on.contains(&h.n)).unwrap();

    arm_agents(&[spare], "place-before-start");
    p.apply(&cluster_yaml("main", 3, &p.lab.image(V_MID), "")).unwrap();
    p.wait_ready("main", 3, 180);
    assert!(fired(spare, "place-before-start"), "{}", p.cp.agent_logs(30));
    every_unit_active(&p);

    let all: Vec<&LabHost> = p.lab.hosts.iter().collect();
    arm_agents(&all, "upgrade-after-stop");
    let since = Since::now();
    p.apply(&at_new_version(&p, "")).unwrap();
    p.wait("main", "every member on the new version", 240, on_new_version);
    assert!(
        all.iter().all(|h| fired(h, "upgrade-after-stop")),
        "{}",
        p.cp.agent_logs(30)
    );
    since.one_restart_each_one_at_a_time(&p);

    arm_agents(&all, "retire-after-stop");
    p.apply(&at_new_version(&p, "").replace("size: 3", "size: 2")).unwrap();
    let c = p.wait_ready("main", 2, 180);
    eventually("the removed member's EtcdMember to go", 60, || {
        etcd_members(&p).len() == 2
    });
    let retired: Vec<_> = all.iter().filter(|h| fired(h, "retire-after-stop")).collect();
    assert_eq!(retired.len(), 1, "one agent retired a member");
    assert!(!active(&p, retired[0]));
    assert!(
        archived(&p, retired[0], |d| d.is_dir()),
        "the removed member's data is archived"
    );
    nothing_lost(&p, &c, w, 100, 2);
}

/// The operator dies in a CA rotation right after giving a member its new trust bundle (the
/// member's agent restarts it meanwhile). The next leader resumes the rotation from the stage
/// recorded on the CA Secret and finishes it: two restarts per member, never two at once, and
/// nothing acknowledged lost by a writer that re-reads the client Secret.
#[test]
fn a_new_leader_finishes_the_ca_rotation_its_predecessor_died_in() {
    needs_failpoints();
    let mut p = Plane::up_with(3, &[("RUNC_ETCD_FAILPOINT", "after-ca-trust-rolled")]);
    let c = main_cluster(&p, 3, "  tls: {caRotationHold: 5s}\n");
    let old_ca = c.status.clone().unwrap().ca_fingerprint.unwrap();
    let tls = ReloadableTls::new(p.client_tls("main"));
    let endpoints = client_urls(&c);
    let w = Writer::start_reloading(&p.lab.client_ns(), endpoints, tls.clone());
    every_unit_active(&p);
    let since = Since::now();
    ask_ca_rotation(&p, "now");
    eventually("the operator to die at its failpoint", 120, || {
        p.cp.operator_exit(0).is_some()
    });
    assert_eq!(p.cp.operator_exit(0), Some(86), "{}", tail(&p.cp.operator_log(0), 40));
    let mid = p.get("main").unwrap().status.unwrap();
    assert_eq!(
        mid.ca_rotation.map(|s| s.to_string()).as_deref(),
        Some("TrustBoth"),
        "died in the first stage"
    );

    p.cp.start_operator(&[]).unwrap();
    let mut held = String::new();
    eventually("the rotation finished by the next leader", 240, || {
        let ca = p.secret_file("main-client-tls", "ca.crt");
        if ca != held {
            tls.set(p.client_tls("main"));
            held = ca;
        }
        let s = p.get("main").unwrap().status.unwrap_or_default();
        s.ca_rotation.is_none() && s.ca_fingerprint.as_deref().is_some_and(|f| f != old_ca)
    });
    since.restarts_each_one_at_a_time(&p, 2);
    assert_eq!(p.event_count("main", "CaRotationFinished"), 1);
    let c = p.wait("main", "Available with 3 members", 60, |c| available_with(c, 3));
    nothing_lost(&p, &c, w, 100, 3);
}
