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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use queue::{JobQueue, LaneId, Running, Slot};

use crate::cluster::Cluster;
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
    /// Its place in the tenant's pending-task quota, held until the job ends
    /// (held by the accepting host when the job came from another one).
    pub admission: Option<Admission>,
    /// The stream entry it came from, when hosts share jobs: acknowledged
    /// once the outcome is written.
    pub entry: Option<String>,
    /// Taken over from a host that started it and never finished it.
    pub reclaimed: bool,
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
    /// Woken whenever a job ends.
    ended: tokio::sync::Notify,
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
        self.ended.notify_waiters();
        if let Some(t) = tracked {
            t.done.cancel();
        }
    }

    /// Resolves when a job ends, or after `timeout`.
    pub async fn wait_for_an_end(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.ended.notified()).await;
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
    /// Set when a draining host gives its unfinished shared jobs back.
    handing_back: Arc<AtomicBool>,
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
        cluster: Option<Arc<Cluster>>,
    ) -> std::io::Result<Self> {
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("matchbox-guest")
            .enable_time()
            .build()?;
        let queue = Arc::new(JobQueue::new(queue_capacity));
        let handing_back = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(1))
            .map(|_| {
                tokio::spawn(work(Worker {
                    queue: queue.clone(),
                    tracker: tracker.clone(),
                    store: store.clone(),
                    sandbox: sandbox.clone(),
                    metrics: metrics.clone(),
                    guests: guests.handle().clone(),
                    cluster: cluster.clone(),
                    handing_back: handing_back.clone(),
                }))
            })
            .collect();
        Ok(JobRunner { queue, tracker, handing_back, workers, guests: Some(guests) })
    }

    /// Cancels every job in flight without ending its task, so that the
    /// shared jobs among them go back to the deployment: their stream
    /// entries stay unacknowledged and another host takes them over.
    pub fn hand_back(&self) {
        self.handing_back.store(true, Ordering::Release);
        self.tracker.cancel_all();
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
    cluster: Option<Arc<Cluster>>,
    handing_back: Arc<AtomicBool>,
}

/// What became of a job a worker took.
enum Disposition {
    /// Its outcome is written, or it had none to write (its task is gone).
    Done,
    /// Left for another host: handed back on shutdown, or the store could
    /// not be told. A shared job's entry stays unacknowledged.
    Left,
}

async fn work(w: Worker) {
    while let Some((job, running)) = w.queue.pop().await {
        let id = job.task_id;
        let span = job.span.clone();
        let entry = job.entry.clone();
        let disposition = run_one(job, &w).instrument(span.clone()).await;
        if let (Some(entry), Some(cluster), Disposition::Done) = (entry, &w.cluster, disposition)
            && let Err(err) = cluster.finished(&entry, id).await
        {
            // Another host will run it again after the claim period; the
            // task's result is written once, so the rerun changes nothing.
            span.in_scope(|| tracing::warn!(%err, "could not acknowledge a shared job"));
        }
        // The tenant's lane may start another job, and its quota has room
        // again (the admission was dropped with the job), before anyone
        // waiting on this one is told it ended.
        drop(running);
        w.tracker.finished(id);
    }
}

async fn run_one(job: Job, w: &Worker) -> Disposition {
    let (store, sandbox, guests) = (&*w.store, &w.sandbox, &w.guests);
    let id = job.task_id;
    let handed_back = || job.entry.is_some() && w.handing_back.load(Ordering::Acquire);
    if job.cancel.is_cancelled() {
        // Deleted or expired while it waited (its entry is already gone),
        // or handed back.
        return if handed_back() { Disposition::Left } else { Disposition::Done };
    }
    let started =
        if job.reclaimed { store.take_over(&job.tenant, id).await } else { store.start(&job.tenant, id).await };
    match started {
        Ok(true) => {}
        Ok(false) => return Disposition::Done,
        Err(err) => {
            tracing::warn!(%err, "could not mark the task running");
            return Disposition::Left;
        }
    }
    let handing_back = job.entry.is_some().then(|| w.handing_back.clone());
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
        Err(failure) if failure.kind == FailureKind::Cancelled => {
            if handing_back.is_some_and(|h| h.load(Ordering::Acquire)) {
                tracing::info!("handed the job back for another host");
                return Disposition::Left;
            }
            TaskOutcome::Cancelled
        }
        Err(failure) => {
            tracing::info!(kind = %failure.kind, message = %failure.message, "job failed");
            TaskOutcome::Failed(failure.into())
        }
    };
    let written = store.finish(&tenant, id, outcome).await;
    drop(admission);
    match written {
        Ok(_) => Disposition::Done,
        Err(err) => {
            tracing::warn!(%err, "could not write the job's outcome");
            Disposition::Left
        }
    }
}
