//! The bounded job queue between the API and the workers.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// A bounded FIFO. Submitting takes a [`Slot`] first, so a job is only
/// accepted once there is room for it: a full queue refuses at once (the
/// API answers 429) instead of blocking or dropping something accepted.
pub struct JobQueue<T> {
    state: Mutex<QueueState<T>>,
    capacity: usize,
    ready: Notify,
}

struct QueueState<T> {
    items: VecDeque<T>,
    /// Slots handed out and not yet filled or given back.
    reserved: usize,
    closed: bool,
}

/// Room for one job, held between the check and the push.
#[must_use]
pub struct Slot<'q, T> {
    queue: &'q JobQueue<T>,
    filled: bool,
}

impl<T> JobQueue<T> {
    pub fn new(capacity: usize) -> Self {
        JobQueue {
            state: Mutex::new(QueueState { items: VecDeque::new(), reserved: 0, closed: false }),
            capacity,
            ready: Notify::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs waiting for a worker.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a `reserve` now would succeed (a hint: another caller may
    /// take the room first).
    pub fn has_room(&self) -> bool {
        let state = self.state.lock().unwrap();
        !state.closed && state.items.len() + state.reserved < self.capacity
    }

    /// Room for one more job, or `None` if the queue is full or closed.
    pub fn reserve(&self) -> Option<Slot<'_, T>> {
        let mut state = self.state.lock().unwrap();
        if state.closed || state.items.len() + state.reserved >= self.capacity {
            return None;
        }
        state.reserved += 1;
        Some(Slot { queue: self, filled: false })
    }

    /// The next job, waiting for one; `None` once the queue is closed.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                let items = &mut state.items;
                if let Some(item) = items.pop_front() {
                    // Give back what a burst made the ring grow to.
                    let floor = items.len().max(64);
                    if items.capacity() > 4 * floor {
                        items.shrink_to(2 * floor);
                    }
                    // Pass the wake-up on if more is waiting.
                    if !items.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Refuses new jobs and wakes every waiting worker. Jobs already queued
    /// are returned so the caller can end them.
    pub fn close(&self) -> Vec<T> {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        let left = state.items.drain(..).collect();
        drop(state);
        self.ready.notify_waiters();
        left
    }
}

impl<T> Slot<'_, T> {
    pub fn push(mut self, item: T) {
        let mut state = self.queue.state.lock().unwrap();
        state.reserved -= 1;
        state.items.push_back(item);
        self.filled = true;
        drop(state);
        self.queue.ready.notify_one();
    }
}

impl<T> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        if !self.filled {
            self.queue.state.lock().unwrap().reserved -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_capacity_and_counts_reservations() {
        let q = JobQueue::new(2);
        let a = q.reserve().unwrap();
        let b = q.reserve().unwrap();
        assert!(q.reserve().is_none(), "two slots taken");
        drop(b);
        a.push(1);
        q.reserve().unwrap().push(2);
        assert!(q.reserve().is_none());
        assert_eq!(q.pop().await, Some(1));
        assert_eq!(q.pop().await, Some(2));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn close_wakes_waiters_and_returns_leftovers() {
        let q = std::sync::Arc::new(JobQueue::<u32>::new(4));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        assert!(q.close().is_empty());
        assert_eq!(waiter.await.unwrap(), None);
        assert!(q.reserve().is_none(), "a closed queue takes nothing");
    }
}
