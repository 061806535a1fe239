//! One host and a Redis of the test's own, as real processes: the host
//! rides out an outage and a restart without losing an accepted task, and
//! neither it nor Redis keeps what a guest's huge messages would make it
//! keep. What several hosts guarantee is `deployment.rs`'s.

use std::time::Duration;

use matchbox_tests::http::{eventually, job, live_instances, post, upload_misbehave};
use matchbox_tests::{Host, RedisServer};
use serde_json::Value;

async fn on_redis(url: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--store", url];
    args.extend(extra);
    Host::start(&args).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_answers_503_and_service_comes_back_by_itself() {
    let mut redis = RedisServer::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stderr.log");
    let url = redis.url();
    let host = Host::start_logged(&["--store", &url], &[("RUST_LOG", "info")], Some(&log)).await.unwrap();
    let client = reqwest::Client::new();
    let submit =
        async || client.post(host.url("/jobs/match?wait=30s")).json(&job("skills", "ada")).send().await.unwrap();
    assert_eq!(submit().await.status(), 200);

    redis.kill();
    let ready = client.get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let refused = submit().await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("Redis"), "{body}");
    let read = client.get(host.url(&format!("/tasks/{}", uuid_now()))).send().await.unwrap();
    assert_eq!(read.status(), 503);
    assert_eq!(client.get(host.url("/healthz")).send().await.unwrap().status(), 200, "the process itself is fine");

    // Operators still see the host: what it knows without the store.
    let metrics = client.get(host.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("\nmatchbox_store_up 0\n"), "{metrics}");
    assert!(metrics.contains("\nprocess_resident_memory_bytes "), "{metrics}");
    assert!(metrics.contains("\nmatchbox_jobs_total{outcome=\"completed\"} 1\n"), "{metrics}");
    assert!(!metrics.contains("\nmatchbox_tasks "), "no count it cannot know: {metrics}");
    let status = client.get(host.url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert_eq!((&status["store_up"], &status["tasks"]), (&false.into(), &Value::Null), "{status}");
    assert!(status["resident_memory_bytes"].as_u64().unwrap() > 0);

    redis.restart().await.unwrap();
    eventually("the host to be ready again", async || {
        client.get(host.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(submit().await.status(), 200, "submissions work again without a restart");
    // One task: the one before the outage went with the Redis that held it.
    let metrics = client.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\nmatchbox_store_up 1\n") && metrics.contains("\nmatchbox_tasks 1\n"), "{metrics}");

    // The 503s it meant are no errors in its log.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.lines().any(|l| l.contains("ERROR") && l.contains("503")), "{log}");
}

fn uuid_now() -> String {
    // A version 7 UUID for now, so that "unknown" is 404 and not 410.
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    format!("{:08x}-{:04x}-7000-8000-000000000000", ms >> 16, ms & 0xffff)
}

/// Redis killed in the middle of a run and restarted from its append-only
/// file: every task that was answered 202 completes; the jobs whose
/// outcome could not be written while Redis was down are taken over.
#[tokio::test(flavor = "multi_thread")]
async fn no_accepted_task_is_lost_when_a_persistent_redis_restarts() {
    let mut redis = RedisServer::start_persistent().await.unwrap();
    let host = on_redis(&redis.url(), &["--job-timeout", "2s", "--workers", "1"]).await;
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", None).await;
    let mut accepted = Vec::new();
    for _ in 0..6 {
        let reply = client.post(host.url("/jobs/match")).json(&job("misbehave", "slow")).send().await.unwrap();
        assert_eq!(reply.status(), 202);
        let body: Value = reply.json().await.unwrap();
        accepted.push(body["task_id"].as_str().unwrap().to_string());
    }
    eventually("a job to be running", async || live_instances(&client, &host).await == 1).await;
    redis.kill();
    // Refused while Redis is down: nothing is accepted that is not stored.
    let refused = client.post(host.url("/jobs/match")).json(&job("skills", "ada")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    redis.restart().await.unwrap();

    for id in &accepted {
        eventually("every accepted task to complete", async || {
            let reply = client.get(host.url(&format!("/tasks/{id}"))).send().await.unwrap();
            if reply.status() != 200 {
                return false;
            }
            let task: Value = reply.json().await.unwrap();
            task["status"] == "completed"
        })
        .await;
    }
}

/// `used_memory` of a Redis, from `INFO memory`.
async fn redis_memory(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

/// A matcher that answers every job with a 50 MiB error message: the task
/// keeps 4 KiB of it, so over 200 such jobs neither the host's resident
/// memory nor Redis's grows with the messages (it would by 10 GB).
#[tokio::test(flavor = "multi_thread")]
async fn guest_messages_are_cut_before_the_host_or_redis_keeps_them() {
    let redis_server = RedisServer::start().await.unwrap();
    let host = on_redis(&redis_server.url(), &["--workers", "2"]).await;
    let client = reqwest::Client::new();
    let mut redis = redis::Client::open(redis_server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    upload_misbehave(&client, &host, "misbehave", None).await;
    let run = async |n: usize| {
        for _ in 0..n {
            let (_, done) =
                post(&client, host.url("/jobs/match?wait=60s"), None, &job("misbehave", "huge-error-50")).await;
            assert_eq!(done["error"]["kind"], "matcher_error", "{done}");
            let message = done["error"]["message"].as_str().unwrap();
            assert!(message.len() <= 4096 && message.ends_with("bytes cut)"), "{} bytes kept", message.len());
        }
    };
    // Warm up: the instance slots, the allocator's arenas, Redis's own.
    run(10).await;
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let (rss_before, redis_before) = (host.rss_bytes().unwrap(), redis_memory(&mut redis).await);
    run(200).await;
    settle().await;
    let (rss_after, redis_after) = (host.rss_bytes().unwrap(), redis_memory(&mut redis).await);
    eprintln!(
        "200 jobs of 50 MiB messages: host resident {rss_before} -> {rss_after} bytes, Redis used {redis_before} -> {redis_after} bytes"
    );
    assert!(rss_after < rss_before + (64 << 20), "the host kept the messages: {rss_before} -> {rss_after}");
    assert!(redis_after < redis_before + (4 << 20), "Redis kept the messages: {redis_before} -> {redis_after}");
}
