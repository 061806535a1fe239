//! The HTTP API through `oneshot` (no socket) and one real socket, against
//! real matchers. Waits are on events (a task ending, the live-instance gauge
//! reaching zero), each bounded so a bug fails the test instead of hanging it.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Reply, bounded};
use matchbox::{Config, Matchbox};
use serde_json::{Value, json};

/// One data and cache directory for every test in this binary, never the
/// user's own.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

async fn service(configure: impl FnOnce(&mut Config)) -> Arc<Matchbox> {
    let mut config = Config {
        workers: Some(2),
        data_dir: Some(scratch().join("data")),
        cache_dir: Some(scratch().join("cache")),
        ..Config::default()
    };
    configure(&mut config);
    let app = Matchbox::new(config).await.unwrap();
    let bytes = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    let tenant = app.tenant(matchbox::tenants::DEFAULT_TENANT).unwrap();
    app.upload(&tenant, "misbehave", bytes).await.unwrap();
    app
}

async fn call(app: &Arc<Matchbox>, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| b.to_string());
    call_raw(matchbox::app(app.clone()), method, uri, body, "application/json").await
}

async fn call_raw(router: Router, method: Method, uri: &str, body: Option<String>, content_type: &str) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    common::send(router, request.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap()).await
}

fn postings(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("p{i}"),
                "title": "Rust engineer",
                "required_skills": if i == 0 { json!(["rust", "kubernetes"]) } else { json!(["cobol"]) },
                "remote": true
            })
        })
        .collect()
}

fn job(candidate_id: &str, n: usize) -> Value {
    json!({
        "candidate": {
            "id": candidate_id,
            "skills": [{"name": "Rust", "weight": 1.0}, {"name": "k8s", "weight": 0.8}],
            "years_experience": 5,
            "remote_ok": true
        },
        "postings": postings(n)
    })
}

fn with_matcher(mut body: Value, matcher: &str) -> Value {
    body["matcher"] = json!(matcher);
    body
}

fn error_code(reply: &Reply) -> &str {
    reply.error_code()
}

async fn wait_done(app: &Arc<Matchbox>, id: &str) -> Value {
    bounded("the task to end", async {
        loop {
            let reply = call(app, Method::GET, &format!("/tasks/{id}"), None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            let status = reply.body["status"].as_str().unwrap().to_string();
            if ["completed", "failed", "cancelled"].contains(&status.as_str()) {
                return reply.body;
            }
            if let Some(done) = app.job_done(id.parse().unwrap()) {
                done.cancelled().await;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_then_poll() {
    let app = service(|_| {}).await;
    let reply = call(&app, Method::POST, "/jobs/match", Some(job("ada", 3))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["task_id"].as_str().unwrap().to_string();
    assert_eq!(reply.headers[header::LOCATION], format!("/tasks/{id}"));
    assert_eq!(reply.body["status"], "pending");
    assert_eq!(reply.body["matcher"], "skills");
    assert!(reply.body["expires_at"].as_str().unwrap().ends_with('Z'));
    let uuid: uuid::Uuid = id.parse().unwrap();
    assert_eq!(uuid.get_version_num(), 7, "task ids are UUIDv7");

    let task = wait_done(&app, &id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let rankings = task["result"]["rankings"].as_array().unwrap();
    assert_eq!(rankings[0]["posting_id"], "p0");
    assert!(rankings[0]["reasons"].as_array().unwrap().iter().any(|r| r == "2/2 required skills"));
    assert!(task.get("error").is_none(), "no error on a completed task");
    bounded("live instances to drain", app.live_instances().wait_for_zero()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_answers_200_with_the_result() {
    let app = service(|_| {}).await;
    let body = with_matcher(job("grace", 2), "text");
    let reply = call(&app, Method::POST, "/jobs/match?wait=30s", Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "completed");
    assert_eq!(reply.body["matcher"], "text");
    assert!(reply.headers.contains_key(header::LOCATION));
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_that_runs_out_answers_202() {
    let app = service(|c| c.job_timeout = Duration::from_secs(3600)).await;
    let body = with_matcher(job("loop", 1), "misbehave");
    let reply = call(&app, Method::POST, "/jobs/match?wait=500ms", Some(body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "running", "the status it has now, not at acceptance");
    let id = reply.body["task_id"].as_str().unwrap();

    // GET ?wait= is a long poll: after the wait, the task as it is.
    let polled = call(&app, Method::GET, &format!("/tasks/{id}?wait=100ms"), None).await;
    assert_eq!((polled.status, &polled.body["status"]), (StatusCode::OK, &json!("running")));
    let bad = call(&app, Method::GET, &format!("/tasks/{id}?wait=bogus"), None).await;
    assert_eq!((bad.status, error_code(&bad)), (StatusCode::BAD_REQUEST, "invalid_wait"));
    let long = call(&app, Method::GET, &format!("/tasks/{id}?wait=2h"), None).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, Method::DELETE, &format!("/tasks/{id}"), None).await.status, StatusCode::NO_CONTENT);
    bounded("the cancelled guest to stop", app.live_instances().wait_for_zero()).await;
}

/// `GET /tasks/{id}?wait=` answers as soon as the task ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_answers_when_the_task_ends() {
    let app = service(|_| {}).await;
    let body = with_matcher(job("slow", 1), "misbehave");
    let reply = call(&app, Method::POST, "/jobs/match", Some(body)).await;
    let id = reply.body["task_id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let polled = call(&app, Method::GET, &format!("/tasks/{id}?wait=30s"), None).await;
    assert_eq!((polled.status, &polled.body["status"]), (StatusCode::OK, &json!("completed")), "{}", polled.body);
    assert!(started.elapsed() < Duration::from_secs(20), "answered at the end, not at the wait's");
    // An ended task answers at once.
    let again = call(&app, Method::GET, &format!("/tasks/{id}?wait=30s"), None).await;
    assert_eq!(again.body["status"], "completed");
    let unknown = call(&app, Method::GET, &format!("/tasks/{}?wait=1s", app.new_task_id()), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_wait_is_a_400() {
    let app = service(|_| {}).await;
    let reply = call(&app, Method::POST, "/jobs/match?wait=soon", Some(job("ada", 1))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&reply), "invalid_wait");
    let reply = call(&app, Method::POST, "/jobs/match?wait=2h", Some(job("ada", 1))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("cap of 1m"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_cancels_a_running_job_and_deletes_the_task() {
    let app = service(|c| c.job_timeout = Duration::from_secs(3600)).await;
    let reply = call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("loop", 1), "misbehave"))).await;
    let id = reply.body["task_id"].as_str().unwrap().to_string();
    bounded("the guest to start", app.live_instances().wait_for(|n| n == 1)).await;
    assert_eq!(call(&app, Method::GET, &format!("/tasks/{id}"), None).await.body["status"], "running");

    let reply = call(&app, Method::DELETE, &format!("/tasks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    bounded("the cancelled guest to stop", app.live_instances().wait_for_zero()).await;
    let reply = call(&app, Method::GET, &format!("/tasks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "a deleted task is gone");
    let reply = call(&app, Method::DELETE, &format!("/tasks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_guest_fails_its_own_task_only() {
    let app = service(|_| {}).await;
    let bad = call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("score-high", 2), "misbehave"))).await;
    let good = call(&app, Method::POST, "/jobs/match", Some(job("ada", 2))).await;
    let bad = wait_done(&app, bad.body["task_id"].as_str().unwrap()).await;
    let good = wait_done(&app, good.body["task_id"].as_str().unwrap()).await;
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"]["kind"], "contract_violation");
    assert!(bad["error"]["message"].as_str().unwrap().contains("7.5"), "{bad}");
    assert!(bad.get("result").is_none());
    assert_eq!(good["status"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_expired_and_malformed_ids() {
    let app = service(|_| {}).await;
    // A UUIDv7 stamped now: never issued, so unknown.
    let fresh = app.new_task_id();
    let reply = call(&app, Method::GET, &format!("/tasks/{fresh}"), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&reply), "task_not_found");
    // A UUIDv7 stamped in 2024: older than the time to live, so gone.
    let old = "01900000-0000-7000-8000-000000000000";
    let reply = call(&app, Method::GET, &format!("/tasks/{old}"), None).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert_eq!(error_code(&reply), "task_expired");
    // Not a UUID at all.
    let reply = call(&app, Method::GET, "/tasks/not-a-task", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&reply), "invalid_task_id");
    let reply = call(&app, Method::DELETE, "/tasks/not-a-task", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_the_size_cap_are_413() {
    let app = service(|c| c.max_body = 4 << 10).await;
    let reply = call(&app, Method::POST, "/jobs/match", Some(job("ada", 100))).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&reply), "too_large");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert_eq!(message, "the request body is larger than the cap of 4096 bytes (--max-body)");
}

/// Names are capped at 1 KiB, candidate skills too; a skill without a
/// weight is held in full.
#[tokio::test(flavor = "multi_thread")]
async fn skill_names_are_capped_at_1_kib_and_weigh_1_by_default() {
    let app = service(|_| {}).await;
    let with_skill = |name: String| {
        json!({"candidate": {"id": "ada", "skills": [{"name": name}]},
               "postings": [{"id": "p", "required_skills": ["rust"]}]})
    };
    let ok = call(&app, Method::POST, "/jobs/match?wait=30s", Some(with_skill("r".repeat(1024)))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let over = call(&app, Method::POST, "/jobs/match", Some(with_skill("r".repeat(1025)))).await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", over.body);
    assert!(over.body["error"]["message"].as_str().unwrap().contains("candidate.skills[0].name"), "{}", over.body);

    // Weighed 1.0, "rust" meets the one required skill in full: the same
    // score as an explicit weight of 1.
    let score = |skill: Value| {
        let app = app.clone();
        async move {
            let body = json!({"candidate": {"id": "ada", "skills": [skill]},
                              "postings": [{"id": "p", "required_skills": ["rust"]}]});
            let reply = call(&app, Method::POST, "/jobs/match?wait=30s", Some(body)).await;
            reply.body["result"]["rankings"][0]["score"].as_f64().unwrap()
        }
    };
    let (unweighted, full, half) = (
        score(json!({"name": "rust"})).await,
        score(json!({"name": "rust", "weight": 1.0})).await,
        score(json!({"name": "rust", "weight": 0.5})).await,
    );
    assert_eq!(unweighted, full);
    assert!(half < full);
}

/// A pin is `name@sha256:<hex>`; a bare hex digest is refused as such.
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_without_sha256_is_named_as_such() {
    let app = service(|_| {}).await;
    let skills = call(&app, Method::GET, "/matchers/skills", None).await;
    let hex = skills.body["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let reply =
        call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("ada", 1), &format!("skills@{hex}")))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("a pinned matcher is written name@sha256:<64 lower-case hex digits>"), "{message}");
    let pinned = with_matcher(job("ada", 1), &format!("skills@sha256:{hex}"));
    assert_eq!(call(&app, Method::POST, "/jobs/match", Some(pinned)).await.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_are_4xx_with_the_error_shape() {
    let app = service(|_| {}).await;
    let router = || matchbox::app(app.clone());

    let reply = call_raw(router(), Method::POST, "/jobs/match", Some("{not json".into()), "application/json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&reply), "malformed_json");

    let reply = call_raw(router(), Method::POST, "/jobs/match", Some(job("a", 1).to_string()), "text/plain").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&reply), "unsupported_media_type");
    for json_type in ["application/json; charset=utf-8", "application/vnd.matchbox+json"] {
        let reply = call_raw(router(), Method::POST, "/jobs/match", Some(job("a", 1).to_string()), json_type).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{json_type}");
    }

    // Bytes that are not UTF-8 inside a string: the same refusal as any
    // JSON that does not parse, saying what and where.
    let mut bytes = job("ada", 1).to_string().into_bytes();
    let at = bytes.windows(5).position(|w| w == b"\"ada\"").unwrap() + 1;
    bytes[at] = 0xff;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/jobs/match")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap();
    let reply = common::send(router(), request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(error_code(&reply), "malformed_json");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("unicode"), "{}", reply.body);

    let mut wrong_type = job("ada", 1);
    wrong_type["candidate"]["years_experience"] = json!("five");
    let reply = call(&app, Method::POST, "/jobs/match", Some(wrong_type)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&reply), "invalid_body");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("years_experience"), "{}", reply.body);

    let reply = call(&app, Method::POST, "/jobs/match", Some(json!({"postings": postings(1)}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("candidate"), "{}", reply.body);

    let reply = call(&app, Method::GET, "/no/such/route", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&reply), "no_such_route");

    let reply = call(&app, Method::PUT, "/jobs/match", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&reply), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_and_ranges_name_the_field() {
    let app = service(|_| {}).await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (with_matcher(job("ada", 1), "nope"), StatusCode::UNPROCESSABLE_ENTITY, "no matcher named 'nope'"),
        (
            json!({"candidate": {"id": "a"}, "postings": postings(1), "options": {"top_k": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "options.top_k must be between 1 and 1000, got 0",
        ),
        (
            json!({"candidate": {"id": "a"}, "postings": postings(1), "options": {"top_k": 10000}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "options.top_k must be between 1 and 1000, got 10000",
        ),
        (
            json!({"candidate": {"id": "a"}, "postings": postings(10_001)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "postings has 10001 items; the cap is 10000",
        ),
        (
            json!({"candidate": {"id": "a"}, "postings": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "postings must not be empty",
        ),
        (
            json!({"candidate": {"id": "a", "skills": [{"name": "go", "weight": 3}]}, "postings": postings(1)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "candidate.skills[0].weight must be in [0, 1]",
        ),
        (
            json!({"candidate": {"id": "a", "summary": "x".repeat(70_000)}, "postings": postings(1)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "candidate.summary has 70000 bytes; the cap is 65536",
        ),
        (
            json!({"candidate": {"id": "a"}, "postings": [{"id": "x"}, {"id": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "postings[1].id 'x' appears more than once",
        ),
        (
            json!({"candidate": {"id": ""}, "postings": postings(1)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "candidate.id must not be empty",
        ),
    ];
    for (body, status, message) in cases {
        let reply = call(&app, Method::POST, "/jobs/match", Some(body)).await;
        assert_eq!(reply.status, status, "{}", reply.body);
        let got = reply.body["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "expected '{message}' in '{got}'");
    }
    assert_eq!(app.tasks_held().await.unwrap(), 0, "no refused request left a task behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_and_accepted_jobs_still_complete() {
    let app = service(|c| {
        c.workers = Some(1);
        c.queue = 2;
        c.job_timeout = Duration::from_secs(3600);
    })
    .await;
    let blocker = call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("loop", 1), "misbehave"))).await;
    bounded("the blocker to start", app.live_instances().wait_for(|n| n == 1)).await;
    let queued: Vec<String> = submit_many(&app, 2).await;

    let refused = call(&app, Method::POST, "/jobs/match", Some(job("ada", 1))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&refused), "queue_full");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));

    let blocker_id = blocker.body["task_id"].as_str().unwrap();
    call(&app, Method::DELETE, &format!("/tasks/{blocker_id}"), None).await;
    for id in &queued {
        assert_eq!(wait_done(&app, id).await["status"], "completed");
    }
}

async fn submit_many(app: &Arc<Matchbox>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let reply = call(app, Method::POST, "/jobs/match", Some(job("ada", 1))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        ids.push(reply.body["task_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_table_answers_429_and_loses_nothing() {
    let app = service(|c| c.max_tasks = 2).await;
    let ids = submit_many(&app, 2).await;
    let refused = call(&app, Method::POST, "/jobs/match", Some(job("ada", 1))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&refused), "table_full");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    for id in &ids {
        assert_eq!(wait_done(&app, id).await["status"], "completed");
    }
    // Deleting one makes room again.
    call(&app, Method::DELETE, &format!("/tasks/{}", ids[0]), None).await;
    assert_eq!(call(&app, Method::POST, "/jobs/match", Some(job("ada", 1))).await.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_still_running_at_expiry_is_stopped_and_its_task_deleted() {
    let app = service(|c| {
        c.task_ttl = Duration::from_secs(1);
        c.job_timeout = Duration::from_secs(3600);
    })
    .await;
    let reply = call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("loop", 1), "misbehave"))).await;
    let id = reply.body["task_id"].as_str().unwrap().to_string();
    bounded("the guest to start", app.live_instances().wait_for(|n| n == 1)).await;

    // The guest would loop for an hour; expiry stops it after a second.
    bounded("expiry to stop the guest", app.live_instances().wait_for_zero()).await;
    bounded("the job to be forgotten", app.idle()).await;
    assert_eq!(app.tasks_held().await.unwrap(), 0, "the entry is deleted, not marked");
    assert_eq!(app.tasks_expired(), 1);
    let reply = call(&app, Method::GET, &format!("/tasks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn matchers_health_and_readiness() {
    let app = service(|_| {}).await;
    let reply = call(&app, Method::GET, "/matchers", None).await;
    let names: Vec<&str> =
        reply.body["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["misbehave", "skills", "text"]);
    // Without tenants, an upload is the one caller's own: private.
    assert_eq!(reply.body["matchers"][0]["private"], true);
    let skills = &reply.body["matchers"][1];
    assert_eq!(skills["builtin"], true);
    assert_eq!(skills["private"], false);
    assert!(skills["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(call(&app, Method::GET, "/healthz", None).await.status, StatusCode::OK);
    let ready = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
}

/// The whole stack over a real socket: `run` with a listener, a real HTTP
/// client, and a graceful shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn serves_over_a_real_socket() {
    let app = service(|_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(matchbox::run(listener, app.clone(), async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let reply = client.post(format!("http://{addr}/jobs/match?wait=30s")).json(&job("ada", 5)).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let location = reply.headers()[header::LOCATION].to_str().unwrap().to_string();
    let task: Value = reply.json().await.unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["rankings"][0]["posting_id"], "p0");

    let polled: Value = client.get(format!("http://{addr}{location}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(polled, task);

    stop.send(()).unwrap();
    bounded("the server to stop", server).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_report_jobs_tasks_instances_and_the_high_water_mark() {
    let app = service(|c| c.tasks_high_water = 2).await;
    for mode in ["ada", "grace", "score-high"] {
        let reply =
            call(&app, Method::POST, "/jobs/match?wait=30s", Some(with_matcher(job(mode, 2), "misbehave"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(matchbox::app(app.clone()), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text =
        String::from_utf8(http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes().to_vec())
            .unwrap();
    for line in [
        r#"matchbox_jobs_total{outcome="completed"} 2"#,
        r#"matchbox_jobs_total{outcome="contract_violation"} 1"#,
        // Without tenants, the series by tenant and matcher are on /metrics too.
        r#"matchbox_tenant_jobs_total{tenant="default",matcher="misbehave",outcome="completed"} 2"#,
        r#"matchbox_tenant_jobs_total{tenant="default",matcher="misbehave",outcome="contract_violation"} 1"#,
        "matchbox_tasks 3",
        "matchbox_live_instances 0",
        "matchbox_jobs_in_flight 0",
        "matchbox_queue_depth 0",
        "matchbox_tasks_high_water 2",
        "matchbox_tasks_above_high_water 1",
        "matchbox_job_duration_seconds_count 3",
        r#"matchbox_tenant_job_duration_seconds_count{tenant="default",matcher="misbehave"} 3"#,
        "matchbox_instantiate_duration_seconds_count 3",
        "matchbox_tasks_expired_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no line '{line}' in:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ") && !l.ends_with(" 0")));
}

/// POSTs `body` (text, as sent) to `/jobs/match` with `Idempotency-Key: key`.
async fn submit_keyed(app: &Arc<Matchbox>, uri: &str, key: &str, body: String) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body))
        .unwrap();
    common::send(matchbox::app(app.clone()), request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_an_idempotency_key_gets_the_task_it_made() {
    let app = service(|_| {}).await;
    let body = job("ada", 3);
    let first = submit_keyed(&app, "/jobs/match?wait=30s", "order-41", body.to_string()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.headers["idempotent-replayed"], "false");
    let id = first.body["task_id"].as_str().unwrap().to_string();

    // The same job, spelled differently (pretty-printed, fields reordered),
    // quoted as the IETF draft writes the key: the same task, no new job.
    let respelled =
        serde_json::to_string_pretty(&json!({"postings": body["postings"], "candidate": body["candidate"]}));
    let retry = submit_keyed(&app, "/jobs/match", "\"order-41\"", respelled.unwrap()).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert_eq!(retry.body["task_id"], id.as_str());
    assert_eq!(retry.body["status"], "completed", "the task as it is now");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.headers[header::LOCATION], format!("/tasks/{id}").as_str());
    let waited = submit_keyed(&app, "/jobs/match?wait=5s", "order-41", body.to_string()).await;
    assert_eq!((waited.status, &waited.body), (StatusCode::OK, &first.body), "a waited replay is the ended task");
    assert_eq!(app.tasks_held().await.unwrap(), 1);

    // Another job under the key is refused, naming the task; nothing is made.
    let other = submit_keyed(&app, "/jobs/match", "order-41", job("grace", 3).to_string()).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.error_code(), "idempotency_key_reused");
    assert!(other.body["error"]["message"].as_str().unwrap().contains(&id), "{}", other.body);
    assert_eq!(app.tasks_held().await.unwrap(), 1);

    // Keys that are not 1 to 255 visible ASCII characters are refused.
    for bad in ["", "\"\"", "with space", "ünicode", &"k".repeat(256), "\"a\"b\""] {
        let reply = submit_keyed(&app, "/jobs/match", bad, body.to_string()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", reply.body);
        assert_eq!(reply.error_code(), "invalid_idempotency_key", "{bad:?}");
    }

    // Once its task is deleted, the key makes a new one.
    let deleted = call(&app, Method::DELETE, &format!("/tasks/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let anew = submit_keyed(&app, "/jobs/match", "order-41", job("grace", 3).to_string()).await;
    assert_eq!(anew.status, StatusCode::ACCEPTED);
    assert_ne!(anew.body["task_id"], id.as_str());
    assert_eq!(anew.headers["idempotent-replayed"], "false");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_submissions_with_one_key_make_one_task() {
    let app = service(|_| {}).await;
    let body = with_matcher(job("busy-300", 2), "misbehave").to_string();
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (app, body) = (app.clone(), body.clone());
        racers.spawn(async move { submit_keyed(&app, "/jobs/match", "nightly-2026-12-01", body).await });
    }
    let replies = racers.join_all().await;
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            r.body["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one task for one key: {ids:?}");
    let made = replies.iter().filter(|r| r.headers["idempotent-replayed"] == "false").count();
    assert_eq!(made, 1, "exactly one request made it");
    assert_eq!(app.tasks_held().await.unwrap(), 1);
    bounded("the one job to end", app.idle()).await;
    let id = ids.first().unwrap();
    let task = call(&app, Method::GET, &format!("/tasks/{id}"), None).await;
    assert_eq!(task.body["status"], "completed", "{}", task.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_answered_when_new_work_is_refused() {
    let app = service(|c| {
        c.workers = Some(1);
        c.queue = 1;
    })
    .await;
    let busy = |ms: u32| with_matcher(job(&format!("busy-{ms}"), 1), "misbehave").to_string();
    let first = submit_keyed(&app, "/jobs/match", "once", busy(60_000)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    bounded("the keyed job to start", app.live_instances().wait_for(|n| n == 1)).await;
    let filler = call(&app, Method::POST, "/jobs/match", Some(with_matcher(job("busy-60000", 1), "misbehave"))).await;
    assert_eq!(filler.status, StatusCode::ACCEPTED, "{}", filler.body);
    let refused = call(&app, Method::POST, "/jobs/match", Some(job("ada", 1))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "the queue is full: {}", refused.body);

    // The retry of an accepted job is not new work: it is answered.
    let retry = submit_keyed(&app, "/jobs/match", "once", busy(60_000)).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert_eq!(retry.body["task_id"], first.body["task_id"]);
    assert_eq!(retry.body["status"], "running");
    for id in [&first.body["task_id"], &filler.body["task_id"]] {
        call(&app, Method::DELETE, &format!("/tasks/{}", id.as_str().unwrap()), None).await;
    }
    bounded("the cancelled jobs to end", app.idle()).await;
}
