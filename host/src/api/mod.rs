//! The HTTP API (v1): routes, handlers, and the JSON extractor whose
//! rejections leave through [`ApiError`] like every other error.

mod error;
mod events;
mod serve;
mod status;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, MissingJsonContentType};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};
pub use serve::{BodyTimedOut, ServeLimits, serve};
use types::{Accepted, BatchAccepted, BatchRequest, Caps, MatchRequest};

use crate::metrics::View;
use crate::registry::MatcherSummary;
use crate::service::{CallbackRequest, Matchbox, Submission, Submitted};
use crate::tasks::{IdempotencyKey, Task, TaskId};
use crate::tenants::Tenant;

pub type AppState = Arc<Matchbox>;

/// `axum::Json`, with its rejections turned into [`ApiError`]s.
///
/// A body is parsed once, without tracking where the parser is: tracking
/// it, so that a refusal can name the field it is about, took a fifth of a
/// small job's instructions on every request. A body that fails is parsed
/// again by `axum::Json`, whose rejection names the field. The body's UTF-8
/// is checked once, whole, and parsed as text: parsed as bytes, each string
/// is checked on its own, a fifth of the parse for a job's many short ones.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(JsonRejection::from(MissingJsonContentType::default()).into());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(JsonRejection::from)?;
        if let Some(value) = std::str::from_utf8(&bytes).ok().and_then(|text| serde_json::from_str(text).ok()) {
            return Ok(ApiJson(value));
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(value))
    }
}

/// `application/json`, or any `application/*+json`, as `axum::Json` takes.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application" && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
}

/// The tenant making the request, from its `Authorization: Bearer` key (or
/// the implicit tenant of a host without tenants). Routes that touch tasks
/// or matchers take one; health, readiness and metrics are for operators
/// and need no key.
pub struct Caller(pub Arc<Tenant>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(Caller(app.authenticate(parts.headers.get(header::AUTHORIZATION))?))
    }
}

/// The OpenAPI document's parts that no route carries: title, the bearer
/// scheme, the error body.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "matchbox",
        description = "Job matching in sandboxed WebAssembly matchers: submit a candidate and postings, read the ranked result from an expiring task."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant's key; only on hosts with a tenants file (--config)."))
                    .build(),
            ),
        );
    }
}

/// Every route, each registered together with its OpenAPI operation, so the
/// document cannot leave one out.
fn routes(max_component_size: usize) -> OpenApiRouter<AppState> {
    let (schemas, paths, matcher) = routes!(get_matcher, upload_matcher, remove_matcher);
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(submit))
        .routes(routes!(submit_batch))
        .routes(routes!(get_task, delete_task))
        .routes(routes!(events::task_events))
        .routes(routes!(list_matchers))
        .routes((schemas, paths, matcher.layer(DefaultBodyLimit::max(max_component_size))))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(status::report))
        .routes(routes!(status::page))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of every route [`router`] serves, with the rules
/// the API enforces stated from `limits` (see [`types::state_rules`]).
pub fn openapi(limits: &crate::service::HttpLimits) -> serde_json::Value {
    let mut doc = serde_json::to_value(routes(0).into_openapi()).expect("the OpenAPI document serialises");
    types::state_rules(&mut doc, limits);
    doc
}

/// What operators reach on `--admin-listen`: everything `/metrics` has,
/// by tenant and matcher too, with health, readiness and the status page.
/// Not in the OpenAPI document: it is not the API.
pub fn operator_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(operator_metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/status", axum::routing::get(status::report))
        .route("/", axum::routing::get(status::page))
        .fallback(not_found)
        .with_state(state)
}

/// The router over `state`; tests call it with `oneshot`, without a socket.
pub fn router(state: AppState) -> Router {
    let limits = state.http_limits();
    let (router, _) = routes(limits.max_component_size).split_for_parts();
    let document = Arc::new(openapi(&limits).to_string());
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(OpenApiJson(document)))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .with_state(state)
}

#[derive(Clone)]
struct OpenApiJson(Arc<String>);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
async fn openapi_json(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document.as_str().to_owned()).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SubmitQuery {
    /// Wait up to this long (e.g. `2s`, at most `--max-wait`) for the job to
    /// end; the task comes back with 200 if it does.
    wait: Option<String>,
}

/// Submit a matching job.
#[utoipa::path(post, path = "/jobs/match", tag = "jobs", request_body = MatchRequest,
    params(
        SubmitQuery,
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, min_length = 1,
            description = "Retry safely: the same key from the same tenant, while the task it made lives, answers \
                that task (no second job); with another body, 422 idempotency_key_reused. 1 to 255 visible ASCII \
                characters, quoted (a Structured Fields string) or not."),
    ),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Accepted; read the task at Location. `Idempotent-Replayed: true` when an \
            Idempotency-Key had made this task before", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` for a replay, else `false`"))),
        (status = 200, description = "With ?wait: the job ended in time", body = Task,
            headers(("Idempotent-Replayed" = String, description = "`true` for a replay, else `false`"))),
        (status = 400, description = "Malformed JSON, a bad ?wait or a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 413, description = "A body, list or string over its cap", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A missing or wrong field, an unknown matcher, a value out of range, an \
            Idempotency-Key sent before with another body, or a callback the host refuses (callback_refused: its \
            destination is not allowed, the message names the rule; callback_unsigned: no signing secret)",
            body = ErrorBody),
        (status = 429, description = "The queue or table is full, or the tenant is at its quota", body = ErrorBody),
        (status = 503, description = "Shutting down, or the task store cannot answer", body = ErrorBody),
    ))]
async fn submit(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let wait = query.wait.as_deref().map(|w| parse_wait(w, app.http_limits().max_wait)).transpose()?;
    let key = request.headers().get(types::IDEMPOTENCY_KEY).map(types::idempotency_key).transpose()?;
    // Refuse before reading the body when the job could not be accepted
    // anyway: under overload, parsing megabytes that are refused would take
    // the CPU that serves everyone else. `submit` checks again for real. A
    // retry (an idempotency key with a live task) is read: it is answered
    // with the task it made. A key that made nothing yet is new work.
    let retry = match &key {
        Some(key) => app.is_retry(&tenant, key).await,
        None => false,
    };
    if !retry {
        app.may_accept(&tenant)?;
    }
    let ApiJson(mut request) = ApiJson::<MatchRequest>::from_request(request, &app)
        .await
        .map_err(|e| e.body_cap("--max-body", app.http_limits().max_body))?;
    let caps = Caps { max_postings: tenant.quotas.postings };
    let callback = request.callback.take().map(CallbackRequest::from);
    let (matcher, input) = request.into_job(&caps)?;
    let key = key.map(|key| IdempotencyKey {
        key,
        fingerprint: types::fingerprint(matcher.as_ref(), &input, callback.as_ref()),
    });
    let Submitted { task, replayed } = app.submit(&tenant, Submission { matcher, input, key, callback }).await?;
    let location = HeaderValue::from_str(&format!("/tasks/{}", task.task_id)).expect("a uuid is a valid header");
    let headers = [
        (header::LOCATION, location),
        (
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static(if replayed { "true" } else { "false" }),
        ),
    ];

    let task = match wait {
        Some(wait) => {
            // A replay's job may be another host's: a long poll follows it.
            let now = if replayed {
                app.poll(&tenant, task.task_id, wait).await?
            } else {
                app.wait(&tenant, task.task_id, wait).await?
            };
            if now.status.is_terminal() {
                return Ok((StatusCode::OK, headers, Json(now)).into_response());
            }
            // Still going: the answer says where it is now (`running`
            // once a worker took it), not what it was at acceptance.
            now
        }
        None => task,
    };
    Ok((StatusCode::ACCEPTED, headers, Json(Accepted::of(task))).into_response())
}

/// Submit a batch of matching jobs, admitted whole.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs", request_body = BatchRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Every job accepted, each its own task; the tasks in the order of the jobs",
            body = BatchAccepted),
        (status = 400, description = "Malformed JSON, or an Idempotency-Key (taken on /jobs/match only)", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 413, description = "More jobs than --max-batch, or a job's list or string over its cap (the \
            message names the job: jobs[i])", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A job refused as /jobs/match would refuse it (the message names it: jobs[i]); \
            nothing of the batch is accepted", body = ErrorBody),
        (status = 429, description = "The queue, the table or the tenant's quota cannot take the whole batch; \
            nothing of it is accepted", body = ErrorBody),
        (status = 503, description = "Shutting down, or the task store cannot answer", body = ErrorBody),
    ))]
async fn submit_batch(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    if request.headers().contains_key(types::IDEMPOTENCY_KEY) {
        return Err(ApiError::bad_request(
            "idempotency_key_unsupported",
            "Idempotency-Key is taken on POST /jobs/match only: to retry jobs safely after a network error, \
             submit them one by one, each with its key",
        ));
    }
    app.may_accept(&tenant)?;
    let ApiJson(batch) = ApiJson::<BatchRequest>::from_request(request, &app)
        .await
        .map_err(|e| e.body_cap("--max-body", app.http_limits().max_body))?;
    let n = batch.jobs.len();
    let max = app.http_limits().max_batch;
    if n > max {
        return Err(ApiError::too_large(format!("jobs has {n} items; the cap is {max} (--max-batch)")));
    }
    if n == 0 {
        return Err(ApiError::invalid("jobs must not be empty"));
    }
    let caps = Caps { max_postings: tenant.quotas.postings };
    let mut submissions = Vec::with_capacity(n);
    for (index, mut job) in batch.jobs.into_iter().enumerate() {
        let callback = job.callback.take().map(CallbackRequest::from);
        let (matcher, input) = job.into_job(&caps).map_err(|e| e.in_job(index))?;
        submissions.push(Submission { matcher, input, key: None, callback });
    }
    let tasks = app.submit_batch(&tenant, submissions).await.map_err(|e| {
        let mut error = ApiError::from(e);
        if error.status == StatusCode::TOO_MANY_REQUESTS {
            error.message =
                format!("a batch is admitted whole, and this one of {n} jobs is refused: {}", error.message);
        }
        error
    })?;
    let tasks = tasks.into_iter().map(Accepted::of).collect();
    Ok((StatusCode::ACCEPTED, Json(BatchAccepted { tasks })).into_response())
}

fn parse_wait(raw: &str, max: Duration) -> Result<Duration, ApiError> {
    let wait = crate::support::units::parse_duration(raw).map_err(|e| ApiError::bad_request("invalid_wait", e))?;
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TaskQuery {
    /// A long poll: answer once the task has ended, or after this long
    /// (e.g. `30s`, at most `--max-wait`) with the task as it is then.
    wait: Option<String>,
}

/// A task: its status and, once it has ended, its result or error.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "The task id"), TaskQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The task (with ?wait: once it has ended, or as it is when the wait is over)", body = Task),
        (status = 400, description = "Not a task id, or a bad ?wait", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 404, description = "No such task (or another tenant's)", body = ErrorBody),
        (status = 410, description = "The task's time to live has lapsed", body = ErrorBody),
        (status = 503, description = "The task store cannot answer", body = ErrorBody),
    ))]
async fn get_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    query: Result<Query<TaskQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Task>, ApiError> {
    let Query(query) = query?;
    let id = parse_task_id(&id)?;
    let wait = query.wait.as_deref().map(|w| parse_wait(w, app.http_limits().max_wait)).transpose()?;
    let task = match wait {
        Some(wait) => app.poll(&tenant, id, wait).await?,
        None => app.task(&tenant, id).await?,
    };
    Ok(Json(task))
}

/// Cancel a task's job if it is queued or running, and delete the task.
#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "The task id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Cancelled and deleted"),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 404, description = "No such task (or another tenant's)", body = ErrorBody),
        (status = 410, description = "The task's time to live has lapsed", body = ErrorBody),
        (status = 503, description = "The task store cannot answer", body = ErrorBody),
    ))]
async fn delete_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_task_id(&id)?;
    app.cancel(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
struct MatcherList {
    matchers: Vec<MatcherSummary>,
}

/// The matchers the caller may use.
#[utoipa::path(get, path = "/matchers", tag = "matchers", security(("api_key" = [])),
    responses(
        (status = 200, description = "Shared matchers the caller may use and its own uploads", body = MatcherList),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
    ))]
async fn list_matchers(State(app): State<AppState>, Caller(tenant): Caller) -> Json<MatcherList> {
    Json(MatcherList { matchers: app.matchers(&tenant).await })
}

/// One matcher.
#[utoipa::path(get, path = "/matchers/{name}", tag = "matchers", params(("name" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The matcher", body = MatcherSummary),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 404, description = "No such matcher (or another tenant's)", body = ErrorBody),
    ))]
async fn get_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<Json<MatcherSummary>, ApiError> {
    Ok(Json(app.matcher(&tenant, &name).await.ok_or_else(|| unknown_matcher(&name))?))
}

fn unknown_matcher(name: &str) -> ApiError {
    ApiError::not_found("matcher_not_found", format!("no matcher named '{name}'"))
}

/// Upload a matcher: the body is the component's bytes. `201` for a new
/// name, `200` when it replaced an upload (or was already there).
#[utoipa::path(put, path = "/matchers/{name}", tag = "matchers", params(("name" = String, Path)),
    security(("api_key" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "A WebAssembly component"),
    responses(
        (status = 201, description = "Registered under a new name", body = MatcherSummary),
        (status = 200, description = "Replaced an upload of that name", body = MatcherSummary),
        (status = 400, description = "Not a valid matcher name", body = ErrorBody),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 409, description = "A built-in, directory or shared matcher", body = ErrorBody),
        (status = 413, description = "Over --max-component-size", body = ErrorBody),
        (status = 422, description = "Not a component, does not compile, wrong world, or info() failed", body = ErrorBody),
    ))]
async fn upload_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if let Some(timed_out) = serve::timed_out(&rejection) {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", timed_out.to_string())
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the component is larger than the cap of {} bytes (--max-component-size)",
                app.http_limits().max_component_size
            ))
        } else {
            ApiError::bad_request("bad_body", rejection.body_text())
        }
    })?;
    let (matcher, created) = app.upload(&tenant, &name, body.to_vec()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location =
        HeaderValue::from_str(&format!("/matchers/{}", matcher.name)).expect("a checked name is a valid header");
    Ok((status, [(header::LOCATION, location)], Json(matcher)).into_response())
}

/// Remove an upload. Jobs already running on it finish on it.
#[utoipa::path(delete, path = "/matchers/{name}", tag = "matchers", params(("name" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No key or a wrong one", body = ErrorBody),
        (status = 404, description = "No such matcher (or another tenant's)", body = ErrorBody),
        (status = 409, description = "A built-in, directory or shared matcher", body = ErrorBody),
    ))]
async fn remove_matcher(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.remove_matcher(&tenant, &name).await? { Ok(StatusCode::NO_CONTENT) } else { Err(unknown_matcher(&name)) }
}

/// Prometheus metrics (OpenMetrics text). On a host with tenants, only the
/// series that name no tenant and no tenant's matcher; the rest are on the
/// operators' listener (`--admin-listen`). Served while the task store is
/// down too: `matchbox_store_up` reads 0 and the table's series are left out.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
    ))]
async fn metrics(State(app): State<AppState>) -> Response {
    let view = if app.has_tenants() { View::Public } else { View::Operator };
    metrics_in(&app, view).await
}

async fn operator_metrics(State(app): State<AppState>) -> Response {
    metrics_in(&app, View::Operator).await
}

async fn metrics_in(app: &Matchbox, view: View) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics_text(view).await).into_response()
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
struct Ready {
    /// `ready`
    status: &'static str,
    #[serde(flatten)]
    present: crate::metrics::Present,
}

/// Readiness: the task store answers and the host is not draining. The body
/// carries the figures an operator (or the soak test) checks first.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Draining, or the task store cannot answer", body = ErrorBody),
    ))]
async fn readyz(State(app): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if app.is_draining() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "this host is draining"));
    }
    app.check().await?;
    Ok(Json(Ready { status: "ready", present: app.present().await? }))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_such_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
