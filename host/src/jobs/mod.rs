//! Running jobs: the bounded queue, the workers, and what this host knows
//! of the jobs in flight.
//!
//! Workers are tasks on the sandbox's guest runtime that take a job from the
//! [`JobQueue`] (fair across tenants, see `queue.rs`), mark its task
//! running, run it in the [`Sandbox`] and write the outcome, so guest
//! compute never occupies a thread that serves HTTP (see [`crate::runtime`]
//! for why). A worker runs the whole job where the guest runs: a job costs
//! one wake-up of a guest thread (the job queued) and one of the front end
//! (the end written), with no task spawned per job and no hop back to the
//! front end's runtime between the guest's answer and the store's write.
//!
//! A job another host could run too (one read from the deployment's stream)
//! carries a [`Claim`]: the small trait through which this layer tells the
//! deployment that the job's outcome is written. The cluster layer
//! implements it; a claim dropped unsettled leaves the job to another host.
//!
//! `tracker.rs` holds the bookkeeping: the [`JobTracker`] of jobs queued or
//! running here and the [`FollowedJobs`] this host accepted for the
//! deployment.

mod queue;
mod tracker;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures_util::FutureExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use queue::{JobQueue, LaneId, Running, Slot};
pub use tracker::{FollowedJobs, JobTracker};

use crate::metrics::Metrics;
use crate::registry::{Matcher, Source};
use crate::runtime::{FailureKind, JobFailure, JobInput, JobLimits, JobReport, Sandbox};
use crate::tasks::{StoreError, TaskEnd, TaskId, TaskLogs, TaskOutcome, TaskStore};

/// This host's hold on a job of the deployment, which another host runs if
/// this one does not finish it. The outcome of such a job is written
/// through its claim, and only while the hold lasts.
#[async_trait]
pub trait Claim: Send + Sync {
    /// Whether this host took the job over from one that did not finish it.
    fn reclaimed(&self) -> bool;

    /// Whether another host holds the job now: this host must stop it and
    /// write nothing.
    fn lost(&self) -> bool;

    /// Writes the job's outcome and is done with the job across the
    /// deployment, in one step. `Ok(false)`: nothing was written (the task
    /// was gone or had ended, or the hold was lost).
    async fn finish(self: Box<Self>, id: TaskId, end: TaskEnd) -> Result<bool, StoreError>;

    /// Done with a job that has no outcome to write (its task is gone).
    async fn drop_done(self: Box<Self>) -> Result<(), StoreError>;
}

/// One accepted job.
pub struct Job {
    pub task_id: TaskId,
    /// The tenant's name: its lane in the queue and its metrics label.
    pub tenant: LaneId,
    /// Set when the job came from the deployment's stream.
    pub claim: Option<Box<dyn Claim>>,
    /// The matcher as it was when the job was accepted; replacing it in the
    /// registry does not change what this job runs.
    pub matcher: Arc<Matcher>,
    pub input: JobInput,
    pub limits: JobLimits,
    pub cancel: CancellationToken,
    /// The task's span: the job's events, the guest's log lines included,
    /// are recorded inside it.
    pub span: tracing::Span,
}

/// The queue, the workers and the guest runtime. Dropping it stops them.
pub struct JobRunner {
    queue: Arc<JobQueue<Job>>,
    tracker: Arc<JobTracker>,
    /// Set when a draining host gives its unfinished shared jobs back.
    handing_back: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl JobRunner {
    /// Starts `workers` workers on the sandbox's guest runtime.
    pub fn start(
        workers: usize,
        queue_capacity: usize,
        tracker: Arc<JobTracker>,
        store: Arc<dyn TaskStore>,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
        shared_matcher_logs: bool,
    ) -> Self {
        let queue = Arc::new(JobQueue::new(queue_capacity));
        let handing_back = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(1))
            .map(|_| {
                sandbox.on_guests(work(Worker {
                    queue: queue.clone(),
                    tracker: tracker.clone(),
                    store: store.clone(),
                    sandbox: sandbox.clone(),
                    metrics: metrics.clone(),
                    handing_back: handing_back.clone(),
                    shared_matcher_logs,
                }))
            })
            .collect();
        JobRunner { queue, tracker, handing_back, workers }
    }

    /// Cancels every job in flight without ending its task, so that the
    /// shared jobs among them go back to the deployment: their entries are
    /// no longer held, and another host takes them over once their lease
    /// lapses.
    pub fn hand_back(&self) {
        self.handing_back.store(true, Ordering::Release);
        self.tracker.cancel_all();
    }

    pub fn queue(&self) -> &Arc<JobQueue<Job>> {
        &self.queue
    }

    pub fn tracker(&self) -> &Arc<JobTracker> {
        &self.tracker
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.queue.close();
        self.tracker.cancel_all();
        for worker in &self.workers {
            worker.abort();
        }
    }
}

/// What a worker needs.
struct Worker {
    queue: Arc<JobQueue<Job>>,
    tracker: Arc<JobTracker>,
    store: Arc<dyn TaskStore>,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
    handing_back: Arc<AtomicBool>,
    /// Whether tasks keep the logs of shared matchers too.
    shared_matcher_logs: bool,
}

async fn work(w: Worker) {
    while let Some((job, running)) = w.queue.pop().await {
        let id = job.task_id;
        let span = job.span.clone();
        run_one(job, &w).instrument(span).await;
        // The tenant's lane may start another job before anyone waiting on
        // this one is told it ended.
        drop(running);
        w.tracker.finished(id);
    }
}

/// Runs one job and writes its outcome: through its claim when it came from
/// the deployment (a job handed back or lost is left to another host, with
/// nothing written), through the store otherwise.
async fn run_one(mut job: Job, w: &Worker) {
    let (store, sandbox) = (&*w.store, &w.sandbox);
    let id = job.task_id;
    let claim = job.claim.take();
    let left = |claim: &Option<Box<dyn Claim>>| {
        claim.as_ref().is_some_and(|c| c.lost() || w.handing_back.load(Ordering::Acquire))
    };
    if job.cancel.is_cancelled() {
        // Deleted or expired while it waited, handed back, or lost.
        if !left(&claim) {
            done_without_outcome(claim).await;
        }
        return;
    }
    // A shared job's task was marked running when this host took the job
    // (the read and the take-over do it in one script with the claim).
    let started = if claim.is_some() { Ok(true) } else { store.start(&job.tenant, id).await };
    match started {
        Ok(true) => w.tracker.mark_started(id),
        Ok(false) => return done_without_outcome(claim).await,
        Err(err) => {
            // Left for another host (a shared job) or for the store to
            // expire (a local one).
            tracing::warn!(%err, "could not mark the task running");
            return;
        }
    }
    let Job { matcher, input, limits, cancel, tenant, .. } = job;
    // An upload is its tenant's own (no other tenant can run it), so its
    // author may read what it logged; a shared matcher's lines are the
    // operator's, unless the operator shares them.
    let keep_logs = matcher.source == Source::Uploaded || w.shared_matcher_logs;
    // A panic while running the job (a bug of the host's or wasmtime's)
    // fails this job and leaves the worker to take the next one.
    let report = match AssertUnwindSafe(sandbox.rank(&matcher.pre, &input, &limits, cancel)).catch_unwind().await {
        Ok(report) => report,
        Err(_) => JobReport::failed(JobFailure::new(FailureKind::Unavailable, "the host failed while running the job")),
    };
    let mut logs = keep_logs.then(|| TaskLogs::of(&report));
    let outcome = match &report.outcome {
        Ok(_) => "completed",
        Err(failure) => failure.kind.as_str(),
    };
    w.metrics.job_ended(&matcher.name, &tenant, outcome, report.elapsed, report.instantiate);
    tracing::debug!(
        elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
        instantiate_us = report.instantiate.map(|d| d.as_micros() as u64),
        log_lines = report.log.lines.len(),
        log_dropped = report.log.dropped,
        "job ended"
    );
    if !report.stderr.is_empty() {
        tracing::debug!(target: "matchbox::guest", stderr = %report.stderr, "guest stderr");
    }
    let outcome = match report.outcome {
        Ok(rankings) => TaskOutcome::Completed(rankings),
        Err(failure) if failure.kind == FailureKind::Cancelled => {
            if left(&claim) {
                tracing::info!("left the job to another host");
                return;
            }
            logs = None;
            TaskOutcome::Cancelled
        }
        Err(failure) => {
            // `reason`, not `message`: tracing takes a field of that name
            // for the event's own message.
            tracing::info!(kind = %failure.kind, reason = ?failure.message, "job failed");
            TaskOutcome::Failed(failure)
        }
    };
    let end = TaskEnd { outcome, logs };
    let written = match claim {
        Some(claim) => claim.finish(id, end).await,
        None => store.finish(&tenant, id, end).await,
    };
    if let Err(err) = written {
        // A shared job is run again elsewhere once its lease lapses; its
        // task's result is written once, so the rerun changes nothing.
        tracing::warn!(%err, "could not write the job's outcome");
    }
}

/// Done with a job whose task has no outcome to take (it is gone, or ended).
async fn done_without_outcome(claim: Option<Box<dyn Claim>>) {
    if let Some(claim) = claim
        && let Err(err) = claim.drop_done().await
    {
        tracing::warn!(%err, "could not let go of a shared job");
    }
}
