//! The matcher registry: which matchers this host runs, by name.
//!
//! Matchers come from three places:
//!
//! - **built in**: `skills` and `text`, embedded in the binary by
//!   `host/build.rs`, so `matchbox serve` needs no files beside it;
//! - **a directory** (`--matchers-dir`): every `<name>.wasm` in it, loaded at
//!   start, owned by the operator;
//! - **uploads** (`PUT /matchers/{name}`): validated, compiled, and kept under
//!   `--data-dir` so they are back after a restart.
//!
//! Built-in and directory matchers are read-only through the API.
//!
//! Every matcher has an owner. Built-in and directory matchers are *shared*
//! (no owner), usable by the tenants allowed them. A tenant's uploads are
//! its own: no other tenant can see, use, pin, replace or remove them, and
//! two tenants may each have a matcher of the same name. On a host without
//! tenants the one implicit tenant uploads shared matchers.
//!
//! Every matcher is validated before it is registered ([`MatcherRegistry::upload`]
//! says how), compiled once (or loaded from the [`cache::CompiledCache`]),
//! type-checked against the `matcher` world once (its [`MatcherPre`]), and
//! asked for its `info()` once, in a sandbox. Entries are `Arc`s: a job holds
//! the entry it was accepted with, so replacing or removing a matcher never
//! disturbs jobs already running on it, and the old one is freed when its
//! last job ends.
//!
//! A job names a matcher as `name` (the current one) or `name@sha256:<hex>`
//! (that exact component, while it is the current one under that name: a
//! pinned job never silently runs other code).

pub mod cache;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::Component;

use crate::runtime::{JobLimits, JobState, MatcherInfo, MatcherPre, Sandbox};
use crate::tenants::Tenant;
use cache::{CompiledCache, Lookup};
use storage::ComponentStorage;

/// The built-in matchers, embedded at build time by `host/build.rs`.
pub const BUILTINS: &[(&str, &[u8])] =
    &[("skills", include_bytes!(env!("MATCHBOX_GUEST_SKILLS"))), ("text", include_bytes!(env!("MATCHBOX_GUEST_TEXT")))];

/// The matcher a job gets when it names none.
pub const DEFAULT_MATCHER: &str = "skills";

/// Compiles at most this many components at once: compiling is CPU work
/// that must leave cores for the jobs and the API.
const COMPILE_SLOTS: usize = 2;

/// Longest matcher name, and the longest strings `info()` may return.
pub const MAX_NAME_LEN: usize = 64;
const MAX_VERSION_LEN: usize = 64;
const MAX_DESCRIPTION_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Builtin,
    Directory,
    Uploaded,
}

/// A loaded matcher.
pub struct Matcher {
    pub name: String,
    /// The tenant it belongs to; `None` for a shared matcher.
    pub owner: Option<Arc<str>>,
    pub info: MatcherInfo,
    /// `sha256:` and the hex digest of the component's bytes.
    pub digest: String,
    pub size: usize,
    pub source: Source,
    pub pre: MatcherPre<JobState>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("name", &self.name).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// What `GET /matchers` says of a matcher.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MatcherSummary {
    pub name: String,
    /// Whether it is the caller's own upload rather than a shared matcher.
    pub private: bool,
    pub version: String,
    pub description: String,
    pub digest: String,
    pub size: usize,
    pub builtin: bool,
    pub source: Source,
}

impl Matcher {
    pub fn summary(&self) -> MatcherSummary {
        MatcherSummary {
            name: self.name.clone(),
            private: self.owner.is_some(),
            version: self.info.version.clone(),
            description: self.info.description.clone(),
            digest: self.digest.clone(),
            size: self.size,
            builtin: self.source == Source::Builtin,
            source: self.source,
        }
    }
}

pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Where the registry keeps things, and what it accepts.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Uploaded matchers are kept here; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// Compiled code is cached here; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
    /// Operator-provided matchers, `<name>.wasm`, loaded at start.
    pub matchers_dir: Option<PathBuf>,
    /// Largest component accepted.
    pub max_component_size: usize,
    /// Limits of the sandboxed `info()` call made at load time.
    pub info_limits: JobLimits,
    /// The deployment's shared record of uploads, when hosts share a Redis:
    /// uploads are published there and fetched from there by digest.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            data_dir: None,
            cache_dir: None,
            matchers_dir: None,
            max_component_size: 64 << 20,
            info_limits: JobLimits { deadline: Duration::from_secs(5), ..JobLimits::default() },
            cluster: None,
        }
    }
}

/// Why a component was refused. Each is the uploader's to fix (a 4xx),
/// except `Storage`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "'{0}' is not a valid matcher name: use 1 to 64 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error("'{0}' is a {1} matcher and cannot be replaced or removed through the API")]
    ReadOnly(String, &'static str),
    #[error("the component is {size} bytes; the cap is {cap} bytes (--max-component-size)")]
    TooLarge { size: usize, cap: usize },
    #[error("not a WebAssembly binary (no \\0asm magic number)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build it as a component (e.g. cargo build --target wasm32-wasip2)"
    )]
    CoreModule,
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error(
        "the component does not implement the world matchbox:matcher/matcher@0.1.0 with what this host provides: {0}"
    )]
    WrongWorld(String),
    #[error("info() failed: {0}")]
    Info(String),
    #[error("info() returned nonsense: {0}")]
    BadInfo(String),
    #[error("could not store the component: {0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no matcher named '{0}'")]
    Unknown(String),
    #[error("matcher '{name}' is not {digest} (it is now {current})")]
    DigestMismatch { name: String, digest: String, current: String },
}

/// Counters of how matchers were loaded, for metrics and tests.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Components compiled from their bytes.
    pub compiled: AtomicU64,
    /// Components loaded from the precompiled cache.
    pub cache_hits: AtomicU64,
    /// Cache files found corrupt, truncated or foreign, and recompiled.
    pub cache_rejected: AtomicU64,
}

/// A matcher's key: its owner (`None` for shared) and its name.
type Key = (Option<Arc<str>>, String);

pub struct MatcherRegistry {
    sandbox: Arc<Sandbox>,
    matchers: RwLock<BTreeMap<Key, Arc<Matcher>>>,
    storage: Option<ComponentStorage>,
    cache: Option<CompiledCache>,
    compile_slots: Semaphore,
    /// Serialises uploads and removals, so the map and the data directory
    /// always agree on what a name means.
    changes: tokio::sync::Mutex<()>,
    config: RegistryConfig,
    pub stats: LoadStats,
}

impl std::fmt::Debug for MatcherRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatcherRegistry").field("names", &self.names()).finish_non_exhaustive()
    }
}

impl MatcherRegistry {
    /// Opens the registry: built-ins, then the matchers directory, then the
    /// uploads kept in the data directory.
    pub async fn open(sandbox: Arc<Sandbox>, config: RegistryConfig) -> anyhow::Result<Self> {
        let storage = match &config.data_dir {
            Some(dir) => Some(
                ComponentStorage::open(dir).with_context(|| format!("opening the data directory {}", dir.display()))?,
            ),
            None => None,
        };
        let cache = match &config.cache_dir {
            Some(dir) => Some(
                CompiledCache::open(dir, sandbox.engine())
                    .with_context(|| format!("opening the cache directory {}", dir.display()))?,
            ),
            None => None,
        };
        let registry = MatcherRegistry {
            sandbox,
            matchers: RwLock::default(),
            storage,
            cache,
            compile_slots: Semaphore::new(COMPILE_SLOTS),
            changes: tokio::sync::Mutex::new(()),
            config,
            stats: LoadStats::default(),
        };

        for (name, bytes) in BUILTINS {
            let matcher = registry
                .load(None, name, bytes.to_vec(), Source::Builtin)
                .await
                .with_context(|| format!("loading the built-in matcher '{name}'"))?;
            registry.insert(matcher);
        }
        if let Some(dir) = registry.config.matchers_dir.clone() {
            registry.load_directory(&dir).await?;
        }
        registry.load_stored().await?;
        Ok(registry)
    }

    async fn load_directory(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading the matchers directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        files.sort();
        for path in files {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            check_name(&name).with_context(|| format!("{}", path.display()))?;
            if self.get(&name).is_some() {
                anyhow::bail!("{}: a built-in matcher is already named '{name}'", path.display());
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let matcher = self
                .load(None, &name, bytes, Source::Directory)
                .await
                .with_context(|| format!("loading {}", path.display()))?;
            tracing::info!(name, digest = %matcher.digest, "loaded a matcher from the matchers directory");
            self.insert(matcher);
        }
        Ok(())
    }

    async fn load_stored(&self) -> anyhow::Result<()> {
        let Some(storage) = &self.storage else { return Ok(()) };
        for stored in storage.names()? {
            let owner: Option<Arc<str>> = stored.tenant.as_deref().map(Into::into);
            if owner.is_none() && self.get(&stored.name).is_some() {
                tracing::warn!(name = stored.name, "a stored upload is shadowed by a built-in or directory matcher");
                continue;
            }
            let loaded = match storage.read_component(&stored.digest) {
                Ok(bytes) if digest(&bytes) == stored.digest => {
                    self.load(owner, &stored.name, bytes, Source::Uploaded).await
                }
                Ok(_) => Err(LoadError::Storage("its bytes do not match their digest".into())),
                Err(e) => Err(LoadError::Storage(e.to_string())),
            };
            match loaded {
                Ok(matcher) => {
                    self.insert(matcher);
                }
                // One bad upload must not keep the host from starting.
                Err(e) => tracing::error!(name = stored.name, error = %e, "could not load a stored matcher; skipped"),
            }
        }
        Ok(())
    }

    fn insert(&self, matcher: Matcher) -> Option<Arc<Matcher>> {
        let key = (matcher.owner.clone(), matcher.name.clone());
        self.matchers.write().unwrap().insert(key, Arc::new(matcher))
    }

    fn get_owned(&self, owner: Option<&Arc<str>>, name: &str) -> Option<Arc<Matcher>> {
        self.matchers.read().unwrap().get(&(owner.cloned(), name.to_string())).cloned()
    }

    /// A shared matcher (built-in, directory, or uploaded on a host without
    /// tenants) by name.
    pub fn get(&self, name: &str) -> Option<Arc<Matcher>> {
        self.get_owned(None, name)
    }

    /// The matcher `name` as `tenant` sees it: its own upload of that name,
    /// or else a shared matcher it may use.
    pub fn find(&self, tenant: &Tenant, name: &str) -> Option<Arc<Matcher>> {
        tenant
            .namespace()
            .and_then(|own| self.get_owned(Some(own), name))
            .or_else(|| self.get(name).filter(|_| tenant.may_use_shared(name)))
    }

    /// Resolves `name` or `name@sha256:<hex>` for `tenant`. A matcher it
    /// may not see is unknown, whoever owns it.
    pub fn resolve(&self, tenant: &Tenant, reference: &str) -> Result<Arc<Matcher>, ResolveError> {
        let (name, pinned) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let matcher = self.find(tenant, name).ok_or_else(|| ResolveError::Unknown(name.to_string()))?;
        match pinned {
            Some(digest) if digest != matcher.digest => Err(ResolveError::DigestMismatch {
                name: name.to_string(),
                digest: digest.to_string(),
                current: matcher.digest.clone(),
            }),
            _ => Ok(matcher),
        }
    }

    /// Every matcher `tenant` sees, by name.
    pub fn list(&self, tenant: &Tenant) -> Vec<Arc<Matcher>> {
        let mut seen = BTreeMap::new();
        for matcher in self.matchers.read().unwrap().values() {
            let visible = match &matcher.owner {
                None => tenant.may_use_shared(&matcher.name),
                Some(owner) => tenant.namespace() == Some(owner),
            };
            // Its own upload wins over a shared matcher of that name.
            if visible && (matcher.owner.is_some() || !seen.contains_key(&matcher.name)) {
                seen.insert(matcher.name.clone(), matcher.clone());
            }
        }
        seen.into_values().collect()
    }

    /// The shared matchers' names.
    pub fn names(&self) -> Vec<String> {
        self.matchers.read().unwrap().keys().filter(|(owner, _)| owner.is_none()).map(|(_, n)| n.clone()).collect()
    }

    /// Refuses to change `name` for `tenant` if it means a shared matcher
    /// that is not the tenant's to change.
    fn check_writable(&self, tenant: &Tenant, name: &str) -> Result<(), LoadError> {
        let shared = self.get(name).filter(|_| tenant.namespace().is_none() || tenant.may_use_shared(name));
        match shared.map(|m| m.source) {
            Some(Source::Builtin) => Err(LoadError::ReadOnly(name.to_string(), "built-in")),
            Some(Source::Directory) => Err(LoadError::ReadOnly(name.to_string(), "directory")),
            // A tenant's upload must not shadow a shared matcher it uses.
            Some(Source::Uploaded) if tenant.namespace().is_some() => {
                Err(LoadError::ReadOnly(name.to_string(), "shared"))
            }
            _ => Ok(()),
        }
    }

    /// Validates `bytes` as a matcher and registers it under `name` for
    /// `tenant`, replacing its upload of that name. Returns the matcher and
    /// whether the name is new.
    ///
    /// Checked in order, each failure leaving the registry unchanged: the
    /// name; that the name is not read-only; the size cap; that the bytes are
    /// WebAssembly and a component, not a core module; that it compiles; that
    /// it implements the `matcher` world with no import the host lacks; and
    /// that `info()`, run in a sandbox, answers in time with sensible strings.
    pub async fn upload(&self, tenant: &Tenant, name: &str, bytes: Vec<u8>) -> Result<(Arc<Matcher>, bool), LoadError> {
        check_name(name)?;
        let _change = self.changes.lock().await;
        self.check_writable(tenant, name)?;
        let owner = tenant.namespace().cloned();
        let existing = self.get_owned(owner.as_ref(), name);
        let digest = digest(&bytes);
        if let Some(existing) = existing.as_ref().filter(|m| m.digest == digest) {
            return Ok((existing.clone(), false));
        }
        let matcher = self.load(owner.clone(), name, bytes.clone(), Source::Uploaded).await?;
        if let Some(cluster) = &self.config.cluster {
            cluster
                .put_matcher(matcher.owner.as_deref(), name, &matcher.digest, &bytes)
                .await
                .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        if let Some(storage) = self.storage.clone() {
            let (name, digest) = (name.to_string(), digest.clone());
            tokio::task::spawn_blocking(move || {
                storage.put(owner.as_deref(), &name, &digest, &bytes)?;
                if let Some(old) = existing {
                    storage.collect(&old.digest)?;
                }
                std::io::Result::Ok(())
            })
            .await
            .map_err(|e| LoadError::Storage(e.to_string()))?
            .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        tracing::info!(
            name,
            tenant = %tenant.name,
            digest = %matcher.digest,
            version = %matcher.info.version,
            "matcher uploaded"
        );
        let key_owner = matcher.owner.clone();
        let replaced = self.insert(matcher);
        Ok((self.get_owned(key_owner.as_ref(), name).expect("just inserted"), replaced.is_none()))
    }

    /// Removes `tenant`'s upload `name`. Jobs running on it finish on it.
    pub async fn remove(&self, tenant: &Tenant, name: &str) -> Result<bool, LoadError> {
        let _change = self.changes.lock().await;
        let owner = tenant.namespace().cloned();
        if self.get_owned(owner.as_ref(), name).is_none() {
            self.check_writable(tenant, name)?;
            return Ok(false);
        }
        if owner.is_none() {
            self.check_writable(tenant, name)?;
        }
        if let Some(storage) = self.storage.clone() {
            let (owner, name) = (owner.clone(), name.to_string());
            tokio::task::spawn_blocking(move || storage.remove(owner.as_deref(), &name))
                .await
                .map_err(|e| LoadError::Storage(e.to_string()))?
                .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        if let Some(cluster) = &self.config.cluster {
            cluster.remove_matcher(owner.as_deref(), name).await.map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        self.matchers.write().unwrap().remove(&(owner, name.to_string()));
        tracing::info!(name, tenant = %tenant.name, "matcher removed");
        Ok(true)
    }

    /// Brings `tenant`'s upload `name` in line with the deployment's record
    /// when hosts share a Redis: fetches (by digest) and compiles what
    /// another host uploaded or replaced, and forgets what another host
    /// removed. Built-in and directory matchers are every host's own and
    /// are left alone. A component that fails to load is logged and left
    /// out, so the job that needed it is refused as naming an unknown
    /// matcher.
    pub async fn sync(&self, tenant: &Tenant, name: &str) -> Result<(), crate::tasks::StoreError> {
        let Some(cluster) = &self.config.cluster else { return Ok(()) };
        let owner = tenant.namespace().cloned();
        let local = self.get_owned(owner.as_ref(), name);
        if local.as_ref().is_some_and(|m| m.source != Source::Uploaded) || check_name(name).is_err() {
            return Ok(());
        }
        let remote = cluster.matcher_digest(owner.as_deref(), name).await?;
        match (remote, local) {
            (Some(digest), Some(local)) if local.digest == digest => Ok(()),
            (Some(digest), _) => {
                let Some(bytes) = cluster.component_bytes(&digest).await? else {
                    tracing::warn!(name, %digest, "the deployment names a component whose bytes are missing");
                    return Ok(());
                };
                let _change = self.changes.lock().await;
                match self.load(owner.clone(), name, bytes, Source::Uploaded).await {
                    Ok(matcher) if matcher.digest == digest => {
                        tracing::info!(name, tenant = %tenant.name, %digest, "fetched a matcher uploaded on another host");
                        self.insert(matcher);
                    }
                    Ok(_) => tracing::warn!(name, %digest, "a shared component's bytes do not match their digest"),
                    Err(e) => tracing::warn!(name, %digest, error = %e, "could not load a matcher from another host"),
                }
                Ok(())
            }
            (None, Some(_)) => {
                tracing::info!(name, tenant = %tenant.name, "a matcher removed on another host; forgotten here");
                self.matchers.write().unwrap().remove(&(owner, name.to_string()));
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Checks, compiles (or loads from the cache), type-checks and asks
    /// `info()` of a component.
    async fn load(
        &self,
        owner: Option<Arc<str>>,
        name: &str,
        bytes: Vec<u8>,
        source: Source,
    ) -> Result<Matcher, LoadError> {
        let cap = self.config.max_component_size;
        if bytes.len() > cap && source != Source::Builtin {
            return Err(LoadError::TooLarge { size: bytes.len(), cap });
        }
        check_header(&bytes)?;
        let digest = digest(&bytes);
        let size = bytes.len();
        let component = self.compile(bytes, &digest).await?;
        let pre = self.sandbox.prepare(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let info = self
            .sandbox
            .info(&pre, &self.config.info_limits)
            .await
            .map_err(|f| LoadError::Info(format!("{} ({})", f.message, f.kind)))?;
        check_info(&info)?;
        Ok(Matcher { name: name.to_string(), owner, info, digest, size, source, pre })
    }

    /// Compiles on the blocking pool, at most [`COMPILE_SLOTS`] at once,
    /// consulting the precompiled cache first.
    async fn compile(&self, bytes: Vec<u8>, digest: &str) -> Result<Component, LoadError> {
        let _slot = self.compile_slots.acquire().await.expect("the compile semaphore is never closed");
        let engine = self.sandbox.engine().clone();
        let cache = self.cache.clone();
        let digest = digest.to_string();
        let (component, how) = tokio::task::spawn_blocking(move || {
            let mut how = How::Compiled;
            if let Some(cache) = &cache {
                match cache.load(&engine, &digest) {
                    Lookup::Hit(component) => return Ok((component, How::Cached)),
                    Lookup::Miss => {}
                    Lookup::Rejected(why) => {
                        tracing::warn!(%why, "recompiling: a cache file could not be trusted");
                        how = How::Recompiled;
                    }
                }
            }
            let started = std::time::Instant::now();
            let component = Component::new(&engine, &bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
            tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "compiled a component");
            if let Some(cache) = &cache
                && let Err(e) = cache.store(&digest, &component)
            {
                tracing::warn!(error = %e, "could not write the precompiled cache");
            }
            Ok((component, how))
        })
        .await
        .map_err(|e| LoadError::Compile(format!("the compile task failed: {e}")))??;
        match how {
            How::Cached => &self.stats.cache_hits,
            How::Compiled => &self.stats.compiled,
            How::Recompiled => {
                self.stats.cache_rejected.fetch_add(1, Ordering::Relaxed);
                &self.stats.compiled
            }
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(component)
    }
}

enum How {
    Compiled,
    Cached,
    Recompiled,
}

pub fn check_name(name: &str) -> Result<(), LoadError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(LoadError::BadName(name.to_string())) }
}

/// Tells a component from a core module from something else by the
/// preamble: `\0asm`, then a version and a layer (0 for modules, 1 for
/// components).
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match layer {
        0 => Err(LoadError::CoreModule),
        1 => Ok(()),
        other => Err(LoadError::Compile(format!("unknown WebAssembly layer {other}"))),
    }
}

fn check_info(info: &MatcherInfo) -> Result<(), LoadError> {
    let field = |what: &str, value: &str, max: usize, required: bool| {
        if required && value.trim().is_empty() {
            return Err(LoadError::BadInfo(format!("{what} is empty")));
        }
        if value.len() > max {
            return Err(LoadError::BadInfo(format!("{what} is {} bytes; the cap is {max}", value.len())));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(LoadError::BadInfo(format!("{what} contains control characters")));
        }
        Ok(())
    };
    field("name", &info.name, MAX_NAME_LEN, true)?;
    field("version", &info.version, MAX_VERSION_LEN, true)?;
    field("description", &info.description, MAX_DESCRIPTION_LEN, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["skills", "my-matcher", "v2.1", "a_b", "0day"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Skills", "-x", "a/b", "a@b", "x".repeat(65).as_str(), "ünï"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
