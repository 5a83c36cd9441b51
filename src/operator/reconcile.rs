//! The reconcile of one EtcdCluster, as named steps (each in its module):
//!
//! 1. [`ensure`](super::ensure): the cluster's own objects — finalizer, TLS Secrets, agent
//!    DaemonSet, client Service (a deleted cluster goes to [`finalize`](super::finalize));
//! 2. [`observe`](super::observe): EtcdMembers, nodes, backups, etcd's own view; then the
//!    agents' Role names the Secrets they may read (`ensure::agent_access`, from what was seen);
//! 3. [`decide`](super::decide) (pure): carry on the recorded change, or choose the next one
//!    (the planners: `plan`, `upgrade`, `maintenance`, `disaster`), with the Events to emit;
//! 4. [`record`](super::record): a new change is written into `status.lastOperation` *before* it
//!    is made, so a restarted controller resumes it; an ended one is recorded as such;
//! 5. [`act`](super::act): the recorded change made (idempotently), or what must come first
//!    (pulls before an upgrade, a backup before a resize);
//! 6. [`report`](super::report): status (pure `status::build`), endpoints, metrics, Events.
//!
//! The backups are a child of their own: `backups::tend` keeps them each pass; so is a CA
//! rotation (`rotation::tend`), which holds the other steps while a member restarts for it.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::error::{Error, Result};
use crate::operator::context::Ctx;
use crate::operator::decide::{self, Decision, Work};
use crate::operator::ensure::{self, Ensured};
use crate::operator::{act, backups, finalize, observe, plan, record, report, rotation};
use crate::retry;
use runc_etcd_api::EtcdCluster;

#[tracing::instrument(skip_all, fields(cluster = %c.name_any(), namespace = %c.namespace().unwrap_or_default()))]
pub async fn reconcile(c: Arc<EtcdCluster>, ctx: Arc<Ctx>) -> Result<Action> {
    let action = match run(&c, &ctx).await {
        Ok(action) => action,
        Err(e) => {
            // A missing permission is not the operator's to fix: it says so where the user
            // looks (the next pass that gets through writes the status anew).
            if let Some(refusal) = e.forbidden()
                && let Err(report) = report::blocked(&c, &ctx, &ensure::Problem::forbidden(refusal)).await
            {
                tracing::warn!("could not report the refusal: {report}");
            }
            return Err(e);
        }
    };
    ctx.retries.succeeded(&retry::key(&*c));
    Ok(action)
}

/// How often a pass blocked on a missing Secret looks again (Secrets are not watched).
const BLOCKED_RECHECK: Duration = Duration::from_secs(10);
/// How soon a cluster whose agents cannot run looks again (a namespace relabelled is not watched).
const AGENTS_RECHECK: Duration = Duration::from_secs(10);

/// How soon a pass held by a CA rotation's restart looks again (the member's agent reports
/// through its EtcdMember, which is watched; this is the fallback).
const ROTATION_RECHECK: Duration = Duration::from_secs(2);

async fn run(c: &EtcdCluster, ctx: &Ctx) -> Result<Action> {
    if c.metadata.deletion_timestamp.is_some() {
        return finalize::run(c, ctx).await;
    }
    if c.spec.paused {
        return paused(c, ctx).await;
    }
    let (access, keyring) = match ensure::objects(c, ctx).await? {
        Ensured::Again => return Ok(Action::requeue(Duration::ZERO)),
        Ensured::Ready(access, keyring) => (access, keyring),
        Ensured::Blocked(problem) => {
            report::blocked(c, ctx, &problem).await?;
            return Ok(Action::requeue(BLOCKED_RECHECK));
        }
    };
    let view = observe::all(c, ctx, &access).await?;
    ensure::agent_access(c, ctx, &view).await?;
    // Without agents no member reports: nothing is decided on their silence.
    if let Some(reason) = ensure::agents_forbidden(ctx).await? {
        report::write(c, ctx, &view, &plan::Step::Wait { reason }, &[]).await?;
        return Ok(Action::requeue(AGENTS_RECHECK));
    }
    let backup_due = backups::tend(c, ctx, &view).await?;
    // A CA rotation restarting a member holds every other step this pass: two restarts at once
    // could cost quorum.
    if let Some(keyring) = &keyring
        && let Some(reason) = rotation::tend(c, ctx, &view, keyring).await?
    {
        let step = plan::Step::Wait { reason };
        report::write(c, ctx, &view, &step, &[]).await?;
        return Ok(Action::requeue(ROTATION_RECHECK));
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let (step, requeue, events) = match decide::next(c, &view, now, fastrand::u64(..)) {
        Decision::Resume(op) => {
            let outcome = act::act(c, ctx, &view, &access, &op).await;
            tracing::info!(operation = %op.kind, member = ?op.member, "{outcome:?}");
            let ended = decide::ended(op, outcome);
            if let Some(op) = &ended.record {
                record::operation(c, ctx, op).await?;
            }
            (ended.step, ended.requeue, ended.events)
        }
        Decision::Next {
            work,
            step,
            requeue,
            events,
        } => {
            match work {
                Work::None => {}
                Work::Record {
                    op,
                    clear_restore_request,
                } => record::start(c, ctx, &op, clear_restore_request).await?,
                Work::PullFirst { target, members } => act::pull_first(c, ctx, &target, &members).await?,
                Work::BackupFirst { name } => backups::take_before_change(c, ctx, &name).await?,
            }
            (step, requeue, events)
        }
    };
    if let plan::Step::Wait { reason } = &step {
        tracing::debug!("not yet: {reason}");
    }
    report::write(c, ctx, &view, &step, &events).await?;
    Ok(Action::requeue(backup_due.map_or(requeue, |due| requeue.min(due))))
}

/// How often a paused cluster's status is refreshed.
const PAUSED_RESYNC: Duration = Duration::from_secs(30);

/// A paused cluster (`spec.paused`): observed and reported, and nothing else — no object of the
/// cluster written, no step taken or resumed, no backup scheduled or expired, no certificate
/// renewed (its agents leave their members as they run, `agent::paused`).
async fn paused(c: &EtcdCluster, ctx: &Ctx) -> Result<Action> {
    let access = ensure::read_access(c, ctx).await?;
    let view = match &access {
        Some(access) => observe::all(c, ctx, access).await?,
        None => observe::View::default(),
    };
    report::paused(c, ctx, &view).await?;
    Ok(Action::requeue(PAUSED_RESYNC))
}

/// A failed pass: an invalid spec waits for a change, anything else backs off (`retry`).
pub fn error_policy(c: Arc<EtcdCluster>, e: &Error, ctx: Arc<Ctx>) -> Action {
    let _span =
        tracing::warn_span!("reconcile", cluster = %c.name_any(), namespace = %c.namespace().unwrap_or_default())
            .entered();
    ctx.retries.failed(&retry::key(&*c), e)
}
