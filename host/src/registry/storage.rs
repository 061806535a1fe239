//! Uploaded matchers kept on disk under `--data-dir`, so they are back under
//! the same names and digests after a restart.
//!
//! ```text
//! <data-dir>/components/<sha256 hex>.wasm   the bytes, stored once per digest
//! <data-dir>/matchers/<name>.json           {"name", "digest"}: which bytes a shared name means
//! <data-dir>/tenants/<tenant>/<name>.json    {"tenant", "name", "digest"}: a tenant's own
//! ```
//!
//! Bytes are shared between tenants that upload the same component; names
//! never are.
//!
//! Every file is written whole or not at all ([`crate::support::files`]). A
//! component's bytes are written before the name that points at them, and
//! removed only when no name points at them any more.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::support::files::write_atomically;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredName {
    /// The owning tenant; absent for a shared matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone)]
pub struct ComponentStorage {
    components: PathBuf,
    names: PathBuf,
    tenants: PathBuf,
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

impl ComponentStorage {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let storage = ComponentStorage {
            components: data_dir.join("components"),
            names: data_dir.join("matchers"),
            tenants: data_dir.join("tenants"),
        };
        std::fs::create_dir_all(&storage.components)?;
        std::fs::create_dir_all(&storage.names)?;
        std::fs::create_dir_all(&storage.tenants)?;
        Ok(storage)
    }

    /// The directory of `owner`'s names.
    fn names_of(&self, owner: Option<&str>) -> PathBuf {
        match owner {
            None => self.names.clone(),
            Some(tenant) => self.tenants.join(tenant),
        }
    }

    /// Every stored name, shared ones first, each group in name order.
    /// Entries that cannot be read are reported and skipped: one bad file
    /// must not stop the host.
    pub fn names(&self) -> std::io::Result<Vec<StoredName>> {
        let mut dirs = vec![self.names.clone()];
        let mut tenants: Vec<PathBuf> =
            std::fs::read_dir(&self.tenants)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        tenants.sort();
        dirs.extend(tenants);
        let mut out = Vec::new();
        for dir in dirs {
            let mut names = Self::read_names(&dir)?;
            names.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(names);
        }
        Ok(out)
    }

    fn read_names(dir: &Path) -> std::io::Result<Vec<StoredName>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<StoredName>(&b).map_err(|e| e.to_string()))
            {
                Ok(stored) => out.push(stored),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable matcher record"),
            }
        }
        Ok(out)
    }

    pub fn read_component(&self, digest: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.components.join(format!("{}.wasm", hex(digest))))
    }

    /// Records that `owner`'s `name` means the component `bytes` (of `digest`).
    pub fn put(&self, owner: Option<&str>, name: &str, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let component = self.components.join(format!("{}.wasm", hex(digest)));
        if !component.exists() {
            write_atomically(&component, bytes)?;
        }
        let record =
            StoredName { tenant: owner.map(str::to_string), name: name.to_string(), digest: digest.to_string() };
        let json = serde_json::to_vec(&record).expect("a name record serialises");
        let dir = self.names_of(owner);
        std::fs::create_dir_all(&dir)?;
        write_atomically(&dir.join(format!("{name}.json")), &json)
    }

    /// Forgets `owner`'s `name`, and the bytes it pointed at unless another
    /// name still points at them.
    pub fn remove(&self, owner: Option<&str>, name: &str) -> std::io::Result<()> {
        let path = self.names_of(owner).join(format!("{name}.json"));
        let old = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<StoredName>(&b).ok());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(old) = old {
            self.collect(&old.digest)?;
        }
        Ok(())
    }

    /// Removes a component's bytes if no name points at them.
    pub fn collect(&self, digest: &str) -> std::io::Result<()> {
        if self.names()?.iter().any(|n| n.digest == digest) {
            return Ok(());
        }
        match std::fs::remove_file(self.components.join(format!("{}.wasm", hex(digest)))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_point_at_shared_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ComponentStorage::open(dir.path()).unwrap();
        storage.put(None, "a", "sha256:00ff", b"one").unwrap();
        storage.put(Some("acme"), "a", "sha256:00ff", b"one").unwrap();
        let names = storage.names().unwrap();
        assert_eq!(names.len(), 2, "the same name in two namespaces");
        assert_eq!((names[0].tenant.as_deref(), names[1].tenant.as_deref()), (None, Some("acme")));
        storage.remove(None, "a").unwrap();
        assert_eq!(storage.read_component("sha256:00ff").unwrap(), b"one", "acme's a still points at it");
        storage.remove(Some("acme"), "a").unwrap();
        assert!(storage.read_component("sha256:00ff").is_err(), "no name points at it any more");
        assert!(storage.names().unwrap().is_empty());
    }
}
