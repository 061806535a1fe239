//! Hosts on a Redis task store, as real processes: two hosts sharing one
//! table, and a host riding out a Redis outage. Tests on the shared Redis
//! (127.0.0.1:6379) use a key prefix of their own; the outage test starts a
//! Redis of its own.

use std::time::Duration;

use matchbox_tests::{Host, RedisServer};
use serde_json::{Value, json};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn prefix() -> String {
    format!("matchbox-e2e-{}-{}", std::process::id(), matchbox_tests::free_port())
}

async fn on_redis(url: &str, prefix: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--store", url, "--redis-prefix", prefix];
    args.extend(extra);
    Host::start(&args).await.unwrap()
}

fn job(matcher: &str, candidate: &str) -> Value {
    json!({
        "matcher": matcher,
        "candidate": {"id": candidate, "skills": [{"name": "rust"}]},
        "postings": [{"id": "p1", "title": "Rust engineer", "required_skills": ["rust"]}]
    })
}

async fn upload_misbehave(client: &reqwest::Client, host: &Host) {
    let misbehave = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    assert_eq!(client.put(host.url("/matchers/misbehave")).body(misbehave).send().await.unwrap().status(), 201);
}

/// POSTs `body` to `url` and reads the JSON answer.
async fn post(client: &reqwest::Client, url: String, body: &Value) -> Value {
    client.post(url).json(body).send().await.unwrap().json().await.unwrap()
}

/// Polls `f` until it holds, for at most 30 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn live_instances(client: &reqwest::Client, host: &Host) -> u64 {
    let status: Value = client.get(host.url("/status")).send().await.unwrap().json().await.unwrap();
    status["live_instances"].as_u64().unwrap()
}

/// Jobs that ended on `host`, from its metrics.
async fn jobs_run(client: &reqwest::Client, host: &Host) -> u64 {
    let text = client.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("matchbox_jobs_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_on_one_redis_share_tasks_jobs_and_matchers() {
    let prefix = prefix();
    let hosts = [
        on_redis(SHARED_REDIS, &prefix, &["--workers", "1"]).await,
        on_redis(SHARED_REDIS, &prefix, &["--workers", "1"]).await,
    ];
    let [a, b] = &hosts;
    let client = reqwest::Client::new();

    // Submitted on a, read on b.
    let done: Value = post(&client, a.url("/jobs/match?wait=30s"), &job("skills", "ada")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["task_id"].as_str().unwrap();
    let read: Value = client.get(b.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(read, done, "b serves the task a wrote");

    // A matcher uploaded on b runs for jobs submitted on a, on either host.
    upload_misbehave(&client, b).await;
    let ran: Value = post(&client, a.url("/jobs/match?wait=30s"), &job("misbehave", "ada")).await;
    assert_eq!(ran["status"], "completed", "{ran}");

    // Jobs submitted on one host run on both.
    let before = [jobs_run(&client, a).await, jobs_run(&client, b).await];
    let mut ids = Vec::new();
    for _ in 0..12 {
        let accepted: Value = post(&client, a.url("/jobs/match"), &job("misbehave", "slow")).await;
        ids.push(accepted["task_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        eventually("the slow jobs to complete", async || {
            let task: Value = client.get(b.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
            task["status"] == "completed"
        })
        .await;
    }
    let ran = [jobs_run(&client, a).await - before[0], jobs_run(&client, b).await - before[1]];
    assert_eq!(ran[0] + ran[1], 12);
    assert!(ran[0] > 0 && ran[1] > 0, "both hosts ran some of the jobs: {ran:?}");

    // Deleted through the host that is not running it: the other stops it.
    let running: Value = post(&client, a.url("/jobs/match"), &job("misbehave", "loop")).await;
    let id = running["task_id"].as_str().unwrap();
    let mut runner = 0;
    eventually("the job to start on a host", async || {
        for (i, host) in hosts.iter().enumerate() {
            if live_instances(&client, host).await == 1 {
                runner = i;
                return true;
            }
        }
        false
    })
    .await;
    let other = &hosts[1 - runner];
    assert_eq!(client.delete(other.url(&format!("/tasks/{id}"))).send().await.unwrap().status(), 204);
    eventually("the running host to stop the deleted job", async || live_instances(&client, &hosts[runner]).await == 0)
        .await;
    assert_eq!(client.get(hosts[runner].url(&format!("/tasks/{id}"))).send().await.unwrap().status(), 404);

    let counts: Value = client.get(b.url("/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counts["tasks"]["completed"], 14, "one table, counted from either host: {counts}");
}

/// Uploads `misbehave` to `host`, submits a job that computes for 1.5 s,
/// and returns its task id once the job is running there.
async fn start_busy_job(client: &reqwest::Client, host: &Host) -> String {
    upload_misbehave(client, host).await;
    let reply = client.post(host.url("/jobs/match")).json(&job("misbehave", "busy-1500")).send().await.unwrap();
    let accepted: Value = reply.json().await.unwrap();
    eventually("the job to start", async || live_instances(client, host).await == 1).await;
    accepted["task_id"].as_str().unwrap().to_string()
}

/// A host killed in the middle of a job: another host takes the job over
/// once the claim period (deadline + grace) has passed, and completes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_host_dies_is_completed_by_another() {
    let prefix = prefix();
    let flags = ["--job-timeout", "3s", "--workers", "1"];
    let doomed = on_redis(SHARED_REDIS, &prefix, &flags).await;
    let client = reqwest::Client::new();
    let id = start_busy_job(&client, &doomed).await;
    drop(doomed); // SIGKILL, mid-job

    let survivor = on_redis(SHARED_REDIS, &prefix, &flags).await;
    let task: Value = client.get(survivor.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(task["status"], "running", "the dead host's job is still marked running: {task}");
    eventually("the survivor to complete the job", async || {
        let task: Value = client.get(survivor.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
        task["status"] == "completed"
    })
    .await;
    assert_eq!(jobs_run(&client, &survivor).await, 1, "the survivor ran it");
    let metrics = client.get(survivor.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "matchbox_jobs_taken_over_total 1"), "{metrics}");
}

/// A job runs on whichever host took it; when its task's time to live
/// lapses in Redis, that host stops it, and the task is gone on both.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_task_expires_in_redis_is_stopped() {
    let prefix = prefix();
    let flags = ["--task-ttl", "2s", "--job-timeout", "1h"];
    let hosts = [on_redis(SHARED_REDIS, &prefix, &flags).await, on_redis(SHARED_REDIS, &prefix, &flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0]).await;
    let running: Value = post(&client, hosts[0].url("/jobs/match"), &job("misbehave", "loop")).await;
    let id = running["task_id"].as_str().unwrap();
    let live = async || live_instances(&client, &hosts[0]).await + live_instances(&client, &hosts[1]).await;
    eventually("the job to start on a host", async || live().await == 1).await;
    // Redis deletes the key after 2 s; the host running the job notices.
    eventually("the expired task's job to stop", async || live().await == 0).await;
    for host in &hosts {
        let gone = client.get(host.url(&format!("/tasks/{id}"))).send().await.unwrap().status();
        assert_eq!(gone, 410, "the task expired");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_answers_503_and_service_comes_back_by_itself() {
    let mut redis = RedisServer::start().await.unwrap();
    let host = on_redis(&redis.url(), "matchbox", &[]).await;
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

    redis.restart().await.unwrap();
    eventually("the host to be ready again", async || {
        client.get(host.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(submit().await.status(), 200, "submissions work again without a restart");
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
    let host = on_redis(&redis.url(), "matchbox", &["--job-timeout", "2s", "--workers", "1"]).await;
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host).await;
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

/// SIGTERM while a shared job runs past the drain timeout: the host hands
/// the job back instead of cancelling its task, and another host runs it.
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_host_hands_its_unfinished_jobs_back() {
    let prefix = prefix();
    let flags = ["--job-timeout", "3s", "--workers", "1", "--drain-timeout", "200ms"];
    let leaving = on_redis(SHARED_REDIS, &prefix, &flags).await;
    let client = reqwest::Client::new();
    let id = start_busy_job(&client, &leaving).await;
    let staying = on_redis(SHARED_REDIS, &prefix, &flags).await;
    assert!(leaving.terminate().await.unwrap().success());

    let task: Value = client.get(staying.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(task["status"], "running", "handed back, not cancelled: {task}");
    eventually("the other host to complete the job", async || {
        let task: Value = client.get(staying.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
        task["status"] == "completed"
    })
    .await;
}

/// Whether the bytes of component `digest` are kept in Redis under `prefix`.
async fn component_kept(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    let kept: i64 = redis::cmd("EXISTS").arg(format!("{{{prefix}:c:{hex}}}:bytes")).query_async(redis).await.unwrap();
    kept == 1
}

/// `misbehave`'s bytes with a custom section named `tag`: another digest,
/// the same matcher.
fn misbehave_tagged(tag: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    bytes.extend_from_slice(&[0, 2, 1, tag]);
    bytes
}

/// Component bytes kept in Redis live exactly as long as a name means them
/// or an accepted job needs them: replaced on one host, removed on the
/// other, and kept for a job that was running on the old one.
#[tokio::test(flavor = "multi_thread")]
async fn component_bytes_in_redis_go_when_nothing_needs_them() {
    let prefix = prefix();
    let hosts = [on_redis(SHARED_REDIS, &prefix, &[]).await, on_redis(SHARED_REDIS, &prefix, &[]).await];
    let [a, b] = &hosts;
    let client = reqwest::Client::new();
    let mut redis = redis::Client::open(SHARED_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap();
    let put = async |host: &Host, bytes: Vec<u8>| -> String {
        let reply = client.put(host.url("/matchers/m")).body(bytes).send().await.unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
        let body: Value = reply.json().await.unwrap();
        body["digest"].as_str().unwrap().to_string()
    };

    let first = put(a, misbehave_tagged(b'1')).await;
    assert!(component_kept(&mut redis, &prefix, &first).await);
    let second = put(b, misbehave_tagged(b'2')).await;
    assert!(!component_kept(&mut redis, &prefix, &first).await, "replaced, and no job needs it");
    assert!(component_kept(&mut redis, &prefix, &second).await);

    // A job runs on the second; the name moves on while it runs.
    let busy: Value = post(&client, a.url("/jobs/match"), &job("m", "busy-1500")).await;
    let id = busy["task_id"].as_str().unwrap().to_string();
    eventually("the job to start", async || live_instances(&client, a).await + live_instances(&client, b).await == 1)
        .await;
    let third = put(b, misbehave_tagged(b'3')).await;
    assert!(component_kept(&mut redis, &prefix, &second).await, "the running job still needs it");
    eventually("the job to complete", async || {
        let task: Value = client.get(a.url(&format!("/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
        task["status"] == "completed"
    })
    .await;
    eventually("the job's component to go", async || !component_kept(&mut redis, &prefix, &second).await).await;

    assert_eq!(client.delete(a.url("/matchers/m")).send().await.unwrap().status(), 204);
    assert!(!component_kept(&mut redis, &prefix, &third).await, "removed, and no job needs it");
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
    let host = on_redis(&redis_server.url(), "matchbox", &["--workers", "2"]).await;
    let client = reqwest::Client::new();
    let mut redis = redis::Client::open(redis_server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    upload_misbehave(&client, &host).await;
    let run = async |n: usize| {
        for _ in 0..n {
            let done = post(&client, host.url("/jobs/match?wait=60s"), &job("misbehave", "huge-error-50")).await;
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
