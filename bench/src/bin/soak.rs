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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use matchbox_tests::Host;
use matchbox_tests::load::{drain, figures, submit_all};

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
    /// Draw resident memory and the task count over time into this SVG file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Fail unless the table and live instances drain to zero.
    #[arg(long)]
    check: bool,
}

/// One reading of the host during the run.
struct Sample {
    seconds: f64,
    rss: u64,
    tasks: u64,
    live: u64,
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
    let rss_peak = samples.iter().map(|s| s.rss).max().unwrap_or(rss_end).max(rss_end);
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
        for s in &samples {
            csv.push_str(&format!("{:.1},{},{},{}\n", s.seconds, s.rss, s.tasks, s.live));
        }
        std::fs::write(path, csv)?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, chart(&samples, args.jobs, &args.ttl))?;
    }
    if args.check {
        drained?;
    }
    Ok(())
}

/// An SVG line chart: resident memory (MiB, left axis) and tasks in the
/// table (right axis) against seconds.
fn chart(samples: &[Sample], jobs: u64, ttl: &str) -> String {
    let (w, h, pad) = (900.0, 420.0, 60.0);
    let t_max = samples.iter().map(|s| s.seconds).fold(1.0, f64::max);
    let rss_max = samples.iter().map(|s| mib(s.rss)).fold(1.0, f64::max) * 1.1;
    let tasks_max = samples.iter().map(|s| s.tasks as f64).fold(1.0, f64::max) * 1.1;
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
    let line = |f: &dyn Fn(&Sample) -> (f64, f64)| {
        samples.iter().map(f).map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ")
    };
    let rss = line(&|s| (x(s.seconds), y(mib(s.rss), rss_max)));
    let tasks = line(&|s| (x(s.seconds), y(s.tasks as f64, tasks_max)));
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="24" font-size="15">matchbox soak: {jobs} jobs, task TTL {ttl}</text>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<line x1="{r}" y1="{pad}" x2="{r}" y2="{b}" stroke="black"/>
<polyline points="{rss}" fill="none" stroke="#c0392b" stroke-width="2"/>
<polyline points="{tasks}" fill="none" stroke="#2471a3" stroke-width="1.5"/>
<text x="{pad}" y="{lt}" fill="#c0392b">resident memory (MiB)</text>
<text x="{r}" y="{lt}" fill="#2471a3" text-anchor="end">tasks in the table</text>
<text x="{mid}" y="{xl}" text-anchor="middle">seconds</text>
"##,
        b = h - pad,
        r = w - pad,
        lt = pad - 8.0,
        mid = w / 2.0,
        xl = h - 20.0,
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n",
            pad - 6.0,
            y(f * rss_max, rss_max) + 4.0,
            f * rss_max
        ));
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.0}</text>\n",
            w - pad + 6.0,
            y(f * tasks_max, tasks_max) + 4.0,
            f * tasks_max
        ));
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n",
            x(f * t_max),
            h - pad + 16.0,
            f * t_max
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

async fn sample(client: reqwest::Client, host: Arc<Host>, started: Instant, stop: Arc<AtomicBool>) -> Vec<Sample> {
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
        out.push(Sample { seconds: started.elapsed().as_secs_f64(), rss, tasks: f.tasks, live: f.live });
    }
    out
}
