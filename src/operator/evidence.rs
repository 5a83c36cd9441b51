//! What the members' own side says: each agent probes its member on its host (as `etcdctl
//! endpoint health` does) and reports it in the EtcdMember's status, and renews a heartbeat
//! Lease. The controller's own view (over the network, with its client certificate) may be
//! wrong — a NetworkPolicy, a broken route from its node, a certificate problem — so it declares
//! quorum lost, and replaces a member, only on this evidence (pure, but for the heartbeats' clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use runc_etcd_api::{EtcdMember, MemberPhase};

/// One member, as its own side reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Its agent, alive, says etcd serves on the host.
    Serving,
    /// Its agent, alive, says etcd does not serve (or its data is lost): why.
    NotServing(String),
    /// Nobody speaks for it: its node is NotReady or gone, or its agent stopped reporting.
    Silent(String),
    /// No evidence either way (its agent has not reported a probe yet).
    Unknown,
}

impl Said {
    /// Down by the members' own evidence.
    pub fn down(&self) -> bool {
        matches!(self, Said::NotServing(_) | Said::Silent(_))
    }
}

/// The evidence for one member, from its node's readiness (None: no such Node), whether its
/// heartbeat is fresh (None: it has none) and its agent's report.
pub fn said(m: &EtcdMember, node_ready: Option<bool>, heartbeat_fresh: Option<bool>) -> Said {
    let node = &m.spec.node_name;
    match node_ready {
        None => return Said::Silent(format!("node {node} is gone")),
        Some(false) => return Said::Silent(format!("node {node} is NotReady")),
        Some(true) => {}
    }
    let Some(status) = m.status.as_ref().filter(|s| s.phase.is_some()) else {
        return Said::Unknown;
    };
    match heartbeat_fresh {
        Some(true) => {}
        Some(false) => return Said::Silent(format!("the agent on node {node} stopped reporting")),
        None => return Said::Silent(format!("the agent on node {node} has no heartbeat")),
    }
    let why = || status.message.clone().unwrap_or_default();
    if status.phase == Some(MemberPhase::DataLost) {
        return Said::NotServing(why());
    }
    match status.serving {
        Some(true) => Said::Serving,
        Some(false) => Said::NotServing(format!("etcd does not serve on its host: {}", why())),
        None => Said::Unknown,
    }
}

/// Whether the voters' own evidence shows quorum lost: too many of them are down by their
/// agents' fresh reports or their nodes for the rest to be a majority.
pub fn quorum_lost(voters: &[&str], said: &BTreeMap<String, Said>) -> bool {
    let down = voters.iter().filter(|v| said.get(**v).is_some_and(Said::down)).count();
    !voters.is_empty() && !crate::operator::plan::has_quorum(voters.len(), voters.len() - down)
}

/// Why nothing is done while the operator reaches fewer than a quorum of voters that their own
/// side says serve (a Wait reason: Degraded `OperatorCannotReachMembers`).
pub fn cannot_reach(reached: usize, voters: usize) -> String {
    format!(
        "operator cannot reach members: it reaches {reached} of {voters} voting members, but by their agents' reports \
         a majority serves; nothing is changed. Check the route from the operator's node to the members' client \
         port (NetworkPolicy, firewall) and the client certificate (Secret <cluster>-client-tls)"
    )
}

/// The agents' heartbeat Leases as this process has seen them change. A heartbeat is fresh while
/// it changes at least once per `ttl` *on this process's clock* (client-go's observedTime rule):
/// the agent's renewTime is never compared with the local clock, so skewed clocks cannot make a
/// live agent look dead. A heartbeat seen for the first time is fresh: it is judged once it has
/// had `ttl` to change.
#[derive(Default)]
pub struct Heartbeats {
    seen: Mutex<HashMap<String, (String, Instant)>>,
}

impl Heartbeats {
    pub fn fresh(&self, key: &str, version: &str, now: Instant, ttl: Duration) -> bool {
        let mut seen = self.seen.lock().expect("heartbeats lock");
        match seen.get(key) {
            Some((v, since)) if v == version => now.duration_since(*since) < ttl,
            _ => {
                seen.insert(key.to_string(), (version.to_string(), now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(status: serde_json::Value) -> EtcdMember {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdMember",
            "metadata": {"name": "m1", "namespace": "prod"},
            "spec": {"cluster": "main", "memberName": "m1", "nodeName": "n1", "ip": "10.0.0.1",
                     "clientPort": 2379, "peerPort": 2380, "initialCluster": [],
                     "initialClusterState": "existing", "image": "etcd"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_member_is_down_only_by_its_own_side() {
        let serving = member(serde_json::json!({"phase": "Running", "serving": true}));
        assert_eq!(said(&serving, Some(true), Some(true)), Said::Serving);
        assert!(said(&serving, Some(false), Some(true)).down(), "node NotReady");
        assert!(said(&serving, None, Some(true)).down(), "node gone");
        assert!(said(&serving, Some(true), Some(false)).down(), "agent silent");
        let not = member(serde_json::json!({"phase": "Starting", "serving": false, "message": "no leader"}));
        assert!(matches!(said(&not, Some(true), Some(true)), Said::NotServing(m) if m.contains("no leader")));
        let lost = member(serde_json::json!({"phase": "DataLost", "message": "gone"}));
        assert!(said(&lost, Some(true), Some(true)).down());
        let unreported = member(serde_json::json!({}));
        assert_eq!(said(&unreported, Some(true), None), Said::Unknown, "never placed yet");
        let old_agent = member(serde_json::json!({"phase": "Running"}));
        assert_eq!(said(&old_agent, Some(true), Some(true)), Said::Unknown);
    }

    #[test]
    fn quorum_is_lost_only_when_a_majority_is_down_by_evidence() {
        let said: BTreeMap<String, Said> = [
            ("a".to_string(), Said::Serving),
            ("b".to_string(), Said::Serving),
            ("c".to_string(), Said::Silent("node NotReady".into())),
        ]
        .into();
        assert!(
            !quorum_lost(&["a", "b", "c"], &said),
            "the operator may just not reach them"
        );
        let mut two_down = said.clone();
        two_down.insert("b".into(), Said::NotServing("no leader".into()));
        assert!(quorum_lost(&["a", "b", "c"], &two_down));
        let unknown: BTreeMap<String, Said> = BTreeMap::new();
        assert!(
            !quorum_lost(&["a", "b", "c"], &unknown),
            "no evidence is not evidence of loss"
        );
    }

    #[test]
    fn a_heartbeat_is_fresh_while_it_changes_on_this_clock() {
        let hb = Heartbeats::default();
        let ttl = Duration::from_secs(40);
        let t0 = Instant::now();
        assert!(hb.fresh("prod/m1", "1", t0, ttl), "first seen");
        assert!(hb.fresh("prod/m1", "1", t0 + Duration::from_secs(39), ttl));
        assert!(
            !hb.fresh("prod/m1", "1", t0 + Duration::from_secs(41), ttl),
            "unchanged too long"
        );
        assert!(hb.fresh("prod/m1", "2", t0 + Duration::from_secs(42), ttl), "renewed");
        assert!(hb.fresh("prod/m1", "2", t0 + Duration::from_secs(80), ttl));
    }
}
