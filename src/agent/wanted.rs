//! From an EtcdMember spec to what the engine installs. Everything in the spec is checked here
//! (names, address, ports, URLs) before it can reach a file, a path or a unit.

use std::net::SocketAddr;

use crate::error::{Error, Result};
use runc_etcd_api::{EtcdMemberSpec, InitialClusterState};
use runc_etcd_host::WantedMember;
use runc_etcd_host::member::{ClusterState, Tuning};
use runc_etcd_host::names::{InstanceName, MemberName, check_member_ip, check_token, parse_ip};
use runc_etcd_host::pki::MemberCerts;

fn port(field: &'static str, p: i32) -> Result<u16> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::invalid(field, format!("{p} is not a port"), "use 1-65535"))
}

/// `name=scheme://ip:port`, as etcd's initial-cluster wants it.
fn peer_entry(entry: &str) -> Result<(MemberName, String)> {
    let fix = "write name=https://IP:PORT (or http:// for a plain cluster)";
    let (name, url) = entry
        .split_once('=')
        .ok_or_else(|| Error::invalid("spec.initialCluster", format!("{entry:?} has no '='"), fix))?;
    let addr = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::invalid("spec.initialCluster", format!("{url:?} is not an http(s) URL"), fix))?;
    addr.parse::<SocketAddr>()
        .map_err(|e| Error::invalid("spec.initialCluster", format!("{url:?}: {e}"), fix))?;
    Ok((MemberName::new(name)?, url.to_string()))
}

/// An image reference: no blanks or control characters (it becomes a path and a registry request).
pub fn check_image<'a>(field: &'static str, image: &'a str) -> Result<&'a str> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            format!("{image:?} is not an image reference"),
            "use REGISTRY/REPOSITORY:TAG or @sha256:DIGEST",
        ));
    }
    Ok(image)
}

/// The member the spec asks for, checked.
pub fn wanted_member(
    instance: &InstanceName,
    spec: &EtcdMemberSpec,
    certs: Option<MemberCerts>,
) -> Result<WantedMember> {
    let ip = check_member_ip(parse_ip(&spec.ip)?)?;
    let initial_cluster = spec
        .initial_cluster
        .iter()
        .map(|e| peer_entry(e))
        .collect::<Result<Vec<_>>>()?;
    let image = check_image("spec.image", &spec.image)?;
    let cluster_token = spec.cluster_token.clone().unwrap_or_else(|| instance.to_string());
    check_token("spec.clusterToken", &cluster_token)?;
    Ok(WantedMember {
        instance: instance.clone(),
        name: MemberName::new(spec.member_name.clone())?,
        ip,
        client_port: port("spec.clientPort", spec.client_port)?,
        peer_port: port("spec.peerPort", spec.peer_port)?,
        image: image.to_string(),
        initial_cluster,
        state: match spec.initial_cluster_state {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        },
        cluster_token,
        certs,
        tuning: tuning(spec)?,
        restore: None,
        restore_bump_revision: spec.restore_bump_revision,
    })
}

/// The spec's etcd settings in the engine's terms, checked.
pub fn tuning(spec: &EtcdMemberSpec) -> Result<Tuning> {
    let Some(t) = &spec.etcd else {
        return Ok(Tuning::default());
    };
    let unsigned = |field: &'static str, v: Option<i64>| {
        v.map(|v| {
            u64::try_from(v).map_err(|_| Error::invalid(field, format!("{v} is negative"), "use a positive number"))
        })
        .transpose()
    };
    let tuning = Tuning {
        quota_backend_bytes: unsigned("spec.etcd.quotaBackendBytes", t.quota_backend_bytes)?,
        auto_compaction_retention: t.auto_compaction_retention.clone(),
        snapshot_count: unsigned("spec.etcd.snapshotCount", t.snapshot_count)?,
        heartbeat_interval_ms: unsigned("spec.etcd.heartbeatIntervalMs", t.heartbeat_interval_ms.map(i64::from))?
            .map(|v| v as u32),
        election_timeout_ms: unsigned("spec.etcd.electionTimeoutMs", t.election_timeout_ms.map(i64::from))?
            .map(|v| v as u32),
    };
    tuning.check()?;
    Ok(tuning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EtcdMemberSpec {
        EtcdMemberSpec {
            cluster: "main".into(),
            member_name: "main-0a1b2".into(),
            node_name: "n1".into(),
            ip: "10.0.0.1".into(),
            client_port: 2379,
            peer_port: 2380,
            initial_cluster: vec!["main-0a1b2=https://10.0.0.1:2380".into()],
            initial_cluster_state: InitialClusterState::New,
            image: "registry.local/etcd:v3.5.16".into(),
            tls_secret: None,
            etcd: None,
            next_image: None,
            restore_from: None,
            restore_bump_revision: false,
            cluster_token: Some("prod.main-5d1c".into()),
        }
    }

    #[test]
    fn a_good_spec_becomes_a_member() {
        let w = wanted_member(&InstanceName::new("prod.main").unwrap(), &spec(), None).unwrap();
        assert_eq!(w.initial_cluster[0].1, "https://10.0.0.1:2380");
        assert_eq!(w.state, ClusterState::New);
        assert_eq!(w.cluster_token, "prod.main-5d1c");
        let legacy = EtcdMemberSpec {
            cluster_token: None,
            ..spec()
        };
        let w = wanted_member(&InstanceName::new("prod.main").unwrap(), &legacy, None).unwrap();
        assert_eq!(
            w.cluster_token, "prod.main",
            "members made before the token keep the old one"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let inst = InstanceName::new("prod.main").unwrap();
        type Breaker = fn(&mut EtcdMemberSpec);
        let cases: [(Breaker, &str); 6] = [
            (|s| s.member_name = "../x".into(), "name"),
            (|s| s.ip = "10.0.0.1; rm -rf /".into(), "ip"),
            (
                |s| s.initial_cluster = vec!["a=https://10.0.0.1:2380\nx: y".into()],
                "spec.initialCluster",
            ),
            (|s| s.client_port = 70000, "spec.clientPort"),
            (|s| s.image = "etcd:v3 --privileged".into(), "spec.image"),
            (
                |s| s.cluster_token = Some("t\ninitial-cluster: x".into()),
                "spec.clusterToken",
            ),
        ];
        for (break_it, field) in cases {
            let mut s = spec();
            break_it(&mut s);
            let e = wanted_member(&inst, &s, None).err().expect("refused").to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
