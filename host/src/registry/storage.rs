//! Uploaded matchers kept on disk under `--data-dir`, so they are back under
//! the same names and digests after a restart.
//!
//! ```text
//! <data-dir>/components/<sha256 hex>.wasm   the bytes, stored once per digest
//! <data-dir>/matchers/<name>.json           {"name", "digest"}: which bytes a name means
//! ```
//!
//! Every file is written to a temporary name and renamed into place. A
//! component's bytes are written before the name that points at them, and
//! removed only when no name points at them any more.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredName {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone)]
pub struct ComponentStorage {
    components: PathBuf,
    names: PathBuf,
}

/// A temporary name beside `path`, unique to this process and call, so that
/// concurrent writers (two registries sharing a directory) never collide.
pub(crate) fn temporary_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_beside(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

impl ComponentStorage {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let storage = ComponentStorage { components: data_dir.join("components"), names: data_dir.join("matchers") };
        std::fs::create_dir_all(&storage.components)?;
        std::fs::create_dir_all(&storage.names)?;
        Ok(storage)
    }

    /// Every stored name, in name order. Entries that cannot be read are
    /// reported and skipped: one bad file must not stop the host.
    pub fn names(&self) -> std::io::Result<Vec<StoredName>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.names)? {
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
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn read_component(&self, digest: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.components.join(format!("{}.wasm", hex(digest))))
    }

    /// Records that `name` means the component `bytes` (of `digest`).
    pub fn put(&self, name: &str, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let component = self.components.join(format!("{}.wasm", hex(digest)));
        if !component.exists() {
            write_atomically(&component, bytes)?;
        }
        let record = StoredName { name: name.to_string(), digest: digest.to_string() };
        let json = serde_json::to_vec(&record).expect("a name record serialises");
        write_atomically(&self.names.join(format!("{name}.json")), &json)
    }

    /// Forgets `name`, and the bytes it pointed at unless another name still
    /// points at them.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        let path = self.names.join(format!("{name}.json"));
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
        storage.put("a", "sha256:00ff", b"one").unwrap();
        storage.put("b", "sha256:00ff", b"one").unwrap();
        assert_eq!(storage.names().unwrap().len(), 2);
        storage.remove("a").unwrap();
        assert_eq!(storage.read_component("sha256:00ff").unwrap(), b"one", "b still points at it");
        storage.remove("b").unwrap();
        assert!(storage.read_component("sha256:00ff").is_err(), "no name points at it any more");
        assert!(storage.names().unwrap().is_empty());
    }
}
