//! `GET /tasks/{id}/events`: a task's status changes pushed as Server-Sent
//! Events, on any host of a deployment.
//!
//! One event per status the client has not seen, named after the status,
//! with ids `1` (pending), `2` (running) and `3` (ended); the end's event
//! carries the whole task, and the stream ends after it. A client that
//! reconnects with `Last-Event-ID` gets only what came after that id, and
//! the end always: it cannot miss it. A task deleted or expired while
//! watched ends the stream with a `gone` event carrying the error body.
//! Comments every [`HEARTBEAT`] keep proxies from closing an idle stream.
//!
//! The stream follows the task with [`crate::Matchbox::next_change`]: an
//! end is pushed at once wherever it happens (the long poll `GET
//! /tasks/{id}?wait=` uses), a start at once for a job that runs on this
//! host and within half a second for one another host runs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};

use super::{ApiError, ErrorBody};
use super::{AppState, Caller, parse_task_id};
use crate::service::LookupError;
use crate::tasks::{Task, TaskStatus};

/// How often an idle stream sends a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long one wait of the stream holds before it reads the task again.
const SLICE: Duration = Duration::from_secs(10);

/// The id of the event for `status`: how far along the task is.
fn rank(status: TaskStatus) -> u8 {
    match status {
        TaskStatus::Pending => 1,
        TaskStatus::Running => 2,
        _ => 3,
    }
}

/// What a status change says before the end: the task's id, status and
/// time of the change.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusChange {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: crate::tasks::TaskId,
    pub status: TaskStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: time::OffsetDateTime,
}

fn event_for(task: &Task) -> Event {
    let event = Event::default().event(task.status.as_str()).id(rank(task.status).to_string());
    let data = if task.status.is_terminal() {
        serde_json::to_string(task)
    } else {
        serde_json::to_string(&StatusChange { task_id: task.task_id, status: task.status, updated_at: task.updated_at })
    };
    event.data(data.expect("a task serialises"))
}

/// Where the stream is.
enum Watch {
    /// Following the task; the highest event id sent (or that the client
    /// said it has).
    Following {
        seen: u8,
    },
    Done,
}

/// The task's status changes, as Server-Sent Events.
#[utoipa::path(get, path = "/tasks/{id}/events", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = "The task id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id the client received (1 pending, 2 running, 3 ended): only later events are sent, and the end always"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`text/event-stream`: an event per status change (`pending`, `running`, then `completed`, `failed` or `cancelled` with the whole task, and the stream ends), `gone` if the task is deleted or expires meanwhile; a comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 404, description = "No such task (or another tenant's)", body = ErrorBody),
        (status = 410, description = "The task's time to live has lapsed", body = ErrorBody),
        (status = 503, description = "The task store cannot answer", body = ErrorBody),
    ))]
pub(super) async fn task_events(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_task_id(&id)?;
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0)
        .min(2);
    // An unknown task is an error answer, not a stream.
    let first = app.task(&tenant, id).await?;
    let events = follow(app, tenant, first, seen);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

/// The events of `first` and of what becomes of it.
fn follow(
    app: AppState,
    tenant: std::sync::Arc<crate::tenants::Tenant>,
    first: Task,
    seen: u8,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let id = first.task_id;
    let start = (Watch::Following { seen }, Some(Ok(first)));
    stream::unfold(start, move |(watch, known)| {
        let (app, tenant) = (app.clone(), tenant.clone());
        async move {
            let Watch::Following { mut seen } = watch else { return None };
            let mut read = known;
            let mut status = TaskStatus::Pending;
            loop {
                let task = match read.take() {
                    Some(read) => read,
                    None => app.next_change(&tenant, id, status, SLICE).await,
                };
                if let Ok(task) = &task {
                    status = task.status;
                }
                match task {
                    Ok(task) if task.status.is_terminal() => {
                        return Some((Ok(event_for(&task)), (Watch::Done, None)));
                    }
                    Ok(task) if rank(task.status) > seen => {
                        seen = rank(task.status);
                        return Some((Ok(event_for(&task)), (Watch::Following { seen }, None)));
                    }
                    Ok(_) => continue,
                    Err(LookupError::Store(err)) => {
                        // The store will answer again: keep following.
                        tracing::debug!(%err, task_id = %id, "an event stream could not read its task");
                        tokio::time::sleep(SLICE).await;
                        continue;
                    }
                    Err(err) => {
                        let body = ApiError::from(err).body();
                        let gone = Event::default().event("gone").data(body.to_string());
                        return Some((Ok(gone), (Watch::Done, None)));
                    }
                }
            }
        }
    })
}
