//! `create` (the seed of a new cluster) and `join` (a learner that is promoted once caught up).

use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::etcd::{self, MemberInfo};
use crate::member::{ClusterState, ImageRecord, MemberRecord};
use crate::names::{InstanceName, MemberName, check_ports, url};
use crate::pki::{self, MemberCerts};
use crate::{Engine, check_listen, image, systemd};

use super::{HEALTH_TIMEOUT, PROMOTE_TIMEOUT, RECONFIG_TIMEOUT};

/// What `create` and `join` are asked for.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub instance: InstanceName,
    pub name: MemberName,
    pub ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    pub image: String,
    /// The cluster CA to issue this member's certificates from; None for plain HTTP.
    pub ca: Option<pki::Ca>,
}

impl NewMember {
    fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }
    fn peer_url(&self) -> String {
        url(self.scheme(), self.ip, self.peer_port)
    }

    fn record(
        &self,
        image: ImageRecord,
        initial_cluster: Vec<(MemberName, String)>,
        state: ClusterState,
    ) -> MemberRecord {
        MemberRecord {
            instance: self.instance.clone(),
            name: self.name.clone(),
            ip: self.ip,
            client_port: self.client_port,
            peer_port: self.peer_port,
            image,
            previous_image: None,
            initial_cluster,
            initial_cluster_state: state,
            cluster_token: self.instance.to_string(),
            hide_initial_cluster: false,
            tls: self.ca.is_some(),
            tuning: Default::default(),
        }
    }

    /// The member's certificates (issued in memory: nothing is written before every check passed).
    fn certs(&self) -> Result<Option<MemberCerts>> {
        self.ca
            .as_ref()
            .map(|ca| pki::issue(ca, &self.name, self.ip, &pki::Policy::default(), None))
            .transpose()
    }
}

/// Checks that need no network: names, ports, the address, no member here yet.
fn preflight(engine: &Engine, m: &NewMember) -> Result<()> {
    check_ports(m.client_port, m.peer_port)?;
    if engine.load(&m.instance)?.is_some() {
        return Err(Error::Refused(format!(
            "this host already runs a member of cluster {}; see `runc-etcd host status`, or remove it first",
            m.instance
        )));
    }
    let data = engine.paths(&m.instance).data();
    if std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Refused(format!(
            "{} holds data of an earlier member; move it into {} (or away) before creating a new member here",
            data.display(),
            engine.paths(&m.instance).archive().display()
        )));
    }
    check_listen(m.ip, m.client_port, m.peer_port)
}

/// Writes the files, starts the unit and waits until etcd is healthy. On failure the unit is
/// stopped and the files are archived, so the host is as before (but for the archive).
async fn install_and_start(
    engine: &Engine,
    record: &MemberRecord,
    certs: Option<&MemberCerts>,
    ca: Option<&pki::Ca>,
    rootfs: &std::path::Path,
) -> Result<()> {
    let started = async {
        engine.install_unit().await?;
        if let Some(certs) = certs {
            pki::write(&engine.paths(&record.instance), certs, ca)?;
        }
        engine.write_member_files(record, rootfs)?;
        tracing::info!("starting {}", systemd::unit_name(&record.instance));
        systemd::enable_and_start(&record.instance).await
    }
    .await;
    if let Err(e) = started {
        rollback(engine, &record.instance).await;
        return Err(e);
    }
    Ok(())
}

async fn rollback(engine: &Engine, instance: &InstanceName) {
    tracing::warn!(
        "undoing: stopping {} and archiving its files",
        systemd::unit_name(instance)
    );
    if let Err(e) = systemd::stop_and_disable(instance).await {
        tracing::warn!("could not stop {}: {e}", systemd::unit_name(instance));
    }
    match engine.archive_member(instance, "failed", false) {
        Ok(dir) => tracing::warn!("files of the failed member kept in {}", dir.display()),
        Err(e) => tracing::warn!("could not archive the failed member: {e}"),
    }
}

pub async fn create(engine: &Engine, m: NewMember) -> Result<MemberRecord> {
    let _lock = engine.lock(&m.instance)?;
    preflight(engine, &m)?;
    let certs = m.certs()?;
    let (img, images_lock) = image::ensure(&engine.layout, &m.image, &engine.pull).await?;
    let record = m.record(img.record, vec![(m.name.clone(), m.peer_url())], ClusterState::New);
    install_and_start(engine, &record, certs.as_ref(), m.ca.as_ref(), &img.rootfs).await?;
    drop(images_lock); // the record names the image now
    if let Err(e) = engine.wait_member_healthy(&record, HEALTH_TIMEOUT).await {
        rollback(engine, &m.instance).await;
        return Err(e);
    }
    super::identity::stamp_locked(engine, record.clone())?;
    engine.require(&m.instance)
}

/// Whether a member listed by etcd is the one we are about to (or did) add.
fn is_us(member: &MemberInfo, peer_url: &str) -> bool {
    member.peer_urls.iter().any(|u| u == peer_url)
}

pub async fn join(engine: &Engine, m: NewMember, endpoint: &str) -> Result<MemberRecord> {
    let _lock = engine.lock(&m.instance)?;
    preflight(engine, &m)?;
    let endpoint_fix = "pass the client URL of a healthy member, e.g. --endpoint https://10.0.0.11:2379";
    let certs = match (endpoint.split_once("://").map(|x| x.0), &m.ca) {
        (Some("https"), Some(_)) | (Some("http"), None) => m.certs()?,
        (Some("https"), None) => {
            return Err(Error::invalid(
                "--ca-from",
                "the cluster uses TLS but no CA was given",
                "copy /var/lib/runc-etcd/<cluster>/ca/ from a member host and pass --ca-from <that folder>",
            ));
        }
        (Some("http"), Some(_)) => {
            return Err(Error::invalid(
                "--ca-from",
                "the endpoint is plain http",
                "pass the member's https:// URL, or leave out --ca-from for a plain-HTTP cluster",
            ));
        }
        _ => {
            return Err(Error::invalid(
                "--endpoint",
                format!("{endpoint:?} is not a URL"),
                endpoint_fix,
            ));
        }
    };
    let access = certs
        .as_ref()
        .map_or_else(etcd::Access::plain, |c| etcd::Access::tls(c.client_tls()));
    // The cluster must be reachable and have quorum before we touch anything.
    access.health(endpoint).await.map_err(|e| {
        Error::invalid(
            "--endpoint",
            format!("the cluster at {endpoint} is not reachable or not healthy: {e}"),
            endpoint_fix,
        )
    })?;
    let client = access.connect(&[endpoint.to_string()]).await?;
    let members = etcd::members(&client).await?;
    let peer_url = m.peer_url();
    if let Some(clash) = members
        .iter()
        .find(|x| x.name == m.name.as_str() && !is_us(x, &peer_url))
    {
        return Err(Error::invalid(
            "--name",
            format!("member {:x} of that cluster is already named {}", clash.id, m.name),
            "choose another --name",
        ));
    }
    if members.iter().any(|x| is_us(x, &peer_url) && x.started()) {
        return Err(Error::Refused(format!(
            "{peer_url} is already a started member of that cluster; remove it there first (`member remove`)"
        )));
    }
    let (img, images_lock) = image::ensure(&engine.layout, &m.image, &engine.pull).await?;

    // Resume a join that was interrupted after `member add`: that learner is ours.
    let id = match members.iter().find(|x| is_us(x, &peer_url)) {
        Some(existing) => {
            tracing::info!(
                "member {:x} with {peer_url} is already registered; resuming the join",
                existing.id
            );
            existing.id
        }
        None => {
            tracing::info!("registering {} ({peer_url}) as a learner", m.name);
            etcd::add_learner(&client, &peer_url, RECONFIG_TIMEOUT).await?
        }
    };
    let mut initial_cluster: Vec<(MemberName, String)> = members
        .iter()
        .filter(|x| x.started() && !is_us(x, &peer_url))
        .filter_map(|x| Some((MemberName::new(x.name.clone()).ok()?, x.peer_urls.first()?.clone())))
        .collect();
    initial_cluster.push((m.name.clone(), peer_url.clone()));
    let record = m.record(img.record, initial_cluster, ClusterState::Existing);
    let joined = async {
        install_and_start(engine, &record, certs.as_ref(), m.ca.as_ref(), &img.rootfs).await?;
        drop(images_lock); // the record names the image now
        tracing::info!("waiting for learner {id:x} to catch up, then promoting it");
        etcd::promote(&client, id, PROMOTE_TIMEOUT).await?;
        engine.wait_member_healthy(&record, HEALTH_TIMEOUT).await
    }
    .await;
    if let Err(e) = joined {
        // Still a learner: it holds no vote, so removing it cannot hurt quorum. A promoted member
        // stays: it is a voter now, and stopping it would only take a vote away.
        let still_learner = etcd::members(&client)
            .await
            .map(|ms| ms.iter().any(|x| x.id == id && x.is_learner))
            .unwrap_or(false);
        if still_learner {
            rollback(engine, &m.instance).await;
            if let Err(re) = etcd::remove(&client, id, RECONFIG_TIMEOUT).await {
                tracing::warn!("could not deregister learner {id:x}: {re}; run `member remove {id:x}`");
            }
        }
        return Err(e);
    }
    super::identity::stamp_locked(engine, record)?;
    engine.require(&m.instance)
}
