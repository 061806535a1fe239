//! Uploaded matchers shared by the hosts of a deployment, and the bytes
//! kept for them, which never outlive what needs them.
//!
//! ```text
//! {<prefix>:<owner>}:matchers        hash name -> digest; owner is a tenant, or "_shared"
//! {<prefix>:c:<hex>}:bytes           a component's bytes, stored once per digest
//! {<prefix>:c:<hex>}:names           set of "<owner>/<name>" that mean it
//! {<prefix>:c:<hex>}:jobs            sorted set of "<tenant>/<task id>" accepted for it,
//!                                    scored by when their task expires (Redis's clock)
//! {<prefix>}:components:unnamed      sorted set of digests no name means but a job may
//!                                    still need, scored by when the last such job expires
//! ```
//!
//! A component's bytes are deleted as soon as no name means it and no
//! accepted job needs it: when a name is replaced or removed, when a job
//! that needed it ends, or, for jobs that never ended (their host died and
//! their task expired), by a sweep of the unnamed digests once their last
//! job's time to live has lapsed. A job accepted on one host therefore
//! finds its component on any other, however the name changed since.

use async_trait::async_trait;
use redis::Script;

use super::{Cluster, SHARED, hex, unavailable};
use crate::registry::{MatcherShare, ShareError};
use crate::tasks::{StoreError, TaskId};

/// Redis's clock, in ms.
const NOW: &str = r"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Keeps the bytes (once) and records a name for them.
/// KEYS: bytes, names. ARGV: bytes, "<owner>/<name>".
const NAME: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SADD', KEYS[2], ARGV[2])
return 1
";

/// Points a name at a digest (or at nothing); returns what it meant.
/// KEYS: the owner's names hash. ARGV: name, digest or "".
const POINT: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return old
";

/// Records that a job needs the component, if it is a shared upload.
/// KEYS: bytes, jobs. ARGV: "<tenant>/<id>", ttl ms.
const NEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[2]), ARGV[1])
return 1
";

/// Drops a name or a job from a component's users (kind 'name', 'job', or
/// 'none' just to look), then deletes the component if it has none left.
/// Returns 0 if it is still named, -1 if it was deleted (or was not there),
/// or the expiry (ms) of the last job that still needs it.
/// KEYS: bytes, names, jobs. ARGV: kind, member.
const RELEASE: &str = r"
if ARGV[1] == 'name' then redis.call('SREM', KEYS[2], ARGV[2]) end
if ARGV[1] == 'job' then redis.call('ZREM', KEYS[3], ARGV[2]) end
local t = now()
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', t)
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return -1
end
return tonumber(last[2])
";

fn share_error(err: redis::RedisError) -> ShareError {
    ShareError(unavailable(err).to_string())
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// The scripts of this module, built once.
pub(super) struct Scripts {
    name: Script,
    point: Script,
    need: Script,
    release: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts { name: script(NAME), point: script(POINT), need: script(NEED), release: script(RELEASE) }
    }
}

/// What is left of a component after one of its users let go.
enum Left {
    Named,
    Deleted,
    /// No name, but jobs that expire at this time (ms, Redis's clock).
    JobsUntil(i64),
}

impl Cluster {
    fn names_key(&self, owner: Option<&str>) -> String {
        format!("{{{}:{}}}:matchers", self.prefix, owner.unwrap_or(SHARED))
    }

    /// The keys of one component, all in its hash slot.
    fn component_keys(&self, digest: &str) -> [String; 3] {
        let tag = format!("{{{}:c:{}}}", self.prefix, hex(digest));
        [format!("{tag}:bytes"), format!("{tag}:names"), format!("{tag}:jobs")]
    }

    fn unnamed_key(&self) -> String {
        format!("{{{}}}:components:unnamed", self.prefix)
    }

    async fn release(&self, digest: &str, kind: &str, member: &str) -> Result<Left, redis::RedisError> {
        let [bytes, names, jobs] = self.component_keys(digest);
        let left: i64 = self
            .components
            .release
            .key(bytes)
            .key(names)
            .key(jobs)
            .arg(kind)
            .arg(member)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let left = match left {
            0 => Left::Named,
            l if l < 0 => Left::Deleted,
            until => Left::JobsUntil(until),
        };
        if let Left::JobsUntil(until) = left {
            let _: i64 = redis::cmd("ZADD")
                .arg(self.unnamed_key())
                .arg(until)
                .arg(digest)
                .query_async(&mut self.redis.clone())
                .await?;
        }
        if matches!(left, Left::Deleted) {
            tracing::debug!(%digest, "deleted a component no name and no job needs any more");
        }
        Ok(left)
    }

    /// Records that `tenant`'s job `id` needs the component `digest` (if it
    /// is a shared upload) until it ends or its task expires after `ttl`.
    pub async fn need_component(
        &self,
        digest: &str,
        tenant: &str,
        id: TaskId,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let [bytes, _, jobs] = self.component_keys(digest);
        let _: i64 = self
            .components
            .need
            .key(bytes)
            .key(jobs)
            .arg(format!("{tenant}/{id}"))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// `tenant`'s job `id` no longer needs the component `digest`.
    pub async fn release_component(&self, digest: &str, tenant: &str, id: TaskId) -> Result<(), StoreError> {
        self.release(digest, "job", &format!("{tenant}/{id}")).await.map_err(unavailable)?;
        Ok(())
    }

    /// Deletes the unnamed components whose last job has expired: the
    /// sweep for jobs whose host died before they ended.
    pub async fn collect_components(&self) -> Result<usize, StoreError> {
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.unnamed_key())
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let mut deleted = 0;
        for digest in due {
            match self.release(&digest, "none", "").await.map_err(unavailable)? {
                Left::JobsUntil(_) => continue,
                Left::Deleted => deleted += 1,
                Left::Named => {}
            }
            let _: i64 = redis::cmd("ZREM")
                .arg(self.unnamed_key())
                .arg(&digest)
                .query_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
        }
        Ok(deleted)
    }

    /// Points `owner`'s `name` at `digest` (or at nothing), and lets go of
    /// the component it meant before.
    async fn point(&self, owner: Option<&str>, name: &str, digest: Option<&str>) -> Result<(), ShareError> {
        let old: Option<String> = self
            .components
            .point
            .key(self.names_key(owner))
            .arg(name)
            .arg(digest.unwrap_or(""))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(share_error)?;
        if let Some(old) = old.filter(|old| Some(old.as_str()) != digest) {
            let member = format!("{}/{name}", owner.unwrap_or(SHARED));
            self.release(&old, "name", &member).await.map_err(share_error)?;
        }
        Ok(())
    }
}

/// Now on this host's clock, in ms: only to pick which unnamed components
/// to look at; the script that deletes one decides on Redis's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl MatcherShare for Cluster {
    async fn publish(&self, owner: Option<&str>, name: &str, digest: &str, bytes: &[u8]) -> Result<(), ShareError> {
        let [bytes_key, names, _] = self.component_keys(digest);
        let _: i64 = self
            .components
            .name
            .key(bytes_key)
            .key(names)
            .arg(bytes)
            .arg(format!("{}/{name}", owner.unwrap_or(SHARED)))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(share_error)?;
        self.point(owner, name, Some(digest)).await
    }

    async fn withdraw(&self, owner: Option<&str>, name: &str) -> Result<(), ShareError> {
        self.point(owner, name, None).await
    }

    async fn digest_of(&self, owner: Option<&str>, name: &str) -> Result<Option<String>, ShareError> {
        redis::cmd("HGET")
            .arg(self.names_key(owner))
            .arg(name)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(share_error)
    }

    async fn names(&self, owner: Option<&str>) -> Result<Vec<(String, String)>, ShareError> {
        redis::cmd("HGETALL").arg(self.names_key(owner)).query_async(&mut self.redis.clone()).await.map_err(share_error)
    }

    async fn bytes_of(&self, digest: &str) -> Result<Option<Vec<u8>>, ShareError> {
        let [bytes, _, _] = self.component_keys(digest);
        redis::cmd("GET").arg(bytes).query_async(&mut self.redis.clone()).await.map_err(share_error)
    }
}
