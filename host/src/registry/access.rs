//! What a caller may see, use and change, and how a job names its matcher.
//!
//! The registry does not know tenants: it is handed an [`Access`], the small
//! view of a caller it needs (the namespace of its uploads and the shared
//! matchers it may use). A matcher the caller may not see is unknown to it,
//! whoever owns it, so another tenant's upload answers exactly as one that
//! does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::{LoadError, Matcher, MatcherRegistry, Source};

/// Who is asking, as far as the registry cares.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The caller's name, for logs.
    pub caller: &'a str,
    /// The namespace its uploads live in; `None` when its uploads are
    /// shared (the implicit tenant of a host without tenants).
    pub owner: Option<&'a Arc<str>>,
    /// The shared matchers it may use; `None` for all of them.
    pub shared: Option<&'a BTreeSet<String>>,
    /// How many matchers it may have uploaded at once.
    pub uploads: usize,
}

impl Access<'_> {
    /// Whether it may use the shared matcher `name`.
    pub fn may_use_shared(&self, name: &str) -> bool {
        self.shared.is_none_or(|allowed| allowed.contains(name))
    }
}

/// How a job names its matcher: `name` (the current component of that
/// name) or `name@sha256:<hex>` (that exact component). Parsed once, where
/// the reference enters the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherRef {
    name: String,
    digest: Option<String>,
}

impl MatcherRef {
    /// The current component of `name`.
    pub fn named(name: impl Into<String>) -> Self {
        MatcherRef { name: name.into(), digest: None }
    }

    /// Exactly the component `digest` (`sha256:<hex>`), under `name`.
    pub fn pinned(name: impl Into<String>, digest: impl Into<String>) -> Self {
        MatcherRef { name: name.into(), digest: Some(digest.into()) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pinned digest, `sha256:<hex>`, if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl FromStr for MatcherRef {
    type Err = ResolveError;

    fn from_str(s: &str) -> Result<Self, ResolveError> {
        let Some((name, pin)) = s.split_once('@') else { return Ok(MatcherRef::named(s)) };
        let hex = pin.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ResolveError::BadPin(s.to_string()));
        }
        Ok(MatcherRef::pinned(name, pin))
    }
}

impl fmt::Display for MatcherRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.digest {
            Some(digest) => write!(f, "{}@{digest}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl serde::Serialize for MatcherRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MatcherRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no matcher named '{0}'")]
    Unknown(String),
    #[error("matcher '{name}' is not {digest} (it is now {current})")]
    DigestMismatch { name: String, digest: String, current: String },
    #[error("'{0}': a pinned matcher is written name@sha256:<64 lower-case hex digits>")]
    BadPin(String),
}

impl MatcherRegistry {
    /// The matcher `name` as `access` sees it: its own upload of that name,
    /// or else a shared matcher it may use.
    pub fn find(&self, access: Access<'_>, name: &str) -> Option<Arc<Matcher>> {
        access
            .owner
            .and_then(|own| self.get_owned(Some(own), name))
            .or_else(|| self.get(name).filter(|_| access.may_use_shared(name)))
    }

    /// The matcher `reference` names for `access`; a pinned reference only
    /// resolves while that digest is the current one under its name, so a
    /// pinned job never silently runs other code.
    pub fn resolve(&self, access: Access<'_>, reference: &MatcherRef) -> Result<Arc<Matcher>, ResolveError> {
        let name = reference.name();
        let matcher = self.find(access, name).ok_or_else(|| ResolveError::Unknown(name.to_string()))?;
        match reference.digest() {
            Some(digest) if digest != matcher.digest => Err(ResolveError::DigestMismatch {
                name: name.to_string(),
                digest: digest.to_string(),
                current: matcher.digest.clone(),
            }),
            _ => Ok(matcher),
        }
    }

    /// Every matcher `access` sees, by name.
    pub fn list(&self, access: Access<'_>) -> Vec<Arc<Matcher>> {
        let mut seen = BTreeMap::new();
        for matcher in self.matchers.read().unwrap().values() {
            let visible = match &matcher.owner {
                None => access.may_use_shared(&matcher.name),
                Some(owner) => access.owner == Some(owner),
            };
            // Its own upload wins over a shared matcher of that name.
            if visible && (matcher.owner.is_some() || !seen.contains_key(&matcher.name)) {
                seen.insert(matcher.name.clone(), matcher.clone());
            }
        }
        seen.into_values().collect()
    }

    /// Refuses to change `name` for `access` if it means a shared matcher
    /// that is not the caller's to change.
    pub(super) fn check_writable(&self, access: Access<'_>, name: &str) -> Result<(), LoadError> {
        let shared = self.get(name).filter(|_| access.owner.is_none() || access.may_use_shared(name));
        match shared.map(|m| m.source) {
            Some(Source::Builtin) => Err(LoadError::ReadOnly(name.to_string(), "built-in")),
            Some(Source::Directory) => Err(LoadError::ReadOnly(name.to_string(), "directory")),
            // A tenant's upload must not shadow a shared matcher it uses.
            Some(Source::Uploaded) if access.owner.is_some() => Err(LoadError::ReadOnly(name.to_string(), "shared")),
            _ => Ok(()),
        }
    }

    /// Refuses a new name when `access` has its quota of uploads.
    pub(super) fn check_upload_quota(&self, access: Access<'_>, name: &str) -> Result<(), LoadError> {
        let matchers = self.matchers.read().unwrap();
        if matchers.contains_key(&(access.owner.cloned(), name.to_string())) {
            return Ok(());
        }
        let held = matchers
            .iter()
            .filter(|((owner, _), m)| owner.as_ref() == access.owner && m.source == Source::Uploaded)
            .count();
        if held >= access.uploads {
            return Err(LoadError::UploadQuota { caller: access.caller.to_string(), quota: access.uploads });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_once_and_print_back() {
        let named: MatcherRef = "skills".parse().unwrap();
        assert_eq!((named.name(), named.digest()), ("skills", None));
        let hex = "a".repeat(64);
        let pinned: MatcherRef = format!("mine@sha256:{hex}").parse().unwrap();
        assert_eq!(pinned.digest(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(pinned.to_string(), format!("mine@sha256:{hex}"));
        for bad in [format!("mine@{hex}"), "mine@sha256:abc".into(), format!("mine@sha256:{}", "A".repeat(64))] {
            let err = bad.parse::<MatcherRef>().unwrap_err().to_string();
            assert!(err.contains("name@sha256:<64 lower-case hex digits>"), "{err}");
        }
    }
}
