//! Per-job cost of the sandbox: a fresh instance, one `rank` call, and the
//! Store dropped, for the built-in matchers on 10 and 1,000 postings.
//!
//! Run with `cargo bench -p matchbox --bench job`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use matchbox::registry::{BUILTINS, MatcherRegistry, RegistryConfig};
use matchbox::runtime::{Candidate, JobInput, JobLimits, Options, Posting, Sandbox, SandboxConfig, Skill};
use tokio_util::sync::CancellationToken;

const SKILLS: [&str; 12] =
    ["rust", "go", "python", "kubernetes", "terraform", "postgresql", "react", "aws", "kafka", "redis", "java", "css"];

/// A candidate and `n` postings with varied skills, titles and places.
pub fn input(n: usize) -> JobInput {
    let candidate = Candidate {
        id: "bench".into(),
        skills: SKILLS[..5].iter().map(|s| Skill { name: (*s).into(), weight: 0.8 }).collect(),
        years_experience: 6.0,
        location: Some("Berlin".into()),
        remote_ok: true,
        desired_salary: Some(90_000),
        summary: "Backend engineer building distributed systems in Rust and Go on Kubernetes.".into(),
    };
    let postings = (0..n)
        .map(|i| Posting {
            id: format!("posting-{i}"),
            title: format!("{} engineer", SKILLS[i % SKILLS.len()]),
            description: format!(
                "Join a team that builds {} services with {} and {}; on-call rotation, code review, mentoring.",
                SKILLS[i % SKILLS.len()],
                SKILLS[(i + 3) % SKILLS.len()],
                SKILLS[(i + 7) % SKILLS.len()]
            ),
            required_skills: (0..3).map(|k| SKILLS[(i + k * 5) % SKILLS.len()].to_string()).collect(),
            preferred_skills: vec![SKILLS[(i + 1) % SKILLS.len()].to_string()],
            min_years: (i % 8) as f32,
            location: Some(if i % 3 == 0 { "Berlin" } else { "Lisbon" }.into()),
            remote: i % 2 == 0,
            salary_min: Some(60_000),
            salary_max: Some(70_000 + (i as u32 % 5) * 10_000),
        })
        .collect();
    JobInput { candidate, postings, options: Options { top_k: 10, min_score: 0.0 } }
}

fn per_job(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let registry = rt.block_on(MatcherRegistry::open(sandbox.clone(), RegistryConfig::default())).unwrap();
    let limits = JobLimits { deadline: Duration::from_secs(60), ..JobLimits::default() };
    let mut group = c.benchmark_group("job");
    for (name, _) in BUILTINS {
        let matcher = registry.get(name).unwrap();
        for n in [10, 1000] {
            let input = input(n);
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
