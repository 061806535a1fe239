//! `GET /openapi.json` against the router it describes: every operation in
//! the document is served, no method is served that the document leaves
//! out, and real responses, good and bad, validate against the document's
//! schemas for their status code.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Reply, bounded};
use matchbox::{Config, Matchbox};
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn service(dir: &tempfile::TempDir) -> Arc<Matchbox> {
    let config = Config {
        workers: Some(1),
        queue: 1,
        job_timeout: Duration::from_secs(3600),
        max_postings: 5,
        data_dir: Some(dir.path().join("data")),
        cache_dir: Some(dir.path().join("cache")),
        ..Config::default()
    };
    Matchbox::new(config).await.unwrap()
}

/// The document as served.
async fn document(app: &Arc<Matchbox>) -> Value {
    let reply = send(app, "get", "/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body["openapi"].as_str().unwrap().starts_with("3."), "an OpenAPI 3 document");
    reply.body
}

async fn send(app: &Arc<Matchbox>, method: &str, uri: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
    let mut request = Request::builder().method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap()).uri(uri);
    let body = match body {
        Some((content_type, bytes)) => {
            request = request.header(header::CONTENT_TYPE, content_type);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    common::send(matchbox::app(app.clone()), request.body(body).unwrap()).await
}

/// A concrete path for a template: a fresh task id, the default matcher.
fn concrete(template: &str) -> String {
    template.replace("{id}", &uuid::Uuid::now_v7().to_string()).replace("{name}", "skills")
}

fn is_fallback(reply: &Reply) -> bool {
    matches!(reply.body["error"]["code"].as_str(), Some("no_such_route" | "method_not_allowed"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let app = service(&dir).await;
    let doc = document(&app).await;
    assert_eq!(doc, serde_json::to_value(matchbox::api::openapi()).unwrap(), "served as built");

    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (template, item) in paths {
        for method in METHODS {
            // PUT of a built-in is refused (409) before anything is stored.
            let reply = send(&app, method, &concrete(template), None).await;
            if item.get(method).is_some() {
                operations += 1;
                assert!(!is_fallback(&reply), "{method} {template} is documented but not served: {}", reply.body);
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is served but not documented"
                );
            }
        }
    }
    assert_eq!(operations, 13);
    for expected in [
        "/jobs/match",
        "/tasks/{id}",
        "/matchers",
        "/matchers/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected} is missing");
    }
    let unknown = send(&app, "get", "/no/such/route", None).await;
    assert_eq!(unknown.error_code(), "no_such_route");
}

/// Checks `reply` to `method template` against the document: its status is
/// documented for that operation and its JSON body matches the schema.
fn check(doc: &Value, method: &str, template: &str, reply: &Reply) {
    let operation = &doc["paths"][template][method];
    assert!(operation.is_object(), "{method} {template} is not in the document");
    let status = reply.status.as_u16().to_string();
    let response = &operation["responses"][&status];
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the document does not list: {}",
        reply.body
    );
    let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
        return;
    };
    let errors = violations(doc, schema, &reply.body);
    assert!(errors.is_empty(), "{method} {template} {status} does not match its schema: {errors:?}\n{}", reply.body);
}

/// How `body` breaks `schema`, a schema of the document `doc`.
fn violations(doc: &Value, schema: &serde_json::Map<String, Value>, body: &Value) -> Vec<String> {
    // The whole document is the root, so the schema's $refs resolve.
    let mut root = doc.clone();
    root["allOf"] = json!([schema]);
    let validator = jsonschema::validator_for(&root).unwrap();
    validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path)).collect()
}

fn job(candidate: &str, postings: usize) -> Vec<u8> {
    let postings: Vec<Value> = (0..postings)
        .map(|i| json!({"id": format!("p{i}"), "title": "Rust engineer", "required_skills": ["rust"]}))
        .collect();
    json!({"candidate": {"id": candidate, "skills": [{"name": "rust"}]}, "postings": postings}).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_responses_validate_against_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let app = service(&dir).await;
    let doc = document(&app).await;
    let json_body = |bytes: Vec<u8>| Some(("application/json", bytes));
    let misbehave = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();

    // Matchers: upload, replace, read, list, refuse, remove.
    let mut calls: Vec<(&str, &str, Reply)> = Vec::new();
    calls.push((
        "put",
        "/matchers/{name}",
        send(&app, "put", "/matchers/mine", Some(("application/wasm", misbehave.clone()))).await,
    ));
    calls.push((
        "put",
        "/matchers/{name}",
        send(&app, "put", "/matchers/mine", Some(("application/wasm", misbehave))).await,
    ));
    calls.push((
        "put",
        "/matchers/{name}",
        send(&app, "put", "/matchers/skills", Some(("application/wasm", b"x".to_vec()))).await,
    ));
    calls.push((
        "put",
        "/matchers/{name}",
        send(&app, "put", "/matchers/Bad%20Name", Some(("application/wasm", b"x".to_vec()))).await,
    ));
    calls.push((
        "put",
        "/matchers/{name}",
        send(&app, "put", "/matchers/junk", Some(("application/wasm", b"not wasm".to_vec()))).await,
    ));
    calls.push(("get", "/matchers/{name}", send(&app, "get", "/matchers/mine", None).await));
    calls.push(("get", "/matchers/{name}", send(&app, "get", "/matchers/nothing", None).await));
    calls.push(("get", "/matchers", send(&app, "get", "/matchers", None).await));

    // Jobs and tasks: completed, failed, waited for, refused for every reason.
    let done = send(&app, "post", "/jobs/match?wait=30s", json_body(job("ada", 3))).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let failed =
        send(&app, "post", "/jobs/match?wait=30s", json_body(with_matcher(job("score-high", 2), "mine"))).await;
    assert_eq!(failed.body["status"], "failed");
    let id = failed.body["task_id"].as_str().unwrap().to_string();
    calls.push(("post", "/jobs/match", done));
    calls.push(("post", "/jobs/match", failed));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{id}"), None).await));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{id}?wait=5s"), None).await));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{id}?wait=soon"), None).await));
    let busy = send(&app, "post", "/jobs/match", json_body(with_matcher(job("loop", 1), "mine"))).await;
    bounded("the looping job to start", app.live_instances().wait_for(|n| n == 1)).await;
    let queued = send(&app, "post", "/jobs/match", json_body(job("ada", 1))).await;
    calls.push((
        "get",
        "/tasks/{id}",
        send(&app, "get", &format!("/tasks/{}", busy.body["task_id"].as_str().unwrap()), None).await,
    ));
    calls.push(("post", "/jobs/match", send(&app, "post", "/jobs/match", json_body(job("ada", 1))).await));
    calls.push(("get", "/readyz", send(&app, "get", "/readyz", None).await));
    calls.push(("get", "/status", send(&app, "get", "/status", None).await));
    for reply in [&busy, &queued] {
        let uri = format!("/tasks/{}", reply.body["task_id"].as_str().unwrap());
        calls.push(("delete", "/tasks/{id}", send(&app, "delete", &uri, None).await));
    }
    calls.push(("post", "/jobs/match", busy));
    // Bad requests are checked once the queue has room again (a full queue
    // is refused before the body is read).
    bounded("the cancelled jobs to end", app.idle()).await;
    calls.push(("post", "/jobs/match", send(&app, "post", "/jobs/match?wait=soon", json_body(job("ada", 1))).await));
    calls.push(("post", "/jobs/match", send(&app, "post", "/jobs/match", json_body(b"{".to_vec())).await));
    calls.push(("post", "/jobs/match", send(&app, "post", "/jobs/match", json_body(job("ada", 6))).await));
    calls.push(("post", "/jobs/match", send(&app, "post", "/jobs/match", Some(("text/plain", job("ada", 1)))).await));
    calls.push((
        "post",
        "/jobs/match",
        send(&app, "post", "/jobs/match", json_body(with_matcher(job("ada", 1), "nothing"))).await,
    ));
    let ancient = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_600_000_000, 0));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{ancient}"), None).await));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{}", uuid::Uuid::now_v7()), None).await));
    calls.push(("get", "/tasks/{id}", send(&app, "get", "/tasks/not-an-id", None).await));
    calls.push(("delete", "/matchers/{name}", send(&app, "delete", "/matchers/mine", None).await));
    calls.push(("delete", "/matchers/{name}", send(&app, "delete", "/matchers/mine", None).await));
    calls.push(("delete", "/matchers/{name}", send(&app, "delete", "/matchers/text", None).await));

    // Operations.
    for path in ["/healthz", "/metrics", "/", "/openapi.json"] {
        calls.push(("get", path, send(&app, "get", path, None).await));
    }

    // The check has teeth: a task with an unknown status, or without its
    // tenant, is refused.
    let task_schema = json!({"$ref": "#/components/schemas/Task"});
    let mut task =
        calls.iter().find(|(_, t, r)| *t == "/tasks/{id}" && r.status == StatusCode::OK).unwrap().2.body.clone();
    assert!(violations(&doc, task_schema.as_object().unwrap(), &task).is_empty());
    task["status"] = json!("exploded");
    assert!(!violations(&doc, task_schema.as_object().unwrap(), &task).is_empty());
    task["status"] = json!("completed");
    task.as_object_mut().unwrap().remove("tenant");
    assert!(!violations(&doc, task_schema.as_object().unwrap(), &task).is_empty());
    // A job on the caller's own upload carries its logs, documented too.
    let mut logged =
        calls.iter().find(|(_, _, r)| r.body.get("logs").is_some()).expect("a task with logs").2.body.clone();
    assert!(logged["logs"]["lines"].is_array(), "{logged}");
    assert!(violations(&doc, task_schema.as_object().unwrap(), &logged).is_empty());
    logged["logs"]["lines"] = json!([{"level": "loud", "message": "x"}]);
    assert!(!violations(&doc, task_schema.as_object().unwrap(), &logged).is_empty());

    // The long poll and the store's 503 are documented where they happen.
    let get_task = &doc["paths"]["/tasks/{id}"]["get"];
    assert!(get_task["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "wait" && p["in"] == "query"));
    for method in ["get", "delete"] {
        assert!(doc["paths"]["/tasks/{id}"][method]["responses"]["503"].is_object(), "{method} /tasks/{{id}} 503");
    }

    let mut seen = std::collections::BTreeSet::new();
    for (method, template, reply) in &calls {
        check(&doc, method, template, reply);
        seen.insert(format!("{method} {template} {}", reply.status.as_u16()));
    }
    for expected in [
        "post /jobs/match 200",
        "post /jobs/match 202",
        "post /jobs/match 400",
        "post /jobs/match 413",
        "post /jobs/match 415",
        "post /jobs/match 422",
        "post /jobs/match 429",
        "get /tasks/{id} 200",
        "get /tasks/{id} 400",
        "get /tasks/{id} 404",
        "get /tasks/{id} 410",
        "delete /tasks/{id} 204",
        "put /matchers/{name} 201",
        "put /matchers/{name} 200",
        "put /matchers/{name} 400",
        "put /matchers/{name} 409",
        "put /matchers/{name} 422",
        "delete /matchers/{name} 204",
        "delete /matchers/{name} 404",
        "delete /matchers/{name} 409",
        "get /status 200",
        "get /readyz 200",
    ] {
        assert!(seen.contains(expected), "the scenario never produced {expected}; it produced {seen:?}");
    }
}

fn with_matcher(body: Vec<u8>, matcher: &str) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&body).unwrap();
    value["matcher"] = json!(matcher);
    value.to_string().into_bytes()
}
