//! A task's completion callback: where its end is pushed, and how the
//! delivery went.
//!
//! The table keeps a callback's delivery beside the task, and the delivery
//! lives exactly as long as the task: when a job ends, the store queues the
//! delivery in the same step that writes the end (so no end with a
//! callback can be written without one), and a task that expires or is
//! deleted takes its delivery with it. Whoever delivers (the `webhooks`
//! layer) *claims* due deliveries with a lease: while the lease holds no
//! other claimant gets the delivery, and a claimant that dies leaves it to
//! be claimed again when the lease lapses, so every end is delivered at
//! least once and, while hosts live, by one host at a time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::TaskId;

/// How far a task's callback has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackState {
    /// The job has not ended yet.
    Waiting,
    /// The end is to be delivered, or being delivered (retried after a
    /// network error, a 5xx or a 429).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: a final answer (a 4xx other than 429, a redirect), the
    /// attempts spent, or the task about to expire.
    Failed,
}

impl CallbackState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackState::Waiting => "waiting",
            CallbackState::Pending => "pending",
            CallbackState::Delivered => "delivered",
            CallbackState::Failed => "failed",
        }
    }
}

/// A task's callback, as the task shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskCallback {
    /// Where the end is POSTed.
    pub url: String,
    /// Whether the task is deleted once the end is delivered.
    #[serde(default)]
    pub delete_after_delivery: bool,
    #[serde(flatten)]
    pub progress: CallbackProgress,
}

/// How a callback's delivery stands: what each attempt rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallbackProgress {
    pub state: CallbackState,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// The HTTP status of the last answer, if the receiver answered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(required = false)]
    pub last_error: Option<String>,
}

impl CallbackProgress {
    /// A callback whose job has not ended.
    pub const WAITING: CallbackProgress =
        CallbackProgress { state: CallbackState::Waiting, attempts: 0, last_status: None, last_error: None };

    /// A callback whose end is queued, not yet attempted.
    pub const QUEUED: CallbackProgress =
        CallbackProgress { state: CallbackState::Pending, attempts: 0, last_status: None, last_error: None };
}

impl TaskCallback {
    /// A new task's callback to `url`.
    pub fn new(url: String, delete_after_delivery: bool) -> Self {
        TaskCallback { url, delete_after_delivery, progress: CallbackProgress::WAITING }
    }
}

/// A due delivery, leased to whoever claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackClaim {
    pub tenant: String,
    pub task_id: TaskId,
    /// Which lease this is: a report under a lease that lapsed and was
    /// given to another claimant is refused.
    pub lease: u64,
}

/// What an attempt's report asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackReport {
    pub progress: CallbackProgress,
    /// Due again after this long (a retry), or done with (`None`).
    pub retry_in: Option<Duration>,
}

/// Deliveries held by the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CallbackCounts {
    /// Ends waiting to be delivered or being retried.
    pub pending: u64,
    /// Deliveries given up on, among the tasks still held.
    pub failed: u64,
}
