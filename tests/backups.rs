//! Backups and restores end to end: EtcdBackups taken by the agents from real members, stored in
//! a host folder or a real S3-compatible server (s3s-fs), kept as configured, restored into a
//! new cluster, and used to rebuild a cluster that lost quorum, on request or after its timeout.

mod common;

use std::time::Duration;

use common::plane::*;
use common::*;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use runc_etcd_api::{EtcdBackup, EtcdMember};

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A Succeeded backup says where it is, how big, its checksum, revision and version.
fn assert_complete(b: &EtcdBackup) {
    let s = b.status.clone().unwrap();
    assert_eq!(s.phase.as_deref(), Some("Succeeded"), "{s:?}");
    assert!(s.size_bytes.unwrap() > 0 && s.revision.unwrap() > 0, "{s:?}");
    assert_eq!(s.sha256.as_ref().unwrap().len(), 64, "{s:?}");
    assert_eq!(s.etcd_version.as_deref(), Some(V_MID));
    assert!(s.start_time.is_some() && s.completion_time.is_some() && s.location.is_some());
}

#[test]
fn scheduled_backups_are_kept_as_configured_and_restore_into_a_new_cluster() {
    let p = Plane::up(4);
    let image = p.lab.image(V_MID);
    let every10s =
        "  backup:\n    schedule: '*/10 * * * * *'\n    retention: 2\n    hostPath:\n      path: /var/backups/etcd\n";
    p.apply(&cluster_yaml("main", 3, &image, every10s)).unwrap();
    p.wait_ready("main", 3, 180);
    p.put_keys("main", "k/", 50);
    let written = p.all_keys("main");
    let writer = Writer::start_with(&p.lab, p.service_endpoints("main", "https"), p.client_tls("main"));

    // Scheduled backups appear as EtcdBackups; retention keeps the newest two (the older ones
    // are deleted with their files).
    let node_host = |node: &str| (1..=4u8).find(|n| p.cp.node_name(p.lab.host(*n)) == node).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    eventually("four scheduled backups taken", 90, || {
        seen.extend(backups(&p).into_iter().filter_map(|b| b.metadata.name));
        seen.len() >= 4
    });
    // The schedule stops here (the backups kept must stay for the restore below).
    p.apply(&cluster_yaml(
        "main",
        3,
        &image,
        "  backup:\n    schedule: null\n    retention: 2\n    hostPath:\n      path: /var/backups/etcd\n",
    ))
    .unwrap();
    // Once the last one in flight has finished, retention leaves two.
    eventually("retention down to 2", 30, || {
        let all = backups(&p);
        all.iter().all(|b| b.finished()) && all.len() <= 2
    });
    assert!(p.event_count("main", "BackupExpired") >= 1);
    // Backups taken under writes lose none of them.
    let acked = writer.stop();
    let now = p.all_keys("main");
    let lost: Vec<&String> = acked.iter().filter(|k| !now.contains_key(*k)).collect();
    assert!(
        acked.len() > 20 && lost.is_empty(),
        "{} written, lost: {lost:?}",
        acked.len()
    );
    let kept: Vec<EtcdBackup> = backups(&p).into_iter().filter(|b| b.succeeded()).collect();
    assert!(!kept.is_empty() && kept.len() <= 2, "{kept:?}");
    for b in &kept {
        assert_complete(b);
        // The file is on the node that took it, with the recorded checksum.
        let s = b.status.clone().unwrap();
        let h = p.lab.host(node_host(s.node_name.as_deref().unwrap()));
        let bytes = std::fs::read(h.path(s.location.as_deref().unwrap())).unwrap();
        assert_eq!(sha256(&bytes), s.sha256.clone().unwrap());
        // Its checksum is recorded beside it (`host restore` checks it), with the marker.
        let about: serde_json::Value = serde_json::from_slice(
            &std::fs::read(h.path(s.location.as_deref().unwrap()).with_file_name("backup.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(about["sha256"].as_str(), s.sha256.as_deref(), "{about}");
        // Readable by root only, from the destination folder down.
        let wrong = not_private(&h.path("/var/backups/etcd"), &h.path(s.location.as_deref().unwrap()));
        assert!(wrong.is_empty(), "{wrong:?}");
    }
    let gone: Vec<&String> = seen
        .iter()
        .filter(|n| !kept.iter().any(|b| b.metadata.name.as_ref() == Some(n)))
        .collect();
    assert!(!gone.is_empty());
    eventually("the expired backups' folders deleted on every host", 30, || {
        (1..=4u8).all(|n| {
            gone.iter().all(|name| {
                !p.lab
                    .host(n)
                    .path(&format!("/var/backups/etcd/{}/{name}", p.instance("main")))
                    .exists()
            })
        })
    });
    let status = p.get("main").unwrap().status.unwrap();
    assert!(status.last_backup.is_some());
    assert_eq!(condition(&p.get("main").unwrap(), "BackupSucceeded"), Some("True"));

    // A backup taken after the writes restores into a new cluster (on the backup's node, other
    // ports) with exactly those keys and a new cluster ID.
    let newest = kept.iter().max_by_key(|b| b.status.as_ref().unwrap().revision).unwrap();
    let name = newest.metadata.name.clone().unwrap();
    let copy = format!(
        "  ports: {{client: 12379, peer: 12380, metrics: 12381}}\n  bootstrap:\n    restore:\n      backupName: {name}\n"
    );
    p.apply(&cluster_yaml("copy", 1, &image, &copy)).unwrap();
    let c = p.wait_ready("copy", 1, 180);
    let seed = &c.status.clone().unwrap().members[0];
    assert_eq!(Some(&seed.node), newest.status.as_ref().unwrap().node_name.as_ref());
    let mut restored = p.all_keys("copy");
    restored.retain(|k, _| k.starts_with("k/"));
    let mut expected = written.clone();
    expected.retain(|k, _| k.starts_with("k/"));
    assert_eq!(restored, expected);
    assert_ne!(
        c.status.unwrap().cluster_id,
        p.get("main").unwrap().status.unwrap().cluster_id,
        "a restored cluster has its own ID"
    );
    // Its revision is raised far above the snapshot's (issue 12, item 4): a watcher of the old
    // cluster is told to list again rather than miss or replay events.
    let snapshot_revision = newest.status.as_ref().unwrap().revision.unwrap();
    let revision = p.revision("copy");
    assert!(
        revision >= snapshot_revision + 1_000_000_000,
        "revision {revision}, snapshot at {snapshot_revision}"
    );

    // Growing the restored cluster is a resize of a converged cluster: a backup comes first.
    p.apply(&cluster_yaml("copy", 2, &image, &copy)).unwrap();
    p.wait_ready("copy", 2, 180);
    let before = backup(&p, "copy-before-gen2").expect("a backup before the resize");
    assert_complete(&before);
    assert!(p.event_count("copy", "BackupBeforeChange") >= 1);
    let mut after = p.all_keys("copy");
    after.retain(|k, _| k.starts_with("k/"));
    assert_eq!(after, expected);

    // A folder that does not say it is this backup's (its backup.json marker gone) is never
    // deleted with it (issue 12, item 2): the EtcdBackup goes, the folder stays.
    let s = before.status.clone().unwrap();
    let h = p.lab.host(node_host(s.node_name.as_deref().unwrap()));
    let snapshot = h.path(s.location.as_deref().unwrap());
    std::fs::remove_file(snapshot.with_file_name("backup.json")).unwrap();
    let api: Api<EtcdBackup> = Api::namespaced(p.cp.client.clone(), p.ns());
    p.rt.block_on(api.delete("copy-before-gen2", &DeleteParams::default()))
        .unwrap();
    eventually("the EtcdBackup is gone", 30, || {
        backup(&p, "copy-before-gen2").is_none()
    });
    assert!(snapshot.is_file(), "a folder without the marker is left in place");
}

#[test]
fn quorum_loss_is_reported_and_rebuilt_from_an_s3_backup_on_request() {
    let p = Plane::up(5);
    let (s3, spec) = s3_destination(&p);
    let image = p.lab.image(V_MID);
    p.apply(&cluster_yaml("main", 3, &image, &spec)).unwrap();
    let before = p.wait_ready("main", 3, 180);
    p.put_keys("main", "a/", 30);
    let backed_up = p.all_keys("main");

    // An on-demand backup, stored in the bucket with the checksum it reports.
    let api: Api<EtcdBackup> = Api::namespaced(p.cp.client.clone(), p.ns());
    let b = back_up(&p, "nightly");
    assert_complete(&b);
    let s = b.status.clone().unwrap();
    assert_eq!(
        s.location.as_deref(),
        Some(format!("s3://etcd-backups/lab/{}/nightly/snapshot.db", p.instance("main")).as_str())
    );
    let object = p.lab.dir.join(format!(
        "s3/etcd-backups/lab/{}/nightly/snapshot.db",
        p.instance("main")
    ));
    assert_eq!(sha256(&std::fs::read(&object).unwrap()), s.sha256.unwrap());

    // Writes after the backup, then two of the three members' hosts lose power.
    p.put_keys("main", "b/", 10);
    let members = before.status.unwrap().members;
    let survivor = host_of(&p, &members[2].node);
    for m in members.iter().take(2) {
        lose_host(&p, host_of(&p, &m.node));
    }

    // Manual (the default): reported, with what to do, and nothing is destroyed.
    let c = p.wait("main", "QuorumLost reported", 90, |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("QuorumLost")
    });
    let degraded = c
        .status
        .clone()
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "QuorumLost");
    assert!(
        degraded.message.contains("runc-etcd.io/restore-from-backup=latest"),
        "{}",
        degraded.message
    );
    eventually("a QuorumLost event", 30, || p.event_count("main", "QuorumLost") >= 1);
    std::thread::sleep(Duration::from_secs(10));
    let objs: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    assert_eq!(p.rt.block_on(objs.list(&ListParams::default())).unwrap().items.len(), 3);
    let unit = format!("runc-etcd@{}.service", p.instance("main"));
    assert!(
        p.lab
            .host(survivor)
            .exec(&["systemctl", "is-active", "--quiet", &unit])
            .unwrap()
            .status
            .success()
    );
    assert!(
        p.lab
            .host(survivor)
            .path(&format!("/var/lib/runc-etcd/{}/data/member", p.instance("main")))
            .is_dir()
    );

    // The explicit request: rebuilt from the newest good backup, with exactly its keys.
    let request = serde_json::json!({"metadata": {"annotations": {"runc-etcd.io/restore-from-backup": "latest"}}});
    p.rt.block_on(
        p.clusters()
            .patch("main", &PatchParams::default(), &Patch::Merge(request)),
    )
    .unwrap();
    let c = p.wait_ready("main", 3, 300);
    assert!(
        !c.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("runc-etcd.io/restore-from-backup")
    );
    assert_eq!(p.all_keys("main"), backed_up, "exactly the backed-up keys");
    assert_eq!(p.event_count("main", "RebuildFromBackupSucceeded"), 1);
    // A rebuild raises the revision above the backup's too (issue 12, item 4).
    let revision = p.revision("main");
    assert!(revision >= s.revision.unwrap() + 1_000_000_000, "revision {revision}");
    // The survivor's old data was archived, not deleted.
    let archive = p
        .lab
        .host(survivor)
        .path(&format!("/var/lib/runc-etcd/{}/archive", p.instance("main")));
    assert!(std::fs::read_dir(archive).unwrap().count() >= 1);

    // Deleting the EtcdBackup deletes its object in the bucket.
    p.rt.block_on(api.delete("nightly", &DeleteParams::default())).unwrap();
    eventually("the EtcdBackup is gone", 30, || backup(&p, "nightly").is_none());
    assert!(!object.exists());
    drop(s3);
}

#[test]
fn with_restore_from_backup_a_lost_quorum_is_rebuilt_after_its_timeout() {
    let p = Plane::up(2);
    let (s3, spec) = s3_destination(&p);
    let recovery = "  recovery:\n    quorumLoss: RestoreFromBackup\n    quorumLossTimeout: 10s\n";
    let image = p.lab.image(V_MID);
    p.apply(&cluster_yaml("main", 1, &image, &format!("{spec}{recovery}")))
        .unwrap();
    let before = p.wait_ready("main", 1, 180).status.unwrap();
    p.put_keys("main", "a/", 20);
    let backed_up = p.all_keys("main");
    assert_complete(&back_up(&p, "nightly"));
    p.put_keys("main", "b/", 5);

    // Its only member's host is lost: quorum is lost, and nobody asks for anything.
    let lost = before.members[0].node.clone();
    lose_host(&p, host_of(&p, &lost));
    p.wait("main", "QuorumLost reported", 90, |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("QuorumLost")
    });

    // Past quorumLossTimeout, it is rebuilt from the backup on the other host: a new cluster ID,
    // exactly the backed-up keys.
    let after = p.wait_ready("main", 1, 300).status.unwrap();
    assert_ne!(after.members[0].node, lost);
    assert_ne!(after.cluster_id, before.cluster_id);
    assert_eq!(p.all_keys("main"), backed_up, "exactly the backed-up keys");
    assert_eq!(p.event_count("main", "RebuildFromBackupSucceeded"), 1);
    drop(s3);
}

/// Issue 12, item 1: the destination down for longer than the retention. Before, retention
/// counted every finished backup, so `retention` failures in a row deleted every good backup
/// (and its snapshot). Now only good backups count: both good ones stay through an outage of
/// five schedule periods, failures are kept to `failedRetention` (3 by default), and once the
/// store is back, new good backups replace the old ones in the usual way.
#[test]
fn an_s3_outage_longer_than_the_retention_keeps_the_last_good_backups() {
    let p = Plane::up(3);
    let (s3, spec) = s3_destination(&p);
    let spec = format!("{spec}    schedule: '*/10 * * * * *'\n    retention: 2\n");
    p.apply(&cluster_yaml("main", 3, &p.lab.image(V_MID), &spec)).unwrap();
    let c = p.wait_ready("main", 3, 180);
    let w = common::hazard::writer(&p, &c);
    let object = |name: &str| {
        p.lab
            .dir
            .join(format!("s3/etcd-backups/lab/{}/{name}/snapshot.db", p.instance("main")))
    };
    let good = |bs: &[EtcdBackup]| -> Vec<EtcdBackup> { bs.iter().filter(|b| b.succeeded()).cloned().collect() };
    eventually("two good scheduled backups", 60, || good(&backups(&p)).len() >= 2);

    // The store goes away; what is running now fails too.
    drop(s3);
    let down = chrono::Utc::now();
    let before: Vec<EtcdBackup> = good(&backups(&p));
    let failed = |b: &EtcdBackup| b.phase() == Some(runc_etcd_api::BackupPhase::Failed);
    let scheduled_after = |b: &EtcdBackup, secs: i64| {
        b.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("runc-etcd.io/scheduled-for"))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > down + chrono::Duration::seconds(secs))
    };
    // Five periods of failures: more than retention (2) and failedRetention (3) together.
    eventually("a backup failed 40 s into the outage", 90, || {
        backups(&p).iter().any(|b| failed(b) && scheduled_after(b, 40))
    });
    let all = backups(&p);
    let kept: Vec<String> = good(&all).into_iter().filter_map(|b| b.metadata.name).collect();
    for b in &before {
        let name = b.metadata.name.clone().unwrap();
        assert!(kept.contains(&name), "{name} was deleted in the outage: {all:#?}");
        let bytes = std::fs::read(object(&name)).unwrap();
        assert_eq!(sha256(&bytes), b.status.clone().unwrap().sha256.unwrap());
    }
    eventually("failures kept to failedRetention", 30, || {
        backups(&p).iter().filter(|b| failed(b)).count() == 3
    });
    assert!(
        p.event_count("main", "BackupExpired") >= 1,
        "the older failures expired"
    );

    // The store is back: new good backups, and the old ones go with their snapshots.
    let _s3 = p.lab.start_s3(&["etcd-backups"]).unwrap();
    eventually("two good backups taken after the outage", 60, || {
        let all = backups(&p);
        good(&all).iter().filter(|b| scheduled_after(b, 0)).count() >= 2
            && before
                .iter()
                .all(|b| !all.iter().any(|a| a.metadata.name == b.metadata.name))
    });
    for b in &before {
        assert!(!object(&b.metadata.name.clone().unwrap()).exists());
    }
    common::hazard::nothing_lost(&p, &c, w, 50, 3);
}
