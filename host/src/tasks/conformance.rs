//! The conformance suite every [`TaskStore`] must pass.
//!
//! Call [`run`] with a factory that builds a fresh, empty store for a given
//! capacity and time to live. The suite only uses `tokio::time` to wait, so
//! under a paused clock (the memory store's test) it runs instantly, and
//! against a real backend it waits for real expiry, polling with a bound.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    CallbackClaim, CallbackCounts, CallbackProgress, CallbackReport, CallbackState, Clock, IdempotencyKey, Inserted,
    LogLevel, Ranking, StoreError, Task, TaskCallback, TaskCounts, TaskEnd, TaskId, TaskLogLine, TaskLogs, TaskOutcome,
    TaskStatus, TaskStore, TenantCaps,
};
use crate::runtime::{FailureKind, JobFailure};

/// Runs every check against stores made by `make(capacity, ttl)`.
pub async fn run<F, Fut>(make: F)
where
    F: Fn(usize, Duration) -> Fut,
    Fut: Future<Output = Arc<dyn TaskStore>>,
{
    const LONG: Duration = Duration::from_secs(3600);
    round_trip(make(16, LONG).await).await;
    transitions_happen_once(make(16, LONG).await).await;
    counts_follow_every_change(make(16, Duration::from_secs(2)).await).await;
    tenants_never_see_each_others_tasks(make(16, LONG).await).await;
    unknown_ids_are_refused(make(16, LONG).await).await;
    tenant_caps_are_enforced(make(16, LONG).await).await;
    expiry_deletes_and_counts_from_creation(make(16, Duration::from_secs(2)).await).await;
    idempotency_keys_make_one_task(make(16, LONG).await).await;
    callbacks_are_queued_with_the_end_and_leased(make(16, LONG).await).await;
    batches_are_admitted_whole(make(16, LONG).await).await;
    claims_give_each_tenant_its_room(make(16, LONG).await).await;
}

/// The tenants the suite uses; a store that must know its tenants is made
/// for these.
pub const TENANTS: [&str; 2] = [TENANT, OTHER];
const TENANT: &str = "default";
const OTHER: &str = "another-tenant";

fn pending(store: &dyn TaskStore, clock: &Clock) -> Task {
    Task::pending(clock.new_task_id(), TENANT.into(), "skills".into(), clock.now(), store.ttl())
}

async fn round_trip(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    store.check().await.expect("a fresh store is ready");
    let task = pending(&*store, &clock);
    store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
    assert_eq!(store.get(TENANT, task.task_id).await.unwrap(), Some(task.clone()));
    assert_eq!(store.count().await.unwrap(), 1);
    assert_eq!(store.insert(task.clone(), TenantCaps::NONE, None).await, Err(StoreError::Duplicate(task.task_id)));
    assert!(store.remove(TENANT, task.task_id).await.unwrap());
    assert_eq!(store.get(TENANT, task.task_id).await.unwrap(), None);
    assert!(!store.remove(TENANT, task.task_id).await.unwrap(), "a second remove finds nothing");
    assert_eq!(store.count().await.unwrap(), 0);
}

async fn transitions_happen_once(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let task = pending(&*store, &clock);
    let id = task.task_id;
    store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();

    assert!(store.start(TENANT, id).await.unwrap());
    assert!(!store.start(TENANT, id).await.unwrap(), "a task starts once");
    assert_eq!(store.get(TENANT, id).await.unwrap().unwrap().status, TaskStatus::Running);

    let rankings = vec![Ranking { posting_id: "p1".into(), score: 0.75, reasons: vec!["3/4 required skills".into()] }];
    let logs = TaskLogs {
        lines: vec![TaskLogLine { level: LogLevel::Warn, message: "no skills ✓ \"quoted\"".into() }],
        dropped: 3,
        stdout: String::new(),
        stderr: "thread panicked at src/lib.rs:7".into(),
    };
    let end = TaskEnd { outcome: TaskOutcome::Completed(rankings.clone()), logs: Some(logs.clone()) };
    assert!(store.finish(TENANT, id, end).await.unwrap());
    let late = TaskOutcome::Failed(JobFailure::new(FailureKind::Trap, "late"));
    assert!(!store.finish(TENANT, id, late.into()).await.unwrap(), "a result is written once");
    assert!(!store.start(TENANT, id).await.unwrap(), "an ended task does not restart");

    let done = store.get(TENANT, id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result.unwrap().rankings, rankings);
    assert_eq!(done.error, None);
    assert_eq!(done.logs, Some(logs.clone()), "a task keeps the logs its end carried");
    assert!(done.updated_at >= done.created_at);
    assert_eq!(done.expires_at, task.expires_at, "finishing does not extend the time to live");

    // A pending task can end without running (cancelled or failed early).
    let early = pending(&*store, &clock);
    store.insert(early.clone(), TenantCaps::NONE, None).await.unwrap();
    let error = JobFailure::new(FailureKind::Unavailable, "matcher removed");
    assert!(store.finish(TENANT, early.task_id, TaskOutcome::Failed(error.clone()).into()).await.unwrap());
    let failed = store.get(TENANT, early.task_id).await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.error, Some(error.clone()));
    assert_eq!(failed.result, None);
    assert_eq!(failed.logs, None, "an end without logs leaves none");

    // A failed job's logs are kept beside its error.
    let trapped = pending(&*store, &clock);
    store.insert(trapped.clone(), TenantCaps::NONE, None).await.unwrap();
    let end = TaskEnd { outcome: TaskOutcome::Failed(error.clone()), logs: Some(logs.clone()) };
    assert!(store.finish(TENANT, trapped.task_id, end).await.unwrap());
    let trapped = store.get(TENANT, trapped.task_id).await.unwrap().unwrap();
    assert_eq!((trapped.error, trapped.logs), (Some(error), Some(logs)));
}

async fn counts_follow_every_change(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let counts =
        |pending, running, completed, failed, cancelled| TaskCounts { pending, running, completed, failed, cancelled };
    let tasks: Vec<Task> = (0..4).map(|_| pending(&*store, &clock)).collect();
    for task in &tasks {
        store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
    }
    let id = |i: usize| tasks[i].task_id;
    assert_eq!(store.counts().await.unwrap(), counts(4, 0, 0, 0, 0));
    store.start(TENANT, id(0)).await.unwrap();
    store.start(TENANT, id(1)).await.unwrap();
    assert!(!store.start(TENANT, id(1)).await.unwrap());
    assert_eq!(store.counts().await.unwrap(), counts(2, 2, 0, 0, 0));
    store.finish(TENANT, id(0), TaskOutcome::Completed(vec![]).into()).await.unwrap();
    let error = JobFailure::new(FailureKind::Trap, "trap");
    store.finish(TENANT, id(1), TaskOutcome::Failed(error).into()).await.unwrap();
    store.finish(TENANT, id(2), TaskOutcome::Cancelled.into()).await.unwrap();
    assert!(!store.finish(TENANT, id(2), TaskOutcome::Completed(vec![]).into()).await.unwrap());
    assert_eq!(store.counts().await.unwrap(), counts(1, 0, 1, 1, 1));
    store.remove(TENANT, id(3)).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), counts(0, 0, 1, 1, 1));
    assert_eq!(store.counts().await.unwrap().total(), store.count().await.unwrap() as u64);

    // Expiry takes tasks out of the counts too.
    tokio::time::sleep(store.ttl()).await;
    expired_within_grace(&*store).await;
    assert_eq!(store.counts().await.unwrap(), TaskCounts::default());
}

async fn tenants_never_see_each_others_tasks(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let task = pending(&*store, &clock);
    let id = task.task_id;
    store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
    let other = OTHER;
    assert_eq!(store.get(other, id).await.unwrap(), None);
    assert!(!store.start(other, id).await.unwrap());
    assert!(!store.finish(other, id, TaskOutcome::Cancelled.into()).await.unwrap());
    assert!(!store.remove(other, id).await.unwrap());
    assert_eq!(store.get(TENANT, id).await.unwrap(), Some(task), "untouched by the other tenant");
    let asked = [(TENANT.to_string(), id), (other.to_string(), id)];
    assert_eq!(store.statuses(&asked).await.unwrap(), [Some(TaskStatus::Pending), None]);
}

async fn unknown_ids_are_refused(store: Arc<dyn TaskStore>) {
    let id = Clock::new().new_task_id();
    assert_eq!(store.get(TENANT, id).await.unwrap(), None);
    assert!(!store.start(TENANT, id).await.unwrap());
    assert!(!store.finish(TENANT, id, TaskOutcome::Cancelled.into()).await.unwrap());
    assert!(!store.remove(TENANT, id).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 0, "nothing was created by touching an unknown id");
}

/// A tenant at its cap of tasks held (finished ones included) or pending is
/// refused, and loses nothing; another tenant is not held up by it.
async fn tenant_caps_are_enforced(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let caps = TenantCaps { tasks: 3, pending: 2 };
    let of =
        |tenant: &str| Task::pending(clock.new_task_id(), tenant.into(), "skills".into(), clock.now(), store.ttl());
    let (first, second) = (of(TENANT), of(TENANT));
    store.insert(first.clone(), caps, None).await.unwrap();
    store.insert(second.clone(), caps, None).await.unwrap();
    let over = StoreError::OverQuota { tenant: TENANT.into(), limit: 2 };
    assert_eq!(store.insert(of(TENANT), caps, None).await, Err(over), "two pending is the quota");
    assert!(store.refusal(OTHER, caps).is_none());
    store.insert(of(OTHER), caps, None).await.expect("another tenant is not held up");

    // A finished task no longer counts as pending, but it is still held.
    assert!(store.finish(TENANT, first.task_id, TaskOutcome::Completed(vec![]).into()).await.unwrap());
    let third = of(TENANT);
    store.insert(third.clone(), caps, None).await.unwrap();
    let full = StoreError::TenantFull { tenant: TENANT.into(), cap: 3 };
    assert!(store.finish(TENANT, second.task_id, TaskOutcome::Cancelled.into()).await.unwrap());
    assert_eq!(store.insert(of(TENANT), caps, None).await, Err(full), "three held is the cap, finished or not");
    for task in [&first, &second, &third] {
        assert!(store.get(TENANT, task.task_id).await.unwrap().is_some(), "a refusal loses nothing");
    }
    // Deleting gives the room back.
    assert!(store.remove(TENANT, first.task_id).await.unwrap());
    store.insert(of(TENANT), caps, None).await.expect("room again after a delete");
}

async fn expiry_deletes_and_counts_from_creation(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let ttl = store.ttl();
    let task = pending(&*store, &clock);
    let id = task.task_id;
    store.insert(task, TenantCaps::NONE, None).await.unwrap();
    tokio::time::sleep(ttl / 2).await;
    assert!(store.start(TENANT, id).await.unwrap());
    assert!(store.finish(TENANT, id, TaskOutcome::Completed(vec![]).into()).await.unwrap());
    assert!(store.get(TENANT, id).await.unwrap().is_some(), "alive before its time to live");

    // Gone soon after the time to live, counted from creation, not from the
    // last update. Backends with coarse expiry get a bounded grace period.
    let key = IdempotencyKey { key: "made-before-expiry".into(), fingerprint: "f".into() };
    let keyed = pending(&*store, &clock);
    assert_eq!(store.insert(keyed.clone(), TenantCaps::NONE, Some(&key)).await, Ok(Inserted::New));
    tokio::time::sleep(ttl / 2).await;
    expired_within_grace(&*store).await;
    assert_eq!(store.get(TENANT, id).await.unwrap(), None);
    // The key goes with its task, within the same grace.
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.find_key(TENANT, &key).await != Ok(None) {
        assert!(tokio::time::Instant::now() < grace, "a key outlived its task by 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = pending(&*store, &clock);
    assert_eq!(store.insert(after, TenantCaps::NONE, Some(&key)).await, Ok(Inserted::New), "and is free again");
}

async fn idempotency_keys_make_one_task(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let key = IdempotencyKey { key: "retry-1".into(), fingerprint: "aaaa".into() };
    let first = pending(&*store, &clock);
    assert_eq!(store.insert(first.clone(), TenantCaps::NONE, Some(&key)).await, Ok(Inserted::New));
    let id = first.task_id;

    // The same key again answers the first task, and inserts nothing.
    let retry = pending(&*store, &clock);
    assert_eq!(store.insert(retry.clone(), TenantCaps::NONE, Some(&key)).await, Ok(Inserted::Existing(id)));
    assert_eq!(store.get(TENANT, retry.task_id).await.unwrap(), None, "a replay inserts nothing");
    assert_eq!(store.count().await.unwrap(), 1);
    assert_eq!(store.find_key(TENANT, &key).await, Ok(Some(id)));
    // Even at the tenant's caps, and once the task has ended.
    let full = TenantCaps { tasks: 1, pending: 1 };
    assert_eq!(store.insert(pending(&*store, &clock), full, Some(&key)).await, Ok(Inserted::Existing(id)));
    assert!(store.finish(TENANT, id, TaskOutcome::Completed(vec![]).into()).await.unwrap());
    assert_eq!(store.insert(pending(&*store, &clock), TenantCaps::NONE, Some(&key)).await, Ok(Inserted::Existing(id)));

    // The key with another submission is refused, naming the task.
    let reused = IdempotencyKey { fingerprint: "bbbb".into(), ..key.clone() };
    let conflict = Err(StoreError::KeyReused { key: key.key.clone(), task_id: id });
    assert_eq!(store.insert(pending(&*store, &clock), TenantCaps::NONE, Some(&reused)).await, conflict);
    assert_eq!(store.find_key(TENANT, &reused).await.map(|_| ()), conflict.map(|_| ()));
    assert_eq!(store.count().await.unwrap(), 1);

    // Another tenant's key of the same name is its own.
    let theirs = Task::pending(clock.new_task_id(), OTHER.into(), "skills".into(), clock.now(), store.ttl());
    assert_eq!(store.insert(theirs.clone(), TenantCaps::NONE, Some(&reused)).await, Ok(Inserted::New));
    assert_eq!(store.find_key(OTHER, &reused).await, Ok(Some(theirs.task_id)));

    // The key lives as long as its task: removed, the key is free.
    assert!(store.remove(TENANT, id).await.unwrap());
    assert_eq!(store.find_key(TENANT, &key).await, Ok(None));
    let next = pending(&*store, &clock);
    assert_eq!(store.insert(next.clone(), TenantCaps::NONE, Some(&reused)).await, Ok(Inserted::New));

    // Inserts racing with one fresh key make one task; every other one is
    // answered with it.
    let fresh = IdempotencyKey { key: "raced".into(), fingerprint: "cccc".into() };
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, fresh, task) = (store.clone(), fresh.clone(), pending(&*store, &clock));
        racers.spawn(async move {
            store.insert(task.clone(), TenantCaps::NONE, Some(&fresh)).await.map(|i| (i, task.task_id))
        });
    }
    let results = racers.join_all().await;
    let made: Vec<TaskId> = results
        .iter()
        .filter_map(|r| match r {
            Ok((Inserted::New, id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 1, "{results:?}");
    let answers: Vec<Inserted> = results.iter().map(|r| r.as_ref().expect("no insert fails").0).collect();
    assert!(answers.iter().all(|a| *a == Inserted::New || *a == Inserted::Existing(made[0])), "{results:?}");
}

/// Called once the time to live of every task in `store` has lapsed: waits
/// until they are gone. Backends with coarse expiry (Redis) get a bounded
/// grace period; under the memory store's paused clock this returns at once.
async fn expired_within_grace(store: &dyn TaskStore) {
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.count().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < grace, "tasks still present 5 s after their time to live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A callback's delivery is queued by the end itself, claimed by one
/// claimant at a time under a lease that lapses, reported once per lease,
/// retried when asked, counted, and gone with its task.
async fn callbacks_are_queued_with_the_end_and_leased(store: Arc<dyn TaskStore>) {
    const HOUR: Duration = Duration::from_secs(3600);
    let clock = Clock::new();
    let hooked = |url: &str| pending(&*store, &clock).with_callback(Some(TaskCallback::new(url.into(), false)));
    let claim_all = |lease| {
        let store = store.clone();
        async move { store.claim_callbacks(lease, 16, &|_| usize::MAX).await.unwrap() }
    };
    let task = hooked("https://hooks.example.com/a");
    let id = task.task_id;
    let plain = pending(&*store, &clock);
    store.insert(task, TenantCaps::NONE, None).await.unwrap();
    store.insert(plain.clone(), TenantCaps::NONE, None).await.unwrap();
    let read = |id| {
        let store = store.clone();
        async move { store.get(TENANT, id).await.unwrap().unwrap().callback.unwrap() }
    };
    let shown = read(id).await;
    assert_eq!((shown.url.as_str(), shown.progress.state), ("https://hooks.example.com/a", CallbackState::Waiting));
    assert!(claim_all(HOUR).await.is_empty(), "nothing is due before the end");

    // Drain a permit an earlier change may have left, then see the end tell.
    let _ = tokio::time::timeout(Duration::from_millis(10), store.callbacks_queued().notified()).await;
    store.finish(TENANT, plain.task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), store.callbacks_queued().notified()).await.is_err(),
        "an end without a callback queues nothing"
    );
    store.finish(TENANT, id, TaskOutcome::Completed(vec![]).into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), store.callbacks_queued().notified())
        .await
        .expect("an end with a callback tells the deliverer");
    assert_eq!(read(id).await.progress, CallbackProgress::QUEUED);
    assert_eq!(store.callback_counts().await.unwrap(), CallbackCounts { pending: 1, failed: 0 });

    let first = claim_all(HOUR).await;
    assert_eq!(first.len(), 1, "the end with a callback, only: {first:?}");
    let first = first.into_iter().next().unwrap();
    assert_eq!((first.tenant.as_str(), first.task_id), (TENANT, id));
    assert!(claim_all(HOUR).await.is_empty(), "a leased delivery is nobody else's");

    let tried = CallbackProgress {
        state: CallbackState::Pending,
        attempts: 1,
        last_status: Some(500),
        last_error: Some("the receiver answered 500".into()),
    };
    // The time-bound checks: a retry or a lease of WINDOW is not due before
    // WINDOW has passed (checked only when the claim returned within it, so
    // a stalled machine cannot fail them), and is due after it (waited for).
    const WINDOW: Duration = Duration::from_secs(1);
    let retry = CallbackReport { progress: tried.clone(), retry_in: Some(WINDOW) };
    let stale = CallbackClaim { lease: first.lease + 1, ..first.clone() };
    assert!(!store.report_callback(&stale, retry.clone()).await.unwrap(), "another lease's report is refused");
    let reported = tokio::time::Instant::now();
    assert!(store.report_callback(&first, retry.clone()).await.unwrap());
    assert!(!store.report_callback(&first, retry).await.unwrap(), "a lease is reported once");
    assert_eq!(read(id).await.progress, tried);
    let early = claim_all(HOUR).await;
    if reported.elapsed() < WINDOW {
        assert!(early.is_empty(), "a retry waits for its time");
    }
    tokio::time::sleep_until(reported + WINDOW + Duration::from_millis(100)).await;

    // A claimant that never reports (a host that died) loses the lease.
    let leased = tokio::time::Instant::now();
    let short = claim_all(WINDOW).await;
    assert_eq!(short.len(), 1, "the retry is due");
    let early = claim_all(HOUR).await;
    if leased.elapsed() < WINDOW {
        assert!(early.is_empty(), "a lease holds until it lapses");
    }
    tokio::time::sleep_until(leased + WINDOW + Duration::from_millis(100)).await;
    let second = claim_all(HOUR).await;
    assert_eq!(second.len(), 1, "a lapsed lease is claimed again");
    let delivered =
        CallbackProgress { state: CallbackState::Delivered, attempts: 2, last_status: Some(204), last_error: None };
    let done = CallbackReport { progress: delivered.clone(), retry_in: None };
    assert!(!store.report_callback(&short[0], done.clone()).await.unwrap(), "the lapsed lease's report is refused");
    assert!(store.report_callback(&second[0], done).await.unwrap());
    assert_eq!(read(id).await.progress, delivered);
    assert!(claim_all(Duration::ZERO).await.is_empty(), "a delivered end is done with");
    assert_eq!(store.callback_counts().await.unwrap(), CallbackCounts { pending: 0, failed: 0 });

    // A failure is counted while its task lives; a delete takes a queued
    // delivery with it.
    let failing = hooked("https://hooks.example.com/b");
    let queued = hooked("https://hooks.example.com/c");
    for task in [&failing, &queued] {
        store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
        store.finish(TENANT, task.task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    }
    let claims = claim_all(HOUR).await;
    let failing_claim = claims.iter().find(|c| c.task_id == failing.task_id).expect("both are due").clone();
    let gave_up =
        CallbackProgress { state: CallbackState::Failed, attempts: 1, last_status: Some(410), last_error: None };
    assert!(store.report_callback(&failing_claim, CallbackReport { progress: gave_up, retry_in: None }).await.unwrap());
    assert_eq!(store.callback_counts().await.unwrap(), CallbackCounts { pending: 1, failed: 1 });
    assert!(store.remove(TENANT, failing.task_id).await.unwrap());
    assert!(store.remove(TENANT, queued.task_id).await.unwrap());
    assert_eq!(store.callback_counts().await.unwrap(), CallbackCounts::default(), "a delete takes the delivery");
}

/// A batch is inserted whole or not at all: over a cap, or with an id that
/// exists, nothing of it is kept.
async fn batches_are_admitted_whole(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    let caps = TenantCaps { tasks: 5, pending: 4 };
    let batch = |n: usize| (0..n).map(|_| pending(&*store, &clock)).collect::<Vec<_>>();
    let first = batch(3);
    let mut first_with_callback = first.clone();
    first_with_callback[2].callback = Some(TaskCallback::new("https://hooks.example.com/batch".into(), false));
    store.insert_batch(first_with_callback, caps).await.unwrap();
    assert_eq!(store.counts().await.unwrap().pending, 3);
    for task in &first {
        assert_eq!(store.get(TENANT, task.task_id).await.unwrap().unwrap().status, TaskStatus::Pending);
    }

    let over_pending = batch(2);
    assert_eq!(
        store.insert_batch(over_pending.clone(), caps).await,
        Err(StoreError::OverQuota { tenant: TENANT.into(), limit: 4 }),
        "3 open and 2 more is over 4"
    );
    for task in &over_pending {
        assert_eq!(store.get(TENANT, task.task_id).await.unwrap(), None, "nothing of a refused batch is kept");
    }
    store.finish(TENANT, first[0].task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    store.finish(TENANT, first[1].task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    let over_tasks = batch(3);
    assert_eq!(
        store.insert_batch(over_tasks.clone(), caps).await,
        Err(StoreError::TenantFull { tenant: TENANT.into(), cap: 5 }),
        "3 held and 3 more is over 5, however few are open"
    );
    assert_eq!(store.get(TENANT, over_tasks[0].task_id).await.unwrap(), None);

    let mut with_existing = batch(1);
    with_existing.push(first[2].clone());
    assert_eq!(
        store.insert_batch(with_existing.clone(), TenantCaps::NONE).await,
        Err(StoreError::Duplicate(first[2].task_id))
    );
    assert_eq!(store.get(TENANT, with_existing[0].task_id).await.unwrap(), None);
    assert_eq!(store.counts().await.unwrap().total(), 3, "only the first batch is held");

    // A batch's task with a callback has its end delivered like any other.
    store.finish(TENANT, first[2].task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    let claimed = store.claim_callbacks(Duration::from_secs(60), 16, &|_| usize::MAX).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.task_id).collect::<Vec<_>>(), [first[2].task_id]);
}

/// A claim takes no more of a tenant's deliveries than the caller has room
/// for, and still takes the other tenants'.
async fn claims_give_each_tenant_its_room(store: Arc<dyn TaskStore>) {
    let clock = Clock::new();
    for tenant in [TENANT, TENANT, TENANT, OTHER, OTHER] {
        let task = Task::pending(clock.new_task_id(), tenant.into(), "skills".into(), clock.now(), store.ttl())
            .with_callback(Some(TaskCallback::new("https://hooks.example.com/r".into(), false)));
        store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
        store.finish(tenant, task.task_id, TaskOutcome::Cancelled.into()).await.unwrap();
    }
    let room = |tenant: &str| if tenant == TENANT { 1 } else { usize::MAX };
    let claimed = store.claim_callbacks(Duration::from_secs(60), 16, &room).await.unwrap();
    let of = |tenant: &str| claimed.iter().filter(|c| c.tenant == tenant).count();
    assert_eq!((of(TENANT), of(OTHER)), (1, 2), "{claimed:?}");
    let rest = store.claim_callbacks(Duration::from_secs(60), 16, &|_| usize::MAX).await.unwrap();
    assert_eq!(rest.len(), 2, "the two left over are due still: {rest:?}");
    assert!(rest.iter().all(|c| c.tenant == TENANT));
}
