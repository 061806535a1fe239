//! The precompiled cache: compiled components on disk, so a restart loads
//! matchers without compiling them again.
//!
//! A cache file is named by the component's digest and the engine's
//! compatibility hash (wasmtime version, compiler settings, target), so code
//! compiled by another engine is never even opened. Its content is
//!
//! ```text
//! "MBXCWASM" | sha256(payload) (32 bytes) | payload (Component::serialize)
//! ```
//!
//! written to a temporary file and renamed into place, so a reader never sees
//! a half-written file.
//!
//! # Why loading precompiled code is sound here
//!
//! `Component::deserialize` trusts its input: it maps the bytes as machine
//! code, and wasmtime only checks that the header matches this engine's
//! version and settings. Three things make that trust earned here:
//!
//! 1. only this process writes the cache, from `Component::serialize` of code
//!    it compiled itself from bytes whose digest is in the file name;
//! 2. the file's sha256 is checked against the one recorded in its header
//!    before wasmtime sees a byte, so a truncated, corrupted or partially
//!    overwritten file is detected and recompiled, never loaded;
//! 3. the name binds the file to this engine's compatibility hash, and
//!    wasmtime's own header check refuses anything compiled elsewhere.
//!
//! What remains is the cache directory's own integrity: someone who can write
//! arbitrary files there with a valid checksum can run code in this process.
//! The directory must be as private as the binary (the default is under the
//! user's own cache directory).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"MBXCWASM";
const HEADER: usize = MAGIC.len() + 32;

/// What a lookup found.
pub enum Lookup {
    Hit(Component),
    /// No file for this digest and engine.
    Miss,
    /// A file was there but could not be trusted or loaded; it was removed.
    Rejected(String),
    /// The file is sound, but the component is over this host's limits for
    /// one component (as it would be compiled afresh); the file is kept for
    /// a host with room for it.
    OverLimits(String),
}

#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompiledCache {
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompiledCache { dir: dir.to_path_buf(), engine_key: format!("{:016x}", hasher.finish()) })
    }

    /// The file for a component digest (`sha256:<hex>`) under this engine.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// Loads compiled code for `digest`, checking it first.
    pub fn load(&self, engine: &Engine, digest: &str) -> Lookup {
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Rejected(format!("reading {}: {e}", path.display())),
        };
        let reject = |why: String| {
            let _ = std::fs::remove_file(&path);
            Lookup::Rejected(format!("{}: {why}", path.display()))
        };
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return reject("not a matchbox cache file".into());
        }
        let (recorded, payload) = bytes[MAGIC.len()..].split_at(32);
        if Sha256::digest(payload).as_slice() != recorded {
            return reject("checksum mismatch (truncated or corrupted)".into());
        }
        // SAFETY: the payload was produced by `Component::serialize` in this
        // cache's `store` and its checksum matches; see the module docs for
        // why that makes it trustworthy. wasmtime still checks that the
        // header matches this engine and refuses it otherwise.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, payload) };
        match component {
            Ok(component) => Lookup::Hit(component),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if crate::runtime::is_over_limits(&e) {
                    Lookup::OverLimits(format!("{e:#}"))
                } else {
                    reject(format!("wasmtime refused it: {e}"))
                }
            }
        }
    }

    /// Writes compiled code for `digest`, atomically.
    pub fn store(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        let path = self.path(digest);
        crate::support::files::write_with(&path, |file| {
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(&payload))?;
            file.write_all(&payload)
        })?;
        Ok(())
    }
}
