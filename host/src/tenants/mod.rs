//! Tenants: who is calling, what they may see, and how much they may take.
//!
//! - [`keys`]: API keys, kept as SHA-256 hashes, compared in constant time;
//! - [`file`]: the tenants file (`--config`), and `matchbox tenant add`;
//! - [`Tenants`]: authentication (`Authorization: Bearer <key>`) and the
//!   per-tenant quotas: jobs running at once, jobs pending, tasks held,
//!   memory per job, job deadline, postings per job, uploaded matchers.
//!
//! The task table's room is divided among the tenants: a tenant's `tasks`
//! quota (finished tasks included, until they expire) defaults to an equal
//! share of `--max-tasks` between the tenants that set none, and the quotas
//! together may not exceed it, so no tenant can fill the table for the
//! others. The task store enforces `tasks` and `pending_tasks` atomically
//! with each insert (across every host of a deployment, with Redis).
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
use std::time::Duration;

use axum::http::HeaderValue;

use crate::registry::Access;
use crate::runtime::JobLimits;
use crate::support::units::{parse_duration, parse_size};
use crate::tasks::TenantCaps;
use crate::webhooks::Secret;
use file::{TenantEntry, TenantsFile};
use keys::KeyHash;

/// The implicit tenant of a host without a tenants file.
pub const DEFAULT_TENANT: &str = "default";

/// The defaults of the host limits a tenants file is checked against, as
/// `matchbox serve` and `matchbox tenant add` write them.
pub mod defaults {
    pub const MAX_MEMORY: &str = "256MiB";
    pub const JOB_TIMEOUT: &str = "10s";
    pub const MAX_TASKS: &str = "100000";
}

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
    /// Tasks the table holds at once, shared out among the tenants.
    pub max_tasks: usize,
    /// Matchers one tenant may have uploaded at once.
    pub max_uploads: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            workers: 2,
            queue: 1024,
            max_memory: 256 << 20,
            job_timeout: Duration::from_secs(10),
            max_postings: 10_000,
            max_tasks: 100_000,
            max_uploads: 32,
        }
    }
}

/// What one tenant may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub concurrent_jobs: usize,
    pub pending_tasks: usize,
    /// Tasks held, finished ones included, until they expire.
    pub tasks: usize,
    pub memory: usize,
    pub deadline: Duration,
    pub postings: usize,
    pub uploads: usize,
}

impl Quotas {
    /// What a tenant gets for each quota it leaves out, `tasks` aside: that
    /// one is its share of the table (see [`Tenants::load`]).
    pub fn of_host(host: &HostLimits) -> Self {
        Quotas {
            concurrent_jobs: host.workers,
            pending_tasks: host.queue + host.workers,
            tasks: host.max_tasks,
            memory: host.max_memory,
            deadline: host.job_timeout,
            postings: host.max_postings,
            uploads: host.max_uploads,
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
    /// What its jobs' callbacks are signed with; without one, its jobs
    /// cannot ask for a callback.
    pub webhook_secret: Option<Secret>,
}

impl Tenant {
    fn implicit(host: &HostLimits, webhook_secret: Option<Secret>) -> Self {
        Tenant {
            name: DEFAULT_TENANT.into(),
            key: None,
            quotas: Quotas::of_host(host),
            shared: None,
            private: false,
            webhook_secret,
        }
    }

    /// The namespace its uploads live in: its name, or `None` for shared.
    pub fn namespace(&self) -> Option<&Arc<str>> {
        self.private.then_some(&self.name)
    }

    /// How the matcher registry sees it.
    pub fn access(&self) -> Access<'_> {
        Access {
            caller: &self.name,
            owner: self.namespace(),
            shared: self.shared.as_ref(),
            uploads: self.quotas.uploads,
        }
    }

    /// What the task store lets it hold.
    pub fn caps(&self) -> TenantCaps {
        TenantCaps { tasks: self.quotas.tasks, pending: self.quotas.pending_tasks }
    }

    /// The sandbox limits of its jobs.
    pub fn job_limits(&self) -> JobLimits {
        JobLimits { memory: self.quotas.memory, deadline: self.quotas.deadline, ..JobLimits::default() }
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
    /// implicit tenant, under the host's limits; the implicit tenant signs
    /// its callbacks with the host's `webhook_secret` (each tenant of a file
    /// has its own).
    pub fn load(
        path: Option<&std::path::Path>,
        host: &HostLimits,
        webhook_secret: Option<Secret>,
    ) -> anyhow::Result<Self> {
        match path {
            None => Ok(Tenants { all: vec![Arc::new(Tenant::implicit(host, webhook_secret))], auth: false }),
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
        let share = table_share(&file.tenants, host.max_tasks)?;
        let mut names = HashSet::new();
        let mut all: Vec<Arc<Tenant>> = Vec::new();
        for entry in file.tenants {
            let name = entry.name.clone();
            let tenant = resolve(entry, host, share).map_err(|e| anyhow::anyhow!("tenant '{name}': {e}"))?;
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

    /// Whether requests must carry a tenant's key (a tenants file is in use).
    pub fn checks_keys(&self) -> bool {
        self.auth
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

/// The `tasks` quota of a tenant that sets none: an equal share of what the
/// tenants that set one leave of `max_tasks`. Quotas that add up to more
/// than the table holds are refused: the table could then fill up while a
/// tenant is still under its quota.
fn table_share(entries: &[TenantEntry], max_tasks: usize) -> anyhow::Result<usize> {
    if let Some(zero) = entries.iter().find(|e| e.tasks == Some(0)) {
        anyhow::bail!("tenant '{}': tasks must be at least 1", zero.name);
    }
    let set: usize = entries.iter().filter_map(|e| e.tasks).sum();
    let unset = entries.iter().filter(|e| e.tasks.is_none()).count();
    if set > max_tasks {
        anyhow::bail!(
            "the tenants' tasks quotas add up to {set}, more than the table holds (--max-tasks {max_tasks}); \
             lower them or raise --max-tasks"
        );
    }
    if unset == 0 {
        return Ok(0);
    }
    let share = (max_tasks - set) / unset;
    if share == 0 {
        anyhow::bail!(
            "the tenants' tasks quotas add up to {set} of --max-tasks {max_tasks}, which leaves no room for the \
             {unset} tenants without one; give them a tasks quota or raise --max-tasks"
        );
    }
    Ok(share)
}

fn resolve(entry: TenantEntry, limits: &HostLimits, table_share: usize) -> anyhow::Result<Tenant> {
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
    if deadline > limits.job_timeout {
        anyhow::bail!(
            "deadline = {} is more than the host's --job-timeout ({}), which bounds every job",
            humantime::format_duration(deadline),
            humantime::format_duration(limits.job_timeout)
        );
    }
    let positive = |field: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(anyhow::anyhow!("{field} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let quotas = Quotas {
        concurrent_jobs: positive("concurrent_jobs", entry.concurrent_jobs, host.concurrent_jobs)?,
        pending_tasks: positive("pending_tasks", entry.pending_tasks, host.pending_tasks)?,
        tasks: entry.tasks.unwrap_or(table_share),
        memory,
        deadline,
        postings: positive("postings", entry.postings, host.postings)?,
        uploads: positive("uploads", entry.uploads, host.uploads)?,
    };
    Ok(Tenant {
        name: entry.name.as_str().into(),
        key: Some(KeyHash::from_hex(&entry.key_sha256).map_err(anyhow::Error::msg)?),
        quotas,
        shared: entry.matchers.map(|m| m.into_iter().collect()),
        private: true,
        webhook_secret: entry
            .webhook_secret
            .map(|s| s.parse::<Secret>().map_err(|e| anyhow::anyhow!("webhook_secret: {e}")))
            .transpose()?,
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
    fn the_table_is_shared_out_and_never_overcommitted() {
        let host = HostLimits { max_tasks: 1000, ..HostLimits::default() };
        let load = |text: &str| Tenants::from_file(TenantsFile::parse(text).unwrap(), &host);
        let three = load(&(entry("a", "1", "") + &entry("b", "2", "tasks = 400") + &entry("c", "3", ""))).unwrap();
        let tasks: Vec<usize> = three.all().iter().map(|t| t.quotas.tasks).collect();
        assert_eq!(tasks, [300, 400, 300], "the tenants without a quota share what is left");
        let err =
            format!("{:#}", load(&(entry("a", "1", "tasks = 800") + &entry("b", "2", "tasks = 300"))).unwrap_err());
        assert!(err.contains("add up to 1100, more than the table holds (--max-tasks 1000)"), "{err}");
        let err = format!("{:#}", load(&(entry("a", "1", "tasks = 1000") + &entry("b", "2", ""))).unwrap_err());
        assert!(err.contains("leaves no room for the 1 tenants without one"), "{err}");
    }

    #[test]
    fn a_deadline_over_the_hosts_is_refused() {
        let err = format!("{:#}", config_with(&entry("a", "k", "deadline = \"30s\"")).unwrap_err());
        assert!(err.contains("deadline = 30s is more than the host's --job-timeout (10s)"), "{err}");
    }

    #[test]
    fn a_misspelt_matcher_stops_the_host() {
        let tenants = config_with(&entry("a", "k", "matchers = [\"skils\"]")).unwrap();
        let err = tenants.check_matchers(&["skills".into(), "text".into()]).unwrap_err().to_string();
        assert!(err.contains("'skils'") && err.contains("skills, text"), "{err}");
    }
}
