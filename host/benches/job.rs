//! The sandbox's costs against baselines measured in the same run.
//!
//! - `overhead`: one job of `skills` on 10 postings (a fresh instance, `rank`,
//!   the Store dropped), and one of a WASI component that answers at once
//!   (`misbehave`, one posting), against wasmtime instantiating and calling a
//!   trivial component (one export, no arguments) on the same engine, the
//!   same way (async, pooling allocator, epoch interruption).
//! - `compute`: `skills` and `text` on 1,000 postings, compiled natively and
//!   called directly (the input converted from the host's types and the
//!   answer back, as the host would have to) against the same job in wasm.
//! - `job`: every built-in matcher on 10 and 1,000 postings.
//! - `growth`: how a job's time grows: `skills` on 10 to 10,000 postings,
//!   and on 100 postings whose descriptions grow from nothing to 64 KiB
//!   (`text` reads them; `skills` does not).
//! - `workers`: 64 jobs of `skills` on 10 and on 1,000 postings, one at a
//!   time and two at a time on the guest runtime's two threads: what a
//!   second worker adds on this machine's cores.
//!
//! Run with `cargo bench -p matchbox --bench job`; the figures and their
//! ratios go into `bench/RESULTS.md`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use matchbox::registry::{BUILTINS, MatcherRegistry, RegistryConfig};
use matchbox::runtime::{JobInput, JobLimits, Ranking, Sandbox, SandboxConfig};
use matchbox::testing::sample_input;
use matchbox_guest_kit as kit;
use matchbox_guest_kit::Matcher as _;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker};

/// A component with one export that does nothing: the least a component
/// call can cost.
const TRIVIAL: &str = r#"(component
    (core module $m (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

/// What `matchbox` does at start: wasmtime builds an error value whenever a
/// Store drops, and under `RUST_BACKTRACE=1` (set in CI and in many shells)
/// each one captures a backtrace, which made the trivial component 4 times
/// slower (25 µs against 6.5 µs) and every job slower than a host runs it.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called before this benchmark's runtime exists; criterion
        // runs the benchmarks on this one thread, and nothing else reads the
        // environment meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0")
        };
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    sandbox: Arc<Sandbox>,
    registry: MatcherRegistry,
    limits: JobLimits,
}

fn fixture() -> Fixture {
    quiet_library_backtraces();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let registry = rt.block_on(MatcherRegistry::open(sandbox.clone(), RegistryConfig::default())).unwrap();
    let limits = JobLimits { deadline: Duration::from_secs(60), ..JobLimits::default() };
    Fixture { rt, sandbox, registry, limits }
}

impl Fixture {
    async fn job(&self, matcher: &str, input: &JobInput) {
        let matcher = self.registry.get(matcher).unwrap();
        let report = self.sandbox.rank(&matcher.pre, input, &self.limits, CancellationToken::new()).await;
        assert!(report.outcome.is_ok());
    }
}

fn overhead(c: &mut Criterion) {
    let f = fixture();
    let engine = f.sandbox.engine().clone();
    let trivial = Component::new(&engine, TRIVIAL).unwrap();
    let pre = Linker::<()>::new(&engine).instantiate_pre(&trivial).unwrap();
    let input = sample_input(10);

    let mut group = c.benchmark_group("overhead");
    group.bench_function("trivial-component", |b| {
        b.to_async(&f.rt).iter(|| async {
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(1);
            store.epoch_deadline_async_yield_and_update(1);
            let instance = pre.instantiate_async(&mut store).await.unwrap();
            let run = instance.get_typed_func::<(), ()>(&mut store, "run").unwrap();
            run.call_async(&mut store, ()).await.unwrap();
        })
    });
    // A WASI component (Rust's standard library for wasm32-wasip2) that
    // answers at once: `misbehave` ranking one posting, 0.5 each, no work.
    let misbehave = Component::from_file(&engine, matchbox::testing::MISBEHAVE_WASM).unwrap();
    let immediate = f.sandbox.prepare(&misbehave).unwrap();
    let one = sample_input(1);
    group.bench_function("wasi-immediate", |b| {
        b.to_async(&f.rt).iter(|| async {
            let report = f.sandbox.rank(&immediate, &one, &f.limits, CancellationToken::new()).await;
            assert!(report.outcome.is_ok());
        })
    });
    group.bench_function("skills-10", |b| b.to_async(&f.rt).iter(|| f.job("skills", &input)));
    group.finish();
}

/// The host's input, moved into the plain types a native matcher takes.
fn to_kit(input: &JobInput) -> (kit::Candidate, Vec<kit::Posting>, kit::Options) {
    let c = &input.candidate;
    let candidate = kit::Candidate {
        id: c.id.clone(),
        skills: c.skills.iter().map(|s| kit::Skill { name: s.name.clone(), weight: s.weight }).collect(),
        years_experience: c.years_experience,
        location: c.location.clone(),
        remote_ok: c.remote_ok,
        desired_salary: c.desired_salary,
        summary: c.summary.clone(),
    };
    let postings = input
        .postings
        .iter()
        .map(|p| kit::Posting {
            id: p.id.clone(),
            title: p.title.clone(),
            description: p.description.clone(),
            required_skills: p.required_skills.clone(),
            preferred_skills: p.preferred_skills.clone(),
            min_years: p.min_years,
            location: p.location.clone(),
            remote: p.remote,
            salary_min: p.salary_min,
            salary_max: p.salary_max,
        })
        .collect();
    (candidate, postings, kit::Options { top_k: input.options.top_k, min_score: input.options.min_score })
}

fn from_kit(rankings: Vec<kit::Ranking>) -> Vec<Ranking> {
    rankings.into_iter().map(|r| Ranking { posting_id: r.posting_id, score: r.score, reasons: r.reasons }).collect()
}

fn compute(c: &mut Criterion) {
    let f = fixture();
    let input = sample_input(1000);
    let mut group = c.benchmark_group("compute-1000");
    group.bench_function("skills-native", |b| {
        b.iter(|| {
            let (candidate, postings, options) = to_kit(&input);
            from_kit(matchbox_skills::Skills::rank(candidate, postings, options).unwrap())
        })
    });
    group.bench_function("skills-wasm", |b| b.to_async(&f.rt).iter(|| f.job("skills", &input)));
    group.bench_function("text-native", |b| {
        b.iter(|| {
            let (candidate, postings, options) = to_kit(&input);
            from_kit(matchbox_text::Text::rank(candidate, postings, options).unwrap())
        })
    });
    group.bench_function("text-wasm", |b| b.to_async(&f.rt).iter(|| f.job("text", &input)));
    group.finish();
}

fn per_job(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("job");
    for (name, _) in BUILTINS {
        for n in [10, 1000] {
            let input = sample_input(n);
            group.bench_with_input(BenchmarkId::new(*name, n), &input, |b, input| {
                b.to_async(&f.rt).iter(|| f.job(name, input))
            });
        }
    }
    group.finish();
}

fn growth(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("growth");
    group.sample_size(20);
    for n in [10, 100, 1000, 10_000] {
        let input = sample_input(n);
        group.throughput(criterion::Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("skills-postings", n), &input, |b, input| {
            b.to_async(&f.rt).iter(|| f.job("skills", input))
        });
    }
    for bytes in [0, 1 << 10, 16 << 10, 64 << 10] {
        let mut input = sample_input(100);
        for (i, posting) in input.postings.iter_mut().enumerate() {
            let words = format!("posting {i} rust kubernetes on-call code review mentoring ");
            posting.description = words.repeat(bytes / words.len() + 1)[..bytes].to_string();
        }
        group.throughput(criterion::Throughput::Bytes((bytes * 100) as u64));
        for matcher in ["skills", "text"] {
            group.bench_with_input(
                BenchmarkId::new(format!("{matcher}-100-description-bytes"), bytes),
                &input,
                |b, input| b.to_async(&f.rt).iter(|| f.job(matcher, input)),
            );
        }
    }
    group.finish();
}

fn workers(c: &mut Criterion) {
    const JOBS: usize = 64;
    let f = fixture();
    let matcher = f.registry.get("skills").unwrap();
    let mut group = c.benchmark_group("workers");
    group.sample_size(20);
    group.throughput(criterion::Throughput::Elements(JOBS as u64));
    for (postings, workers) in [(10, 1), (10, 2), (1000, 1), (1000, 2)] {
        let input = Arc::new(sample_input(postings));
        group.bench_function(BenchmarkId::new(format!("skills-{postings}-jobs-64"), workers), |b| {
            b.to_async(&f.rt).iter(|| async {
                // As the host's workers do: each runs its jobs one after
                // another on the guest runtime (two threads).
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let (sandbox, matcher, input, limits) =
                            (f.sandbox.clone(), matcher.clone(), input.clone(), f.limits.clone());
                        f.sandbox.on_guests(async move {
                            for _ in (w..JOBS).step_by(workers) {
                                let report =
                                    sandbox.rank(&matcher.pre, &input, &limits, CancellationToken::new()).await;
                                assert!(report.outcome.is_ok());
                            }
                        })
                    })
                    .collect();
                for handle in handles {
                    handle.await.unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead, compute, per_job, growth, workers);
criterion_main!(benches);
