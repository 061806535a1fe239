//! `GET /tasks/{id}/events` against a real server, read as a browser's
//! `EventSource` reads it: every status change is pushed, the end carries
//! the whole task and ends the stream, a reconnecting client misses
//! nothing, a deleted task says so, and an idle stream hears a heartbeat.

use matchbox_tests::Host;
use matchbox_tests::http::{EventStream, SseEvent, events, eventually, job, post, task_status, upload_misbehave};
use serde_json::Value;

async fn host_with_misbehave() -> (Host, reqwest::Client) {
    let host = Host::start(&["--workers", "1", "--job-timeout", "1m"]).await.unwrap();
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", None).await;
    (host, client)
}

async fn submit(client: &reqwest::Client, host: &Host, behaviour: &str) -> String {
    let (status, accepted) = post(client, host.url("/jobs/match"), None, &job("misbehave", behaviour)).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["task_id"].as_str().unwrap().to_string()
}

/// Waits until `host` runs the job of task `id`.
async fn running(client: &reqwest::Client, host: &Host, id: &str) {
    eventually("the job to start", async || task_status(client, host, id, None).await.as_deref() == Some("running"))
        .await;
}

fn names(events: &[SseEvent]) -> Vec<(&str, &str)> {
    events.iter().map(|e| (e.event.as_str(), e.id.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_pushed_and_the_end_carries_the_task() {
    let (host, client) = host_with_misbehave().await;
    // The one worker is busy, so the watched job is seen waiting first.
    let _blocker = submit(&client, &host, "busy-1000").await;
    let id = submit(&client, &host, "busy-300").await;
    let (seen, _) = events(&client, host.url(&format!("/tasks/{id}/events")), None).await;
    assert_eq!(names(&seen), [("pending", "1"), ("running", "2"), ("completed", "3")], "{seen:?}");
    let change: Value = serde_json::from_str(&seen[1].data).unwrap();
    assert_eq!((change["task_id"].as_str(), change["status"].as_str()), (Some(id.as_str()), Some("running")));
    let end: Value = serde_json::from_str(&seen[2].data).unwrap();
    assert_eq!(end["task_id"], id.as_str());
    assert_eq!(end["result"]["rankings"][0]["posting_id"], "p1", "the end is the whole task: {end}");

    // After the end, the stream is the end alone, whatever the client saw.
    for last in [None, Some("3"), Some("1")] {
        let (again, _) = events(&client, host.url(&format!("/tasks/{id}/events")), last).await;
        assert_eq!(names(&again), [("completed", "3")], "Last-Event-ID {last:?}");
        assert_eq!(again[0].data, seen[2].data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_client_gets_what_came_after_and_never_misses_the_end() {
    let (host, client) = host_with_misbehave().await;
    let id = submit(&client, &host, "busy-1500").await;
    running(&client, &host, &id).await;
    let url = host.url(&format!("/tasks/{id}/events"));
    let (from_start, from_running) =
        tokio::join!(events(&client, url.clone(), Some("1")), events(&client, url, Some("2")));
    assert_eq!(names(&from_start.0), [("running", "2"), ("completed", "3")]);
    assert_eq!(names(&from_running.0), [("completed", "3")], "a client that saw `running` gets the end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_deleted_while_watched_ends_its_stream_with_gone() {
    let (host, client) = host_with_misbehave().await;
    let id = submit(&client, &host, "busy-60000").await;
    running(&client, &host, &id).await;
    let mut stream = EventStream::open(&client, host.url(&format!("/tasks/{id}/events")), None).await;
    let first = stream.next().await.unwrap();
    assert_eq!((first.event.as_str(), first.id.as_str()), ("running", "2"));
    // The stream is open and following: now the task goes.
    let deleted = client.delete(host.url(&format!("/tasks/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let last = stream.next().await.unwrap();
    assert_eq!(last.event, "gone", "{last:?}");
    assert_eq!(stream.next().await, None, "the stream ends after `gone`");
    let body: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(body["error"]["code"], "task_not_found", "{body}");

    // A task that is not there is an error answer, not a stream.
    let unknown = client.get(host.url(&format!("/tasks/{id}/events"))).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = client.get(host.url("/tasks/not-an-id/events")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_hears_a_heartbeat() {
    let (host, client) = host_with_misbehave().await;
    // Longer than one heartbeat (15 s) without a change.
    let id = submit(&client, &host, "busy-16500").await;
    let (seen, comments) = events(&client, host.url(&format!("/tasks/{id}/events")), Some("2")).await;
    assert_eq!(names(&seen).last(), Some(&("completed", "3")));
    assert!(comments >= 1, "no heartbeat in 16 s: {seen:?}");
}
