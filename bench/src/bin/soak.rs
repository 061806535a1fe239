//! Soak run: many jobs with a short time to live through a real
//! `matchbox serve`, resident memory and the task table sampled throughout.
//!
//! ```sh
//! cargo run --release -p matchbox-bench --bin soak -- --jobs 100000 --ttl 2s --samples soak.csv
//! ```
//!
//! It starts the host, warms it up, submits `--jobs` jobs with
//! `--concurrency` clients (retrying a 429 after its Retry-After), waits for
//! every task to expire and every instance to drop, and prints resident memory
//! at start, after warm-up, at peak and at the end. With `--check` it exits
//! non-zero unless the table and the live instances drained to zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use matchbox_tests::Host;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Jobs to submit.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Clients submitting at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// The host's task time to live.
    #[arg(long, default_value = "2s")]
    ttl: String,
    /// Postings per job.
    #[arg(long, default_value_t = 10)]
    postings: usize,
    /// Write `seconds,rss_bytes,tasks,live_instances` samples here.
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
    /// Fail unless the table and live instances drain to zero.
    #[arg(long)]
    check: bool,
}

fn job(postings: usize, seq: u64) -> Value {
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

struct Figures {
    tasks: u64,
    in_flight: u64,
    live: u64,
}

async fn figures(client: &reqwest::Client, host: &Host) -> anyhow::Result<Figures> {
    let body: Value = client.get(host.url("/readyz")).send().await?.json().await?;
    let n = |k: &str| body[k].as_u64().with_context(|| format!("/readyz has no {k}: {body}"));
    Ok(Figures { tasks: n("tasks")?, in_flight: n("jobs_in_flight")?, live: n("live_instances")? })
}

async fn drain(client: &reqwest::Client, host: &Host, bound: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let f = figures(client, host).await?;
        if f.tasks == 0 && f.in_flight == 0 && f.live == 0 {
            return Ok(());
        }
        eprintln!("draining: {} tasks, {} jobs in flight, {} live", f.tasks, f.in_flight, f.live);
        if Instant::now() > deadline {
            bail!("not drained after {bound:?}: {} tasks, {} jobs in flight, {} live", f.tasks, f.in_flight, f.live);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = Arc::new(Host::start(&["--task-ttl", &args.ttl, "--max-tasks", "1000000"]).await?);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency as usize).build()?;
    let ttl = humantime::parse_duration(&args.ttl)?;
    let drain_bound = ttl + Duration::from_secs(120);
    let rss_start = host.rss_bytes()?;

    // Warm-up: let allocators and pools reach their working size.
    let warmup = (args.jobs / 20).clamp(100, 5_000);
    submit_all(&client, &host, warmup, args.concurrency, args.postings).await?;
    drain(&client, &host, drain_bound).await?;
    let rss_warm = host.rss_bytes()?;

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(client.clone(), host.clone(), started, stop.clone()));
    let retries = submit_all(&client, &host, args.jobs, args.concurrency, args.postings).await?;
    let submit_secs = started.elapsed().as_secs_f64();
    let peak_tasks = figures(&client, &host).await?.tasks;
    let drained = drain(&client, &host, drain_bound).await;
    if let Err(e) = &drained {
        eprintln!("drain: {e:#}");
    }
    // A moment for the allocator to return freed pages before the last read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = host.rss_bytes()?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await?;
    let rss_peak = samples.iter().map(|s| s.1).max().unwrap_or(rss_end).max(rss_end);
    let end = figures(&client, &host).await?;

    println!("jobs submitted        {}", args.jobs);
    println!(
        "submit time           {submit_secs:.1} s ({:.0} jobs/s, {retries} retries after 429)",
        args.jobs as f64 / submit_secs
    );
    println!("tasks right after     {peak_tasks}");
    println!("tasks at end          {} (jobs in flight {}, live instances {})", end.tasks, end.in_flight, end.live);
    println!("rss at start          {:.1} MiB", mib(rss_start));
    println!("rss after warm-up     {:.1} MiB", mib(rss_warm));
    println!("rss peak              {:.1} MiB", mib(rss_peak));
    println!(
        "rss at end            {:.1} MiB ({:+.1}% against warm-up)",
        mib(rss_end),
        100.0 * (rss_end as f64 / rss_warm as f64 - 1.0)
    );
    if let Some(path) = &args.samples {
        let mut csv = String::from("seconds,rss_bytes,tasks,live_instances\n");
        for (t, rss, tasks, live) in &samples {
            csv.push_str(&format!("{t:.1},{rss},{tasks},{live}\n"));
        }
        std::fs::write(path, csv)?;
    }
    if args.check {
        drained?;
    }
    Ok(())
}

/// Submits `jobs` jobs from `concurrency` clients; returns the 429 retries.
async fn submit_all(
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

async fn sample(
    client: reqwest::Client,
    host: Arc<Host>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(f64, u64, u64, u64)> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (rss, f) = match (host.rss_bytes(), figures(&client, &host).await) {
            (Ok(rss), Ok(f)) => (rss, f),
            (rss, f) => {
                eprintln!("sample failed: {:?} {:?}", rss.err(), f.err());
                continue;
            }
        };
        out.push((started.elapsed().as_secs_f64(), rss, f.tasks, f.live));
    }
    out
}
