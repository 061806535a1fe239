//! Jobs per second through one host and through two hosts sharing one
//! Redis, under the same load in the same run, with the memory store as the
//! baseline; and the Redis memory one stored task takes.
//!
//! ```sh
//! cargo run --release -p matchbox-bench --bin hosts -- --seconds 15 --rounds 3
//! ```
//!
//! Each round runs every setup once, in turn: `memory` (one host, embedded
//! store), `redis-1` (one host on Redis) and `redis-2` (two hosts on one
//! Redis, the clients alternating between them). Every client submits with
//! `?wait=` and counts the jobs that completed. Figures are medians over the
//! rounds. Needs a Redis on `--redis` (127.0.0.1:6379 by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use matchbox_tests::Host;
use matchbox_tests::load::job;

#[derive(Parser)]
struct Args {
    /// Seconds of load per setup and round.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Rounds; figures are medians over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Clients submitting at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Postings per job.
    #[arg(long, default_value_t = 100)]
    postings: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

struct Figures {
    jobs_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn load(hosts: &[Arc<Host>], args: &Args) -> anyhow::Result<Figures> {
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..args.concurrency {
        let (client, host, stop) = (client.clone(), hosts[i % hosts.len()].clone(), stop.clone());
        let body = job(args.postings, i as u64);
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = client.post(host.url("/jobs/match?wait=30s")).json(&body).send().await?;
                if reply.status() == 200 {
                    latencies.push(started.elapsed());
                } else {
                    anyhow::bail!("submit answered {}: {}", reply.status(), reply.text().await?);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    Ok(Figures { jobs_per_second: latencies.len() as f64 / elapsed, p50_ms: at(0.5), p99_ms: at(0.99) })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setups: [(&str, usize); 3] = [("memory", 1), ("redis-1", 1), ("redis-2", 2)];
    let mut results: Vec<Vec<Figures>> = setups.iter().map(|_| Vec::new()).collect();
    let mut sample_key = None;
    for round in 0..args.rounds {
        for (i, (name, count)) in setups.iter().enumerate() {
            let prefix = format!("matchbox-bench-{}-{round}-{i}", std::process::id());
            let mut hosts = Vec::new();
            for _ in 0..*count {
                let host = if *name == "memory" {
                    Host::start(&[]).await?
                } else {
                    Host::start(&["--store", &args.redis, "--redis-prefix", &prefix]).await?
                };
                hosts.push(Arc::new(host));
            }
            let figures = load(&hosts, &args).await?;
            eprintln!(
                "round {round} {name}: {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms",
                figures.jobs_per_second, figures.p50_ms, figures.p99_ms
            );
            results[i].push(figures);
            if *name == "redis-1" && sample_key.is_none() {
                sample_key = Some(prefix);
            }
        }
    }
    println!("setup     jobs/s   p50 ms   p99 ms   (medians of {} rounds of {} s)", args.rounds, args.seconds);
    for (i, (name, _)) in setups.iter().enumerate() {
        let of = |f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
        println!("{name:<8} {:>7.0} {:>8.2} {:>8.2}", of(|f| f.jobs_per_second), of(|f| f.p50_ms), of(|f| f.p99_ms));
    }

    // The memory one completed task takes in Redis (its hash; the status
    // sets add one member each).
    let client = redis::Client::open(args.redis.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let prefix = sample_key.expect("a redis-1 round ran");
    let keys: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:default:task:*"))
        .arg("COUNT")
        .arg(10_000)
        .query_async::<(u64, Vec<String>)>(&mut redis)
        .await?
        .1;
    let mut usage = Vec::new();
    for key in keys.iter().take(100) {
        let bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut redis).await?;
        usage.extend(bytes);
    }
    let member: Option<u64> =
        redis::cmd("MEMORY").arg("USAGE").arg(format!("{prefix}:tasks:completed")).query_async(&mut redis).await?;
    let members: u64 = redis::cmd("ZCARD").arg(format!("{prefix}:tasks:completed")).query_async(&mut redis).await?;
    println!(
        "Redis memory per stored task ({} postings, top 10 rankings): median {:.0} bytes for its hash over {} tasks; \
         the completed set adds {:.0} bytes per member",
        args.postings,
        median(usage.iter().map(|&u| u as f64).collect()),
        usage.len(),
        member.unwrap_or(0) as f64 / members.max(1) as f64
    );
    Ok(())
}
