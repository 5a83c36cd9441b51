//! The engine's record of one member on this host (`member.json`), and the etcd config file that
//! is derived from it. The record is what the host CLI and (later) the agent's EtcdMember spec
//! carry: everything needed to rebuild the member's files from scratch.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::container;
use crate::names::{InstanceName, MemberName, url};

/// `new` only for the seed of a new cluster (or a restore); `existing` for every member that joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    New,
    Existing,
}

/// An image as resolved on this host: what was asked for, and the manifest digest it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    /// `sha256:<hex>` of the manifest; the unpacked rootfs lives under `images/<hex>/`.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub instance: InstanceName,
    pub name: MemberName,
    pub ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    pub image: ImageRecord,
    /// The image this member ran before its last upgrade, kept unpacked for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<ImageRecord>,
    /// `name=peerURL` of every member at the time this one was created or joined.
    pub initial_cluster: Vec<(MemberName, String)>,
    pub initial_cluster_state: ClusterState,
    pub cluster_token: String,
    /// `hide-init-cluster`: leave `initial-cluster*` out of the config (etcd ignores them once
    /// the data dir exists; hiding them avoids a stale peer list misleading a reader).
    #[serde(default)]
    pub hide_initial_cluster: bool,
    /// Mutual TLS on the client and peer listeners (certificates under `pki/`).
    #[serde(default)]
    pub tls: bool,
    /// etcd settings that differ from runc-etcd's defaults.
    #[serde(default, skip_serializing_if = "Tuning::is_default")]
    pub tuning: Tuning,
}

/// etcd settings a cluster may change (each checked; None: runc-etcd's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u32>,
}

impl Tuning {
    pub fn is_default(&self) -> bool {
        *self == Tuning::default()
    }

    /// The same limits as the EtcdCluster schema, checked again where the file is written.
    pub fn check(&self) -> Result<()> {
        let range = |field: &'static str, v: Option<u64>, lo: u64, hi: u64| match v {
            Some(v) if !(lo..=hi).contains(&v) => Err(Error::invalid(
                field,
                format!("{v} is out of range"),
                format!("use {lo}..={hi}"),
            )),
            _ => Ok(()),
        };
        range("quotaBackendBytes", self.quota_backend_bytes, 128 << 20, 8 << 30)?;
        range("snapshotCount", self.snapshot_count, 1000, 1_000_000)?;
        range(
            "heartbeatIntervalMs",
            self.heartbeat_interval_ms.map(u64::from),
            10,
            5000,
        )?;
        range("electionTimeoutMs", self.election_timeout_ms.map(u64::from), 50, 50_000)?;
        if let Some(r) = &self.auto_compaction_retention {
            let (n, unit) = r.split_at(r.len().saturating_sub(1));
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || !matches!(unit, "m" | "h") {
                return Err(Error::invalid(
                    "autoCompactionRetention",
                    format!("{r:?} is not a duration"),
                    "use minutes or hours, e.g. 30m or 1h",
                ));
            }
        }
        let heartbeat = self.heartbeat_interval_ms.unwrap_or(100);
        let election = self.election_timeout_ms.unwrap_or(1000);
        if election < 5 * heartbeat {
            return Err(Error::invalid(
                "electionTimeoutMs",
                format!("{election} is less than 5 × heartbeatIntervalMs ({heartbeat})"),
                "raise electionTimeoutMs or lower heartbeatIntervalMs",
            ));
        }
        Ok(())
    }
}

impl MemberRecord {
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
    pub fn client_url(&self) -> String {
        url(self.scheme(), self.ip, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        url(self.scheme(), self.ip, self.peer_port)
    }

    /// etcd's own config for this member (etcd runs with `--config-file`).
    pub fn etcd_config(&self) -> EtcdConfig {
        let t = &self.tuning;
        let (initial_cluster, initial_cluster_state) = if self.hide_initial_cluster {
            (None, None)
        } else {
            let ic = self
                .initial_cluster
                .iter()
                .map(|(n, u)| format!("{n}={u}"))
                .collect::<Vec<_>>()
                .join(",");
            (Some(ic), Some(self.initial_cluster_state))
        };
        EtcdConfig {
            name: self.name.to_string(),
            data_dir: container::DATA.into(),
            listen_client_urls: self.client_url(),
            advertise_client_urls: self.client_url(),
            listen_peer_urls: self.peer_url(),
            initial_advertise_peer_urls: self.peer_url(),
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: self.cluster_token.clone(),
            // Defaults from runc-etcd.sh, which ran these in production: periodic compaction keeps
            // the keyspace history bounded; 8 GiB is etcd's recommended maximum quota.
            auto_compaction_mode: "periodic".into(),
            auto_compaction_retention: t.auto_compaction_retention.clone().unwrap_or_else(|| "1h".into()),
            quota_backend_bytes: t.quota_backend_bytes.unwrap_or(8 * 1024 * 1024 * 1024),
            snapshot_count: t.snapshot_count.unwrap_or(10_000),
            heartbeat_interval: t.heartbeat_interval_ms,
            election_timeout: t.election_timeout_ms,
            max_txn_ops: 1024,
            logger: "zap".into(),
            log_outputs: vec!["stderr".into()],
            strict_reconfig_check: true,
            client_transport_security: self.tls.then(|| TransportSecurity::member("server")),
            peer_transport_security: self.tls.then(|| TransportSecurity::member("peer")),
        }
    }

    pub fn check(&self) -> Result<()> {
        self.tuning.check()?;
        crate::names::check_ports(self.client_port, self.peer_port)?;
        crate::names::check_member_ip(self.ip)?;
        if !self.initial_cluster.iter().any(|(n, _)| n == &self.name) {
            return Err(Error::invalid(
                "initial cluster",
                format!("it does not list this member {}", self.name),
                "include this member's name=peerURL",
            ));
        }
        Ok(())
    }
}

/// The subset of etcd's configuration file runc-etcd writes. Field names are etcd's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdConfig {
    pub name: String,
    pub data_dir: String,
    pub listen_client_urls: String,
    pub advertise_client_urls: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster_state: Option<ClusterState>,
    pub initial_cluster_token: String,
    pub auto_compaction_mode: String,
    pub auto_compaction_retention: String,
    pub quota_backend_bytes: u64,
    pub snapshot_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<u32>,
    pub max_txn_ops: u32,
    pub logger: String,
    pub log_outputs: Vec<String>,
    pub strict_reconfig_check: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_transport_security: Option<TransportSecurity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_transport_security: Option<TransportSecurity>,
}

/// A listener's TLS settings, as etcd's config file spells them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TransportSecurity {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    /// Only certificates from the cluster CA get in: mutual TLS.
    pub client_cert_auth: bool,
}

impl TransportSecurity {
    fn member(which: &str) -> Self {
        TransportSecurity {
            cert_file: format!("{}/{which}.crt", container::PKI),
            key_file: format!("{}/{which}.key", container::PKI),
            trusted_ca_file: format!("{}/ca.crt", container::PKI),
            client_cert_auth: true,
        }
    }
}

impl EtcdConfig {
    pub fn to_yaml(&self) -> String {
        let body = serde_saphyr::to_string(self).expect("EtcdConfig always serializes");
        format!("# Written by runc-etcd from member.json; edits are overwritten.\n{body}")
    }
}

#[cfg(test)]
pub(crate) fn sample() -> MemberRecord {
    MemberRecord {
        instance: InstanceName::new("etcd").unwrap(),
        name: MemberName::new("h2").unwrap(),
        ip: "10.0.0.12".parse().unwrap(),
        client_port: 2379,
        peer_port: 2380,
        image: ImageRecord {
            reference: "registry.local:5000/etcd:3.5.16".into(),
            digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        },
        previous_image: None,
        initial_cluster: vec![
            (MemberName::new("h1").unwrap(), "https://10.0.0.11:2380".into()),
            (MemberName::new("h2").unwrap(), "https://10.0.0.12:2380".into()),
        ],
        initial_cluster_state: ClusterState::Existing,
        cluster_token: "etcd".into(),
        hide_initial_cluster: false,
        tls: true,
        tuning: Tuning::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_config_golden() {
        crate::golden::golden("etcd.conf.yml", &sample().etcd_config().to_yaml());
    }

    #[test]
    fn tuning_reaches_the_config_and_is_checked() {
        let mut m = sample();
        m.tuning = Tuning {
            quota_backend_bytes: Some(1 << 30),
            heartbeat_interval_ms: Some(200),
            election_timeout_ms: Some(2000),
            auto_compaction_retention: Some("30m".into()),
            snapshot_count: None,
        };
        let yaml = m.etcd_config().to_yaml();
        for line in [
            "quota-backend-bytes: 1073741824",
            "heartbeat-interval: 200",
            "election-timeout: 2000",
            "auto-compaction-retention: 30m",
            "snapshot-count: 10000",
        ] {
            assert!(yaml.contains(line), "{line} in\n{yaml}");
        }
        m.tuning.election_timeout_ms = Some(500);
        assert!(m.check().unwrap_err().to_string().contains("electionTimeoutMs"));
        m.tuning.election_timeout_ms = None;
        m.tuning.auto_compaction_retention = Some("1h\nx: y".into());
        assert!(m.check().unwrap_err().to_string().contains("autoCompactionRetention"));
    }

    #[test]
    fn hidden_initial_cluster_is_left_out() {
        let mut m = sample();
        m.hide_initial_cluster = true;
        let yaml = m.etcd_config().to_yaml();
        assert!(!yaml.contains("initial-cluster:"), "{yaml}");
        assert!(!yaml.contains("initial-cluster-state"), "{yaml}");
        assert!(yaml.contains("initial-cluster-token: etcd"), "{yaml}");
    }

    #[test]
    fn record_round_trips_and_refuses_bad_names() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MemberRecord>(&json).unwrap(), m);
        let bad = json.replace("\"name\":\"h2\"", "\"name\":\"../h2\"");
        assert!(m.etcd_config().to_yaml().contains("client-cert-auth: true"));
        assert!(serde_json::from_str::<MemberRecord>(&bad).is_err());
    }
}
