//! A connection to the deployment's Redis: one server, or a Redis Cluster.
//!
//! Both kinds multiplex every command of the host over a few sockets and
//! reconnect by themselves; neither is opened before it is first used, so a
//! host starts while Redis is down and is ready once Redis answers. Blocking
//! commands are never sent on it (they would hold up every command queued
//! behind them); hosts wait for work on a subscription instead
//! ([`RedisConn::subscribe`]).
//!
//! With a Redis Cluster, every command (and every script) must touch keys
//! of one hash slot: the key layouts of this crate give all the keys of one
//! tenant (and of one component) one hash tag for that.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::super::{Backend, StoreError};

/// How long one Redis call may take before the store reports itself
/// unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cheap, cloneable handle on the deployment's Redis.
#[derive(Clone)]
pub struct RedisConn {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single { client: redis::Client, conn: ConnectionManager },
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, and made again after a failed
/// first attempt.
struct LazyCluster {
    nodes: Vec<String>,
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Single { .. } => f.write_str("RedisConn(single)"),
            Inner::Cluster(lazy) => write!(f, "RedisConn(cluster of {} nodes)", lazy.nodes.len()),
        }
    }
}

fn unavailable(what: &str, err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("{what}: {err}"))
}

impl RedisConn {
    /// A handle on the Redis `backend` names; `None` for the memory store.
    /// Does not connect.
    pub fn open(backend: &Backend) -> Result<Option<Self>, StoreError> {
        let inner = match backend {
            Backend::Memory => return Ok(None),
            Backend::Redis { url } => {
                let client = redis::Client::open(url.as_str()).map_err(|e| unavailable(url, e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| unavailable("Redis", e))?;
                Inner::Single { client, conn }
            }
            Backend::RedisCluster { nodes } => {
                let client = ClusterClient::builder(nodes.clone())
                    .connection_timeout(RESPONSE_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .build()
                    .map_err(|e| unavailable("Redis Cluster", e))?;
                Inner::Cluster(Arc::new(LazyCluster { nodes: nodes.clone(), client, conn: Default::default() }))
            }
        };
        Ok(Some(RedisConn { inner }))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// What errors name the store as.
    pub fn name(&self) -> &'static str {
        if self.is_cluster() { "Redis Cluster" } else { "Redis" }
    }

    /// The messages published on `channel`, until the subscription breaks
    /// (then the stream ends; subscribe again).
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, String>, StoreError> {
        match &self.inner {
            Inner::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await.map_err(|e| unavailable("Redis", e))?;
                pubsub.subscribe(channel).await.map_err(|e| unavailable("Redis", e))?;
                Ok(pubsub.into_on_message().filter_map(|m| async move { m.get_payload::<String>().ok() }).boxed())
            }
            Inner::Cluster(lazy) => {
                // A cluster delivers a published message to subscribers on
                // every node; its client hands them over as RESP3 pushes.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let client = ClusterClient::builder(lazy.nodes.clone())
                    .connection_timeout(RESPONSE_TIMEOUT)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(|e| unavailable("Redis Cluster", e))?;
                let mut conn = client.get_async_connection().await.map_err(|e| unavailable("Redis Cluster", e))?;
                conn.subscribe(channel).await.map_err(|e| unavailable("Redis Cluster", e))?;
                let messages = tokio_stream_of(rx).filter_map(move |push| {
                    // Keeps the connection (and its subscription) alive as
                    // long as the stream is read.
                    let _conn = &conn;
                    let payload = match push.kind {
                        redis::PushKind::Message => {
                            push.data.get(1).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        }
                        _ => None,
                    };
                    std::future::ready(payload)
                });
                Ok(messages.boxed())
            }
        }
    }
}

/// An unbounded receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single { conn, .. } => conn.req_packed_command(cmd),
            Inner::Cluster(lazy) => Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(lazy) => {
                Box::pin(async move { lazy.get().await?.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single { conn, .. } => conn.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}
