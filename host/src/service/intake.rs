//! The one way in for a job.
//!
//! A job submitted to this host and a job read from the deployment's stream
//! go through [`JobIntake::intake`], which takes where the job came from
//! ([`Origin`]) and applies the same rules: the tenant's matcher resolved
//! (fetched first from the deployment when hosts share one), then a place in
//! the queue, then the job tracked and queued in its tenant's lane. What
//! differs by origin is said where it differs: a local submission creates
//! its task (which the task store admits against the tenant's caps); with a
//! deployment it is handed to the stream, from which some host's intake
//! takes it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Submission, SubmitError, Submitted};
use crate::cluster::{Cluster, Delivery, Envelope, StreamClaim};
use crate::jobs::{Claim, FollowedJobs, Job, JobQueue, JobTracker};
use crate::metrics::Metrics;
use crate::registry::{AcceptedError, DEFAULT_MATCHER, Matcher, MatcherRef, MatcherRegistry};
use crate::runtime::{FailureKind, JobFailure, JobInput};
use crate::tasks::{Clock, IdempotencyKey, Inserted, StoreError, Task, TaskCallback, TaskId, TaskOutcome, TaskStore};
use crate::tenants::{Tenant, Tenants};

/// Where a job came from.
pub(super) enum Origin<'a> {
    /// Submitted to this host: its task is created here (once per
    /// idempotency key, if the client sent one).
    Local { key: Option<&'a IdempotencyKey>, callback: Option<TaskCallback> },
    /// Read from the deployment's stream, maybe taken over from a host that
    /// did not finish it: its task exists already.
    Stream { task_id: TaskId, claim: StreamClaim },
}

/// What the intake needs of the host.
pub(super) struct JobIntake {
    pub(super) clock: Clock,
    pub(super) registry: Arc<MatcherRegistry>,
    pub(super) tenants: Arc<Tenants>,
    pub(super) store: Arc<dyn TaskStore>,
    pub(super) queue: Arc<JobQueue<Job>>,
    pub(super) tracker: Arc<JobTracker>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cluster: Option<Arc<Cluster>>,
    pub(super) followed: Arc<FollowedJobs>,
    pub(super) draining: CancellationToken,
    pub(super) workers: usize,
}

impl JobIntake {
    /// The checks a local submission must pass that need nothing but the
    /// tenant, so the API can make them before reading a body.
    pub(super) fn may_accept(&self, tenant: &Tenant) -> Result<(), SubmitError> {
        if self.draining.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        // With hosts sharing jobs, this host's queue only holds what it took
        // from the stream; the deployment's room is the task table's.
        if self.cluster.is_none() && !self.queue.has_room() {
            return Err(SubmitError::QueueFull(self.queue.capacity()));
        }
        if let Some(refused) = self.store.refusal(&tenant.name, tenant.caps()) {
            return Err(self.refused(refused).into());
        }
        Ok(())
    }

    /// Without tenants, the one tenant's share is the whole table: its
    /// refusal is a full table's.
    fn refused(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::TenantFull { cap, .. } if !self.tenants.checks_keys() => StoreError::Full { capacity: cap },
            other => other,
        }
    }

    /// A job submitted to this host by `tenant`, with the client's
    /// idempotency key if it sent one, and its callback checked.
    pub(super) async fn submit(
        &self,
        tenant: &Arc<Tenant>,
        submission: Submission,
        callback: Option<TaskCallback>,
    ) -> Result<Submitted, SubmitError> {
        let Submission { matcher, input, key, .. } = submission;
        let reference = matcher.unwrap_or_else(|| MatcherRef::named(DEFAULT_MATCHER));
        // A retry of a submission already accepted is answered with its
        // task before anything else is checked: a full queue or a quota
        // reached since must not turn the retry into a refusal.
        if let Some(key) = &key
            && let Some(existing) = self.existing(tenant, key).await?
        {
            return Ok(existing);
        }
        let submitted = self.intake(tenant, &reference, input, Origin::Local { key: key.as_ref(), callback }).await?;
        Ok(submitted.expect("a local submission creates its task"))
    }

    /// A batch of jobs submitted to this host by `tenant`, each with its
    /// callback checked: every one accepted, in order, or none. The checks
    /// of a single job cover the whole batch: every matcher resolved, room
    /// in the queue (or, with a deployment, the table) for all, the
    /// tenant's caps counted for all.
    pub(super) async fn submit_batch(
        &self,
        tenant: &Arc<Tenant>,
        jobs: Vec<(Submission, Option<TaskCallback>)>,
    ) -> Result<Vec<Task>, SubmitError> {
        self.may_accept(tenant)?;
        let mut matchers = Vec::with_capacity(jobs.len());
        for (index, (submission, _)) in jobs.iter().enumerate() {
            let reference = submission.matcher.clone().unwrap_or_else(|| MatcherRef::named(DEFAULT_MATCHER));
            let matcher = self.matcher_for(tenant, &reference, false).await.map_err(|e| e.in_batch(index))?;
            matchers.push(matcher);
        }
        let tasks: Vec<Task> = jobs
            .iter()
            .zip(&matchers)
            .map(|((_, callback), matcher)| self.new_task(tenant, matcher, callback.clone()))
            .collect();
        if let Some(cluster) = &self.cluster {
            let envelopes: Vec<Envelope> = jobs
                .into_iter()
                .zip(&matchers)
                .zip(&tasks)
                .map(|(((submission, _), matcher), task)| envelope(tenant, task.task_id, matcher, submission.input))
                .collect();
            cluster.publish_batch(tasks.clone(), tenant.caps(), &envelopes).await.map_err(|e| self.refused(e))?;
            for task in &tasks {
                let _ = self.followed.follow(&tenant.name, task.task_id);
            }
            tracing::debug!(jobs = tasks.len(), tenant = %tenant.name, "batch accepted into the stream");
            return Ok(tasks);
        }

        let slots = self.queue.reserve_many(tasks.len()).ok_or(SubmitError::QueueFull(self.queue.capacity()))?;
        // Tracked before they are stored, so an expiry can never miss one.
        let cancels: Vec<CancellationToken> =
            tasks.iter().map(|task| self.tracker.track(&tenant.name, task.task_id).0).collect();
        if let Err(err) = self.store.insert_batch(tasks.clone(), tenant.caps()).await {
            for task in &tasks {
                self.tracker.finished(task.task_id);
            }
            return Err(self.refused(err).into());
        }
        if let Ok(held) = self.store.count().await {
            self.metrics.observe_table(held as u64);
        }
        for ((((slot, task), (submission, _)), matcher), cancel) in
            slots.into_iter().zip(&tasks).zip(jobs).zip(matchers).zip(cancels)
        {
            let span =
                tracing::info_span!("task", task_id = %task.task_id, tenant = %tenant.name, matcher = %matcher.name);
            let job = Job {
                task_id: task.task_id,
                tenant: tenant.name.clone(),
                claim: None,
                matcher,
                input: submission.input,
                limits: tenant.job_limits(),
                cancel,
                span,
            };
            slot.push(&tenant.name, tenant.quotas.concurrent_jobs, job);
        }
        tracing::debug!(jobs = tasks.len(), tenant = %tenant.name, "batch accepted");
        Ok(tasks)
    }

    /// A new pending task of `tenant`'s for a job on `matcher`.
    fn new_task(&self, tenant: &Tenant, matcher: &Matcher, callback: Option<TaskCallback>) -> Task {
        Task::pending(
            self.clock.new_task_id(),
            tenant.name.to_string(),
            matcher.name.clone(),
            self.clock.now(),
            self.store.ttl(),
        )
        .with_callback(callback)
    }

    /// The live task `tenant`'s `key` made, as a replayed submission.
    async fn existing(&self, tenant: &Tenant, key: &IdempotencyKey) -> Result<Option<Submitted>, SubmitError> {
        let Some(id) = self.store.find_key(&tenant.name, key).await? else { return Ok(None) };
        // Gone between the two reads: its key went with it, so this is a
        // new submission.
        Ok(self.store.get(&tenant.name, id).await?.map(|task| Submitted { task, replayed: true }))
    }

    /// The answer to a submission whose key turned out to have made
    /// `existing` while this one was on its way (two requests with one key
    /// at once).
    async fn raced(&self, tenant: &Tenant, existing: TaskId) -> Result<Option<Submitted>, SubmitError> {
        match self.store.get(&tenant.name, existing).await? {
            Some(task) => Ok(Some(Submitted { task, replayed: true })),
            None => Err(StoreError::Unavailable(format!("task {existing} went while its key was read")).into()),
        }
    }

    /// Takes a job in: resolves its matcher for its tenant, and queues it
    /// here (or, for a local submission on a host that shares a deployment,
    /// hands it to the stream). Returns the task a local submission created.
    async fn intake(
        &self,
        tenant: &Arc<Tenant>,
        reference: &MatcherRef,
        input: JobInput,
        origin: Origin<'_>,
    ) -> Result<Option<Submitted>, SubmitError> {
        if matches!(origin, Origin::Local { .. }) {
            self.may_accept(tenant)?;
        }
        let accepted = matches!(origin, Origin::Stream { .. });
        let (matcher, origin) = match (self.matcher_for(tenant, reference, accepted).await, origin) {
            (Ok(matcher), origin) => (matcher, origin),
            (Err(SubmitError::UnknownMatcher(err)), Origin::Stream { task_id, claim }) => {
                // Refused for good: the task ends here, on whichever host
                // read the job, instead of being retried by every host.
                self.fail(task_id, claim, format!("the job's matcher is gone: {err}")).await;
                return Ok(None);
            }
            (Err(err), _) => return Err(err),
        };
        let (created, claim, id, key) = match origin {
            Origin::Local { key, callback } => {
                let task = self.new_task(tenant, &matcher, callback);
                if let Some(cluster) = &self.cluster {
                    let inserted = self.hand_to_the_deployment(cluster, tenant, &task, &matcher, key, input).await?;
                    if let Inserted::Existing(existing) = inserted {
                        return self.raced(tenant, existing).await;
                    }
                    let _ = self.followed.follow(&tenant.name, task.task_id);
                    return Ok(Some(Submitted { task, replayed: false }));
                }
                let id = task.task_id;
                (Some(task), None, id, key)
            }
            Origin::Stream { task_id, claim } => (None, Some(claim), task_id, None),
        };

        let slot = self.queue.reserve().ok_or(SubmitError::QueueFull(self.queue.capacity()))?;
        let span = tracing::info_span!("task", task_id = %id, tenant = %tenant.name, matcher = %matcher.name);
        // Tracked before it is stored, so an expiry can never miss it.
        let (cancel, _done) = self.tracker.track(&tenant.name, id);
        if let Some(task) = &created {
            match self.store.insert(task.clone(), tenant.caps(), key).instrument(span.clone()).await {
                Ok(Inserted::New) => {}
                Ok(Inserted::Existing(existing)) => {
                    self.tracker.finished(id);
                    drop(slot);
                    return self.raced(tenant, existing).await;
                }
                Err(err) => {
                    self.tracker.finished(id);
                    return Err(self.refused(err).into());
                }
            }
            span.in_scope(|| tracing::debug!(postings = input.postings.len(), "task accepted"));
            if let Ok(tasks) = self.store.count().await {
                self.metrics.observe_table(tasks as u64);
            }
        }
        if claim.as_ref().is_some_and(|c| c.reclaimed()) {
            self.metrics.jobs_taken_over.inc();
            span.in_scope(|| tracing::info!("took over a job its host did not finish"));
        }
        let job = Job {
            task_id: id,
            tenant: tenant.name.clone(),
            claim: claim.map(|c| Box::new(c) as Box<dyn Claim>),
            matcher,
            input,
            limits: tenant.job_limits(),
            cancel,
            span,
        };
        slot.push(&tenant.name, tenant.quotas.concurrent_jobs, job);
        Ok(created.map(|task| Submitted { task, replayed: false }))
    }

    /// The matcher `reference` names for `tenant`, brought in line with the
    /// deployment first when hosts share one. A job accepted elsewhere gets
    /// the exact component it was accepted for, even if the name has moved
    /// on since.
    async fn matcher_for(
        &self,
        tenant: &Tenant,
        reference: &MatcherRef,
        accepted: bool,
    ) -> Result<Arc<Matcher>, SubmitError> {
        let share_down = |e: crate::registry::ShareError| StoreError::Unavailable(format!("Redis: {e}"));
        if self.cluster.is_some() {
            self.registry.sync(tenant.access(), reference.name()).await.map_err(share_down)?;
        }
        if !accepted {
            return Ok(self.registry.resolve(tenant.access(), reference)?);
        }
        match self.registry.resolve_accepted(tenant.access(), reference).await {
            Ok(matcher) => Ok(matcher),
            Err(AcceptedError::Unknown(err)) => Err(err.into()),
            Err(AcceptedError::Share(err)) => Err(share_down(err).into()),
        }
    }

    /// The task and the job, in Redis in one script before the 202. The job
    /// names the exact component resolved here, so every host runs the same
    /// code.
    async fn hand_to_the_deployment(
        &self,
        cluster: &Cluster,
        tenant: &Tenant,
        task: &Task,
        matcher: &Matcher,
        key: Option<&IdempotencyKey>,
        input: JobInput,
    ) -> Result<Inserted, SubmitError> {
        let id = task.task_id;
        let envelope = envelope(tenant, id, matcher, input);
        let inserted =
            cluster.publish(task.clone(), tenant.caps(), key, &envelope).await.map_err(|e| self.refused(e))?;
        if inserted == Inserted::New {
            tracing::debug!(task_id = %id, tenant = %tenant.name, matcher = %matcher.name, "task accepted into the stream");
        }
        Ok(inserted)
    }

    /// Ends the task of a job from the stream that cannot run anywhere: the
    /// failure written and the entry done with, in one step.
    async fn fail(&self, id: TaskId, claim: StreamClaim, message: String) {
        let failure = JobFailure::new(FailureKind::Unavailable, message);
        if let Err(err) = Box::new(claim).finish(id, TaskOutcome::Failed(failure).into()).await {
            tracing::warn!(%err, task_id = %id, "could not fail a job that cannot run");
        }
    }
}

/// A job as the deployment's stream carries it: naming the exact component
/// resolved here, so every host runs the same code.
fn envelope(tenant: &Tenant, task_id: TaskId, matcher: &Matcher, input: JobInput) -> Envelope {
    Envelope {
        tenant: tenant.name.to_string(),
        task_id,
        matcher: matcher.pinned(),
        uploaded: matcher.source == crate::registry::Source::Uploaded,
        input,
    }
}

#[async_trait]
impl crate::cluster::Intake for JobIntake {
    /// A job per worker and one more, counting what the host already
    /// holds: every worker stays busy, and the rest stays for other hosts.
    fn room(&self) -> usize {
        (self.workers + 1).saturating_sub(self.tracker.len())
    }

    async fn wait_for_room(&self, timeout: Duration) {
        self.tracker.wait_for_an_end(timeout).await
    }

    async fn take(&self, delivery: Delivery) {
        let Delivery { envelope, claim } = delivery;
        let Envelope { tenant, task_id: id, matcher, input, .. } = match envelope {
            Ok(envelope) => envelope,
            Err(why) => {
                tracing::warn!(entry = claim.entry(), %why, "dropping an unreadable job from the stream");
                let _ = claim.discard().await;
                return;
            }
        };
        let Some(owner) = self.tenants.get(&tenant).cloned() else {
            let consumer = self.cluster.as_ref().map(|c| c.consumer().to_string()).unwrap_or_default();
            self.fail(id, claim, format!("host {consumer} has no tenant '{tenant}'")).await;
            return;
        };
        let origin = Origin::Stream { task_id: id, claim };
        // A refusal that is not for good (Redis trouble, a full queue)
        // leaves the entry pending: another host takes it over later.
        if let Err(err) = self.intake(&owner, &matcher, input, origin).await {
            tracing::warn!(task_id = %id, %err, "cannot queue a job from the stream here; it will be taken over");
        }
    }
}
