//! The sandbox against real components: the built-in matchers, the
//! `misbehave` guest (one misbehaviour per test) and small hand-written
//! components with several memories or core instances. Every test checks
//! that the live-instance gauge is back to zero and that the host serves the
//! next job.

mod common;

use std::sync::Arc;
use std::time::Duration;

use matchbox::registry::BUILTINS;
use matchbox::runtime::{
    Candidate, FailureKind, JobInput, JobLimits, JobReport, JobState, MatcherInfo, MatcherPre, Options, Posting,
    Sandbox, SandboxConfig, Skill,
};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(10);

struct Loaded {
    pre: MatcherPre<JobState>,
    info: MatcherInfo,
}

async fn load(sandbox: &Sandbox, bytes: &[u8]) -> Loaded {
    let component = wasmtime::component::Component::new(sandbox.engine(), bytes).unwrap();
    let pre = sandbox.prepare(&component).unwrap();
    let info = sandbox.info(&pre, &JobLimits::default()).await.unwrap();
    Loaded { pre, info }
}

struct Fixture {
    sandbox: Arc<Sandbox>,
    misbehave: Loaded,
    skills: Loaded,
    /// Held for the whole test: these tests count epoch ticks, and guests
    /// of other tests spinning on the same two cores would delay the ticker
    /// and the runtime they measure.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fixture() -> Fixture {
    let serial = SERIAL.lock().await;
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig { max_memory: 64 << 20, instances: 8, tick: TICK, ..Default::default() }).unwrap(),
    );
    let bytes = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    let misbehave = load(&sandbox, &bytes).await;
    let skills = load(&sandbox, BUILTINS[0].1).await;
    assert_eq!(sandbox.live().get(), 0, "loading left an instance alive");
    Fixture { sandbox, misbehave, skills, _serial: serial }
}

fn limits() -> JobLimits {
    JobLimits { memory: 32 << 20, deadline: Duration::from_millis(300), ..Default::default() }
}

fn posting(id: &str, skills: &[&str]) -> Posting {
    Posting {
        id: id.into(),
        title: format!("{id} engineer"),
        description: String::new(),
        required_skills: skills.iter().map(|s| s.to_string()).collect(),
        preferred_skills: vec![],
        min_years: 2.0,
        location: None,
        remote: true,
        salary_min: None,
        salary_max: None,
    }
}

fn input(candidate_id: &str) -> JobInput {
    JobInput {
        candidate: Candidate {
            id: candidate_id.into(),
            skills: vec![Skill { name: "rust".into(), weight: 1.0 }, Skill { name: "k8s".into(), weight: 0.5 }],
            years_experience: 4.0,
            location: None,
            remote_ok: true,
            desired_salary: None,
            summary: "backend engineer".into(),
        },
        postings: vec![posting("web", &["css", "react"]), posting("infra", &["rust", "kubernetes"])],
        options: Options { top_k: 5, min_score: 0.0 },
    }
}

impl Fixture {
    async fn misbehave(&self, mode: &str) -> JobReport {
        self.misbehave_with(mode, &limits()).await
    }

    async fn misbehave_with(&self, mode: &str, limits: &JobLimits) -> JobReport {
        let report = self.sandbox.rank(&self.misbehave.pre, &input(mode), limits, CancellationToken::new()).await;
        self.assert_clean_and_serving().await;
        report
    }

    /// No instance outlives its job, and the next job runs fine.
    async fn assert_clean_and_serving(&self) {
        assert_eq!(self.sandbox.live().get(), 0, "a Store outlived its job");
        let next = self.sandbox.rank(&self.misbehave.pre, &input("honest"), &limits(), CancellationToken::new()).await;
        assert!(next.outcome.is_ok(), "the host did not serve the next job: {:?}", next.outcome);
        assert_eq!(self.sandbox.live().get(), 0);
    }
}

fn failure(report: &JobReport) -> (FailureKind, &str) {
    match &report.outcome {
        Ok(r) => panic!("expected a failure, got {r:?}"),
        Err(f) => (f.kind, f.message.as_str()),
    }
}

fn deadline_ticks() -> u64 {
    limits().deadline.as_millis().div_ceil(TICK.as_millis()) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn skills_ranks_the_obvious_posting_first() {
    let f = fixture().await;
    let report = f.sandbox.rank(&f.skills.pre, &input("ada"), &limits(), CancellationToken::new()).await;
    let rankings = report.outcome.unwrap();
    assert_eq!(rankings[0].posting_id, "infra");
    assert!(rankings[0].reasons.iter().any(|r| r == "2/2 required skills"), "{:?}", rankings[0].reasons);
    assert!(report.instantiate.is_some());
    assert_eq!(f.sandbox.live().get(), 0);
    assert_eq!(f.skills.info.name, "skills");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_a_trap_with_the_panic_message() {
    let f = fixture().await;
    let report = f.misbehave("panic").await;
    let (kind, message) = failure(&report);
    assert_eq!(kind, FailureKind::Trap);
    assert!(message.contains("deliberate panic"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_times_out_within_one_tick_of_the_deadline() {
    let f = fixture().await;
    let report = f.misbehave("loop").await;
    let (kind, message) = failure(&report);
    assert_eq!(kind, FailureKind::Timeout, "{message}");
    assert!(message.contains("300ms"), "{message}");
    assert!(report.ticks <= deadline_ticks() + 1, "stopped after {} ticks", report.ticks);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_blocked_in_a_host_call_still_meets_its_deadline() {
    let f = fixture().await;
    let report = f.misbehave("sleep").await;
    let (kind, _) = failure(&report);
    assert_eq!(kind, FailureKind::Timeout);
    // The backstop fires two ticks after the deadline; allow one more for
    // the ticker's own scheduling.
    assert!(report.ticks <= deadline_ticks() + 3, "stopped after {} ticks", report.ticks);
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_allocation_hits_the_memory_limit() {
    let f = fixture().await;
    let report = f.misbehave("grow").await;
    let (kind, message) = failure(&report);
    assert_eq!(kind, FailureKind::MemoryLimit, "{message}");
    assert!(message.contains("32.0 MiB"), "{message}");
}

/// A fresh Store per job is only isolation if the pool slot it reuses is
/// reset: the next job's memory, grown over the pages where the last one
/// left its data, must read zeros, and a read past the end of memory must
/// trap (bounds are checked in the compiled code, not by guard pages: see
/// `Sandbox::new`).
#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_one_job_is_visible_to_the_next() {
    let f = fixture().await;
    let score = |report: &JobReport| match &report.outcome {
        Ok(rankings) => rankings[0].score,
        Err(failure) => panic!("{failure:?}"),
    };
    for round in 0..5 {
        assert_eq!(
            score(&f.misbehave("remember").await),
            1.0,
            "round {round}: the scan missed the marker in its own job"
        );
        assert_eq!(score(&f.misbehave("recall").await), 0.0, "round {round}: a job read what the job before it left");
    }
    let report = f.misbehave("read-past-end").await;
    let (kind, message) = failure(&report);
    assert_eq!(kind, FailureKind::Trap, "{message}");
    assert!(message.contains("out of bounds"), "{message}");
    f.assert_clean_and_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_is_a_stack_overflow() {
    let f = fixture().await;
    let report = f.misbehave("recurse").await;
    assert_eq!(failure(&report).0, FailureKind::StackOverflow, "{:?}", report.outcome);
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_breaches_fail_the_job_and_say_which() {
    let f = fixture().await;
    for (mode, expected) in [
        ("score-high", "outside [0, 1]"),
        ("score-nan", "outside [0, 1]"),
        ("unknown-id", "not submitted"),
        ("duplicate", "ranked twice"),
        ("too-many", "more than top_k"),
        ("unsorted", "not sorted"),
        ("long-reasons", "bytes, more than the cap"),
    ] {
        let report = f.misbehave(mode).await;
        let (kind, message) = failure(&report);
        assert_eq!(kind, FailureKind::ContractViolation, "{mode}: {message}");
        assert!(message.contains(expected), "{mode}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn matcher_errors_keep_their_kind() {
    let f = fixture().await;
    assert_eq!(failure(&f.misbehave("invalid").await).0, FailureKind::InvalidInput);
    assert_eq!(failure(&f.misbehave("internal").await).0, FailureKind::MatcherError);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_is_capped_and_the_job_still_answers() {
    let f = fixture().await;
    let report = f.misbehave("log-flood").await;
    assert!(report.outcome.is_ok());
    assert_eq!(report.log.lines.len(), limits().log_lines);
    assert_eq!(report.log.dropped, 100_000 - limits().log_lines);
    assert!(report.log.bytes <= limits().log_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_stderr_are_captured_and_capped() {
    let f = fixture().await;
    // A thousand WASI writes per stream take a while in a debug build.
    let patient = JobLimits { deadline: Duration::from_secs(30), ..limits() };
    let report = f.misbehave_with("stdout-flood", &patient).await;
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    assert_eq!(report.stdout.len(), limits().output_bytes);
    assert_eq!(report.stderr.len(), limits().output_bytes);
    assert!(report.stdout.starts_with("yyyy"));
}

/// The connection the guest tries is to a port this test listens on, so a
/// sandbox that let it through would say `net: connected`.
#[tokio::test(flavor = "multi_thread")]
async fn files_environment_and_network_are_denied() {
    let f = fixture().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut job = input("capabilities");
    job.candidate.summary = port.to_string();
    let report = f.sandbox.rank(&f.misbehave.pre, &job, &limits(), CancellationToken::new()).await;
    f.assert_clean_and_serving().await;
    let rankings = report.outcome.unwrap();
    let reasons = &rankings[0].reasons;
    assert!(reasons[0].starts_with("file: denied"), "{reasons:?}");
    assert!(reasons[1].starts_with("env: denied"), "{reasons:?}");
    assert_eq!(reasons[2], "args: 0");
    assert!(reasons[3].starts_with("net: denied"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_it_within_one_tick() {
    let f = fixture().await;
    let cancel = CancellationToken::new();
    let long = JobLimits { deadline: Duration::from_secs(3600), ..limits() };
    let job = tokio::spawn({
        let sandbox = f.sandbox.clone();
        let pre = f.misbehave.pre.clone();
        let cancel = cancel.clone();
        async move { sandbox.rank(&pre, &input("loop"), &long, cancel).await }
    });
    // Wait until the guest is running, then cancel and count the ticks it
    // takes to stop.
    f.sandbox.live().wait_for(|n| n > 0).await;
    let cancelled_at = f.sandbox.ticks().now();
    cancel.cancel();
    let report = job.await.unwrap();
    let stopped_after = f.sandbox.ticks().now() - cancelled_at;
    assert_eq!(failure(&report).0, FailureKind::Cancelled);
    assert!(stopped_after <= 2, "stopped {stopped_after} ticks after the cancel");
    f.assert_clean_and_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_job_future_drops_the_store() {
    let f = fixture().await;
    let job = tokio::spawn({
        let sandbox = f.sandbox.clone();
        let pre = f.misbehave.pre.clone();
        async move { sandbox.rank(&pre, &input("loop"), &limits(), CancellationToken::new()).await }
    });
    f.sandbox.live().wait_for(|n| n > 0).await;
    job.abort();
    let _ = job.await;
    f.sandbox.live().wait_for_zero().await;
    f.assert_clean_and_serving().await;
}

/// The built-in matchers use a bump allocator (nothing is freed until the
/// instance is dropped); the largest job the API accepts (a body of the
/// default `--max-body`, through the API's own checks) must still fit in the
/// default `--max-memory`.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_accepted_job_fits_the_default_memory_cap() {
    let config = matchbox::Config::default();
    let sandbox =
        Sandbox::new(SandboxConfig { max_memory: config.max_memory, instances: 4, ..Default::default() }).unwrap();
    let (body, input) = matchbox::testing::largest_accepted_job(config.max_body, config.max_postings);
    assert!(body > config.max_body * 9 / 10, "the job is {body} bytes, not near the cap of {}", config.max_body);
    let limits = JobLimits { memory: config.max_memory, deadline: Duration::from_secs(120), ..JobLimits::default() };
    for (name, bytes) in BUILTINS {
        let loaded = load(&sandbox, bytes).await;
        let report = sandbox.rank(&loaded.pre, &input, &limits, CancellationToken::new()).await;
        assert_eq!(report.outcome.map(|r| r.len()).map_err(|f| format!("{name}: {}", f.message)), Ok(10));
    }
}

/// A component of two core modules, each with a memory of 40 pages (2.5
/// MiB): 5 MiB in all. Under a cap of 4 MiB it is refused, though each
/// memory alone is under it; under 8 MiB it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_counts_every_memory_against_its_cap() {
    let f = fixture().await;
    let component = wasmtime::component::Component::new(f.sandbox.engine(), common::wat_matcher(40, 1, true)).unwrap();
    let pre = f.sandbox.prepare(&component).unwrap();
    let tight = JobLimits { memory: 4 << 20, ..limits() };
    let refused = f.sandbox.info(&pre, &tight).await.unwrap_err();
    assert_eq!(refused.kind, FailureKind::MemoryLimit, "{}", refused.message);
    assert!(refused.message.contains("5.0 MiB of memory in all"), "{}", refused.message);
    let roomy = JobLimits { memory: 8 << 20, ..limits() };
    assert_eq!(f.sandbox.info(&pre, &roomy).await.unwrap().name, "wide");
    f.assert_clean_and_serving().await;
}

/// More memories or core instances than one component may have are refused
/// when the component is compiled, naming the limit, before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn components_over_the_per_component_limits_are_refused_when_compiled() {
    let f = fixture().await;
    let limits = f.sandbox.component_limits();
    let cases = [
        (common::wat_matcher(1, limits.memories as usize, true), "Wasm linear memories"),
        (common::wat_matcher(1, limits.core_instances as usize, false), "core module instances"),
    ];
    for (bytes, named) in cases {
        let err = anyhow::Error::from(wasmtime::component::Component::new(f.sandbox.engine(), bytes).unwrap_err());
        assert!(matchbox::runtime::is_over_limits(&err), "{err:#}");
        assert!(format!("{err:#}").contains(named), "{err:#}");
    }
    // At the limits exactly, they compile.
    for bytes in [
        common::wat_matcher(1, limits.memories as usize - 1, true),
        common::wat_matcher(1, limits.core_instances as usize - 1, false),
    ] {
        wasmtime::component::Component::new(f.sandbox.engine(), bytes).unwrap();
    }
}

/// A matcher that answers `internal` with 8 MiB of text: the task keeps
/// the start of it and how much was cut, never the 8 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_error_message_is_cut_before_it_is_kept() {
    let f = fixture().await;
    let report = f.misbehave("huge-error-8").await;
    let (kind, message) = failure(&report);
    assert_eq!(kind, FailureKind::MatcherError);
    assert!(message.len() <= matchbox::runtime::MAX_FAILURE_MESSAGE, "{} bytes kept", message.len());
    assert!(message.starts_with("eeee") && message.ends_with("bytes cut)"), "{}", &message[message.len() - 40..]);
}
