//! `status`, `getconf`, `del-keys` and `hide-init-cluster`.

use etcd_client::DeleteOptions;

use crate::Engine;
use crate::error::{Error, IoContext, Result};
use crate::etcd::{self, EndpointStatus, MemberInfo};
use crate::member::MemberRecord;
use crate::names::InstanceName;
use crate::systemd::{self, UnitState};

use super::require_yes;

#[derive(Debug, Clone)]
pub struct MemberHealth {
    pub member: MemberInfo,
    /// The member's own status, or why it could not be had.
    pub status: std::result::Result<EndpointStatus, String>,
}

impl MemberHealth {
    pub fn healthy(&self) -> bool {
        self.status.is_ok()
    }
    pub fn role(&self, leader: u64) -> &'static str {
        match () {
            _ if !self.member.started() => "unstarted",
            _ if self.member.is_learner => "learner",
            _ if self.member.id == leader => "leader",
            _ => "follower",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub local: MemberRecord,
    pub unit: UnitState,
    pub members: Vec<MemberHealth>,
    pub leader: u64,
    /// Why the local member's etcd could not be asked, with the end of its log.
    pub unreachable: Option<String>,
}

impl ClusterStatus {
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().flat_map(|m| m.member.client_urls.clone()).collect()
    }
}

pub async fn status(engine: &Engine, instance: &InstanceName) -> Result<ClusterStatus> {
    let local = engine.require(instance)?;
    let unit = systemd::show(instance).await?;
    let access = engine.access(&local)?;
    let listed = match access.connect(&[local.client_url()]).await {
        Ok(client) => etcd::members(&client).await,
        Err(e) => Err(e),
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            let log = systemd::journal_tail(instance, 10).await;
            return Ok(ClusterStatus {
                local,
                unit,
                members: vec![],
                leader: 0,
                unreachable: Some(format!("{e}\nlast log lines of the unit:\n{log}")),
            });
        }
    };
    let mut members = Vec::new();
    let mut leader = 0;
    for m in listed {
        let status = match m.client_urls.first() {
            Some(ep) => access.health(ep).await.map_err(|e| e.to_string()),
            None => Err("not started yet".to_string()),
        };
        if let Ok(s) = &status {
            leader = leader.max(s.leader);
        }
        members.push(MemberHealth { member: m, status });
    }
    members.sort_by(|a, b| a.member.name.cmp(&b.member.name));
    Ok(ClusterStatus {
        local,
        unit,
        members,
        leader,
        unreachable: None,
    })
}

/// The member's record, etcd config and bundle, as text for a person.
pub fn getconf(engine: &Engine, instance: &InstanceName) -> Result<Vec<(String, String)>> {
    let record = engine.require(instance)?;
    let paths = engine.paths(instance);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).ctx("reading", p);
    Ok(vec![
        (paths.member_json().display().to_string(), read(paths.member_json())?),
        (paths.etcd_conf().display().to_string(), read(paths.etcd_conf())?),
        (paths.config_json().display().to_string(), read(paths.config_json())?),
        ("image rootfs".into(), engine.rootfs(&record)?.display().to_string()),
        ("data dir".into(), paths.data().display().to_string()),
    ])
}

/// Deletes the keys under `prefix` (or every key with `all`); returns how many were deleted.
pub async fn del_keys(
    engine: &Engine,
    instance: &InstanceName,
    prefix: Option<&str>,
    all: bool,
    yes: bool,
) -> Result<i64> {
    let record = engine.require(instance)?;
    let (key, what) = match (prefix, all) {
        (Some(p), false) if !p.is_empty() => (p.as_bytes().to_vec(), format!("every key under {p:?}")),
        (None, true) => (vec![0u8], "every key in the cluster".to_string()),
        _ => {
            return Err(Error::invalid(
                "--prefix/--all",
                "give exactly one of them",
                "pass --prefix /some/prefix to delete keys under it, or --all to delete every key",
            ));
        }
    };
    require_yes(yes, &format!("del-keys deletes {what}; take a backup first"))?;
    let mut client = engine.access(&record)?.connect(&[record.client_url()]).await?;
    // `--all` is the range from \0 to the end of the keyspace, as `etcdctl del "" --from-key`.
    let opts = if all {
        DeleteOptions::new().with_from_key()
    } else {
        DeleteOptions::new().with_prefix()
    };
    let resp = client
        .delete(key, Some(opts))
        .await
        .map_err(|e| Error::transient("deleting keys", e))?;
    Ok(resp.deleted())
}

/// Leaves `initial-cluster*` out of the member's config from now on. Only for a member whose data
/// dir is initialised: etcd ignores those settings then, and cannot start without them before.
pub fn hide_init_cluster(engine: &Engine, instance: &InstanceName) -> Result<MemberRecord> {
    let _lock = engine.lock(instance)?;
    let mut record = engine.require(instance)?;
    let paths = engine.paths(instance);
    if !paths.data().join("member").is_dir() {
        return Err(Error::Refused(
            "this member has not initialised its data dir yet; etcd still needs initial-cluster to start".into(),
        ));
    }
    record.hide_initial_cluster = true;
    engine.write_record(&record)?;
    Ok(record)
}
