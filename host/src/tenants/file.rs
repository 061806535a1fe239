//! The tenants file (`matchbox serve --config matchbox.toml`): one
//! `[[tenant]]` table per tenant. `matchbox tenant add` appends to it.
//!
//! ```toml
//! [[tenant]]
//! name = "acme"
//! key_sha256 = "…64 hex digits…"   # never the key itself
//! webhook_secret = "whsec_…"        # signs its jobs' callbacks (the host needs it itself)
//! matchers = ["skills"]             # shared matchers it may use; omit for all
//! concurrent_jobs = 2               # quotas; each omitted one is the host's own limit
//! pending_tasks = 500
//! memory = "64MiB"
//! deadline = "5s"
//! postings = 1000
//! ```

use std::path::Path;

use serde::Deserialize;

use super::keys;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantEntry>,
}

/// One `[[tenant]]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub name: String,
    pub key_sha256: String,
    /// What its jobs' callbacks are signed with (`whsec_…`, Standard
    /// Webhooks). Kept as is: the host signs with it, so the file must be
    /// readable by the host only.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Shared matchers (built-in and `--matchers-dir`) the tenant may use;
    /// all of them when absent. Its own uploads are always its own to use.
    #[serde(default)]
    pub matchers: Option<Vec<String>>,
    /// Jobs of this tenant running at once.
    pub concurrent_jobs: Option<usize>,
    /// Jobs of this tenant accepted and not yet ended.
    pub pending_tasks: Option<usize>,
    /// Tasks of this tenant held, finished ones included, until they expire.
    pub tasks: Option<usize>,
    /// Memory of one of its jobs (all its linear memories and tables), e.g.
    /// "64MiB".
    pub memory: Option<String>,
    /// Deadline of one of its jobs, e.g. "5s".
    pub deadline: Option<String>,
    /// Postings in one of its jobs.
    pub postings: Option<usize>,
    /// Matchers it may have uploaded at once.
    pub uploads: Option<usize>,
}

impl TenantsFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the tenants file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// `matchbox tenant add`: what to write besides the name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NewTenant {
    /// Shared matchers the tenant may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub matchers: Option<Vec<String>>,
    /// Jobs of this tenant running at once.
    #[arg(long)]
    pub concurrent_jobs: Option<usize>,
    /// Jobs of this tenant accepted and not yet ended.
    #[arg(long)]
    pub pending_tasks: Option<usize>,
    /// Tasks of this tenant held, finished ones included, until they expire
    /// (default: a share of --max-tasks).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Memory of one of its jobs, e.g. 64MiB (written as typed).
    #[arg(long, value_parser = size_as_typed)]
    pub memory: Option<String>,
    /// Deadline of one of its jobs, e.g. 5s (written as typed).
    #[arg(long, value_parser = duration_as_typed)]
    pub deadline: Option<String>,
    /// Postings in one of its jobs.
    #[arg(long)]
    pub postings: Option<usize>,
    /// Matchers it may have uploaded at once.
    #[arg(long)]
    pub uploads: Option<usize>,
}

fn size_as_typed(s: &str) -> Result<String, String> {
    crate::support::units::parse_size(s).map(|_| s.trim().to_string())
}

fn duration_as_typed(s: &str) -> Result<String, String> {
    crate::support::units::parse_duration(s).map(|_| s.trim().to_string())
}

/// The `serve` settings a new tenant is checked against, from the same
/// flags and environment variables as `matchbox serve`, so that `tenant add`
/// refuses what `serve` would refuse, with the same message.
#[derive(Debug, Clone, clap::Args)]
pub struct HostFlags {
    /// The `--max-memory` of the hosts that will read the file.
    #[arg(long, env = "MATCHBOX_MAX_MEMORY", default_value = super::defaults::MAX_MEMORY, value_parser = crate::support::units::parse_positive_size)]
    pub max_memory: usize,
    /// The `--job-timeout` of the hosts that will read the file.
    #[arg(long, env = "MATCHBOX_JOB_TIMEOUT", default_value = super::defaults::JOB_TIMEOUT, value_parser = crate::support::units::parse_positive_duration)]
    pub job_timeout: std::time::Duration,
    /// The `--max-tasks` of the hosts that will read the file.
    #[arg(long, env = "MATCHBOX_MAX_TASKS", default_value = super::defaults::MAX_TASKS, value_parser = crate::support::units::parse_count)]
    pub max_tasks: usize,
    /// The `--matchers-dir` of the hosts that will read the file: its
    /// `<name>.wasm` files are shared matchers a tenant may be allowed.
    #[arg(long, env = "MATCHBOX_MATCHERS_DIR")]
    pub matchers_dir: Option<std::path::PathBuf>,
}

/// What `matchbox serve` runs with when given nothing.
impl Default for HostFlags {
    fn default() -> Self {
        let host = super::HostLimits::default();
        HostFlags {
            max_memory: host.max_memory,
            job_timeout: host.job_timeout,
            max_tasks: host.max_tasks,
            matchers_dir: None,
        }
    }
}

impl HostFlags {
    fn host_limits(&self) -> super::HostLimits {
        super::HostLimits {
            max_memory: self.max_memory,
            job_timeout: self.job_timeout,
            max_tasks: self.max_tasks,
            ..super::HostLimits::default()
        }
    }

    /// The shared matchers such a host has: the built-ins and the
    /// directory's.
    fn shared_matchers(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = crate::registry::BUILTINS.iter().map(|(name, _)| name.to_string()).collect();
        if let Some(dir) = &self.matchers_dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("reading the matchers directory {}: {e}", dir.display()))?;
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if path.extension().is_some_and(|e| e == "wasm")
                    && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Adds a tenant to the file at `path` (created if missing) with a fresh
/// key and webhook signing secret, and returns them: the only time the key
/// exists outside the caller's hands. The file keeps its comments and layout: the new table is
/// appended, the whole is checked as `serve` under `limits` would check it
/// before it replaces the old file, and it is replaced atomically.
pub fn add(path: &Path, name: &str, new: &NewTenant, limits: &HostFlags) -> anyhow::Result<Added> {
    super::check_name(name)?;
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    let parsed = TenantsFile::parse(&old).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if parsed.tenants.iter().any(|t| t.name == name) {
        anyhow::bail!("{} already has a tenant named '{name}'", path.display());
    }
    let key = keys::generate()?;
    let webhook_secret = crate::webhooks::Secret::generate()?.expose();
    let mut text = old;
    if text.is_empty() {
        text.push_str("# matchbox tenants: `matchbox tenant add NAME --config FILE` appends to this file.\n");
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n[[tenant]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nwebhook_secret = \"{webhook_secret}\"\n",
        keys::KeyHash::of(&key).to_hex()
    ));
    if let Some(matchers) = &new.matchers {
        for m in matchers {
            if !crate::support::names::is_valid_name(m) {
                anyhow::bail!("'{m}' is not a valid matcher name: use {}", crate::support::names::NAME_RULE);
            }
        }
        let list: Vec<String> = matchers.iter().map(|m| format!("\"{m}\"")).collect();
        text.push_str(&format!("matchers = [{}]\n", list.join(", ")));
    }
    let numbers = [
        ("concurrent_jobs", new.concurrent_jobs),
        ("pending_tasks", new.pending_tasks),
        ("tasks", new.tasks),
        ("postings", new.postings),
        ("uploads", new.uploads),
    ];
    for (field, value) in numbers {
        if let Some(value) = value {
            text.push_str(&format!("{field} = {value}\n"));
        }
    }
    if let Some(memory) = &new.memory {
        text.push_str(&format!("memory = \"{memory}\"\n"));
    }
    if let Some(deadline) = &new.deadline {
        text.push_str(&format!("deadline = \"{deadline}\"\n"));
    }
    let file = TenantsFile::parse(&text).map_err(|e| anyhow::anyhow!("the new file would not parse (a bug): {e}"))?;
    let in_file = |e: anyhow::Error| anyhow::anyhow!("{}: {e}", path.display());
    let tenants = super::Tenants::from_file(file, &limits.host_limits()).map_err(in_file)?;
    tenants.check_matchers(&limits.shared_matchers()?).map_err(in_file)?;

    crate::support::files::write_atomically(path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(Added { key, webhook_secret })
}

/// What `tenant add` hands the operator, once.
#[derive(Debug)]
pub struct Added {
    /// The API key; the file keeps only its hash.
    pub key: String,
    /// The secret its callbacks are signed with, for the tenant to check
    /// them; the file keeps it too (the host signs with it).
    pub webhook_secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_appends_a_hash_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("matchbox.toml");
        std::fs::write(&path, "# operators' notes\n").unwrap();
        let Added { key, webhook_secret } = add(&path, "acme", &NewTenant::default(), &limits()).unwrap();
        let new = NewTenant {
            matchers: Some(vec!["skills".into()]),
            concurrent_jobs: Some(2),
            memory: Some("64MiB".into()),
            deadline: Some("5s".into()),
            ..NewTenant::default()
        };
        add(&path, "globex", &new, &limits()).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# operators' notes\n"), "{text}");
        assert!(!text.contains(&key), "the key itself is never written");
        let file = TenantsFile::parse(&text).unwrap();
        assert_eq!(file.tenants.len(), 2);
        assert!(keys::KeyHash::from_hex(&file.tenants[0].key_sha256).unwrap().matches(&keys::KeyHash::of(&key)));
        assert_eq!(file.tenants[0].webhook_secret.as_deref(), Some(webhook_secret.as_str()), "the host signs with it");
        assert_ne!(file.tenants[1].webhook_secret, file.tenants[0].webhook_secret, "each tenant has its own");
        webhook_secret.parse::<crate::webhooks::Secret>().unwrap();
        let globex = &file.tenants[1];
        assert_eq!(globex.matchers.as_deref(), Some(&["skills".to_string()][..]));
        assert_eq!((globex.concurrent_jobs, globex.memory.as_deref()), (Some(2), Some("64MiB")), "as typed");
        assert_eq!(globex.deadline.as_deref(), Some("5s"));

        let again = add(&path, "acme", &NewTenant::default(), &limits()).unwrap_err().to_string();
        assert!(again.contains("already has a tenant named 'acme'"), "{again}");
        assert!(add(&path, "Not A Name", &NewTenant::default(), &limits()).is_err());

        // What `serve` would refuse is refused when adding, with its message.
        let big = NewTenant { memory: Some("1GiB".into()), ..NewTenant::default() };
        let err = add(&path, "initech", &big, &limits()).unwrap_err().to_string();
        assert!(
            err.contains("tenant 'initech': memory = 1073741824 bytes is more than the host's --max-memory"),
            "{err}"
        );
        let typo = NewTenant { matchers: Some(vec!["nosuch".into()]), ..NewTenant::default() };
        let err = add(&path, "initech", &typo, &limits()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: tenant 'initech' may use matcher 'nosuch'", path.display())), "{err}");
        assert_eq!(TenantsFile::read(&path).unwrap().tenants.len(), 2, "failed adds change nothing");
    }

    fn limits() -> HostFlags {
        HostFlags::default()
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = TenantsFile::parse("[[tenant]]\nname = \"a\"\nkey_sha256 = \"00\"\nmemroy = \"1MiB\"\n").unwrap_err();
        assert!(err.contains("memroy"), "{err}");
    }
}
