//! The sandbox: one wasmtime [`Engine`], one [`MatcherPre`] per loaded
//! matcher, and a fresh [`Store`] for every job, dropped when the job ends
//! whichever way it ends.
//!
//! # Why async wasmtime, with a yield at every epoch tick
//!
//! A job's deadline must cover guest compute *and* host calls. Epoch
//! interruption alone stops compute, but not a guest blocked inside a host
//! call (a WASI sleep or poll). With async exports, a Store yields to the
//! executor at every tick, and the whole call is a future: a timeout or a
//! cancellation around it drops the future, and with it the Store, within one
//! tick, whatever the guest is doing. The caller decides where the future
//! runs: on the sandbox's own runtime (below), where the job workers live.
//!
//! # Why the guests have a runtime of their own
//!
//! The sandbox owns a tokio runtime for guests, one thread per worker:
//! [`Sandbox::on_guests`] runs a future there. Every guest call of the host
//! (a job's `rank` by the workers that run there, a matcher's `info()` at
//! upload or first use) goes through it, so guest code never occupies a
//! thread of the runtime that serves HTTP, whoever asked for it.
//!
//! # What a job may take
//!
//! A job's memory cap covers everything its instance allocates: every
//! linear memory and every table of every core instance in the component,
//! counted together by the Store's limiter (a table element counts as
//! [`TABLE_ELEMENT_BYTES`]). The pool gives each component at most
//! [`ComponentLimits`] core instances, memories and tables, refused when the
//! component is compiled, and is sized so that every slot can hold the
//! largest component accepted: one job can never take another's room.
//!
//! The deadline is counted in epoch ticks by the Store's epoch callback, so a
//! timeout is reported after `deadline / tick` ticks however loaded the
//! machine is; a tokio timeout two ticks later is the backstop for a guest
//! blocked in a host call.

mod bindings;
mod contract;
mod epoch;
mod limits;
mod live;
mod state;

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

pub use bindings::{Candidate, Level, MatchError, MatcherInfo, MatcherPre, Options, Posting, Ranking, Skill};
pub use epoch::Ticks;
pub use limits::JobLimits;
pub use live::LiveInstances;
pub use state::{GuestLog, JobState, LogLine, TABLE_ELEMENT_BYTES};

use bindings::Matcher;

/// Engine-wide settings, fixed at start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The largest linear memory any instance may have: the pooling
    /// allocator's slot size, and the ceiling of every job's memory cap.
    pub max_memory: usize,
    /// How many instances may exist at once (pool slots): the job workers,
    /// plus room for matchers being loaded.
    pub instances: u32,
    /// The epoch tick: the granularity of deadlines and cancellation.
    pub tick: Duration,
    /// Wasm stack per instance; deeper recursion is a stack-overflow failure.
    pub max_wasm_stack: usize,
    /// Bytes of each linear memory (and of each table and async stack) that
    /// stay resident between jobs: reset by the host instead of returned to
    /// the kernel and faulted in again by the next job. See `Sandbox::new`.
    pub keep_resident: usize,
    /// What one component may contain.
    pub per_component: ComponentLimits,
    /// Threads of the guest runtime: as many guests compute at once.
    pub guest_threads: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_memory: 256 << 20,
            instances: 16,
            tick: Duration::from_millis(10),
            max_wasm_stack: 1 << 20,
            keep_resident: 2 << 20,
            per_component: ComponentLimits::default(),
            guest_threads: 2,
        }
    }
}

/// What one component may contain, checked when it is compiled (an upload
/// over them is refused) and used to size the pool.
///
/// Measured (core instances, linear memories, tables): a Rust matcher built
/// for `wasm32-wasip2` 3, 1, 2; a componentize-py 0.25 matcher 14, 1, 2; a
/// componentize-js 0.23 matcher 4, 1, 2. The defaults leave twice that room
/// or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentLimits {
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        ComponentLimits { core_instances: 32, memories: 2, tables: 4 }
    }
}

/// One job's input, in the contract's types.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInput {
    pub candidate: Candidate,
    pub postings: Vec<Posting>,
    pub options: Options,
}

/// Why a job failed. Each names a cause a person can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The matcher refused the input (`invalid-input`): the caller's fault.
    InvalidInput,
    /// The matcher reported an error of its own (`internal`).
    MatcherError,
    /// The guest trapped (a panic, an unreachable, a bad memory access...).
    Trap,
    /// The job ran past its deadline.
    Timeout,
    /// The guest asked for more memory than its cap.
    MemoryLimit,
    /// The guest overflowed its wasm stack.
    StackOverflow,
    /// The guest's answer broke the contract (score out of range, unknown
    /// posting, too many results...).
    ContractViolation,
    /// The job was cancelled before it finished.
    Cancelled,
    /// The host could not run the job (no instance slot, matcher gone).
    Unavailable,
    /// The job was given to hosts `--max-deliveries` times and none of them
    /// finished it.
    HostLost,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::MatcherError => "matcher_error",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::ContractViolation => "contract_violation",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Unavailable => "unavailable",
            FailureKind::HostLost => "host_lost",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, as the task reports it: `{kind, message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFailure {
    pub kind: FailureKind,
    /// What happened, for a person.
    pub message: String,
}

/// The longest failure message a task keeps; a longer one (a guest's
/// error text, a backtrace through functions a guest named) keeps its start.
pub const MAX_FAILURE_MESSAGE: usize = 4096;

impl JobFailure {
    /// A failure of `kind`; the message is cut to [`MAX_FAILURE_MESSAGE`].
    pub fn new(kind: FailureKind, message: impl AsRef<str>) -> Self {
        JobFailure { kind, message: crate::support::text::cut(message.as_ref(), MAX_FAILURE_MESSAGE) }
    }
}

/// Everything a job produced, read out of its Store before the Store dropped.
#[derive(Debug)]
pub struct JobReport {
    pub outcome: Result<Vec<Ranking>, JobFailure>,
    pub log: GuestLog,
    pub stdout: String,
    pub stderr: String,
    /// Time to instantiate the component, if it got that far.
    pub instantiate: Option<Duration>,
    /// Time from Store creation to the answer.
    pub elapsed: Duration,
    /// Epoch ticks from the start of the job to its end, or to the tick at
    /// which the epoch callback stopped it.
    pub ticks: u64,
}

impl JobReport {
    /// The report of a job that failed before it produced anything.
    pub fn failed(failure: JobFailure) -> Self {
        JobReport {
            outcome: Err(failure),
            log: GuestLog::default(),
            stdout: String::new(),
            stderr: String::new(),
            instantiate: None,
            elapsed: Duration::ZERO,
            ticks: 0,
        }
    }
}

/// Raised by the epoch callback to stop a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Interrupted {
    #[error("deadline reached")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
}

/// The engine, the linker, the epoch ticker and the guest runtime, built
/// once per process.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<JobState>,
    config: SandboxConfig,
    live: LiveInstances,
    ticker: epoch::EpochTicker,
    guests: Option<tokio::runtime::Runtime>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let limits = config.per_component;
        let mut pool = PoolingAllocationConfig::default();
        // Every slot can hold the largest component accepted, so no job's
        // component can take the room of another's.
        pool.total_component_instances(config.instances)
            .total_core_instances(config.instances * limits.core_instances)
            .total_memories(config.instances * limits.memories)
            .total_tables(config.instances * limits.tables)
            .max_core_instances_per_component(limits.core_instances)
            .max_memories_per_component(limits.memories)
            .max_tables_per_component(limits.tables)
            .total_stacks(config.instances)
            .max_memory_size(config.max_memory)
            // Every job gets a fresh instance in a reused slot. Returning a
            // slot's pages to the kernel (madvise) and faulting them in again
            // for the next job was a third of a small job's time; keeping the
            // first `keep_resident` bytes and, where the kernel can list the
            // pages a job dirtied (PAGEMAP_SCAN, Linux 6.7+), resetting only
            // those, makes the reset proportional to what the job touched.
            .linear_memory_keep_resident(config.keep_resident)
            .table_keep_resident(config.keep_resident.min(1 << 20))
            .async_stack_keep_resident(config.keep_resident.min(1 << 20))
            .pagemap_scan(Enabled::Auto);
        let mut wasm = Config::new();
        // Bounds checked in the compiled code rather than by guard pages.
        // With guard pages, every job whose guest grows its memory leaves
        // the slot wider than the next instance's initial size, and wasmtime
        // narrows it again with an `mprotect` at the next instantiation:
        // a TLB shootdown on every core that runs a thread of the process,
        // per job. Without guard pages or signal-based traps, a slot stays
        // read-write once grown (the job's cap is the limiter's, below, and
        // every access past the current size is still a trap, by the explicit
        // check) and is only reset. Measured in `bench/RESULTS.md`: a small
        // job's fixed cost 13-23 % lower, compute within the noise.
        //
        // No concurrency support: the contract is synchronous (WASI 0.2 and
        // our own `log` are plain calls), and with it on, wasmtime keeps a
        // table of guest tasks in every Store and enters and leaves a task
        // around every call into the guest, the allocator calls that lower
        // a job's input included. Off, a trivial instantiate-and-call costs
        // less than half, and a small job about 10 % less (`bench/RESULTS.md`).
        wasm.epoch_interruption(true)
            .concurrency_support(false)
            .signals_based_traps(false)
            .memory_guard_size(0)
            .guard_before_linear_memory(false)
            .max_wasm_stack(config.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        // All of WASI 0.2, so that components from any toolchain link; the
        // per-job context grants none of it (see `JobState::new`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        Matcher::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state).map_err(anyhow::Error::from)?;

        let ticker = epoch::EpochTicker::start(engine.clone(), config.tick)?;
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.guest_threads.max(1))
            .thread_name("matchbox-guest")
            .enable_time()
            .build()?;
        Ok(Sandbox { engine, linker, config, live: LiveInstances::default(), ticker, guests: Some(guests) })
    }

    /// Runs `future` on the guest runtime. Dropping the handle does not
    /// stop it; abort it, or cancel the job it runs.
    pub fn on_guests<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.guests.as_ref().expect("the guest runtime lives as long as the sandbox").spawn(future)
    }

    /// What one component may contain.
    pub fn component_limits(&self) -> ComponentLimits {
        self.config.per_component
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The live-instance gauge.
    pub fn live(&self) -> &LiveInstances {
        &self.live
    }

    pub fn ticks(&self) -> &Ticks {
        self.ticker.ticks()
    }

    /// Type-checks a component against the `matcher` world and the host's
    /// imports, once, so that each job only instantiates.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<MatcherPre<JobState>> {
        let pre = self.linker.instantiate_pre(component).map_err(anyhow::Error::from)?;
        MatcherPre::new(pre).map_err(anyhow::Error::from)
    }

    fn store(&self, limits: &JobLimits, cancel: CancellationToken) -> Store<JobState> {
        let ticks = self.ticks().clone();
        let mut state = JobState::new(limits.clone(), cancel, self.live.enter());
        state.started_tick = ticks.now();
        state.deadline_ticks = limits.deadline.as_nanos().div_ceil(self.config.tick.as_nanos().max(1)) as u64;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let now = ticks.now();
            let state = ctx.data_mut();
            let stop = if state.cancel.is_cancelled() {
                Interrupted::Cancelled
            } else if now.saturating_sub(state.started_tick) >= state.deadline_ticks {
                Interrupted::Timeout
            } else {
                return Ok(UpdateDeadline::Yield(1));
            };
            state.interrupted_tick = Some(now);
            Err(stop.into())
        });
        store
    }

    /// Runs `rank` in a fresh instance and checks the answer.
    ///
    /// The Store is created here and dropped before this returns, whether the
    /// guest answered, failed, ran out of time or was cancelled through
    /// `cancel` (or by dropping this future).
    pub async fn rank(
        &self,
        matcher: &MatcherPre<JobState>,
        input: &JobInput,
        limits: &JobLimits,
        cancel: CancellationToken,
    ) -> JobReport {
        let started = Instant::now();
        let mut store = self.store(limits, cancel.clone());
        let start_tick = store.data().started_tick;
        let mut instantiate = None;
        let backstop = limits.deadline + 2 * self.config.tick;

        let call = async {
            let instance = matcher.instantiate_async(&mut store).await?;
            instantiate = Some(started.elapsed());
            instance.call_rank(&mut store, &input.candidate, &input.postings, input.options).await
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Interrupted::Cancelled.into()),
            r = tokio::time::timeout(backstop, call) => r.unwrap_or_else(|_| Err(Interrupted::Timeout.into())),
        };

        let state = store.data();
        let outcome = match result {
            Ok(Ok(rankings)) => contract::check(&rankings, &input.postings, &input.options, limits)
                .map(|()| rankings)
                .map_err(|breach| JobFailure::new(FailureKind::ContractViolation, breach)),
            Ok(Err(MatchError::InvalidInput(m))) => Err(JobFailure::new(FailureKind::InvalidInput, m)),
            Ok(Err(MatchError::Internal(m))) => Err(JobFailure::new(FailureKind::MatcherError, m)),
            Err(err) => Err(classify(&err, state, limits, instantiate.is_some())),
        };
        let (stdout, _) = state.stdout.contents();
        let (stderr, _) = state.stderr.contents();
        let report = JobReport {
            outcome,
            log: state.log.clone(),
            stdout,
            stderr,
            instantiate,
            elapsed: started.elapsed(),
            ticks: state.interrupted_tick.unwrap_or_else(|| self.ticks().now()).saturating_sub(start_tick),
        };
        drop(store);
        report
    }

    /// Calls `info()` in a fresh instance, under `limits`.
    pub async fn info(&self, matcher: &MatcherPre<JobState>, limits: &JobLimits) -> Result<MatcherInfo, JobFailure> {
        let mut store = self.store(limits, CancellationToken::new());
        let call = async {
            let instance = matcher.instantiate_async(&mut store).await?;
            instance.call_info(&mut store).await
        };
        let backstop = limits.deadline + 2 * self.config.tick;
        let result = tokio::time::timeout(backstop, call).await.unwrap_or_else(|_| Err(Interrupted::Timeout.into()));
        result.map_err(|err| classify(&err, store.data(), limits, true))
    }
}

/// Names the cause of a failed call.
fn classify(err: &wasmtime::Error, state: &JobState, limits: &JobLimits, instantiated: bool) -> JobFailure {
    if let Some(interrupted) = err.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Timeout => JobFailure::new(
                FailureKind::Timeout,
                format!("the job ran past its deadline of {}", humantime::format_duration(limits.deadline)),
            ),
            Interrupted::Cancelled => JobFailure::new(FailureKind::Cancelled, "the job was cancelled"),
        };
    }
    if let Some(desired) = state.memory_refused {
        return JobFailure::new(
            FailureKind::MemoryLimit,
            format!(
                "the guest asked for {} of memory in all (its linear memories and tables); the limit is {}",
                mib(desired),
                mib(limits.memory)
            ),
        );
    }
    let stderr = stderr_tail(state);
    match err.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => JobFailure::new(FailureKind::StackOverflow, "the guest overflowed its wasm stack"),
        Some(Trap::Interrupt) => JobFailure::new(FailureKind::Timeout, "the job was interrupted at its deadline"),
        Some(trap) => JobFailure::new(FailureKind::Trap, format!("the guest trapped: {trap}{stderr}")),
        None if !instantiated => {
            JobFailure::new(FailureKind::Unavailable, format!("could not instantiate the matcher: {err:#}"))
        }
        None => JobFailure::new(FailureKind::Trap, format!("the guest failed: {err:#}{stderr}")),
    }
}

/// The end of what the guest wrote to stderr (a panic message, usually),
/// formatted to follow a failure message.
fn stderr_tail(state: &JobState) -> String {
    const MAX: usize = 512;
    let (stderr, _) = state.stderr.contents();
    let text = stderr.trim();
    if text.is_empty() {
        return String::new();
    }
    format!("; guest stderr: {}", crate::support::text::tail(text, MAX))
}

/// Whether a compile error says the component is over the pool's
/// per-component limits (or a memory or table larger than a slot), rather
/// than invalid: wasmtime checks those when it builds a `Component`.
pub fn is_over_limits(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let text = cause.to_string();
        text.contains("exceeds the configured maximum")
            || text.contains("does not fit in pooling allocator requirements")
    })
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(guests) = self.guests.take() {
            // Never block a runtime thread on the guest runtime's threads:
            // cancelled guests stop within a tick on their own.
            guests.shutdown_background();
        }
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
