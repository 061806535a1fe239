//! The per-job host state: everything a Store owns, dropped with it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, matchbox::matcher};
use super::limits::JobLimits;
use super::live::LiveGuard;

/// One line the guest wrote through `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// What the guest said through `log`, kept up to the job's caps.
#[derive(Debug, Default, Clone)]
pub struct GuestLog {
    pub lines: Vec<LogLine>,
    pub bytes: usize,
    /// Lines refused because a cap was reached.
    pub dropped: usize,
}

/// What one table element counts for against a job's memory cap: a
/// reference, the size of a pointer.
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// The data of a job's Store.
pub struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: JobLimits,
    /// Bytes of every linear memory and table of the instance, together:
    /// what the job's memory cap bounds.
    pub(super) memory_in_use: usize,
    /// Set when the guest asked for more memory than `limits.memory`, so that
    /// the trap that usually follows (a Rust guest aborts when an allocation
    /// fails) is reported as the memory limit it really is.
    pub(super) memory_refused: Option<usize>,
    pub(super) log: GuestLog,
    pub(super) stdout: CappedPipe,
    pub(super) stderr: CappedPipe,
    pub(super) cancel: CancellationToken,
    /// Epoch tick at which the job started; the deadline is counted from it.
    pub(super) started_tick: u64,
    pub(super) deadline_ticks: u64,
    /// The tick at which the epoch callback stopped the guest, if it did.
    pub(super) interrupted_tick: Option<u64>,
    /// Keeps the live-instance gauge up for exactly as long as the Store lives.
    _live: LiveGuard,
}

impl JobState {
    pub(super) fn new(limits: JobLimits, cancel: CancellationToken, live: LiveGuard) -> Self {
        let stdout = CappedPipe::new(limits.output_bytes);
        let stderr = CappedPipe::new(limits.output_bytes);
        // Nothing is granted: no preopened directories, no environment, no
        // arguments, stdin closed, and every socket address refused. WASI is
        // linked in full only so that components from any toolchain link.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resources);
        JobState {
            wasi,
            table,
            limits,
            memory_in_use: 0,
            memory_refused: None,
            log: GuestLog::default(),
            stdout,
            stderr,
            cancel,
            started_tick: 0,
            deadline_ticks: 0,
            interrupted_tick: None,
            _live: live,
        }
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl matcher::types::Host for JobState {}

impl matcher::log::Host for JobState {
    fn log(&mut self, level: Level, message: String) {
        let log = &mut self.log;
        if log.lines.len() >= self.limits.log_lines || log.bytes + message.len() > self.limits.log_bytes {
            log.dropped += 1;
            return;
        }
        // The line joins the task's trace at once, inside the job's span.
        match level {
            Level::Debug => tracing::debug!(target: "matchbox::guest", "{message}"),
            Level::Info => tracing::info!(target: "matchbox::guest", "{message}"),
            Level::Warn => tracing::warn!(target: "matchbox::guest", "{message}"),
            Level::Error => tracing::error!(target: "matchbox::guest", "{message}"),
        }
        log.bytes += message.len();
        log.lines.push(LogLine { level, message });
    }
}

impl JobState {
    /// Accounts for one memory or table growing from `current` to `desired`
    /// bytes; refuses if all of the instance's memories and tables together
    /// would pass the job's cap.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.memory_in_use.saturating_sub(current).saturating_add(desired);
        if total > self.limits.memory {
            self.memory_refused = Some(total);
            return false;
        }
        self.memory_in_use = total;
        true
    }
}

/// Called by wasmtime for each linear memory and table as it is created
/// (from 0) and whenever it grows, one at a time: the limiter keeps the sum.
impl ResourceLimiter for JobState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES)))
    }
}

/// A stdout or stderr that keeps the first `cap` bytes and counts the rest.
///
/// The guest never sees an error or back-pressure: a chatty guest costs the
/// host at most `cap` bytes, and its job is not failed for talking.
#[derive(Clone)]
pub struct CappedPipe {
    inner: Arc<Mutex<CappedBuf>>,
}

#[derive(Default)]
struct CappedBuf {
    cap: usize,
    kept: Vec<u8>,
    dropped: usize,
}

impl CappedPipe {
    fn new(cap: usize) -> Self {
        CappedPipe { inner: Arc::new(Mutex::new(CappedBuf { cap, ..Default::default() })) }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap();
        let room = buf.cap.saturating_sub(buf.kept.len());
        let take = room.min(bytes.len());
        buf.kept.extend_from_slice(&bytes[..take]);
        buf.dropped += bytes.len() - take;
    }

    /// What was kept, as text, and how many bytes were dropped.
    pub fn contents(&self) -> (String, usize) {
        let buf = self.inner.lock().unwrap();
        (String::from_utf8_lossy(&buf.kept).into_owned(), buf.dropped)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Most a guest may hand over in one write; it is always ready for more.
const WRITE_BUDGET: usize = 64 << 10;

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
