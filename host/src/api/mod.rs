//! The HTTP API (v1): routes, handlers, and the JSON extractor whose
//! rejections leave through [`ApiError`] like every other error.

mod error;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub use error::ApiError;
use types::{Accepted, Caps, MatchRequest};

use crate::registry::MatcherSummary;
use crate::service::Matchbox;
use crate::tasks::{Task, TaskId};
use crate::tenants::Tenant;

pub type AppState = Arc<Matchbox>;

/// `axum::Json`, with its rejections turned into [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The tenant making the request, from its `Authorization: Bearer` key (or
/// the implicit tenant of a host without tenants). Routes that touch tasks
/// or matchers take one; health, readiness and metrics are for operators
/// and need no key.
pub struct Caller(pub Arc<Tenant>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(Caller(app.tenants.authenticate(parts.headers.get(header::AUTHORIZATION))?))
    }
}

/// The router over `state`; tests call it with `oneshot`, without a socket.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body;
    Router::new()
        .route("/jobs/match", post(submit))
        .route("/tasks/{id}", get(get_task).delete(delete_task))
        .route("/matchers", get(list_matchers))
        .route(
            "/matchers/{name}",
            get(get_matcher)
                .put(upload_matcher)
                .delete(remove_matcher)
                .layer(DefaultBodyLimit::max(state.config.max_component_size)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct SubmitQuery {
    wait: Option<String>,
}

async fn submit(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let wait = query.wait.as_deref().map(|w| parse_wait(w, app.config.max_wait)).transpose()?;
    // Refuse before reading the body when the queue has no room: under
    // overload, parsing megabytes that are refused anyway would take the CPU
    // that serves everyone else. `submit` still reserves the slot for real.
    if app.is_draining() {
        return Err(crate::service::SubmitError::ShuttingDown.into());
    }
    if !app.jobs.queue().has_room() {
        return Err(crate::service::SubmitError::QueueFull(app.jobs.queue().capacity()).into());
    }
    let ApiJson(request) = ApiJson::<MatchRequest>::from_request(request, &app).await?;
    let caps = Caps { max_postings: tenant.quotas.postings };
    let (matcher, input) = request.into_job(&caps)?;
    let task = app.submit(&tenant, matcher.as_deref(), input).await?;
    let location = HeaderValue::from_str(&format!("/tasks/{}", task.task_id)).expect("a uuid is a valid header");

    if let Some(wait) = wait {
        let now = app.wait(&tenant, task.task_id, wait).await?;
        if now.status.is_terminal() {
            return Ok((StatusCode::OK, [(header::LOCATION, location)], Json(now)).into_response());
        }
    }
    let accepted = Accepted {
        task_id: task.task_id,
        status: task.status,
        matcher: task.matcher,
        created_at: task.created_at,
        expires_at: task.expires_at,
    };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(accepted)).into_response())
}

fn parse_wait(raw: &str, max: Duration) -> Result<Duration, ApiError> {
    let wait = crate::config::parse_duration(raw).map_err(|e| ApiError::bad_request("invalid_wait", e))?;
    if wait > max {
        return Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait={raw} is longer than the cap of {}", humantime::format_duration(max)),
        ));
    }
    Ok(wait)
}

fn parse_task_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::try_parse(raw)
        .map_err(|_| ApiError::bad_request("invalid_task_id", format!("'{raw}' is not a task id (a UUID)")))
}

async fn get_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_task_id(&id)?;
    Ok(Json(app.task(&tenant, id).await?))
}

async fn delete_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_task_id(&id)?;
    app.cancel(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_matchers(State(app): State<AppState>, Caller(tenant): Caller) -> Json<serde_json::Value> {
    let matchers: Vec<MatcherSummary> = app.registry.list(&tenant).iter().map(|m| m.summary()).collect();
    Json(serde_json::json!({ "matchers": matchers }))
}

async fn get_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<Json<MatcherSummary>, ApiError> {
    let matcher = app.registry.find(&tenant, &name).ok_or_else(|| unknown_matcher(&name))?;
    Ok(Json(matcher.summary()))
}

fn unknown_matcher(name: &str) -> ApiError {
    ApiError::not_found("matcher_not_found", format!("no matcher named '{name}'"))
}

/// `PUT /matchers/{name}`: the body is the component's bytes. `201` for a new
/// name, `200` when it replaced an upload (or was already there).
async fn upload_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the component is larger than the cap of {} bytes (--max-component-size)",
                app.config.max_component_size
            ))
        } else {
            ApiError::bad_request("bad_body", rejection.body_text())
        }
    })?;
    let (matcher, created) = app.registry.upload(&tenant, &name, body.to_vec()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location =
        HeaderValue::from_str(&format!("/matchers/{}", matcher.name)).expect("a checked name is a valid header");
    Ok((status, [(header::LOCATION, location)], Json(matcher.summary())).into_response())
}

async fn remove_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.registry.remove(&tenant, &name).await? { Ok(StatusCode::NO_CONTENT) } else { Err(unknown_matcher(&name)) }
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let present = app.present().await?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], app.metrics.render(present)).into_response())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the task store answers; the body carries the figures an
/// operator (or the soak test) checks first.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if app.is_draining() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "this host is draining"));
    }
    app.store.check().await?;
    let mut body = serde_json::to_value(app.present().await?).expect("plain numbers serialise");
    body["status"] = "ready".into();
    Ok(Json(body))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_such_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
