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
        max_batch: 5,
        webhook_secret: Some(matchbox::webhooks::Secret::generate().unwrap()),
        // Port 9 on loopback: nothing answers, so deliveries stay pending.
        callback_allow: vec!["127.0.0.1".parse().unwrap()],
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
    assert_eq!(doc, matchbox::api::openapi(&app.http_limits()), "served as built");

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
    assert_eq!(operations, 15);
    for expected in [
        "/jobs/match",
        "/jobs/batch",
        "/tasks/{id}",
        "/tasks/{id}/events",
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
    let one: Value = serde_json::from_slice(&job("ada", 1)).unwrap();
    let batch = send(&app, "post", "/jobs/batch", json_body(json!({"jobs": [one]}).to_string().into_bytes())).await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.body);
    calls.push(("post", "/jobs/batch", batch));
    let over = json!({"jobs": [one, one, one, one, one, one]}).to_string().into_bytes();
    calls.push(("post", "/jobs/batch", send(&app, "post", "/jobs/batch", json_body(over)).await));
    let bad = json!({"jobs": [one, {"candidate": {"id": ""}, "postings": []}]}).to_string().into_bytes();
    let refused = send(&app, "post", "/jobs/batch", json_body(bad)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    calls.push(("post", "/jobs/batch", refused));
    let mut called_back: Value = serde_json::from_slice(&job("ada", 1)).unwrap();
    called_back["callback"] = json!({"url": "http://127.0.0.1:9/hook", "delete_after_delivery": false});
    let hooked = send(&app, "post", "/jobs/match?wait=30s", json_body(called_back.to_string().into_bytes())).await;
    assert_eq!(hooked.body["callback"]["url"], "http://127.0.0.1:9/hook", "{}", hooked.body);
    calls.push(("post", "/jobs/match", hooked));
    called_back["callback"]["url"] = json!("http://10.0.0.1/hook");
    let refused = send(&app, "post", "/jobs/match", json_body(called_back.to_string().into_bytes())).await;
    assert_eq!(refused.body["error"]["code"], "callback_refused", "{}", refused.body);
    calls.push(("post", "/jobs/match", refused));
    calls.push(("get", "/tasks/{id}", send(&app, "get", &format!("/tasks/{id}"), None).await));
    let stream = send(&app, "get", &format!("/tasks/{id}/events"), None).await;
    assert_eq!(stream.headers[header::CONTENT_TYPE], "text/event-stream");
    assert!(stream.body.as_str().unwrap().contains("event: failed\nid: 3\n"), "{}", stream.body);
    calls.push(("get", "/tasks/{id}/events", stream));
    let unknown = format!("/tasks/{}/events", uuid::Uuid::now_v7());
    calls.push(("get", "/tasks/{id}/events", send(&app, "get", &unknown, None).await));
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
    // So does a job's callback.
    let mut hooked =
        calls.iter().find(|(_, _, r)| r.body.get("callback").is_some()).expect("a task with a callback").2.body.clone();
    assert!(violations(&doc, task_schema.as_object().unwrap(), &hooked).is_empty(), "{hooked}");
    hooked["callback"]["state"] = json!("lost");
    assert!(!violations(&doc, task_schema.as_object().unwrap(), &hooked).is_empty());

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
        "get /tasks/{id}/events 200",
        "get /tasks/{id}/events 404",
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

/// Instances of the document's own schemas, as a document-driven fuzzer
/// makes them: every required property and some optional ones, lengths,
/// counts and numbers within the bounds the schema states, a schema's
/// `examples` where it gives some, and a random string checked against its
/// `pattern`. Seeded, so a failure is the same on every run.
struct Generator {
    doc: Value,
    state: u64,
}

impl Generator {
    fn new(doc: &Value, seed: u64) -> Self {
        Generator { doc: doc.clone(), state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A whole number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.next().is_multiple_of(2)
    }

    fn resolve(&self, schema: &Value) -> Value {
        match schema["$ref"].as_str() {
            Some(r) => self.resolve(&self.doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]),
            None => schema.clone(),
        }
    }

    fn value(&mut self, schema: &Value) -> Value {
        let schema = self.resolve(schema);
        for branches in ["oneOf", "anyOf"] {
            if let Some(options) = schema[branches].as_array() {
                let pick = options[self.between(0, options.len() as u64 - 1) as usize].clone();
                return self.value(&pick);
            }
        }
        if let Some(all) = schema["allOf"].as_array() {
            return self.value(&all[0]);
        }
        if let Some(values) = schema["enum"].as_array().or(schema["examples"].as_array()) {
            return values[self.between(0, values.len() as u64 - 1) as usize].clone();
        }
        let kind = match &schema["type"] {
            Value::Array(kinds) => {
                // A nullable field is given a value three times in four.
                let real: Vec<&Value> = kinds.iter().filter(|k| *k != "null").collect();
                if real.is_empty() || self.between(0, 3) == 0 {
                    "null".to_string()
                } else {
                    real[0].as_str().unwrap().into()
                }
            }
            Value::String(kind) => kind.clone(),
            _ => "object".into(),
        };
        let bound = |key: &str| schema[key].as_f64();
        match kind.as_str() {
            "null" => Value::Null,
            "boolean" => json!(self.coin()),
            "integer" => {
                let lo = bound("minimum").unwrap_or(0.0).max(0.0) as u64;
                let hi = bound("maximum").map_or(lo + 100_000, |h| h as u64);
                json!(self.between(lo, hi))
            }
            "number" => {
                let (lo, hi) = (bound("minimum").unwrap_or(0.0), bound("maximum").unwrap_or(1000.0));
                let x = lo + (hi - lo) * (self.between(0, 1000) as f64 / 1000.0);
                json!(x)
            }
            "string" => self.string(&schema),
            "array" => {
                let lo = schema["minItems"].as_u64().unwrap_or(0);
                let hi = schema["maxItems"].as_u64().unwrap_or(4).min(lo + 4);
                let n = self.between(lo, hi);
                Value::Array((0..n).map(|_| self.value(&schema["items"])).collect())
            }
            _ => {
                let required: Vec<String> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default();
                let mut object = serde_json::Map::new();
                for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                    if required.contains(name) || self.coin() {
                        object.insert(name.clone(), self.value(property));
                    }
                }
                Value::Object(object)
            }
        }
    }

    fn string(&mut self, schema: &Value) -> Value {
        if schema["format"] == "uuid" {
            return json!(uuid::Uuid::from_u64_pair(self.next(), self.next()).to_string());
        }
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
        let lo = schema["minLength"].as_u64().unwrap_or(0);
        let hi = schema["maxLength"].as_u64().unwrap_or(32).min(lo + 32);
        let n = self.between(lo, hi);
        let text: String =
            (0..n).map(|_| ALPHABET[self.between(0, ALPHABET.len() as u64 - 1) as usize] as char).collect();
        if let Some(pattern) = schema["pattern"].as_str() {
            let check = jsonschema::validator_for(&json!({"pattern": pattern})).unwrap();
            assert!(check.is_valid(&json!(text)), "the generator made {text:?}, which breaks {pattern}; give examples");
        }
        json!(text)
    }
}

/// The two rules JSON Schema cannot state, which the document states in
/// words: posting ids unique within a job, and `salary_min` at most
/// `salary_max`.
fn keep_the_rules_stated_in_words(job: &mut Value) {
    let mut seen = std::collections::HashSet::new();
    for (i, posting) in job["postings"].as_array_mut().unwrap().iter_mut().enumerate() {
        let id = posting["id"].as_str().unwrap().to_string();
        if !seen.insert(id.clone()) {
            posting["id"] = json!(format!("{}{i}", &id[..id.len().min(250)]));
        }
        if let (Some(lo), Some(hi)) = (posting["salary_min"].as_u64(), posting["salary_max"].as_u64())
            && lo > hi
        {
            (posting["salary_min"], posting["salary_max"]) = (json!(hi), json!(lo));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_generated_from_the_document_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let app = Matchbox::new(Config {
        workers: Some(2),
        max_postings: 6,
        data_dir: Some(dir.path().join("data")),
        cache_dir: Some(dir.path().join("cache")),
        // Generated jobs may ask for a callback to the document's example.
        webhook_secret: Some(matchbox::webhooks::Secret::generate().unwrap()),
        callback_allow: vec!["hooks.example.com".parse().unwrap()],
        ..Config::default()
    })
    .await
    .unwrap();
    let doc = document(&app).await;
    let mut generate = Generator::new(&doc, 0x6d61_7463_6862_6f78);
    let submit = &doc["paths"]["/jobs/match"]["post"];
    let body = &submit["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(generate.resolve(body)["properties"]["postings"]["maxItems"], 6, "the host's own cap is stated");
    for _ in 0..150 {
        let mut job = generate.value(body);
        keep_the_rules_stated_in_words(&mut job);
        let reply = send(&app, "post", "/jobs/match", Some(("application/json", job.to_string().into_bytes()))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "a generated job was refused: {}\n{job}", reply.body);
    }
    bounded("the generated jobs to end", app.idle()).await;

    // Task ids and waits as the document describes them: never a 400.
    let param = |operation: &Value, name: &str| {
        operation["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
    };
    let get_task = &doc["paths"]["/tasks/{id}"]["get"];
    let delete_task = &doc["paths"]["/tasks/{id}"]["delete"];
    for _ in 0..50 {
        let id = generate.value(&param(get_task, "id"));
        let wait = generate.value(&param(get_task, "wait"));
        let uri = format!("/tasks/{}?wait={}", id.as_str().unwrap(), wait.as_str().unwrap().replace(' ', "%20"));
        let read = send(&app, "get", &uri, None).await;
        assert!(matches!(read.status.as_u16(), 404 | 410), "GET {uri}: {} {}", read.status, read.body);
        let id = generate.value(&param(delete_task, "id"));
        let gone = send(&app, "delete", &format!("/tasks/{}", id.as_str().unwrap()), None).await;
        assert!(matches!(gone.status.as_u16(), 404 | 410), "DELETE {id}: {} {}", gone.status, gone.body);
    }

    // The document now refuses what the API refuses: an id over its cap,
    // a top_k of 0, a blank skill name.
    let schema = generate.resolve(body);
    let schema = schema.as_object().unwrap();
    let good = json!({"candidate": {"id": "ada"}, "postings": [{"id": "p"}]});
    assert!(violations(&doc, schema, &good).is_empty());
    for bad in [
        json!({"candidate": {"id": "a".repeat(257)}, "postings": [{"id": "p"}]}),
        json!({"candidate": {"id": "ada"}, "postings": [{"id": "p"}], "options": {"top_k": 0}}),
        json!({"candidate": {"id": "ada", "skills": [{"name": "  "}]}, "postings": [{"id": "p"}]}),
        json!({"candidate": {"id": "ada"}, "postings": []}),
    ] {
        assert!(!violations(&doc, schema, &bad).is_empty(), "the document lets {bad} through");
    }
}
