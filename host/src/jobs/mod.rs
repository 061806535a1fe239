//! Running jobs: the bounded queue, the workers, and the jobs in flight.
//!
//! Workers are tasks on the service's runtime that take a job from the
//! [`JobQueue`] (fair across tenants, see `queue.rs`), mark its task running, run it in the [`Sandbox`] and write
//! the outcome. The guest itself runs on the *guest runtime*, a tokio runtime
//! of its own with one thread per worker, so guest compute never occupies a
//! thread that serves HTTP (see [`crate::runtime`] for why guests are async).
//!
//! The [`JobTracker`] knows every job accepted and not yet ended, with its
//! cancel token (fired by `DELETE /tasks/{id}` and by expiry) and its done
//! signal (awaited by `?wait=`). It only ever holds queued and running jobs,
//! so it is bounded by the queue and the worker count.

mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use queue::{JobQueue, LaneId, Running, Slot};

use crate::metrics::Metrics;
use crate::registry::Matcher;
use crate::runtime::{FailureKind, JobFailure, JobInput, JobLimits, Sandbox};
use crate::tasks::{Ranking, TaskId, TaskOutcome, TaskStore};
use crate::tenants::Admission;

/// One accepted job.
pub struct Job {
    pub task_id: TaskId,
    /// The tenant's name: its lane in the queue and its metrics label.
    pub tenant: LaneId,
    /// Its place in the tenant's pending-task quota, held until the job ends.
    pub admission: Admission,
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

#[derive(Default)]
pub struct JobTracker {
    jobs: Mutex<HashMap<TaskId, Tracked>>,
    /// Woken whenever the last job in flight ends.
    emptied: tokio::sync::Notify,
}

struct Tracked {
    tenant: LaneId,
    cancel: CancellationToken,
    done: CancellationToken,
}

impl JobTracker {
    /// Starts tracking `tenant`'s job; returns its cancel token and its done
    /// signal.
    pub fn track(&self, tenant: &LaneId, id: TaskId) -> (CancellationToken, CancellationToken) {
        let tracked =
            Tracked { tenant: tenant.clone(), cancel: CancellationToken::new(), done: CancellationToken::new() };
        let tokens = (tracked.cancel.clone(), tracked.done.clone());
        self.jobs.lock().unwrap().insert(id, tracked);
        tokens
    }

    /// Cancels a job if it is queued or running here; whether this call
    /// cancelled it. A running guest stops within one epoch tick.
    pub fn cancel(&self, id: TaskId) -> bool {
        match self.jobs.lock().unwrap().get(&id) {
            Some(t) if !t.cancel.is_cancelled() => {
                t.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    pub fn cancel_all(&self) {
        for t in self.jobs.lock().unwrap().values() {
            t.cancel.cancel();
        }
    }

    /// Fires once the job has ended and its outcome is written; `None` if no
    /// such job is in flight here.
    pub fn done(&self, id: TaskId) -> Option<CancellationToken> {
        self.jobs.lock().unwrap().get(&id).map(|t| t.done.clone())
    }

    /// Forgets a job that ended, waking anyone waiting on it.
    pub fn finished(&self, id: TaskId) {
        let mut jobs = self.jobs.lock().unwrap();
        let tracked = jobs.remove(&id);
        crate::tasks::give_back_spare_capacity(&mut jobs);
        let empty = jobs.is_empty();
        drop(jobs);
        if empty {
            self.emptied.notify_waiters();
        }
        if let Some(t) = tracked {
            t.done.cancel();
        }
    }

    /// Resolves once no job is queued or running.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Register before looking, so an end between the look and the
            // wait is not missed.
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// The tenant and task of every job queued or running.
    pub fn in_flight(&self) -> Vec<(String, TaskId)> {
        self.jobs.lock().unwrap().iter().map(|(id, t)| (t.tenant.to_string(), *id)).collect()
    }

    /// Jobs queued or running.
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The queue, the workers and the guest runtime. Dropping it stops them.
pub struct JobRunner {
    queue: Arc<JobQueue<Job>>,
    tracker: Arc<JobTracker>,
    workers: Vec<JoinHandle<()>>,
    guests: Option<tokio::runtime::Runtime>,
}

impl JobRunner {
    /// Starts `workers` workers on the current runtime, and a guest runtime
    /// with as many threads.
    pub fn start(
        workers: usize,
        queue_capacity: usize,
        tracker: Arc<JobTracker>,
        store: Arc<dyn TaskStore>,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("matchbox-guest")
            .enable_time()
            .build()?;
        let queue = Arc::new(JobQueue::new(queue_capacity));
        let workers = (0..workers.max(1))
            .map(|_| {
                tokio::spawn(work(Worker {
                    queue: queue.clone(),
                    tracker: tracker.clone(),
                    store: store.clone(),
                    sandbox: sandbox.clone(),
                    metrics: metrics.clone(),
                    guests: guests.handle().clone(),
                }))
            })
            .collect();
        Ok(JobRunner { queue, tracker, workers, guests: Some(guests) })
    }

    pub fn queue(&self) -> &JobQueue<Job> {
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
        if let Some(guests) = self.guests.take() {
            // Never block a runtime thread on the guest runtime's threads:
            // cancelled guests stop within a tick on their own.
            guests.shutdown_background();
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
    guests: tokio::runtime::Handle,
}

async fn work(w: Worker) {
    while let Some((job, running)) = w.queue.pop().await {
        let id = job.task_id;
        let span = job.span.clone();
        run_one(job, &w).instrument(span).await;
        // The tenant's lane may start another job, and its quota has room
        // again (the admission was dropped with the job), before anyone
        // waiting on this one is told it ended.
        drop(running);
        w.tracker.finished(id);
    }
}

async fn run_one(job: Job, w: &Worker) {
    let (store, sandbox, guests) = (&*w.store, &w.sandbox, &w.guests);
    let id = job.task_id;
    if job.cancel.is_cancelled() {
        // Deleted or expired while it waited: its entry is already gone.
        return;
    }
    match store.start(&job.tenant, id).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            tracing::warn!(%err, "could not mark the task running");
            return;
        }
    }
    let Job { matcher, input, limits, cancel, span, tenant, admission, .. } = job;
    let matcher_name = matcher.name.clone();
    let sandbox = sandbox.clone();
    let run = async move { sandbox.rank(&matcher.pre, &input, &limits, cancel).await }.instrument(span);
    let outcome = match guests.spawn(run).await {
        Ok(report) => {
            let outcome = match &report.outcome {
                Ok(_) => "completed",
                Err(failure) => failure.kind.as_str(),
            };
            w.metrics.job_ended(&matcher_name, &tenant, outcome, report.elapsed, report.instantiate);
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
            report.outcome
        }
        Err(err) => Err(JobFailure::new(FailureKind::Unavailable, format!("the job's task failed: {err}"))),
    };
    let outcome = match outcome {
        Ok(rankings) => TaskOutcome::Completed(
            rankings
                .into_iter()
                .map(|r| Ranking { posting_id: r.posting_id, score: r.score, reasons: r.reasons })
                .collect(),
        ),
        Err(failure) if failure.kind == FailureKind::Cancelled => TaskOutcome::Cancelled,
        Err(failure) => {
            tracing::info!(kind = %failure.kind, message = %failure.message, "job failed");
            TaskOutcome::Failed(failure.into())
        }
    };
    if let Err(err) = store.finish(&tenant, id, outcome).await {
        tracing::warn!(%err, "could not write the job's outcome");
    }
    drop(admission);
}
