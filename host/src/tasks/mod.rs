//! The task table: every submitted job's status and result, for one time to
//! live, then gone.
//!
//! [`TaskStore`] is the one trait every backend implements; [`MemoryStore`]
//! is the embedded default, [`RedisStore`] the one several hosts can share
//! ([`Backend`] says which one a host runs). Every implementation must pass
//! the [`conformance`] suite. A task moves `pending -> running -> completed |
//! failed | cancelled` and is **deleted** when its time to live (counted from
//! creation) lapses: expiry never merely marks an entry, which is the bug this
//! project was started to fix (see the README's history section).

mod backend;
mod callback;
mod clock;
pub mod conformance;
mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

pub use backend::Backend;
pub use callback::{CallbackClaim, CallbackCounts, CallbackProgress, CallbackReport, CallbackState, TaskCallback};
pub use clock::Clock;
pub use memory::{MemoryStore, OnExpire};
pub use redis::{EntryFinish, EntryRef, RedisConn, RedisStore, move_lua};

use crate::runtime::JobFailure;
/// One scored posting, as the guest returned it, checked, stored and served.
pub use crate::runtime::Ranking;

pub type TaskId = Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] =
        [TaskStatus::Pending, TaskStatus::Running, TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled];

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// Tasks held, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TaskCounts {
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl TaskCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed + self.failed + self.cancelled
    }

    pub fn get(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Pending => self.pending,
            TaskStatus::Running => self.running,
            TaskStatus::Completed => self.completed,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, status: TaskStatus) -> &mut u64 {
        match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Running => &mut self.running,
            TaskStatus::Completed => &mut self.completed,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// Counts a task that arrived in `status`.
    pub fn add(&mut self, status: TaskStatus) {
        *self.slot(status) += 1;
    }

    /// Forgets a task that was in `status`.
    pub fn take(&mut self, status: TaskStatus) {
        *self.slot(status) -= 1;
    }

    /// Counts a task moving from one status to another.
    pub fn moved(&mut self, from: TaskStatus, to: TaskStatus) {
        self.take(from);
        self.add(to);
    }
}

impl std::ops::AddAssign for TaskCounts {
    fn add_assign(&mut self, other: TaskCounts) {
        for status in TaskStatus::ALL {
            *self.slot(status) += other.get(status);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResult {
    pub rankings: Vec<Ranking>,
}

/// How a job ended, as written to its task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Completed(Vec<Ranking>),
    Failed(JobFailure),
    Cancelled,
}

impl TaskOutcome {
    pub fn status(&self) -> TaskStatus {
        match self {
            TaskOutcome::Completed(_) => TaskStatus::Completed,
            TaskOutcome::Failed(_) => TaskStatus::Failed,
            TaskOutcome::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// How a job ended, and what its matcher said meanwhile if the task keeps
/// it: what a store's `finish` writes.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnd {
    pub outcome: TaskOutcome,
    pub logs: Option<TaskLogs>,
}

impl From<TaskOutcome> for TaskEnd {
    fn from(outcome: TaskOutcome) -> Self {
        TaskEnd { outcome, logs: None }
    }
}

impl TaskEnd {
    pub fn status(&self) -> TaskStatus {
        self.outcome.status()
    }
}

/// What the matcher said while its job ran: the lines it wrote through the
/// contract's `log` and the start of its stdout and stderr, within the
/// job's caps (100 lines and 16 KiB of lines, 16 KiB of each stream).
///
/// A task carries them when its job ran on an upload of the caller's own,
/// so that an author can see what their matcher did; for shared matchers
/// only when the operator allows it (`--shared-matcher-logs`), since a
/// built-in or operator matcher's lines are the operator's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLogs {
    /// The `log` lines, in the order written.
    pub lines: Vec<TaskLogLine>,
    /// Lines refused because a cap was reached.
    pub dropped: usize,
    /// The start of what the matcher wrote to stdout.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    #[schema(required = false)]
    pub stdout: String,
    /// The start of what the matcher wrote to stderr (a panic message, say).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    #[schema(required = false)]
    pub stderr: String,
}

/// One line a matcher wrote through `log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The level of a matcher's log line, as the contract names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl From<crate::runtime::Level> for LogLevel {
    fn from(level: crate::runtime::Level) -> Self {
        use crate::runtime::Level;
        match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        }
    }
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl TaskLogs {
    /// What a finished job's report holds.
    pub fn of(report: &crate::runtime::JobReport) -> Self {
        TaskLogs {
            lines: report
                .log
                .lines
                .iter()
                .map(|l| TaskLogLine { level: l.level.into(), message: l.message.clone() })
                .collect(),
            dropped: report.log.dropped,
            stdout: report.stdout.clone(),
            stderr: report.stderr.clone(),
        }
    }
}

/// A task as the table holds it and the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: TaskId,
    /// The tenant that submitted it: the only one that can see it.
    pub tenant: String,
    pub status: TaskStatus,
    pub matcher: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// The rankings, once completed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub result: Option<TaskResult>,
    /// Why it failed, once failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub error: Option<JobFailure>,
    /// What the matcher logged, once ended, when the task keeps it: for a
    /// job that ran on the caller's own upload (see [`TaskLogs`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub logs: Option<TaskLogs>,
    /// Where the end is pushed, and how that went, if the job asked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub callback: Option<TaskCallback>,
}

impl Task {
    /// A new pending task, created now, expiring `ttl` from now.
    pub fn pending(task_id: TaskId, tenant: String, matcher: String, now: OffsetDateTime, ttl: Duration) -> Self {
        Task {
            task_id,
            tenant,
            status: TaskStatus::Pending,
            matcher,
            created_at: now,
            updated_at: now,
            expires_at: now + ttl,
            result: None,
            error: None,
            logs: None,
            callback: None,
        }
    }

    /// The same task, with its end to be pushed as `callback` says.
    pub fn with_callback(mut self, callback: Option<TaskCallback>) -> Self {
        self.callback = callback;
        self
    }

    /// Records a change at `now`. Timestamps never run backwards, even when
    /// the clock that stamps an update is not the one that stamped creation
    /// (another host's, say).
    pub fn touch(&mut self, now: OffsetDateTime) {
        self.updated_at = now.max(self.updated_at);
    }

    /// Records the job's end at `now`.
    pub fn apply(&mut self, end: TaskEnd, now: OffsetDateTime) {
        let TaskEnd { outcome, logs } = end;
        self.status = outcome.status();
        self.touch(now);
        self.logs = logs;
        if let Some(callback) = &mut self.callback {
            callback.progress = CallbackProgress::QUEUED;
        }
        match outcome {
            TaskOutcome::Completed(rankings) => self.result = Some(TaskResult { rankings }),
            TaskOutcome::Failed(error) => self.error = Some(error),
            TaskOutcome::Cancelled => {}
        }
    }
}

/// A client's `Idempotency-Key` on a submission, and the fingerprint of
/// what it submitted. The store remembers a key as long as the task it
/// created: the same key again answers that task; with another
/// fingerprint, it is refused ([`StoreError::KeyReused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it (1 to 255 visible ASCII characters).
    pub key: String,
    /// The SHA-256 of the submission, hex: what the key stands for.
    pub fingerprint: String,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The task is in the table now.
    New,
    /// The submission's idempotency key had made this task already; nothing
    /// was inserted.
    Existing(TaskId),
}

/// What one tenant may hold in the table; the store enforces both
/// atomically with each insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCaps {
    /// Tasks held, finished ones included, until they expire.
    pub tasks: usize,
    /// Tasks pending or running.
    pub pending: usize,
}

impl TenantCaps {
    /// No cap but the table's own.
    pub const NONE: TenantCaps = TenantCaps { tasks: usize::MAX, pending: usize::MAX };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The table holds as many tasks as it may; retry once some expire.
    #[error("the task table is full ({capacity} tasks)")]
    Full { capacity: usize },
    /// The tenant holds as many tasks as its quota allows, finished ones
    /// included; retry once some expire or are deleted.
    #[error(
        "tenant '{tenant}' may hold {cap} tasks, its quota, and cannot take more now (finished tasks count until they \
         expire or are deleted)"
    )]
    TenantFull { tenant: String, cap: usize },
    /// The tenant has as many tasks pending or running as its quota allows.
    #[error(
        "tenant '{tenant}' may have {limit} jobs pending, its quota, and cannot take more now; retry once some have ended"
    )]
    OverQuota { tenant: String, limit: usize },
    #[error("task {0} already exists")]
    Duplicate(TaskId),
    /// The idempotency key made a task for another submission.
    #[error(
        "Idempotency-Key '{key}' was sent with another request (a different matcher, candidate, postings or \
         options) while its task {task_id} lives; send a new key for a new request"
    )]
    KeyReused { key: String, task_id: TaskId },
    /// The backend cannot be reached or answered with an error.
    #[error("the task store is unavailable: {0}")]
    Unavailable(String),
}

/// Where tasks live. Object-safe, held as `Arc<dyn TaskStore>`.
///
/// Every task belongs to a tenant, and is only ever found under that
/// tenant: asked for under another, it does not exist.
///
/// Transitions are atomic and happen once: `start` moves a pending task to
/// running, `finish` moves a pending or running task to a terminal status; a
/// second or late call is refused (`Ok(false)`), never applied twice.
///
/// Each tenant's tasks are counted by the store, so its caps hold however
/// many hosts insert for it.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Adds a pending task; it expires `ttl()` after `task.created_at`.
    /// Refused if the table is full or the task's tenant is at one of
    /// `caps`; nothing is changed then.
    ///
    /// With `key`: if the tenant's key already made a task that still
    /// lives, nothing is inserted and that task's id is returned (or
    /// [`StoreError::KeyReused`] if it was made for another fingerprint),
    /// whatever the caps; otherwise the key is remembered with the new task,
    /// in the same step, and forgotten when the task expires or is removed.
    /// Two inserts with one key make one task.
    async fn insert(&self, task: Task, caps: TenantCaps, key: Option<&IdempotencyKey>) -> Result<Inserted, StoreError>;

    /// Adds every one of `tasks` (all of one tenant) as pending, or none:
    /// refused as a whole if the table or the tenant's caps cannot take
    /// them all, or if any id exists; nothing is changed then.
    async fn insert_batch(&self, tasks: Vec<Task>, caps: TenantCaps) -> Result<(), StoreError>;

    /// The task `tenant`'s `key` made, if it still lives; `KeyReused` if it
    /// was made for another fingerprint. A hint to answer a retry before
    /// anything else is checked; `insert` decides for real.
    async fn find_key(&self, tenant: &str, key: &IdempotencyKey) -> Result<Option<TaskId>, StoreError>;

    /// Why an insert for `tenant` would be refused now, if the store can
    /// tell without a round trip: a hint for refusing a request before its
    /// body is read. `insert` decides for real.
    fn refusal(&self, tenant: &str, caps: TenantCaps) -> Option<StoreError>;

    async fn get(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// Pending to running. `Ok(false)` if the task is gone or not pending.
    async fn start(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError>;

    /// The status of each of `tasks`, `None` for one that no longer exists
    /// (deleted, or expired): the host stops the jobs of those, and answers
    /// `?wait=` for the ended ones it follows.
    async fn statuses(&self, tasks: &[(String, TaskId)]) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let mut out = Vec::with_capacity(tasks.len());
        for (tenant, id) in tasks {
            out.push(self.get(tenant, *id).await?.map(|t| t.status));
        }
        Ok(out)
    }

    /// Pending or running to `end`'s outcome, with its logs. `Ok(false)` if
    /// the task is gone or already ended. A task with a callback has its
    /// delivery queued in the same step (see [`TaskStore::claim_callbacks`]).
    async fn finish(&self, tenant: &str, id: TaskId, end: TaskEnd) -> Result<bool, StoreError>;

    /// Up to `limit` deliveries of ended tasks' callbacks that are due now,
    /// at most `room(tenant)` of each tenant's, each leased to the caller
    /// for `lease`: until then no other call gets it, unless it is
    /// reported. A delivery becomes due when its job ends and again when a
    /// report asks for a retry; one whose task is gone is dropped, never
    /// claimed.
    async fn claim_callbacks(
        &self,
        lease: Duration,
        limit: usize,
        room: &(dyn for<'t> Fn(&'t str) -> usize + Send + Sync),
    ) -> Result<Vec<CallbackClaim>, StoreError>;

    /// Records how an attempt under `claim` went, on the task, and queues the
    /// retry it asks for or is done with the delivery. `Ok(false)`, with
    /// nothing written, if the lease lapsed and was claimed again, or the
    /// task is gone.
    async fn report_callback(&self, claim: &CallbackClaim, report: CallbackReport) -> Result<bool, StoreError>;

    /// Deliveries pending and failed among the tasks held.
    async fn callback_counts(&self) -> Result<CallbackCounts, StoreError>;

    /// Told (one stored permit, as [`Notify::notify_one`]) whenever this
    /// store queues a delivery, so the deliverer need not poll for the
    /// ends of this host's own jobs.
    fn callbacks_queued(&self) -> &Notify;

    /// Deletes a task, and its callback's delivery. `Ok(false)` if it was
    /// not there.
    async fn remove(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError>;

    /// Tasks held right now.
    async fn count(&self) -> Result<usize, StoreError>;

    /// Tasks held right now, by status.
    async fn counts(&self) -> Result<TaskCounts, StoreError>;

    /// Whether the backend can serve requests (for `/readyz`).
    async fn check(&self) -> Result<(), StoreError>;

    /// How long a task lives, counted from its creation.
    fn ttl(&self) -> Duration;
}
