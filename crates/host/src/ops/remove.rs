//! `remove`: deregister this host's member, stop it, archive its files.

use std::path::PathBuf;

use crate::archives::{self, Archive};
use crate::error::{Error, Result};
use crate::etcd::{self, MemberInfo};
use crate::names::InstanceName;
use crate::{Engine, systemd};

use super::{RECONFIG_TIMEOUT, require_yes};

#[derive(Debug)]
pub struct RemoveReport {
    /// The member ID that was deregistered, if etcd could be reached.
    pub deregistered: Option<u64>,
    pub archive: PathBuf,
}

/// Would removing `me` leave the rest with quorum? The rest form a cluster of `n-1` voters that
/// needs a majority of them healthy.
pub fn quorum_after_removal(voters: usize, healthy_others: usize) -> bool {
    let remaining = voters.saturating_sub(1);
    remaining > 0 && healthy_others > remaining / 2
}

pub async fn remove(engine: &Engine, instance: &InstanceName, yes: bool, force: bool) -> Result<RemoveReport> {
    let record = engine.require(instance)?;
    require_yes(
        yes,
        &format!(
            "remove deregisters member {} from the cluster and stops it (its data is archived)",
            record.name
        ),
    )?;
    let _lock = engine.lock(instance)?;
    let my_peer = record.peer_url();

    let access = engine.access(&record)?;
    let listed = match access.connect(&[record.client_url()]).await {
        Ok(c) => etcd::members(&c).await,
        Err(e) => Err(e),
    };
    let deregistered = match listed {
        Ok(members) => Some(deregister(&access, &record.client_url(), &my_peer, &members, force).await?),
        Err(e) if force => {
            tracing::warn!("etcd not reachable ({e}); --force: stopping and archiving without deregistering");
            tracing::warn!("deregister this member from a healthy one with `etcdctl member remove <id>`");
            None
        }
        Err(e) => {
            return Err(Error::Refused(format!(
                "cannot reach this member's etcd to deregister it ({e}); fix it, or pass --force to only stop and archive it here"
            )));
        }
    };

    tracing::info!("stopping and disabling {}", systemd::unit_name(instance));
    systemd::stop_and_disable(instance).await?;
    let archive = engine.archive_member(instance, "removed", false)?;
    tracing::info!("config and data archived in {}", archive.display());
    Ok(RemoveReport { deregistered, archive })
}

/// Removes our member from etcd through the other members, keeping quorum unless forced.
async fn deregister(
    access: &etcd::Access,
    my_endpoint: &str,
    my_peer: &str,
    members: &[MemberInfo],
    force: bool,
) -> Result<u64> {
    let me = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == my_peer))
        .ok_or_else(|| {
            Error::Refused(format!(
                "{my_peer} is not in the member list; pass --force to only stop and archive it here"
            ))
        })?;
    let others: Vec<&MemberInfo> = members.iter().filter(|m| m.id != me.id).collect();
    if others.is_empty() && !force {
        return Err(Error::Refused(
            "this is the last member of the cluster: removing it ends the cluster. Take a backup, then pass --force"
                .into(),
        ));
    }
    if !me.is_learner && !others.is_empty() {
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let mut healthy = 0;
        for m in others.iter().filter(|m| !m.is_learner) {
            if let Some(ep) = m.client_urls.first()
                && access.health(ep).await.is_ok()
            {
                healthy += 1;
            }
        }
        if !quorum_after_removal(voters, healthy) && !force {
            return Err(Error::Refused(format!(
                "only {healthy} of the other {} voting members are healthy: removing this one would leave the cluster without quorum. Bring them back first, or pass --force",
                voters - 1
            )));
        }
    }
    if others.is_empty() {
        return Ok(me.id); // --force on the last member: nothing left to deregister from
    }
    // Hand leadership to another voter first, so the cluster does not stall on an election.
    let status = access.status(my_endpoint).await.ok();
    if status.as_ref().is_some_and(|s| s.leader == me.id)
        && let Some(target) = others.iter().find(|m| !m.is_learner && m.started())
    {
        tracing::info!("moving leadership to {}", target.name);
        if let Ok(mut c) = access.connect(&[my_endpoint.to_string()]).await
            && let Err(e) = c.move_leader(target.id).await
        {
            tracing::warn!("could not move leadership ({e}); etcd will elect a new leader");
        }
    }
    let endpoints: Vec<String> = others.iter().flat_map(|m| m.client_urls.clone()).collect();
    let client = access.connect(&endpoints).await?;
    tracing::info!("deregistering member {:x} ({})", me.id, me.name);
    etcd::remove(&client, me.id, RECONFIG_TIMEOUT).await?;
    Ok(me.id)
}

/// Deletes the archives of `instance`'s member folder beyond the newest `keep`, naming each one
/// and asking for `yes` first. No instance lock: pruning never touches the newest archive, and
/// one made meanwhile is newer than any it deletes.
pub fn prune_archives(engine: &Engine, instance: &InstanceName, keep: usize, yes: bool) -> Result<Vec<Archive>> {
    if keep == 0 {
        return Err(Error::invalid(
            "--keep",
            "0 would delete the newest archive",
            "keep at least 1",
        ));
    }
    let dir = engine.paths(instance).archive();
    let all = archives::list(&dir)?;
    let doomed = archives::beyond(&all, keep);
    if doomed.is_empty() {
        return Ok(vec![]);
    }
    let names: Vec<&str> = doomed.iter().map(|a| a.name.as_str()).collect();
    require_yes(
        yes,
        &format!(
            "this deletes {} archive(s) of {instance} for good: {}",
            doomed.len(),
            names.join(", ")
        ),
    )?;
    archives::prune(&dir, keep)
}

#[cfg(test)]
mod tests {
    use super::quorum_after_removal;

    #[test]
    fn removal_keeps_quorum_only_with_a_healthy_majority_left() {
        // (voters including me, healthy other voters) -> the rest keep quorum
        let table = [
            ((1, 0), false),
            ((2, 1), true),
            ((2, 0), false),
            ((3, 2), true),
            ((3, 1), false),
            ((5, 3), true),
            ((5, 2), false),
            ((4, 2), true),
        ];
        for ((voters, healthy), want) in table {
            assert_eq!(
                quorum_after_removal(voters, healthy),
                want,
                "{voters} voters, {healthy} healthy others"
            );
        }
    }
}
