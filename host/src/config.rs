//! `matchbox serve` settings: every flag has an environment variable
//! (`MATCHBOX_*`) and a default, and [`Config::default`] is exactly what
//! `matchbox serve` runs with when given nothing.
//!
//! This is the top of the crate: flags are parsed here, into the types the
//! layers below own ([`Backend`], [`HostLimits`], [`RegistryConfig`]), and
//! handed to the service as its [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::ClusterConfig;
use crate::registry::RegistryConfig;
use crate::service::{HttpLimits, Settings};
use crate::support::units::{parse_count, parse_duration, parse_positive_duration, parse_positive_size};
use crate::tasks::Backend;
use crate::tenants::HostLimits;
use crate::webhooks::{AllowRule, CallbackPolicy, Secret, WebhookConfig};

#[derive(Debug, Clone, Parser)]
#[command(name = "matchbox serve", about = "Serve the matchbox HTTP API on its embedded defaults.")]
pub struct Config {
    /// Address to listen on (`127.0.0.1:8080`, `[::1]:8080`, or a host name
    /// and port such as `localhost:8080`). Without a tenants file
    /// (`--config`) only a loopback address is allowed, unless
    /// `--insecure-no-auth` is given.
    #[arg(long, env = "MATCHBOX_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// A tenants file (TOML, see the README): API keys and quotas. Without
    /// one, matchbox serves a single tenant and asks for no key.
    #[arg(long = "config", env = "MATCHBOX_CONFIG", value_name = "TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,

    /// Serve a non-loopback address without tenants, i.e. without API keys.
    /// From the environment: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
    #[arg(long, env = "MATCHBOX_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_no_auth: bool,

    /// How long a task lives, counted from its creation; then it is deleted
    /// and a job still running for it is stopped. E.g. `90s`, `5m`, `1h`.
    #[arg(long, env = "MATCHBOX_TASK_TTL", default_value = "1h", value_parser = parse_positive_duration)]
    pub task_ttl: Duration,

    /// Most tasks the table holds at once; past it, submissions get 429.
    #[arg(long, env = "MATCHBOX_MAX_TASKS", default_value = crate::tenants::defaults::MAX_TASKS, value_parser = parse_count)]
    pub max_tasks: usize,

    /// Where the task table lives: `memory` (this process), a Redis URL
    /// (`redis://host:6379/0`) for a table hosts share, or a Redis Cluster
    /// (`redis+cluster://host:port,host:port`).
    #[arg(long, env = "MATCHBOX_STORE", default_value = "memory", value_parser = clap::value_parser!(Backend))]
    pub store: Backend,

    /// With hosts sharing a Redis: how long a host may go without renewing
    /// its lease on a job (it renews every fifth of it) before another host
    /// takes the job over.
    #[arg(long, env = "MATCHBOX_LEASE", default_value = "5s", value_parser = parse_positive_duration)]
    pub lease: Duration,

    /// With hosts sharing a Redis: how many times a job is given to a host
    /// without an outcome before its task fails `host_lost`.
    #[arg(long, env = "MATCHBOX_MAX_DELIVERIES", default_value = "3", value_parser = parse_deliveries)]
    pub max_deliveries: u32,

    /// Prefix of every Redis key: hosts with the same prefix share a table.
    #[arg(long, env = "MATCHBOX_REDIS_PREFIX", default_value = "matchbox")]
    pub redis_prefix: String,

    /// Jobs run at once (default: the number of CPU cores).
    #[arg(long, env = "MATCHBOX_WORKERS", value_parser = parse_count)]
    pub workers: Option<usize>,

    /// Jobs waiting for a worker at most; past it, submissions get 429.
    #[arg(long, env = "MATCHBOX_QUEUE", default_value = "1024", value_parser = parse_count)]
    pub queue: usize,

    /// Deadline of one job, from instantiation to the answer.
    #[arg(long, env = "MATCHBOX_JOB_TIMEOUT", default_value = crate::tenants::defaults::JOB_TIMEOUT, value_parser = parse_positive_duration)]
    pub job_timeout: Duration,

    /// Linear memory one job's instance may use. E.g. `64MiB`, `1GiB`. The
    /// default leaves room for components that embed a language runtime.
    #[arg(long, env = "MATCHBOX_MAX_MEMORY", default_value = crate::tenants::defaults::MAX_MEMORY, value_parser = parse_positive_size)]
    pub max_memory: usize,

    /// How long a client may take to send a request's headers (and how long
    /// an idle keep-alive connection is kept); then the connection is closed.
    #[arg(long, env = "MATCHBOX_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// How long a client may take to send a request's body after its
    /// headers; past it, 408.
    #[arg(long, env = "MATCHBOX_BODY_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,

    /// Connections held open at once; past it, new ones are answered 503
    /// and closed.
    #[arg(long, env = "MATCHBOX_MAX_CONNECTIONS", default_value = "1024", value_parser = parse_count)]
    pub max_connections: usize,

    /// Where operators reach /metrics by tenant and matcher, /status and the
    /// status page (none by default). On a host with tenants, the API's
    /// /metrics leaves out every series that names a tenant or its matcher.
    #[arg(long, env = "MATCHBOX_ADMIN_LISTEN", value_parser = parse_listen)]
    pub admin_listen: Option<SocketAddr>,

    /// Largest request body accepted; past it, 413.
    #[arg(long, env = "MATCHBOX_MAX_BODY", default_value = "8MiB", value_parser = parse_positive_size)]
    pub max_body: usize,

    /// Most postings in one job; past it, 413.
    #[arg(long, env = "MATCHBOX_MAX_POSTINGS", default_value = "10000", value_parser = parse_count)]
    pub max_postings: usize,

    /// Most jobs in one `POST /jobs/batch`; past it, 413.
    #[arg(long, env = "MATCHBOX_MAX_BATCH", default_value = "100", value_parser = parse_count)]
    pub max_batch: usize,

    /// Longest `?wait=` a client may ask for.
    #[arg(long, env = "MATCHBOX_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// On SIGTERM or Ctrl-C, how long jobs already accepted may run to
    /// completion (new ones get 503) before the rest are cancelled.
    #[arg(long, env = "MATCHBOX_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Table size past which a warning is logged and
    /// `matchbox_tasks_above_high_water` reads 1.
    #[arg(long, env = "MATCHBOX_TASKS_HIGH_WATER", default_value_t = 10_000)]
    pub tasks_high_water: u64,

    /// Where uploaded matchers are kept, to be back after a restart
    /// [default: the user's data directory, e.g. ~/.local/share/matchbox].
    #[arg(long, env = "MATCHBOX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where compiled matchers are cached, so a restart does not compile them
    /// again [default: the user's cache directory, e.g. ~/.cache/matchbox].
    #[arg(long, env = "MATCHBOX_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// A directory of `<name>.wasm` matchers to load at start (read-only
    /// through the API).
    #[arg(long, env = "MATCHBOX_MATCHERS_DIR")]
    pub matchers_dir: Option<PathBuf>,

    /// Matchers one tenant may have uploaded at once (the default of every
    /// tenant's `uploads` quota); 0 turns uploads off.
    #[arg(long, env = "MATCHBOX_MAX_UPLOADS", default_value_t = 32)]
    pub max_uploads: usize,

    /// Largest matcher component accepted by `PUT /matchers/{name}`.
    #[arg(long, env = "MATCHBOX_MAX_COMPONENT_SIZE", default_value = "64MiB", value_parser = parse_positive_size)]
    pub max_component_size: usize,

    /// Show the log lines (and stdout and stderr) of built-in and directory
    /// matchers to the callers whose jobs ran on them, in each task's
    /// `logs`. A task always shows them for a job that ran on the caller's
    /// own upload. From the environment: `true`/`false`, `1`/`0`...
    #[arg(long, env = "MATCHBOX_SHARED_MATCHER_LOGS", value_parser = clap::builder::BoolishValueParser::new())]
    pub shared_matcher_logs: bool,

    /// Where job callbacks may be sent, one rule per flag or comma-separated:
    /// `public` (any public address), a CIDR or address (`10.1.0.0/16`), a
    /// host name or `*.domain` (whatever it resolves to). Default `public`:
    /// loopback, private, link-local and other non-public ranges are
    /// refused. Once a rule is given, only what the rules name is allowed.
    #[arg(long, env = "MATCHBOX_CALLBACK_ALLOW", value_delimiter = ',', value_name = "RULE")]
    pub callback_allow: Vec<AllowRule>,

    /// Attempts to deliver one end to its callback, the first included.
    #[arg(long, env = "MATCHBOX_CALLBACK_ATTEMPTS", default_value = "8", value_parser = parse_attempts)]
    pub callback_attempts: u32,

    /// The wait before a callback's first retry; each next one doubles (with
    /// jitter), up to 10 minutes, and never past the task's expiry.
    #[arg(long, env = "MATCHBOX_CALLBACK_BACKOFF", default_value = "1s", value_parser = parse_positive_duration)]
    pub callback_backoff: Duration,

    /// How long one callback attempt may take, connecting included.
    #[arg(long, env = "MATCHBOX_CALLBACK_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub callback_timeout: Duration,

    /// Without a tenants file: the secret callbacks are signed with
    /// (`whsec_…`, Standard Webhooks; `matchbox tenant add` prints one for
    /// each tenant of a file). Without it, jobs cannot ask for a callback.
    #[arg(long, env = "MATCHBOX_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// Log format: `text` for people, `json` for log pipelines. Filter with
    /// `RUST_LOG` (default `info`).
    #[arg(long, env = "MATCHBOX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["matchbox serve"])
    }
}

impl Config {
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Refuses to serve a non-loopback address with no API keys, unless told
    /// `--insecure-no-auth`.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.tenants_file.is_none() && !self.insecure_no_auth && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without API keys: give a tenants file with --config, listen on a \
                 loopback address, or pass --insecure-no-auth",
                self.listen
            );
        }
        Ok(())
    }
}

/// An address to listen on: `127.0.0.1:8080`, `[::1]:8080`, or a host name
/// and port (`localhost:8080`), resolved to its first address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut resolved = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("'{s}' is not an address such as 127.0.0.1:8080 or localhost:8080: {e}"))?;
    resolved.next().ok_or_else(|| format!("'{s}' resolves to no address"))
}

fn parse_attempts(s: &str) -> Result<u32, String> {
    match parse_deliveries(s)? {
        0 => Err("at least 1 attempt".into()),
        n => Ok(n),
    }
}

fn parse_deliveries(s: &str) -> Result<u32, String> {
    let n = parse_count(s)?;
    u32::try_from(n).map_err(|_| format!("'{s}' is too large"))
}

impl From<Config> for Settings {
    fn from(config: Config) -> Settings {
        let workers = config.workers();
        let under = |base: Option<PathBuf>| base.map(|b| b.join("matchbox"));
        Settings {
            backend: config.store,
            redis_prefix: config.redis_prefix,
            tenants_file: config.tenants_file,
            limits: HostLimits {
                workers,
                queue: config.queue,
                max_memory: config.max_memory,
                job_timeout: config.job_timeout,
                max_postings: config.max_postings,
                max_tasks: config.max_tasks,
                max_uploads: config.max_uploads,
            },
            task_ttl: config.task_ttl,
            tasks_high_water: config.tasks_high_water,
            registry: RegistryConfig {
                data_dir: config.data_dir.or_else(|| under(dirs::data_dir())),
                cache_dir: config.cache_dir.or_else(|| under(dirs::cache_dir())),
                matchers_dir: config.matchers_dir,
                max_component_size: config.max_component_size,
                ..RegistryConfig::default()
            },
            cluster: ClusterConfig { lease: config.lease, max_deliveries: config.max_deliveries },
            shared_matcher_logs: config.shared_matcher_logs,
            webhooks: WebhookConfig {
                policy: CallbackPolicy::new(config.callback_allow),
                attempts: config.callback_attempts,
                backoff: config.callback_backoff,
                timeout: config.callback_timeout,
            },
            webhook_secret: config.webhook_secret,
            http: HttpLimits {
                max_body: config.max_body,
                max_wait: config.max_wait,
                max_component_size: config.max_component_size,
                max_postings: config.max_postings,
                header_timeout: config.header_timeout,
                body_timeout: config.body_timeout,
                max_connections: config.max_connections,
                max_batch: config.max_batch,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.task_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_body, 8 << 20);
        assert_eq!(c.max_postings, 10_000);
        assert!(c.workers() >= 1);
    }

    #[test]
    fn no_keys_means_loopback_only() {
        let on = |listen: &str, extra: &[&str]| {
            let mut args = vec!["matchbox serve", "--listen", listen];
            args.extend(extra);
            Config::parse_from(args).check_exposure()
        };
        assert!(on("127.0.0.1:8080", &[]).is_ok());
        assert!(on("[::1]:8080", &[]).is_ok());
        let err = on("0.0.0.0:8080", &[]).unwrap_err().to_string();
        assert!(err.contains("refusing to listen on 0.0.0.0:8080"), "{err}");
        assert!(on("0.0.0.0:8080", &["--insecure-no-auth"]).is_ok());
        assert!(on("0.0.0.0:8080", &["--config", "matchbox.toml"]).is_ok());
    }
}
