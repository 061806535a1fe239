//! Load for real hosts: match requests, many clients submitting them, and
//! waiting for a host to drain. Used by the soak test and the soak run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::Host;

/// A match request with `postings` postings; `seq` makes its candidate id
/// unique.
pub fn job(postings: usize, seq: u64) -> Value {
    let postings: Vec<Value> = (0..postings)
        .map(|i| {
            json!({
                "id": format!("p{i}"),
                "title": "Backend engineer",
                "description": "Build services in Rust on Kubernetes; own what you ship.",
                "required_skills": ["rust", if i % 2 == 0 { "kubernetes" } else { "terraform" }],
                "preferred_skills": ["postgresql"],
                "min_years": (i % 6) as f32,
                "remote": i % 3 != 0,
                "salary_max": 80_000 + 5_000 * i as u32
            })
        })
        .collect();
    json!({
        "candidate": {
            "id": format!("candidate-{seq}"),
            "skills": [{"name": "Rust", "weight": 1.0}, {"name": "k8s", "weight": 0.7}, {"name": "Postgres", "weight": 0.5}],
            "years_experience": 4,
            "remote_ok": true,
            "desired_salary": 95_000
        },
        "postings": postings
    })
}

/// The figures `/readyz` reports.
pub struct Figures {
    pub tasks: u64,
    pub in_flight: u64,
    pub live: u64,
}

pub async fn figures(client: &reqwest::Client, host: &Host) -> anyhow::Result<Figures> {
    let body: Value = client.get(host.url("/readyz")).send().await?.json().await?;
    let n = |k: &str| body[k].as_u64().with_context(|| format!("/readyz has no {k}: {body}"));
    Ok(Figures { tasks: n("tasks")?, in_flight: n("jobs_in_flight")?, live: n("live_instances")? })
}

/// Waits until the host holds no task, no job and no live instance.
pub async fn drain(client: &reqwest::Client, host: &Host, bound: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let f = figures(client, host).await?;
        if f.tasks == 0 && f.in_flight == 0 && f.live == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not drained after {bound:?}: {} tasks, {} jobs in flight, {} live", f.tasks, f.in_flight, f.live);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits `jobs` jobs from `concurrency` clients; returns the 429 retries.
pub async fn submit_all(
    client: &reqwest::Client,
    host: &Arc<Host>,
    jobs: u64,
    concurrency: u64,
    postings: usize,
) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (client, host, next, retries) = (client.clone(), host.clone(), next.clone(), retries.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= jobs {
                    return anyhow::Ok(());
                }
                let body = job(postings, seq);
                loop {
                    let reply = client.post(host.url("/jobs/match")).json(&body).send().await?;
                    match reply.status().as_u16() {
                        202 | 200 => break,
                        429 => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        status => bail!("submit answered {status}: {}", reply.text().await?),
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await??;
    }
    Ok(retries.load(Ordering::Relaxed))
}
