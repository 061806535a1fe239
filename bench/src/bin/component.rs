//! What one matcher component costs: compile time, load time from the
//! precompiled cache, the `info()` call, and the per-job time (a fresh
//! instance, `rank` on 10 postings, the Store dropped), with the host's
//! default sandbox settings.
//!
//! ```sh
//! cargo run --release -p matchbox-bench --bin component -- path/to/matcher.wasm
//! ```

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use matchbox::registry::cache::{CompiledCache, Lookup};
use matchbox::runtime::{JobLimits, Sandbox};
use matchbox::testing::sample_input;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// The component to measure.
    component: std::path::PathBuf,
    /// Jobs to time.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Postings per job.
    #[arg(long, default_value_t = 10)]
    postings: usize,
    /// Override the sandbox's keep-resident bytes (to compare settings).
    #[arg(long, value_parser = matchbox::support::units::parse_size)]
    keep_resident: Option<usize>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    // As `matchbox` does: no backtrace in every error wasmtime builds when a
    // Store drops (see host/src/main.rs), so jobs cost what a host pays.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet; the runtime is built below.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0")
        };
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let bytes = std::fs::read(&args.component).with_context(|| format!("reading {}", args.component.display()))?;
    let settings = matchbox::service::Settings::from(matchbox::Config::default());
    let mut sandbox_config = settings.sandbox();
    if let Some(bytes) = args.keep_resident {
        sandbox_config.keep_resident = bytes;
    }
    let sandbox = Sandbox::new(sandbox_config)?;
    let engine = sandbox.engine().clone();
    let digest = matchbox::registry::digest(&bytes);

    let started = Instant::now();
    let component = wasmtime::component::Component::new(&engine, &bytes).map_err(anyhow::Error::from)?;
    let compile = started.elapsed();

    let cache_dir = tempfile::tempdir()?;
    let cache = CompiledCache::open(cache_dir.path(), &engine)?;
    cache.store(&digest, &component)?;
    let mut loads = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        match cache.load(&engine, &digest) {
            Lookup::Hit(_) => loads.push(started.elapsed()),
            _ => anyhow::bail!("the cache did not give the component back"),
        }
    }

    let pre = sandbox.prepare(&component)?;
    let limits =
        JobLimits { memory: settings.limits.max_memory, deadline: Duration::from_secs(60), ..JobLimits::default() };
    let started = Instant::now();
    let info = sandbox.info(&pre, &limits).await.map_err(|f| anyhow::anyhow!("info() failed: {}", f.message))?;
    let info_time = started.elapsed();

    let input = sample_input(args.postings);
    let mut jobs = Vec::with_capacity(args.jobs);
    let mut instantiate = Vec::with_capacity(args.jobs);
    for _ in 0..args.jobs {
        let started = Instant::now();
        let report = sandbox.rank(&pre, &input, &limits, CancellationToken::new()).await;
        jobs.push(started.elapsed());
        instantiate.push(report.instantiate.unwrap_or_default());
        if let Err(f) = report.outcome {
            anyhow::bail!("the job failed: {} ({})", f.message, f.kind);
        }
    }

    println!("component          {} ({} {})", args.component.display(), info.name, info.version);
    println!("size               {:.1} MiB", bytes.len() as f64 / (1 << 20) as f64);
    println!("compile            {:.0} ms", ms(compile));
    println!("load from cache    {:.1} ms (median of 5)", ms(median(loads)));
    println!("info()             {:.1} ms (first instance)", ms(info_time));
    println!(
        "per job            {:.3} ms median over {} jobs of {} postings",
        ms(median(jobs)),
        args.jobs,
        args.postings
    );
    println!("  instantiate      {:.3} ms median", ms(median(instantiate)));
    Ok(())
}
