//! Graceful shutdown with a real process and a real signal: after SIGTERM a
//! job already accepted still finishes and its client gets the result, new
//! submissions get 503, readiness fails, and the process exits cleanly.

use std::time::Duration;

use matchbox_tests::Host;
use serde_json::{Value, json};

fn job(mode: &str) -> Value {
    json!({
        "matcher": "misbehave",
        "candidate": {"id": mode},
        "postings": [{"id": "p1", "title": "Rust engineer"}]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_accepted_jobs_and_refuses_new_ones() {
    let host = Host::start(&["--drain-timeout", "30s"]).await.unwrap();
    let client = reqwest::Client::new();
    let bytes = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    let uploaded = client.put(host.url("/matchers/misbehave")).body(bytes).send().await.unwrap();
    assert_eq!(uploaded.status(), 201);

    // A job of about 300 ms, whose client waits for the result...
    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), host.url("/jobs/match?wait=30s"));
        async move { client.post(url).json(&job("slow")).send().await.unwrap() }
    });
    let readyz = host.url("/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client.get(&readyz).send().await.unwrap().json().await.unwrap();
        if body["live_instances"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never started");
        tokio::task::yield_now().await;
    }

    // ...is running when the signal arrives.
    let pid = host.pid();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    loop {
        let ready = client.get(&readyz).send().await.unwrap();
        if ready.status() == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readiness never failed after SIGTERM");
        tokio::task::yield_now().await;
    }
    let refused = client.post(host.url("/jobs/match")).json(&job("honest")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");

    let finished = waiting.await.unwrap();
    assert_eq!(finished.status(), 200);
    let task: Value = finished.json().await.unwrap();
    assert_eq!(task["status"], "completed", "{task}");

    let status = host.terminate().await.unwrap();
    assert!(status.success(), "matchbox exited with {status}");
}
