//! The live status page (`GET /`) and the figures it shows (`GET /status`).
//!
//! The page is one self-contained HTML file (no scripts, styles or fonts
//! from anywhere else) that reads `/status` every two seconds. Like
//! `/metrics`, both are for operators and need no key; they show counts and
//! the shared matchers only, never a tenant's tasks or uploads.

use axum::Json;
use axum::extract::State;
use axum::response::Html;
use serde::Serialize;

use super::AppState;
use crate::metrics::{HostFigures, MemorySample};
use crate::registry::MatcherSummary;

const PAGE: &str = include_str!("status.html");

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// Tasks held, by status, and their total; `null` while the task store
    /// cannot answer.
    tasks: Option<TaskFigures>,
    /// Whether the task store answers.
    store_up: bool,
    jobs_in_flight: u64,
    queued: u64,
    live_instances: u64,
    resident_memory_bytes: u64,
    /// Resident memory over the last ten minutes, oldest first.
    memory_history: Vec<MemorySample>,
    /// The shared matchers (built-in and directory ones).
    matchers: Vec<MatcherSummary>,
    /// Whether the host is shutting down.
    draining: bool,
    /// Completion webhooks: ends waiting to be delivered (or retried) and
    /// deliveries given up on, among the tasks held (`null` while the task
    /// store cannot answer), and what this host has sent.
    webhooks: WebhookFigures,
}

#[derive(Serialize, utoipa::ToSchema)]
struct WebhookFigures {
    pending: Option<u64>,
    failed: Option<u64>,
    /// Attempts this host made that were answered 2xx.
    delivered_here: u64,
    /// Attempts this host made that will be retried.
    retried_here: u64,
    /// Deliveries this host gave up on.
    failed_here: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TaskFigures {
    total: u64,
    #[serde(flatten)]
    by_status: crate::tasks::TaskCounts,
}

/// The figures of the status page.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses(
        (status = 200, description = "What the host holds right now (served while the task store is down too)", body = StatusReport),
    ))]
pub async fn report(State(app): State<AppState>) -> Json<StatusReport> {
    let HostFigures { jobs_in_flight, queued, live_instances } = app.host_figures();
    let table = app.table_counts().await;
    let shared = app.shared_matchers();
    let deliveries = app.callback_counts().await;
    let stats = app.webhook_stats();
    let webhooks = WebhookFigures {
        pending: deliveries.map(|d| d.pending),
        failed: deliveries.map(|d| d.failed),
        delivered_here: stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        retried_here: stats.retried.load(std::sync::atomic::Ordering::Relaxed),
        failed_here: stats.failed.load(std::sync::atomic::Ordering::Relaxed),
    };
    Json(StatusReport {
        tasks: table.map(|by_status| TaskFigures { total: by_status.total(), by_status }),
        store_up: table.is_some(),
        jobs_in_flight,
        queued,
        live_instances,
        resident_memory_bytes: crate::metrics::resident_memory_bytes().unwrap_or(0),
        memory_history: app.memory_history(),
        matchers: shared,
        draining: app.is_draining(),
        webhooks,
    })
}

/// The live status page.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "A self-contained HTML page", body = String, content_type = "text/html")))]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
