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
//! An entry carries only its task's id; the job itself (the candidate and
//! the postings, tens of kilobytes) is a key of its own, `job:<id>`, written
//! next to the insert script in the same round trip and read with `MGET`
//! by the host that takes the entry. The job's bytes never pass through
//! Lua: Redis's Lua hashes every byte of every string it is handed, and for
//! a job of a hundred postings that hashing was a quarter of Redis's CPU
//! time per job. The scripts that end a job delete its key.
//!
//! Reading the streams, holding and taking over entries is the cluster
//! layer's; this module only changes keys.

use super::{RedisStore, StoreError, TaskId, TaskStatus, stored_outcome, unavailable};
use crate::runtime::JobFailure;
use crate::tasks::{IdempotencyKey, Inserted, Task, TaskEnd, TenantCaps};

/// Whether `consumer` holds `entry` (it is pending in `group`, delivered to
/// `consumer`).
pub(super) const OWNED_FN: &str = r"
local function owned(stream, group, entry, consumer)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
";

/// The insert, and if it happened the job's entry appended and `work`
/// announced; if it was refused, the job's key (written just before)
/// deleted. KEYS: task, five status sets, stream, job. ARGV: task JSON, ttl
/// ms, tasks cap, pending cap, id, channel, announcement, idempotency key's
/// key (or ''), its claim, '1' for a callback (or ''). A submission whose key made a task already (the
/// claim is answered) leaves no job either.
pub(super) const INSERT_ENQUEUE: &str = r"
local inserted = insert(ARGV[8], ARGV[9], ARGV[10])
if type(inserted) == 'string' or inserted < 0 then redis.call('DEL', KEYS[8]) end
if inserted ~= 1 then return inserted end
redis.call('XADD', KEYS[7], '*', 'task', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
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
    local h = redis.call('HMGET', task, 's', 'x')
    if h[1] == 'pending' then
      redis.call('HSET', task, 's', 'running', 'u', ARGV[4])
      move(task, KEYS[2], KEYS[3], id, h[2])
    end
  end
end
return entries
";

/// An outcome written by the entry's holder, the entry acknowledged and
/// deleted with its job, the end announced: 1 written (2 with its callback
/// queued), 0 the task was gone
/// or ended (the entry is done with all the same), -1 `consumer` does not
/// hold the entry. KEYS: task, pending, running, target, stream, job.
/// ARGV: status, updated at, outcome JSON, id, group, entry, consumer,
/// channel, announcement.
pub(super) const FINISH_ENTRY: &str = r"
if not owned(KEYS[5], ARGV[5], ARGV[6], ARGV[7]) then return -1 end
local written = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[5], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[5], ARGV[6])
redis.call('DEL', KEYS[6])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return written
";

/// Done with an entry whose job has no outcome to write, and with the job,
/// if `consumer` holds it. KEYS: stream, then the job if the entry named
/// one. ARGV: group, entry, consumer.
pub(super) const DROP_ENTRY: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if KEYS[2] then redis.call('DEL', KEYS[2]) end
return 1
";

/// Fails the task of an entry delivered at least `max` times, idle at least
/// `min idle` ms (no host holds it), with its entry and job done: 1 if so,
/// 0 if the entry is not (or no longer) such (2: failed, its callback
/// queued). KEYS: task, pending, running,
/// failed, stream, job. ARGV: updated at, failure JSON, id, group, entry,
/// min idle ms, max deliveries, channel, announcement.
pub(super) const FAIL_UNDELIVERED: &str = r"
local p = redis.call('XPENDING', KEYS[5], ARGV[4], 'IDLE', ARGV[6], ARGV[5], ARGV[5], 1)
if p[1] == nil or tonumber(p[1][4]) < tonumber(ARGV[7]) then return 0 end
local written = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], 'failed', ARGV[1], ARGV[2], ARGV[3])
redis.call('XACK', KEYS[5], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[5], ARGV[5])
redis.call('DEL', KEYS[6])
redis.call('PUBLISH', ARGV[8], ARGV[9])
if written == 2 then return 2 end
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

    /// The key of the job of `tenant`'s task `id`.
    pub fn job_key(&self, tenant: &str, id: TaskId) -> String {
        format!("{}:job:{id}", self.tag(tenant))
    }

    fn task_keys(&self, tenant: &str, id: TaskId) -> Vec<String> {
        let mut keys = vec![self.key(tenant, id)];
        keys.extend(self.sets(tenant));
        keys
    }

    /// Inserts `task` as [`super::TaskStore::insert`] does and, in the same
    /// round trip, keeps `job` for it and appends its entry to its tenant's
    /// stream and publishes `announcement` on `channel`.
    ///
    /// The job's key is written first, outside the script (its bytes must
    /// not pass through Lua), and the script deletes it if it refuses the
    /// insert. Should the connection break between the two, the key is left
    /// with the task's TTL and goes with it.
    pub async fn insert_and_enqueue(
        &self,
        task: Task,
        caps: TenantCaps,
        key: Option<&IdempotencyKey>,
        job: &str,
        channel: &str,
        announcement: &str,
    ) -> Result<Inserted, StoreError> {
        let id = task.task_id;
        let (idem, claim) = self.idem_args(&task.tenant, id, key);
        let ttl = self.ttl.as_millis().max(1) as u64;
        let job_key = self.job_key(&task.tenant, id);
        let mut invocation = self.scripts.insert_enqueue.prepare_invoke();
        for key in self.task_keys(&task.tenant, id) {
            invocation.key(key);
        }
        invocation
            .key(self.stream_key(&task.tenant))
            .key(&job_key)
            .arg(serde_json::to_string(&task).expect("a task serialises"))
            .arg(ttl)
            .arg(caps.tasks.min(i64::MAX as usize))
            .arg(caps.pending.min(i64::MAX as usize))
            .arg(id.to_string())
            .arg(channel)
            .arg(announcement)
            .arg(idem)
            .arg(claim)
            .arg(if task.callback.is_some() { "1" } else { "" });
        let mut redis = self.redis.clone();
        let pipelined: redis::RedisResult<((), redis::Value)> = redis::pipe()
            .cmd("SET")
            .arg(&job_key)
            .arg(job)
            .arg("PX")
            .arg(ttl)
            .invoke_script(&invocation)
            .query_async(&mut redis)
            .await;
        let inserted = match pipelined {
            Ok(((), inserted)) => inserted,
            // The script is not in this node's cache yet (a fresh Redis, a
            // promoted replica): the key is written; run the script alone,
            // which loads it.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                invocation.invoke_async(&mut redis).await.map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        self.inserted(&task.tenant, id, caps, key, inserted)
    }

    /// Inserts `tasks` (all of one tenant) as [`super::TaskStore::insert_batch`]
    /// does, all or none, and in the same script appends each one's entry
    /// (with its job, `jobs` in order) to the tenant's stream and publishes
    /// `announcement` on `channel`.
    pub async fn insert_batch_and_enqueue(
        &self,
        tasks: Vec<Task>,
        caps: TenantCaps,
        jobs: &[String],
        channel: &str,
        announcement: &str,
    ) -> Result<(), StoreError> {
        assert_eq!(tasks.len(), jobs.len(), "a job per task");
        self.insert_batch_with(tasks, caps, Some((jobs, channel, announcement))).await
    }

    /// The jobs of `tenant`'s tasks `ids`, in order; `None` where a task's
    /// job is gone (the task expired or was deleted).
    pub async fn jobs(&self, tenant: &str, ids: &[TaskId]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.job_key(tenant, *id)).collect();
        redis::cmd("MGET").arg(keys).query_async(&mut self.redis.clone()).await.map_err(unavailable)
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
        end: TaskEnd,
        entry: EntryRef<'_>,
        channel: &str,
        announcement: &str,
    ) -> Result<EntryFinish, StoreError> {
        let status = end.status();
        let finished: i64 = self
            .scripts
            .finish_entry
            .key(self.key(tenant, id))
            .key(self.status_key(tenant, TaskStatus::Pending))
            .key(self.status_key(tenant, TaskStatus::Running))
            .key(self.status_key(tenant, status))
            .key(self.stream_key(tenant))
            .key(self.job_key(tenant, id))
            .arg(status.as_str())
            .arg(super::rfc3339(time::OffsetDateTime::now_utc()))
            .arg(stored_outcome(&end))
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
            1 | 2 => {
                self.finished(finished);
                EntryFinish::Written
            }
            0 => EntryFinish::NoTask,
            _ => EntryFinish::Lost,
        })
    }

    /// Done with `tenant`'s entry `entry` whose job has no outcome to write
    /// (its task is gone), and with the job of task `id` if the entry named
    /// one, if `entry.consumer` holds it.
    pub async fn drop_entry(&self, tenant: &str, id: Option<TaskId>, entry: EntryRef<'_>) -> Result<(), StoreError> {
        let mut invocation = self.scripts.drop_entry.key(self.stream_key(tenant));
        if let Some(id) = id {
            invocation.key(self.job_key(tenant, id));
        }
        let _: i64 = invocation
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
            .key(self.job_key(tenant, id))
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
        Ok(self.finished(failed))
    }
}
