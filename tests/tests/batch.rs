//! `POST /jobs/batch` against a real server: every job its own task with
//! its own matcher, options and callback, answered in order; admission is
//! all or nothing, so a batch the tenant's quota, the queue or a check
//! refuses leaves nothing behind; `matchbox submit --batch` submits a file
//! of jobs and sums them up.

use matchbox::tenants::file::{self, NewTenant};
use matchbox_tests::http::{BOUND, eventually, get, job, post, upload_misbehave};
use matchbox_tests::webhooks::{Answer, WebhookReceiver};
use matchbox_tests::{Host, binary};
use serde_json::{Value, json};

fn batch(jobs: Vec<Value>) -> Value {
    json!({ "jobs": jobs })
}

async fn held(client: &reqwest::Client, host: &Host) -> u64 {
    let (_, status) = get(client, host.url("/status"), None).await;
    status["tasks"]["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_makes_a_task_per_job_in_order() {
    let secret = matchbox::webhooks::Secret::generate().unwrap().expose();
    let receiver = WebhookReceiver::start(&secret, |_, _| Answer::Status(200)).await;
    let host = Host::start(&["--webhook-secret", &secret, "--callback-allow", "127.0.0.1"]).await.unwrap();
    let client = reqwest::Client::new();
    let mut called_back = job("skills", "c3");
    called_back["callback"] = json!({"url": receiver.url("/batch")});
    let mut top_one = job("text", "c2");
    top_one["options"] = json!({"top_k": 1});
    let (status, accepted) =
        post(&client, host.url("/jobs/batch"), None, &batch(vec![job("skills", "c1"), top_one, called_back])).await;
    assert_eq!(status, 202, "{accepted}");
    let tasks = accepted["tasks"].as_array().unwrap();
    let matchers: Vec<&str> = tasks.iter().map(|t| t["matcher"].as_str().unwrap()).collect();
    assert_eq!(matchers, ["skills", "text", "skills"], "in the order of the jobs");
    let ids: Vec<&str> = tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    for id in &ids {
        let (status, task) = get(&client, host.url(&format!("/tasks/{id}?wait=30s")), None).await;
        assert_eq!((status, task["status"].as_str()), (200, Some("completed")), "{task}");
    }
    let delivered = receiver.wait_for(1, BOUND).await;
    assert_eq!(delivered.len(), 1, "only the job that asked is called back");
    assert_eq!(delivered[0].id, ids[2]);
    let (_, first) = get(&client, host.url(&format!("/tasks/{}", ids[0])), None).await;
    assert!(first.get("callback").is_none(), "{first}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_refused_whole_and_leaves_nothing() {
    let host =
        Host::start(&["--workers", "1", "--queue", "4", "--max-batch", "6", "--job-timeout", "1m"]).await.unwrap();
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", None).await;
    let jobs = |n: usize| (0..n).map(|i| job("skills", &format!("c{i}"))).collect::<Vec<_>>();

    // A job the checks refuse, named by its place; a matcher unknown.
    let mut bad = jobs(3);
    bad[2]["options"] = json!({"top_k": 0});
    let (status, body) = post(&client, host.url("/jobs/batch"), None, &batch(bad)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("jobs[2]: options.top_k"), "{body}");
    let mut unknown = jobs(3);
    unknown[1]["matcher"] = json!("nothing-here");
    let (status, body) = post(&client, host.url("/jobs/batch"), None, &batch(unknown)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("unknown_matcher")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("jobs[1]: "), "{body}");
    let (status, body) = post(&client, host.url("/jobs/batch"), None, &batch(jobs(7))).await;
    assert_eq!(status, 413, "over --max-batch: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-batch"), "{body}");
    let (status, _) = post(&client, host.url("/jobs/batch"), None, &batch(vec![])).await;
    assert_eq!(status, 422);
    let keyed = client
        .post(host.url("/jobs/batch"))
        .header("idempotency-key", "k1")
        .json(&batch(jobs(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 400);
    assert_eq!(held(&client, &host).await, 0, "nothing of a refused batch is kept");

    // The queue: one job running, four places; five more do not fit.
    let (status, _) = post(&client, host.url("/jobs/match"), None, &job("misbehave", "busy-3000")).await;
    assert_eq!(status, 202);
    eventually("the busy job to start", async || {
        let (_, status) = get(&client, host.url("/status"), None).await;
        status["jobs_in_flight"] == 1 && status["queued"] == 0
    })
    .await;
    let (status, body) = post(&client, host.url("/jobs/batch"), None, &batch(jobs(5))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("queue_full")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("admitted whole"), "{body}");
    assert_eq!(held(&client, &host).await, 1, "only the busy job's task");
    let (status, body) = post(&client, host.url("/jobs/batch"), None, &batch(jobs(4))).await;
    assert_eq!(status, 202, "four fit: {body}");
    assert_eq!(held(&client, &host).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_the_tenants_quota_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matchbox.toml");
    let quota = NewTenant { pending_tasks: Some(4), ..NewTenant::default() };
    let key = file::add(&path, "acme", &quota, &file::HostFlags::default()).unwrap().key;
    let host =
        Host::start(&["--config", path.to_str().unwrap(), "--workers", "1", "--job-timeout", "1m"]).await.unwrap();
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", Some(&key)).await;
    let busy = |n: usize| (0..n).map(|_| job("misbehave", "busy-5000")).collect::<Vec<_>>();
    let (status, body) = post(&client, host.url("/jobs/batch"), Some(&key), &batch(busy(3))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(&client, host.url("/jobs/batch"), Some(&key), &batch(busy(2))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "3 open and 2 more: {body}");
    let (_, status) = get(&client, host.url("/status"), None).await;
    assert_eq!(status["tasks"]["total"], 3, "nothing of the refused batch: {status}");
    let (status, body) = post(&client, host.url("/jobs/batch"), Some(&key), &batch(busy(1))).await;
    assert_eq!(status, 202, "one more fits: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_batch_sends_a_file_of_jobs_and_sums_them_up() {
    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let mut lines: Vec<String> = (0..5).map(|i| job("skills", &format!("c{i}")).to_string()).collect();
    lines.push(String::new());
    lines.push(job("misbehave", "panic").to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(binary())
            .args([
                "submit",
                "--batch",
                file.to_str().unwrap(),
                "--batch-size",
                "2",
                "--server",
                &format!("http://{}", host.addr),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one job failed: {stdout}{stderr}");
    assert!(stdout.lines().last().unwrap().contains("6 jobs: 5 completed, 1 failed"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains(" completed ")).count(), 5, "{stdout}");
    assert!(stdout.contains("(trap)"), "{stdout}");
    assert!(stderr.contains("6/6 ended"), "the progress is shown: {stderr}");

    let out = run(&["--json"]);
    let tasks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 6);
    assert_eq!(tasks[5]["status"], "failed");
    // Three requests of at most two jobs each, twice.
    let (_, status) = get(&client, host.url("/status"), None).await;
    assert_eq!(status["tasks"]["total"], 12);

    std::fs::write(&file, "{\"candidate\": \n").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(4), "a bad line is the file's fault");
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs.jsonl:1"), "{}", String::from_utf8_lossy(&out.stderr));
}
