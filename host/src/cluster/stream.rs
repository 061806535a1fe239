//! The jobs' streams: adding a job, reading the tenants' streams in turn,
//! holding what was read (leases), taking over what a host stopped holding,
//! and ending a job that no host could finish.
//!
//! An entry's idle time is the lease: the host that read it resets it every
//! second while it holds the entry ([`Cluster::renew`]), whether the job is
//! queued or running; an entry idle for `--lease` belongs to a host that
//! stopped renewing, and another host claims it ([`Cluster::reclaim`]).
//! Every delivery (the first read and each take-over) counts; at
//! `--max-deliveries` the task fails `host_lost` instead of being delivered
//! again, so a job that kills its hosts is not retried for ever.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use redis::{FromRedisValue, Script, Value};

use super::{Cluster, Envelope, GROUP, unavailable};
use crate::jobs::Claim;
use crate::runtime::{FailureKind, JobFailure};
use crate::tasks::{
    EntryFinish, EntryRef, IdempotencyKey, Inserted, StoreError, Task, TaskEnd, TaskId, TaskStatus, TenantCaps,
};

/// Renews this consumer's leases on entries of one stream: each entry it
/// still holds gets its idle time reset; returns the entries it no longer
/// holds and those whose task is gone. KEYS: stream, then the task key of
/// each entry. ARGV: group, consumer, then the entry ids.
const RENEW: &str = r"
local lost, gone = {}, {}
for i = 3, #ARGV do
  local entry = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if p[1] == nil or p[1][2] ~= ARGV[2] then
    table.insert(lost, entry)
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    if redis.call('EXISTS', KEYS[i - 1]) == 0 then table.insert(gone, entry) end
  end
end
return {lost, gone}
";

/// Claims, for this consumer, the entries of one stream idle for at least
/// the lease, and marks their tasks running (pending or running before: the
/// host that held them stopped renewing); those already delivered `max`
/// times are returned apart, unclaimed, to be failed. KEYS: stream,
/// pending, running. ARGV: group, consumer, lease ms, count, max
/// deliveries, updated at, the tenant's key tag.
const RECLAIM: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local claimed, spent = {}, {}
for _, p in ipairs(pending) do
  if tonumber(p[4]) >= tonumber(ARGV[5]) then
    local e = redis.call('XRANGE', KEYS[1], p[1], p[1])
    if e[1] == nil then
      -- Deleted from the stream, still pending: nothing to run or fail.
      redis.call('XACK', KEYS[1], ARGV[1], p[1])
    else
      table.insert(spent, e[1])
    end
  else
    for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])) do
      table.insert(claimed, e)
      local fields, id = e[2], nil
      for i = 1, #fields, 2 do if fields[i] == 'task' then id = fields[i + 1] end end
      if id then
        local task = ARGV[7] .. ':task:' .. id
        local s = redis.call('HGET', task, 's')
        if s == 'pending' or s == 'running' then
          redis.call('HSET', task, 's', 'running', 'u', ARGV[6])
          if s == 'pending' then move(task, KEYS[2], KEYS[3], id) end
        end
      end
    end
  end
end
return {claimed, spent}
";

pub(super) struct Scripts {
    renew: Script,
    reclaim: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts { renew: Script::new(RENEW), reclaim: Script::new(&format!("{}{RECLAIM}", crate::tasks::move_lua())) }
    }
}

/// An entry this host holds.
pub(super) struct Held {
    task: TaskId,
    hold: Arc<Hold>,
}

/// What the renewal and the holder of an entry tell each other.
#[derive(Default)]
struct Hold {
    /// Set by the renewal when another host holds the entry now.
    lost: AtomicBool,
    /// Set by the holder as it starts ending the entry: the renewal leaves
    /// it alone from then on (the entry is about to go, and its going is
    /// not a lost lease).
    ending: AtomicBool,
}

/// A job read from a stream.
pub struct Delivery {
    /// The job, or why the entry could not be read.
    pub envelope: Result<Envelope, String>,
    /// This host's hold on the entry: it ends the job across the
    /// deployment, or, dropped, leaves it to another host.
    pub claim: StreamClaim,
}

/// An entry this host holds (its lease renewed while this lives).
pub struct StreamClaim {
    cluster: Arc<Cluster>,
    tenant: String,
    entry: String,
    /// The task the entry names, if it names one.
    task: Option<TaskId>,
    reclaimed: bool,
    hold: Arc<Hold>,
    /// The job's task and the uploaded component it was accepted for, to
    /// let go of once it has ended.
    needs: Option<(TaskId, String)>,
}

impl StreamClaim {
    /// The stream entry's id.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    fn entry_ref(&self) -> EntryRef<'_> {
        EntryRef { group: GROUP, consumer: &self.cluster.consumer, id: &self.entry }
    }

    /// Done with an entry that carries no job this host can read.
    pub async fn discard(self) -> Result<(), StoreError> {
        self.hold.ending.store(true, Ordering::Release);
        self.cluster.store.drop_entry(&self.tenant, self.task, self.entry_ref()).await
    }

    async fn release_component(&self) -> Result<(), StoreError> {
        if let Some((id, digest)) = &self.needs {
            self.cluster.release_component(digest, &self.tenant, *id).await?;
        }
        Ok(())
    }
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        let mut held = self.cluster.held.lock().unwrap();
        if let Some(entries) = held.get_mut(&self.tenant) {
            entries.remove(&self.entry);
            if entries.is_empty() {
                held.remove(&self.tenant);
            }
        }
    }
}

#[async_trait]
impl Claim for StreamClaim {
    fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    fn lost(&self) -> bool {
        self.hold.lost.load(Ordering::Acquire)
    }

    async fn finish(self: Box<Self>, id: TaskId, end: TaskEnd) -> Result<bool, StoreError> {
        self.hold.ending.store(true, Ordering::Release);
        let announcement = format!("ended {} {id}", self.tenant);
        let done = self
            .cluster
            .store
            .finish_entry(&self.tenant, id, end, self.entry_ref(), &self.cluster.events_channel(), &announcement)
            .await?;
        if done == EntryFinish::Lost {
            tracing::info!(task_id = %id, "another host holds the job now; its outcome here is dropped");
            return Ok(false);
        }
        self.release_component().await?;
        Ok(done == EntryFinish::Written)
    }

    async fn drop_done(self: Box<Self>) -> Result<(), StoreError> {
        self.hold.ending.store(true, Ordering::Release);
        self.cluster.store.drop_entry(&self.tenant, self.task, self.entry_ref()).await?;
        self.release_component().await
    }
}

/// An entry read from a stream.
struct Entry {
    id: String,
    /// The task it names.
    task: Option<TaskId>,
    /// Its job: read from the job's key, or carried in the entry itself
    /// by hosts of versions that put it there.
    job: Option<String>,
}

/// The entries of an `XRANGE`-shaped reply: `[[id, [field, value, …]], …]`.
fn entries(value: &Value) -> Vec<Entry> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else { return None };
            let id = String::from_redis_value(pair.first()?.clone()).ok()?;
            let fields: Vec<String> = pair.get(1).and_then(|f| Vec::<String>::from_redis_value(f.clone()).ok())?;
            let field = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).and_then(|kv| kv.get(1).cloned());
            Some(Entry { id, task: field("task").and_then(|t| t.parse().ok()), job: field("job") })
        })
        .collect()
}

impl Cluster {
    /// Inserts `task` and adds its job to its tenant's stream, in one script
    /// (none of it if the tenant is at a cap). A job for an uploaded matcher
    /// keeps its component's bytes until it ends or its task expires.
    pub async fn publish(
        &self,
        task: Task,
        caps: TenantCaps,
        key: Option<&IdempotencyKey>,
        envelope: &Envelope,
    ) -> Result<Inserted, StoreError> {
        let ttl = crate::tasks::TaskStore::ttl(&*self.store);
        if envelope.uploaded
            && let Some(digest) = envelope.matcher.digest()
        {
            self.need_component(digest, &envelope.tenant, envelope.task_id, ttl).await?;
        }
        let job = serde_json::to_string(envelope).expect("a job serialises");
        let announcement = format!("work {}", envelope.tenant);
        self.store.insert_and_enqueue(task, caps, key, &job, &self.events_channel(), &announcement).await
    }

    /// Puts a batch of one tenant's tasks and their jobs in Redis, all or
    /// none, in one script: [`Cluster::publish`] for many.
    pub async fn publish_batch(
        &self,
        tasks: Vec<Task>,
        caps: TenantCaps,
        envelopes: &[Envelope],
    ) -> Result<(), StoreError> {
        let Some(first) = envelopes.first() else { return Ok(()) };
        let ttl = crate::tasks::TaskStore::ttl(&*self.store);
        for envelope in envelopes {
            if envelope.uploaded
                && let Some(digest) = envelope.matcher.digest()
            {
                self.need_component(digest, &envelope.tenant, envelope.task_id, ttl).await?;
            }
        }
        let jobs: Vec<String> = envelopes.iter().map(|e| serde_json::to_string(e).expect("a job serialises")).collect();
        let announcement = format!("work {}", first.tenant);
        self.store.insert_batch_and_enqueue(tasks, caps, &jobs, &self.events_channel(), &announcement).await
    }

    /// Makes sure `tenant`'s stream and its consumer group exist.
    async fn join(&self, tenant: &str) -> Result<(), StoreError> {
        if self.joined.lock().unwrap().contains(tenant) {
            return Ok(());
        }
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.store.stream_key(tenant))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(unavailable(e)),
            _ => {}
        }
        self.joined.lock().unwrap().insert(tenant.to_string());
        Ok(())
    }

    /// `entries` of `tenant`'s stream with their jobs, read in one `MGET`
    /// (a job is missing where its task has gone meanwhile).
    async fn with_jobs(&self, tenant: &str, mut entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        let wanted: Vec<(usize, TaskId)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.job.is_none())
            .filter_map(|(i, e)| Some((i, e.task?)))
            .collect();
        let ids: Vec<TaskId> = wanted.iter().map(|(_, id)| *id).collect();
        for ((i, _), job) in wanted.into_iter().zip(self.store.jobs(tenant, &ids).await?) {
            entries[i].job = job;
        }
        Ok(entries)
    }

    /// Takes hold of an entry just read or claimed.
    fn hold(self: &Arc<Self>, tenant: &str, entry: Entry, reclaimed: bool) -> Delivery {
        let Entry { id, task, job } = entry;
        let envelope: Result<Envelope, String> = job
            .ok_or_else(|| "the job is gone (its task expired or was deleted)".to_string())
            .and_then(|json| serde_json::from_str(&json).map_err(|e| e.to_string()))
            .and_then(|e: Envelope| {
                if e.tenant == tenant {
                    Ok(e)
                } else {
                    Err(format!("a job of '{}' in the stream of '{tenant}'", e.tenant))
                }
            });
        let hold = Arc::new(Hold::default());
        let task = task.or(envelope.as_ref().ok().map(|e| e.task_id));
        self.held
            .lock()
            .unwrap()
            .entry(tenant.to_string())
            .or_default()
            .insert(id.clone(), Held { task: task.unwrap_or_default(), hold: hold.clone() });
        let needs = envelope
            .as_ref()
            .ok()
            .filter(|e| e.uploaded)
            .and_then(|e| e.matcher.digest().map(|d| (e.task_id, d.to_string())));
        Delivery {
            envelope,
            claim: StreamClaim {
                cluster: self.clone(),
                tenant: tenant.to_string(),
                entry: id,
                task,
                reclaimed,
                hold,
                needs,
            },
        }
    }

    /// Up to `want` new jobs, read from the next tenants' streams in turn:
    /// from `want` tenants one each, or, with fewer tenants than that, a
    /// share of `want` from each. Never blocks.
    pub async fn read(self: &Arc<Self>, want: usize) -> Result<(Vec<Delivery>, usize), StoreError> {
        let n = self.tenants.len();
        if n == 0 || want == 0 {
            return Ok((Vec::new(), 0));
        }
        let streams = want.min(n);
        let count = want.div_ceil(streams);
        let chosen: Vec<String> = {
            let mut cursor = self.cursor.lock().unwrap();
            let chosen = (0..streams).map(|i| self.tenants[(*cursor + i) % n].clone()).collect();
            *cursor = (*cursor + streams) % n;
            chosen
        };
        let reads = chosen.iter().map(|tenant| async move {
            self.join(tenant).await?;
            let reply = self.store.read_and_start(tenant, GROUP, &self.consumer, count).await.map_err(|e| {
                if e.code() == Some("NOGROUP") {
                    // Redis lost the group (restarted without persistence):
                    // make it again next time.
                    self.joined.lock().unwrap().remove(tenant);
                }
                unavailable(e)
            })?;
            Ok::<_, StoreError>((tenant, reply))
        });
        let mut deliveries = Vec::new();
        for read in futures_util::future::join_all(reads).await {
            let (tenant, reply) = read?;
            for entry in self.with_jobs(tenant, entries(&reply)).await? {
                deliveries.push(self.hold(tenant, entry, false));
            }
        }
        Ok((deliveries, streams))
    }

    /// Takes over, up to `want` in all, the jobs of hosts that stopped
    /// renewing their leases, and fails the tasks of jobs delivered
    /// `--max-deliveries` times (returned as how many).
    pub async fn reclaim(self: &Arc<Self>, want: usize) -> Result<(Vec<Delivery>, usize), StoreError> {
        let lease = self.config.lease.as_millis() as u64;
        let mut deliveries = Vec::new();
        let mut failed = 0;
        for tenant in &self.tenants {
            if deliveries.len() >= want {
                break;
            }
            self.join(tenant).await?;
            let reply: Value = self
                .scripts
                .reclaim
                .key(self.store.stream_key(tenant))
                .key(self.store.status_key(tenant, TaskStatus::Pending))
                .key(self.store.status_key(tenant, TaskStatus::Running))
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(lease)
                .arg(want - deliveries.len())
                .arg(self.config.max_deliveries)
                .arg(time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap())
                .arg(self.store.tag(tenant))
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            let Value::Array(parts) = reply else { continue };
            if let Some(claimed) = parts.first() {
                for entry in self.with_jobs(tenant, entries(claimed)).await? {
                    deliveries.push(self.hold(tenant, entry, true));
                }
            }
            if let Some(spent) = parts.get(1) {
                for entry in self.with_jobs(tenant, entries(spent)).await? {
                    failed += self.fail_spent(tenant, entry).await? as usize;
                }
            }
        }
        Ok((deliveries, failed))
    }

    /// Fails the task of an entry delivered `--max-deliveries` times.
    async fn fail_spent(&self, tenant: &str, entry: Entry) -> Result<bool, StoreError> {
        let envelope = entry.job.and_then(|json| serde_json::from_str::<Envelope>(&json).ok());
        let Some(id) = entry.task.or(envelope.as_ref().map(|e| e.task_id)) else {
            return Ok(false);
        };
        let max = self.config.max_deliveries;
        let failure = JobFailure::new(
            FailureKind::HostLost,
            format!(
                "the job was given to hosts {max} times and none of them finished it (each stopped renewing its \
                 lease: it died or lost Redis); it is not given out again (--max-deliveries)"
            ),
        );
        let announcement = format!("ended {tenant} {id}");
        let failed = self
            .store
            .fail_undelivered(
                tenant,
                id,
                &entry.id,
                GROUP,
                self.config.lease,
                max,
                &failure,
                &self.events_channel(),
                &announcement,
            )
            .await?;
        if failed {
            tracing::warn!(task_id = %id, tenant, deliveries = max, "a job no host could finish failed host_lost");
            if let Some(envelope) = envelope.filter(|e| e.uploaded)
                && let Some(digest) = envelope.matcher.digest()
            {
                self.release_component(digest, tenant, id).await?;
            }
        }
        Ok(failed)
    }

    /// Renews this host's leases on every entry it holds. The jobs of
    /// entries another host holds now are stopped without an outcome; the
    /// jobs of tasks that are gone (expired, deleted) are stopped. Returns
    /// how many were stopped for a gone task.
    pub async fn renew(&self) -> Result<usize, StoreError> {
        let held: Vec<(String, Vec<(String, TaskId)>)> = {
            let held = self.held.lock().unwrap();
            held.iter()
                .map(|(tenant, entries)| {
                    let renewed = entries
                        .iter()
                        .filter(|(_, h)| !h.hold.ending.load(Ordering::Acquire))
                        .map(|(e, h)| (e.clone(), h.task))
                        .collect();
                    (tenant.clone(), renewed)
                })
                .filter(|(_, entries): &(String, Vec<_>)| !entries.is_empty())
                .collect()
        };
        let mut stopped = 0;
        for (tenant, entries) in held {
            let mut invocation = self.scripts.renew.key(self.store.stream_key(&tenant));
            for (_, task) in &entries {
                invocation.key(self.store.key(&tenant, *task));
            }
            invocation.arg(GROUP).arg(&self.consumer);
            for (entry, _) in &entries {
                invocation.arg(entry);
            }
            let (lost, gone): (Vec<String>, Vec<String>) =
                invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
            let tasks: HashMap<&str, TaskId> = entries.iter().map(|(e, t)| (e.as_str(), *t)).collect();
            for entry in &lost {
                // Only an entry still held and not being ended here was
                // lost: one ended since the snapshot above just went.
                let still_held = match self.held.lock().unwrap().get(&tenant).and_then(|h| h.get(entry)) {
                    Some(held) if !held.hold.ending.load(Ordering::Acquire) => {
                        held.hold.lost.store(true, Ordering::Release);
                        true
                    }
                    _ => false,
                };
                if still_held && let Some(task) = tasks.get(entry.as_str()) {
                    tracing::warn!(task_id = %task, "this host lost its lease on a job; stopping it here");
                    self.tracker.cancel(*task);
                }
            }
            for entry in &gone {
                if let Some(task) = tasks.get(entry.as_str())
                    && self.tracker.cancel(*task)
                {
                    tracing::info!(task_id = %task, "the task is gone from the store while its job was in flight; cancelled it");
                    stopped += 1;
                }
            }
        }
        Ok(stopped)
    }
}
