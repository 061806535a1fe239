//! The HTTP baseline: a bare axum handler that parses the same match request
//! as `POST /jobs/match` and answers JSON of the same shape, with no task
//! table, no queue and no sandbox. `bench/http.sh` runs it beside matchbox.
//!
//! ```sh
//! cargo run --release -p matchbox-bench --bin bare -- --listen 127.0.0.1:8081
//! ```

use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use matchbox::api::types::MatchRequest;
use serde_json::{Value, json};

/// The same allocator as `matchbox`, so the comparison is of the work alone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
}

async fn answer(Json(request): Json<MatchRequest>) -> Json<Value> {
    let k = request.options.top_k as usize;
    let rankings: Vec<Value> = request
        .postings
        .iter()
        .take(k)
        .map(|p| json!({"posting_id": p.id, "score": 0.5, "reasons": ["baseline"]}))
        .collect();
    Json(json!({
        "task_id": "00000000-0000-7000-8000-000000000000",
        "status": "completed",
        "matcher": request.matcher.unwrap_or_else(|| "skills".into()),
        "result": {"rankings": rankings}
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, Router::new().route("/jobs/match", post(answer))).await?;
    Ok(())
}
