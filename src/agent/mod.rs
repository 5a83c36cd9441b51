//! The host agent (`runc-etcd agent`): one per node and cluster (a DaemonSet pod, or a process
//! on the host). It watches the EtcdMembers of its node, makes them real with the host engine,
//! reports their status, renews a heartbeat Lease per member, and on deletion stops and archives
//! the member before letting the object go (finalizer).
//!
//! It makes no etcd membership calls: the controller does. It only converges its host.
//!
//! A member's reconcile, as named steps (each in its module): the member's certificates
//! (`secrets`), what the spec asks for (`wanted`, pure), the host made so (`converge`: restore,
//! reconfigure, upgrade, place), what the unit and etcd say (`probe`, with the status built
//! purely from it), and the report (`report`: status, metrics, heartbeat). A deleted member is
//! stopped and archived (`retire`).

mod archives;
mod backup;
mod converge;
mod probe;
mod report;
mod retire;
mod secrets;
mod wanted;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use serde_json::json;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::retry::{self, Retries};
use runc_etcd_api::contract::{CLUSTER_LABEL, NODE_LABEL, node_label};
use runc_etcd_api::{EtcdBackup, EtcdMember, EtcdMemberStatus, MemberPhase};
use runc_etcd_host::names::{InstanceName, MemberName};
use runc_etcd_host::{self as host, Engine};

use wanted::wanted_member;

/// How often a member's status and heartbeat are refreshed.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub namespace: String,
    pub cluster: String,
    pub node: String,
    /// Archives of old member files kept on this node (`archives`).
    pub keep_archives: usize,
}

struct Ctx {
    client: kube::Client,
    metrics: Arc<Metrics>,
    engine: Engine,
    config: AgentConfig,
    instance: InstanceName,
    retries: Retries,
    recorder: Recorder,
}

pub async fn run(client: kube::Client, engine: Engine, config: AgentConfig, metrics: Arc<Metrics>) -> Result<()> {
    let instance = InstanceName::new(format!("{}.{}", config.namespace, config.cluster))?;
    let members: Api<EtcdMember> = Api::namespaced(client.clone(), &config.namespace);
    let selector = format!(
        "{CLUSTER_LABEL}={},{NODE_LABEL}={}",
        config.cluster,
        node_label(&config.node)
    );
    tracing::info!(
        "agent for {} on node {} watching EtcdMembers {selector}",
        instance,
        config.node
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "runc-etcd-agent".into(),
            instance: Some(config.node.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        metrics: metrics.clone(),
        recorder,
        client,
        engine,
        config,
        instance,
        retries: Retries::default(),
    });
    let sweeper = tokio::spawn(sweep_orphans(ctx.clone(), selector.clone()));
    // The backups the controller assigned to this node (it labels them like the members).
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let backups = Controller::new(backups, watcher::Config::default().labels(&selector))
        .run(backup::reconcile, backup::error_policy, ctx.clone())
        .for_each(|res| {
            crate::metrics::count_reconcile(&metrics, "agent-backup", &res);
            async move {
                if let Err(e) = res {
                    tracing::debug!("backup reconcile: {e}");
                }
            }
        });
    let members = Controller::new(members, watcher::Config::default().labels(&selector))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            crate::metrics::count_reconcile(&metrics, "agent-member", &res);
            async move {
                if let Err(e) = res {
                    tracing::debug!("reconcile: {e}");
                }
            }
        });
    metrics.set_ready();
    tokio::join!(members, backups);
    sweeper.abort();
    Ok(())
}

/// A member installed on this host whose EtcdMember is gone was removed while this agent could
/// not act on it (its host was down, and the controller released the finalizer): stop it and
/// archive it, at start and then every few resyncs. The archives are kept bounded then too.
async fn sweep_orphans(ctx: Arc<Ctx>, selector: String) {
    loop {
        if !ctx.paused().await.unwrap_or(true) {
            if let Err(e) = sweep_once(&ctx, &selector).await {
                tracing::warn!("looking for orphaned members: {e}");
            }
            if let Err(e) = archives::tend(&ctx).await {
                tracing::warn!("keeping the archives bounded: {e}");
            }
        }
        tokio::time::sleep(RESYNC * 3).await;
    }
}

async fn sweep_once(ctx: &Ctx, selector: &str) -> Result<()> {
    // The record is read before the list: a member placed after this read is not looked at,
    // and one placed before it had its EtcdMember before the list was taken.
    let Some(record) = ctx.engine.load(&ctx.instance)? else {
        return Ok(());
    };
    let wanted = ctx
        .members()
        .list(&kube::api::ListParams::default().labels(selector))
        .await?
        .items;
    if wanted.iter().any(|m| m.spec.member_name == record.name.as_str()) {
        return Ok(());
    }
    // Evidence from the member itself: one that still serves is a member of its cluster (its
    // EtcdMember was deleted or relabelled by hand, and the controller makes it again); one that
    // was removed from etcd does not serve.
    let serving = match ctx.engine.access(&record) {
        Ok(access) => access.health(&record.client_url()).await.is_ok(),
        Err(_) => false,
    };
    if serving {
        tracing::warn!(
            "{} runs here with no EtcdMember, but etcd says it serves: kept running",
            record.name
        );
        return Ok(());
    }
    tracing::warn!(
        "{} runs here but has no EtcdMember any more and does not serve: stopping and archiving it",
        record.name
    );
    host::retire_member(&ctx.engine, &ctx.instance, &record.name).await?;
    Ok(())
}

/// A failed pass: an invalid spec waits for a change, anything else backs off (`retry`).
fn error_policy(m: Arc<EtcdMember>, e: &Error, ctx: Arc<Ctx>) -> Action {
    let _span = tracing::warn_span!("member", member = %m.spec.member_name, cluster = %m.spec.cluster).entered();
    ctx.retries.failed(&retry::key(&*m), e)
}

impl Ctx {
    fn members(&self) -> Api<EtcdMember> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Whether the cluster is paused (`spec.paused`): the agent then leaves its host exactly as
    /// it is, starting, stopping, installing and archiving nothing, and only reports.
    async fn paused(&self) -> Result<bool> {
        let api: Api<runc_etcd_api::EtcdCluster> = Api::namespaced(self.client.clone(), &self.config.namespace);
        Ok(api.get_opt(&self.config.cluster).await?.is_some_and(|c| c.spec.paused))
    }

    fn member_labels(&self, member: &MemberName) -> crate::metrics::MemberLabels {
        crate::metrics::MemberLabels {
            namespace: self.config.namespace.clone(),
            cluster: self.config.cluster.clone(),
            member: member.to_string(),
        }
    }

    /// Writes the status when it changed (every write wakes the controller).
    async fn report(&self, m: &EtcdMember, status: EtcdMemberStatus) -> Result<()> {
        if m.status.as_ref() == Some(&status) {
            return Ok(());
        }
        self.members()
            .patch_status(
                &m.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }
}

#[tracing::instrument(skip_all, fields(member = %m.spec.member_name, cluster = %m.spec.cluster, namespace = %ctx.config.namespace))]
async fn reconcile(m: Arc<EtcdMember>, ctx: Arc<Ctx>) -> Result<Action> {
    let action = run_member(&m, &ctx).await?;
    ctx.retries.succeeded(&retry::key(&*m));
    Ok(action)
}

async fn run_member(m: &EtcdMember, ctx: &Ctx) -> Result<Action> {
    let name = MemberName::new(m.spec.member_name.clone())?;
    if m.metadata.deletion_timestamp.is_some() {
        if runc_etcd_api::contract::released(m) {
            return retire::run(m, ctx, &name).await;
        }
        // Deleted by hand: members leave only through the controller's steps, which remove them
        // from etcd first and keep quorum. It keeps running; the controller makes it again.
        tracing::warn!("{name}: its EtcdMember was deleted without the controller releasing it; it keeps running");
    }
    // observedGeneration moves only once the spec is made real (the controller waits on it).
    let mut base = m.status.clone().unwrap_or_default();
    if ctx.paused().await? {
        return report_paused(m, ctx, &name, base).await;
    }
    let certs = match secrets::member_certs(m, ctx, &name, &mut base).await? {
        secrets::Certs::Ready(certs) => certs,
        secrets::Certs::Waiting(message) => {
            ctx.report(m, phase(base, MemberPhase::Pending, message)).await?;
            // The controller signs within a pass of seeing the request: look again soon (a new
            // member waits on this).
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
    };
    let wanted = match wanted_member(&ctx.instance, &m.spec, certs) {
        Ok(w) => w,
        Err(e) => {
            ctx.report(m, phase(base, MemberPhase::Failed, e.to_string())).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(why) = converge::lost_data(ctx, &name).await? {
        return report::write(m, ctx, &name, phase(base, MemberPhase::DataLost, why)).await;
    }
    let failed = converge::failed_now(m, &base);
    let (image, tuning) = (wanted.image.clone(), wanted.tuning.clone());
    let (record, base) = converge::run(m, ctx, &name, wanted, base).await?;
    // The generation is acknowledged only when all of it runs here.
    let whole = !failed && record.image.reference == image && record.tuning == tuning;
    let seen = probe::run(ctx, &record).await?;
    let mut status = probe::status(base.clone(), &seen, m.metadata.generation.filter(|_| whole));
    if failed {
        // The failure stays reported until the spec changes.
        (status.phase, status.message) = (base.phase, base.message);
    }
    if status.phase == Some(MemberPhase::Running) {
        // etcd runs on this data: from now on it is the member's own (host::stamp_data).
        host::stamp_data(&ctx.engine, &ctx.instance)?;
    }
    report::write(m, ctx, &name, status).await
}

/// A paused cluster's member: what runs here reported, and nothing changed.
async fn report_paused(m: &EtcdMember, ctx: &Ctx, name: &MemberName, base: EtcdMemberStatus) -> Result<Action> {
    let note = "paused (the cluster's spec.paused is true): left as it runs".to_string();
    let Some(record) = ctx.engine.load(&ctx.instance)?.filter(|r| r.name == *name) else {
        ctx.report(m, phase(base, MemberPhase::Pending, note)).await?;
        return Ok(Action::requeue(RESYNC));
    };
    let seen = probe::run(ctx, &record).await?;
    let status = probe::status(base, &seen, None);
    let status = EtcdMemberStatus {
        message: Some(note),
        ..status
    };
    report::write(m, ctx, name, status).await
}

fn phase(status: EtcdMemberStatus, phase: MemberPhase, message: String) -> EtcdMemberStatus {
    EtcdMemberStatus {
        phase: Some(phase),
        message: Some(message),
        ..status
    }
}
