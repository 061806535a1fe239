//! Several tenants on one host: keys, isolation, quotas, fair scheduling,
//! per-tenant sandbox limits. Tenants are made the way an operator makes
//! them, with `matchbox tenant add`'s function, so the keys are real.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Reply, bounded};
use matchbox::tenants::file::{self, NewTenant};
use matchbox::{Config, Matchbox};
use serde_json::{Value, json};

struct Host {
    app: Arc<Matchbox>,
    /// Its data, cache and tenants file; dropped with the host.
    dir: tempfile::TempDir,
}

/// A host with the given tenants; returns it and each tenant's key.
async fn host(tenants: &[(&str, NewTenant)], configure: impl FnOnce(&mut Config)) -> (Host, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matchbox.toml");
    let mut config = base_config(&dir);
    configure(&mut config);
    // Checked against the host that will read the file, as an operator's
    // `tenant add` with the host's flags would be.
    let limits = file::HostFlags {
        max_memory: config.max_memory,
        job_timeout: config.job_timeout,
        max_tasks: config.max_tasks,
        matchers_dir: config.matchers_dir.clone(),
    };
    let keys = tenants.iter().map(|(name, quotas)| file::add(&path, name, quotas, &limits).unwrap().key).collect();
    let app = Matchbox::new(config).await.unwrap();
    (Host { app, dir }, keys)
}

fn base_config(dir: &tempfile::TempDir) -> Config {
    Config {
        workers: Some(2),
        tenants_file: Some(dir.path().join("matchbox.toml")),
        data_dir: Some(dir.path().join("data")),
        cache_dir: Some(dir.path().join("cache")),
        ..Config::default()
    }
}

async fn start(dir: &tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Arc<Matchbox> {
    let mut config = base_config(dir);
    configure(&mut config);
    Matchbox::new(config).await.unwrap()
}

async fn call(app: &Arc<Matchbox>, key: Option<&str>, method: Method, uri: &str, body: Option<Body>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = match body {
        Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(body),
        None => request.body(Body::empty()),
    };
    common::send(matchbox::app(app.clone()), request.unwrap()).await
}

fn job(matcher: &str, candidate: &str, postings: usize, description_bytes: usize) -> Body {
    let postings: Vec<Value> = (0..postings)
        .map(|i| {
            json!({"id": format!("p{i}"), "title": "Rust engineer", "required_skills": ["rust"],
                        "description": "x".repeat(description_bytes)})
        })
        .collect();
    let body =
        json!({"matcher": matcher, "candidate": {"id": candidate, "skills": [{"name": "rust"}]}, "postings": postings});
    Body::from(body.to_string())
}

async fn submit(app: &Arc<Matchbox>, key: &str, matcher: &str, candidate: &str) -> Reply {
    call(app, Some(key), Method::POST, "/jobs/match", Some(job(matcher, candidate, 1, 0))).await
}

fn task_id(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["task_id"].as_str().unwrap().to_string()
}

async fn upload(app: &Arc<Matchbox>, key: &str, name: &str, bytes: Vec<u8>) -> Reply {
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/matchers/{name}"))
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::from(bytes))
        .unwrap();
    common::send(matchbox::app(app.clone()), request).await
}

async fn wait_ended(app: &Arc<Matchbox>, key: &str, id: &str) -> Value {
    if let Some(done) = app.job_done(id.parse().unwrap()) {
        bounded("the job to end", done.cancelled()).await;
    }
    let reply = call(app, Some(key), Method::GET, &format!("/tasks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

fn names(reply: &Reply) -> Vec<String> {
    reply.body["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
}

fn misbehave() -> Vec<u8> {
    std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap()
}

fn builtin(name: &str) -> Vec<u8> {
    matchbox::registry::BUILTINS.iter().find(|(n, _)| *n == name).unwrap().1.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_required_and_checked() {
    let (host, keys) = host(&[("acme", NewTenant::default())], |_| {}).await;
    let app = &host.app;

    let missing = call(app, None, Method::GET, "/matchers", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_code(), "unauthorized");
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], r#"Bearer realm="matchbox""#);

    let wrong = call(app, Some("mbx_not-a-key"), Method::POST, "/jobs/match", Some(job("skills", "ada", 1, 0))).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers[header::WWW_AUTHENTICATE], r#"Bearer realm="matchbox", error="invalid_token""#);
    assert_eq!(app.tasks_held().await.unwrap(), 0, "nothing was accepted");

    let basic = Request::builder().uri("/matchers").header(header::AUTHORIZATION, "Basic YWNtZTpwdw==");
    let basic = common::send(matchbox::app(app.clone()), basic.body(Body::empty()).unwrap()).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert!(basic.headers[header::WWW_AUTHENTICATE].to_str().unwrap().contains("invalid_request"));

    for uri in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(app, None, Method::GET, uri, None).await.status, StatusCode::OK, "{uri} is for operators");
    }
    let ok = call(app, Some(&keys[0]), Method::POST, "/jobs/match?wait=30s", Some(job("skills", "ada", 2, 0))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_own_tasks_and_matchers() {
    let only_skills = NewTenant { matchers: Some(vec!["skills".into()]), ..NewTenant::default() };
    let (host, keys) = host(&[("a", NewTenant::default()), ("b", only_skills)], |_| {}).await;
    let (app, a, b) = (&host.app, keys[0].as_str(), keys[1].as_str());

    // What b is told about a matcher name and a pin before a has them...
    let b_get_before = call(app, Some(b), Method::GET, "/matchers/mine", None).await;
    let b_delete_before = call(app, Some(b), Method::DELETE, "/matchers/mine", None).await;
    let a_mine = upload(app, a, "mine", misbehave()).await;
    assert_eq!(a_mine.status, StatusCode::CREATED, "{}", a_mine.body);
    assert_eq!(a_mine.body["private"], true);
    let pin = format!("mine@{}", a_mine.body["digest"].as_str().unwrap());
    // ...is what b is told after: exactly as if they did not exist.
    let b_get_after = call(app, Some(b), Method::GET, "/matchers/mine", None).await;
    assert_eq!((b_get_after.status, &b_get_after.body), (b_get_before.status, &b_get_before.body));
    assert_eq!(b_get_after.status, StatusCode::NOT_FOUND);
    let b_pin = submit(app, b, &pin, "ada").await;
    assert_eq!((b_pin.status, b_pin.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_matcher"));
    assert_eq!(b_pin.body["error"]["message"], "no matcher named 'mine'");
    assert!(!names(&call(app, Some(b), Method::GET, "/matchers", None).await).contains(&"mine".to_string()));
    let b_delete_after = call(app, Some(b), Method::DELETE, "/matchers/mine", None).await;
    assert_eq!((b_delete_after.status, &b_delete_after.body), (b_delete_before.status, &b_delete_before.body));

    // b may upload a matcher of the same name: its own, not a's.
    let b_mine = upload(app, b, "mine", builtin("text")).await;
    assert_eq!(b_mine.status, StatusCode::CREATED, "{}", b_mine.body);
    assert_ne!(b_mine.body["digest"], a_mine.body["digest"]);
    let a_view = call(app, Some(a), Method::GET, "/matchers/mine", None).await;
    assert_eq!(a_view.body["digest"], a_mine.body["digest"], "a's upload is untouched");
    let ran = call(app, Some(b), Method::POST, "/jobs/match?wait=30s", Some(job("mine", "ada", 2, 0))).await;
    assert_eq!(ran.status, StatusCode::OK, "{}", ran.body);
    let ranked = call(app, Some(a), Method::POST, "/jobs/match?wait=30s", Some(job("mine", "score-high", 2, 0))).await;
    assert_eq!(ranked.body["error"]["kind"], "contract_violation", "a's 'mine' is still misbehave: {}", ranked.body);

    // Shared matchers: b may use skills only; a uses all.
    assert_eq!(names(&call(app, Some(a), Method::GET, "/matchers", None).await), ["mine", "skills", "text"]);
    assert_eq!(names(&call(app, Some(b), Method::GET, "/matchers", None).await), ["mine", "skills"]);
    assert_eq!(call(app, Some(b), Method::GET, "/matchers/text", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(submit(app, b, "text", "ada").await.error_code(), "unknown_matcher");
    let shadow = upload(app, b, "skills", builtin("text")).await;
    assert_eq!((shadow.status, shadow.error_code()), (StatusCode::CONFLICT, "read_only"));

    // Tasks: b cannot read or delete a's, and is told exactly what it is
    // told of a task that does not exist.
    let id = task_id(&submit(app, a, "skills", "ada").await);
    let b_get = call(app, Some(b), Method::GET, &format!("/tasks/{id}"), None).await;
    let b_delete = call(app, Some(b), Method::DELETE, &format!("/tasks/{id}"), None).await;
    assert_eq!(wait_ended(app, a, &id).await["status"], "completed", "b's delete changed nothing");
    assert_eq!(call(app, Some(a), Method::DELETE, &format!("/tasks/{id}"), None).await.status, StatusCode::NO_CONTENT);
    let unknown_get = call(app, Some(b), Method::GET, &format!("/tasks/{id}"), None).await;
    let unknown_delete = call(app, Some(b), Method::DELETE, &format!("/tasks/{id}"), None).await;
    assert_eq!((b_get.status, &b_get.body), (unknown_get.status, &unknown_get.body));
    assert_eq!((b_delete.status, &b_delete.body), (unknown_delete.status, &unknown_delete.body));
    assert_eq!(b_get.status, StatusCode::NOT_FOUND);

    // After a restart each private upload is back with its owner.
    let again = start(&host.dir, |_| {}).await;
    let a_again = call(&again, Some(a), Method::GET, "/matchers/mine", None).await;
    let b_again = call(&again, Some(b), Method::GET, "/matchers/mine", None).await;
    assert_eq!((&a_again.body["digest"], &b_again.body["digest"]), (&a_mine.body["digest"], &b_mine.body["digest"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_hold_a_tenant_back_and_no_one_else() {
    let held = NewTenant {
        pending_tasks: Some(2),
        concurrent_jobs: Some(1),
        deadline: Some("1h".into()),
        ..NewTenant::default()
    };
    // A tenant's deadline may not exceed the host's.
    let (host, keys) =
        host(&[("a", held), ("b", NewTenant::default())], |c| c.job_timeout = std::time::Duration::from_secs(3600))
            .await;
    let (app, a, b) = (&host.app, keys[0].as_str(), keys[1].as_str());
    for key in [a, b] {
        assert_eq!(upload(app, key, "misbehave", misbehave()).await.status, StatusCode::CREATED);
    }

    // a's first job runs (and sleeps); its second waits, as a may run one
    // job at a time, though a worker is free.
    let first = task_id(&submit(app, a, "misbehave", "sleep").await);
    bounded("a's first job to start", app.live_instances().wait_for(|n| n == 1)).await;
    let second = task_id(&submit(app, a, "misbehave", "sleep").await);
    let over = submit(app, a, "misbehave", "sleep").await;
    assert_eq!((over.status, over.error_code()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    assert_eq!(over.headers[header::RETRY_AFTER], "1");
    assert!(over.body["error"]["message"].as_str().unwrap().contains("tenant 'a' may have 2 jobs pending"));

    // b is not held back by a's quota, and its job takes the free worker.
    let b_job = call(app, Some(b), Method::POST, "/jobs/match?wait=30s", Some(job("misbehave", "ada", 1, 0))).await;
    assert_eq!(b_job.status, StatusCode::OK, "{}", b_job.body);
    let a_second = call(app, Some(a), Method::GET, &format!("/tasks/{second}"), None).await;
    assert_eq!(a_second.body["status"], "pending", "a's second job still waits for a's first");

    // Once a's first job ends, its second runs and a may submit again.
    let first_done = app.job_done(first.parse().unwrap()).unwrap();
    assert_eq!(
        call(app, Some(a), Method::DELETE, &format!("/tasks/{first}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    bounded("a's first job to end", first_done.cancelled()).await;
    bounded("a's second job to start", app.live_instances().wait_for(|n| n == 1)).await;
    let a_second = call(app, Some(a), Method::GET, &format!("/tasks/{second}"), None).await;
    assert_eq!(a_second.body["status"], "running");
    let third = task_id(&submit(app, a, "misbehave", "ada").await);
    assert_eq!(
        call(app, Some(a), Method::DELETE, &format!("/tasks/{second}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(wait_ended(app, a, &third).await["status"], "completed");
}

/// a floods the host; b's one job, submitted after, is not queued behind
/// the flood. Shown by order: when b's job has ended, all but at most two
/// of the a jobs that were waiting when b submitted are still waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_does_not_delay_another_tenants_job() {
    let (host, keys) = host(&[("a", NewTenant::default()), ("b", NewTenant::default())], |c| c.workers = Some(1)).await;
    let (app, a, b) = (&host.app, keys[0].as_str(), keys[1].as_str());
    assert_eq!(upload(app, a, "misbehave", misbehave()).await.status, StatusCode::CREATED);

    const FLOOD: usize = 30;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(task_id(&submit(app, a, "misbehave", "slow").await));
    }
    let counts = app.present().await.unwrap().tasks_by_status;
    let waiting_before = (counts.pending + counts.running) as usize;
    assert!(waiting_before >= FLOOD - 2, "the flood is queued ({waiting_before} of {FLOOD} pending)");

    let b_job = call(app, Some(b), Method::POST, "/jobs/match?wait=60s", Some(job("skills", "ada", 1, 0))).await;
    assert_eq!(b_job.status, StatusCode::OK, "{}", b_job.body);
    let mut still_waiting = 0;
    for id in &flood {
        let task = call(app, Some(a), Method::GET, &format!("/tasks/{id}"), None).await;
        if !["completed", "failed", "cancelled"].contains(&task.body["status"].as_str().unwrap()) {
            still_waiting += 1;
        }
    }
    eprintln!("b's job ended with {still_waiting} of the {waiting_before} a jobs that were waiting still waiting");
    assert!(
        still_waiting + 2 >= waiting_before,
        "b's job ended after {} of a's {waiting_before} waiting jobs; fair turns allow at most 2",
        waiting_before - still_waiting
    );
    for id in &flood {
        call(app, Some(a), Method::DELETE, &format!("/tasks/{id}"), None).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenants_memory_cap_applies_to_its_own_jobs() {
    let small = NewTenant { memory: Some("2MiB".into()), ..NewTenant::default() };
    let (host, keys) = host(&[("small", small), ("large", NewTenant::default())], |_| {}).await;
    let app = &host.app;
    // 600 postings of 8 KiB each: about 5 MiB copied into the guest.
    let big_job = || Some(job("skills", "ada", 600, 8 << 10));

    let small_job = call(app, Some(&keys[0]), Method::POST, "/jobs/match?wait=60s", big_job()).await;
    assert_eq!(small_job.status, StatusCode::OK, "{}", small_job.body);
    assert_eq!(small_job.body["status"], "failed");
    assert_eq!(small_job.body["error"]["kind"], "memory_limit", "{}", small_job.body);

    let large_job = call(app, Some(&keys[1]), Method::POST, "/jobs/match?wait=60s", big_job()).await;
    assert_eq!(large_job.body["status"], "completed", "{}", large_job.body);
    assert_eq!(large_job.body["result"]["rankings"].as_array().unwrap().len(), 10);
}

/// A tenant that fills its share of the table (finished tasks count until
/// they expire) is refused with 429, before its body is even read, while
/// another tenant's jobs are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_cannot_fill_the_table_for_everyone() {
    let capped = NewTenant { tasks: Some(3), ..NewTenant::default() };
    let (host, keys) = host(&[("a", capped), ("b", NewTenant::default())], |c| c.max_tasks = 10).await;
    let (app, a, b) = (&host.app, keys[0].as_str(), keys[1].as_str());
    for _ in 0..3 {
        let done = call(app, Some(a), Method::POST, "/jobs/match?wait=30s", Some(job("skills", "ada", 1, 0))).await;
        assert_eq!(done.body["status"], "completed", "{}", done.body);
    }
    let refused = submit(app, a, "skills", "ada").await;
    assert_eq!((refused.status, refused.error_code()), (StatusCode::TOO_MANY_REQUESTS, "tasks_quota_exceeded"));
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("tenant 'a' may hold 3 tasks, its quota"));
    // Refused before its body is read: a body that is not even JSON gets the
    // same 429, not a 400.
    let unread = call(app, Some(a), Method::POST, "/jobs/match", Some(Body::from("{not json"))).await;
    assert_eq!((unread.status, unread.error_code()), (StatusCode::TOO_MANY_REQUESTS, "tasks_quota_exceeded"));
    // b gets the rest of the table (7 of 10).
    for _ in 0..7 {
        task_id(&submit(app, b, "skills", "ada").await);
    }
    assert_eq!(submit(app, b, "skills", "ada").await.error_code(), "tasks_quota_exceeded");
    assert_eq!(app.tasks_held().await.unwrap(), 10);
}

async fn metrics_text(router: axum::Router) -> String {
    let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let reply = common::send(router, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body.as_str().unwrap().to_string()
}

/// On a host with tenants, the API's /metrics names no tenant and no
/// tenant's matcher; the operators' listener has those series, and drops a
/// matcher's series once the matcher is removed.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_name_tenants_only_to_operators() {
    let (host, keys) = host(&[("acme", NewTenant::default()), ("globex", NewTenant::default())], |_| {}).await;
    let (app, acme) = (&host.app, keys[0].as_str());
    assert_eq!(upload(app, acme, "secret-sauce", misbehave()).await.status, StatusCode::CREATED);
    let done =
        call(app, Some(acme), Method::POST, "/jobs/match?wait=30s", Some(job("secret-sauce", "ada", 1, 0))).await;
    assert_eq!(done.body["status"], "completed", "{}", done.body);

    let public = metrics_text(matchbox::app(app.clone())).await;
    assert!(public.contains("matchbox_jobs_total{outcome=\"completed\"} 1"), "{public}");
    for secret in ["acme", "globex", "secret-sauce", "tenant="] {
        assert!(!public.contains(secret), "the public /metrics names '{secret}':\n{public}");
    }
    let operator = metrics_text(matchbox::admin_app(app.clone())).await;
    let series = "matchbox_tenant_jobs_total{tenant=\"acme\",matcher=\"secret-sauce\",outcome=\"completed\"} 1";
    assert!(operator.contains(series), "{operator}");

    let removed = call(app, Some(acme), Method::DELETE, "/matchers/secret-sauce", None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let operator = metrics_text(matchbox::admin_app(app.clone())).await;
    assert!(!operator.contains("secret-sauce"), "a removed matcher's series stay:\n{operator}");
    assert!(operator.contains("matchbox_jobs_total{outcome=\"completed\"} 1"), "the totals stay");
}
