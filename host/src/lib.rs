//! matchbox: a host for sandboxed job-matching work.
//!
//! A client submits a matching job over HTTP (one candidate, a set of job
//! postings). The host records a task in an expiring task table, runs the job
//! in a fresh WebAssembly component instance of the chosen matcher, stores
//! the ranked result on the task, and deletes the task when its time to live
//! lapses, stopping its job if it is still running.
//!
//! How the crate is laid out, bottom-up: each module imports only from the
//! ones listed before it (`tests/layers.rs` checks it), and where a lower
//! one needs something of a higher one, it defines a small trait that the
//! higher one implements.
//!
//! - [`support`]: small shared helpers (durations and sizes, the name rule,
//!   atomic file writes, giving spare capacity back);
//! - [`runtime`]: the wasmtime sandbox, one fresh Store per job;
//! - [`tasks`]: the [`tasks::TaskStore`] trait, the in-memory table with its
//!   expiry index, the Redis store, and the conformance suite every store
//!   passes;
//! - [`webhooks`]: callbacks' destinations checked against the operator's
//!   rules, ends signed (Standard Webhooks) and delivered with retries;
//! - [`registry`]: the matchers this host can run (it defines
//!   [`registry::MatcherShare`] for sharing uploads with other hosts);
//! - [`tenants`]: API keys, quotas, and the tenants file;
//! - [`metrics`]: what `GET /metrics` reports;
//! - [`jobs`]: the bounded queue (fair across tenants), the workers, the
//!   jobs in flight and the ones accepted for the deployment (it defines
//!   [`jobs::Claim`] for jobs another host could run);
//! - [`cluster`]: jobs and matchers shared by hosts through Redis;
//! - [`service`]: [`Matchbox`], the one façade, with one intake for a job;
//! - [`api`]: the HTTP routes, request checks and the one error type;
//! - [`config`] and [`cli`]: `matchbox serve` flags, which assemble the
//!   layers, and the client commands;
//! - [`author`]: the matcher author's commands (`run`, `check`, `new`),
//!   which build the server's sandbox and registry without a server.
//!
//! [`app`] and [`run`] are what `main.rs` and the tests call.

pub mod api;
pub mod author;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod jobs;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod support;
pub mod tasks;
pub mod tenants;
pub mod webhooks;

use std::future::Future;

pub use config::Config;
pub use service::Matchbox;

/// The HTTP application over a service.
pub fn app(state: api::AppState) -> axum::Router {
    api::router(state).layer(tower_http::trace::TraceLayer::new_for_http().on_failure(log_failure))
}

/// The operators' application (`--admin-listen`): metrics by tenant and
/// matcher, health, readiness, the status page.
pub fn admin_app(state: api::AppState) -> axum::Router {
    api::operator_router(state).layer(tower_http::trace::TraceLayer::new_for_http().on_failure(log_failure))
}

/// How the trace layer logs a request that failed. A 503 is a refusal the
/// host means (draining, its store down, too many connections), answered to
/// every readiness probe while it lasts, and what causes it is logged where
/// it happens: debug. Any other 5xx, or an error on the connection, is an
/// error.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass;
    let ms = latency.as_millis() as u64;
    match class {
        ServerErrorsFailureClass::StatusCode(code) if code == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(status = code.as_u16(), latency_ms = ms, "request refused")
        }
        class => tracing::error!(classification = %class, latency_ms = ms, "response failed"),
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes the
/// requests in flight. Headers, bodies and connections are bounded by the
/// service's [`service::HttpLimits`].
pub async fn run(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = serve_limits(&state);
    api::serve(listener, app(state), limits, shutdown).await
}

/// Serves the operators' application on `listener`, with the same bounds.
pub async fn run_admin(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = serve_limits(&state);
    api::serve(listener, admin_app(state), limits, shutdown).await
}

fn serve_limits(state: &api::AppState) -> api::ServeLimits {
    let http = state.http_limits();
    api::ServeLimits {
        header_timeout: http.header_timeout,
        body_timeout: http.body_timeout,
        max_connections: http.max_connections,
    }
}

/// What tests and benchmarks share: paths of the guests built for tests only
/// (never embedded) and a sample job.
#[doc(hidden)]
pub mod testing {
    use crate::runtime::{Candidate, JobInput, Options, Posting, Skill};

    const SKILLS: [&str; 12] = [
        "rust",
        "go",
        "python",
        "kubernetes",
        "terraform",
        "postgresql",
        "react",
        "aws",
        "kafka",
        "redis",
        "java",
        "css",
    ];

    /// A candidate and `n` postings with varied skills, titles and places.
    pub fn sample_input(n: usize) -> JobInput {
        let candidate = Candidate {
            id: "bench".into(),
            skills: SKILLS[..5].iter().map(|s| Skill { name: (*s).into(), weight: 0.8 }).collect(),
            years_experience: 6.0,
            location: Some("Berlin".into()),
            remote_ok: true,
            desired_salary: Some(90_000),
            summary: "Backend engineer building distributed systems in Rust and Go on Kubernetes.".into(),
        };
        let postings = (0..n)
            .map(|i| Posting {
                id: format!("posting-{i}"),
                title: format!("{} engineer", SKILLS[i % SKILLS.len()]),
                description: format!(
                    "Join a team that builds {} services with {} and {}; on-call rotation, code review, mentoring.",
                    SKILLS[i % SKILLS.len()],
                    SKILLS[(i + 3) % SKILLS.len()],
                    SKILLS[(i + 7) % SKILLS.len()]
                ),
                required_skills: (0..3).map(|k| SKILLS[(i + k * 5) % SKILLS.len()].to_string()).collect(),
                preferred_skills: vec![SKILLS[(i + 1) % SKILLS.len()].to_string()],
                min_years: (i % 8) as f32,
                location: Some(if i % 3 == 0 { "Berlin" } else { "Lisbon" }.into()),
                remote: i % 2 == 0,
                salary_min: Some(60_000),
                salary_max: Some(70_000 + (i as u32 % 5) * 10_000),
            })
            .collect();
        JobInput { candidate, postings, options: Options { top_k: 10, min_score: 0.0 } }
    }

    /// The largest job the API accepts under `max_body` and `max_postings`:
    /// `max_postings` postings whose descriptions and skills fill the body
    /// to just under its cap, checked by the API's own validation. Returns
    /// the body's size and the job.
    pub fn largest_accepted_job(max_body: usize, max_postings: usize) -> (usize, JobInput) {
        let body = |description: usize| {
            let postings: Vec<serde_json::Value> = (0..max_postings)
                .map(|i| {
                    serde_json::json!({
                        "id": format!("posting-{i}"),
                        "title": format!("{} engineer", SKILLS[i % SKILLS.len()]),
                        "description": "d".repeat(description),
                        "required_skills": (0..4).map(|k| SKILLS[(i + k) % SKILLS.len()]).collect::<Vec<_>>(),
                        "preferred_skills": [SKILLS[(i + 5) % SKILLS.len()]],
                        "min_years": (i % 8) as f32,
                        "location": "Berlin",
                        "remote": i % 2 == 0,
                        "salary_max": 90_000,
                    })
                })
                .collect();
            let candidate = serde_json::json!({
                "id": "largest",
                "skills": SKILLS.iter().map(|s| serde_json::json!({"name": s, "weight": 0.8})).collect::<Vec<_>>(),
                "years_experience": 6,
                "summary": "s".repeat(crate::api::types::MAX_TEXT_BYTES),
            });
            serde_json::json!({"candidate": candidate, "postings": postings}).to_string()
        };
        // The size grows by `max_postings` bytes per byte of description.
        let base = body(0).len();
        let description = max_body.saturating_sub(base) / max_postings.max(1);
        let text = body(description.min(crate::api::types::MAX_TEXT_BYTES));
        let request: crate::api::types::MatchRequest = serde_json::from_str(&text).expect("a well-formed job");
        let caps = crate::api::types::Caps { max_postings };
        let (_, input) = request.into_job(&caps).expect("the API accepts the largest job");
        (text.len(), input)
    }

    /// The `misbehave` matcher (see `guest/misbehave`).
    pub const MISBEHAVE_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE");
    /// Its variants whose `info()` traps, loops, or returns an empty name.
    pub const MISBEHAVE_INFO_TRAP_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_TRAP");
    pub const MISBEHAVE_INFO_LOOP_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_LOOP");
    pub const MISBEHAVE_INFO_NONSENSE_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_NONSENSE");
}
