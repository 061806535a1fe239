//! Tasks and the stream entries of their jobs, changed together.
//!
//! Hosts that share a deployment hand jobs around on one stream per tenant,
//! `{<prefix>:<tenant>}:jobs`, in the tenant's hash slot, so that a task and
//! its job's entry change in one script: a task is inserted with its entry
//! appended, and an outcome is written only by the host that holds the
//! entry, with the entry acknowledged and deleted and the end announced, in
//! one round trip. A host that lost its hold on an entry (another host took
//! the job over) cannot write an outcome any more.
//!
//! Reading the streams, holding and taking over entries is the cluster
//! layer's; this module only changes keys.

use super::{RedisStore, StoreError, TaskId, TaskStatus, stored_outcome, unavailable};
use crate::runtime::JobFailure;
use crate::tasks::{Task, TaskOutcome, TenantCaps};

/// Whether `consumer` holds `entry` (it is pending in `group`, delivered to
/// `consumer`).
pub(super) const OWNED_FN: &str = r"
local function owned(stream, group, entry, consumer)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
";

/// The insert, and if it happened the job's entry appended and `work`
/// announced. KEYS: task, five status sets, stream. ARGV: task JSON, ttl
/// ms, tasks cap, pending cap, id, job JSON, channel, announcement.
pub(super) const INSERT_ENQUEUE: &str = r"
local inserted = insert()
if inserted ~= 1 then return inserted end
redis.call('XADD', KEYS[7], '*', 'task', ARGV[5], 'job', ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
";

/// Reads up to `count` new entries of a tenant's stream for `consumer`, and
/// marks the task of each running (it is about to start: a host reads only
/// what it can start soon). Returns the entries, `[[id, fields], …]`.
/// KEYS: stream, pending, running. ARGV: group, consumer, count, updated
/// at, the tenant's key tag.
pub(super) const READ_START: &str = r"
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not read then return {} end
local entries = read[1][2]
for _, e in ipairs(entries) do
  local fields, id = e[2], nil
  for i = 1, #fields, 2 do if fields[i] == 'task' then id = fields[i + 1] end end
  if id then
    -- The task's key is in the stream's hash slot (the same tag).
    local task = ARGV[5] .. ':task:' .. id
    if redis.call('HGET', task, 's') == 'pending' then
      redis.call('HSET', task, 's', 'running', 'u', ARGV[4])
      move(task, KEYS[2], KEYS[3], id)
    end
  end
end
return entries
";

/// An outcome written by the entry's holder, the entry acknowledged and
/// deleted, the end announced: 1 written, 0 the task was gone or ended (the
/// entry is done with all the same), -1 `consumer` does not hold the entry.
/// KEYS: task, pending, running, target, stream. ARGV: status, updated at,
/// outcome JSON, id, group, entry, consumer, channel, announcement.
pub(super) const FINISH_ENTRY: &str = r"
if not owned(KEYS[5], ARGV[5], ARGV[6], ARGV[7]) then return -1 end
local written = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[5], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[5], ARGV[6])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return written
";

/// Done with an entry whose job has no outcome to write, if `consumer`
/// holds it. KEYS: stream. ARGV: group, entry, consumer.
pub(super) const DROP_ENTRY: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// Fails the task of an entry delivered at least `max` times, idle at least
/// `min idle` ms (no host holds it), with its entry done: 1 if so, 0 if the
/// entry is not (or no longer) such. KEYS: task, pending, running, failed,
/// stream. ARGV: updated at, failure JSON, id, group, entry, min idle ms,
/// max deliveries, channel, announcement.
pub(super) const FAIL_UNDELIVERED: &str = r"
local p = redis.call('XPENDING', KEYS[5], ARGV[4], 'IDLE', ARGV[6], ARGV[5], ARGV[5], 1)
if p[1] == nil or tonumber(p[1][4]) < tonumber(ARGV[7]) then return 0 end
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], 'failed', ARGV[1], ARGV[2], ARGV[3])
redis.call('XACK', KEYS[5], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[5], ARGV[5])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
";

/// A stream entry held by a consumer of a group.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub group: &'a str,
    pub consumer: &'a str,
    pub id: &'a str,
}

/// What writing an entry's outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFinish {
    /// The outcome is written and the entry done.
    Written,
    /// The task was gone or had ended; the entry is done all the same.
    NoTask,
    /// This consumer no longer holds the entry: nothing was written.
    Lost,
}

impl RedisStore {
    /// The key of `tenant`'s stream of jobs.
    pub fn stream_key(&self, tenant: &str) -> String {
        format!("{}:jobs", self.tag(tenant))
    }

    fn task_keys(&self, tenant: &str, id: TaskId) -> Vec<String> {
        let mut keys = vec![self.key(tenant, id)];
        keys.extend(self.sets(tenant));
        keys
    }

    /// Inserts `task` as [`super::TaskStore::insert`] does and, in the same
    /// script, appends `job` to its tenant's stream and publishes
    /// `announcement` on `channel`.
    pub async fn insert_and_enqueue(
        &self,
        task: Task,
        caps: TenantCaps,
        job: &str,
        channel: &str,
        announcement: &str,
    ) -> Result<(), StoreError> {
        let id = task.task_id;
        let mut invocation = self.scripts.insert_enqueue.prepare_invoke();
        for key in self.task_keys(&task.tenant, id) {
            invocation.key(key);
        }
        let inserted: i64 = invocation
            .key(self.stream_key(&task.tenant))
            .arg(serde_json::to_string(&task).expect("a task serialises"))
            .arg(self.ttl.as_millis().max(1) as u64)
            .arg(caps.tasks.min(i64::MAX as usize))
            .arg(caps.pending.min(i64::MAX as usize))
            .arg(id.to_string())
            .arg(job)
            .arg(channel)
            .arg(announcement)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.inserted(&task.tenant, id, caps, inserted)
    }

    /// Reads up to `count` new entries of `tenant`'s stream for `consumer` of
    /// `group`, marking their tasks running, in one script. The reply is
    /// the entries as `XRANGE` gives them.
    pub async fn read_and_start(
        &self,
        tenant: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<redis::Value, redis::RedisError> {
        self.scripts
            .read_start
            .key(self.stream_key(tenant))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .arg(group)
            .arg(consumer)
            .arg(count)
            .arg(super::rfc3339(time::OffsetDateTime::now_utc()))
            .arg(self.tag(tenant))
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// Writes the outcome of `tenant`'s job `id`, whose entry `entry` holds,
    /// acknowledges and deletes the entry and publishes `announcement` on
    /// `channel`, in one script, if `entry.consumer` still holds it.
    pub async fn finish_entry(
        &self,
        tenant: &str,
        id: TaskId,
        outcome: TaskOutcome,
        entry: EntryRef<'_>,
        channel: &str,
        announcement: &str,
    ) -> Result<EntryFinish, StoreError> {
        let status = outcome.status();
        let finished: i64 = self
            .scripts
            .finish_entry
            .key(self.key(tenant, id))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .key(self.status_key(tenant, status))
            .key(self.stream_key(tenant))
            .arg(status.as_str())
            .arg(super::rfc3339(time::OffsetDateTime::now_utc()))
            .arg(stored_outcome(&outcome))
            .arg(id.to_string())
            .arg(entry.group)
            .arg(entry.id)
            .arg(entry.consumer)
            .arg(channel)
            .arg(announcement)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(match finished {
            1 => EntryFinish::Written,
            0 => EntryFinish::NoTask,
            _ => EntryFinish::Lost,
        })
    }

    /// Done with `tenant`'s entry `entry` whose job has no outcome to write
    /// (its task is gone), if `entry.consumer` holds it.
    pub async fn drop_entry(&self, tenant: &str, entry: EntryRef<'_>) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .drop_entry
            .key(self.stream_key(tenant))
            .arg(entry.group)
            .arg(entry.id)
            .arg(entry.consumer)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Fails `tenant`'s task `id` with `failure` if its entry `entry_id`
    /// has been delivered `max_deliveries` times and no host has held it for
    /// `min_idle`; the entry is done then, and the end published.
    #[allow(clippy::too_many_arguments)]
    pub async fn fail_undelivered(
        &self,
        tenant: &str,
        id: TaskId,
        entry_id: &str,
        group: &str,
        min_idle: std::time::Duration,
        max_deliveries: u32,
        failure: &JobFailure,
        channel: &str,
        announcement: &str,
    ) -> Result<bool, StoreError> {
        let failed: i64 = self
            .scripts
            .fail_undelivered
            .key(self.key(tenant, id))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .key(self.status_key(tenant, TaskStatus::Failed))
            .key(self.stream_key(tenant))
            .arg(super::rfc3339(time::OffsetDateTime::now_utc()))
            .arg(serde_json::to_string(failure).expect("a failure serialises"))
            .arg(id.to_string())
            .arg(group)
            .arg(entry_id)
            .arg(min_idle.as_millis() as u64)
            .arg(max_deliveries)
            .arg(channel)
            .arg(announcement)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(failed == 1)
    }
}
