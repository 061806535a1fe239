//! The live-instance gauge: how many job Stores exist right now.
//!
//! Every Store's data holds a [`LiveGuard`], so the count goes down exactly
//! when a Store is dropped, whichever way its job ended. Tests wait on it
//! reaching zero instead of sleeping.

use tokio::sync::watch;

#[derive(Clone)]
pub struct LiveInstances {
    count: watch::Sender<usize>,
}

impl Default for LiveInstances {
    fn default() -> Self {
        LiveInstances { count: watch::Sender::new(0) }
    }
}

impl LiveInstances {
    pub fn get(&self) -> usize {
        *self.count.borrow()
    }

    pub(super) fn enter(&self) -> LiveGuard {
        self.count.send_modify(|n| *n += 1);
        LiveGuard { count: self.count.clone() }
    }

    /// Resolves once no instance is alive.
    pub async fn wait_for_zero(&self) {
        self.wait_for(|n| n == 0).await;
    }

    /// Resolves once the count satisfies `ready`.
    pub async fn wait_for(&self, mut ready: impl FnMut(usize) -> bool) {
        let mut rx = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|n| ready(*n)).await;
    }
}

pub struct LiveGuard {
    count: watch::Sender<usize>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n -= 1);
    }
}
