//! What several hosts sharing a deployment guarantee, shown with real
//! processes, on one Redis and on a Redis Cluster alike: hosts share tasks,
//! jobs and matchers; a job runs once however long it waits, is completed
//! by another host when its own dies or leaves, and ends when it kills its
//! hosts; tenants are served fairly and held to their quotas across hosts;
//! a job keeps the component it was accepted for, whose bytes go once
//! nothing needs them; expiry stops a job wherever it runs; the counts match
//! the keys; each end's webhook is delivered once, by one host, and again
//! by another when the host delivering it dies. Every scenario runs on both stores (`on_redis::…`,
//! `on_redis_cluster::…`); a last test kills a cluster primary mid-run.

use std::path::Path;
use std::time::Duration;

use matchbox::tenants::file::{self, NewTenant};
use matchbox_tests::http::{
    eventually, get, job, jobs_run, live_instances, metric, post, task_status, upload_misbehave,
};
use matchbox_tests::webhooks::{Answer, WebhookReceiver};
use matchbox_tests::{Connection, Host, RedisCluster};
use serde_json::Value;

/// Where a deployment's hosts keep what they share: a key prefix of its own
/// on the shared Redis (127.0.0.1:6379), or a three-primary Redis Cluster
/// of its own.
struct Deployment {
    store: String,
    prefix: String,
    _cluster: Option<RedisCluster>,
}

impl Deployment {
    fn new(store: String, cluster: Option<RedisCluster>) -> Deployment {
        let prefix = format!("matchbox-deploy-{}-{}", std::process::id(), matchbox_tests::free_port());
        Deployment { store, prefix, _cluster: cluster }
    }

    fn redis() -> Deployment {
        Deployment::new("redis://127.0.0.1:6379".into(), None)
    }

    async fn cluster() -> Deployment {
        let cluster = RedisCluster::start(3, 0).await.unwrap();
        Deployment::new(cluster.url(), Some(cluster))
    }

    /// A host of the deployment, started with `extra` flags.
    async fn host(&self, extra: &[&str]) -> Host {
        let mut args = vec!["--store", &self.store, "--redis-prefix", &self.prefix];
        args.extend(extra);
        Host::start(&args).await.unwrap()
    }

    /// A connection to the store, to look at the keys the hosts left.
    async fn connection(&self) -> Connection {
        Connection::open(&self.store).await.unwrap()
    }
}

/// Every scenario, as a test on the shared Redis and one on a Redis
/// Cluster.
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod on_redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Deployment::redis()).await
            })*
        }
        mod on_redis_cluster {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Deployment::cluster().await).await
            })*
        }
    };
}

on_every_store!(
    hosts_share_tasks_jobs_and_matchers,
    a_job_runs_once_however_long_it_waits_and_runs,
    a_job_whose_host_dies_is_completed_by_another,
    a_draining_host_hands_its_unfinished_jobs_back,
    a_job_that_kills_its_hosts_fails_host_lost,
    a_flood_does_not_delay_another_tenants_job_across_hosts,
    quotas_are_the_deployments_not_each_hosts,
    accepted_jobs_keep_their_component,
    component_bytes_go_when_nothing_needs_them,
    a_job_whose_task_expires_is_stopped,
    counts_match_a_scan_of_the_keys,
    matchers_and_long_polls_are_the_deployments,
    one_idempotency_key_makes_one_task_across_hosts,
    an_event_stream_on_any_host_sees_the_end,
    two_hosts_deliver_each_end_once,
    a_delivery_outlives_the_host_that_was_making_it,
    a_batch_is_admitted_whole_across_hosts,
);

/// A tenant's quota counts batches whole across hosts: a batch that would
/// take the tenant past it on another host is refused and leaves no task
/// and no job in the stream; the batches accepted run to their ends on
/// the deployment.
async fn a_batch_is_admitted_whole_across_hosts(d: Deployment) {
    let dir = tempfile::tempdir().unwrap();
    let quota = NewTenant { pending_tasks: Some(4), ..NewTenant::default() };
    let (config, keys) = tenants_file(dir.path(), &[("a", quota)]);
    let flags = ["--config", &config, "--job-timeout", "1m"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let a = Some(keys[0].as_str());
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", a).await;
    let batch =
        |n: usize| serde_json::json!({"jobs": (0..n).map(|_| job("misbehave", "busy-1500")).collect::<Vec<_>>()});
    let (status, first) = post(&client, hosts[0].url("/jobs/batch"), a, &batch(3)).await;
    assert_eq!(status, 202, "{first}");
    let (status, refused) = post(&client, hosts[1].url("/jobs/batch"), a, &batch(2)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{refused}");
    let jobs = format!("{{{}:a}}:job:*", d.prefix);
    let kept: Vec<String> = redis::cmd("KEYS").arg(&jobs).query_async(&mut d.connection().await).await.unwrap();
    assert_eq!(kept.len(), 3, "the refused batch left no job behind: {kept:?}");
    let (status, second) = post(&client, hosts[1].url("/jobs/batch"), a, &batch(1)).await;
    assert_eq!(status, 202, "{second}");
    let ids: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|b| b["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        eventually("the batch's jobs to complete", async || {
            let (_, task) = get(&client, hosts[0].url(&format!("/tasks/{id}")), a).await;
            task["status"] == "completed"
        })
        .await;
    }
}

/// The flags of a host that delivers webhooks to this machine, signed with
/// `secret`, retrying after a third of a second.
fn webhook_flags(secret: &str) -> Vec<&str> {
    vec!["--webhook-secret", secret, "--callback-allow", "127.0.0.1", "--callback-backoff", "300ms"]
}

/// Sixteen ends written on two hosts, each first answered 500: every end
/// reaches the receiver exactly twice, the failure and the retry, never
/// from both hosts at once, and every task shows it delivered.
async fn two_hosts_deliver_each_end_once(d: Deployment) {
    let secret = matchbox::webhooks::Secret::generate().unwrap().expose();
    let receiver =
        WebhookReceiver::start(&secret, |_, attempt| Answer::Status(if attempt == 1 { 500 } else { 200 })).await;
    let hosts = [d.host(&webhook_flags(&secret)).await, d.host(&webhook_flags(&secret)).await];
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..16 {
        let mut body = job("skills", &format!("c{i}"));
        body["callback"] = serde_json::json!({"url": receiver.url("/hook")});
        ids.push(task_id(&post(&client, hosts[i % 2].url("/jobs/match"), None, &body).await));
    }
    receiver.wait_for(32, Duration::from_secs(60)).await;
    // Longer than a host takes to look again and a retry to come due.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 32, "no end twice: {:?}", got.iter().map(|r| (&r.id, r.attempt)).collect::<Vec<_>>());
    for id in &ids {
        let attempts: Vec<_> = got.iter().filter(|r| r.id == *id).map(|r| (r.attempt, r.answer)).collect();
        assert_eq!(attempts, [(1, Answer::Status(500)), (2, Answer::Status(200))], "{id}");
        let (_, task) = get(&client, hosts[1].url(&format!("/tasks/{id}")), None).await;
        assert_eq!(
            (task["callback"]["state"].as_str(), task["callback"]["attempts"].as_u64()),
            (Some("delivered"), Some(2)),
            "{task}"
        );
    }
    assert!(got.iter().all(|r| r.signed));
}

/// The only host of a deployment is killed mid-retry: its first attempt
/// was answered 500, and the receiver never answers the retry, whose
/// request is open when the host dies. Another host started afterwards
/// claims the delivery once the dead host's lease lapses and sends it
/// again with the same `webhook-id`; the receiver answers, and nothing is
/// sent after that.
async fn a_delivery_outlives_the_host_that_was_making_it(d: Deployment) {
    let secret = matchbox::webhooks::Secret::generate().unwrap().expose();
    let receiver = WebhookReceiver::start(&secret, |_, attempt| match attempt {
        1 => Answer::Status(500),
        2 => Answer::Hold,
        _ => Answer::Status(200),
    })
    .await;
    let mut flags = webhook_flags(&secret);
    flags.extend(["--callback-timeout", "1s"]);
    let doomed = d.host(&flags).await;
    let client = reqwest::Client::new();
    let mut body = job("skills", "c1");
    body["callback"] = serde_json::json!({"url": receiver.url("/hook")});
    let id = task_id(&post(&client, doomed.url("/jobs/match"), None, &body).await);
    receiver.wait_for(2, Duration::from_secs(60)).await;
    drop(doomed); // SIGKILL, its retry's request still open

    let survivor = d.host(&flags).await;
    let got = receiver.wait_for(3, Duration::from_secs(60)).await;
    assert!(got.iter().all(|r| r.id == id), "one end, one webhook-id: {got:?}");
    assert!(got.iter().all(|r| r.signed));
    assert!(got.iter().all(|r| r.body == got[0].body), "every attempt sends the same end");
    let mut task = Value::Null;
    eventually("the survivor to record the delivery", async || {
        task = get(&client, survivor.url(&format!("/tasks/{id}")), None).await.1;
        task["callback"]["state"] == "delivered"
    })
    .await;
    // The 500 recorded by the dead host, the answer by the survivor; the
    // attempt cut short by the kill was never recorded.
    assert_eq!(task["callback"]["attempts"], 2, "{task}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 3, "delivered, so not sent again");
}

/// A task's event stream read on the host that did not accept its job
/// (and may not run it) ends with the task, wherever it ended.
async fn an_event_stream_on_any_host_sees_the_end(d: Deployment) {
    let hosts = [d.host(&[]).await, d.host(&[]).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let (status, accepted) = post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "busy-800")).await;
    assert_eq!(status, 202);
    let id = accepted["task_id"].as_str().unwrap();
    let (seen, _) = matchbox_tests::http::events(&client, hosts[1].url(&format!("/tasks/{id}/events")), None).await;
    let end = seen.last().unwrap();
    assert_eq!((end.event.as_str(), end.id.as_str()), ("completed", "3"), "{seen:?}");
    let task: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(task["result"]["rankings"][0]["reasons"][0], "honest answer");
}

/// Submissions with one `Idempotency-Key`, sent at once to both hosts,
/// make one task and one job: every answer names it, one run is counted,
/// and the stream is left with no job of the others. A retry on either
/// host answers it, ended; another body under the key is refused there.
async fn one_idempotency_key_makes_one_task_across_hosts(d: Deployment) {
    let hosts = [d.host(&[]).await, d.host(&[]).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let body = job("misbehave", "busy-300");
    let sends = (0..12).map(|i| {
        let request = client.post(hosts[i % 2].url("/jobs/match")).header("idempotency-key", "batch-7").json(&body);
        async move {
            let reply = request.send().await.unwrap();
            let replayed = reply.headers()["idempotent-replayed"].to_str().unwrap() == "true";
            (reply.status().as_u16(), replayed, reply.json::<Value>().await.unwrap())
        }
    });
    let mut replies = Vec::new();
    for reply in futures_join(sends).await {
        replies.push(reply);
    }
    let ids: std::collections::BTreeSet<&str> = replies
        .iter()
        .map(|(status, _, body)| {
            assert_eq!(*status, 202, "{body}");
            body["task_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one task for one key: {replies:?}");
    assert_eq!(replies.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "{replies:?}");
    let id = ids.first().unwrap().to_string();

    for host in &hosts {
        let reply = client
            .post(host.url("/jobs/match?wait=30s"))
            .header("idempotency-key", "batch-7")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "a waited retry on either host answers the ended task");
        let task: Value = reply.json().await.unwrap();
        assert_eq!((task["task_id"].as_str(), task["status"].as_str()), (Some(id.as_str()), Some("completed")));
    }
    let mut runs = 0;
    for host in &hosts {
        runs += jobs_run(&client, host).await;
    }
    assert_eq!(runs, 1, "one job ran");
    let mut redis = d.connection().await;
    let pattern = format!("{{{}:default}}:job:*", d.prefix);
    let jobs: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut redis).await.unwrap();
    assert!(jobs.is_empty(), "no replay left a job behind: {jobs:?}");

    let other = client
        .post(hosts[1].url("/jobs/match"))
        .header("idempotency-key", "batch-7")
        .json(&job("misbehave", "honest"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{other}");
}

/// Runs `futures` at once, answering in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// One set of matchers on every host, at once: an upload on one host is
/// listed and shown on the other (by the API and the CLI) before any job
/// used it; a removal likewise, from either host. A long poll on a host that
/// did not accept the job answers when the job ends.
async fn matchers_and_long_polls_are_the_deployments(d: Deployment) {
    let hosts = [d.host(&[]).await, d.host(&[]).await];
    let [a, b] = &hosts;
    let client = reqwest::Client::new();
    let names = async |host: &Host| -> Vec<String> {
        let (_, list) = get(&client, host.url("/matchers"), None).await;
        list["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    };

    upload_misbehave(&client, a, "mine", None).await;
    assert_eq!(names(b).await, ["mine", "skills", "text"], "listed on the other host at once");
    let (status, shown) = get(&client, b.url("/matchers/mine"), None).await;
    assert_eq!((status, &shown["source"], &shown["private"]), (200, &"uploaded".into(), &true.into()));
    let cli = std::process::Command::new(matchbox_tests::binary())
        .args(["matchers", "list", "--json", "--server", &format!("http://{}", b.addr)])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(listed["matchers"][0]["name"], "mine", "the CLI against either host says the same");

    assert_eq!(client.delete(a.url("/matchers/mine")).send().await.unwrap().status(), 204);
    assert_eq!(names(b).await, ["skills", "text"], "a removal too");
    assert_eq!(get(&client, b.url("/matchers/mine"), None).await.0, 404);

    // Removed through the host that never had it.
    upload_misbehave(&client, a, "theirs", None).await;
    assert_eq!(client.delete(b.url("/matchers/theirs")).send().await.unwrap().status(), 204);
    assert_eq!(names(a).await, ["skills", "text"]);

    upload_misbehave(&client, a, "misbehave", None).await;
    let id = task_id(&post(&client, a.url("/jobs/match"), None, &job("misbehave", "slow")).await);
    let (status, polled) = get(&client, b.url(&format!("/tasks/{id}?wait=30s")), None).await;
    assert_eq!((status, &polled["status"]), (200, &"completed".into()), "{polled}");
}

/// A tenants file in `dir` with `tenants`; their keys, in order.
fn tenants_file(dir: &Path, tenants: &[(&str, NewTenant)]) -> (String, Vec<String>) {
    let path = dir.join("matchbox.toml");
    let keys = tenants
        .iter()
        .map(|(name, quotas)| file::add(&path, name, quotas, &file::HostFlags::default()).unwrap().key)
        .collect();
    (path.to_str().unwrap().to_string(), keys)
}

fn task_id(reply: &(u16, Value)) -> String {
    assert_eq!(reply.0, 202, "{}", reply.1);
    reply.1["task_id"].as_str().unwrap().to_string()
}

/// Tasks written on one host are read on the other, a matcher uploaded on
/// one runs on both, jobs submitted on one run on both, and a task deleted
/// through the host that is not running it is stopped where it runs.
async fn hosts_share_tasks_jobs_and_matchers(d: Deployment) {
    let hosts = [d.host(&["--workers", "1"]).await, d.host(&["--workers", "1"]).await];
    let [a, b] = &hosts;
    let client = reqwest::Client::new();

    let (_, done) = post(&client, a.url("/jobs/match?wait=30s"), None, &job("skills", "ada")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["task_id"].as_str().unwrap();
    assert_eq!(get(&client, b.url(&format!("/tasks/{id}")), None).await.1, done, "b serves the task a wrote");

    upload_misbehave(&client, b, "misbehave", None).await;
    let (_, ran) = post(&client, a.url("/jobs/match?wait=30s"), None, &job("misbehave", "ada")).await;
    assert_eq!(ran["status"], "completed", "{ran}");

    let before = [jobs_run(&client, a).await, jobs_run(&client, b).await];
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(task_id(&post(&client, a.url("/jobs/match"), None, &job("misbehave", "slow")).await));
    }
    for id in &ids {
        eventually("the slow jobs to complete", async || {
            task_status(&client, b, id, None).await.as_deref() == Some("completed")
        })
        .await;
    }
    let ran = [jobs_run(&client, a).await - before[0], jobs_run(&client, b).await - before[1]];
    assert_eq!(ran[0] + ran[1], 12);
    assert!(ran[0] > 0 && ran[1] > 0, "both hosts ran some of the jobs: {ran:?}");

    let id = task_id(&post(&client, a.url("/jobs/match"), None, &job("misbehave", "loop")).await);
    let runner = running_on(&client, &hosts).await;
    let other = &hosts[1 - runner];
    assert_eq!(client.delete(other.url(&format!("/tasks/{id}"))).send().await.unwrap().status(), 204);
    eventually("the running host to stop the deleted job", async || live_instances(&client, &hosts[runner]).await == 0)
        .await;
    assert_eq!(get(&client, hosts[runner].url(&format!("/tasks/{id}")), None).await.0, 404);

    let (_, counts) = get(&client, b.url("/status"), None).await;
    assert_eq!(counts["tasks"]["completed"], 14, "one table, counted from either host: {counts}");
}

/// Which of `hosts` runs the one job running, once it runs.
async fn running_on(client: &reqwest::Client, hosts: &[Host]) -> usize {
    let mut runner = 0;
    eventually("the job to start on a host", async || {
        for (i, host) in hosts.iter().enumerate() {
            if live_instances(client, host).await == 1 {
                runner = i;
                return true;
            }
        }
        false
    })
    .await;
    runner
}

/// Uploads `misbehave` to `host`, submits a job that computes for 5 s,
/// and returns its task id once the job is running there. 5 s (half the
/// default job timeout) so that starting a second host meanwhile, which
/// compiles the built-ins, cannot outlast the job on a loaded machine
/// (1.5 s once did, in CI: the job had completed before its host drained).
async fn start_busy_job(client: &reqwest::Client, host: &Host) -> String {
    upload_misbehave(client, host, "misbehave", None).await;
    let id = task_id(&post(client, host.url("/jobs/match"), None, &job("misbehave", "busy-5000")).await);
    eventually("the job to start", async || live_instances(client, host).await == 1).await;
    id
}

/// A host killed in the middle of a job: another host takes the job over
/// once its lease lapses, and completes it.
async fn a_job_whose_host_dies_is_completed_by_another(d: Deployment) {
    let flags = ["--workers", "1", "--lease", "1s"];
    let doomed = d.host(&flags).await;
    let client = reqwest::Client::new();
    let id = start_busy_job(&client, &doomed).await;
    drop(doomed); // SIGKILL, mid-job

    let survivor = d.host(&flags).await;
    assert_eq!(task_status(&client, &survivor, &id, None).await.as_deref(), Some("running"));
    eventually("the survivor to complete the job", async || {
        task_status(&client, &survivor, &id, None).await.as_deref() == Some("completed")
    })
    .await;
    assert_eq!(jobs_run(&client, &survivor).await, 1, "the survivor ran it");
    assert_eq!(metric(&client, &survivor, "matchbox_jobs_taken_over_total").await, 1);
}

/// SIGTERM while a shared job runs past the drain timeout: the host hands
/// the job back instead of cancelling its task, and another host runs it.
async fn a_draining_host_hands_its_unfinished_jobs_back(d: Deployment) {
    let flags = ["--workers", "1", "--drain-timeout", "200ms"];
    let leaving = d.host(&flags).await;
    let client = reqwest::Client::new();
    let id = start_busy_job(&client, &leaving).await;
    let staying = d.host(&flags).await;
    assert!(leaving.terminate().await.unwrap().success());

    assert_eq!(task_status(&client, &staying, &id, None).await.as_deref(), Some("running"), "handed back");
    eventually("the other host to complete the job", async || {
        task_status(&client, &staying, &id, None).await.as_deref() == Some("completed")
    })
    .await;
}

/// A job runs on whichever host took it; when its task's time to live
/// lapses in the store, that host stops it, and the task is gone on both.
async fn a_job_whose_task_expires_is_stopped(d: Deployment) {
    let flags = ["--task-ttl", "2s", "--job-timeout", "1h"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let id = task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "loop")).await);
    let live = async || live_instances(&client, &hosts[0]).await + live_instances(&client, &hosts[1]).await;
    eventually("the job to start on a host", async || live().await == 1).await;
    // The store deletes the key after 2 s; the host running the job notices.
    eventually("the expired task's job to stop", async || live().await == 0).await;
    for host in &hosts {
        assert_eq!(get(&client, host.url(&format!("/tasks/{id}")), None).await.0, 410, "the task expired");
    }
}

/// Whether the deployment keeps the bytes of component `digest`.
async fn component_kept(d: &Deployment, redis: &mut Connection, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    let key = format!("{{{}:c:{hex}}}:bytes", d.prefix);
    redis::cmd("EXISTS").arg(key).query_async::<i64>(redis).await.unwrap() == 1
}

/// `misbehave`'s bytes with a custom section named `tag`: another digest,
/// the same matcher.
fn misbehave_tagged(tag: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    bytes.extend_from_slice(&[0, 2, 1, tag]);
    bytes
}

/// Component bytes kept in the store live exactly as long as a name means
/// them or an accepted job needs them: replaced on one host, removed on the
/// other, and kept for a job that was running on the old one.
async fn component_bytes_go_when_nothing_needs_them(d: Deployment) {
    let hosts = [d.host(&[]).await, d.host(&[]).await];
    let [a, b] = &hosts;
    let client = reqwest::Client::new();
    let mut redis = d.connection().await;
    let put = async |host: &Host, bytes: Vec<u8>| -> String {
        let reply = client.put(host.url("/matchers/m")).body(bytes).send().await.unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
        let body: Value = reply.json().await.unwrap();
        body["digest"].as_str().unwrap().to_string()
    };

    let first = put(a, misbehave_tagged(b'1')).await;
    assert!(component_kept(&d, &mut redis, &first).await);
    let second = put(b, misbehave_tagged(b'2')).await;
    assert!(!component_kept(&d, &mut redis, &first).await, "replaced, and no job needs it");
    assert!(component_kept(&d, &mut redis, &second).await);

    // A job runs on the second; the name moves on while it runs.
    let id = task_id(&post(&client, a.url("/jobs/match"), None, &job("m", "busy-1500")).await);
    running_on(&client, &hosts).await;
    let third = put(b, misbehave_tagged(b'3')).await;
    assert!(component_kept(&d, &mut redis, &second).await, "the running job still needs it");
    eventually("the job to complete", async || {
        task_status(&client, a, &id, None).await.as_deref() == Some("completed")
    })
    .await;
    eventually("the job's component to go", async || !component_kept(&d, &mut redis, &second).await).await;

    assert_eq!(client.delete(a.url("/matchers/m")).send().await.unwrap().status(), 204);
    assert!(!component_kept(&d, &mut redis, &third).await, "removed, and no job needs it");
}

/// Two hosts of one worker each, jobs that wait and run three times longer
/// than the lease: every task runs exactly once, and no job is taken over.
async fn a_job_runs_once_however_long_it_waits_and_runs(d: Deployment) {
    let flags = ["--workers", "1", "--lease", "1s"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "busy-1500")).await));
    }
    for id in &ids {
        eventually("every job to complete", async || {
            task_status(&client, &hosts[1], id, None).await.as_deref() == Some("completed")
        })
        .await;
    }
    let runs = jobs_run(&client, &hosts[0]).await + jobs_run(&client, &hosts[1]).await;
    assert_eq!(runs, 8, "each task ran once across the two hosts");
    for host in &hosts {
        assert_eq!(metric(&client, host, "matchbox_jobs_taken_over_total").await, 0, "no lease lapsed");
    }
}

/// A job that never ends (a loop), and every host that runs it killed, one
/// after another: after `--max-deliveries` hosts, its task fails
/// `host_lost` and the hosts left keep serving.
async fn a_job_that_kills_its_hosts_fails_host_lost(d: Deployment) {
    let flags = ["--lease", "1s", "--max-deliveries", "3", "--job-timeout", "1h"];
    let mut hosts = vec![d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let id = task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "loop")).await);
    for _ in 0..3 {
        // A delivery runs; its host is killed as if the job had killed it,
        // and a fresh host joins.
        let runner = running_on(&client, &hosts).await;
        drop(hosts.remove(runner));
        hosts.push(d.host(&flags).await);
    }
    let mut task = Value::Null;
    eventually("the task to fail host_lost", async || {
        task = get(&client, hosts[0].url(&format!("/tasks/{id}")), None).await.1;
        task["status"] == "failed"
    })
    .await;
    assert_eq!(task["error"]["kind"], "host_lost", "{task}");
    assert!(task["error"]["message"].as_str().unwrap().contains("3 times"), "{task}");
    let lost: u64 = [
        metric(&client, &hosts[0], "matchbox_jobs_lost_total").await,
        metric(&client, &hosts[1], "matchbox_jobs_lost_total").await,
    ]
    .iter()
    .sum();
    assert_eq!(lost, 1);
    let (status, done) = post(&client, hosts[1].url("/jobs/match?wait=30s"), None, &job("skills", "ada")).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("completed")), "the hosts left serve");
}

/// Tenant a floods the deployment with jobs through one host; tenant b's
/// one job, submitted after through the other, is not queued behind the
/// flood: when it has ended, all but a few of a's jobs still wait.
async fn a_flood_does_not_delay_another_tenants_job_across_hosts(d: Deployment) {
    let dir = tempfile::tempdir().unwrap();
    let (config, keys) = tenants_file(dir.path(), &[("a", NewTenant::default()), ("b", NewTenant::default())]);
    let flags = ["--workers", "1", "--config", &config];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let (a, b) = (Some(keys[0].as_str()), Some(keys[1].as_str()));
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", a).await;

    const FLOOD: usize = 40;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(task_id(&post(&client, hosts[0].url("/jobs/match"), a, &job("misbehave", "slow")).await));
    }
    let (status, done) = post(&client, hosts[1].url("/jobs/match?wait=60s"), b, &job("skills", "ada")).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("completed")), "{done}");
    let mut ended = 0;
    for id in &flood {
        let status = task_status(&client, &hosts[0], id, a).await.unwrap();
        if ["completed", "failed", "cancelled"].contains(&status.as_str()) {
            ended += 1;
        }
    }
    eprintln!("b's job ended after {ended} of a's {FLOOD} jobs");
    // Each host holds at most a job per worker and one more: at most two
    // of a's jobs per host run before b's is read.
    assert!(ended <= 4, "b's job waited for {ended} of a's jobs; fair turns allow at most 4 on two hosts");
    for id in &flood {
        client.delete(hosts[0].url(&format!("/tasks/{id}"))).bearer_auth(keys[0].as_str()).send().await.unwrap();
    }
}

/// A tenant's pending quota holds for the deployment: its submissions spread
/// over two hosts get the quota once.
async fn quotas_are_the_deployments_not_each_hosts(d: Deployment) {
    let dir = tempfile::tempdir().unwrap();
    let quota = NewTenant { pending_tasks: Some(2), ..NewTenant::default() };
    let (config, keys) = tenants_file(dir.path(), &[("a", quota)]);
    let flags = ["--config", &config, "--job-timeout", "1h"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let a = Some(keys[0].as_str());
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", a).await;
    let first = task_id(&post(&client, hosts[0].url("/jobs/match"), a, &job("misbehave", "sleep")).await);
    let second = task_id(&post(&client, hosts[1].url("/jobs/match"), a, &job("misbehave", "sleep")).await);
    for host in &hosts {
        let (status, refused) = post(&client, host.url("/jobs/match"), a, &job("misbehave", "sleep")).await;
        assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{refused}");
    }
    let jobs = format!("{{{}:a}}:job:*", d.prefix);
    let kept: Vec<String> = redis::cmd("KEYS").arg(jobs).query_async(&mut d.connection().await).await.unwrap();
    assert_eq!(kept.len(), 2, "a refused submission leaves no job behind: {kept:?}");
    for id in [first, second] {
        client.delete(hosts[0].url(&format!("/tasks/{id}"))).bearer_auth(keys[0].as_str()).send().await.unwrap();
    }
    let (status, _) = post(&client, hosts[1].url("/jobs/match"), a, &job("misbehave", "honest")).await;
    assert_eq!(status, 202, "room again once they are deleted");
}

/// Ten jobs accepted for a matcher wait behind busy workers when the
/// matcher is replaced (by a component that answers differently): all ten
/// complete, on the component they were accepted for.
async fn accepted_jobs_keep_their_component(d: Deployment) {
    let flags = ["--workers", "1"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "m", None).await;
    for _ in 0..2 {
        post(&client, hosts[0].url("/jobs/match"), None, &job("m", "busy-3000")).await;
    }
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("m", "busy-100")).await));
    }
    // `m` becomes the skills matcher: its reasons are not misbehave's.
    let skills = matchbox::registry::BUILTINS[0].1.to_vec();
    let replaced = client.put(hosts[1].url("/matchers/m")).body(skills).send().await.unwrap();
    assert_eq!(replaced.status(), 200);
    for id in &ids {
        let mut task = Value::Null;
        eventually("the accepted jobs to end", async || {
            task = get(&client, hosts[1].url(&format!("/tasks/{id}")), None).await.1;
            task["status"] == "completed" || task["status"] == "failed"
        })
        .await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["result"]["rankings"][0]["reasons"][0], "honest answer", "ran on the old component: {task}");
    }
}

/// The counts the hosts report are the tasks Redis holds, after a mix of
/// completed, failed, cancelled, expired and taken-over jobs.
async fn counts_match_a_scan_of_the_keys(d: Deployment) {
    // The time to live must outlast a round of the mix and the take-over
    // below on a loaded machine (a `?wait=` job whose task expires first
    // answers 410), and the first round must expire before the second.
    let flags = ["--task-ttl", "8s", "--lease", "1s", "--job-timeout", "1h"];
    let mut hosts = vec![d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    // Two complete, two fail, two are deleted while they run.
    let mix = async |hosts: &[Host]| {
        for (i, mode) in ["honest", "honest", "panic", "invalid", "sleep", "sleep"].iter().enumerate() {
            let host = &hosts[i % hosts.len()];
            if *mode == "sleep" {
                let (_, accepted) = post(&client, host.url("/jobs/match"), None, &job("misbehave", mode)).await;
                let id = accepted["task_id"].as_str().unwrap();
                client.delete(host.url(&format!("/tasks/{id}"))).send().await.unwrap();
            } else {
                let (_, ended) = post(&client, host.url("/jobs/match?wait=30s"), None, &job("misbehave", mode)).await;
                assert!(ended["status"] == "completed" || ended["status"] == "failed", "{ended}");
            }
        }
    };
    let mut redis = d.connection().await;
    let scan = async |redis: &mut Connection| {
        let pattern = format!("{{{}:default}}:task:*", d.prefix);
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(redis).await.unwrap();
        let mut scanned: std::collections::BTreeMap<String, u64> = Default::default();
        for key in keys {
            let status: Option<String> = redis::cmd("HGET").arg(&key).arg("s").query_async(redis).await.unwrap();
            if let Some(status) = status {
                *scanned.entry(status).or_default() += 1;
            }
        }
        scanned
    };
    let same = async |host: &Host, scanned: &std::collections::BTreeMap<String, u64>| {
        let (_, reported) = get(&client, host.url("/status"), None).await;
        for status in ["pending", "running", "completed", "failed", "cancelled"] {
            let want = scanned.get(status).copied().unwrap_or(0);
            assert_eq!(reported["tasks"][status].as_u64(), Some(want), "{status}: the scan found {want}; {reported}");
        }
    };
    // A first round expires: nothing is counted that Redis no longer holds.
    mix(&hosts).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let scanned = scan(&mut redis).await;
    assert!(scanned.is_empty(), "{scanned:?}");
    same(&hosts[1], &scanned).await;
    // A second one stays, with a job taken over from a host killed while
    // running it.
    mix(&hosts).await;
    let (_, taken) = post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "busy-2000")).await;
    let taken = taken["task_id"].as_str().unwrap().to_string();
    let runner = running_on(&client, &hosts).await;
    drop(hosts.remove(runner));
    eventually("the busy job to be taken over and completed", async || {
        task_status(&client, &hosts[0], &taken, None).await.as_deref() == Some("completed")
    })
    .await;

    let scanned = scan(&mut redis).await;
    same(&hosts[0], &scanned).await;
    assert_eq!(scanned.get("completed"), Some(&3), "two honest jobs and the one taken over: {scanned:?}");
    assert_eq!(jobs_kept(&d, &mut redis).await, 0, "every job ended or was deleted, and its key went with it");
}

/// How many jobs (their inputs) the deployment keeps for its default tenant.
async fn jobs_kept(d: &Deployment, redis: &mut Connection) -> usize {
    let pattern = format!("{{{}:default}}:job:*", d.prefix);
    redis::cmd("KEYS").arg(pattern).query_async::<Vec<String>>(redis).await.unwrap().len()
}

/// A primary of a Redis Cluster (three primaries, a replica each) killed
/// while two hosts run jobs on it: its replica takes over its slots, and
/// every task the hosts accepted completes, before the kill and after it.
/// Submissions made while the slots have no primary are refused 503, never
/// accepted and lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_primary_killed_mid_run_loses_no_accepted_task() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let d = Deployment::new(cluster.url(), None);
    let flags = ["--workers", "1", "--lease", "1s"];
    let hosts = [d.host(&flags).await, d.host(&flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let mut accepted = Vec::new();
    for _ in 0..8 {
        accepted.push(task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "busy-500")).await));
    }
    running_on(&client, &hosts).await;

    // The primary that serves the default tenant's keys; its replica has
    // what it acknowledged (Redis Cluster replicates asynchronously and
    // promises no more than that).
    let primary = cluster.primary_of(&format!("{{{}:default}}", d.prefix)).unwrap();
    let mut primary_conn = Connection::open(&format!("redis://127.0.0.1:{primary}")).await.unwrap();
    let _: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut primary_conn).await.unwrap();
    cluster.kill(primary);

    let (mut refused, mut taken) = (0, 0);
    let failed_over = tokio::time::Instant::now() + Duration::from_secs(60);
    while cluster.primary_of(&format!("{{{}:default}}", d.prefix)).is_err() || taken < 8 {
        assert!(tokio::time::Instant::now() < failed_over, "no replica took over within 60 s");
        let reply = post(&client, hosts[taken % 2].url("/jobs/match"), None, &job("misbehave", "busy-100")).await;
        match reply.0 {
            202 => {
                accepted.push(task_id(&reply));
                taken += 1;
            }
            503 => refused += 1,
            other => panic!("a submission during the fail-over answered {other}: {}", reply.1),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.settle().await.unwrap();
    eprintln!("{refused} submissions refused while the slots had no primary; {} accepted in all", accepted.len());
    for id in &accepted {
        eventually("every accepted task to complete", async || {
            task_status(&client, &hosts[1], id, None).await.as_deref() == Some("completed")
        })
        .await;
    }
    let (status, done) = post(&client, hosts[1].url("/jobs/match?wait=30s"), None, &job("skills", "ada")).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("completed")), "{done}");
}
