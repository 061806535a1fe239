//! More than one host: jobs shared over Redis Streams, matchers shared by
//! digest. Active when the task store is Redis (`--store redis://...` or
//! `redis+cluster://...`).
//!
//! ```text
//! {<prefix>:<tenant>}:jobs   one stream of jobs per tenant; consumer group "hosts", a consumer per host
//! <prefix>:events            channel: "work <tenant>", "ended <tenant> <id>", "deleted <tenant> <id>"
//! ```
//!
//! and the uploaded matchers' names and bytes (`components.rs`). A tenant's
//! stream lives in its hash slot, beside its tasks, so that the task and the
//! job's entry change in one script (`tasks::RedisStore`'s stream
//! primitives), and tenants spread over the shards of a Redis Cluster.
//!
//! What is guaranteed (`stream.rs` says how):
//!
//! - **At most one healthy host runs a job.** A host reads only what it can
//!   start soon, and holds a lease on every entry it read, queued or
//!   running: it renews them every second (`XCLAIM … JUSTID`, which resets
//!   the entry's idle time). Another host takes an entry over only once it
//!   has been idle for the lease (`--lease`), so only from a host that
//!   stopped renewing; a host that finds it lost an entry stops the job and
//!   can no longer write its outcome (the outcome is written only by the
//!   entry's holder, in the script that acknowledges it).
//! - **At least once, a bounded number of times.** An entry delivered
//!   `--max-deliveries` times without an outcome fails its task with
//!   `host_lost`.
//! - **Fair across hosts.** Every host reads the tenants' streams in turn,
//!   so a tenant that floods its stream holds up no other tenant's.
//! - **Quotas are the deployment's**: the task store counts them in Redis.
//!
//! This layer implements the traits the layers below define for it:
//! [`crate::registry::MatcherShare`] (the registry's record of uploads) and
//! [`crate::jobs::Claim`] (a job held by this host). It defines one of its
//! own, [`Intake`], through which the streams' jobs enter the host.

mod components;
mod loops;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use loops::{Intake, consume, hear_events, keep_tidy, renew_leases, sweep_followed};
pub use stream::{Delivery, StreamClaim};

use crate::jobs::JobTracker;
use crate::registry::MatcherRef;
use crate::runtime::JobInput;
use crate::tasks::{RedisConn, RedisStore, StoreError, TaskId};

const GROUP: &str = "hosts";
const SHARED: &str = "_shared";

/// A job as it travels between hosts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub tenant: String,
    pub task_id: TaskId,
    /// `name@sha256:<hex>`: the exact component the job was accepted for.
    pub matcher: MatcherRef,
    /// Whether that component is an upload, whose bytes the deployment
    /// keeps for the job.
    #[serde(default)]
    pub uploaded: bool,
    pub input: JobInput,
}

/// How the hosts of a deployment share jobs.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    /// How long a host may go without renewing its lease on a job before
    /// another host takes the job over.
    pub lease: Duration,
    /// Deliveries of a job without an outcome before its task fails
    /// `host_lost`.
    pub max_deliveries: u32,
}

/// This host's place in a deployment.
pub struct Cluster {
    redis: RedisConn,
    store: Arc<RedisStore>,
    tracker: Arc<JobTracker>,
    prefix: String,
    consumer: String,
    tenants: Vec<String>,
    config: ClusterConfig,
    /// The entries this host holds, by tenant: their leases are renewed.
    held: Mutex<HashMap<String, HashMap<String, stream::Held>>>,
    /// Where the next read starts in `tenants`: every host reads the
    /// tenants' streams in turn.
    cursor: Mutex<usize>,
    /// The streams whose consumer group this host has made sure of.
    joined: Mutex<std::collections::HashSet<String>>,
    /// Wakes the reading loop when a host announces work.
    work: tokio::sync::Notify,
    scripts: stream::Scripts,
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
    /// Joins the deployment `prefix` through `store`'s Redis, for `tenants`;
    /// jobs this host loses are stopped through `tracker`. Does not wait for
    /// Redis.
    pub fn open(
        store: Arc<RedisStore>,
        tracker: Arc<JobTracker>,
        prefix: &str,
        tenants: Vec<String>,
        config: ClusterConfig,
    ) -> Self {
        Cluster {
            redis: store.conn().clone(),
            store,
            tracker,
            prefix: prefix.to_string(),
            consumer: format!("host-{}", uuid::Uuid::now_v7().simple()),
            tenants,
            config,
            held: Mutex::default(),
            cursor: Mutex::new(0),
            joined: Mutex::default(),
            work: tokio::sync::Notify::new(),
            scripts: stream::Scripts::default(),
            components: components::Scripts::default(),
        }
    }

    /// The channel every host publishes its announcements on.
    fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// This host's name in the consumer groups.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Whether Redis answers.
    pub async fn check(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    /// Tells every host that `tenant`'s task `id` was deleted, so that the
    /// host running its job stops it at once.
    pub async fn announce_deleted(&self, tenant: &str, id: TaskId) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.events_channel())
            .arg(format!("deleted {tenant} {id}"))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
