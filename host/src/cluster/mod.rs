//! More than one host: jobs shared over a Redis Stream, matchers shared by
//! digest. Active when the task store is Redis (`--store redis://...`).
//!
//! ```text
//! <prefix>:jobs                    stream of jobs; consumer group "hosts", one consumer per host
//! <prefix>:ended                   channel: the id of each task whose outcome was just written
//! ```
//!
//! and the uploaded matchers' names and bytes (`components.rs`).
//!
//! A host that accepts a job writes its task (pending) and then adds the job
//! to the stream, both before answering 202. Every host reads the stream
//! through the group, as far as its own queue has room, and runs what it
//! reads in its fair queue like any local job; when the outcome is written
//! it acknowledges and deletes the entry. An entry a host read and never
//! acknowledged (the host died, or was stopped mid-job) stays pending in
//! the group; once it has been idle longer than the longest job deadline
//! plus a grace period, another host claims it (`XAUTOCLAIM`) and runs the
//! job again from the start.
//!
//! A job names its matcher pinned to the digest the accepting host
//! resolved, so every host runs the same code; a host that lacks it fetches
//! the bytes by digest, compiles them once and keeps them in its own
//! precompiled cache.
//!
//! This layer implements the traits the layers below define for it:
//! [`MatcherShare`] (the registry's record of uploads) and [`Claim`] (a job
//! taken from the stream, settled once its outcome is written). It defines
//! one of its own, [`Intake`], through which the stream's jobs enter the
//! host (`loops.rs`).

mod components;
mod loops;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};

pub use loops::{Intake, collect_components, consume, follow_ended, sweep_followed};

use crate::jobs::Claim;
use crate::registry::MatcherRef;
use crate::runtime::JobInput;
use crate::tasks::{StoreError, TaskId};

const GROUP: &str = "hosts";
const SHARED: &str = "_shared";

/// A job as it travels between hosts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub tenant: String,
    pub task_id: TaskId,
    /// `name@sha256:<hex>`: the exact component the job was accepted for.
    pub matcher: MatcherRef,
    pub input: JobInput,
}

/// A job read from the stream.
pub struct Delivery {
    /// The job, or why the entry could not be read.
    pub envelope: Result<Envelope, String>,
    /// This host's claim on the entry: settled once the job's outcome is
    /// written, or dropped to leave the job to another host.
    pub claim: StreamClaim,
}

/// A stream entry this host read and has not acknowledged.
pub struct StreamClaim {
    cluster: Arc<Cluster>,
    entry: String,
    reclaimed: bool,
    /// The job's tenant and the component it was accepted for, to let go of
    /// once it has ended.
    needs: Option<(String, TaskId, String)>,
}

impl StreamClaim {
    /// The stream entry's id.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Acknowledges an entry that carries no job this host can read.
    pub async fn discard(self) -> Result<(), StoreError> {
        self.cluster.ack(&self.entry).await
    }
}

#[async_trait]
impl Claim for StreamClaim {
    fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    async fn settle(self: Box<Self>, id: TaskId) -> Result<(), StoreError> {
        self.cluster.finished(&self.entry, id).await?;
        if let Some((tenant, id, digest)) = &self.needs {
            self.cluster.release_component(digest, tenant, *id).await?;
        }
        Ok(())
    }
}

pub struct Cluster {
    client: redis::Client,
    /// For short commands.
    redis: ConnectionManager,
    /// For the blocking stream reads alone: a blocked read would hold up
    /// every command queued behind it on a shared connection.
    reader: ConnectionManager,
    prefix: String,
    consumer: String,
    claim_after: Duration,
    components: components::Scripts,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("prefix", &self.prefix).field("consumer", &self.consumer).finish()
    }
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {err}"))
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

impl Cluster {
    /// Joins the deployment `prefix` on the Redis at `url`. `claim_after`:
    /// how long a job read by a host may go unacknowledged before another
    /// host takes it over. Does not wait for Redis.
    pub fn open(url: &str, prefix: &str, claim_after: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let config = |timeout: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1))
        };
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config(Duration::from_secs(2)))
            .map_err(unavailable)?;
        let reader = ConnectionManager::new_lazy_with_config(client.clone(), config(Duration::from_secs(5)))
            .map_err(unavailable)?;
        Ok(Cluster {
            client,
            redis,
            reader,
            prefix: prefix.to_string(),
            consumer: format!("host-{}", uuid::Uuid::now_v7().simple()),
            claim_after,
            components: components::Scripts::default(),
        })
    }

    fn stream(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    fn ended_channel(&self) -> String {
        format!("{}:ended", self.prefix)
    }

    /// Calls `ended` with each task id announced by any host, until it
    /// returns false or the subscription breaks (then returns, to be called
    /// again).
    pub async fn on_ended(&self, mut ended: impl FnMut(TaskId) -> bool) -> Result<(), StoreError> {
        use futures_util::StreamExt as _;
        let mut pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub.subscribe(self.ended_channel()).await.map_err(unavailable)?;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Some(id) = message.get_payload::<String>().ok().and_then(|s| s.parse().ok())
                && !ended(id)
            {
                break;
            }
        }
        Ok(())
    }

    /// This host's name in the consumer group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Whether both connections answer.
    pub async fn check(&self) -> Result<(), StoreError> {
        for connection in [&self.redis, &self.reader] {
            let _: String = redis::cmd("PING").query_async(&mut connection.clone()).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Creates the stream and the group if they do not exist yet.
    pub async fn join(&self) -> Result<(), StoreError> {
        let created: redis::RedisResult<()> =
            self.redis.clone().xgroup_create_mkstream(self.stream(), GROUP, "0").await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Adds a job to the stream, for any host to run. `uploaded`: the job's
    /// matcher is an upload, whose bytes are then kept for the job until it
    /// ends or its task expires after `ttl`.
    pub async fn publish(&self, envelope: &Envelope, uploaded: bool, ttl: Duration) -> Result<(), StoreError> {
        if uploaded && let Some(digest) = envelope.matcher.digest() {
            self.need_component(digest, &envelope.tenant, envelope.task_id, ttl).await?;
        }
        let json = serde_json::to_string(envelope).expect("a job serialises");
        let _: String = self.redis.clone().xadd(self.stream(), "*", &[("job", json)]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Up to `count` new jobs for this host, waiting up to `block` for one.
    pub async fn read(self: &Arc<Self>, count: usize, block: Duration) -> Result<Vec<Delivery>, StoreError> {
        let options =
            StreamReadOptions::default().group(GROUP, &self.consumer).count(count).block(block.as_millis() as usize);
        let reply: Option<StreamReadReply> =
            self.reader.clone().xread_options(&[self.stream()], &[">"], &options).await.map_err(unavailable)?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| self.delivery(entry, false))
            .collect())
    }

    /// Up to `count` jobs that other hosts read and left unacknowledged for
    /// longer than the claim period: their hosts are gone.
    pub async fn reclaim(self: &Arc<Self>, count: usize) -> Result<Vec<Delivery>, StoreError> {
        let reply: StreamAutoClaimReply = self
            .redis
            .clone()
            .xautoclaim_options(
                self.stream(),
                GROUP,
                &self.consumer,
                self.claim_after.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(count),
            )
            .await
            .map_err(unavailable)?;
        Ok(reply.claimed.into_iter().map(|entry| self.delivery(entry, true)).collect())
    }

    fn delivery(self: &Arc<Self>, entry: StreamId, reclaimed: bool) -> Delivery {
        let envelope: Result<Envelope, String> = entry
            .get::<String>("job")
            .ok_or_else(|| "the entry has no job".to_string())
            .and_then(|json| serde_json::from_str(&json).map_err(|e| e.to_string()));
        let needs = envelope
            .as_ref()
            .ok()
            .and_then(|e| e.matcher.digest().map(|digest| (e.tenant.clone(), e.task_id, digest.to_string())));
        Delivery { envelope, claim: StreamClaim { cluster: self.clone(), entry: entry.id, reclaimed, needs } }
    }

    /// Done with an entry: the job's outcome is written (or it had none to
    /// write). Removes it from the group's pending list and the stream.
    pub async fn ack(&self, entry: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let _: i64 = redis.xack(self.stream(), GROUP, &[entry]).await.map_err(unavailable)?;
        let _: i64 = redis.xdel(self.stream(), &[entry]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Done with the entry of a job whose outcome is written: acknowledges
    /// and deletes it, and announces the task's end, in one round trip.
    pub async fn finished(&self, entry: &str, id: TaskId) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .xack(self.stream(), GROUP, &[entry])
            .ignore()
            .xdel(self.stream(), &[entry])
            .ignore()
            .publish(self.ended_channel(), id.to_string())
            .ignore()
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Added to the longest job deadline to give the time after which an
/// unacknowledged shared job is taken over by another host.
pub const CLAIM_GRACE: Duration = Duration::from_secs(2);
