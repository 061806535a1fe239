//! What tests ask of a running host over HTTP, and how they wait for it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Host;

/// How long any one wait in a test may take before the test fails.
pub const BOUND: Duration = Duration::from_secs(60);

/// Polls `f` until it holds, for at most [`BOUND`].
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job for `matcher` whose candidate id picks `misbehave`'s behaviour.
pub fn job(matcher: &str, candidate: &str) -> Value {
    json!({
        "matcher": matcher,
        "candidate": {"id": candidate, "skills": [{"name": "rust"}]},
        "postings": [{"id": "p1", "title": "Rust engineer", "required_skills": ["rust"]}]
    })
}

/// POSTs `body` to `url` (with `key` as the bearer, if any) and reads the
/// JSON answer.
pub async fn post(client: &reqwest::Client, url: String, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// GETs `url` and reads the JSON answer.
pub async fn get(client: &reqwest::Client, url: String, key: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Uploads `misbehave` to `host` as `name` (with `key`, if any).
pub async fn upload_misbehave(client: &reqwest::Client, host: &Host, name: &str, key: Option<&str>) {
    let misbehave = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    let mut request = client.put(host.url(&format!("/matchers/{name}"))).body(misbehave);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let status = request.send().await.unwrap().status();
    assert!(status.is_success(), "uploading misbehave: {status}");
}

/// The sum of the samples of `metric` (a counter or gauge, all labels) in
/// `host`'s public /metrics.
pub async fn metric(client: &reqwest::Client, host: &Host, metric: &str) -> u64 {
    let text = client.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// Jobs that ended on `host`, from its metrics.
pub async fn jobs_run(client: &reqwest::Client, host: &Host) -> u64 {
    metric(client, host, "matchbox_jobs_total").await
}

/// Matcher instances alive on `host` right now.
pub async fn live_instances(client: &reqwest::Client, host: &Host) -> u64 {
    let (_, status) = get(client, host.url("/status"), None).await;
    status["live_instances"].as_u64().unwrap()
}

/// The status of task `id` as `host` reads it (`None` if not found).
pub async fn task_status(client: &reqwest::Client, host: &Host, id: &str, key: Option<&str>) -> Option<String> {
    let (status, task) = get(client, host.url(&format!("/tasks/{id}")), key).await;
    (status == 200).then(|| task["status"].as_str().unwrap().to_string())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

/// An open event stream, read event by event.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// Comments (heartbeats) read so far.
    pub comments: usize,
}

impl EventStream {
    /// Opens the event stream at `url`, sending `Last-Event-ID: last` if
    /// given; fails unless the server answers a stream.
    pub async fn open(client: &reqwest::Client, url: String, last: Option<&str>) -> EventStream {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventStream { response, buffer: String::new(), comments: 0 }
    }

    /// The next event, or `None` once the server has ended the stream.
    /// Fails if neither comes within [`BOUND`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(BOUND, self.read()).await.expect("the event stream went quiet")
    }

    async fn read(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                        match field {
                            "event" => event.event = value,
                            "id" => event.id = value,
                            "data" => event.data.push_str(&value),
                            _ => {}
                        }
                    }
                }
                if !event.event.is_empty() || !event.data.is_empty() {
                    return Some(event);
                }
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Reads the event stream at `url` (sending `Last-Event-ID: last`, if
/// given) until the server ends it: its events, and how many comments
/// (heartbeats) came with them.
pub async fn events(client: &reqwest::Client, url: String, last: Option<&str>) -> (Vec<SseEvent>, usize) {
    let mut stream = EventStream::open(client, url, last).await;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    (events, stream.comments)
}
