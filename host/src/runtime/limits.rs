//! What one job may use.

use std::time::Duration;

/// Per-job caps. The engine-wide ceiling (the pooling allocator's slot size)
/// is [`super::SandboxConfig::max_memory`]; a job's `memory` may only be lower.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// Bytes a job's instance may hold in all its linear memories and
    /// tables together.
    pub memory: usize,
    /// Wall time from instantiation to the answer, guest compute and host
    /// calls alike.
    pub deadline: Duration,
    /// Lines and bytes the guest may write through `log` before further lines
    /// are counted and dropped.
    pub log_lines: usize,
    pub log_bytes: usize,
    /// Bytes of stdout and of stderr kept; the rest is dropped.
    pub output_bytes: usize,
    /// Entries in the job's WASI resource table (streams, pollables, ...).
    pub resources: usize,
    /// Reasons per ranking, and bytes per reason, that a guest may return.
    pub reasons_per_ranking: usize,
    pub reason_bytes: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            memory: 64 << 20,
            deadline: Duration::from_secs(10),
            log_lines: 100,
            log_bytes: 16 << 10,
            output_bytes: 16 << 10,
            resources: 64,
            reasons_per_ranking: 16,
            reason_bytes: 1024,
        }
    }
}
