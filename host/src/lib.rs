//! matchbox: a host for sandboxed job-matching work.
//!
//! A client submits a matching job over HTTP (one candidate, a set of job
//! postings). The host records a task in an expiring task table, runs the job
//! in a fresh WebAssembly component instance of the chosen matcher, stores
//! the ranked result on the task, and deletes the task when its time to live
//! lapses, stopping its job if it is still running.
//!
//! How the crate is laid out:
//!
//! - [`config`]: `matchbox serve` flags, environment variables and defaults;
//! - [`api`]: the HTTP routes, request checks and the one error type;
//! - [`service`]: [`Matchbox`], the service the API calls, put together from
//!   the parts below;
//! - [`tasks`]: the [`tasks::TaskStore`] trait, the in-memory table with its
//!   expiry index, and the conformance suite every store passes;
//! - [`jobs`]: the bounded queue, the workers and the jobs in flight;
//! - [`runtime`]: the wasmtime sandbox, one fresh Store per job;
//! - [`registry`]: the matchers this host can run.
//!
//! [`app`] and [`run`] are what `main.rs` and the tests call.

pub mod api;
pub mod config;
pub mod jobs;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod tasks;

use std::future::Future;

pub use config::Config;
pub use service::Matchbox;

/// The HTTP application over a service.
pub fn app(state: api::AppState) -> axum::Router {
    api::router(state).layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}

/// Paths of the guests built for tests only; never embedded.
#[doc(hidden)]
pub mod testing {
    /// The `misbehave` matcher (see `guest/misbehave`).
    pub const MISBEHAVE_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE");
    /// Its variants whose `info()` traps, loops, or returns an empty name.
    pub const MISBEHAVE_INFO_TRAP_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_TRAP");
    pub const MISBEHAVE_INFO_LOOP_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_LOOP");
    pub const MISBEHAVE_INFO_NONSENSE_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE_INFO_NONSENSE");
}
