//! Loading matchers: from the binary, the matchers directory, the data
//! directory and uploads, each validated the same way before it is
//! registered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use wasmtime::component::Component;

use super::cache::Lookup;
use super::{Access, LoadError, Matcher, MatcherRegistry, Source, check_name, digest};
use crate::runtime::MatcherInfo;

const MAX_VERSION_LEN: usize = 64;
const MAX_DESCRIPTION_LEN: usize = 1024;

impl MatcherRegistry {
    pub(super) async fn load_directory(&self, dir: &Path) -> anyhow::Result<()> {
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

    pub(super) async fn load_stored(&self) -> anyhow::Result<()> {
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

    /// Validates `bytes` as a matcher and registers it under `name` for
    /// `access`, replacing its upload of that name. Returns the matcher and
    /// whether the name is new.
    ///
    /// Checked in order, each failure leaving the registry unchanged: the
    /// name; that the name is not read-only; the size cap; that the bytes are
    /// WebAssembly and a component, not a core module; that it compiles; that
    /// it implements the `matcher` world with no import the host lacks; and
    /// that `info()`, run in a sandbox, answers in time with sensible strings.
    pub async fn upload(
        &self,
        access: Access<'_>,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(Arc<Matcher>, bool), LoadError> {
        check_name(name)?;
        // Whether the deployment already has the name, wherever it was
        // uploaded: then this is a replacement.
        let elsewhere = match &self.config.share {
            Some(share) => share
                .digest_of(access.owner.map(|o| &**o), name)
                .await
                .map_err(|e| LoadError::Storage(e.to_string()))?,
            None => None,
        };
        self.check_writable(access, name)?;
        self.check_upload_quota(access, name)?;
        let owner = access.owner.cloned();
        let digest = digest(&bytes);
        if let Some(existing) = self.get_owned(owner.as_ref(), name).filter(|m| m.digest == digest) {
            return Ok((existing, false));
        }
        let known_elsewhere = elsewhere.is_some();
        // Compiling and `info()` take as long as the component makes them
        // take: no lock is held meanwhile, so one slow upload holds up no
        // other upload and no job.
        let matcher = self.load(owner.clone(), name, bytes.clone(), Source::Uploaded).await?;

        let _change = self.changes.lock().await;
        // Checked again: a shared matcher of that name, or the last upload
        // of the quota, may have arrived while this one compiled.
        self.check_writable(access, name)?;
        self.check_upload_quota(access, name)?;
        let existing = self.get_owned(owner.as_ref(), name);
        if let Some(share) = &self.config.share {
            share
                .publish(matcher.owner.as_deref(), name, &matcher.digest, &bytes)
                .await
                .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        if let Some(storage) = self.storage.clone() {
            let (name, digest, old) = (name.to_string(), digest.clone(), existing.as_ref().map(|m| m.digest.clone()));
            tokio::task::spawn_blocking(move || {
                storage.put(owner.as_deref(), &name, &digest, &bytes)?;
                if let Some(old) = old {
                    storage.collect(&old)?;
                }
                std::io::Result::Ok(())
            })
            .await
            .map_err(|e| LoadError::Storage(e.to_string()))?
            .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        tracing::info!(
            name,
            tenant = %access.caller,
            digest = %matcher.digest,
            version = %matcher.info.version,
            "matcher uploaded"
        );
        let key_owner = matcher.owner.clone();
        let replaced = self.insert(matcher);
        let created = replaced.is_none() && !known_elsewhere;
        Ok((self.get_owned(key_owner.as_ref(), name).expect("just inserted"), created))
    }

    /// Removes `access`'s upload `name`. Jobs running on it finish on it.
    pub async fn remove(&self, access: Access<'_>, name: &str) -> Result<bool, LoadError> {
        let _change = self.changes.lock().await;
        let owner = access.owner.cloned();
        if self.get_owned(owner.as_ref(), name).is_none() {
            self.check_writable(access, name)?;
            // Uploaded on another host and not yet fetched here: still the
            // deployment's to remove.
            let elsewhere = match &self.config.share {
                Some(share) => share
                    .digest_of(owner.as_deref(), name)
                    .await
                    .map_err(|e| LoadError::Storage(e.to_string()))?
                    .is_some(),
                None => false,
            };
            if !elsewhere {
                return Ok(false);
            }
        }
        if owner.is_none() {
            self.check_writable(access, name)?;
        }
        if let Some(storage) = self.storage.clone() {
            let (owner, name) = (owner.clone(), name.to_string());
            tokio::task::spawn_blocking(move || storage.remove(owner.as_deref(), &name))
                .await
                .map_err(|e| LoadError::Storage(e.to_string()))?
                .map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        if let Some(share) = &self.config.share {
            share.withdraw(owner.as_deref(), name).await.map_err(|e| LoadError::Storage(e.to_string()))?;
        }
        self.forget(owner, name);
        tracing::info!(name, tenant = %access.caller, "matcher removed");
        Ok(true)
    }

    /// Checks, compiles (or loads from the cache), type-checks and asks
    /// `info()` of a component.
    pub(super) async fn load(
        &self,
        owner: Option<Arc<str>>,
        name: &str,
        bytes: Vec<u8>,
        source: Source,
    ) -> Result<Matcher, LoadError> {
        let loaded = self.try_load(owner, name, bytes, source).await;
        if loaded.is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        loaded
    }

    async fn try_load(
        &self,
        owner: Option<Arc<str>>,
        name: &str,
        bytes: Vec<u8>,
        source: Source,
    ) -> Result<Matcher, LoadError> {
        // The cap is for uploads: built-in and directory matchers are the
        // operator's own.
        let cap = self.config.max_component_size;
        if bytes.len() > cap && source == Source::Uploaded {
            return Err(LoadError::TooLarge { size: bytes.len(), cap });
        }
        check_header(&bytes)?;
        let digest = digest(&bytes);
        let size = bytes.len();
        let component = self.compile(bytes, &digest).await?;
        let pre = self.sandbox.prepare(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // `info()` is guest code: it runs on the guest runtime like a job.
        let (sandbox, info_pre, limits) = (self.sandbox.clone(), pre.clone(), self.config.info_limits.clone());
        let info = self
            .sandbox
            .on_guests(async move { sandbox.info(&info_pre, &limits).await })
            .await
            .map_err(|e| LoadError::Info(format!("the info() task failed: {e}")))?
            .map_err(|f| LoadError::Info(format!("{} ({})", f.message, f.kind)))?;
        check_info(&info)?;
        Ok(Matcher { name: name.to_string(), owner, info, digest, size, source, pre })
    }

    /// Compiles on the blocking pool, at most [`super::COMPILE_SLOTS`] at
    /// once, consulting the precompiled cache first.
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
                    Lookup::OverLimits(why) => return Err(LoadError::OverLimits(why)),
                    Lookup::Rejected(why) => {
                        tracing::warn!(%why, "recompiling: a cache file could not be trusted");
                        how = How::Recompiled;
                    }
                }
            }
            let started = std::time::Instant::now();
            let component = Component::new(&engine, &bytes).map_err(|e| {
                let e = anyhow::Error::from(e);
                if crate::runtime::is_over_limits(&e) {
                    LoadError::OverLimits(format!("{e:#}"))
                } else {
                    LoadError::Compile(format!("{e:#}"))
                }
            })?;
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
    field("name", &info.name, super::MAX_NAME_LEN, true)?;
    field("version", &info.version, MAX_VERSION_LEN, true)?;
    field("description", &info.description, MAX_DESCRIPTION_LEN, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
