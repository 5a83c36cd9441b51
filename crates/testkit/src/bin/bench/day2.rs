//! `runc-etcd-bench day2`: through the operator on simulated hosts, a 3-member cluster (TLS,
//! `memberUnhealthyTimeout: 10s`): the time from a host's power cut to a replacement member
//! healthy on another node, and a rolling upgrade 3.5.16 → 3.5.30 with its time per member
//! (each includes moving leadership when needed, a restart and a health check; the upgrade's
//! backup is counted apart).

use std::process::ExitCode;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use runc_etcd_api::EtcdCluster;
use runc_etcd_testkit::lab::control::ControlPlane;

use super::operator::{available, spec, wait_until};
use super::{bin_dir, lab_up, secs};

const FROM: &str = "3.5.16";
const TO: &str = "3.5.30";

pub fn run() -> ExitCode {
    let Some(lab) = lab_up(4, FROM) else {
        return ExitCode::FAILURE;
    };
    runc_etcd_host::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut cp = ControlPlane::start(&lab, &bin_dir()).await.expect("control plane");
        cp.start_operator(&[]).expect("operator");
        let api: Api<EtcdCluster> = Api::namespaced(cp.client.clone(), &cp.namespace);
        let apply = PatchParams::apply("bench").force();
        let with_recovery = |version: &str| {
            let mut s = spec("day2", 3, &lab.image(version), version, 2379);
            s["spec"]["recovery"] = serde_json::json!({"memberUnhealthyTimeout": "10s"});
            s
        };
        api.patch("day2", &apply, &Patch::Apply(with_recovery(FROM)))
            .await
            .expect("apply");
        wait_until(&api, "Available", |l| l.iter().any(|c| available(c, 3))).await;

        // A member's host loses power for good.
        let c = api.get("day2").await.expect("get");
        let node = c.status.unwrap().members[0].node.clone();
        let host = lab.hosts.iter().find(|h| cp.node_name(h) == node).expect("its host");
        let t = Instant::now();
        host.power_off(false);
        cp.set_node_ready(host, false).await.expect("node NotReady");
        wait_until(&api, "a replacement", |l| {
            l.iter().any(|c| {
                available(c, 3)
                    && c.status
                        .as_ref()
                        .is_some_and(|s| s.members.iter().all(|m| m.node != node))
            })
        })
        .await;
        println!(
            "host powered off → replacement healthy on another node: {} (10 s of it is the unhealthy timeout)",
            secs(t.elapsed())
        );

        // Rolling upgrade: a backup first, then one member at a time.
        let t = Instant::now();
        api.patch("day2", &apply, &Patch::Apply(with_recovery(TO)))
            .await
            .expect("apply");
        let mut backed_up = None;
        let deadline = Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let c = api.get("day2").await.expect("get");
            let s = c.status.clone().unwrap_or_default();
            if backed_up.is_none() && s.last_operation.as_ref().is_some_and(|o| o.kind == "UpgradeMember") {
                backed_up = Some(t.elapsed());
            }
            if available(&c, 3) && s.members.iter().all(|m| m.version.as_deref() == Some(TO)) {
                break;
            }
            assert!(Instant::now() < deadline, "timed out waiting for the upgrade");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let total = t.elapsed();
        let backup = backed_up.unwrap_or_default();
        println!(
            "rolling upgrade {FROM} → {TO}, 3 members: {} in all; backup before it {}; {} per member",
            secs(total),
            secs(backup),
            secs((total - backup) / 3)
        );
        ExitCode::SUCCESS
    })
}
