//! `matchbox serve` as a user runs it: a real process on its embedded
//! defaults, a real HTTP client, a real signal.

use matchbox_tests::Host;
use serde_json::{Value, json};

fn job() -> Value {
    json!({
        "candidate": {"id": "ada", "skills": [{"name": "Rust", "weight": 1.0}], "years_experience": 4, "remote_ok": true},
        "postings": [
            {"id": "bakery", "title": "Baker", "required_skills": ["baking"]},
            {"id": "infra", "title": "Rust engineer", "required_skills": ["rust"], "remote": true}
        ]
    })
}

#[tokio::test]
async fn serves_on_embedded_defaults_and_stops_on_sigterm() {
    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();

    let matchers: Value = client.get(host.url("/matchers")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        matchers["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["skills", "text"], "the built-in matchers are embedded");

    let reply = client.post(host.url("/jobs/match?wait=30s")).json(&job()).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let task: Value = reply.json().await.unwrap();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["rankings"][0]["posting_id"], "infra");

    let ready = client.get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let status = host.terminate().await.unwrap();
    assert!(status.success(), "matchbox exited with {status} after SIGTERM");
}
