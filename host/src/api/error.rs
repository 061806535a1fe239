//! [`ApiError`]: the one door every error leaves through, as
//! `{"error": {"code", "message"}}`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::LoadError;
use crate::service::{LookupError, SubmitError};
use crate::tasks::StoreError;
use crate::tenants::AuthError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// A message for a person, naming what was wrong.
    pub message: String,
    /// Seconds to wait before retrying, for 429 and 503.
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge, for 401.
    pub challenge: Option<&'static str>,
}

/// What every error answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code, e.g. `task_not_found`.
    pub code: &'static str,
    /// A message for a person, naming what was wrong.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, challenge: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// This error, as the `index`-th job of a batch's.
    pub fn in_job(mut self, index: usize) -> Self {
        self.message = format!("jobs[{index}]: {}", self.message);
        self
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl ApiError {
    /// The body this error answers with, `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if let Some(timed_out) = super::serve::timed_out(&rejection) {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", timed_out.to_string());
        }
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                return ApiError::too_large("the request body is larger than the cap of --max-body");
            }
            _ => "bad_body",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl ApiError {
    /// Names the cap a body passed, in bytes.
    pub fn body_cap(mut self, flag: &str, cap: usize) -> Self {
        if self.status == StatusCode::PAYLOAD_TOO_LARGE && self.code == "too_large" {
            self.message = format!("the request body is larger than the cap of {cap} bytes ({flag})");
        }
        self
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Full { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "table_full", format!("{err}; retry later")).retry_after(5)
            }
            StoreError::TenantFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tasks_quota_exceeded", err.to_string()).retry_after(5)
            }
            StoreError::OverQuota { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", err.to_string()).retry_after(1)
            }
            StoreError::Duplicate(_) => ApiError::new(StatusCode::CONFLICT, "duplicate", err.to_string()),
            StoreError::KeyReused { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", err.to_string())
            }
            StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", err.to_string()).retry_after(1)
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::UnknownMatcher(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_matcher", err.to_string())
            }
            SubmitError::QueueFull(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", format!("{err}; retry later")).retry_after(1)
            }
            SubmitError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", err.to_string()).retry_after(5)
            }
            SubmitError::CallbackRefused(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "callback_refused", err.to_string())
            }
            SubmitError::CallbackUnsigned => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "callback_unsigned", err.to_string())
            }
            SubmitError::Store(err) => err.into(),
            SubmitError::InBatch { index, source } => ApiError::from(*source).in_job(index),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let (code, challenge) = match err {
            AuthError::Missing => ("unauthorized", r#"Bearer realm="matchbox""#),
            AuthError::Malformed => ("unauthorized", r#"Bearer realm="matchbox", error="invalid_request""#),
            AuthError::Invalid => ("unauthorized", r#"Bearer realm="matchbox", error="invalid_token""#),
        };
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, code, err.to_string());
        error.challenge = Some(challenge);
        error
    }
}

impl From<LookupError> for ApiError {
    fn from(err: LookupError) -> Self {
        match err {
            LookupError::NotFound(_) => ApiError::not_found("task_not_found", err.to_string()),
            LookupError::Gone(_) => ApiError::new(StatusCode::GONE, "task_expired", err.to_string()),
            LookupError::Store(err) => err.into(),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(err: LoadError) -> Self {
        let (status, code) = match &err {
            LoadError::BadName(_) => (StatusCode::BAD_REQUEST, "invalid_matcher_name"),
            LoadError::ReadOnly(..) => (StatusCode::CONFLICT, "read_only"),
            LoadError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            LoadError::NotWasm => (StatusCode::UNPROCESSABLE_ENTITY, "not_wasm"),
            LoadError::CoreModule => (StatusCode::UNPROCESSABLE_ENTITY, "core_module"),
            LoadError::Compile(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_component"),
            LoadError::OverLimits(_) => (StatusCode::UNPROCESSABLE_ENTITY, "over_limits"),
            LoadError::UploadQuota { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "upload_quota_exceeded"),
            LoadError::WrongWorld(_) => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_world"),
            LoadError::Info(_) => (StatusCode::UNPROCESSABLE_ENTITY, "info_failed"),
            LoadError::BadInfo(_) => (StatusCode::UNPROCESSABLE_ENTITY, "info_invalid"),
            LoadError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_failed"),
        };
        ApiError::new(status, code, err.to_string())
    }
}
