//! [`Matchbox`]: the service the API serves, put together from the sandbox,
//! the matcher registry, the task store and the job runner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tracing::Instrument as _;

use crate::cluster::{Cluster, Envelope};
use crate::config::Config;
use crate::jobs::{Job, JobRunner, JobTracker};
use crate::metrics::Metrics;
use crate::registry::{DEFAULT_MATCHER, MatcherRegistry, RegistryConfig, ResolveError};
use crate::runtime::{JobInput, Sandbox};
use crate::tasks::{Clock, MemoryStore, OnExpire, RedisStore, StoreError, Task, TaskId, TaskStore};
use crate::tenants::{Tenant, Tenants};

pub struct Matchbox {
    pub config: Config,
    pub clock: Clock,
    pub sandbox: Arc<Sandbox>,
    pub registry: Arc<MatcherRegistry>,
    pub store: Arc<dyn TaskStore>,
    pub jobs: JobRunner,
    pub metrics: Arc<Metrics>,
    /// Resident memory over the last minutes, for the status page.
    pub memory_history: Arc<crate::metrics::MemoryHistory>,
    pub tenants: Tenants,
    /// The deployment this host shares jobs with, when the store is Redis.
    pub cluster: Option<Arc<Cluster>>,
    /// Jobs this host accepted into the deployment's stream, followed until
    /// they end wherever they run (for `?wait=` and the pending quota).
    pub accepted: crate::cluster::Accepted,
    /// Set when shutdown begins: submissions are refused from then on.
    draining: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    UnknownMatcher(#[from] ResolveError),
    #[error("the job queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    #[error("tenant '{tenant}' has {limit} jobs pending, its quota; retry once some have ended")]
    OverQuota { tenant: String, limit: usize },
    #[error("this host is shutting down and takes no new jobs")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("task {0} has expired")]
    Gone(TaskId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Matchbox {
    /// Builds the service on the embedded defaults: the memory task store and
    /// the built-in matchers. Must be called inside a tokio runtime.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let tenants = Tenants::from_config(&config)?;
        let redis_url = match config.store.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => Some(url.to_string()),
            other => anyhow::bail!("--store '{other}': use 'memory' or a redis:// URL"),
        };
        // A shared job may sit unacknowledged for as long as the longest
        // deadline of any tenant, plus a grace period; past that its host
        // is taken to be gone.
        let claim_after = tenants.all().iter().map(|t| t.quotas.deadline).max().unwrap_or(config.job_timeout)
            + crate::cluster::CLAIM_GRACE;
        let cluster = match &redis_url {
            Some(url) => Some(Arc::new(Cluster::open(url, &config.redis_prefix, claim_after)?)),
            None => None,
        };
        let sandbox = Arc::new(Sandbox::new(config.sandbox()).context("creating the wasm engine")?);
        let registry_config = RegistryConfig { cluster: cluster.clone(), ..config.registry() };
        let registry = Arc::new(MatcherRegistry::open(sandbox.clone(), registry_config).await?);
        tenants.check_matchers(&registry.names())?;
        let clock = Clock::new();
        let tracker = Arc::new(JobTracker::default());
        let metrics = Arc::new(Metrics::new(config.tasks_high_water));
        let on_expire: OnExpire = {
            let tracker = tracker.clone();
            let metrics = metrics.clone();
            Arc::new(move |ids: &[TaskId]| {
                metrics.tasks_expired.inc_by(ids.len() as u64);
                for id in ids {
                    // A job still queued or running for an expired task stops
                    // now; its Store is dropped within one epoch tick.
                    if tracker.cancel(*id) {
                        tracing::info!(task_id = %id, "task expired while its job was in flight; cancelled it");
                    }
                }
            })
        };
        let store: Arc<dyn TaskStore> = match &redis_url {
            None => Arc::new(MemoryStore::new(config.max_tasks, config.task_ttl, clock, on_expire)),
            Some(url) => {
                let store = RedisStore::open(url, &config.redis_prefix, config.max_tasks, config.task_ttl)?;
                if let Err(err) = store.check().await {
                    tracing::warn!(%err, "Redis does not answer yet; not ready until it does");
                }
                Arc::new(store)
            }
        };
        tokio::spawn(stop_jobs_of_lost_tasks(Arc::downgrade(&tracker), Arc::downgrade(&store), metrics.clone()));
        let jobs = JobRunner::start(
            config.workers(),
            config.queue,
            tracker,
            store.clone(),
            sandbox.clone(),
            metrics.clone(),
            cluster.clone(),
        )
        .context("starting the job workers")?;
        let app = Arc::new(Matchbox {
            config,
            clock,
            sandbox,
            registry,
            store,
            jobs,
            metrics,
            memory_history: crate::metrics::MemoryHistory::start(Duration::from_secs(2), Duration::from_secs(600)),
            tenants,
            cluster,
            accepted: crate::cluster::Accepted::default(),
            draining: AtomicBool::new(false),
        });
        if app.cluster.is_some() {
            tokio::spawn(crate::cluster::runner::consume(Arc::downgrade(&app)));
            tokio::spawn(crate::cluster::runner::follow_accepted(Arc::downgrade(&app)));
            tokio::spawn(crate::cluster::runner::hear_ended(Arc::downgrade(&app)));
        }
        Ok(app)
    }

    /// Accepts `tenant`'s job: records a pending task and queues the job.
    /// Once this returns `Ok`, the task ends in a terminal state or expires.
    pub async fn submit(
        &self,
        tenant: &Arc<Tenant>,
        matcher: Option<&str>,
        input: JobInput,
    ) -> Result<Task, SubmitError> {
        if self.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        let reference = matcher.unwrap_or(DEFAULT_MATCHER);
        if self.cluster.is_some() {
            let name = reference.split('@').next().unwrap_or(reference);
            self.registry.sync(tenant, name).await?;
        }
        let matcher = self.registry.resolve(tenant, reference)?;
        let admission = tenant.admit().ok_or_else(|| SubmitError::OverQuota {
            tenant: tenant.name.to_string(),
            limit: tenant.quotas.pending_tasks,
        })?;
        let task = Task::pending(
            self.clock.new_task_id(),
            tenant.name.to_string(),
            matcher.name.clone(),
            self.clock.now(),
            self.store.ttl(),
        );
        let id = task.task_id;
        if let Some(cluster) = &self.cluster {
            // The task, then the job, both in Redis before the 202.
            self.store.insert(task.clone()).await?;
            let envelope = Envelope {
                tenant: tenant.name.to_string(),
                task_id: id,
                matcher: format!("{}@{}", matcher.name, matcher.digest),
                input,
            };
            if let Err(err) = cluster.publish(&envelope).await {
                let _ = self.store.remove(&tenant.name, id).await;
                return Err(err.into());
            }
            self.accepted.follow(&tenant.name, id, admission);
            tracing::debug!(task_id = %id, tenant = %tenant.name, matcher = %matcher.name, "task accepted into the stream");
            return Ok(task);
        }
        let queue = self.jobs.queue();
        let slot = queue.reserve().ok_or(SubmitError::QueueFull(queue.capacity()))?;
        let span = tracing::info_span!("task", task_id = %id, tenant = %tenant.name, matcher = %matcher.name);
        // Tracked before it is stored, so an expiry can never miss it.
        let (cancel, _done) = self.jobs.tracker().track(&tenant.name, id);
        if let Err(err) = self.store.insert(task.clone()).instrument(span.clone()).await {
            self.jobs.tracker().finished(id);
            return Err(err.into());
        }
        span.in_scope(|| tracing::debug!(postings = input.postings.len(), "task accepted"));
        if let Ok(tasks) = self.store.count().await {
            self.metrics.observe_table(tasks as u64);
        }
        let job = Job {
            task_id: id,
            tenant: tenant.name.clone(),
            admission: Some(admission),
            entry: None,
            reclaimed: false,
            matcher,
            input,
            limits: tenant.job_limits(),
            cancel,
            span,
        };
        slot.push(&tenant.name, tenant.quotas.concurrent_jobs, job);
        Ok(task)
    }

    /// `tenant`'s task, or why there is none: expired (its id's timestamp is
    /// older than the time to live) or never known here. Another tenant's
    /// task is answered exactly as an unknown one.
    pub async fn task(&self, tenant: &Tenant, id: TaskId) -> Result<Task, LookupError> {
        match self.store.get(&tenant.name, id).await? {
            Some(task) => Ok(task),
            None => Err(self.missing(id)),
        }
    }

    /// Cancels `tenant`'s job still queued or running and deletes its task.
    pub async fn cancel(&self, tenant: &Tenant, id: TaskId) -> Result<(), LookupError> {
        if !self.store.remove(&tenant.name, id).await? {
            return Err(self.missing(id));
        }
        self.jobs.tracker().cancel(id);
        tracing::info!(task_id = %id, "task deleted by request");
        Ok(())
    }

    /// Waits up to `timeout` for `tenant`'s task's job to end, then reads
    /// the task.
    pub async fn wait(&self, tenant: &Tenant, id: TaskId, timeout: Duration) -> Result<Task, LookupError> {
        if let Some(done) = self.accepted.done(id).or_else(|| self.jobs.tracker().done(id)) {
            let _ = tokio::time::timeout(timeout, done.cancelled()).await;
        }
        self.task(tenant, id).await
    }

    /// Whether the task store (and, with hosts sharing jobs, the stream)
    /// can serve requests.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.store.check().await?;
        if let Some(cluster) = &self.cluster {
            cluster.check().await?;
        }
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Shuts down gracefully: refuses new jobs from now on, lets the jobs
    /// already accepted (queued or running) finish for up to `timeout`, then
    /// cancels whatever is left. Reads keep being served meanwhile, so clients
    /// can collect results; stop the HTTP server after this returns.
    pub async fn drain(&self, timeout: Duration) {
        self.draining.store(true, Ordering::Release);
        let in_flight = self.jobs.tracker().len();
        tracing::info!(in_flight, timeout = %humantime::format_duration(timeout), "draining: no new jobs");
        let _ = tokio::time::timeout(timeout, self.jobs.tracker().wait_empty()).await;
        let left = self.jobs.tracker().len();
        if left > 0 && self.cluster.is_some() {
            tracing::warn!(left, "drain timeout reached; handing the jobs still in flight back to the deployment");
            self.jobs.hand_back();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.sandbox.live().wait_for_zero()).await;
        } else if left > 0 {
            tracing::warn!(left, "drain timeout reached; cancelling the jobs still in flight");
            self.jobs.tracker().cancel_all();
            // Cancelled guests stop within an epoch tick; give them a moment.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.sandbox.live().wait_for_zero()).await;
        }
        tracing::info!("drained");
    }

    /// What the host holds right now.
    pub async fn present(&self) -> Result<crate::metrics::Present, StoreError> {
        let by_status = self.store.counts().await?;
        Ok(crate::metrics::Present {
            tasks: by_status.total(),
            tasks_by_status: by_status,
            jobs_in_flight: self.jobs.tracker().len() as u64,
            queued: self.jobs.queue().len() as u64,
            live_instances: self.sandbox.live().get() as u64,
        })
    }

    fn missing(&self, id: TaskId) -> LookupError {
        if self.clock.has_expired(&id, self.store.ttl()) { LookupError::Gone(id) } else { LookupError::NotFound(id) }
    }
}

/// How often the host asks a store that does not report expiry (Redis)
/// whether the tasks of its jobs in flight still exist.
const LOST_TASK_CHECK: Duration = Duration::from_millis(250);

/// Stops jobs whose task is gone from the store: expired there, or deleted
/// by another host. The memory store reports its own expiries as they
/// happen (`OnExpire`), so for it this finds nothing new.
async fn stop_jobs_of_lost_tasks(
    tracker: std::sync::Weak<JobTracker>,
    store: std::sync::Weak<dyn TaskStore>,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval(LOST_TASK_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let (Some(tracker), Some(store)) = (tracker.upgrade(), store.upgrade()) else { return };
        let in_flight = tracker.in_flight();
        if in_flight.is_empty() {
            continue;
        }
        match store.statuses(&in_flight).await {
            Ok(statuses) => {
                let gone = in_flight.iter().zip(statuses).filter(|(_, s)| s.is_none()).map(|((_, id), _)| *id);
                for id in gone {
                    // Expiries the memory store reported itself were cancelled
                    // then, so `cancel` is false for them here.
                    if tracker.cancel(id) {
                        metrics.tasks_expired.inc();
                        tracing::info!(task_id = %id, "the task is gone from the store while its job was in flight; cancelled it");
                    }
                }
            }
            // Not ready meanwhile; the next tick asks again.
            Err(err) => tracing::debug!(%err, "could not check the tasks in flight"),
        }
    }
}
