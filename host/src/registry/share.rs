//! Uploads shared with the other hosts of a deployment.
//!
//! The registry does not know how hosts share things: it states what it
//! needs in [`MatcherShare`] (record that a name means a component, forget
//! it, say what a name means, hand over a component's bytes by digest), and
//! the cluster layer implements it over Redis. A host without a deployment
//! has no share, and every upload is its own.

use async_trait::async_trait;

use super::{Access, MatcherRegistry, Source, check_name};

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
        let owner = access.owner.cloned();
        let local = self.get_owned(owner.as_ref(), name);
        if local.as_ref().is_some_and(|m| m.source != Source::Uploaded) || check_name(name).is_err() {
            return Ok(());
        }
        let remote = share.digest_of(owner.as_deref(), name).await?;
        match (remote, local) {
            (Some(digest), Some(local)) if local.digest == digest => Ok(()),
            (Some(digest), _) => {
                let Some(bytes) = share.bytes_of(&digest).await? else {
                    tracing::warn!(name, %digest, "the deployment names a component whose bytes are missing");
                    return Ok(());
                };
                let _change = self.changes.lock().await;
                match self.load(owner.clone(), name, bytes, Source::Uploaded).await {
                    Ok(matcher) if matcher.digest == digest => {
                        tracing::info!(name, tenant = %access.caller, %digest, "fetched a matcher uploaded on another host");
                        self.insert(matcher);
                    }
                    Ok(_) => tracing::warn!(name, %digest, "a shared component's bytes do not match their digest"),
                    Err(e) => tracing::warn!(name, %digest, error = %e, "could not load a matcher from another host"),
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
}
