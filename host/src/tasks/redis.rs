//! The Redis task store, for hosts that share one table (`--store
//! redis://...`).
//!
//! # Layout
//!
//! ```text
//! <prefix>:<tenant>:task:<id>   hash, with the task's native TTL (PEXPIRE at insert):
//!                                 j  the task as created (JSON)
//!                                 s  its status
//!                                 u  when it last changed (RFC 3339), once it has
//!                                 o  its result or error (JSON), once it has ended
//! <prefix>:tasks:<status>        sorted set of "<tenant>/<id>" by expiry (ms since the
//!                                epoch): what `counts` reads, without a scan
//! ```
//!
//! A hash rather than one JSON string, so that a transition is a field
//! write inside a Lua script that never parses JSON: the script checks the
//! status field, writes the new one, and moves the task between the status
//! sets, atomically. Changing fields keeps the key's TTL, so an update
//! never extends a task's life. Expired keys vanish by Redis's own expiry;
//! their members in the status sets are dropped by score (their expiry) the
//! next time the sets are read.
//!
//! Keys are prefixed per deployment (`--redis-prefix`) and per tenant, so
//! two deployments can share a Redis and a task is only found under its
//! own tenant. The keys of one operation span hash slots: this store needs a
//! single Redis (or a primary with replicas), not Redis Cluster.
//!
//! The connection is a [`ConnectionManager`]: it reconnects by itself. While
//! Redis cannot be reached every call fails fast with
//! [`StoreError::Unavailable`], which the API answers with 503 and
//! `/readyz` reports; nothing is cached or queued on the side.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};
use time::OffsetDateTime;

use super::{StoreError, Task, TaskCounts, TaskId, TaskOutcome, TaskResult, TaskStatus, TaskStore};
use crate::runtime::JobFailure;

/// How long one Redis call may take before the store reports itself
/// unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisStore {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
    capacity: usize,
    scripts: Scripts,
}

struct Scripts {
    insert: Script,
    start: Script,
    take_over: Script,
    finish: Script,
    remove: Script,
    counts: Script,
}

/// Drops expired members from every status set, then refuses if the table
/// is full, then adds the task unless it exists.
/// KEYS: task, pending, running, completed, failed, cancelled.
/// ARGV: task JSON, now ms, expiry ms, capacity, member, ttl ms.
const INSERT: &str = r"
local total = 0
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[2])
  total = total + redis.call('ZCARD', KEYS[i])
end
if total >= tonumber(ARGV[4]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'j', ARGV[1], 's', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1
";

/// Pending to running, once. KEYS: task, pending, running.
/// ARGV: updated at, member.
const START: &str = r"
if redis.call('HGET', KEYS[1], 's') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 's', 'running', 'u', ARGV[1])
local score = redis.call('ZSCORE', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if score then redis.call('ZADD', KEYS[3], score, ARGV[2]) end
return 1
";

/// Pending or running to running (a host taking over another's job).
/// KEYS: task, pending, running. ARGV: updated at, member.
const TAKE_OVER: &str = r"
local s = redis.call('HGET', KEYS[1], 's')
if s ~= 'pending' and s ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 's', 'running', 'u', ARGV[1])
if s == 'pending' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  if score then redis.call('ZADD', KEYS[3], score, ARGV[2]) end
end
return 1
";

/// Pending or running to an end, once. KEYS: task, pending, running, target.
/// ARGV: status, updated at, outcome JSON, member.
const FINISH: &str = r"
local s = redis.call('HGET', KEYS[1], 's')
if s ~= 'pending' and s ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'u', ARGV[2], 'o', ARGV[3])
local from = KEYS[3]
if s == 'pending' then from = KEYS[2] end
local score = redis.call('ZSCORE', from, ARGV[4])
redis.call('ZREM', from, ARGV[4])
if score then redis.call('ZADD', KEYS[4], score, ARGV[4]) end
return 1
";

/// KEYS: task, then the five status sets. ARGV: member.
const REMOVE: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
";

/// KEYS: the five status sets. ARGV: now ms.
const COUNTS: &str = r"
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
";

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {err}"))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis holds a task this host cannot read: {what}"))
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a timestamp formats")
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`), under
    /// `prefix`. Does not wait for Redis: a host can start while Redis is
    /// down, and is ready once it answers.
    pub fn open(url: &str, prefix: &str, capacity: usize, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisStore {
            redis,
            prefix: prefix.to_string(),
            ttl,
            capacity,
            scripts: Scripts {
                insert: Script::new(INSERT),
                start: Script::new(START),
                take_over: Script::new(TAKE_OVER),
                finish: Script::new(FINISH),
                remove: Script::new(REMOVE),
                counts: Script::new(COUNTS),
            },
        })
    }

    fn key(&self, tenant: &str, id: TaskId) -> String {
        format!("{}:{tenant}:task:{id}", self.prefix)
    }

    fn set(&self, status: TaskStatus) -> String {
        format!("{}:tasks:{}", self.prefix, status.as_str())
    }

    fn sets(&self) -> Vec<String> {
        TaskStatus::ALL.iter().map(|s| self.set(*s)).collect()
    }

    fn member(tenant: &str, id: TaskId) -> String {
        format!("{tenant}/{id}")
    }

    /// Runs `script` (START or TAKE_OVER), which moves a task to running.
    async fn to_running(&self, script: &Script, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let moved: i64 = script
            .key(self.key(tenant, id))
            .key(self.set(TaskStatus::Pending))
            .key(self.set(TaskStatus::Running))
            .arg(rfc3339(OffsetDateTime::now_utc()))
            .arg(Self::member(tenant, id))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(moved == 1)
    }

    /// Rebuilds a task from its hash.
    fn decode(fields: std::collections::HashMap<String, String>) -> Result<Option<Task>, StoreError> {
        let Some(created) = fields.get("j") else { return Ok(None) };
        let mut task: Task = serde_json::from_str(created).map_err(corrupt)?;
        task.status = serde_json::from_value(serde_json::Value::String(fields.get("s").cloned().unwrap_or_default()))
            .map_err(corrupt)?;
        if let Some(updated) = fields.get("u") {
            let updated =
                OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339).map_err(corrupt)?;
            task.touch(updated);
        }
        if let Some(outcome) = fields.get("o") {
            match task.status {
                TaskStatus::Completed => {
                    task.result = Some(serde_json::from_str::<TaskResult>(outcome).map_err(corrupt)?)
                }
                TaskStatus::Failed => task.error = Some(serde_json::from_str::<JobFailure>(outcome).map_err(corrupt)?),
                _ => {}
            }
        }
        Ok(Some(task))
    }
}

#[async_trait]
impl TaskStore for RedisStore {
    async fn insert(&self, task: Task) -> Result<(), StoreError> {
        let id = task.task_id;
        let expires = millis(task.created_at) + self.ttl.as_millis() as i64;
        let now = millis(OffsetDateTime::now_utc());
        let json = serde_json::to_string(&task).expect("a task serialises");
        let mut invocation = self.scripts.insert.key(self.key(&task.tenant, id));
        for set in self.sets() {
            invocation.key(set);
        }
        let inserted: i64 = invocation
            .arg(json)
            .arg(now)
            .arg(expires)
            .arg(self.capacity)
            .arg(Self::member(&task.tenant, id))
            .arg((expires - now).max(1))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        match inserted {
            1 => Ok(()),
            0 => Err(StoreError::Duplicate(id)),
            _ => Err(StoreError::Full { capacity: self.capacity }),
        }
    }

    async fn get(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        let fields: std::collections::HashMap<String, String> =
            self.redis.clone().hgetall(self.key(tenant, id)).await.map_err(unavailable)?;
        Self::decode(fields)
    }

    async fn start(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        self.to_running(&self.scripts.start, tenant, id).await
    }

    async fn take_over(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        self.to_running(&self.scripts.take_over, tenant, id).await
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

    async fn finish(&self, tenant: &str, id: TaskId, outcome: TaskOutcome) -> Result<bool, StoreError> {
        let status = outcome.status();
        let stored = match &outcome {
            TaskOutcome::Completed(rankings) => {
                serde_json::to_string(&TaskResult { rankings: rankings.clone() }).expect("a result serialises")
            }
            TaskOutcome::Failed(error) => serde_json::to_string(error).expect("an error serialises"),
            TaskOutcome::Cancelled => String::new(),
        };
        let finished: i64 = self
            .scripts
            .finish
            .key(self.key(tenant, id))
            .key(self.set(TaskStatus::Pending))
            .key(self.set(TaskStatus::Running))
            .key(self.set(status))
            .arg(status.as_str())
            .arg(rfc3339(OffsetDateTime::now_utc()))
            .arg(stored)
            .arg(Self::member(tenant, id))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(finished == 1)
    }

    async fn remove(&self, tenant: &str, id: TaskId) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.remove.key(self.key(tenant, id));
        for set in self.sets() {
            invocation.key(set);
        }
        let removed: i64 = invocation
            .arg(Self::member(tenant, id))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.counts().await?.total() as usize)
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        let mut invocation = self.scripts.counts.prepare_invoke();
        for set in self.sets() {
            invocation.key(set);
        }
        let n: Vec<u64> = invocation
            .arg(millis(OffsetDateTime::now_utc()))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let [pending, running, completed, failed, cancelled] = n[..] else {
            return Err(corrupt("the counts script answered with the wrong shape"));
        };
        Ok(TaskCounts { pending, running, completed, failed, cancelled })
    }

    async fn check(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn capacity(&self) -> usize {
        self.capacity
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

    #[tokio::test(flavor = "multi_thread")]
    async fn passes_the_conformance_suite_against_a_real_redis() {
        conformance::run(|capacity, ttl| async move {
            let store = RedisStore::open(&test_redis(), &fresh_prefix(), capacity, ttl).unwrap();
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
        let store = RedisStore::open(&test_redis(), &prefix, 16, ttl).unwrap();
        let clock = Clock::new();
        let task = Task::pending(clock.new_task_id(), "acme".into(), "skills".into(), clock.now(), ttl);
        store.insert(task.clone()).await.unwrap();
        let key = format!("{prefix}:acme:task:{}", task.task_id);
        let mut redis = store.redis.clone();
        let before: i64 = redis.pttl(&key).await.unwrap();
        assert!(before > 55_000 && before <= 60_000, "{before} ms");
        store.start("acme", task.task_id).await.unwrap();
        store.finish("acme", task.task_id, TaskOutcome::Completed(vec![])).await.unwrap();
        let after: i64 = redis.pttl(&key).await.unwrap();
        assert!(after <= before && after > 50_000, "an update keeps the remaining TTL: {before} then {after} ms");
        let usage: i64 = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(usage < 1024, "a small task takes {usage} bytes");
        store.remove("acme", task.task_id).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_redis_is_unavailable_not_a_panic() {
        // Nothing listens on port 1.
        let store = RedisStore::open("redis://127.0.0.1:1", "matchbox", 16, Duration::from_secs(60)).unwrap();
        assert!(matches!(store.check().await, Err(StoreError::Unavailable(_))));
        let clock = Clock::new();
        let task = Task::pending(clock.new_task_id(), "acme".into(), "skills".into(), clock.now(), store.ttl());
        assert!(matches!(store.insert(task).await, Err(StoreError::Unavailable(_))));
        assert!(matches!(store.counts().await, Err(StoreError::Unavailable(_))));
    }
}
