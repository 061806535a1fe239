//! The two loops a host runs when it shares jobs: taking jobs from the
//! stream into its own queue, and following the jobs it accepted until they
//! end on whichever host runs them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Cluster, Delivery};
use crate::jobs::Job;
use crate::runtime::{FailureKind, JobFailure};
use crate::service::Matchbox;
use crate::tasks::{TaskError, TaskOutcome};

/// How long a read of the stream blocks when there is nothing to take.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How often a host looks for jobs to take over from hosts that are gone.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often a host asks how the jobs it accepted are doing: the fallback
/// for announcements missed while the subscription was down.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Takes jobs from the stream for as long as the host runs and is not
/// draining: no more than it can start soon (twice its workers, counting
/// what it already holds), so that the rest stay for other hosts.
pub async fn consume(app: Weak<Matchbox>) {
    let mut joined = false;
    let mut last_reclaim = tokio::time::Instant::now();
    loop {
        let Some(app) = app.upgrade() else { return };
        if app.is_draining() {
            return;
        }
        let cluster = app.cluster.clone().expect("consume runs only with a cluster");
        if !joined {
            match cluster.join().await {
                Ok(()) => joined = true,
                Err(err) => {
                    tracing::debug!(%err, "cannot join the deployment's stream yet");
                    drop(app);
                    tokio::time::sleep(READ_BLOCK).await;
                    continue;
                }
            }
        }
        let want = (2 * app.config.workers()).saturating_sub(app.jobs.tracker().len());
        if want == 0 {
            app.jobs.tracker().wait_for_an_end(READ_BLOCK).await;
            continue;
        }
        let taken = if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = tokio::time::Instant::now();
            cluster.reclaim(want).await
        } else {
            cluster.read(want, READ_BLOCK).await
        };
        match taken {
            Ok(deliveries) => {
                for delivery in deliveries {
                    dispatch(&app, &cluster, delivery).await;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "cannot read the deployment's stream");
                // A Redis that restarted without persistence has lost the
                // group: join again before the next read.
                joined = false;
                drop(app);
                tokio::time::sleep(READ_BLOCK).await;
            }
        }
    }
}

/// Queues one job from the stream here, or ends its task with the reason
/// it cannot run.
async fn dispatch(app: &Matchbox, cluster: &Cluster, delivery: Delivery) {
    let Delivery { entry, envelope, reclaimed } = delivery;
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(why) => {
            tracing::warn!(%entry, %why, "dropping an unreadable job from the stream");
            let _ = cluster.ack(&entry).await;
            return;
        }
    };
    let id = envelope.task_id;
    let fail = async |message: String| {
        let error = TaskError::from(JobFailure::new(FailureKind::Unavailable, message));
        if app.store.finish(&envelope.tenant, id, TaskOutcome::Failed(error)).await.is_ok() {
            let _ = cluster.ack(&entry).await;
        }
    };
    let Some(tenant) = app.tenants.get(&envelope.tenant).cloned() else {
        fail(format!("host {} has no tenant '{}'", cluster.consumer(), envelope.tenant)).await;
        return;
    };
    let name = envelope.matcher.split('@').next().unwrap_or_default();
    if let Err(err) = app.registry.sync(&tenant, name).await {
        // Redis trouble: the entry stays pending and is taken over later.
        tracing::warn!(%err, task_id = %id, "cannot fetch the job's matcher yet");
        return;
    }
    let matcher = match app.registry.resolve(&tenant, &envelope.matcher) {
        Ok(matcher) => matcher,
        Err(err) => {
            fail(format!("the job's matcher is gone: {err}")).await;
            return;
        }
    };
    let Some(slot) = app.jobs.queue().reserve() else {
        tracing::warn!(task_id = %id, "the queue is full; the job will be taken over later");
        return;
    };
    let (cancel, _done) = app.jobs.tracker().track(&tenant.name, id);
    let span = tracing::info_span!("task", task_id = %id, tenant = %tenant.name, matcher = %matcher.name);
    if reclaimed {
        app.metrics.jobs_taken_over.inc();
        span.in_scope(|| tracing::info!("took over a job its host did not finish"));
    }
    let job = Job {
        task_id: id,
        tenant: tenant.name.clone(),
        admission: None,
        matcher,
        input: envelope.input,
        limits: tenant.job_limits(),
        cancel,
        span,
        entry: Some(entry),
        reclaimed,
    };
    slot.push(&tenant.name, tenant.quotas.concurrent_jobs, job);
}

/// Listens for the tasks other hosts (or this one) announce as ended, and
/// ends those this host follows at once.
pub async fn hear_ended(app: Weak<Matchbox>) {
    loop {
        let Some(cluster) = app.upgrade().and_then(|app| app.cluster.clone()) else { return };
        let heard = cluster
            .on_ended(|id| match app.upgrade() {
                Some(app) => {
                    app.accepted.ended(id);
                    true
                }
                None => false,
            })
            .await;
        if let Err(err) = heard {
            tracing::debug!(%err, "cannot hear which tasks ended; following them by polling meanwhile");
        }
        if app.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(READ_BLOCK).await;
    }
}

/// Follows the jobs this host accepted: once a task has ended (or is gone),
/// its tenant's quota place is given back and `?wait=` is answered.
pub async fn follow_accepted(app: Weak<Matchbox>) {
    let mut ticks = tokio::time::interval(FOLLOW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Some(app): Option<Arc<Matchbox>> = app.upgrade() else { return };
        let followed = app.accepted.followed();
        if followed.is_empty() {
            continue;
        }
        match app.store.statuses(&followed).await {
            Ok(statuses) => {
                for ((_, id), status) in followed.into_iter().zip(statuses) {
                    if status.is_none_or(|s| s.is_terminal()) {
                        app.accepted.ended(id);
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "cannot follow the accepted jobs"),
        }
    }
}
