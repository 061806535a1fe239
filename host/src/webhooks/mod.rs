//! Completion webhooks: a task's end POSTed to the URL its job gave, signed.
//!
//! The task table queues a delivery in the same step that writes a job's
//! end (see `tasks::TaskStore::claim_callbacks`); the [`Deliverer`] of every
//! host claims what is due, under a lease, and sends it. On the host that
//! wrote the end the delivery starts at once (the store tells it); other
//! hosts look every second, which is how an end is still delivered when the
//! host that claimed it died: its lease lapses and another host claims it.
//! Every attempt of one end carries the same `webhook-id` (the task's id),
//! so a receiver that sees one twice (a host died after the receiver
//! answered, before it wrote so) can tell.
//!
//! An attempt that meets a network error, a timeout, a 5xx or a 429 is
//! retried after an exponential backoff with jitter, up to
//! [`WebhookConfig::attempts`] attempts and never past the task's expiry; a
//! 2xx delivers; anything else (another 4xx, a redirect, which is not
//! followed) is final. The task shows how it went (`callback.state`,
//! `attempts`, `last_status`, `last_error`).
//!
//! The body is the task as `GET /tasks/{id}` answers it at its end, without
//! its `callback` (the delivery's own bookkeeping changes per attempt; the
//! body does not). Destinations are checked by [`CallbackPolicy`] at
//! submission and again at each request.

mod policy;
mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use policy::{AllowRule, CallbackPolicy, MAX_URL_BYTES, Refused};
pub use sign::Secret;

use crate::tasks::{CallbackClaim, CallbackProgress, CallbackReport, CallbackState, Task, TaskStore};

/// Deliveries one host sends at once.
const IN_FLIGHT: usize = 64;
/// Deliveries of one tenant one host sends at once: a tenant whose
/// receivers are slow (or never answer) waits for its own, and leaves the
/// rest to the others.
const IN_FLIGHT_PER_TENANT: usize = 16;
/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Longest `last_error` kept on a task.
const MAX_ERROR_BYTES: usize = 512;
/// How often a host looks for deliveries it was not told of: retries come
/// due, and ends written by other hosts (one that died holding them).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How deliveries are made; `matchbox serve`'s `--callback-*` flags.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where callbacks may go.
    pub policy: CallbackPolicy,
    /// Attempts per end, the first included.
    pub attempts: u32,
    /// The wait before the first retry; each next one doubles (with
    /// jitter: between half and all of it), up to 10 minutes.
    pub backoff: Duration,
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            policy: CallbackPolicy::default(),
            attempts: 8,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Each tenant's signing secret, by name.
pub type Secrets = Arc<dyn Fn(&str) -> Option<Secret> + Send + Sync>;

/// What this host's deliverer has done.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Attempts answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retried: AtomicU64,
    /// Deliveries given up on.
    pub failed: AtomicU64,
}

/// Claims due deliveries from the task table and sends them.
pub struct Deliverer {
    store: Arc<dyn TaskStore>,
    client: reqwest::Client,
    config: WebhookConfig,
    secrets: Secrets,
    stats: DeliveryStats,
    slots: Arc<Semaphore>,
    /// Deliveries in flight, by tenant.
    sending: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// How one attempt went.
#[derive(Debug)]
enum Answer {
    Delivered(u16),
    /// Worth another attempt: a network error, a timeout, a 5xx, a 429.
    Again {
        status: Option<u16>,
        error: String,
    },
    /// Not worth another.
    Final {
        status: Option<u16>,
        error: String,
    },
}

impl Deliverer {
    pub fn new(store: Arc<dyn TaskStore>, config: WebhookConfig, secrets: Secrets) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("matchbox-webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect could lead anywhere, past the rules: not followed.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would reach what the rules refuse.
            .no_proxy()
            .dns_resolver(config.policy.resolver())
            .build()?;
        Ok(Arc::new(Deliverer {
            store,
            client,
            config,
            secrets,
            stats: DeliveryStats::default(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            sending: Default::default(),
        }))
    }

    pub fn policy(&self) -> &CallbackPolicy {
        &self.config.policy
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Whether `tenant` can be sent callbacks (it has a signing secret).
    pub fn signs_for(&self, tenant: &str) -> bool {
        (self.secrets)(tenant).is_some()
    }

    /// Claims and sends deliveries until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        // A lease outlasts an attempt, with time to write its report.
        let lease = self.config.timeout + Duration::from_secs(2);
        let look_every = LOOK_EVERY.min(self.config.backoff).max(Duration::from_millis(50));
        let mut complained = false;
        loop {
            let room = self.slots.available_permits();
            let mut more = false;
            if room > 0 {
                let tenant_room = |tenant: &str| {
                    let sending = self.sending.lock().unwrap();
                    IN_FLIGHT_PER_TENANT.saturating_sub(sending.get(tenant).copied().unwrap_or(0))
                };
                match self.store.claim_callbacks(lease, room, &tenant_room).await {
                    Ok(claims) => {
                        complained = false;
                        more = claims.len() == room;
                        for claim in claims {
                            let permit = self.slots.clone().try_acquire_owned().expect("claimed within the room");
                            *self.sending.lock().unwrap().entry(claim.tenant.clone()).or_default() += 1;
                            let me = self.clone();
                            tokio::spawn(async move {
                                let tenant = claim.tenant.clone();
                                me.deliver(claim).await;
                                let mut sending = me.sending.lock().unwrap();
                                if let Some(n) = sending.get_mut(&tenant) {
                                    *n -= 1;
                                    if *n == 0 {
                                        sending.remove(&tenant);
                                    }
                                }
                                drop(permit);
                            });
                        }
                    }
                    Err(err) if !complained => {
                        complained = true;
                        tracing::warn!(%err, "cannot claim webhook deliveries; retrying");
                    }
                    Err(_) => {}
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.store.callbacks_queued().notified() => {}
                _ = tokio::time::sleep(look_every) => {}
            }
        }
    }

    /// One attempt at a claimed delivery, and its report.
    async fn deliver(&self, claim: CallbackClaim) {
        let task = match self.store.get(&claim.tenant, claim.task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => return,
            Err(err) => {
                // The lease lapses and the delivery is claimed again.
                tracing::warn!(%err, task_id = %claim.task_id, "cannot read a task to deliver its end");
                return;
            }
        };
        let Some(callback) = task.callback.clone() else { return };
        let attempt = callback.progress.attempts + 1;
        let answer = match (self.secrets)(&claim.tenant) {
            Some(secret) => self.attempt(&task, &callback.url, &secret).await,
            None => Answer::Final { status: None, error: "the tenant has no webhook signing secret".into() },
        };
        let report = self.judge(answer, attempt, task.expires_at);
        let state = report.progress.state;
        match self.store.report_callback(&claim, report).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(task_id = %claim.task_id, "a delivery's lease was lost; its report is dropped");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, task_id = %claim.task_id, "cannot record a delivery attempt");
                return;
            }
        }
        let counter = match state {
            CallbackState::Delivered => &self.stats.delivered,
            CallbackState::Failed => &self.stats.failed,
            _ => &self.stats.retried,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(task_id = %claim.task_id, attempt, state = state.as_str(), "webhook attempt");
        if state == CallbackState::Delivered
            && callback.delete_after_delivery
            && let Err(err) = self.store.remove(&claim.tenant, claim.task_id).await
        {
            tracing::warn!(%err, task_id = %claim.task_id, "cannot delete a task whose end was delivered");
        }
    }

    /// Sends `task`'s end to `url`, signed with `secret`.
    async fn attempt(&self, task: &Task, url: &str, secret: &Secret) -> Answer {
        let url = match policy::parse(url) {
            Ok(url) => url,
            Err(refused) => return Answer::Final { status: None, error: refused.0 },
        };
        // A URL naming an address is not resolved: its address is checked
        // here (a name's are, by the client's resolver).
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(refused) = self.config.policy.check_addr(ip)
        {
            return Answer::Final { status: None, error: refused.0 };
        }
        let mut end = task.clone();
        end.callback = None;
        let body = serde_json::to_vec(&end).expect("a task serialises");
        let id = task.task_id.to_string();
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(&id, timestamp, &body))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let code = Some(status.as_u16());
                if status.is_success() {
                    Answer::Delivered(status.as_u16())
                } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    Answer::Again { status: code, error: format!("the receiver answered {status}") }
                } else if status.is_redirection() {
                    Answer::Final {
                        status: code,
                        error: format!("the receiver answered {status}; redirects are not followed"),
                    }
                } else {
                    Answer::Final { status: code, error: format!("the receiver answered {status}, which is final") }
                }
            }
            Err(err) => {
                let error = describe(&err);
                if refused_by_policy(&err) {
                    Answer::Final { status: None, error }
                } else {
                    Answer::Again { status: None, error }
                }
            }
        }
    }

    /// What an attempt's answer makes of the delivery.
    fn judge(&self, answer: Answer, attempt: u32, expires_at: OffsetDateTime) -> CallbackReport {
        let progress = |state, status, error: Option<String>| CallbackProgress {
            state,
            attempts: attempt,
            last_status: status,
            last_error: error.map(|e| crate::support::text::cut(&e, MAX_ERROR_BYTES)),
        };
        match answer {
            Answer::Delivered(status) => {
                CallbackReport { progress: progress(CallbackState::Delivered, Some(status), None), retry_in: None }
            }
            Answer::Final { status, error } => {
                CallbackReport { progress: progress(CallbackState::Failed, status, Some(error)), retry_in: None }
            }
            Answer::Again { status, error } => {
                let failed = |why: String| CallbackReport {
                    progress: progress(CallbackState::Failed, status, Some(format!("{error}; {why}"))),
                    retry_in: None,
                };
                if attempt >= self.config.attempts {
                    return failed(format!("gave up after {attempt} attempts"));
                }
                let wait = self.backoff(attempt);
                if OffsetDateTime::now_utc() + wait >= expires_at {
                    return failed("the task expires before another attempt".into());
                }
                CallbackReport { progress: progress(CallbackState::Pending, status, Some(error)), retry_in: Some(wait) }
            }
        }
    }

    /// The wait after attempt `attempt` failed: the backoff doubled per
    /// attempt, capped, and a random part of its second half taken off, so
    /// that the retries of many ends failed at once do not arrive at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self.config.backoff.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(MAX_BACKOFF);
        let mut byte = [0u8; 2];
        let _ = getrandom::fill(&mut byte);
        let jitter = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
        full.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// An error and its causes, in one line.
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() { "the attempt timed out".to_string() } else { err.to_string() };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether the client's resolver refused every address of the host.
fn refused_by_policy(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}
