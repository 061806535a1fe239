//! The loops a host runs when it shares jobs: taking jobs from the stream
//! into the host, and following the jobs it accepted until they end on
//! whichever host runs them. Each runs until its stop signal fires.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Delivery};
use crate::jobs::FollowedJobs;
use crate::support::every::Every;
use crate::tasks::TaskStore;

/// How long a read of the stream blocks when there is nothing to take.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How often a host looks for jobs to take over from hosts that are gone.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often a host asks how the jobs it accepted are doing: the fallback
/// for announcements missed while the subscription was down.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// How jobs read from the stream enter the host: the service implements it
/// with the same intake a local submission goes through.
#[async_trait]
pub trait Intake: Send + Sync {
    /// How many more jobs from the stream this host can start soon.
    fn room(&self) -> usize;

    /// Resolves when a job ends on this host, or after `timeout`.
    async fn wait_for_room(&self, timeout: Duration);

    /// Takes one job read from the stream.
    async fn take(&self, delivery: Delivery);
}

/// Takes jobs from the stream until `stop` fires: no more than the host can
/// start soon, so that the rest stay for other hosts.
pub async fn consume(cluster: Arc<Cluster>, intake: Arc<dyn Intake>, stop: CancellationToken) {
    let mut joined = false;
    let mut last_reclaim = tokio::time::Instant::now();
    let pause = async || {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(READ_BLOCK) => {}
        }
    };
    while !stop.is_cancelled() {
        if !joined {
            match cluster.join().await {
                Ok(()) => joined = true,
                Err(err) => {
                    tracing::debug!(%err, "cannot join the deployment's stream yet");
                    pause().await;
                    continue;
                }
            }
        }
        let want = intake.room();
        if want == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = intake.wait_for_room(READ_BLOCK) => {}
            }
            continue;
        }
        let taken = if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = tokio::time::Instant::now();
            cluster.reclaim(want).await
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                taken = cluster.read(want, READ_BLOCK) => taken,
            }
        };
        match taken {
            Ok(deliveries) => {
                for delivery in deliveries {
                    intake.take(delivery).await;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "cannot read the deployment's stream");
                // A Redis that restarted without persistence has lost the
                // group: join again before the next read.
                joined = false;
                pause().await;
            }
        }
    }
}

/// Listens until `stop` fires for the tasks any host announces as ended,
/// and ends those this host follows at once.
pub async fn follow_ended(cluster: Arc<Cluster>, followed: Arc<FollowedJobs>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let heard = tokio::select! {
            _ = stop.cancelled() => return,
            heard = cluster.on_ended(|id| {
                followed.ended(id);
                true
            }) => heard,
        };
        if let Err(err) = heard {
            tracing::debug!(%err, "cannot hear which tasks ended; following them by polling meanwhile");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(READ_BLOCK) => {}
        }
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

/// How often a host deletes the components whose last job expired without
/// ending.
const COLLECT_EVERY: Duration = Duration::from_secs(60);

/// Deletes, until `stop` fires, the shared components no name means and no
/// job needs any more, whose jobs' hosts died before they ended.
pub async fn collect_components(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut every = Every::new(COLLECT_EVERY);
    while every.tick(&stop).await {
        match cluster.collect_components().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted shared components no job needs any more"),
            Err(err) => tracing::debug!(%err, "cannot collect the shared components"),
        }
    }
}
