//! The in-memory task table, the embedded default.
//!
//! A `HashMap` of tasks beside a `BTreeSet<(Instant, TaskId)>` expiry index,
//! both behind one `std::sync::Mutex`, and a purge task that sleeps until the
//! earliest expiry (or until told that an earlier one arrived), deletes what
//! has expired, and sleeps again. Expiry work is proportional to what expires:
//! the purge walks the index from its front and stops at the first entry
//! still alive, and never scans the table.
//!
//! # Why a std mutex
//!
//! Every critical section is a few map operations with no `.await` inside,
//! so the lock is held for well under a microsecond. An async mutex would
//! cost more (it is a std mutex plus a waiter queue) and would only help if
//! we held the lock across an await, which we never do. Contention is low
//! because nothing slow ever runs under the lock: cancelling expired jobs,
//! for instance, happens after it is released.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    CallbackClaim, CallbackCounts, CallbackReport, CallbackState, Clock, IdempotencyKey, Inserted, StoreError, Task,
    TaskCounts, TaskEnd, TaskId, TaskStatus, TaskStore, TenantCaps,
};

/// Due deliveries one claim looks at, at most.
const CLAIM_LOOK: usize = 4096;

/// Told the ids of tasks the purge deleted, after the lock is released, so
/// that jobs still running for them can be cancelled.
pub type OnExpire = Arc<dyn Fn(&[TaskId]) + Send + Sync>;

/// The in-memory [`TaskStore`]. Dropping it stops its purge task.
pub struct MemoryStore {
    shared: Arc<Shared>,
    ttl: Duration,
    capacity: usize,
    purge: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the purge task when a task with an earlier expiry than any it
    /// knew of is inserted.
    wake_purge: Notify,
    /// Told when a delivery is queued.
    callbacks_queued: Notify,
    clock: Clock,
    on_expire: OnExpire,
}

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, Entry>,
    expirations: BTreeSet<(Instant, TaskId)>,
    /// Kept up to date at every change, so reading it never scans the table.
    by_status: TaskCounts,
    /// What each tenant holds, kept up to date the same way; a tenant that
    /// holds nothing has no entry.
    held: HashMap<String, Held>,
    /// Each live task's idempotency key, by tenant and key: the task and
    /// the fingerprint of what made it.
    keys: HashMap<(String, String), (TaskId, String)>,
    /// Deliveries of ended tasks' callbacks, by when each is due (a claimed
    /// one: when its lease lapses).
    callbacks: BTreeSet<(Instant, TaskId)>,
    /// Tasks held whose callback's delivery failed.
    callbacks_failed: u64,
    /// The last lease handed out.
    leases: u64,
}

/// One tenant's tasks: all it holds, and those pending or running.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    tasks: usize,
    open: usize,
}

struct Entry {
    task: Task,
    expires: Instant,
    /// The idempotency key that made it, forgotten with it.
    key: Option<String>,
    /// Its delivery's place in `callbacks`, and the lease it is claimed
    /// under (0 when unclaimed).
    callback_due: Option<(Instant, u64)>,
}

impl MemoryStore {
    /// A table of at most `capacity` tasks, each living `ttl`. Must be called
    /// inside a tokio runtime: it spawns the purge task there.
    pub fn new(capacity: usize, ttl: Duration, clock: Clock, on_expire: OnExpire) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake_purge: Notify::new(),
            callbacks_queued: Notify::new(),
            clock,
            on_expire,
        });
        let purge = tokio::spawn(purge_expired_tasks(shared.clone()));
        MemoryStore { shared, ttl, capacity, purge }
    }

    /// Slots allocated in the table's map right now; the regression test for
    /// the seed's leak checks that a burst does not pin its peak.
    pub fn allocated_slots(&self) -> usize {
        self.shared.state.lock().unwrap().tasks.capacity()
    }

    /// Entries in the expiry index; always equal to the number of tasks.
    pub fn indexed(&self) -> usize {
        self.shared.state.lock().unwrap().expirations.len()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.purge.abort();
    }
}

impl State {
    /// Why `tenant` may not add a task now, if it may not.
    fn refusal(&self, tenant: &str, caps: TenantCaps, capacity: usize) -> Option<StoreError> {
        self.refusal_of(1, tenant, caps, capacity)
    }

    /// Why `tenant` may not add `n` tasks now, if it may not.
    fn refusal_of(&self, n: usize, tenant: &str, caps: TenantCaps, capacity: usize) -> Option<StoreError> {
        let held = self.held.get(tenant).copied().unwrap_or_default();
        if held.tasks.saturating_add(n) > caps.tasks {
            return Some(StoreError::TenantFull { tenant: tenant.to_string(), cap: caps.tasks });
        }
        if held.open.saturating_add(n) > caps.pending {
            return Some(StoreError::OverQuota { tenant: tenant.to_string(), limit: caps.pending });
        }
        // The tenants' caps add up to at most the table's capacity, so this
        // is the last resort of a host configured without them.
        if self.tasks.len().saturating_add(n) > capacity {
            return Some(StoreError::Full { capacity });
        }
        None
    }

    /// Adds a pending task whose admission was checked; whether it is the
    /// earliest to expire (the purge must be told).
    fn admit(&mut self, task: Task, expires: Instant, key: Option<&IdempotencyKey>) -> bool {
        let id = task.task_id;
        // Only an entry that becomes the earliest changes when the purge
        // must wake; with one TTL for all, that is only the first one.
        let earliest = self.expirations.first().is_none_or(|&(when, _)| expires < when);
        self.by_status.add(task.status);
        let held = self.held.entry(task.tenant.clone()).or_default();
        held.tasks += 1;
        held.open += 1;
        if let Some(key) = key {
            self.keys.insert((task.tenant.clone(), key.key.clone()), (id, key.fingerprint.clone()));
        }
        self.tasks.insert(id, Entry { task, expires, key: key.map(|k| k.key.clone()), callback_due: None });
        self.expirations.insert((expires, id));
        earliest
    }

    /// The task `tenant`'s `key` made, if it lives; refused if another
    /// fingerprint made it.
    fn keyed(&self, tenant: &str, key: &IdempotencyKey) -> Result<Option<TaskId>, StoreError> {
        match self.keys.get(&(tenant.to_string(), key.key.clone())) {
            Some((id, fingerprint)) if *fingerprint == key.fingerprint => Ok(Some(*id)),
            Some((id, _)) => Err(StoreError::KeyReused { key: key.key.clone(), task_id: *id }),
            None => Ok(None),
        }
    }

    /// Forgets an entry that left the table: its key, its delivery and
    /// every count.
    fn forget_entry(&mut self, entry: &Entry) {
        if let Some((due, _)) = entry.callback_due {
            self.callbacks.remove(&(due, entry.task.task_id));
        }
        if entry.task.callback.as_ref().is_some_and(|c| c.progress.state == CallbackState::Failed) {
            self.callbacks_failed -= 1;
        }
        if let Some(key) = &entry.key {
            self.keys.remove(&(entry.task.tenant.clone(), key.clone()));
            crate::support::capacity::give_back_spare(&mut self.keys);
        }
        self.forget(&entry.task);
    }

    /// Forgets a task that left the table, in every count.
    fn forget(&mut self, task: &Task) {
        self.by_status.take(task.status);
        if let Some(held) = self.held.get_mut(&task.tenant) {
            held.tasks -= 1;
            if !task.status.is_terminal() {
                held.open -= 1;
            }
            if held.tasks == 0 {
                self.held.remove(&task.tenant);
            }
        }
    }

    /// Deletes every task whose expiry is at or before `now`; returns their
    /// ids and the next expiry, if any task is left.
    fn purge(&mut self, now: Instant) -> (Vec<TaskId>, Option<Instant>) {
        let mut expired = Vec::new();
        while let Some(&(when, id)) = self.expirations.first() {
            if when > now {
                break;
            }
            self.expirations.pop_first();
            if let Some(entry) = self.tasks.remove(&id) {
                self.forget_entry(&entry);
            }
            expired.push(id);
        }
        if !expired.is_empty() {
            crate::support::capacity::give_back_spare(&mut self.tasks);
        }
        (expired, self.expirations.first().map(|&(when, _)| when))
    }
}

async fn purge_expired_tasks(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake_purge.notified();
        tokio::pin!(notified);
        // Register for a wake-up before looking, so an insert between the
        // look and the sleep is not missed.
        notified.as_mut().enable();
        let (expired, next) = shared.state.lock().unwrap().purge(Instant::now());
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "deleted expired tasks");
            (shared.on_expire)(&expired);
        }
        match next {
            Some(when) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(when) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn insert(&self, task: Task, caps: TenantCaps, key: Option<&IdempotencyKey>) -> Result<Inserted, StoreError> {
        let expires = Instant::now() + self.ttl;
        let id = task.task_id;
        let mut state = self.shared.state.lock().unwrap();
        if let Some(key) = key
            && let Some(existing) = state.keyed(&task.tenant, key)?
        {
            return Ok(Inserted::Existing(existing));
        }
        if state.tasks.contains_key(&id) {
            return Err(StoreError::Duplicate(id));
        }
        if let Some(refused) = state.refusal(&task.tenant, caps, self.capacity) {
            return Err(refused);
        }
        let earliest = state.admit(task, expires, key);
        drop(state);
        if earliest {
            self.shared.wake_purge.notify_one();
        }
        Ok(Inserted::New)
    }

    async fn insert_batch(&self, tasks: Vec<Task>, caps: TenantCaps) -> Result<(), StoreError> {
        let Some(first) = tasks.first() else { return Ok(()) };
        let tenant = first.tenant.clone();
        assert!(tasks.iter().all(|t| t.tenant == tenant), "a batch is one tenant's");
        let expires = Instant::now() + self.ttl;
        let mut state = self.shared.state.lock().unwrap();
        if let Some(task) = tasks.iter().find(|t| state.tasks.contains_key(&t.task_id)) {
            return Err(StoreError::Duplicate(task.task_id));
        }
        if let Some(refused) = state.refusal_of(tasks.len(), &tenant, caps, self.capacity) {
            return Err(refused);
        }
        let mut earliest = false;
        for task in tasks {
            earliest |= state.admit(task, expires, None);
        }
        drop(state);
        if earliest {
            self.shared.wake_purge.notify_one();
        }
        Ok(())
    }

    async fn find_key(&self, tenant: &str, key: &IdempotencyKey) -> Result<Option<TaskId>, StoreError> {
        self.shared.state.lock().unwrap().keyed(tenant, key)
    }

    fn refusal(&self, tenant: &str, caps: TenantCaps) -> Option<StoreError> {
        self.shared.state.lock().unwrap().refusal(tenant, caps, self.capacity)
    }

    async fn get(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        let state = self.shared.state.lock().unwrap();
        Ok(state.tasks.get(&id).filter(|e| e.task.tenant == tenant).map(|e| e.task.clone()))
    }

    async fn start(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let now = self.shared.clock.now();
        let mut state = self.shared.state.lock().unwrap();
        let state = &mut *state;
        match state.tasks.get_mut(&id) {
            Some(entry) if entry.task.tenant == tenant && entry.task.status == TaskStatus::Pending => {
                // Pending and running are both open: the tenant's counts stay.
                state.by_status.moved(TaskStatus::Pending, TaskStatus::Running);
                entry.task.status = TaskStatus::Running;
                entry.task.touch(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn finish(&self, tenant: &str, id: TaskId, end: TaskEnd) -> Result<bool, StoreError> {
        let now = self.shared.clock.now();
        let mut guard = self.shared.state.lock().unwrap();
        let state = &mut *guard;
        match state.tasks.get_mut(&id) {
            Some(entry) if entry.task.tenant == tenant && !entry.task.status.is_terminal() => {
                let from = entry.task.status;
                entry.task.apply(end, now);
                state.by_status.moved(from, entry.task.status);
                if let Some(held) = state.held.get_mut(&entry.task.tenant) {
                    held.open -= 1;
                }
                if entry.task.callback.is_some() {
                    let due = Instant::now();
                    entry.callback_due = Some((due, 0));
                    state.callbacks.insert((due, id));
                    drop(guard);
                    self.shared.callbacks_queued.notify_one();
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn remove(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let mut state = self.shared.state.lock().unwrap();
        if state.tasks.get(&id).is_none_or(|e| e.task.tenant != tenant) {
            return Ok(false);
        }
        let entry = state.tasks.remove(&id).expect("just seen");
        state.expirations.remove(&(entry.expires, id));
        state.forget_entry(&entry);
        Ok(true)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.shared.state.lock().unwrap().tasks.len())
    }

    async fn claim_callbacks(
        &self,
        lease: Duration,
        limit: usize,
        room: &(dyn for<'t> Fn(&'t str) -> usize + Send + Sync),
    ) -> Result<Vec<CallbackClaim>, StoreError> {
        let now = Instant::now();
        let mut state = self.shared.state.lock().unwrap();
        let state = &mut *state;
        // Due deliveries, oldest first, passing over those of a tenant with
        // no room left; the look is bounded, so a tenant with a long backlog
        // of its own does not make every claim slow.
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut picked = Vec::new();
        for &(due, id) in state.callbacks.iter().take(CLAIM_LOOK) {
            if due > now || picked.len() >= limit {
                break;
            }
            let Some(entry) = state.tasks.get(&id) else {
                picked.push((due, id));
                continue;
            };
            let tenant = &entry.task.tenant;
            let n = taken.entry(tenant.clone()).or_default();
            if *n < room(tenant) {
                *n += 1;
                picked.push((due, id));
            }
        }
        let mut claimed = Vec::new();
        for (due, id) in picked {
            state.callbacks.remove(&(due, id));
            let Some(entry) = state.tasks.get_mut(&id) else { continue };
            state.leases += 1;
            let until = now + lease;
            entry.callback_due = Some((until, state.leases));
            state.callbacks.insert((until, id));
            claimed.push(CallbackClaim { tenant: entry.task.tenant.clone(), task_id: id, lease: state.leases });
        }
        Ok(claimed)
    }

    async fn report_callback(&self, claim: &CallbackClaim, report: CallbackReport) -> Result<bool, StoreError> {
        let mut state = self.shared.state.lock().unwrap();
        let state = &mut *state;
        let Some(entry) = state.tasks.get_mut(&claim.task_id).filter(|e| e.task.tenant == claim.tenant) else {
            return Ok(false);
        };
        let (Some((due, lease)), Some(callback)) = (entry.callback_due, entry.task.callback.as_mut()) else {
            return Ok(false);
        };
        if lease != claim.lease {
            return Ok(false);
        }
        state.callbacks.remove(&(due, claim.task_id));
        entry.callback_due = None;
        if report.progress.state == CallbackState::Failed && callback.progress.state != CallbackState::Failed {
            state.callbacks_failed += 1;
        }
        callback.progress = report.progress;
        if let Some(retry_in) = report.retry_in {
            let due = Instant::now() + retry_in;
            entry.callback_due = Some((due, 0));
            state.callbacks.insert((due, claim.task_id));
        }
        Ok(true)
    }

    async fn callback_counts(&self) -> Result<CallbackCounts, StoreError> {
        let state = self.shared.state.lock().unwrap();
        Ok(CallbackCounts { pending: state.callbacks.len() as u64, failed: state.callbacks_failed })
    }

    fn callbacks_queued(&self) -> &Notify {
        &self.shared.callbacks_queued
    }

    async fn statuses(&self, tasks: &[(String, TaskId)]) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let state = self.shared.state.lock().unwrap();
        Ok(tasks
            .iter()
            .map(|(tenant, id)| state.tasks.get(id).filter(|e| e.task.tenant == *tenant).map(|e| e.task.status))
            .collect())
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        Ok(self.shared.state.lock().unwrap().by_status)
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.purge.is_finished() {
            return Err(StoreError::Unavailable("the expiry task of the memory store has stopped".into()));
        }
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::capacity::MIN_SLOTS;
    use crate::tasks::conformance;

    fn store(capacity: usize, ttl: Duration) -> (MemoryStore, Arc<Mutex<Vec<TaskId>>>) {
        let expired = Arc::new(Mutex::new(Vec::new()));
        let on_expire: OnExpire = {
            let expired = expired.clone();
            Arc::new(move |ids: &[TaskId]| expired.lock().unwrap().extend_from_slice(ids))
        };
        (MemoryStore::new(capacity, ttl, Clock::new(), on_expire), expired)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn passes_the_conformance_suite() {
        conformance::run(|capacity, ttl| async move {
            let store: Arc<dyn TaskStore> = Arc::new(store(capacity, ttl).0);
            store
        })
        .await;
    }

    /// The seed's first regression test: 100 tasks, two hours later, gone.
    #[tokio::test(start_paused = true)]
    async fn expired_tasks_are_deleted_not_marked() {
        let (table, expired) = store(10_000, HOUR);
        let clock = Clock::new();
        let mut ids = Vec::new();
        for _ in 0..100 {
            let id = clock.new_task_id();
            table
                .insert(Task::pending(id, "default".into(), "skills".into(), clock.now(), HOUR), TenantCaps::NONE, None)
                .await
                .unwrap();
            ids.push(id);
        }
        assert_eq!(table.count().await.unwrap(), 100);

        tokio::time::advance(2 * HOUR).await;
        // Let the purge task run at the new time.
        tokio::task::yield_now().await;

        assert_eq!(table.count().await.unwrap(), 0, "expired tasks should be deleted");
        assert_eq!(table.indexed(), 0);
        for id in &ids {
            assert_eq!(table.get("default", *id).await.unwrap(), None);
        }
        let mut told = expired.lock().unwrap().clone();
        told.sort();
        ids.sort();
        assert_eq!(told, ids, "every expired task is reported so its job can be cancelled");
    }

    /// The seed's second regression test: 1,000 tasks created and completed,
    /// then expired; the table is empty and has given its memory back.
    #[tokio::test(start_paused = true)]
    async fn task_table_memory_is_bounded() {
        let (table, _) = store(10_000, HOUR);
        let clock = Clock::new();
        let initial_slots = table.allocated_slots();

        for _ in 0..1000 {
            let id = clock.new_task_id();
            table
                .insert(Task::pending(id, "default".into(), "skills".into(), clock.now(), HOUR), TenantCaps::NONE, None)
                .await
                .unwrap();
            assert!(table.start("default", id).await.unwrap());
            assert!(table.finish("default", id, crate::tasks::TaskOutcome::Completed(vec![]).into()).await.unwrap());
        }
        assert!(table.allocated_slots() >= 1000);

        tokio::time::advance(HOUR + Duration::from_secs(1)).await;
        tokio::task::yield_now().await;

        assert_eq!(table.count().await.unwrap(), 0);
        assert_eq!(table.indexed(), 0);
        let final_slots = table.allocated_slots();
        assert!(
            final_slots <= initial_slots.max(MIN_SLOTS * 2),
            "the table kept {final_slots} slots after the burst expired (started with {initial_slots})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_creation_order_across_waves() {
        let (table, _) = store(100, HOUR);
        let clock = Clock::new();
        let first = clock.new_task_id();
        table
            .insert(Task::pending(first, "default".into(), "skills".into(), clock.now(), HOUR), TenantCaps::NONE, None)
            .await
            .unwrap();
        tokio::time::advance(HOUR / 2).await;
        let second = clock.new_task_id();
        table
            .insert(Task::pending(second, "default".into(), "skills".into(), clock.now(), HOUR), TenantCaps::NONE, None)
            .await
            .unwrap();

        tokio::time::advance(HOUR / 2 + Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(table.get("default", first).await.unwrap(), None);
        assert!(table.get("default", second).await.unwrap().is_some());

        tokio::time::advance(HOUR / 2).await;
        tokio::task::yield_now().await;
        assert_eq!(table.count().await.unwrap(), 0);
    }

    /// The table's own bound, whatever the tenants' caps.
    #[tokio::test(start_paused = true)]
    async fn a_full_table_refuses_and_loses_nothing() {
        let (table, _) = store(3, HOUR);
        let clock = Clock::new();
        let pending = || Task::pending(clock.new_task_id(), "default".into(), "skills".into(), clock.now(), HOUR);
        let mut kept = Vec::new();
        for _ in 0..3 {
            let task = pending();
            kept.push(task.task_id);
            table.insert(task, TenantCaps::NONE, None).await.unwrap();
        }
        assert_eq!(table.refusal("default", TenantCaps::NONE), Some(StoreError::Full { capacity: 3 }));
        assert_eq!(table.insert(pending(), TenantCaps::NONE, None).await, Err(StoreError::Full { capacity: 3 }));
        for id in kept {
            assert!(table.get("default", id).await.unwrap().is_some(), "a full table loses nothing it accepted");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_store_stops_its_purge_task() {
        let (table, _) = store(10, HOUR);
        let shared = Arc::downgrade(&table.shared);
        drop(table);
        tokio::task::yield_now().await;
        assert!(shared.upgrade().is_none(), "the purge task still holds the table");
    }
}
