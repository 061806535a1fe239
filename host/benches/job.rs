//! Per-job cost of the sandbox: a fresh instance, one `rank` call, and the
//! Store dropped, for the built-in matchers on 10 and 1,000 postings.
//!
//! Run with `cargo bench -p matchbox --bench job`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use matchbox::registry::{BUILTINS, MatcherRegistry, RegistryConfig};
use matchbox::runtime::{JobLimits, Sandbox, SandboxConfig};
use matchbox::testing::sample_input;
use tokio_util::sync::CancellationToken;

fn per_job(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let registry = rt.block_on(MatcherRegistry::open(sandbox.clone(), RegistryConfig::default())).unwrap();
    let limits = JobLimits { deadline: Duration::from_secs(60), ..JobLimits::default() };
    let mut group = c.benchmark_group("job");
    for (name, _) in BUILTINS {
        let matcher = registry.get(name).unwrap();
        for n in [10, 1000] {
            let input = sample_input(n);
            group.bench_with_input(BenchmarkId::new(*name, n), &input, |b, input| {
                b.to_async(&rt).iter(|| async {
                    let report = sandbox.rank(&matcher.pre, input, &limits, CancellationToken::new()).await;
                    assert!(report.outcome.is_ok());
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, per_job);
criterion_main!(benches);
