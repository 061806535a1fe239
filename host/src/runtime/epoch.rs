//! The epoch ticker: the clock every job's deadline and cancellation run on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// How many ticks have passed, shared with every Store's epoch callback.
#[derive(Clone, Default)]
pub struct Ticks(Arc<AtomicU64>);

impl Ticks {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Increments the engine's epoch every `tick` on a thread of its own.
///
/// A plain thread rather than a tokio task: the ticker must keep time while
/// every tokio worker is busy, and under a paused tokio clock in tests. It is
/// owned by the [`super::Sandbox`] and stopped and joined when that drops.
pub struct EpochTicker {
    ticks: Ticks,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let ticks = Ticks::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("matchbox-epoch".into()).spawn({
            let ticks = ticks.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    ticks.0.fetch_add(1, Ordering::AcqRel);
                    engine.increment_epoch();
                }
            }
        })?;
        Ok(EpochTicker { ticks, stop, thread: Some(thread) })
    }

    pub fn ticks(&self) -> &Ticks {
        &self.ticks
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
