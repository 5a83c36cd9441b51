//! Views of a cluster for the controller's unit tests.

use crate::operator::evidence::Said;
use crate::operator::observe::{EtcdView, View};
use runc_etcd_api::EtcdMember;
use runc_etcd_host::etcd::{EndpointStatus, MemberInfo};

/// A view of `n` voters, the first the leader, `healthy` of them answering.
pub fn view(n: u64, healthy: u64) -> View {
    let healthy_count = healthy;
    let members = (1..=n)
        .map(|id| MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("https://10.0.0.{id}:2380")],
            client_urls: vec![format!("https://10.0.0.{id}:2379")],
            is_learner: false,
        })
        .collect();
    let healthy = (1..=healthy)
        .map(|id| {
            let s = EndpointStatus {
                endpoint: String::new(),
                member_id: id,
                cluster_id: 0xc1,
                version: "3.5.16".into(),
                db_size: 4096,
                db_size_in_use: 4096,
                leader: 1,
                raft_index: 9,
                revision: 5,
                is_learner: false,
                errors: vec![],
            };
            (id, s)
        })
        .collect();
    // Their own side agrees with what the operator sees.
    let said = (1..=n)
        .map(|id| {
            let s = if id <= healthy_count {
                Said::Serving
            } else {
                Said::NotServing("etcd does not serve on its host".into())
            };
            (format!("m{id}"), s)
        })
        .collect();
    View {
        members: vec![],
        backups: vec![],
        restore: None,
        nodes: vec![],
        said,
        etcd: Some(EtcdView {
            members,
            healthy,
            leader: 1,
            cluster_id: 0xc1,
            nospace: vec![],
            diverged: vec![],
        }),
    }
}

/// `view`, with an EtcdMember for each etcd member: `m<id>` on node `n<id>`.
pub fn view_with_objects(n: u64, healthy: u64) -> View {
    let mut v = view(n, healthy);
    v.members = (1..=n)
        .map(|id| {
            serde_json::from_value::<EtcdMember>(serde_json::json!({
                "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdMember",
                "metadata": {"name": format!("m{id}"), "namespace": "prod"},
                "spec": {"cluster": "main", "memberName": format!("m{id}"), "nodeName": format!("n{id}"),
                    "ip": format!("10.0.0.{id}"), "clientPort": 2379, "peerPort": 2380,
                    "initialCluster": [], "initialClusterState": "existing", "image": "etcd@sha256:00"},
            }))
            .unwrap()
        })
        .collect();
    v
}
