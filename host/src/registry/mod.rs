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
//! (no owner), usable by the callers allowed them. A tenant's uploads are
//! its own: no other tenant can see, use, pin, replace or remove them, and
//! two tenants may each have a matcher of the same name. On a host without
//! tenants the one implicit tenant uploads shared matchers.
//!
//! The module is laid out by concern:
//!
//! - [`load`]: validating and compiling a component (or loading it from the
//!   [`cache::CompiledCache`]), type-checking it against the `matcher` world
//!   once (its [`MatcherPre`]) and asking its `info()` once, in a sandbox;
//! - [`access`]: what a caller ([`Access`]) may see, use and change, and
//!   resolving a [`MatcherRef`] (`name` or `name@sha256:<hex>`);
//! - [`share`]: keeping uploads in line with the other hosts of a
//!   deployment, through the [`MatcherShare`] trait that the cluster layer
//!   implements;
//! - [`storage`] and [`cache`]: the data directory and the precompiled cache.
//!
//! Entries are `Arc`s: a job holds the entry it was accepted with, so
//! replacing or removing a matcher never disturbs jobs already running on
//! it, and the old one is freed when its last job ends.

pub mod access;
pub mod cache;
mod load;
pub mod share;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use access::{Access, MatcherRef, ResolveError};
pub use share::{AcceptedError, MatcherShare, ShareError};

use crate::runtime::{JobLimits, JobState, MatcherInfo, MatcherPre, Sandbox};
use cache::CompiledCache;
use storage::ComponentStorage;

/// The built-in matchers, embedded at build time by `host/build.rs`.
pub const BUILTINS: &[(&str, &[u8])] =
    &[("skills", include_bytes!(env!("MATCHBOX_GUEST_SKILLS"))), ("text", include_bytes!(env!("MATCHBOX_GUEST_TEXT")))];

/// The matcher a job gets when it names none.
pub const DEFAULT_MATCHER: &str = "skills";

/// Compiles at most this many components at once: compiling is CPU work
/// that must leave cores for the jobs and the API.
const COMPILE_SLOTS: usize = 2;

pub use crate::support::names::MAX_NAME_LEN;

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
    /// Whether it is an upload of the caller's: with tenants, the tenant's
    /// own (no other tenant sees it); on a host without tenants, any
    /// upload, the one caller's. Built-in and directory matchers are not.
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
            // An upload without an owner is the implicit tenant's (a host
            // without tenants): still the caller's own.
            private: self.owner.is_some() || self.source == Source::Uploaded,
            version: self.info.version.clone(),
            description: self.info.description.clone(),
            digest: self.digest.clone(),
            size: self.size,
            builtin: self.source == Source::Builtin,
            source: self.source,
        }
    }

    /// The reference that names exactly this component.
    pub fn pinned(&self) -> MatcherRef {
        MatcherRef::pinned(&self.name, &self.digest)
    }
}

/// `sha256:` and the hex digest of `bytes`.
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
#[derive(Clone)]
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
    /// The deployment's shared record of uploads, when hosts share one:
    /// uploads are published there and fetched from there by digest.
    pub share: Option<Arc<dyn MatcherShare>>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("data_dir", &self.data_dir)
            .field("cache_dir", &self.cache_dir)
            .field("matchers_dir", &self.matchers_dir)
            .field("max_component_size", &self.max_component_size)
            .field("shared", &self.share.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            data_dir: None,
            cache_dir: None,
            matchers_dir: None,
            max_component_size: 64 << 20,
            info_limits: JobLimits { deadline: Duration::from_secs(5), ..JobLimits::default() },
            share: None,
        }
    }
}

/// Why a component was refused. Each is the uploader's to fix (a 4xx),
/// except `Storage`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("'{0}' is not a valid matcher name: use {rule}", rule = crate::support::names::NAME_RULE)]
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
    #[error("the component is over this host's limits for one component: {0}")]
    OverLimits(String),
    #[error("'{caller}' has {quota} uploaded matchers, its quota; remove one before uploading another")]
    UploadQuota { caller: String, quota: usize },
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

/// Counters of how matchers were loaded, for metrics and tests.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Components compiled from their bytes.
    pub compiled: AtomicU64,
    /// Components loaded from the precompiled cache.
    pub cache_hits: AtomicU64,
    /// Cache files found corrupt, truncated or foreign, and recompiled.
    pub cache_rejected: AtomicU64,
    /// Components that failed to load (refused uploads included).
    pub failed: AtomicU64,
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
    /// Components of other hosts that failed to load here, by digest, with
    /// why: a job for one costs a lookup, not another compile.
    failed: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Components no name means any more that accepted jobs still run, by
    /// owner and digest; each lives as long as a job holds it.
    retired: std::sync::Mutex<std::collections::HashMap<Key, std::sync::Weak<Matcher>>>,
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
            failed: Default::default(),
            retired: Default::default(),
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

    fn insert(&self, matcher: Matcher) -> Option<Arc<Matcher>> {
        let key = (matcher.owner.clone(), matcher.name.clone());
        self.matchers.write().unwrap().insert(key, Arc::new(matcher))
    }

    fn forget(&self, owner: Option<Arc<str>>, name: &str) -> Option<Arc<Matcher>> {
        self.matchers.write().unwrap().remove(&(owner, name.to_string()))
    }

    fn get_owned(&self, owner: Option<&Arc<str>>, name: &str) -> Option<Arc<Matcher>> {
        self.matchers.read().unwrap().get(&(owner.cloned(), name.to_string())).cloned()
    }

    /// A shared matcher (built-in, directory, or uploaded on a host without
    /// tenants) by name.
    pub fn get(&self, name: &str) -> Option<Arc<Matcher>> {
        self.get_owned(None, name)
    }

    /// The shared matchers' names.
    pub fn names(&self) -> Vec<String> {
        self.matchers.read().unwrap().keys().filter(|(owner, _)| owner.is_none()).map(|(_, n)| n.clone()).collect()
    }

    /// The shared matchers, by name.
    pub fn shared(&self) -> Vec<Arc<Matcher>> {
        self.matchers.read().unwrap().iter().filter(|((owner, _), _)| owner.is_none()).map(|(_, m)| m.clone()).collect()
    }
}

/// Refuses a name that breaks the rule of [`crate::support::names`].
pub fn check_name(name: &str) -> Result<(), LoadError> {
    if crate::support::names::is_valid_name(name) { Ok(()) } else { Err(LoadError::BadName(name.to_string())) }
}
