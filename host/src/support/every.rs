//! A periodic wake-up that ends when its stop signal fires: the loop shape
//! of every background task that polls.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks every `period`; a tick missed because the loop was busy is
/// skipped, not made up in a burst.
pub struct Every {
    interval: Interval,
}

impl Every {
    pub fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Every { interval }
    }

    /// Waits for the next tick: `true`, or `false` once `stop` has fired.
    pub async fn tick(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_until_stopped() {
        let stop = CancellationToken::new();
        let mut every = Every::new(Duration::from_secs(1));
        assert!(every.tick(&stop).await);
        assert!(every.tick(&stop).await);
        stop.cancel();
        assert!(!every.tick(&stop).await);
    }
}
