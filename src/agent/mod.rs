//! The host agent (`runc-etcd agent`): one per node and cluster (a DaemonSet pod, or a process
//! on the host). It watches the EtcdMembers of its node, makes them real with the host engine,
//! reports their status, renews a heartbeat Lease per member, and on deletion stops and archives
//! the member before letting the object go (finalizer).
//!
//! It makes no etcd membership calls: the controller does. It only converges its host.

mod backup;
mod wanted;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use runc_etcd_api::contract::{CLUSTER_LABEL, MEMBER_FINALIZER, NODE_LABEL};
use runc_etcd_api::{EtcdBackup, EtcdMember, EtcdMemberStatus};
use runc_etcd_host::member::ClusterState;
use runc_etcd_host::names::{InstanceName, MemberName};
use runc_etcd_host::{self as host, Engine, systemd};

pub use wanted::wanted_member;

/// How often a member's status and heartbeat are refreshed.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub namespace: String,
    pub cluster: String,
    pub node: String,
}

struct Ctx {
    client: kube::Client,
    metrics: Arc<Metrics>,
    engine: Engine,
    config: AgentConfig,
    instance: InstanceName,
}

pub async fn run(client: kube::Client, engine: Engine, config: AgentConfig, metrics: Arc<Metrics>) -> Result<()> {
    let instance = InstanceName::new(format!("{}.{}", config.namespace, config.cluster))?;
    let members: Api<EtcdMember> = Api::namespaced(client.clone(), &config.namespace);
    let selector = format!("{CLUSTER_LABEL}={},{NODE_LABEL}={}", config.cluster, config.node);
    tracing::info!(
        "agent for {} on node {} watching EtcdMembers {selector}",
        instance,
        config.node
    );
    let ctx = Arc::new(Ctx {
        metrics: metrics.clone(),
        client,
        engine,
        config,
        instance,
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
/// archive it, at start and then every few resyncs.
async fn sweep_orphans(ctx: Arc<Ctx>, selector: String) {
    loop {
        if let Err(e) = sweep_once(&ctx, &selector).await {
            tracing::warn!("looking for orphaned members: {e}");
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
    tracing::warn!(
        "{} runs here but has no EtcdMember any more: stopping and archiving it",
        record.name
    );
    host::retire_member(&ctx.engine, &ctx.instance, &record.name).await?;
    Ok(())
}

fn error_policy(m: Arc<EtcdMember>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("{}: {e}", m.name_any());
    Action::requeue(if e.is_user_error() {
        RESYNC * 3
    } else {
        Duration::from_secs(3)
    })
}

impl Ctx {
    fn members(&self) -> Api<EtcdMember> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
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

async fn reconcile(m: Arc<EtcdMember>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = MemberName::new(m.spec.member_name.clone())?;
    if m.metadata.deletion_timestamp.is_some() {
        return retire(&m, &ctx, &name).await;
    }
    // observedGeneration moves only once the spec is made real (the controller waits on it).
    let base = m.status.clone().unwrap_or_default();
    let certs = match &m.spec.tls_secret {
        None => None,
        Some(secret) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
            let s = secrets.get_opt(secret).await?;
            match s.as_ref().and_then(runc_etcd_api::contract::read_member_certs) {
                Some(c) => Some(c),
                None => {
                    let message = format!("waiting for Secret {secret} with the member's certificates");
                    ctx.report(&m, phase(base, "Pending", message)).await?;
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
            }
        }
    };
    let mut wanted = match wanted_member(&ctx.instance, &m.spec, certs) {
        Ok(w) => w,
        Err(e) => {
            ctx.report(&m, phase(base, "Failed", e.to_string())).await?;
            return Ok(Action::await_change());
        }
    };
    let installed = ctx.engine.load(&ctx.instance)?.filter(|r| r.name == name);
    let base = match &installed {
        None => {
            if let Some(from) = m
                .spec
                .restore_from
                .as_ref()
                .filter(|_| wanted.state == ClusterState::New)
            {
                // A failure stays reported while it is retried (no status flapping).
                if base.phase.as_deref() != Some("Failed") {
                    let message = format!("fetching the snapshot of backup {from}");
                    ctx.report(&m, phase(base.clone(), "Restoring", message)).await?;
                }
                match backup::fetch_snapshot(&ctx, from).await {
                    Ok(file) => wanted.restore = Some(file),
                    Err(e) => {
                        ctx.report(&m, phase(base, "Failed", e.to_string())).await?;
                        return Err(e);
                    }
                }
            }
            if base.phase.as_deref() != Some("Failed") {
                ctx.report(&m, phase(base.clone(), "Pulling", format!("pulling {}", m.spec.image)))
                    .await?;
            }
            base
        }
        Some(record) => {
            let base = prepare_next_image(&ctx, &m, base).await?;
            if record.tuning != wanted.tuning && record.image.reference == wanted.image {
                let message = "restarting with new etcd settings".to_string();
                ctx.report(&m, phase(base.clone(), "Reconfiguring", message)).await?;
                if let Err(e) = host::reconfigure_member(&ctx.engine, &ctx.instance, wanted.tuning.clone()).await {
                    ctx.report(&m, phase(base, "Failed", e.to_string())).await?;
                    return Err(e.into());
                }
            }
            if record.image.reference != wanted.image {
                // The controller gates this (every member healthy, one at a time), so the engine's
                // own health check of the others is skipped.
                let message = format!("upgrading {} → {}", record.image.reference, wanted.image);
                ctx.report(&m, phase(base.clone(), "Upgrading", message)).await?;
                if let Err(e) = host::upgrade(&ctx.engine, &ctx.instance, &wanted.image, true).await {
                    ctx.report(&m, phase(base, "Failed", e.to_string())).await?;
                    return Err(e.into());
                }
            }
            base
        }
    };
    let fetched = wanted.restore.clone();
    let placed = host::place_member(&ctx.engine, wanted).await;
    // A downloaded snapshot is not kept once it is restored (or to be fetched again).
    if let Some(f) = fetched.filter(|f| f.starts_with(&ctx.engine.paths(&ctx.instance).dir)) {
        let _ = std::fs::remove_file(f);
    }
    let record = match placed {
        Ok(r) => r,
        Err(e) => {
            ctx.report(&m, phase(base, "Failed", e.to_string())).await?;
            return Err(e.into());
        }
    };
    let unit = systemd::show(&ctx.instance).await?;
    let mut status = EtcdMemberStatus {
        unit_state: Some(format!("{}/{}", unit.active_state, unit.sub_state)),
        restart_count: unit.n_restarts as i32,
        ..base
    };
    let etcd = match ctx.engine.access(&record) {
        Ok(access) => tokio::time::timeout(Duration::from_secs(4), access.status(&record.client_url()))
            .await
            .map_err(|_| Error::transient("etcd status", "timed out"))
            .and_then(|r| r.map_err(Error::from)),
        Err(e) => Err(e.into()),
    };
    status = match etcd {
        Ok(s) => EtcdMemberStatus {
            member_id: Some(format!("{:x}", s.member_id)),
            version: Some(s.version),
            observed_generation: m.metadata.generation,
            ..phase(
                status,
                "Running",
                if s.is_learner { "learner" } else { "voting member" }.into(),
            )
        },
        Err(e) if unit.active_state == "failed" => phase(status, "Failed", e.to_string()),
        Err(e) => phase(status, "Starting", format!("etcd does not answer yet: {e}")),
    };
    // Until etcd answers, look again soon: the controller waits on this status.
    let next = if status.phase.as_deref() == Some("Running") {
        RESYNC
    } else {
        Duration::from_millis(500)
    };
    let labels = ctx.member_labels(&name);
    let running = status.phase.as_deref() == Some("Running");
    ctx.metrics
        .agent_member_running
        .get_or_create(&labels)
        .set(i64::from(running));
    ctx.metrics
        .agent_unit_restarts
        .get_or_create(&labels)
        .set(i64::from(status.restart_count));
    ctx.report(&m, status).await?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    runc_etcd_api::contract::heartbeat(&leases, &m.name_any(), &ctx.config.node, RESYNC * 4).await?;
    Ok(Action::requeue(next))
}

/// Pulls and unpacks `spec.nextImage` ahead of an upgrade, and says so in status.
async fn prepare_next_image(ctx: &Ctx, m: &EtcdMember, base: EtcdMemberStatus) -> Result<EtcdMemberStatus> {
    let Some(next) = m.spec.next_image.as_deref() else {
        return Ok(base);
    };
    if base.prepared_image.as_deref() == Some(next) {
        return Ok(base);
    }
    wanted::check_image("spec.nextImage", next)?;
    tracing::info!("pulling {next} ahead of an upgrade");
    host::image::ensure(&ctx.engine.layout.images_dir(), next, &ctx.engine.pull).await?;
    Ok(EtcdMemberStatus {
        prepared_image: Some(next.to_string()),
        ..base
    })
}

fn phase(status: EtcdMemberStatus, phase: &str, message: String) -> EtcdMemberStatus {
    EtcdMemberStatus {
        phase: Some(phase.into()),
        message: Some(message),
        ..status
    }
}

/// Stops and archives the member, then lets the object go.
async fn retire(m: &EtcdMember, ctx: &Ctx, name: &MemberName) -> Result<Action> {
    if !m.finalizers().iter().any(|f| f == MEMBER_FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = phase(
        m.status.clone().unwrap_or_default(),
        "Stopping",
        "stopping and archiving".into(),
    );
    ctx.report(m, status).await?;
    let archived = host::retire_member(&ctx.engine, &ctx.instance, name).await?;
    if let Some(dir) = &archived {
        tracing::info!("{name}: retired; data archived in {}", dir.display());
    }
    let patch = runc_etcd_api::objects::finalizers_patch(m, None, Some(MEMBER_FINALIZER));
    ctx.members()
        .patch(&m.name_any(), &PatchParams::default(), &patch)
        .await?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let _ = leases.delete(&m.name_any(), &Default::default()).await;
    ctx.metrics.forget_agent_member(&ctx.member_labels(name));
    Ok(Action::await_change())
}
