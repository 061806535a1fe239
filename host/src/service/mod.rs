//! [`Matchbox`]: the one façade the API and the binary use, put together
//! from the layers below.
//!
//! Its fields are private: callers use methods that say what they mean
//! (accept a job, read or cancel a task, list or upload matchers, the
//! figures for `/status`). Every job, submitted here or read from the
//! deployment's stream, enters through one intake (`intake.rs`) that applies
//! the same rules whatever the job's origin.
//!
//! Every background loop the service starts obeys one stop signal, fired
//! when the `Matchbox` is dropped; the intake's half of it, *draining*, is
//! fired first when a graceful shutdown begins.

mod intake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::cluster::{Cluster, ClusterConfig};
use crate::jobs::{FollowedJobs, JobRunner, JobTracker};
use crate::metrics::{HostFigures, MemoryHistory, MemorySample, Metrics, Present, View};
use crate::registry::{
    LoadError, LoadStats, MatcherRef, MatcherRegistry, MatcherSummary, RegistryConfig, ResolveError,
};
use crate::runtime::{JobInput, LiveInstances, Sandbox, SandboxConfig};
use crate::tasks::{
    Backend, Clock, IdempotencyKey, MemoryStore, OnExpire, RedisConn, RedisStore, StoreError, Task, TaskCallback,
    TaskCounts, TaskId, TaskStore,
};
use crate::tenants::{AuthError, HostLimits, Tenant, Tenants};
use crate::webhooks::{Deliverer, Secret, WebhookConfig};
use intake::JobIntake;

/// How often an event stream reads a pending task whose start this host
/// is not told of (a job of the deployment another host may take).
pub const START_SAMPLE: Duration = Duration::from_millis(500);

/// How long a draining host without Redis waits for the deliveries of the
/// ends it wrote.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(5);

/// What the service is built from; `matchbox serve`'s flags map onto it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the task table lives.
    pub backend: Backend,
    /// Prefix of every Redis key: hosts with the same prefix form one
    /// deployment.
    pub redis_prefix: String,
    /// The tenants file; without one, a single implicit tenant.
    pub tenants_file: Option<PathBuf>,
    /// Workers, queue, memory and time per job, postings per job.
    pub limits: HostLimits,
    pub task_ttl: Duration,
    /// Table size past which a warning is logged.
    pub tasks_high_water: u64,
    /// Where matchers are kept and what uploads may be.
    pub registry: RegistryConfig,
    /// What the HTTP layer enforces before a request reaches the service.
    pub http: HttpLimits,
    /// How hosts sharing a Redis share jobs.
    pub cluster: ClusterConfig,
    /// Whether a task keeps the logs of a shared (built-in or directory)
    /// matcher too, not only of its tenant's own uploads.
    pub shared_matcher_logs: bool,
    /// Where callbacks may go and how they are delivered.
    pub webhooks: WebhookConfig,
    /// Without a tenants file: what the one tenant's callbacks are signed
    /// with.
    pub webhook_secret: Option<Secret>,
}

/// Caps the HTTP layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body.
    pub max_body: usize,
    /// Longest `?wait=`.
    pub max_wait: Duration,
    /// Largest uploaded component.
    pub max_component_size: usize,
    /// Most postings in one job (a tenant's quota may be lower).
    pub max_postings: usize,
    /// From a connection's opening (or its last response) to the end of
    /// the next request's headers.
    pub header_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_timeout: Duration,
    /// Connections held at once on the API's listener.
    pub max_connections: usize,
    /// Most jobs in one `POST /jobs/batch`.
    pub max_batch: usize,
}

/// A job as a client submits it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The matcher it names; the default matcher when `None`.
    pub matcher: Option<MatcherRef>,
    pub input: JobInput,
    /// The client's idempotency key, with what it stands for.
    pub key: Option<IdempotencyKey>,
    /// Where the end is to be pushed.
    pub callback: Option<CallbackRequest>,
}

/// A job's `callback`, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRequest {
    pub url: String,
    /// Delete the task once its end is delivered.
    pub delete_after_delivery: bool,
}

/// An accepted submission.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    /// The submission's idempotency key had made this task already: no new
    /// task, no new job.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    UnknownMatcher(#[from] ResolveError),
    #[error("the job queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    #[error("this host is shutting down and takes no new jobs")]
    ShuttingDown,
    /// The callback's destination is one the host's rules refuse.
    #[error(transparent)]
    CallbackRefused(#[from] crate::webhooks::Refused),
    /// The tenant has no secret to sign callbacks with.
    #[error(
        "callback: this tenant has no webhook signing secret, so its jobs cannot ask for callbacks (the operator \
         sets one: `webhook_secret` in the tenants file, or --webhook-secret without one)"
    )]
    CallbackUnsigned,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One job of a batch is refused, and with it the batch.
    #[error("jobs[{index}]: {source}")]
    InBatch { index: usize, source: Box<SubmitError> },
}

impl SubmitError {
    /// This refusal, as one of the `index`-th job of a batch.
    pub fn in_batch(self, index: usize) -> SubmitError {
        SubmitError::InBatch { index, source: Box::new(self) }
    }
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

pub struct Matchbox {
    http: HttpLimits,
    clock: Clock,
    sandbox: Arc<Sandbox>,
    registry: Arc<MatcherRegistry>,
    store: Arc<dyn TaskStore>,
    jobs: JobRunner,
    metrics: Arc<Metrics>,
    memory_history: Arc<MemoryHistory>,
    tenants: Arc<Tenants>,
    cluster: Option<Arc<Cluster>>,
    followed: Arc<FollowedJobs>,
    intake: Arc<JobIntake>,
    webhooks: Arc<Deliverer>,
    /// Fired when draining begins: no new submissions, no more jobs taken
    /// from the stream. A child of the stop signal.
    draining: CancellationToken,
    /// Fires the stop signal of every background loop when dropped.
    _stop: DropGuard,
}

impl Matchbox {
    /// Builds the service and starts its workers and background loops. On
    /// the embedded defaults that is the memory store and the built-in
    /// matchers. Must be called inside a tokio runtime.
    pub async fn new(settings: impl Into<Settings>) -> anyhow::Result<Arc<Self>> {
        let settings = settings.into();
        let stop = CancellationToken::new();
        let tenants = Arc::new(Tenants::load(
            settings.tenants_file.as_deref(),
            &settings.limits,
            settings.webhook_secret.clone(),
        )?);
        let clock = Clock::new();
        let metrics = Arc::new(Metrics::new(settings.tasks_high_water));
        let tracker = Arc::new(JobTracker::default());
        let (store, cluster) = open_store(&settings, &tenants, clock, &tracker, &metrics).await?;
        let sandbox = Arc::new(Sandbox::new(settings.sandbox()).context("creating the wasm engine")?);
        let registry = Arc::new(open_registry(&settings, &sandbox, &cluster).await?);
        tenants.check_matchers(&registry.names()).map_err(|e| match &settings.tenants_file {
            Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
            None => e,
        })?;
        let jobs = JobRunner::start(
            settings.limits.workers,
            settings.limits.queue,
            tracker,
            store.clone(),
            sandbox.clone(),
            metrics.clone(),
            settings.shared_matcher_logs,
        );
        let followed = Arc::new(FollowedJobs::default());
        let draining = stop.child_token();
        let intake = Arc::new(JobIntake {
            clock,
            registry: registry.clone(),
            tenants: tenants.clone(),
            store: store.clone(),
            queue: jobs.queue().clone(),
            tracker: jobs.tracker().clone(),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            followed: followed.clone(),
            draining: draining.clone(),
            workers: settings.limits.workers,
        });
        if let Some(cluster) = &cluster {
            use crate::cluster::{consume, hear_events, keep_tidy, renew_leases, sweep_followed};
            let tracker = jobs.tracker().clone();
            tokio::spawn(consume(cluster.clone(), intake.clone(), metrics.clone(), draining.clone()));
            tokio::spawn(renew_leases(cluster.clone(), metrics.clone(), stop.clone()));
            tokio::spawn(hear_events(cluster.clone(), followed.clone(), tracker, stop.clone()));
            tokio::spawn(sweep_followed(followed.clone(), store.clone(), stop.clone()));
            tokio::spawn(keep_tidy(cluster.clone(), stop.clone()));
        }
        let secrets: crate::webhooks::Secrets = {
            let tenants = tenants.clone();
            Arc::new(move |name: &str| tenants.get(name).and_then(|t| t.webhook_secret.clone()))
        };
        let webhooks = Deliverer::new(store.clone(), settings.webhooks.clone(), secrets)
            .context("creating the webhooks' HTTP client")?;
        tokio::spawn(webhooks.clone().run(stop.clone()));
        let memory_history = MemoryHistory::start(Duration::from_secs(2), Duration::from_secs(600), stop.clone());
        Ok(Arc::new(Matchbox {
            http: settings.http,
            clock,
            sandbox,
            registry,
            store,
            jobs,
            metrics,
            memory_history,
            tenants,
            cluster,
            followed,
            intake,
            webhooks,
            draining,
            _stop: stop.drop_guard(),
        }))
    }

    /// The caps the HTTP layer enforces.
    pub fn http_limits(&self) -> HttpLimits {
        self.http
    }

    /// The tenant an `Authorization` header names (without tenants, the
    /// implicit one).
    pub fn authenticate(&self, authorization: Option<&axum::http::HeaderValue>) -> Result<Arc<Tenant>, AuthError> {
        self.tenants.authenticate(authorization)
    }

    /// A tenant by name.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(name).cloned()
    }

    /// Whether `tenant` may have a job accepted right now, as far as can be
    /// told without reading the job: the checks to make before a body is
    /// read, so that an overloaded host refuses cheaply.
    pub fn may_accept(&self, tenant: &Tenant) -> Result<(), SubmitError> {
        self.intake.may_accept(tenant)
    }

    /// Accepts `tenant`'s job: records a pending task and queues the job.
    /// Once this returns `Ok`, the task ends in a terminal state or expires.
    pub async fn submit(&self, tenant: &Arc<Tenant>, submission: Submission) -> Result<Submitted, SubmitError> {
        let callback = self.callback(tenant, submission.callback.as_ref()).await?;
        self.intake.submit(tenant, submission, callback).await
    }

    /// Accepts `tenant`'s batch of jobs, each its own task, in order: all
    /// or none (the caps, the queue and the table checked for the whole
    /// batch). An idempotency key is not taken on a batch.
    pub async fn submit_batch(&self, tenant: &Arc<Tenant>, jobs: Vec<Submission>) -> Result<Vec<Task>, SubmitError> {
        // At once: each check may resolve a host name (up to a few seconds),
        // and a batch must not take that many times longer.
        let callbacks =
            futures_util::future::try_join_all(jobs.iter().enumerate().map(|(index, submission)| async move {
                self.callback(tenant, submission.callback.as_ref()).await.map_err(|e| e.in_batch(index))
            }))
            .await?;
        self.intake.submit_batch(tenant, jobs.into_iter().zip(callbacks).collect()).await
    }

    /// The callback a job asked for, checked: the tenant can sign it and
    /// the host's rules allow its destination.
    async fn callback(
        &self,
        tenant: &Tenant,
        asked: Option<&CallbackRequest>,
    ) -> Result<Option<TaskCallback>, SubmitError> {
        let Some(asked) = asked else { return Ok(None) };
        if !self.webhooks.signs_for(&tenant.name) {
            return Err(SubmitError::CallbackUnsigned);
        }
        let url = self.webhooks.policy().check(&asked.url).await?;
        Ok(Some(TaskCallback::new(url.to_string(), asked.delete_after_delivery)))
    }

    /// What this host's deliverer has done.
    pub fn webhook_stats(&self) -> &crate::webhooks::DeliveryStats {
        self.webhooks.stats()
    }

    /// Deliveries pending and failed in the table; `None` while the store
    /// cannot answer.
    pub async fn callback_counts(&self) -> Option<crate::tasks::CallbackCounts> {
        self.store.callback_counts().await.inspect_err(|err| tracing::debug!(%err, "cannot count deliveries")).ok()
    }

    /// Whether `tenant`'s idempotency key `key` made a task that lives: a
    /// submission with it is a retry. A store that cannot tell says so at
    /// the submission itself.
    pub async fn is_retry(&self, tenant: &Tenant, key: &str) -> bool {
        // No fingerprint is the empty string: a live key answers "reused".
        let probe = IdempotencyKey { key: key.to_string(), fingerprint: String::new() };
        !matches!(self.store.find_key(&tenant.name, &probe).await, Ok(None))
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
        if let Some(cluster) = &self.cluster {
            // The host running it, if another, stops it at once; else when
            // it next renews its lease on it.
            if let Err(err) = cluster.announce_deleted(&tenant.name, id).await {
                tracing::warn!(%err, task_id = %id, "could not announce a deletion to the other hosts");
            }
        }
        tracing::info!(task_id = %id, "task deleted by request");
        Ok(())
    }

    /// Waits up to `timeout` for `tenant`'s task's job to end, then reads
    /// the task.
    pub async fn wait(&self, tenant: &Tenant, id: TaskId, timeout: Duration) -> Result<Task, LookupError> {
        if let Some(done) = self.job_done(id) {
            let _ = tokio::time::timeout(timeout, done.cancelled()).await;
        }
        self.task(tenant, id).await
    }

    /// `tenant`'s task once it has ended, or as it is after `timeout`: a
    /// long poll, answered on any host of a deployment (a job another host
    /// accepted is followed from here until it ends).
    pub async fn poll(&self, tenant: &Tenant, id: TaskId, timeout: Duration) -> Result<Task, LookupError> {
        // The signal first, then the read: an end between the two still
        // fires the signal (or, with the memory store, leaves no job to
        // wait for and the read sees it).
        let mut followed_here = false;
        let done = self.job_done(id).or_else(|| {
            self.cluster.as_ref().map(|_| {
                followed_here = true;
                self.followed.follow(&tenant.name, id)
            })
        });
        let task = self.task(tenant, id).await;
        let ended = task.as_ref().map_or(true, |t| t.status.is_terminal());
        match done {
            Some(done) if !ended && !timeout.is_zero() => {
                let _ = tokio::time::timeout(timeout, done.cancelled()).await;
                self.task(tenant, id).await
            }
            _ => {
                if followed_here && ended {
                    self.followed.ended(id);
                }
                task
            }
        }
    }

    /// `tenant`'s task once its status is no longer `from`, or as it is
    /// after `timeout`: what an event stream waits on. An end is signalled
    /// wherever it happens; a start is signalled for a job that runs here,
    /// and read every [`START_SAMPLE`] for one another host may run.
    pub async fn next_change(
        &self,
        tenant: &Tenant,
        id: TaskId,
        from: crate::tasks::TaskStatus,
        timeout: Duration,
    ) -> Result<Task, LookupError> {
        if from != crate::tasks::TaskStatus::Pending {
            return self.poll(tenant, id, timeout).await;
        }
        match self.jobs.tracker().started(id) {
            Some(started) => {
                tokio::select! {
                    _ = started.cancelled() => self.task(tenant, id).await,
                    task = self.poll(tenant, id, timeout) => task,
                }
            }
            None => self.poll(tenant, id, timeout.min(START_SAMPLE)).await,
        }
    }

    /// Fires once the job of task `id` has ended and its outcome is written;
    /// `None` if no such job is in flight here or followed from here.
    pub fn job_done(&self, id: TaskId) -> Option<CancellationToken> {
        self.followed.done(id).or_else(|| self.jobs.tracker().done(id))
    }

    /// Resolves once no job is queued or running on this host.
    pub async fn idle(&self) {
        self.jobs.tracker().wait_empty().await
    }

    /// The matchers `tenant` may use: with several hosts, the deployment's
    /// (an upload or removal on any host shows at once). While the
    /// deployment cannot be reached, what this host has.
    pub async fn matchers(&self, tenant: &Tenant) -> Vec<MatcherSummary> {
        if let Err(err) = self.registry.sync_all(tenant.access()).await {
            tracing::debug!(%err, "cannot read the deployment's matchers; listing this host's");
        }
        self.registry.list(tenant.access()).iter().map(|m| m.summary()).collect()
    }

    /// One matcher `tenant` may use, as the deployment has it.
    pub async fn matcher(&self, tenant: &Tenant, name: &str) -> Option<MatcherSummary> {
        if let Err(err) = self.registry.sync(tenant.access(), name).await {
            tracing::debug!(%err, name, "cannot read the deployment's matchers; answering from this host's");
        }
        self.registry.find(tenant.access(), name).map(|m| m.summary())
    }

    /// The shared matchers (built-in and directory ones), whoever asks.
    pub fn shared_matchers(&self) -> Vec<MatcherSummary> {
        self.registry.shared().iter().map(|m| m.summary()).collect()
    }

    /// Uploads `tenant`'s matcher `name`; whether the name is new.
    pub async fn upload(
        &self,
        tenant: &Tenant,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(MatcherSummary, bool), LoadError> {
        let (matcher, created) = self.registry.upload(tenant.access(), name, bytes).await?;
        Ok((matcher.summary(), created))
    }

    /// Removes `tenant`'s upload `name`; whether there was one.
    pub async fn remove_matcher(&self, tenant: &Tenant, name: &str) -> Result<bool, LoadError> {
        self.registry.remove(tenant.access(), name).await
    }

    /// How matchers were loaded: compiled, from the cache, cache files
    /// refused.
    pub fn load_stats(&self) -> &LoadStats {
        &self.registry.stats
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
        self.draining.is_cancelled()
    }

    /// Shuts down gracefully: refuses new jobs from now on, lets the jobs
    /// already accepted (queued or running) finish for up to `timeout`, then
    /// cancels whatever is left (or, with hosts sharing jobs, hands it back
    /// to the deployment). Reads keep being served meanwhile, so clients can
    /// collect results; stop the HTTP server after this returns.
    pub async fn drain(&self, timeout: Duration) {
        self.draining.cancel();
        let tracker = self.jobs.tracker();
        tracing::info!(in_flight = tracker.len(), timeout = %humantime::format_duration(timeout), "draining: no new jobs");
        let _ = tokio::time::timeout(timeout, tracker.wait_empty()).await;
        let left = tracker.len();
        if left > 0 && self.cluster.is_some() {
            tracing::warn!(left, "drain timeout reached; handing the jobs still in flight back to the deployment");
            self.jobs.hand_back();
        } else if left > 0 {
            tracing::warn!(left, "drain timeout reached; cancelling the jobs still in flight");
            tracker.cancel_all();
        }
        if left > 0 {
            // Cancelled guests stop within an epoch tick, and their ends
            // are written just after; give them a moment.
            let stopped = async {
                self.sandbox.live().wait_for_zero().await;
                tracker.wait_empty().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), stopped).await;
        }
        if self.cluster.is_none() {
            // The ends written here are only here: their callbacks get a
            // moment to go out (with Redis, another host delivers them).
            let flush = async {
                while self.callback_counts().await.is_some_and(|c| c.pending > 0) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(WEBHOOK_FLUSH, flush).await.is_err() {
                tracing::warn!("shutting down with webhook deliveries still pending");
            }
        }
        tracing::info!("drained");
    }

    /// What the host holds right now.
    pub async fn present(&self) -> Result<Present, StoreError> {
        let by_status = self.store.counts().await?;
        Ok(Present { tasks: by_status.total(), tasks_by_status: by_status, host: self.host_figures() })
    }

    /// What this host knows without its store: jobs, queue, instances.
    pub fn host_figures(&self) -> HostFigures {
        HostFigures {
            jobs_in_flight: self.jobs.tracker().len() as u64,
            queued: self.jobs.queue().len() as u64,
            live_instances: self.sandbox.live().get() as u64,
        }
    }

    /// The task table's counts by status; `None` (and a debug line) while
    /// the store cannot answer, for the views that serve without it.
    pub async fn table_counts(&self) -> Option<TaskCounts> {
        self.store.counts().await.inspect_err(|err| tracing::debug!(%err, "cannot count the task table")).ok()
    }

    /// Resident memory over the last minutes, oldest first.
    pub fn memory_history(&self) -> Vec<MemorySample> {
        self.memory_history.samples()
    }

    /// The Prometheus text exposition of `view`. The series of matchers no
    /// longer known are dropped first.
    pub async fn metrics_text(&self, view: View) -> String {
        let table = self.table_counts().await;
        self.metrics.retain_matchers(|tenant, matcher| {
            self.tenants.get(tenant).is_some_and(|t| self.registry.find(t.access(), matcher).is_some())
        });
        self.metrics.render(self.host_figures(), table, view)
    }

    /// Whether the host has tenants (a tenants file): then what names them
    /// is for operators only.
    pub fn has_tenants(&self) -> bool {
        self.tenants.checks_keys()
    }

    /// Tasks deleted at expiry so far (with Redis: jobs this host stopped
    /// because their task was gone).
    pub fn tasks_expired(&self) -> u64 {
        self.metrics.tasks_expired.get()
    }

    /// Tasks held right now.
    pub async fn tasks_held(&self) -> Result<usize, StoreError> {
        self.store.count().await
    }

    /// The gauge of matcher instances alive right now.
    pub fn live_instances(&self) -> &LiveInstances {
        self.sandbox.live()
    }

    /// A fresh task id on the service's clock.
    pub fn new_task_id(&self) -> TaskId {
        self.clock.new_task_id()
    }

    fn missing(&self, id: TaskId) -> LookupError {
        if self.clock.has_expired(&id, self.store.ttl()) { LookupError::Gone(id) } else { LookupError::NotFound(id) }
    }
}

impl Settings {
    /// The sandbox these settings run: one instance slot per worker, and
    /// room for matchers being loaded.
    pub fn sandbox(&self) -> SandboxConfig {
        SandboxConfig {
            max_memory: self.limits.max_memory,
            instances: (self.limits.workers + 4) as u32,
            guest_threads: self.limits.workers,
            ..SandboxConfig::default()
        }
    }
}

async fn open_registry(
    settings: &Settings,
    sandbox: &Arc<Sandbox>,
    cluster: &Option<Arc<Cluster>>,
) -> anyhow::Result<MatcherRegistry> {
    let share = cluster.clone().map(|c| c as Arc<dyn crate::registry::MatcherShare>);
    MatcherRegistry::open(sandbox.clone(), RegistryConfig { share, ..settings.registry.clone() }).await
}

/// The task store and, with Redis, the deployment this host joins. The
/// memory store reports its expiries as they happen, and their jobs are
/// cancelled then; with Redis, the host finds the tasks of its jobs gone
/// when it renews their leases, and hears of deletions on other hosts.
async fn open_store(
    settings: &Settings,
    tenants: &Tenants,
    clock: Clock,
    tracker: &Arc<JobTracker>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<dyn TaskStore>, Option<Arc<Cluster>>)> {
    let Some(redis) = RedisConn::open(&settings.backend)? else {
        let on_expire: OnExpire = {
            let (tracker, metrics) = (tracker.clone(), metrics.clone());
            Arc::new(move |ids: &[TaskId]| {
                metrics.tasks_expired.inc_by(ids.len() as u64);
                for id in ids {
                    // A job still queued or running for an expired task
                    // stops now; its Store is dropped within one tick.
                    if tracker.cancel(*id) {
                        tracing::info!(task_id = %id, "task expired while its job was in flight; cancelled it");
                    }
                }
            })
        };
        let store = MemoryStore::new(settings.limits.max_tasks, settings.task_ttl, clock, on_expire);
        return Ok((Arc::new(store), None));
    };
    let names: Vec<String> = tenants.all().iter().map(|t| t.name.to_string()).collect();
    let store = Arc::new(RedisStore::open(redis, &settings.redis_prefix, names.clone(), settings.task_ttl));
    if let Err(err) = store.check().await {
        tracing::warn!(%err, "Redis does not answer yet; not ready until it does");
    }
    let cluster = Cluster::open(store.clone(), tracker.clone(), &settings.redis_prefix, names, settings.cluster);
    Ok((store, Some(Arc::new(cluster))))
}
