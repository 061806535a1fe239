//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters and histograms are updated where things happen (a job ends, the
//! purge deletes expired tasks); gauges that describe the present (tasks held,
//! jobs in flight, live instances, resident memory) are read at scrape time,
//! so they are never stale and cost nothing between scrapes.
//!
//! Two views: [`View::Public`] has no series that names a tenant or a
//! tenant's matcher (outcomes, latencies, the table, the process), and
//! [`View::Operator`] adds the series by tenant and matcher. A host with
//! tenants serves the public view on its API listener and the operator view
//! only on `--admin-listen`. The series of a matcher are dropped when the
//! matcher is no longer known, so their labels stay bounded by the matchers
//! that exist.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::support::every::Every;
use crate::tasks::{TaskCounts, TaskStatus};

/// Which series a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Nothing that names a tenant or a tenant's matcher.
    Public,
    /// Everything, by tenant and matcher too.
    Operator,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `completed`, `cancelled`, or the failure kind (`timeout`, `trap`, ...).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantJobLabels {
    pub tenant: String,
    pub matcher: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantMatcherLabels {
    pub tenant: String,
    pub matcher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

/// What the host holds right now: read by `/metrics` at scrape time and
/// reported by `/readyz` and `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Present {
    pub tasks: u64,
    pub tasks_by_status: TaskCounts,
    #[serde(flatten)]
    pub host: HostFigures,
}

/// What this process knows by itself, store or no store.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct HostFigures {
    pub jobs_in_flight: u64,
    pub queued: u64,
    pub live_instances: u64,
}

fn job_buckets() -> Histogram {
    // 50 µs to about 52 s.
    Histogram::new(exponential_buckets(50e-6, 4.0, 11))
}

pub struct Metrics {
    public: Registry,
    /// The table's series, which need the store.
    table: Registry,
    operator: Registry,
    jobs: Family<OutcomeLabels, Counter>,
    job_seconds: Histogram,
    tenant_jobs: Family<TenantJobLabels, Counter>,
    tenant_job_seconds: Family<TenantMatcherLabels, Histogram>,
    /// The outcomes seen for each (tenant, matcher), to drop its series.
    labelled: Mutex<HashMap<(String, String), HashSet<String>>>,
    pub instantiate_seconds: Histogram,
    pub tasks_expired: Counter,
    /// Shared jobs this host took over from hosts that did not finish them.
    pub jobs_taken_over: Counter,
    /// Shared jobs this host failed `host_lost`: delivered too many times.
    pub jobs_lost: Counter,
    tasks: Gauge,
    tasks_by_status: Family<StatusLabels, Gauge>,
    jobs_in_flight: Gauge,
    queued: Gauge,
    live_instances: Gauge,
    resident_memory: Gauge,
    above_high_water: Gauge,
    store_up: Gauge,
    high_water_mark: u64,
    above: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// `high_water_mark`: the table size past which a warning is logged and
    /// `matchbox_tasks_above_high_water` reads 1.
    pub fn new(high_water_mark: u64) -> Self {
        let mut public = Registry::default();
        let mut operator = Registry::default();
        let jobs = Family::<OutcomeLabels, Counter>::default();
        let job_seconds = job_buckets();
        let tenant_jobs = Family::<TenantJobLabels, Counter>::default();
        let tenant_job_seconds = Family::<TenantMatcherLabels, Histogram>::new_with_constructor(job_buckets);
        let instantiate_seconds = Histogram::new(exponential_buckets(5e-6, 4.0, 10));
        let tasks_expired = Counter::default();
        let jobs_taken_over = Counter::default();
        let jobs_lost = Counter::default();
        let mut table = Registry::default();
        let [tasks, jobs_in_flight, queued, live_instances, resident_memory, high_water, above_high_water, store_up] =
            std::array::from_fn(|_| Gauge::default());
        let r = &mut public;
        r.register("matchbox_store_up", "1 while the task store answers, 0 while it cannot", store_up.clone());
        r.register("matchbox_jobs", "Jobs that ended, by outcome", jobs.clone());
        r.register("matchbox_job_duration_seconds", "Time from Store creation to the answer", job_seconds.clone());
        r.register(
            "matchbox_instantiate_duration_seconds",
            "Time to instantiate a matcher for a job",
            instantiate_seconds.clone(),
        );
        r.register("matchbox_tasks_expired", "Tasks deleted because their time to live lapsed", tasks_expired.clone());
        r.register(
            "matchbox_jobs_taken_over",
            "Shared jobs this host took over from hosts that did not finish them",
            jobs_taken_over.clone(),
        );
        r.register(
            "matchbox_jobs_lost",
            "Shared jobs this host failed host_lost: given to --max-deliveries hosts, finished by none",
            jobs_lost.clone(),
        );
        r.register("matchbox_jobs_in_flight", "Jobs queued or running", jobs_in_flight.clone());
        r.register("matchbox_queue_depth", "Jobs waiting for a worker", queued.clone());
        r.register("matchbox_live_instances", "Matcher instances alive right now", live_instances.clone());
        r.register("process_resident_memory_bytes", "Resident memory of this process", resident_memory.clone());
        r.register("matchbox_tasks_high_water", "The table size that raises a warning", high_water.clone());
        // The series that need the store, left out while it cannot answer.
        let r = &mut table;
        r.register("matchbox_tasks", "Tasks in the task table", tasks.clone());
        let tasks_by_status = Family::<StatusLabels, Gauge>::default();
        r.register("matchbox_tasks_by_status", "Tasks in the task table, by status", tasks_by_status.clone());
        r.register(
            "matchbox_tasks_above_high_water",
            "1 while the table holds more tasks than its high-water mark",
            above_high_water.clone(),
        );
        operator.register(
            "matchbox_tenant_jobs",
            "Jobs that ended, by tenant, matcher and outcome",
            tenant_jobs.clone(),
        );
        operator.register(
            "matchbox_tenant_job_duration_seconds",
            "Time from Store creation to the answer, by tenant and matcher",
            tenant_job_seconds.clone(),
        );
        high_water.set(high_water_mark as i64);
        Metrics {
            public,
            table,
            operator,
            jobs,
            job_seconds,
            tenant_jobs,
            tenant_job_seconds,
            labelled: Mutex::default(),
            instantiate_seconds,
            tasks_expired,
            jobs_taken_over,
            jobs_lost,
            tasks,
            tasks_by_status,
            jobs_in_flight,
            queued,
            live_instances,
            resident_memory,
            above_high_water,
            store_up,
            high_water_mark,
            above: AtomicBool::new(false),
        }
    }

    /// Records a job's end.
    pub fn job_ended(
        &self,
        matcher: &str,
        tenant: &str,
        outcome: &str,
        elapsed: Duration,
        instantiate: Option<Duration>,
    ) {
        self.jobs.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
        self.job_seconds.observe(elapsed.as_secs_f64());
        let (tenant, matcher) = (tenant.to_string(), matcher.to_string());
        let labels = TenantJobLabels { tenant: tenant.clone(), matcher: matcher.clone(), outcome: outcome.to_string() };
        self.tenant_jobs.get_or_create(&labels).inc();
        let by_matcher = TenantMatcherLabels { tenant: tenant.clone(), matcher: matcher.clone() };
        self.tenant_job_seconds.get_or_create(&by_matcher).observe(elapsed.as_secs_f64());
        self.labelled.lock().unwrap().entry((tenant, matcher)).or_default().insert(labels.outcome);
        if let Some(d) = instantiate {
            self.instantiate_seconds.observe(d.as_secs_f64());
        }
    }

    /// Drops the series of every (tenant, matcher) that `known` no longer
    /// knows: a matcher removed, here or on another host.
    pub fn retain_matchers(&self, known: impl Fn(&str, &str) -> bool) {
        let mut labelled = self.labelled.lock().unwrap();
        labelled.retain(|(tenant, matcher), outcomes| {
            if known(tenant, matcher) {
                return true;
            }
            for outcome in outcomes.drain() {
                self.tenant_jobs.remove(&TenantJobLabels { tenant: tenant.clone(), matcher: matcher.clone(), outcome });
            }
            self.tenant_job_seconds.remove(&TenantMatcherLabels { tenant: tenant.clone(), matcher: matcher.clone() });
            false
        });
    }

    /// Compares the table's size with the high-water mark, logging once each
    /// time it is crossed upwards (the seed asked for an alert before the OOM).
    pub fn observe_table(&self, tasks: u64) {
        let above = tasks > self.high_water_mark;
        if above != self.above.swap(above, Ordering::AcqRel) {
            if above {
                tracing::warn!(tasks, high_water = self.high_water_mark, "the task table crossed its high-water mark");
            } else {
                tracing::info!(
                    tasks,
                    high_water = self.high_water_mark,
                    "the task table is back under its high-water mark"
                );
            }
        }
        self.above_high_water.set(above as i64);
    }

    /// The text exposition of `view`, with the present read in. `table` is
    /// `None` while the task store cannot answer: then its series are left
    /// out and `matchbox_store_up` reads 0, and the rest is served as ever.
    pub fn render(&self, host: HostFigures, table: Option<TaskCounts>, view: View) -> String {
        self.store_up.set(table.is_some().into());
        if let Some(counts) = table {
            self.tasks.set(counts.total() as i64);
            for status in TaskStatus::ALL {
                let count = counts.get(status);
                self.tasks_by_status.get_or_create(&StatusLabels { status: status.as_str() }).set(count as i64);
            }
            self.observe_table(counts.total());
        }
        self.jobs_in_flight.set(host.jobs_in_flight as i64);
        self.queued.set(host.queued as i64);
        self.live_instances.set(host.live_instances as i64);
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.public).expect("writing to a String cannot fail");
        if table.is_some() {
            encode_registry(&mut out, &self.table).expect("writing to a String cannot fail");
        }
        if view == View::Operator {
            encode_registry(&mut out, &self.operator).expect("writing to a String cannot fail");
        }
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}

/// This process's resident set, from `/proc/self/status` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One reading of resident memory, for the status page's chart.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct MemorySample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub resident_memory_bytes: u64,
}

/// Resident memory over the last minutes, sampled in the background so the
/// status page has a history the moment it is opened.
#[derive(Debug)]
pub struct MemoryHistory {
    samples: Mutex<VecDeque<MemorySample>>,
    keep: usize,
}

impl MemoryHistory {
    /// Every `every`, for `window`; sampling stops when `stop` fires. Must
    /// be called inside a tokio runtime.
    pub fn start(every: Duration, window: Duration, stop: CancellationToken) -> Arc<Self> {
        let keep = (window.as_millis() / every.as_millis().max(1)).max(1) as usize;
        let history = Arc::new(MemoryHistory { samples: Mutex::new(VecDeque::with_capacity(keep)), keep });
        tokio::spawn(sample(history.clone(), every, stop));
        history
    }

    fn record(&self, sample: MemorySample) {
        let mut samples = self.samples.lock().unwrap();
        if samples.len() == self.keep {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<MemorySample> {
        self.samples.lock().unwrap().iter().copied().collect()
    }
}

async fn sample(history: Arc<MemoryHistory>, every: Duration, stop: CancellationToken) {
    let mut every = Every::new(every);
    while every.tick(&stop).await {
        let Some(rss) = resident_memory_bytes() else { return };
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        history.record(MemorySample { at_ms: at_ms.as_millis() as u64, resident_memory_bytes: rss });
    }
}
