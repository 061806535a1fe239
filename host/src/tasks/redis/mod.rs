//! The Redis task store, for hosts that share one table (`--store
//! redis://...`).
//!
//! # Layout
//!
//! Every key of one tenant carries the hash tag `{<prefix>:<tenant>}`, so
//! that the keys one script touches share a hash slot (the condition for
//! Redis Cluster) and tenants spread over the shards:
//!
//! ```text
//! {<prefix>:<tenant>}:task:<id>    hash, with the task's native TTL (PEXPIRE at insert):
//!                                    j  the task as created (JSON)
//!                                    s  its status
//!                                    x  when it expires (ms, Redis's clock)
//!                                    u  when it last changed (RFC 3339), once it has
//!                                    o  its result or error (JSON), once it has ended
//!                                    w  "1" if its end is to be pushed to a callback
//!                                    d  its callback's progress (JSON), once attempted
//! {<prefix>:<tenant>}:s:<status>   sorted set of the tenant's task ids in that status,
//!                                  scored by expiry (ms, Redis's clock)
//! {<prefix>:<tenant>}:job:<id>     string, the task's TTL: the job to run (JSON), until
//!                                  it ends (hosts sharing jobs; see stream.rs)
//! {<prefix>:<tenant>}:callbacks    sorted set of the ids of ended tasks whose callback is
//!                                  to be delivered, scored by when it is due (ms, Redis's
//!                                  clock; a claimed one: when its lease lapses)
//! {<prefix>:<tenant>}:s:cbfailed   sorted set of the ids of tasks whose callback failed,
//!                                  scored by expiry, counted like the status sets
//! ```
//!
//! A hash rather than one JSON string, so that a transition is a field
//! write inside a Lua script that never parses JSON: the script checks the
//! status field, writes the new one, and moves the task between the status
//! sets, atomically. Changing fields keeps the key's TTL, so an update
//! never extends a task's life.
//!
//! # Counts that cannot drift
//!
//! Every score is stamped by Redis's own `TIME` inside the script that
//! writes it, from the same clock that runs the key's TTL, so a task counts
//! exactly while its key lives: a count is `ZCOUNT (now +inf` of the sets,
//! read with that clock too, and no pruning is needed to be right. Members
//! of expired tasks are removed for memory's sake by [`RedisStore::prune`],
//! which the hosts of a deployment run every minute. A transition moves a
//! member with the score kept in the hash (`x`), and puts back a member
//! lost some other way.
//!
//! The tenant's caps (tasks held, tasks pending or running) are counted and
//! checked in the insert script itself, so they hold across every host of a
//! deployment, however many accept for the tenant at once.
//!
//! The connection is a [`RedisConn`] (one Redis or a Redis Cluster): it
//! reconnects by itself. While Redis cannot be reached every call fails fast
//! with [`StoreError::Unavailable`], which the API answers with 503 and
//! `/readyz` reports; nothing is cached or queued on the side.
//!
//! `stream.rs` adds what hosts sharing jobs need of the same keys: a task
//! inserted with its job's stream entry, an outcome written with the
//! entry's acknowledgement, in one script each.

mod conn;
mod stream;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{AsyncCommands as _, Script};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use conn::RedisConn;
pub use stream::{EntryFinish, EntryRef};

use super::{
    CallbackClaim, CallbackCounts, CallbackReport, IdempotencyKey, Inserted, StoreError, Task, TaskCounts, TaskEnd,
    TaskId, TaskLogs, TaskOutcome, TaskResult, TaskStatus, TaskStore, TenantCaps,
};
use crate::runtime::JobFailure;

/// How long a refusal for a tenant's caps is remembered, to refuse the
/// tenant's next requests before their bodies are read.
const REFUSAL_MEMORY: Duration = Duration::from_millis(500);

pub struct RedisStore {
    redis: RedisConn,
    prefix: String,
    /// The tenants whose tasks `counts` adds up.
    tenants: Vec<String>,
    ttl: Duration,
    scripts: Scripts,
    /// The last refusal of each tenant's insert, and when.
    refusals: Mutex<HashMap<String, (Instant, StoreError)>>,
    /// Told when an end this host wrote queued a delivery.
    callbacks_queued: tokio::sync::Notify,
}

struct Scripts {
    insert: Script,
    start: Script,
    finish: Script,
    remove: Script,
    counts: Script,
    prune: Script,
    insert_enqueue: Script,
    read_start: Script,
    finish_entry: Script,
    drop_entry: Script,
    fail_undelivered: Script,
    claim_callbacks: Script,
    report_callback: Script,
    callback_counts: Script,
    insert_batch: Script,
}

/// The time on Redis's clock, in ms, as every script reads it.
const NOW: &str = r"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Counts the tenant's live tasks, refuses at either cap, else adds the
/// task unless it exists: 1 added, 0 exists, -1 tasks cap, -2 pending cap.
/// KEYS: task, then the tenant's five status sets in `TaskStatus::ALL` order.
/// ARGV: task JSON, ttl ms, tasks cap, pending cap, id. `hook` is '1' for a
/// task whose end goes to a callback.
const INSERT_FN: &str = r"
local function insert(idem, claim, hook)
  if idem ~= '' then
    -- The claim names its task; a claim whose task has just expired (the
    -- two TTLs lapse within a millisecond of each other) is not a retry.
    local prior = redis.call('GET', idem)
    if prior then
      local prior_task = string.sub(KEYS[1], 1, -37) .. string.sub(prior, 1, 36)
      if redis.call('EXISTS', prior_task) == 1 then return prior end
    end
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  local t = now()
  local live = '(' .. t
  local open = redis.call('ZCOUNT', KEYS[2], live, '+inf') + redis.call('ZCOUNT', KEYS[3], live, '+inf')
  local held = open
  for i = 4, 6 do held = held + redis.call('ZCOUNT', KEYS[i], live, '+inf') end
  if held >= tonumber(ARGV[3]) then return -1 end
  if open >= tonumber(ARGV[4]) then return -2 end
  local expires = t + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'j', ARGV[1], 's', 'pending', 'x', expires)
  if hook == '1' then redis.call('HSET', KEYS[1], 'w', '1') end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], expires, ARGV[5])
  if idem ~= '' then
    redis.call('SET', idem, claim, 'PX', ARGV[2])
    redis.call('HSET', KEYS[1], 'k', idem)
  end
  return 1
end
";

/// KEYS: task, its five status sets. ARGV: task JSON, ttl ms, tasks cap,
/// pending cap, id, idempotency key's key (or ''), its claim, '1' for a
/// callback (or ''). Answers 1
/// inserted, 0 duplicate id, -1 / -2 over a cap, or the claim (`<task id>
/// <fingerprint>`) of the key's live task. The key lives as long as the task
/// (the same TTL; REMOVE deletes it with the task, named in its `k`), in the
/// tenant's hash slot, so the key and its task move together.
const INSERT: &str = "return insert(ARGV[6], ARGV[7], ARGV[8])";

/// Inserts a batch of one tenant's tasks, all or none: 1 inserted, -1
/// tasks cap, -2 pending cap, -100 - i the i-th task's id exists; on a refusal the batch's job keys
/// (if any) are deleted. KEYS: the five status sets, the tenant's stream,
/// then the `n` task keys, then the `n` job keys when enqueueing. ARGV: ttl
/// ms, tasks cap, pending cap, n, channel, announcement (both '' when not
/// enqueueing), then per task its id, JSON and callback flag ('1' or '').
/// Enqueueing, each task's job entry is appended and the work announced.
const INSERT_BATCH: &str = r"
local n = tonumber(ARGV[4])
local enqueue = ARGV[5] ~= ''
local function refuse(code)
  if enqueue then for i = 1, n do redis.call('DEL', KEYS[6 + n + i]) end end
  return code
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[6 + i]) == 1 then return refuse(-100 - i) end
end
local t = now()
local live = '(' .. t
local open = redis.call('ZCOUNT', KEYS[1], live, '+inf') + redis.call('ZCOUNT', KEYS[2], live, '+inf')
local held = open
for i = 3, 5 do held = held + redis.call('ZCOUNT', KEYS[i], live, '+inf') end
if held + n > tonumber(ARGV[2]) then return refuse(-1) end
if open + n > tonumber(ARGV[3]) then return refuse(-2) end
local expires = t + tonumber(ARGV[1])
for i = 1, n do
  local task, a = KEYS[6 + i], 7 + (i - 1) * 3
  redis.call('HSET', task, 'j', ARGV[a + 1], 's', 'pending', 'x', expires)
  if ARGV[a + 2] == '1' then redis.call('HSET', task, 'w', '1') end
  redis.call('PEXPIRE', task, ARGV[1])
  redis.call('ZADD', KEYS[1], expires, ARGV[a])
  if enqueue then redis.call('XADD', KEYS[6], '*', 'task', ARGV[a]) end
end
if enqueue then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
";

/// Moves member `id` from set `from` to set `to` with score `expires`
/// (the hash's `x`; for a task written before it kept one, the member's
/// score, or failing that the key's TTL).
const MOVE: &str = r"
local function move(key, from, to, id, expires)
  local score = expires or redis.call('ZSCORE', from, id)
  redis.call('ZREM', from, id)
  if not score then score = now() + math.max(redis.call('PTTL', key), 0) end
  redis.call('ZADD', to, score, id)
end
";

/// The Lua of [`MOVE`] (with the clock it reads), for scripts of the
/// layers above that move a task between its status sets.
pub fn move_lua() -> String {
    format!("{NOW}{MOVE}")
}

/// Pending to running, once. KEYS: task, pending, running.
/// ARGV: updated at, id.
const START: &str = r"
local h = redis.call('HMGET', KEYS[1], 's', 'x')
if h[1] ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 's', 'running', 'u', ARGV[1])
move(KEYS[1], KEYS[2], KEYS[3], ARGV[2], h[2])
return 1
";

/// Pending or running to an end, once: 2 written with the task's callback
/// queued, due now; 1 written; 0 gone or ended. The callbacks set is in the
/// task's hash slot, its key the task's with `callbacks` for `task:<id>`.
const FINISH_FN: &str = r"
local function finish(task, pending, running, target, status, updated, outcome, id)
  local h = redis.call('HMGET', task, 's', 'x', 'w')
  local s = h[1]
  if s ~= 'pending' and s ~= 'running' then return 0 end
  redis.call('HSET', task, 's', status, 'u', updated, 'o', outcome)
  local from = running
  if s == 'pending' then from = pending end
  move(task, from, target, id, h[2])
  if h[3] then
    redis.call('ZADD', string.sub(task, 1, -42) .. 'callbacks', now(), id)
    return 2
  end
  return 1
end
";

/// Leases up to ARGV[2] due deliveries for ARGV[1] ms; drops those whose
/// task is gone. KEYS: callbacks. ARGV: lease ms, limit, the tenant's key
/// tag. Answers `[id, lease, …]`, the lease being the new score.
const CLAIM_CALLBACKS: &str = r"
local t = now()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
local lease = t + tonumber(ARGV[1])
for _, id in ipairs(due) do
  if redis.call('EXISTS', ARGV[3] .. ':task:' .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], lease, id)
    out[#out + 1] = id
    out[#out + 1] = string.format('%d', lease)
  end
end
return out
";

/// Writes an attempt's progress if the caller's lease is still the
/// delivery's, and queues the retry or is done with it: 1 written, 0 the
/// lease is lost or the task gone. KEYS: task, callbacks, failed set.
/// ARGV: id, lease, progress JSON, retry in ms (-1: done), failed ('1' or '').
const REPORT_CALLBACK: &str = r"
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local expires = redis.call('HGET', KEYS[1], 'x') or (now() + redis.call('PTTL', KEYS[1]))
redis.call('HSET', KEYS[1], 'd', ARGV[3])
if tonumber(ARGV[4]) >= 0 then
  redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[3], expires, ARGV[1]) end
return 1
";

/// KEYS: callbacks, failed set. Answers the deliveries queued and the
/// live failed ones.
const CALLBACK_COUNTS: &str = r"
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCOUNT', KEYS[2], '(' .. now(), '+inf')}
";

/// KEYS: task, pending, running, target. ARGV: status, updated at, outcome
/// JSON, id.
const FINISH: &str = "return finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4])";

/// KEYS: task, its job, then the five status sets, the callbacks set and
/// the failed callbacks' set. ARGV: id. The task's idempotency key (its
/// `k`, in the same hash slot) goes with it.
const REMOVE: &str = r"
redis.call('DEL', KEYS[2])
local idem = redis.call('HGET', KEYS[1], 'k')
if idem then redis.call('DEL', idem) end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
";

/// Drops the members of expired tasks from one tenant's five status sets
/// and its failed callbacks' set (a count never includes them; this only
/// gives their memory back). KEYS: the six sets.
const PRUNE: &str = r"
local t = now()
local dropped = 0
for i = 1, #KEYS do dropped = dropped + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', t) end
return dropped
";

/// KEYS: one tenant's five status sets.
const COUNTS: &str = r"
local live = '(' .. now()
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], live, '+inf') end
return out
";

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {err}"))
}

/// The end of a job as the task's hash keeps it (`o`): the result or the
/// error, with the matcher's logs beside them when the task keeps them; an
/// empty string for a cancelled task. A hash written before tasks kept
/// logs reads back the same, without them.
fn stored_outcome(end: &TaskEnd) -> String {
    #[derive(Serialize)]
    struct Stored<'a, T: Serialize> {
        #[serde(flatten)]
        body: T,
        #[serde(skip_serializing_if = "Option::is_none")]
        logs: Option<&'a TaskLogs>,
    }
    let logs = end.logs.as_ref();
    match &end.outcome {
        TaskOutcome::Completed(rankings) => {
            serde_json::to_string(&Stored { body: TaskResult { rankings: rankings.clone() }, logs })
        }
        TaskOutcome::Failed(error) => serde_json::to_string(&Stored { body: error, logs }),
        TaskOutcome::Cancelled => Ok(String::new()),
    }
    .expect("an outcome serialises")
}

/// Reads back what [`stored_outcome`] wrote.
fn read_outcome<T: DeserializeOwned>(stored: &str) -> Result<(T, Option<TaskLogs>), StoreError> {
    #[derive(Deserialize)]
    struct Stored<T> {
        #[serde(flatten)]
        body: T,
        #[serde(default)]
        logs: Option<TaskLogs>,
    }
    let Stored { body, logs } = serde_json::from_str(stored).map_err(corrupt)?;
    Ok((body, logs))
}

/// The task an idempotency key's claim (`<task id> <fingerprint>`) names,
/// if `key` was sent with the same fingerprint.
fn read_claim(key: &IdempotencyKey, claim: &str) -> Result<Inserted, StoreError> {
    let (id, fingerprint) = claim.split_once(' ').ok_or_else(|| corrupt("an idempotency key without a fingerprint"))?;
    let task_id = TaskId::try_parse(id).map_err(corrupt)?;
    if fingerprint != key.fingerprint {
        return Err(StoreError::KeyReused { key: key.key.clone(), task_id });
    }
    Ok(Inserted::Existing(task_id))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis holds a task this host cannot read: {what}"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a timestamp formats")
}

fn script(body: &str, helpers: &[&str]) -> Script {
    Script::new(&format!("{}{body}", helpers.concat()))
}

impl RedisStore {
    /// A store on the Redis `redis` reaches, under `prefix`, for `tenants`.
    /// Does not wait for Redis: a host can start while Redis is down, and
    /// is ready once it answers.
    pub fn open(redis: RedisConn, prefix: &str, tenants: Vec<String>, ttl: Duration) -> Self {
        RedisStore {
            redis,
            prefix: prefix.to_string(),
            tenants,
            ttl,
            scripts: Scripts {
                insert: script(INSERT, &[NOW, INSERT_FN]),
                start: script(START, &[NOW, MOVE]),
                finish: script(FINISH, &[NOW, MOVE, FINISH_FN]),
                remove: Script::new(REMOVE),
                counts: script(COUNTS, &[NOW]),
                prune: script(PRUNE, &[NOW]),
                insert_enqueue: script(stream::INSERT_ENQUEUE, &[NOW, INSERT_FN]),
                read_start: script(stream::READ_START, &[NOW, MOVE]),
                finish_entry: script(stream::FINISH_ENTRY, &[NOW, MOVE, FINISH_FN, stream::OWNED_FN]),
                drop_entry: script(stream::DROP_ENTRY, &[stream::OWNED_FN]),
                fail_undelivered: script(stream::FAIL_UNDELIVERED, &[NOW, MOVE, FINISH_FN]),
                claim_callbacks: script(CLAIM_CALLBACKS, &[NOW]),
                report_callback: script(REPORT_CALLBACK, &[NOW]),
                callback_counts: script(CALLBACK_COUNTS, &[NOW]),
                insert_batch: script(INSERT_BATCH, &[NOW]),
            },
            refusals: Mutex::default(),
            callbacks_queued: tokio::sync::Notify::new(),
        }
    }

    /// The connection, for the layers that share the deployment's Redis.
    pub fn conn(&self) -> &RedisConn {
        &self.redis
    }

    /// The hash tag of `tenant`'s keys: every key of one tenant is in one
    /// hash slot.
    pub fn tag(&self, tenant: &str) -> String {
        format!("{{{}:{tenant}}}", self.prefix)
    }

    /// The key of `tenant`'s task `id`.
    pub fn key(&self, tenant: &str, id: TaskId) -> String {
        format!("{}:task:{id}", self.tag(tenant))
    }

    /// The key of `tenant`'s set of tasks in `status`.
    pub fn status_key(&self, tenant: &str, status: TaskStatus) -> String {
        format!("{}:s:{}", self.tag(tenant), status.as_str())
    }

    fn sets(&self, tenant: &str) -> Vec<String> {
        TaskStatus::ALL.iter().map(|s| self.status_key(tenant, *s)).collect()
    }

    /// The key of `tenant`'s set of deliveries queued.
    pub fn callbacks_key(&self, tenant: &str) -> String {
        format!("{}:callbacks", self.tag(tenant))
    }

    /// The key of `tenant`'s set of tasks whose callback failed.
    fn failed_callbacks_key(&self, tenant: &str) -> String {
        format!("{}:s:cbfailed", self.tag(tenant))
    }

    /// What a finish script answered: whether it wrote the end, and told
    /// the deliverer if it queued a delivery.
    fn finished(&self, answer: i64) -> bool {
        if answer == 2 {
            self.callbacks_queued.notify_one();
        }
        answer >= 1
    }

    /// Runs START, which moves a task to running.
    async fn to_running(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let moved: i64 = self
            .scripts
            .start
            .key(self.key(tenant, id))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .arg(rfc3339(OffsetDateTime::now_utc()))
            .arg(id.to_string())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(moved == 1)
    }

    /// Rebuilds a task from its hash.
    fn decode(fields: HashMap<String, String>) -> Result<Option<Task>, StoreError> {
        let Some(created) = fields.get("j") else { return Ok(None) };
        let mut task: Task = serde_json::from_str(created).map_err(corrupt)?;
        task.status = serde_json::from_value(serde_json::Value::String(fields.get("s").cloned().unwrap_or_default()))
            .map_err(corrupt)?;
        if let Some(updated) = fields.get("u") {
            let updated =
                OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339).map_err(corrupt)?;
            task.touch(updated);
        }
        if let Some(callback) = &mut task.callback {
            if let Some(progress) = fields.get("d") {
                callback.progress = serde_json::from_str(progress).map_err(corrupt)?;
            } else if task.status.is_terminal() {
                callback.progress = super::CallbackProgress::QUEUED;
            }
        }
        if let Some(outcome) = fields.get("o") {
            match task.status {
                TaskStatus::Completed => {
                    let (result, logs) = read_outcome::<TaskResult>(outcome)?;
                    (task.result, task.logs) = (Some(result), logs);
                }
                TaskStatus::Failed => {
                    let (error, logs) = read_outcome::<JobFailure>(outcome)?;
                    (task.error, task.logs) = (Some(error), logs);
                }
                _ => {}
            }
        }
        Ok(Some(task))
    }

    /// One tenant's counts, on its shard's clock.
    async fn tenant_counts(&self, tenant: &str) -> Result<TaskCounts, StoreError> {
        let mut invocation = self.scripts.counts.prepare_invoke();
        for set in self.sets(tenant) {
            invocation.key(set);
        }
        let n: Vec<u64> = invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        let [pending, running, completed, failed, cancelled] = n[..] else {
            return Err(corrupt("the counts script answered with the wrong shape"));
        };
        Ok(TaskCounts { pending, running, completed, failed, cancelled })
    }

    /// What an insert script's answer means; a refusal is remembered.
    /// The key under which `tenant`'s idempotency key `key` names its task.
    fn idem_key(&self, tenant: &str, key: &str) -> String {
        format!("{}:idem:{key}", self.tag(tenant))
    }

    /// The idempotency arguments of an insert: the key's Redis key and the
    /// claim it is set to, or two empty strings.
    fn idem_args(&self, tenant: &str, id: TaskId, key: Option<&IdempotencyKey>) -> (String, String) {
        match key {
            Some(key) => (self.idem_key(tenant, &key.key), format!("{id} {}", key.fingerprint)),
            None => (String::new(), String::new()),
        }
    }

    /// What an insert script answered.
    fn inserted(
        &self,
        tenant: &str,
        id: TaskId,
        caps: TenantCaps,
        key: Option<&IdempotencyKey>,
        reply: redis::Value,
    ) -> Result<Inserted, StoreError> {
        let code = match reply {
            redis::Value::Int(code) => code,
            redis::Value::BulkString(claim) => {
                let key = key.ok_or_else(|| corrupt("an insert without a key answered a key's claim"))?;
                return read_claim(key, &String::from_utf8_lossy(&claim));
            }
            other => return Err(corrupt(format!("an insert answered {other:?}"))),
        };
        let refused = match code {
            1 => {
                self.refusals.lock().unwrap().remove(tenant);
                return Ok(Inserted::New);
            }
            0 => return Err(StoreError::Duplicate(id)),
            -1 => StoreError::TenantFull { tenant: tenant.to_string(), cap: caps.tasks },
            _ => StoreError::OverQuota { tenant: tenant.to_string(), limit: caps.pending },
        };
        self.remember_refusal(tenant, &refused);
        Err(refused)
    }

    /// Runs INSERT_BATCH for `tasks`, all of one tenant; with `enqueue`
    /// (each task's job, in order, the channel and the announcement), the
    /// jobs' keys are written first and their entries appended by the
    /// script.
    pub(super) async fn insert_batch_with(
        &self,
        tasks: Vec<Task>,
        caps: TenantCaps,
        enqueue: Option<(&[String], &str, &str)>,
    ) -> Result<(), StoreError> {
        let Some(first) = tasks.first() else { return Ok(()) };
        let tenant = first.tenant.clone();
        assert!(tasks.iter().all(|t| t.tenant == tenant), "a batch is one tenant's");
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
        let ttl = self.ttl.as_millis().max(1) as u64;
        let mut invocation = self.scripts.insert_batch.prepare_invoke();
        for set in self.sets(&tenant) {
            invocation.key(set);
        }
        invocation.key(self.stream_key(&tenant));
        for task in &tasks {
            invocation.key(self.key(&tenant, task.task_id));
        }
        let (channel, announcement) = enqueue.map_or(("", ""), |(_, c, a)| (c, a));
        invocation
            .arg(ttl)
            .arg(caps.tasks.min(i64::MAX as usize))
            .arg(caps.pending.min(i64::MAX as usize))
            .arg(tasks.len())
            .arg(channel)
            .arg(announcement);
        for task in &tasks {
            invocation
                .arg(task.task_id.to_string())
                .arg(serde_json::to_string(task).expect("a task serialises"))
                .arg(if task.callback.is_some() { "1" } else { "" });
        }
        let mut redis = self.redis.clone();
        let answer: i64 = match enqueue {
            None => invocation.invoke_async(&mut redis).await.map_err(unavailable)?,
            Some((jobs, _, _)) => {
                // The jobs' bytes never pass through Lua (see stream.rs):
                // written first, with the tasks' TTL, deleted by the script
                // if it refuses the batch.
                let mut pipe = redis::pipe();
                for (task, job) in tasks.iter().zip(jobs) {
                    let key = self.job_key(&tenant, task.task_id);
                    invocation.key(&key);
                    pipe.cmd("SET").arg(key).arg(job).arg("PX").arg(ttl).ignore();
                }
                pipe.query_async::<()>(&mut redis).await.map_err(unavailable)?;
                invocation.invoke_async(&mut redis).await.map_err(unavailable)?
            }
        };
        let refused = match answer {
            1 => {
                self.refusals.lock().unwrap().remove(&tenant);
                return Ok(());
            }
            -1 => StoreError::TenantFull { tenant: tenant.clone(), cap: caps.tasks },
            -2 => StoreError::OverQuota { tenant: tenant.clone(), limit: caps.pending },
            code => {
                let existing = usize::try_from(-100 - code).ok().and_then(|i| ids.get(i.checked_sub(1)?));
                let existing = existing.ok_or_else(|| corrupt(format!("a batch insert answered {code}")))?;
                return Err(StoreError::Duplicate(*existing));
            }
        };
        // Not remembered: a batch too large for the room left says nothing
        // of whether one more job fits.
        Err(refused)
    }

    /// Forgets a refusal of `tenant`'s: one of its tasks ended or went, so
    /// the next insert may well fit.
    pub fn forget_refusal(&self, tenant: &str) {
        self.refusals.lock().unwrap().remove(tenant);
    }

    /// Gives back the memory of `tenant`'s expired tasks' members in the
    /// status sets; how many were dropped.
    pub async fn prune(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut invocation = self.scripts.prune.prepare_invoke();
        for set in self.sets(tenant) {
            invocation.key(set);
        }
        invocation.key(self.failed_callbacks_key(tenant));
        invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)
    }

    fn remember_refusal(&self, tenant: &str, refused: &StoreError) {
        let mut refusals = self.refusals.lock().unwrap();
        refusals.retain(|_, (at, _)| at.elapsed() < REFUSAL_MEMORY);
        refusals.insert(tenant.to_string(), (Instant::now(), refused.clone()));
    }
}

#[async_trait]
impl TaskStore for RedisStore {
    async fn insert(&self, task: Task, caps: TenantCaps, key: Option<&IdempotencyKey>) -> Result<Inserted, StoreError> {
        let id = task.task_id;
        let json = serde_json::to_string(&task).expect("a task serialises");
        let mut invocation = self.scripts.insert.key(self.key(&task.tenant, id));
        for set in self.sets(&task.tenant) {
            invocation.key(set);
        }
        let (idem, claim) = self.idem_args(&task.tenant, id, key);
        let inserted: redis::Value = invocation
            .arg(json)
            .arg(self.ttl.as_millis().max(1) as u64)
            .arg(caps.tasks.min(i64::MAX as usize))
            .arg(caps.pending.min(i64::MAX as usize))
            .arg(id.to_string())
            .arg(idem)
            .arg(claim)
            .arg(if task.callback.is_some() { "1" } else { "" })
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.inserted(&task.tenant, id, caps, key, inserted)
    }

    async fn insert_batch(&self, tasks: Vec<Task>, caps: TenantCaps) -> Result<(), StoreError> {
        self.insert_batch_with(tasks, caps, None).await
    }

    async fn find_key(&self, tenant: &str, key: &IdempotencyKey) -> Result<Option<TaskId>, StoreError> {
        let claim: Option<String> =
            self.redis.clone().get(self.idem_key(tenant, &key.key)).await.map_err(unavailable)?;
        match claim {
            Some(claim) => match read_claim(key, &claim)? {
                Inserted::Existing(id) => Ok(Some(id)),
                Inserted::New => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// A refusal of the last half second: enough to refuse a tenant that
    /// keeps sending at its cap before reading what it sends, without a
    /// round trip per request.
    fn refusal(&self, tenant: &str, _caps: TenantCaps) -> Option<StoreError> {
        let refusals = self.refusals.lock().unwrap();
        refusals.get(tenant).filter(|(at, _)| at.elapsed() < REFUSAL_MEMORY).map(|(_, refused)| refused.clone())
    }

    async fn get(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        let fields: HashMap<String, String> =
            self.redis.clone().hgetall(self.key(tenant, id)).await.map_err(unavailable)?;
        Self::decode(fields)
    }

    async fn start(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        self.to_running(tenant, id).await
    }

    async fn statuses(&self, tasks: &[(String, TaskId)]) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (tenant, id) in tasks {
            pipe.hget(self.key(tenant, *id), "s");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(statuses
            .into_iter()
            .map(|s| s.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()))
            .collect())
    }

    async fn finish(&self, tenant: &str, id: TaskId, end: TaskEnd) -> Result<bool, StoreError> {
        let status = end.status();
        let stored = stored_outcome(&end);
        let finished: i64 = self
            .scripts
            .finish
            .key(self.key(tenant, id))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .key(self.status_key(tenant, status))
            .arg(status.as_str())
            .arg(rfc3339(OffsetDateTime::now_utc()))
            .arg(stored)
            .arg(id.to_string())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(self.finished(finished))
    }

    async fn remove(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.remove.key(self.key(tenant, id));
        invocation.key(self.job_key(tenant, id));
        for set in self.sets(tenant) {
            invocation.key(set);
        }
        invocation.key(self.callbacks_key(tenant)).key(self.failed_callbacks_key(tenant));
        let removed: i64 =
            invocation.arg(id.to_string()).invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        if removed == 1 {
            self.forget_refusal(tenant);
        }
        Ok(removed == 1)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.counts().await?.total() as usize)
    }

    /// Each tenant's set in turn, until `limit` are claimed.
    async fn claim_callbacks(
        &self,
        lease: Duration,
        limit: usize,
        room: &(dyn for<'t> Fn(&'t str) -> usize + Send + Sync),
    ) -> Result<Vec<CallbackClaim>, StoreError> {
        let mut claimed = Vec::new();
        for tenant in &self.tenants {
            let room = room(tenant).min(limit - claimed.len());
            if room == 0 {
                continue;
            }
            let answer: Vec<String> = self
                .scripts
                .claim_callbacks
                .key(self.callbacks_key(tenant))
                .arg(lease.as_millis().max(1) as u64)
                .arg(room)
                .arg(self.tag(tenant))
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            for pair in answer.chunks_exact(2) {
                claimed.push(CallbackClaim {
                    tenant: tenant.clone(),
                    task_id: TaskId::try_parse(&pair[0]).map_err(corrupt)?,
                    lease: pair[1].parse().map_err(corrupt)?,
                });
            }
        }
        Ok(claimed)
    }

    async fn report_callback(&self, claim: &CallbackClaim, report: CallbackReport) -> Result<bool, StoreError> {
        let failed = report.progress.state == super::CallbackState::Failed;
        let written: i64 = self
            .scripts
            .report_callback
            .key(self.key(&claim.tenant, claim.task_id))
            .key(self.callbacks_key(&claim.tenant))
            .key(self.failed_callbacks_key(&claim.tenant))
            .arg(claim.task_id.to_string())
            .arg(claim.lease)
            .arg(serde_json::to_string(&report.progress).expect("a callback's progress serialises"))
            .arg(report.retry_in.map_or(-1, |d| d.as_millis().min(i64::MAX as u128) as i64))
            .arg(if failed { "1" } else { "" })
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(written == 1)
    }

    async fn callback_counts(&self) -> Result<CallbackCounts, StoreError> {
        let each = futures_util::future::try_join_all(self.tenants.iter().map(|tenant| async move {
            let n: Vec<u64> = self
                .scripts
                .callback_counts
                .key(self.callbacks_key(tenant))
                .key(self.failed_callbacks_key(tenant))
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            match n[..] {
                [pending, failed] => Ok(CallbackCounts { pending, failed }),
                _ => Err(corrupt("the callback counts script answered with the wrong shape")),
            }
        }))
        .await?;
        Ok(each.into_iter().fold(CallbackCounts::default(), |all, c| CallbackCounts {
            pending: all.pending + c.pending,
            failed: all.failed + c.failed,
        }))
    }

    fn callbacks_queued(&self) -> &tokio::sync::Notify {
        &self.callbacks_queued
    }

    /// Every tenant's counts, asked at once (in a Redis Cluster, each on
    /// its own shard and clock).
    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        let each = futures_util::future::try_join_all(self.tenants.iter().map(|t| self.tenant_counts(t))).await?;
        let mut all = TaskCounts::default();
        for counts in each {
            all += counts;
        }
        Ok(all)
    }

    async fn check(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tasks::{Clock, conformance};

    /// The Redis the tests use: `MATCHBOX_TEST_REDIS`, or the one on the
    /// standard port (which `.ci/run` makes sure is running).
    pub(crate) fn test_redis() -> String {
        std::env::var("MATCHBOX_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn fresh_prefix() -> String {
        format!("matchbox-test-{}", uuid::Uuid::now_v7().simple())
    }

    fn tenants() -> Vec<String> {
        conformance::TENANTS.iter().map(|t| t.to_string()).collect()
    }

    fn open(url: &str, prefix: &str, tenants: Vec<String>, ttl: Duration) -> RedisStore {
        let backend = url.parse().unwrap();
        RedisStore::open(RedisConn::open(&backend).unwrap().unwrap(), prefix, tenants, ttl)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn passes_the_conformance_suite_against_a_real_redis() {
        conformance::run(|_capacity, ttl| async move {
            let store = open(&test_redis(), &fresh_prefix(), tenants(), ttl);
            store.check().await.expect("a Redis server for the tests (see .ci/run)");
            let store: Arc<dyn TaskStore> = Arc::new(store);
            store
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_carry_native_ttls_that_updates_keep() {
        let prefix = fresh_prefix();
        let ttl = Duration::from_secs(60);
        let store = open(&test_redis(), &prefix, vec!["acme".into()], ttl);
        let clock = Clock::new();
        let task = Task::pending(clock.new_task_id(), "acme".into(), "skills".into(), clock.now(), ttl);
        store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
        let key = format!("{{{prefix}:acme}}:task:{}", task.task_id);
        let mut redis = store.redis.clone();
        let before: i64 = redis.pttl(&key).await.unwrap();
        assert!(before > 55_000 && before <= 60_000, "{before} ms");
        store.start("acme", task.task_id).await.unwrap();
        store.finish("acme", task.task_id, TaskOutcome::Completed(vec![]).into()).await.unwrap();
        let after: i64 = redis.pttl(&key).await.unwrap();
        assert!(after <= before && after > 50_000, "an update keeps the remaining TTL: {before} then {after} ms");
        let usage: i64 = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(usage < 1024, "a small task takes {usage} bytes");
        store.remove("acme", task.task_id).await.unwrap();
    }

    /// A member lost from its status set (by hand here) is put back by the
    /// next transition, so the counts stay true.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_lost_member_is_put_back_by_the_next_transition() {
        let prefix = fresh_prefix();
        let ttl = Duration::from_secs(60);
        let store = open(&test_redis(), &prefix, vec!["acme".into()], ttl);
        let clock = Clock::new();
        let task = Task::pending(clock.new_task_id(), "acme".into(), "skills".into(), clock.now(), ttl);
        store.insert(task.clone(), TenantCaps::NONE, None).await.unwrap();
        let _: i64 = store
            .redis
            .clone()
            .zrem(store.status_key("acme", TaskStatus::Pending), task.task_id.to_string())
            .await
            .unwrap();
        assert_eq!(store.counts().await.unwrap().total(), 0);
        assert!(store.start("acme", task.task_id).await.unwrap());
        assert_eq!(store.counts().await.unwrap().running, 1, "the member is back, in its new set");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_redis_is_unavailable_not_a_panic() {
        // Nothing listens on port 1.
        let store = open("redis://127.0.0.1:1", "matchbox", tenants(), Duration::from_secs(60));
        assert!(matches!(store.check().await, Err(StoreError::Unavailable(_))));
        let clock = Clock::new();
        let task = Task::pending(clock.new_task_id(), "acme".into(), "skills".into(), clock.now(), store.ttl());
        assert!(matches!(store.insert(task, TenantCaps::NONE, None).await, Err(StoreError::Unavailable(_))));
        assert!(matches!(store.counts().await, Err(StoreError::Unavailable(_))));
    }
}
