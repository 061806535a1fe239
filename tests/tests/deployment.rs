//! What several hosts on one Redis guarantee, shown with real processes:
//! a job runs once however long it waits, a job that kills its hosts ends,
//! tenants are served fairly and held to their quotas across hosts, a job
//! keeps the component it was accepted for, and the counts match the keys.
//! Each test has a key prefix of its own on the shared Redis.

use std::path::Path;
use std::time::Duration;

use matchbox::tenants::file::{self, NewTenant};
use matchbox_tests::Host;
use matchbox_tests::http::{
    eventually, get, job, jobs_run, live_instances, metric, post, task_status, upload_misbehave,
};
use serde_json::Value;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn prefix() -> String {
    format!("matchbox-deploy-{}-{}", std::process::id(), matchbox_tests::free_port())
}

async fn on_redis(prefix: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--store", SHARED_REDIS, "--redis-prefix", prefix];
    args.extend(extra);
    Host::start(&args).await.unwrap()
}

/// A tenants file in `dir` with `tenants`; their keys, in order.
fn tenants_file(dir: &Path, tenants: &[(&str, NewTenant)]) -> (String, Vec<String>) {
    let path = dir.join("matchbox.toml");
    let keys = tenants.iter().map(|(name, quotas)| file::add(&path, name, quotas).unwrap()).collect();
    (path.to_str().unwrap().to_string(), keys)
}

fn task_id(reply: &(u16, Value)) -> String {
    assert_eq!(reply.0, 202, "{}", reply.1);
    reply.1["task_id"].as_str().unwrap().to_string()
}

/// Two hosts of one worker each, jobs that wait and run three times longer
/// than the lease: every task runs exactly once, and no job is taken over.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_once_however_long_it_waits_and_runs() {
    let prefix = prefix();
    let flags = ["--workers", "1", "--lease", "1s"];
    let hosts = [on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
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
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_hosts_fails_host_lost() {
    let prefix = prefix();
    let flags = ["--lease", "1s", "--max-deliveries", "3", "--job-timeout", "1h"];
    let mut hosts = vec![on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", None).await;
    let id = task_id(&post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "loop")).await);
    for delivery in 1..=3 {
        let mut runner = None;
        eventually(&format!("delivery {delivery} to start on a host"), async || {
            for (i, host) in hosts.iter().enumerate() {
                if live_instances(&client, host).await == 1 {
                    runner = Some(i);
                    return true;
                }
            }
            false
        })
        .await;
        // Killed as if the job had killed it; a fresh host joins.
        drop(hosts.remove(runner.unwrap()));
        hosts.push(on_redis(&prefix, &flags).await);
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
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_does_not_delay_another_tenants_job_across_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (config, keys) = tenants_file(dir.path(), &[("a", NewTenant::default()), ("b", NewTenant::default())]);
    let prefix = prefix();
    let flags = ["--workers", "1", "--config", &config];
    let hosts = [on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
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
#[tokio::test(flavor = "multi_thread")]
async fn quotas_are_the_deployments_not_each_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let quota = NewTenant { pending_tasks: Some(2), ..NewTenant::default() };
    let (config, keys) = tenants_file(dir.path(), &[("a", quota)]);
    let prefix = prefix();
    let flags = ["--config", &config, "--job-timeout", "1h"];
    let hosts = [on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
    let a = Some(keys[0].as_str());
    let client = reqwest::Client::new();
    upload_misbehave(&client, &hosts[0], "misbehave", a).await;
    let first = task_id(&post(&client, hosts[0].url("/jobs/match"), a, &job("misbehave", "sleep")).await);
    let second = task_id(&post(&client, hosts[1].url("/jobs/match"), a, &job("misbehave", "sleep")).await);
    for host in &hosts {
        let (status, refused) = post(&client, host.url("/jobs/match"), a, &job("misbehave", "sleep")).await;
        assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{refused}");
    }
    for id in [first, second] {
        client.delete(hosts[0].url(&format!("/tasks/{id}"))).bearer_auth(keys[0].as_str()).send().await.unwrap();
    }
    let (status, _) = post(&client, hosts[1].url("/jobs/match"), a, &job("misbehave", "honest")).await;
    assert_eq!(status, 202, "room again once they are deleted");
}

/// Ten jobs accepted for a matcher wait behind busy workers when the
/// matcher is replaced (by a component that answers differently): all ten
/// complete, on the component they were accepted for.
#[tokio::test(flavor = "multi_thread")]
async fn accepted_jobs_keep_their_component() {
    let prefix = prefix();
    let flags = ["--workers", "1"];
    let hosts = [on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
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
#[tokio::test(flavor = "multi_thread")]
async fn counts_match_a_scan_of_the_keys() {
    let prefix = prefix();
    let flags = ["--task-ttl", "4s", "--lease", "1s", "--job-timeout", "1h"];
    let mut hosts = vec![on_redis(&prefix, &flags).await, on_redis(&prefix, &flags).await];
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
    let mut redis = redis::Client::open(SHARED_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap();
    let scan = async |redis: &mut redis::aio::MultiplexedConnection| {
        let pattern = format!("{{{prefix}:default}}:task:*");
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
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scanned = scan(&mut redis).await;
    assert!(scanned.is_empty(), "{scanned:?}");
    same(&hosts[1], &scanned).await;
    // A second one stays, with a job taken over from a host killed while
    // running it.
    mix(&hosts).await;
    let (_, taken) = post(&client, hosts[0].url("/jobs/match"), None, &job("misbehave", "busy-2000")).await;
    let taken = taken["task_id"].as_str().unwrap().to_string();
    let mut runner = 0;
    eventually("the busy job to start", async || {
        for (i, host) in hosts.iter().enumerate() {
            if live_instances(&client, host).await == 1 {
                runner = i;
                return true;
            }
        }
        false
    })
    .await;
    drop(hosts.remove(runner));
    eventually("the busy job to be taken over and completed", async || {
        task_status(&client, &hosts[0], &taken, None).await.as_deref() == Some("completed")
    })
    .await;

    let mut redis = redis::Client::open(SHARED_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{{{prefix}:default}}:task:*")).query_async(&mut redis).await.unwrap();
    let mut scanned: std::collections::BTreeMap<String, u64> = Default::default();
    for key in keys {
        let status: Option<String> = redis::cmd("HGET").arg(&key).arg("s").query_async(&mut redis).await.unwrap();
        if let Some(status) = status {
            *scanned.entry(status).or_default() += 1;
        }
    }
    let (_, reported) = get(&client, hosts[0].url("/status"), None).await;
    for status in ["pending", "running", "completed", "failed", "cancelled"] {
        let want = scanned.get(status).copied().unwrap_or(0);
        assert_eq!(reported["tasks"][status].as_u64(), Some(want), "{status}: the scan found {want}; {reported}");
    }
    assert_eq!(scanned.get("completed"), Some(&3), "two honest jobs and the one taken over: {scanned:?}");
}
