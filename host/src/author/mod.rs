//! The matcher author's loop, without a server: `matchbox check` answers
//! what `PUT /matchers/{name}` would, `matchbox run` runs one job in the
//! sandbox the server uses, and `matchbox new` ([`template`]) writes a
//! project to start from.
//!
//! Both commands build what `matchbox serve` builds, with the same flags and
//! defaults (`--max-memory`, `--job-timeout`, `--max-component-size`,
//! `--cache-dir`): the same engine settings, the same registry validation
//! (world, imports, per-component limits, `info()`), the same request
//! checks and the same contract re-check of the answer. What differs is
//! only that nothing is kept: no data directory, no task table.
//!
//! Exit codes follow the client commands' ([`crate::cli::exit`]): 0 the
//! component is accepted, or the job completed; 1 the job failed (its kind
//! and message printed as a task would store them); 2 refused, as the server
//! would refuse it (the component, with the upload's error code, or the
//! input); 4 nothing was run (a file is missing or not JSON, or a flag is
//! wrong).

pub mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::api::types::{Caps, MatchRequest};
use crate::cli::{Failure, exit, read_json};
use crate::registry::{Access, Matcher, MatcherRegistry, RegistryConfig};
use crate::runtime::{JobLimits, JobReport, Sandbox, SandboxConfig};
use crate::support::units::{parse_count, parse_positive_duration, parse_positive_size};
use crate::tasks::{Clock, Task, TaskEnd, TaskLogs, TaskOutcome};
use crate::tenants::DEFAULT_TENANT;

/// The sandbox flags of `matchbox serve` that decide what a matcher may
/// be and do, with serve's names, variables and defaults.
#[derive(Debug, Clone, Args)]
pub struct SandboxFlags {
    /// Linear memory one job's instance may use.
    #[arg(long, env = "MATCHBOX_MAX_MEMORY", default_value = crate::tenants::defaults::MAX_MEMORY, value_parser = parse_positive_size)]
    pub max_memory: usize,
    /// Deadline of one job, from instantiation to the answer.
    #[arg(long, env = "MATCHBOX_JOB_TIMEOUT", default_value = crate::tenants::defaults::JOB_TIMEOUT, value_parser = parse_positive_duration)]
    pub job_timeout: Duration,
    /// Largest matcher component accepted.
    #[arg(long, env = "MATCHBOX_MAX_COMPONENT_SIZE", default_value = "64MiB", value_parser = parse_positive_size)]
    pub max_component_size: usize,
    /// Most postings in one job.
    #[arg(long, env = "MATCHBOX_MAX_POSTINGS", default_value = "10000", value_parser = parse_count)]
    pub max_postings: usize,
    /// Where compiled matchers are cached, shared with `matchbox serve`
    /// [default: the user's cache directory, e.g. ~/.cache/matchbox].
    #[arg(long, env = "MATCHBOX_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component to check.
    pub file: PathBuf,
    /// The name it would be uploaded as [default: the file's stem].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A component file (`.wasm`), or the name of a built-in matcher.
    pub matcher: String,
    /// A JSON file holding the candidate.
    #[arg(long)]
    pub candidate: PathBuf,
    /// A JSON file holding an array of postings.
    #[arg(long)]
    pub postings: PathBuf,
    /// How many rankings to return.
    #[arg(long, default_value_t = crate::api::types::DEFAULT_TOP_K)]
    pub top_k: u32,
    /// Leave out postings scoring under this.
    #[arg(long, default_value_t = 0.0)]
    pub min_score: f32,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

/// What `matchbox serve` would build to hold and run matchers, without
/// its task table.
struct Local {
    sandbox: Arc<Sandbox>,
    registry: MatcherRegistry,
    flags: SandboxFlags,
}

impl Local {
    async fn open(flags: SandboxFlags) -> Result<Local, Failure> {
        // A job and an `info()` at most at once, as on a one-worker host.
        let config =
            SandboxConfig { max_memory: flags.max_memory, instances: 4, guest_threads: 1, ..Default::default() };
        let sandbox = Arc::new(
            Sandbox::new(config).map_err(|e| failure(exit::LOCAL, format!("creating the wasm engine: {e:#}")))?,
        );
        let cache_dir = flags.cache_dir.clone().or_else(|| dirs::cache_dir().map(|d| d.join("matchbox")));
        let registry = MatcherRegistry::open(
            sandbox.clone(),
            RegistryConfig {
                data_dir: None,
                cache_dir,
                matchers_dir: None,
                max_component_size: flags.max_component_size,
                ..RegistryConfig::default()
            },
        )
        .await
        .map_err(|e| failure(exit::LOCAL, format!("{e:#}")))?;
        Ok(Local { sandbox, registry, flags })
    }

    /// Validates `bytes` as `PUT /matchers/{name}` would, on a host without
    /// tenants. Returns the matcher and how long loading it took, and
    /// whether it came from the precompiled cache.
    async fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<(Arc<Matcher>, Duration, bool), ApiError> {
        let access = Access { caller: DEFAULT_TENANT, owner: None, shared: None, uploads: usize::MAX };
        let hits = self.registry.stats.cache_hits.load(Ordering::Relaxed);
        let started = Instant::now();
        let (matcher, _) = self.registry.upload(access, name, bytes).await?;
        let cached = self.registry.stats.cache_hits.load(Ordering::Relaxed) > hits;
        Ok((matcher, started.elapsed(), cached))
    }
}

/// The name a file would be uploaded as when none is given.
fn stem(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read(file: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(file).map_err(|e| failure(exit::LOCAL, format!("{}: {e}", file.display())))
}

/// The body and exit code of a refusal, as the server would answer it.
fn refused(err: ApiError, json_out: bool) -> Failure {
    let body = json!({ "error": { "code": err.code, "message": err.message } });
    if json_out {
        println!("{body}");
    } else {
        println!("refused: {} {} {}", err.status.as_u16(), err.code, err.message);
    }
    // The message is on stdout, as the server's answer; stderr says only
    // what the exit code means.
    failure(exit::REFUSED, format!("refused ({} {})", err.status.as_u16(), err.code))
}

/// `matchbox check FILE`: what `PUT /matchers/{name}` would answer.
pub async fn check(args: CheckArgs, json_out: bool) -> Result<(), Failure> {
    let bytes = read(&args.file)?;
    let name = args.name.clone().unwrap_or_else(|| stem(&args.file));
    let local = Local::open(args.sandbox).await?;
    match local.upload(&name, bytes).await {
        Ok((matcher, took, cached)) => {
            let summary = matcher.summary();
            if json_out {
                println!("{}", serde_json::to_value(&summary).expect("a summary serialises"));
            } else {
                println!("accepted: PUT /matchers/{name} would answer 201 Created");
                println!("  info(): {} {}: {}", matcher.info.name, summary.version, summary.description);
                println!("  {} ({})", summary.digest, size(summary.size));
                println!("  loaded in {} ({})", ms(took), if cached { "from the cache" } else { "compiled" });
            }
            Ok(())
        }
        Err(err) => Err(refused(err, json_out)),
    }
}

/// `matchbox run MATCHER --candidate C --postings P`: one job, as a
/// one-worker host without tenants would run it.
pub async fn run(args: RunArgs, json_out: bool) -> Result<(), Failure> {
    let body = json!({
        "candidate": read_json(&args.candidate)?,
        "postings": read_json(&args.postings)?,
        "options": { "top_k": args.top_k, "min_score": args.min_score },
    });
    let local = Local::open(args.sandbox.clone()).await?;
    let is_file = args.matcher.ends_with(".wasm") || Path::new(&args.matcher).is_file();
    let (matcher, load) = if is_file {
        let path = Path::new(&args.matcher);
        let (matcher, took, cached) = local.upload(&stem(path), read(path)?).await.map_err(|e| refused(e, json_out))?;
        (matcher, Some((took, cached)))
    } else {
        let matcher = local.registry.get(&args.matcher).ok_or_else(|| {
            let err = crate::service::SubmitError::UnknownMatcher(crate::registry::ResolveError::Unknown(
                args.matcher.clone(),
            ));
            refused(ApiError::from(err), json_out)
        })?;
        (matcher, None)
    };

    // The server's own checks of a request's content.
    let request: MatchRequest = serde_json::from_value(body).map_err(|e| {
        refused(ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_json", e.to_string()), json_out)
    })?;
    let (_, input) =
        request.into_job(&Caps { max_postings: local.flags.max_postings }).map_err(|e| refused(e, json_out))?;

    let limits =
        JobLimits { memory: local.flags.max_memory, deadline: local.flags.job_timeout, ..JobLimits::default() };
    let (sandbox, job_matcher, job_input) = (local.sandbox.clone(), matcher.clone(), input);
    let report = local
        .sandbox
        .on_guests(async move { sandbox.rank(&job_matcher.pre, &job_input, &limits, CancellationToken::new()).await })
        .await
        .map_err(|e| failure(exit::LOCAL, format!("the job's task failed: {e}")))?;

    let task = as_task(&matcher, &report);
    let shown = serde_json::to_value(&task).expect("a task serialises");
    if json_out {
        println!("{shown}");
        eprint!("{}", phases(&matcher, load, &report));
    } else {
        print!("{}", phases(&matcher, load, &report));
        crate::cli::print_rankings(&shown);
        print!("{}", logs(task.logs.as_ref()));
    }
    match &report.outcome {
        Ok(_) => Ok(()),
        Err(f) => {
            if !json_out {
                println!("failed: {} {}", f.kind, f.message);
            }
            Err(failure(exit::TASK_FAILED, format!("the job failed ({})", f.kind)))
        }
    }
}

/// The task a server would store for this job, with the matcher's logs
/// (the author's own matcher, so they are kept).
fn as_task(matcher: &Matcher, report: &JobReport) -> Task {
    let clock = Clock::new();
    let now = clock.now();
    let mut task =
        Task::pending(clock.new_task_id(), DEFAULT_TENANT.into(), matcher.name.clone(), now, Duration::from_secs(3600));
    let outcome = match &report.outcome {
        Ok(rankings) => TaskOutcome::Completed(rankings.clone()),
        Err(f) => TaskOutcome::Failed(f.clone()),
    };
    task.apply(TaskEnd { outcome, logs: Some(TaskLogs::of(report)) }, clock.now());
    task
}

/// The matcher and the time of each phase.
fn phases(matcher: &Matcher, load: Option<(Duration, bool)>, report: &JobReport) -> String {
    let mut out = format!(
        "matcher {}: {} {} ({}, {})\n",
        matcher.name,
        matcher.info.name,
        matcher.info.version,
        &matcher.digest[..matcher.digest.len().min(19)],
        size(matcher.size)
    );
    match load {
        Some((took, cached)) => {
            let how = if cached { "loaded from the precompiled cache" } else { "compiled, and cached for next time" };
            out += &format!("  load         {:>10}  ({how}; includes the upload checks and info())\n", ms(took));
        }
        None => out += "  load         built in\n",
    }
    match report.instantiate {
        Some(inst) => {
            out += &format!("  instantiate  {:>10}\n", ms(inst));
            out += &format!("  rank         {:>10}\n", ms(report.elapsed.saturating_sub(inst)));
        }
        None => out += &format!("  instantiate  failed after {}\n", ms(report.elapsed)),
    }
    out
}

/// The matcher's log lines and output, for a person.
fn logs(logs: Option<&TaskLogs>) -> String {
    let Some(logs) = logs else { return String::new() };
    let mut out = String::new();
    if !logs.lines.is_empty() || logs.dropped > 0 {
        out += "log:\n";
        for line in &logs.lines {
            out += &format!("  {:<5} {}\n", line.level.as_str(), line.message);
        }
        if logs.dropped > 0 {
            out += &format!("  ({} more lines dropped at the caps)\n", logs.dropped);
        }
    }
    for (name, text) in [("stdout", &logs.stdout), ("stderr", &logs.stderr)] {
        if !text.is_empty() {
            out += &format!("{name}:\n");
            for line in text.lines() {
                out += &format!("  {line}\n");
            }
        }
    }
    out
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 { format!("{:.2} s", ms / 1e3) } else { format!("{ms:.3} ms") }
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
