//! The matcher registry: which matchers this host can run, by name.
//!
//! Each entry holds the component's [`MatcherPre`] (compiled and type-checked
//! against the `matcher` world once), what its `info()` said, and the sha256
//! of its bytes. Built-in matchers are embedded in the binary, so `matchbox
//! serve` needs no files beside it.
//!
//! Entries are `Arc`s: a job holds the entry it started on, so the registry
//! can change under running jobs without disturbing them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::runtime::{JobLimits, JobState, MatcherInfo, MatcherPre, Sandbox};

/// The built-in matchers, embedded at build time by `host/build.rs`.
pub const BUILTINS: &[(&str, &[u8])] =
    &[("skills", include_bytes!(env!("MATCHBOX_GUEST_SKILLS"))), ("text", include_bytes!(env!("MATCHBOX_GUEST_TEXT")))];

/// The matcher a job gets when it names none.
pub const DEFAULT_MATCHER: &str = "skills";

/// A loaded matcher.
pub struct Matcher {
    pub name: String,
    pub info: MatcherInfo,
    /// `sha256:` and the hex digest of the component's bytes.
    pub digest: String,
    pub size: usize,
    pub builtin: bool,
    pub pre: MatcherPre<JobState>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("name", &self.name).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// What `GET /matchers` says of a matcher.
#[derive(Debug, Clone, Serialize)]
pub struct MatcherSummary {
    pub name: String,
    pub version: String,
    pub description: String,
    pub digest: String,
    pub size: usize,
    pub builtin: bool,
}

impl Matcher {
    pub fn summary(&self) -> MatcherSummary {
        MatcherSummary {
            name: self.name.clone(),
            version: self.info.version.clone(),
            description: self.info.description.clone(),
            digest: self.digest.clone(),
            size: self.size,
            builtin: self.builtin,
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

#[derive(Debug, Default)]
pub struct MatcherRegistry {
    matchers: RwLock<BTreeMap<String, Arc<Matcher>>>,
}

impl MatcherRegistry {
    /// A registry holding the built-in matchers.
    pub async fn with_builtins(sandbox: &Sandbox) -> anyhow::Result<Self> {
        let registry = MatcherRegistry::default();
        for (name, bytes) in BUILTINS {
            let matcher = load(sandbox, name, bytes, true)
                .await
                .with_context(|| format!("loading the built-in matcher '{name}'"))?;
            registry.insert(matcher);
        }
        Ok(registry)
    }

    pub fn insert(&self, matcher: Matcher) {
        self.matchers.write().unwrap().insert(matcher.name.clone(), Arc::new(matcher));
    }

    pub fn get(&self, name: &str) -> Option<Arc<Matcher>> {
        self.matchers.read().unwrap().get(name).cloned()
    }

    /// Every matcher, by name.
    pub fn list(&self) -> Vec<Arc<Matcher>> {
        self.matchers.read().unwrap().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.matchers.read().unwrap().keys().cloned().collect()
    }
}

/// Compiles, type-checks and asks `info()` of a component.
///
/// Compiling is CPU work of tens of milliseconds to seconds, so it runs on
/// the blocking pool, never on an async worker.
pub async fn load(sandbox: &Sandbox, name: &str, bytes: &[u8], builtin: bool) -> anyhow::Result<Matcher> {
    let digest = digest(bytes);
    let engine = sandbox.engine().clone();
    let owned = bytes.to_vec();
    let component = tokio::task::spawn_blocking(move || wasmtime::component::Component::new(&engine, &owned))
        .await
        .context("the compile task panicked")?
        .map_err(anyhow::Error::from)
        .context("compiling the component")?;
    let pre = sandbox.prepare(&component).context("the component does not implement matchbox:matcher@0.1.0")?;
    let info = sandbox
        .info(&pre, &JobLimits::default())
        .await
        .map_err(|f| anyhow::anyhow!("info() failed: {} ({})", f.message, f.kind))?;
    Ok(Matcher { name: name.to_string(), info, digest, size: bytes.len(), builtin, pre })
}
