//! Uploads shared with the other hosts of a deployment.
//!
//! The registry does not know how hosts share things: it states what it
//! needs in [`MatcherShare`] (record that a name means a component, forget
//! it, say what a name means, hand over a component's bytes by digest), and
//! the cluster layer implements it over Redis. A host without a deployment
//! has no share, and every upload is its own.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Access, Matcher, MatcherRef, MatcherRegistry, ResolveError, Source, check_name};

/// The deployment's record of uploads. `owner` is the tenant whose
/// namespace the name lives in; `None` for a shared matcher.
#[async_trait]
pub trait MatcherShare: Send + Sync {
    /// Records that `owner`'s `name` means the component `bytes` (of
    /// `digest`), keeping the bytes by digest.
    async fn publish(&self, owner: Option<&str>, name: &str, digest: &str, bytes: &[u8]) -> Result<(), ShareError>;

    /// Forgets `owner`'s `name`.
    async fn withdraw(&self, owner: Option<&str>, name: &str) -> Result<(), ShareError>;

    /// The digest `owner`'s `name` means across the deployment.
    async fn digest_of(&self, owner: Option<&str>, name: &str) -> Result<Option<String>, ShareError>;

    /// Every name of `owner`'s across the deployment, with its digest.
    async fn names(&self, owner: Option<&str>) -> Result<Vec<(String, String)>, ShareError>;

    /// A component's bytes, by digest.
    async fn bytes_of(&self, digest: &str) -> Result<Option<Vec<u8>>, ShareError>;
}

/// The share could not be reached or answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShareError(pub String);

impl MatcherRegistry {
    /// Brings `access`'s upload `name` in line with the deployment's record:
    /// fetches (by digest) and compiles what another host uploaded or
    /// replaced, and forgets what another host removed. Built-in and
    /// directory matchers are every host's own and are left alone. A
    /// component that fails to load is logged and left out, so the job that
    /// needed it is refused as naming an unknown matcher.
    pub async fn sync(&self, access: Access<'_>, name: &str) -> Result<(), ShareError> {
        let Some(share) = &self.config.share else { return Ok(()) };
        if !self.syncs(access, name) {
            return Ok(());
        }
        let remote = share.digest_of(access.owner.map(|o| &**o), name).await?;
        self.sync_to(access, name, remote).await
    }

    /// Whether `access`'s `name` is one the deployment's record decides: an
    /// upload, or no matcher here at all.
    fn syncs(&self, access: Access<'_>, name: &str) -> bool {
        let local = self.get_owned(access.owner, name);
        !local.is_some_and(|m| m.source != Source::Uploaded) && check_name(name).is_ok()
    }

    /// Brings `access`'s `name` in line with `remote`, the digest the
    /// deployment's record gives it (`None`: it has none).
    async fn sync_to(&self, access: Access<'_>, name: &str, remote: Option<String>) -> Result<(), ShareError> {
        let Some(share) = &self.config.share else { return Ok(()) };
        let owner = access.owner.cloned();
        let local = self.get_owned(owner.as_ref(), name);
        match (remote, local) {
            (Some(digest), Some(local)) if local.digest == digest => Ok(()),
            (Some(digest), local) => {
                if let Some(why) = self.failed.lock().unwrap().get(&digest) {
                    tracing::debug!(name, %digest, %why, "a matcher that failed to load here before; left out");
                    return Ok(());
                }
                let Some(bytes) = share.bytes_of(&digest).await? else {
                    tracing::warn!(name, %digest, "the deployment names a component whose bytes are missing");
                    return Ok(());
                };
                // Loaded without the lock (see `upload`), inserted with it
                // unless the name changed meanwhile.
                let loaded = self.load(owner.clone(), name, bytes, Source::Uploaded).await;
                let _change = self.changes.lock().await;
                match loaded {
                    Ok(matcher) if matcher.digest == digest => {
                        let now = self.get_owned(owner.as_ref(), name).map(|m| m.digest.clone());
                        if now != local.map(|m| m.digest.clone()) {
                            return Ok(());
                        }
                        tracing::info!(name, tenant = %access.caller, %digest, "fetched a matcher uploaded on another host");
                        self.insert(matcher);
                    }
                    Ok(_) => self.remember_failure(name, &digest, "its bytes do not match their digest".into()),
                    Err(e) => self.remember_failure(name, &digest, e.to_string()),
                }
                Ok(())
            }
            (None, Some(_)) => {
                tracing::info!(name, tenant = %access.caller, "a matcher removed on another host; forgotten here");
                self.forget(owner, name);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Brings all of `access`'s uploads in line with the deployment's
    /// record ([`sync`](Self::sync) for each name it holds), and forgets
    /// the uploads it no longer holds: what a listing shows is the
    /// deployment's, whichever host uploaded or removed.
    pub async fn sync_all(&self, access: Access<'_>) -> Result<(), ShareError> {
        let Some(share) = &self.config.share else { return Ok(()) };
        let owner = access.owner.cloned();
        for (name, digest) in share.names(owner.as_deref()).await? {
            if self.syncs(access, &name) {
                self.sync_to(access, &name, Some(digest)).await?;
            }
        }
        // Decided under the lock uploads and removals hold, against a fresh
        // read: an upload of this host that lands meanwhile is not
        // forgotten for missing from an older read.
        let _change = self.changes.lock().await;
        let held: std::collections::HashSet<String> =
            share.names(owner.as_deref()).await?.into_iter().map(|(name, _)| name).collect();
        let gone: Vec<String> = self
            .matchers
            .read()
            .unwrap()
            .iter()
            .filter(|((o, name), m)| *o == owner && m.source == Source::Uploaded && !held.contains(name))
            .map(|((_, name), _)| name.clone())
            .collect();
        for name in gone {
            tracing::info!(name, tenant = %access.caller, "a matcher removed on another host; forgotten here");
            self.forget(owner.clone(), &name);
        }
        Ok(())
    }

    /// The matcher of a job another host accepted for `access`: the exact
    /// component of its pinned digest, even if the name has since been given
    /// another component or removed. Such a component is fetched by digest
    /// from the deployment (whose bytes are kept while an accepted job needs
    /// them) and kept here as long as a job holds it.
    pub async fn resolve_accepted(
        &self,
        access: Access<'_>,
        reference: &MatcherRef,
    ) -> Result<Arc<Matcher>, AcceptedError> {
        let current = self.resolve(access, reference);
        let (Err(err), Some(digest), Some(share)) = (&current, reference.digest(), &self.config.share) else {
            return current.map_err(AcceptedError::Unknown);
        };
        let key = (access.owner.cloned(), digest.to_string());
        if let Some(retired) = self.retired.lock().unwrap().get(&key).and_then(|m| m.upgrade()) {
            return Ok(retired);
        }
        if self.failed.lock().unwrap().contains_key(digest) {
            return Err(AcceptedError::Unknown(err.clone()));
        }
        let Some(bytes) = share.bytes_of(digest).await? else {
            return Err(AcceptedError::Unknown(err.clone()));
        };
        let name = reference.name();
        match self.load(access.owner.cloned(), name, bytes, Source::Uploaded).await {
            Ok(matcher) if matcher.digest == digest => {
                tracing::info!(name, %digest, "loaded the component an accepted job was pinned to, no longer current");
                let matcher = Arc::new(matcher);
                let mut retired = self.retired.lock().unwrap();
                retired.retain(|_, m| m.strong_count() > 0);
                retired.insert(key, Arc::downgrade(&matcher));
                Ok(matcher)
            }
            Ok(_) => {
                self.remember_failure(name, digest, "its bytes do not match their digest".into());
                Err(AcceptedError::Unknown(err.clone()))
            }
            Err(e) => {
                self.remember_failure(name, digest, e.to_string());
                Err(AcceptedError::Unknown(err.clone()))
            }
        }
    }

    /// Remembers that the component `digest` does not load on this host, so
    /// that later jobs for it are refused at once.
    fn remember_failure(&self, name: &str, digest: &str, why: String) {
        /// Digests remembered at most; past it, the memory starts over.
        const MAX_REMEMBERED: usize = 256;
        tracing::warn!(name, %digest, error = %why, "could not load a matcher from another host");
        let mut failed = self.failed.lock().unwrap();
        if failed.len() >= MAX_REMEMBERED {
            failed.clear();
        }
        failed.insert(digest.to_string(), why);
    }
}

/// Why the matcher of an accepted job cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum AcceptedError {
    /// For good: the component is gone, or does not load here.
    #[error(transparent)]
    Unknown(ResolveError),
    /// For now: the deployment's share cannot be reached.
    #[error(transparent)]
    Share(#[from] ShareError),
}
