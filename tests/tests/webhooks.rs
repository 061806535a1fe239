//! Completion webhooks against a real server and a real receiver: every end
//! (completed, failed, cancelled) is POSTed signed as Standard Webhooks
//! says, retried after a 5xx with the same `webhook-id`, given up on after a
//! final 4xx or the attempts allowed, shown on the task; a callback to the
//! operator's network is refused unless the operator allows it; a task can
//! ask to be deleted once delivered; `tenant add` prints the secret a
//! tenant's callbacks are signed with.

use std::time::Duration;

use matchbox::webhooks::Secret;
use matchbox_tests::Host;
use matchbox_tests::http::{BOUND, eventually, get, job, post, upload_misbehave};
use matchbox_tests::webhooks::{Answer, WebhookReceiver};
use serde_json::{Value, json};

fn secret() -> String {
    Secret::generate().unwrap().expose()
}

/// A host that signs with `secret` and may call back to loopback, with
/// retries a fifth of a second apart.
async fn host(secret: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--webhook-secret", secret, "--callback-allow", "127.0.0.1", "--callback-backoff", "200ms"];
    args.extend(extra);
    Host::start(&args).await.unwrap()
}

fn with_callback(mut job: Value, callback: Value) -> Value {
    job["callback"] = callback;
    job
}

/// The answer to a `skills` job asking for `callback`.
async fn ask(client: &reqwest::Client, host: &Host, callback: Value) -> (u16, Value) {
    post(client, host.url("/jobs/match"), None, &with_callback(job("skills", "c1"), callback)).await
}

async fn submit(client: &reqwest::Client, host: &Host, body: &Value, key: Option<&str>) -> String {
    let (status, accepted) = post(client, host.url("/jobs/match"), key, body).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["task_id"].as_str().unwrap().to_string()
}

async fn task(client: &reqwest::Client, host: &Host, id: &str, key: Option<&str>) -> Value {
    let (status, task) = get(client, host.url(&format!("/tasks/{id}")), key).await;
    assert_eq!(status, 200, "{task}");
    task
}

/// Waits until task `id`'s callback is in `state`, and returns the task.
async fn callback_state(client: &reqwest::Client, host: &Host, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    eventually(&format!("the callback to be {state}"), async || {
        last = task(client, host, id, None).await;
        last["callback"]["state"] == state
    })
    .await;
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_is_pushed_signed_and_retried_after_a_5xx() {
    let secret = secret();
    // Every end's first attempt is answered 500, the second 204.
    let receiver =
        WebhookReceiver::start(&secret, |_, attempt| Answer::Status(if attempt == 1 { 500 } else { 204 })).await;
    let host = host(&secret, &["--drain-timeout", "1s", "--job-timeout", "1m"]).await;
    let client = reqwest::Client::new();
    upload_misbehave(&client, &host, "misbehave", None).await;

    let callback = json!({"url": receiver.url("/hooks/matchbox?source=test")});
    let completed = submit(&client, &host, &with_callback(job("skills", "c1"), callback.clone()), None).await;
    let failed = submit(&client, &host, &with_callback(job("misbehave", "panic"), callback.clone()), None).await;
    let got = receiver.wait_for(4, BOUND).await;

    for id in [&completed, &failed] {
        let attempts: Vec<_> = got.iter().filter(|r| r.id == *id).collect();
        assert_eq!(attempts.len(), 2, "two attempts of {id}, one webhook-id: {got:?}");
        assert!(attempts.iter().all(|r| r.signed), "every attempt is signed with the host's secret");
        assert!(attempts[1].at >= attempts[0].at + Duration::from_millis(100), "the retry waited its backoff");
        assert_eq!(attempts[0].body, attempts[1].body, "a retry sends the same end");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 60..=now).contains(&attempts[1].timestamp), "webhook-timestamp is the attempt's");
        let shown = callback_state(&client, &host, id, "delivered").await;
        let mut shown_end = shown.clone();
        let callback_shown = shown_end.as_object_mut().unwrap().remove("callback").unwrap();
        assert_eq!(attempts[0].body, shown_end, "the body is the task at its end, without its callback");
        assert_eq!(callback_shown["attempts"], 2, "{callback_shown}");
        assert_eq!(callback_shown["last_status"], 204, "{callback_shown}");
        assert_eq!(callback_shown["url"], receiver.url("/hooks/matchbox?source=test"));
    }
    let body = |id: &str| got.iter().find(|r| r.id == id).unwrap().body.clone();
    assert_eq!(body(&completed)["status"], "completed");
    assert!(body(&completed)["result"]["rankings"].is_array());
    assert_eq!(body(&failed)["status"], "failed");
    assert_eq!(body(&failed)["error"]["kind"], "trap", "{}", body(&failed));

    // A job cancelled by the host (here: the drain timeout at shutdown) is
    // an end too.
    let cancelled = submit(&client, &host, &with_callback(job("misbehave", "busy-60000"), callback), None).await;
    eventually("the long job to start", async || task(&client, &host, &cancelled, None).await["status"] == "running")
        .await;
    let status = reqwest::Client::new().get(host.url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let _ = host.terminate().await;
    // Its first attempt is answered 500 like every other: the host waits
    // for the retry before it goes.
    let got = receiver.received();
    let ends: Vec<_> = got.iter().filter(|r| r.id == cancelled).collect();
    assert_eq!(ends.len(), 2, "the cancelled end is retried and delivered before the host stops: {got:?}");
    assert_eq!(ends[1].body["status"], "cancelled");
    assert_eq!(ends[1].answer, Answer::Status(204));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_final_4xx_and_spent_attempts_are_failures_the_task_and_status_page_show() {
    let secret = secret();
    let receiver = WebhookReceiver::start(&secret, |_, _| Answer::Status(503)).await;
    let gone = WebhookReceiver::start(&secret, |_, _| Answer::Status(410)).await;
    let limited =
        WebhookReceiver::start(&secret, |_, attempt| Answer::Status(if attempt < 3 { 429 } else { 200 })).await;
    let host = host(&secret, &["--callback-attempts", "3"]).await;
    let client = reqwest::Client::new();

    let unavailable =
        submit(&client, &host, &with_callback(job("skills", "c1"), json!({"url": receiver.url("/")})), None).await;
    let final_ = submit(&client, &host, &with_callback(job("skills", "c2"), json!({"url": gone.url("/")})), None).await;
    let slowed =
        submit(&client, &host, &with_callback(job("skills", "c3"), json!({"url": limited.url("/")})), None).await;

    let shown = callback_state(&client, &host, &unavailable, "failed").await;
    assert_eq!(shown["callback"]["attempts"], 3, "{shown}");
    assert_eq!(shown["callback"]["last_status"], 503);
    let error = shown["callback"]["last_error"].as_str().unwrap();
    assert!(error.contains("503") && error.contains("gave up after 3 attempts"), "{error}");
    let shown = callback_state(&client, &host, &final_, "failed").await;
    assert_eq!(
        (shown["callback"]["attempts"].as_u64(), shown["callback"]["last_status"].as_u64()),
        (Some(1), Some(410))
    );
    assert_eq!(gone.received().len(), 1, "a 410 is not retried");
    let shown = callback_state(&client, &host, &slowed, "delivered").await;
    assert_eq!(shown["callback"]["attempts"], 3, "a 429 is retried: {shown}");

    // No attempt past the third.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 3);
    let (_, status) = get(&client, host.url("/status"), None).await;
    assert_eq!(status["webhooks"]["failed"], 2, "{status}");
    assert_eq!(status["webhooks"]["pending"], 0, "{status}");
    assert!(status["webhooks"]["delivered_here"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["webhooks"]["failed_here"], 2, "{status}");

    // A delete takes the failure out of the count with its task.
    let deleted = client.delete(host.url(&format!("/tasks/{final_}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let (_, status) = get(&client, host.url("/status"), None).await;
    assert_eq!(status["webhooks"]["failed"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_into_the_operators_network_are_refused_unless_allowed() {
    let secret = secret();
    // The default rules: public addresses only.
    let strict = Host::start(&["--webhook-secret", &secret]).await.unwrap();
    let client = reqwest::Client::new();
    let refused = [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is a loopback address"),
        ("http://localhost:9/hook", "loopback address"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("http://192.168.0.10/hook", "private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://[::1]:9/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback address"),
        ("http://0.0.0.0:9/hook", "unspecified address"),
    ];
    for (url, why) in refused {
        let (status, body) = ask(&client, &strict, json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "callback_refused", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why) && message.contains("--callback-allow: public"), "{url}: {message}");
    }
    for (url, why) in [
        ("ftp://1.1.1.1/x", "http or https"),
        ("http://user:pw@1.1.1.1/", "user or password"),
        ("/relative", "not a URL"),
    ] {
        let (status, body) = ask(&client, &strict, json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{url}: {body}");
    }
    let (status, body) = ask(&client, &strict, json!({"url": "http://1.1.1.1/", "retries": 3})).await;
    assert_eq!(status, 422, "an unknown callback field is named: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("retries"), "{body}");
    let (_, counts) = get(&client, strict.url("/status"), None).await;
    assert_eq!(counts["tasks"]["total"], 0, "nothing refused was kept: {counts}");

    // A rule lets one network in, and only it.
    let allowed = Host::start(&["--webhook-secret", &secret, "--callback-allow", "10.0.0.0/8"]).await.unwrap();
    let (status, body) = ask(&client, &allowed, json!({"url": "http://127.0.0.1:9/"})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--callback-allow: 10.0.0.0/8"), "{body}");
    let (status, body) = ask(&client, &allowed, json!({"url": "http://10.9.9.9:9/"})).await;
    assert_eq!(status, 202, "{body}");

    // Without a secret there is nothing to sign with.
    let unsigned = Host::start(&["--callback-allow", "127.0.0.1"]).await.unwrap();
    let (status, body) = ask(&client, &unsigned, json!({"url": "http://127.0.0.1:9/"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("callback_unsigned")), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_asked_to_be_deleted_after_delivery_is_gone_once_delivered() {
    let secret = secret();
    let receiver = WebhookReceiver::start(&secret, |_, _| Answer::Status(200)).await;
    let host = host(&secret, &[]).await;
    let client = reqwest::Client::new();
    let body = with_callback(job("skills", "c1"), json!({"url": receiver.url("/"), "delete_after_delivery": true}));
    let id = submit(&client, &host, &body, None).await;
    let got = receiver.wait_for(1, BOUND).await;
    assert_eq!(got[0].body["status"], "completed");
    eventually("the delivered task to be deleted", async || {
        client.get(host.url(&format!("/tasks/{id}"))).send().await.unwrap().status() == 404
    })
    .await;
    // A task without the flag stays.
    let kept =
        submit(&client, &host, &with_callback(job("skills", "c2"), json!({"url": receiver.url("/")})), None).await;
    receiver.wait_for(2, BOUND).await;
    callback_state(&client, &host, &kept, "delivered").await;
}

/// `tenant add` prints a tenant's secret once, on the line after its key;
/// that tenant's callbacks are signed with it, and no other secret checks.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_callbacks_are_signed_with_the_secret_tenant_add_printed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("matchbox.toml");
    let config = config.to_str().unwrap();
    let add = std::process::Command::new(matchbox_tests::binary())
        .args(["tenant", "add", "acme", "--config", config])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let printed = String::from_utf8(add.stdout).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    let [key, secret] = lines[..] else { panic!("the key and the secret, a line each: {printed}") };
    assert!(secret.starts_with("whsec_"), "{secret}");

    let receiver = WebhookReceiver::start(secret, |_, _| Answer::Status(200)).await;
    let stranger = WebhookReceiver::start(&self::secret(), |_, _| Answer::Status(200)).await;
    let host = Host::start(&["--config", config, "--callback-allow", "127.0.0.1"]).await.unwrap();
    let client = reqwest::Client::new();
    for to in [&receiver, &stranger] {
        submit(&client, &host, &with_callback(job("skills", "c1"), json!({"url": to.url("/")})), Some(key)).await;
    }
    assert!(receiver.wait_for(1, BOUND).await[0].signed, "signed with the printed secret");
    assert!(!stranger.wait_for(1, BOUND).await[0].signed, "another secret does not check");
}
