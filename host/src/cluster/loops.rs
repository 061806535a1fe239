//! The loops a host runs when it shares jobs. Each runs until its stop
//! signal fires.
//!
//! - [`consume`]: reads the tenants' streams in turn into the host, as far
//!   as it can start jobs soon, and takes over the jobs of hosts gone;
//! - [`renew_leases`]: renews the leases on the entries the host holds;
//! - [`hear_events`]: the announcements of other hosts (work added, a task
//!   ended, a task deleted);
//! - [`sweep_followed`]: a rare check of the jobs the host accepted, for an
//!   announcement missed while the subscription was down;
//! - [`keep_tidy`]: deletes shared components nothing needs, and prunes the
//!   status sets.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Delivery};
use crate::jobs::{FollowedJobs, JobTracker};
use crate::metrics::Metrics;
use crate::support::every::Every;
use crate::tasks::TaskStore;

/// How long the reading loop waits for an announcement of work when a turn
/// over every tenant's stream found nothing.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// How often a host looks for jobs to take over from hosts that are gone.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often a host asks how the jobs it accepted are doing: the fallback
/// for announcements missed while the subscription was down.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);
/// How often a host tidies up: deletes the components whose last job
/// expired without ending, and gives back the memory of expired tasks'
/// members in the status sets.
const TIDY_EVERY: Duration = Duration::from_secs(60);
/// How long a loop waits after Redis failed it before trying again.
const BACKOFF: Duration = Duration::from_millis(500);

/// How jobs read from the streams enter the host: the service implements it
/// with the same intake a local submission goes through.
#[async_trait]
pub trait Intake: Send + Sync {
    /// How many more jobs from the streams this host can start soon.
    fn room(&self) -> usize;

    /// Resolves when a job ends on this host, or after `timeout`.
    async fn wait_for_room(&self, timeout: Duration);

    /// Takes one job read from a stream.
    async fn take(&self, delivery: Delivery);
}

async fn pause(stop: &CancellationToken, how_long: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(how_long) => {}
    }
}

/// Reads jobs into the host until `stop` fires: no more than it can start
/// soon, so the rest stay for other hosts. When a turn over every tenant's
/// stream found nothing it waits for an announcement of work.
pub async fn consume(cluster: Arc<Cluster>, intake: Arc<dyn Intake>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut last_reclaim = tokio::time::Instant::now();
    let mut empty = 0;
    while !stop.is_cancelled() {
        let want = intake.room();
        if want == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = intake.wait_for_room(IDLE_WAIT) => {}
            }
            continue;
        }
        if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = tokio::time::Instant::now();
            match cluster.reclaim(want).await {
                Ok((deliveries, failed)) => {
                    metrics.jobs_lost.inc_by(failed as u64);
                    for delivery in deliveries {
                        intake.take(delivery).await;
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, "cannot look for jobs to take over");
                    pause(&stop, BACKOFF).await;
                    continue;
                }
            }
        }
        // Registered before the read, so work announced while it runs is
        // not missed.
        let announced = cluster.work.notified();
        tokio::pin!(announced);
        announced.as_mut().enable();
        match cluster.read(intake.room()).await {
            Ok((deliveries, _)) if !deliveries.is_empty() => {
                empty = 0;
                for delivery in deliveries {
                    intake.take(delivery).await;
                }
            }
            Ok((_, streams)) => {
                empty += streams;
                if empty >= cluster.tenants.len() {
                    empty = 0;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut announced => {}
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                    }
                }
            }
            Err(err) => {
                tracing::debug!(%err, "cannot read the deployment's streams");
                pause(&stop, BACKOFF).await;
            }
        }
    }
}

/// Renews the host's leases until `stop` fires: every fifth of the lease,
/// so that four renewals can fail before another host takes a job over.
pub async fn renew_leases(cluster: Arc<Cluster>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut every = Every::new(cluster.config.lease / 5);
    while every.tick(&stop).await {
        match cluster.renew().await {
            Ok(stopped) => {
                metrics.tasks_expired.inc_by(stopped as u64);
            }
            Err(err) => tracing::debug!(%err, "cannot renew the leases of this host's jobs"),
        }
    }
}

/// Hears, until `stop` fires, what other hosts (and this one) announce:
/// work added (wakes the reading loop), a task ended (answers `?wait=` for
/// the jobs this host accepted), a task deleted (stops its job here).
pub async fn hear_events(
    cluster: Arc<Cluster>,
    followed: Arc<FollowedJobs>,
    tracker: Arc<JobTracker>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut messages = match cluster.redis.subscribe(&cluster.events_channel()).await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::debug!(%err, "cannot hear the deployment's announcements; following by polling meanwhile");
                pause(&stop, BACKOFF).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let mut words = message.split(' ');
            match (words.next(), words.next(), words.next().and_then(|id| id.parse().ok())) {
                (Some("work"), _, _) => cluster.work.notify_one(),
                (Some("ended"), Some(tenant), Some(id)) => {
                    cluster.store.forget_refusal(tenant);
                    followed.ended(id);
                }
                (Some("deleted"), Some(tenant), Some(id)) => {
                    cluster.store.forget_refusal(tenant);
                    if tracker.cancel(id) {
                        tracing::info!(task_id = %id, "the task was deleted on another host; stopped its job");
                    }
                    followed.ended(id);
                }
                _ => tracing::debug!(message, "an announcement this host does not know"),
            }
        }
        pause(&stop, BACKOFF).await;
    }
}

/// Asks the store, until `stop` fires, how the jobs this host accepted are
/// doing: once a task has ended (or is gone), `?wait=` is answered.
pub async fn sweep_followed(followed: Arc<FollowedJobs>, store: Arc<dyn TaskStore>, stop: CancellationToken) {
    let mut every = Every::new(FOLLOW_EVERY);
    while every.tick(&stop).await {
        let tasks = followed.followed();
        if tasks.is_empty() {
            continue;
        }
        match store.statuses(&tasks).await {
            Ok(statuses) => {
                for ((_, id), status) in tasks.into_iter().zip(statuses) {
                    if status.is_none_or(|s| s.is_terminal()) {
                        followed.ended(id);
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "cannot follow the accepted jobs"),
        }
    }
}

/// Tidies up until `stop` fires: deletes the shared components no name
/// means and no job needs any more (their jobs' hosts died before they
/// ended), and drops expired tasks' members from the status sets (counts
/// never include them; this gives their memory back).
pub async fn keep_tidy(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut every = Every::new(TIDY_EVERY);
    while every.tick(&stop).await {
        match cluster.collect_components().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted shared components no job needs any more"),
            Err(err) => tracing::debug!(%err, "cannot collect the shared components"),
        }
        for tenant in &cluster.tenants {
            if let Err(err) = cluster.store.prune(tenant).await {
                tracing::debug!(%err, "cannot prune the status sets");
            }
        }
    }
}
