//! Jobs per second through one host and through two hosts sharing a
//! deployment, under the same load in the same run, with the memory store
//! as the baseline; what each job costs Redis; and the Redis memory one
//! stored task takes.
//!
//! ```sh
//! cargo run --release -p matchbox-bench --bin hosts -- --seconds 10 --rounds 3
//! ```
//!
//! Each round runs every setup once, in turn: `memory` (one host, embedded
//! store), `redis-1` (one host on a Redis), `redis-2` (two hosts on one
//! Redis, the clients alternating between them) and `cluster-2` (two hosts
//! on a three-primary Redis Cluster). Every Redis is the benchmark's own,
//! started fresh for the setup, so that its `INFO commandstats` and `INFO
//! cpu` around the load window give the commands and the CPU time each
//! job cost it (summed over the primaries of the cluster). Every client
//! submits with `?wait=` and counts the jobs that completed. Figures are
//! medians over the rounds. Needs `redis-server` and `redis-cli`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use matchbox_tests::load::job;
use matchbox_tests::{Host, RedisCluster, RedisServer};

#[derive(Parser)]
struct Args {
    /// Seconds of load per setup and round.
    #[arg(long, default_value_t = 10)]
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
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Memory,
    Redis(usize),
    Cluster(usize),
}

impl Setup {
    const ALL: [Setup; 4] = [Setup::Memory, Setup::Redis(1), Setup::Redis(2), Setup::Cluster(2)];

    fn name(self) -> String {
        match self {
            Setup::Memory => "memory".into(),
            Setup::Redis(n) => format!("redis-{n}"),
            Setup::Cluster(n) => format!("cluster-{n}"),
        }
    }
}

#[derive(Default)]
struct Figures {
    jobs_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Per job, as the Redis nodes count them; none for the memory store.
    redis_commands: f64,
    redis_cpu_us: f64,
}

/// Commands served (but `INFO` itself) and CPU seconds spent by one Redis
/// node so far.
async fn redis_totals(port: u16) -> anyhow::Result<(u64, f64)> {
    let mut redis =
        redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_multiplexed_async_connection().await?;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut redis).await?;
    let commands = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum();
    let cpu_info: String = redis::cmd("INFO").arg("cpu").query_async(&mut redis).await?;
    let cpu = cpu_info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    Ok((commands, cpu))
}

async fn all_totals(ports: &[u16]) -> anyhow::Result<(u64, f64)> {
    let mut sum = (0, 0.0);
    for &port in ports {
        let (commands, cpu) = redis_totals(port).await?;
        sum = (sum.0 + commands, sum.1 + cpu);
    }
    Ok(sum)
}

async fn load(hosts: &[Host], redis_ports: &[u16], args: &Args) -> anyhow::Result<Figures> {
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..args.concurrency {
        let (client, url, stop) = (client.clone(), hosts[i % hosts.len()].url("/jobs/match?wait=30s"), stop.clone());
        let body = job(args.postings, i as u64);
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = client.post(&url).json(&body).send().await?;
                if reply.status() == 200 {
                    latencies.push(started.elapsed());
                } else {
                    anyhow::bail!("submit answered {}: {}", reply.status(), reply.text().await?);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let before = all_totals(redis_ports).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = all_totals(redis_ports).await?;
    latencies.sort();
    let jobs = latencies.len() as f64;
    let at = |q: f64| latencies[((jobs * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    Ok(Figures {
        jobs_per_second: jobs / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        redis_commands: (after.0 - before.0) as f64 / jobs,
        redis_cpu_us: (after.1 - before.1) * 1e6 / jobs,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The median `MEMORY USAGE` of 100 of the stored tasks' hashes, and what
/// one member of the completed set adds.
async fn task_memory(port: u16) -> anyhow::Result<(f64, f64)> {
    let mut redis =
        redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_multiplexed_async_connection().await?;
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("{matchbox:default}:task:*")
        .arg("COUNT")
        .arg(10_000)
        .query_async(&mut redis)
        .await?;
    let mut usage = Vec::new();
    for key in keys.iter().take(100) {
        let bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut redis).await?;
        usage.extend(bytes.map(|b| b as f64));
    }
    anyhow::ensure!(!usage.is_empty(), "no stored task to measure");
    let completed = "{matchbox:default}:s:completed";
    let set: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(completed).query_async(&mut redis).await?;
    let members: u64 = redis::cmd("ZCARD").arg(completed).query_async(&mut redis).await?;
    Ok((median(usage), set.unwrap_or(0) as f64 / members.max(1) as f64))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results: Vec<Vec<Figures>> = Setup::ALL.iter().map(|_| Vec::new()).collect();
    let mut memory_per_task = None;
    for round in 0..args.rounds {
        for (i, setup) in Setup::ALL.into_iter().enumerate() {
            let (server, cluster) = match setup {
                Setup::Memory => (None, None),
                Setup::Redis(_) => (Some(RedisServer::start().await?), None),
                Setup::Cluster(_) => (None, Some(RedisCluster::start(3, 0).await?)),
            };
            let (store, ports): (Option<String>, Vec<u16>) = match (&server, &cluster) {
                (Some(server), _) => (Some(server.url()), vec![server.port]),
                (_, Some(cluster)) => (Some(cluster.url()), cluster.live().collect()),
                _ => (None, Vec::new()),
            };
            let count = match setup {
                Setup::Memory => 1,
                Setup::Redis(n) | Setup::Cluster(n) => n,
            };
            let mut hosts = Vec::new();
            for _ in 0..count {
                hosts.push(match &store {
                    Some(store) => Host::start(&["--store", store]).await?,
                    None => Host::start(&[]).await?,
                });
            }
            let figures = load(&hosts, &ports, &args).await?;
            eprintln!(
                "round {round} {}: {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms, Redis {:.1} commands and {:.0} µs CPU per job",
                setup.name(),
                figures.jobs_per_second,
                figures.p50_ms,
                figures.p99_ms,
                figures.redis_commands,
                figures.redis_cpu_us
            );
            results[i].push(figures);
            if setup == Setup::Redis(1) && memory_per_task.is_none() {
                memory_per_task = Some(task_memory(ports[0]).await?);
            }
        }
    }
    println!(
        "setup      jobs/s   p50 ms   p99 ms  Redis cmds/job  Redis CPU µs/job   (medians of {} rounds of {} s)",
        args.rounds, args.seconds
    );
    for (i, setup) in Setup::ALL.into_iter().enumerate() {
        let of = |f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
        println!(
            "{:<9} {:>7.0} {:>8.2} {:>8.2} {:>15.1} {:>17.0}",
            setup.name(),
            of(|f| f.jobs_per_second),
            of(|f| f.p50_ms),
            of(|f| f.p99_ms),
            of(|f| f.redis_commands),
            of(|f| f.redis_cpu_us)
        );
    }
    let ratio = median(results[1].iter().map(|f| f.jobs_per_second).collect())
        / median(results[0].iter().map(|f| f.jobs_per_second).collect());
    println!("one host on Redis does {ratio:.2} x the jobs per second of one host on the memory store");
    let (hash, member) = memory_per_task.expect("a redis-1 round ran");
    println!(
        "Redis memory per stored task ({} postings, top 10 rankings): median {hash:.0} bytes for its hash; \
         the completed set adds {member:.0} bytes per member",
        args.postings
    );
    Ok(())
}
