//! A webhook receiver of a test's own: a real HTTP server on a loopback
//! port that records every request, checks its signature the way the
//! Standard Webhooks specification tells a receiver to (written here from
//! the specification, not with the host's signer), and answers as the test
//! plans: a status, or no answer at all (a receiver that hangs, or a host
//! killed while its request is open).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use serde_json::Value;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Keep the request open and never answer.
    Hold,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// Whether `webhook-signature` is the HMAC of id, timestamp and body
    /// under the receiver's secret.
    pub signed: bool,
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
    /// The same, on the wall clock.
    pub at_wall: time::OffsetDateTime,
    /// Which attempt of its id this was, from 1.
    pub attempt: usize,
    pub answer: Answer,
}

type Plan = Box<dyn FnMut(&str, usize) -> Answer + Send>;

struct Inner {
    key: Vec<u8>,
    plan: Plan,
    received: Vec<Received>,
    per_id: HashMap<String, usize>,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// A receiver for callbacks signed with `secret` (`whsec_…`), answering
    /// the `attempt`-th request of each webhook id as `plan` says.
    pub async fn start(secret: &str, plan: impl FnMut(&str, usize) -> Answer + Send + 'static) -> WebhookReceiver {
        let key = STANDARD
            .decode(secret.trim().strip_prefix("whsec_").expect("a secret starts with whsec_"))
            .expect("a secret is base64 after its prefix");
        let inner =
            Arc::new(Mutex::new(Inner { key, plan: Box::new(plan), received: Vec::new(), per_id: HashMap::new() }));
        let app = axum::Router::new().fallback(axum::routing::post(receive)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the receiver serves");
        });
        WebhookReceiver { addr, inner, server }
    }

    /// The URL of `path` on the receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// The requests so far once there are at least `n`, waiting up to
    /// `bound`; panics naming what arrived if they do not.
    pub async fn wait_for(&self, n: usize, bound: Duration) -> Vec<Received> {
        let deadline = Instant::now() + bound;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                let ids: Vec<_> = got.iter().map(|r| (&r.id, r.attempt, r.answer)).collect();
                panic!("the receiver got {} requests within {bound:?}, not {n}: {ids:?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Whether `signatures` (space-separated `v1,<base64>`) holds the HMAC of
/// `{id}.{timestamp}.{body}` under `key`, compared in constant time.
pub fn verify(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    signatures.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
        let Ok(sig) = STANDARD.decode(sig) else { return false };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let at = Instant::now();
    let at_wall = time::OffsetDateTime::now_utc();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let answer = {
        let mut inner = inner.lock().unwrap();
        let signed = verify(&inner.key, &id, &timestamp, &body, &signature);
        let attempt = {
            let n = inner.per_id.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let answer = (inner.plan)(&id, attempt);
        inner.received.push(Received {
            id,
            timestamp: timestamp.parse().unwrap_or(-1),
            signed,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at,
            at_wall,
            attempt,
            answer,
        });
        answer
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hold => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}
