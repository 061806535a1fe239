//! The bounded job queue between the API and the workers, fair across
//! tenants.
//!
//! Every tenant has a *lane* of its own; workers take from the lanes in
//! turn (round robin), skipping a lane whose tenant already has as many
//! jobs running as its `concurrent_jobs` quota allows. A tenant that queues
//! thousands of jobs therefore delays another tenant's single job by at
//! most one job per worker, never by its whole backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A lane's name: the tenant's.
pub type LaneId = Arc<str>;

/// A bounded queue of lanes. Submitting takes a [`Slot`] first, so a job
/// is only accepted once there is room for it: a full queue refuses at once
/// (the API answers 429) instead of blocking or dropping something accepted.
pub struct JobQueue<T> {
    state: Arc<Mutex<QueueState<T>>>,
    capacity: usize,
    ready: Arc<Notify>,
}

struct QueueState<T> {
    lanes: HashMap<LaneId, Lane<T>>,
    /// Lanes with jobs waiting, in the order they will be served.
    turns: VecDeque<LaneId>,
    /// Jobs waiting, over all lanes.
    queued: usize,
    /// Slots handed out and not yet filled or given back.
    reserved: usize,
    closed: bool,
}

struct Lane<T> {
    items: VecDeque<T>,
    /// Jobs taken from this lane that have not ended.
    running: usize,
    /// The most that may run at once.
    limit: usize,
}

/// Room for one job, held between the check and the push.
#[must_use]
pub struct Slot<'q, T> {
    queue: &'q JobQueue<T>,
    filled: bool,
}

/// A job taken from its lane, counted against the lane's limit until this
/// is dropped.
#[must_use]
pub struct Running<T> {
    lane: LaneId,
    state: Arc<Mutex<QueueState<T>>>,
    ready: Arc<Notify>,
}

impl<T> JobQueue<T> {
    pub fn new(capacity: usize) -> Self {
        JobQueue {
            state: Arc::new(Mutex::new(QueueState {
                lanes: HashMap::new(),
                turns: VecDeque::new(),
                queued: 0,
                reserved: 0,
                closed: false,
            })),
            capacity,
            ready: Arc::new(Notify::new()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs waiting for a worker.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a `reserve` now would succeed (a hint: another caller may
    /// take the room first).
    pub fn has_room(&self) -> bool {
        let state = self.state.lock().unwrap();
        !state.closed && state.queued + state.reserved < self.capacity
    }

    /// Room for one more job, or `None` if the queue is full or closed.
    pub fn reserve(&self) -> Option<Slot<'_, T>> {
        let mut state = self.state.lock().unwrap();
        if state.closed || state.queued + state.reserved >= self.capacity {
            return None;
        }
        state.reserved += 1;
        Some(Slot { queue: self, filled: false })
    }

    /// Places for `n` items at once, or none if the queue has not room for
    /// them all (a batch is admitted whole).
    pub fn reserve_many(&self, n: usize) -> Option<Vec<Slot<'_, T>>> {
        let mut state = self.state.lock().unwrap();
        if state.closed || state.queued + state.reserved + n > self.capacity {
            return None;
        }
        state.reserved += n;
        Some((0..n).map(|_| Slot { queue: self, filled: false }).collect())
    }

    /// The next job, by turns over the lanes that may run one more, waiting
    /// for one; `None` once the queue is closed.
    pub async fn pop(&self) -> Option<(T, Running<T>)> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if state.closed {
                    return None;
                }
                if let Some((item, lane)) = state.next() {
                    // Pass the wake-up on if another worker could start a job.
                    if state.runnable() {
                        self.ready.notify_one();
                    }
                    return Some((item, Running { lane, state: self.state.clone(), ready: self.ready.clone() }));
                }
            }
            notified.await;
        }
    }

    /// Refuses new jobs and wakes every waiting worker. Jobs still queued
    /// are returned so the caller can end them.
    pub fn close(&self) -> Vec<T> {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        state.turns.clear();
        state.queued = 0;
        let left = state.lanes.values_mut().flat_map(|lane| lane.items.drain(..)).collect();
        drop(state);
        self.ready.notify_waiters();
        left
    }
}

impl<T> QueueState<T> {
    /// Takes the first job in turn whose lane is under its limit; that lane
    /// goes to the back of the turns if it has more waiting.
    fn next(&mut self) -> Option<(T, LaneId)> {
        for _ in 0..self.turns.len() {
            let id = self.turns.pop_front()?;
            let lane = self.lanes.get_mut(&id).expect("a lane in turn exists");
            if lane.running >= lane.limit {
                // At its limit: keeps its place in the cycle, tried again
                // once one of its jobs ends.
                self.turns.push_back(id);
                continue;
            }
            let item = lane.items.pop_front().expect("a lane in turn has jobs");
            lane.running += 1;
            // Give back what a burst made the ring grow to.
            let floor = lane.items.len().max(64);
            if lane.items.capacity() > 4 * floor {
                lane.items.shrink_to(2 * floor);
            }
            if !lane.items.is_empty() {
                self.turns.push_back(id.clone());
            }
            self.queued -= 1;
            return Some((item, id));
        }
        None
    }

    /// Whether some lane has a job waiting and room to run it.
    fn runnable(&self) -> bool {
        self.turns.iter().any(|id| self.lanes.get(id).is_some_and(|lane| lane.running < lane.limit))
    }
}

impl<T> Slot<'_, T> {
    /// Queues `item` at the back of `lane`, whose jobs may run at most
    /// `limit` at once.
    pub fn push(mut self, lane: &LaneId, limit: usize, item: T) {
        let mut state = self.queue.state.lock().unwrap();
        state.reserved -= 1;
        state.queued += 1;
        let entry =
            state.lanes.entry(lane.clone()).or_insert_with(|| Lane { items: VecDeque::new(), running: 0, limit });
        entry.limit = limit.max(1);
        entry.items.push_back(item);
        if entry.items.len() == 1 {
            state.turns.push_back(lane.clone());
        }
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

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap();
        let Some(lane) = state.lanes.get_mut(&self.lane) else { return };
        lane.running -= 1;
        let waiting = !lane.items.is_empty();
        if lane.running == 0 && !waiting {
            // An idle tenant holds nothing.
            state.lanes.remove(&self.lane);
        }
        drop(state);
        if waiting {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str) -> LaneId {
        name.into()
    }

    #[tokio::test]
    async fn refuses_past_capacity_and_counts_reservations() {
        let q = JobQueue::new(2);
        let a = q.reserve().unwrap();
        let b = q.reserve().unwrap();
        assert!(q.reserve().is_none(), "two slots taken");
        drop(b);
        a.push(&lane("t"), 8, 1);
        q.reserve().unwrap().push(&lane("t"), 8, 2);
        assert!(q.reserve().is_none());
        assert_eq!(q.pop().await.unwrap().0, 1);
        assert_eq!(q.pop().await.unwrap().0, 2);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_batch_gets_room_for_all_or_none() {
        let q = JobQueue::new(3);
        let one = q.reserve().unwrap();
        assert!(q.reserve_many(3).is_none(), "one place taken, three asked");
        let two = q.reserve_many(2).unwrap();
        assert!(q.reserve().is_none());
        drop(one);
        drop(two);
        let three = q.reserve_many(3).unwrap();
        for (i, slot) in three.into_iter().enumerate() {
            slot.push(&lane("t"), 8, i);
        }
        assert_eq!(q.len(), 3);
    }

    #[tokio::test]
    async fn lanes_take_turns_whatever_their_backlog() {
        let q = JobQueue::new(1000);
        for i in 0..100 {
            q.reserve().unwrap().push(&lane("flood"), 8, format!("flood-{i}"));
        }
        q.reserve().unwrap().push(&lane("one"), 8, "one".to_string());
        q.reserve().unwrap().push(&lane("two"), 8, "two-a".to_string());
        q.reserve().unwrap().push(&lane("two"), 8, "two-b".to_string());
        let mut order = Vec::new();
        for _ in 0..6 {
            let (item, running) = q.pop().await.unwrap();
            drop(running);
            order.push(item);
        }
        assert_eq!(order, ["flood-0", "one", "two-a", "flood-1", "two-b", "flood-2"]);
    }

    #[tokio::test]
    async fn a_lane_at_its_limit_waits_while_others_run() {
        let q = std::sync::Arc::new(JobQueue::new(10));
        for i in 0..3 {
            q.reserve().unwrap().push(&lane("a"), 1, format!("a{i}"));
        }
        q.reserve().unwrap().push(&lane("b"), 1, "b0".to_string());
        let (a0, running_a0) = q.pop().await.unwrap();
        let (b0, _running_b0) = q.pop().await.unwrap();
        assert_eq!((a0.as_str(), b0.as_str()), ("a0", "b0"));
        // a is at its limit of one: nothing can be taken until a0 ends.
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await.map(|(item, _)| item) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(running_a0);
        assert_eq!(waiting.await.unwrap().as_deref(), Some("a1"));
    }

    #[tokio::test]
    async fn close_wakes_waiters_and_returns_leftovers() {
        let q = std::sync::Arc::new(JobQueue::<u32>::new(4));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await.map(|(item, _)| item) }
        });
        tokio::task::yield_now().await;
        assert!(q.close().is_empty());
        assert_eq!(waiter.await.unwrap(), None);
        assert!(q.reserve().is_none(), "a closed queue takes nothing");
    }
}
