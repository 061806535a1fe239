//! Tenants: who is calling, what they may see, and how much they may take.
//!
//! - [`keys`]: API keys, kept as SHA-256 hashes, compared in constant time;
//! - [`file`]: the tenants file (`--config`), and `matchbox tenant add`;
//! - [`Tenants`]: authentication (`Authorization: Bearer <key>`) and the
//!   per-tenant quotas: jobs running at once, jobs pending, memory per
//!   instance, job deadline, postings per job.
//!
//! Tenants are built from the tenants file and the host's own limits
//! ([`HostLimits`]), nothing else. Isolation is enforced where the data
//! lives: a task records its tenant and the task store finds it only under
//! that tenant; matchers are keyed by owner in the registry, which sees a
//! tenant through [`Tenant::access`]. Fair scheduling is the job queue's
//! (`jobs/queue.rs`): one lane per tenant, served round robin, each lane
//! held to its tenant's `concurrent_jobs`.
//!
//! With no tenants file the host has one implicit tenant, `default`, with
//! the host's own limits and no authentication; its uploads are shared
//! matchers, as they were before tenants existed.

pub mod file;
pub mod keys;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;

use crate::registry::Access;
use crate::runtime::JobLimits;
use crate::support::units::{parse_duration, parse_size};
use file::{TenantEntry, TenantsFile};
use keys::KeyHash;

/// The implicit tenant of a host without a tenants file.
pub const DEFAULT_TENANT: &str = "default";

/// The host's own limits: the ceiling of every quota, and what a tenant
/// gets for each quota it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Jobs run at once.
    pub workers: usize,
    /// Jobs waiting for a worker.
    pub queue: usize,
    /// Linear memory of one job (the size of an instance slot).
    pub max_memory: usize,
    pub job_timeout: Duration,
    pub max_postings: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            workers: 2,
            queue: 1024,
            max_memory: 256 << 20,
            job_timeout: Duration::from_secs(10),
            max_postings: 10_000,
        }
    }
}

/// What one tenant may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub concurrent_jobs: usize,
    pub pending_tasks: usize,
    pub memory: usize,
    pub deadline: Duration,
    pub postings: usize,
}

impl Quotas {
    /// What a tenant gets for each quota it leaves out.
    pub fn of_host(host: &HostLimits) -> Self {
        Quotas {
            concurrent_jobs: host.workers,
            pending_tasks: host.queue + host.workers,
            memory: host.max_memory,
            deadline: host.job_timeout,
            postings: host.max_postings,
        }
    }
}

#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    key: Option<KeyHash>,
    pub quotas: Quotas,
    /// Shared matchers it may use; `None` for all.
    shared: Option<BTreeSet<String>>,
    /// Whether its uploads are its own (every tenant from a tenants file) or
    /// shared (the implicit tenant).
    private: bool,
    /// Jobs accepted and not yet ended.
    pending: AtomicUsize,
}

impl Tenant {
    fn implicit(host: &HostLimits) -> Self {
        Tenant {
            name: DEFAULT_TENANT.into(),
            key: None,
            quotas: Quotas::of_host(host),
            shared: None,
            private: false,
            pending: AtomicUsize::new(0),
        }
    }

    /// The namespace its uploads live in: its name, or `None` for shared.
    pub fn namespace(&self) -> Option<&Arc<str>> {
        self.private.then_some(&self.name)
    }

    /// How the matcher registry sees it.
    pub fn access(&self) -> Access<'_> {
        Access { caller: &self.name, owner: self.namespace(), shared: self.shared.as_ref() }
    }

    /// Takes one of its pending-task places, or `None` at its quota.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let limit = self.quotas.pending_tasks;
        self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        Some(Admission(self.clone()))
    }

    /// The sandbox limits of its jobs.
    pub fn job_limits(&self) -> JobLimits {
        JobLimits { memory: self.quotas.memory, deadline: self.quotas.deadline, ..JobLimits::default() }
    }

    /// Jobs accepted and not yet ended.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One accepted job's place in its tenant's pending quota, given back when
/// the job ends (or is dropped unrun).
#[derive(Debug)]
pub struct Admission(Arc<Tenant>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this host needs an API key: send 'Authorization: Bearer <key>'")]
    Missing,
    #[error("the Authorization header is not 'Bearer <key>'")]
    Malformed,
    #[error("the API key is not valid")]
    Invalid,
}

/// Every tenant of this host.
#[derive(Debug)]
pub struct Tenants {
    all: Vec<Arc<Tenant>>,
    /// Whether keys are checked: false only for the implicit tenant.
    auth: bool,
}

impl Tenants {
    /// The tenants of the tenants file at `path`, or without one the
    /// implicit tenant, under the host's limits.
    pub fn load(path: Option<&std::path::Path>, host: &HostLimits) -> anyhow::Result<Self> {
        match path {
            None => Ok(Tenants { all: vec![Arc::new(Tenant::implicit(host))], auth: false }),
            Some(path) => {
                let file = TenantsFile::read(path)?;
                Self::from_file(file, host).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
        }
    }

    fn from_file(file: TenantsFile, host: &HostLimits) -> anyhow::Result<Self> {
        if file.tenants.is_empty() {
            anyhow::bail!("no [[tenant]] in the file; add one with `matchbox tenant add NAME --config FILE`");
        }
        let mut names = HashSet::new();
        let mut all: Vec<Arc<Tenant>> = Vec::new();
        for entry in file.tenants {
            let name = entry.name.clone();
            let tenant = resolve(entry, host).map_err(|e| anyhow::anyhow!("tenant '{name}': {e}"))?;
            if !names.insert(name.clone()) {
                anyhow::bail!("tenant '{name}' appears twice");
            }
            if let Some(other) = all.iter().find(|t| t.key == tenant.key) {
                anyhow::bail!("tenants '{}' and '{name}' have the same key", other.name);
            }
            all.push(Arc::new(tenant));
        }
        Ok(Tenants { all, auth: true })
    }

    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.all
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.all.iter().find(|t| &*t.name == name)
    }

    /// The tenant an `Authorization` header names. Without tenants, always
    /// the implicit one.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Arc<Tenant>, AuthError> {
        if !self.auth {
            return Ok(self.all[0].clone());
        }
        let value = authorization.ok_or(AuthError::Missing)?.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let presented = KeyHash::of(key.trim());
        // Every tenant is compared, in constant time each, so the time taken
        // says nothing about which tenant (if any) came close.
        let mut found = None;
        for tenant in &self.all {
            if tenant.key.as_ref().is_some_and(|k| k.matches(&presented)) {
                found = Some(tenant.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }

    /// Checks that every shared matcher a tenant names exists: a typo in
    /// the file should stop the host, not quietly deny a tenant.
    pub fn check_matchers(&self, shared: &[String]) -> anyhow::Result<()> {
        for tenant in &self.all {
            for name in tenant.shared.iter().flatten() {
                if !shared.contains(name) {
                    anyhow::bail!(
                        "tenant '{}' may use matcher '{name}', but this host has no shared matcher of that name \
                         (it has: {})",
                        tenant.name,
                        shared.join(", ")
                    );
                }
            }
        }
        Ok(())
    }
}

fn resolve(entry: TenantEntry, limits: &HostLimits) -> anyhow::Result<Tenant> {
    check_name(&entry.name)?;
    let host = Quotas::of_host(limits);
    let memory = match &entry.memory {
        Some(m) => parse_size(m).map_err(anyhow::Error::msg)?,
        None => host.memory,
    };
    if memory > limits.max_memory {
        anyhow::bail!(
            "memory = {memory} bytes is more than the host's --max-memory ({} bytes), which sizes every instance slot",
            limits.max_memory
        );
    }
    let deadline = match &entry.deadline {
        Some(d) => parse_duration(d).map_err(anyhow::Error::msg)?,
        None => host.deadline,
    };
    let positive = |field: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(anyhow::anyhow!("{field} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let quotas = Quotas {
        concurrent_jobs: positive("concurrent_jobs", entry.concurrent_jobs, host.concurrent_jobs)?,
        pending_tasks: positive("pending_tasks", entry.pending_tasks, host.pending_tasks)?,
        memory,
        deadline,
        postings: positive("postings", entry.postings, host.postings)?,
    };
    Ok(Tenant {
        name: entry.name.as_str().into(),
        key: Some(KeyHash::from_hex(&entry.key_sha256).map_err(anyhow::Error::msg)?),
        quotas,
        shared: entry.matchers.map(|m| m.into_iter().collect()),
        private: true,
        pending: AtomicUsize::new(0),
    })
}

/// Tenant names follow the rule of matcher names: 1 to 64 of a-z, 0-9, '-',
/// '_' and '.', starting with a letter or digit.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if !crate::support::names::is_valid_name(name) {
        anyhow::bail!("'{name}' is not a valid tenant name: use {}", crate::support::names::NAME_RULE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(text: &str) -> anyhow::Result<Tenants> {
        Tenants::from_file(TenantsFile::parse(text).map_err(anyhow::Error::msg)?, &HostLimits::default())
    }

    fn entry(name: &str, key: &str, extra: &str) -> String {
        format!("[[tenant]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n", KeyHash::of(key).to_hex())
    }

    #[test]
    fn authenticates_by_bearer_key() {
        let tenants = config_with(&(entry("a", "key-a", "") + &entry("b", "key-b", "concurrent_jobs = 1"))).unwrap();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert_eq!(&*tenants.authenticate(Some(&header("Bearer key-a"))).unwrap().name, "a");
        assert_eq!(&*tenants.authenticate(Some(&header("bearer  key-b "))).unwrap().name, "b");
        assert_eq!(tenants.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(tenants.authenticate(Some(&header("Bearer key-c"))).unwrap_err(), AuthError::Invalid);
        assert_eq!(tenants.authenticate(Some(&header("Basic a2V5LWE="))).unwrap_err(), AuthError::Malformed);
        assert_eq!(tenants.authenticate(Some(&header("key-a"))).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn quotas_default_to_the_hosts_and_are_checked() {
        let host = Quotas::of_host(&HostLimits::default());
        let tenants = config_with(&entry("a", "k", "memory = \"16MiB\"\ndeadline = \"2s\"")).unwrap();
        let q = &tenants.all()[0].quotas;
        assert_eq!((q.memory, q.deadline), (16 << 20, Duration::from_secs(2)));
        assert_eq!((q.concurrent_jobs, q.postings), (host.concurrent_jobs, host.postings));

        let cases = [
            (entry("a", "k", "memory = \"64GiB\""), "more than the host's --max-memory"),
            (entry("a", "k", "concurrent_jobs = 0"), "concurrent_jobs must be at least 1"),
            (entry("a", "k", "deadline = \"soon\""), "not a duration"),
            (entry("A b", "k", ""), "not a valid tenant name"),
            (entry("a", "k", "") + &entry("a", "j", ""), "appears twice"),
            (entry("a", "k", "") + &entry("b", "k", ""), "the same key"),
            (String::new(), "no [[tenant]]"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", config_with(&text).unwrap_err());
            assert!(err.contains(expected), "{err} should say {expected}");
        }
    }

    #[test]
    fn pending_quota_is_given_back_on_drop() {
        let tenants = config_with(&entry("a", "k", "pending_tasks = 2")).unwrap();
        let a = &tenants.all()[0];
        let first = a.admit().unwrap();
        let _second = a.admit().unwrap();
        assert!(a.admit().is_none());
        drop(first);
        assert!(a.admit().is_some());
    }

    #[test]
    fn a_misspelt_matcher_stops_the_host() {
        let tenants = config_with(&entry("a", "k", "matchers = [\"skils\"]")).unwrap();
        let err = tenants.check_matchers(&["skills".into(), "text".into()]).unwrap_err().to_string();
        assert!(err.contains("'skils'") && err.contains("skills, text"), "{err}");
    }
}
