//! Serving a router on a socket, with what a listener open to anyone needs:
//! a deadline for a request's headers and one for its body, and a cap on
//! the connections held at once.
//!
//! Without them, a client that opens connections and sends nothing (or a
//! body announced and never sent) pins a task and its buffers per
//! connection for as long as it likes. With them, a connection that has not
//! sent its headers within `header_timeout` (an idle keep-alive connection
//! included) is closed; a body not received within `body_timeout` of its
//! headers fails its request with `408`; and past `max_connections`, new
//! connections are answered `503` and closed at once, so the host's memory
//! stays bounded whatever the clients do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// From the connection's opening, or the end of its last response, to
    /// the end of the next request's headers.
    pub header_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_timeout: Duration,
    /// Connections held at once.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// What a connection past the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 97\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"this host holds its cap of open connections\"}}";

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::map_request(move |request: Request| {
        let deadline = tokio::time::Instant::now() + limits.body_timeout;
        async move { request.map(|body| Body::new(DeadlineBody::new(body, deadline, limits.body_timeout))) }
    }));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1.1 only: telling HTTP/2 from HTTP/1 (hyper-util's `auto`) means
    // reading a connection's first bytes with no deadline, which is the
    // hole a silent client uses. hyper's HTTP/1 connection starts the header
    // deadline at once, and again whenever a keep-alive connection idles.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a moment rather than spin.
                    tracing::debug!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // The answer fits in the socket's empty send buffer: written
            // without waiting, then the connection is closed. Written on the
            // plain socket: tokio's `try_write` on a stream the reactor has
            // not yet seen writable refuses (`WouldBlock`), and under load
            // the client would be closed on with nothing said.
            match stream.into_std() {
                Ok(std_stream) => match std::io::Write::write(&mut &std_stream, BUSY) {
                    Ok(n) if n == BUSY.len() => {}
                    // Not written at once (the socket not writable yet, or
                    // a short write): the rest is written by a task of its
                    // own, for a second at most, so the loop never waits
                    // and the client is still told.
                    written => {
                        let from = written.unwrap_or(0);
                        if let Ok(stream) = TcpStream::from_std(std_stream) {
                            tokio::spawn(tell_busy(stream, from));
                        }
                    }
                },
                Err(err) => tracing::debug!(%err, "could not tell a connection past the cap"),
            }
            continue;
        };
        let service = TowerToHyperService::new(
            router.clone().map_request(|request: Request<hyper::body::Incoming>| request.map(Body::new)),
        );
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Writes the rest of [`BUSY`], from byte `from`, within a second, then
/// closes the connection.
async fn tell_busy(mut stream: TcpStream, from: usize) {
    let write = tokio::io::AsyncWriteExt::write_all(&mut stream, &BUSY[from..]);
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: tokio::time::Instant, timeout: Duration) -> Self {
        DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep_until(deadline)), timeout }
    }
}

/// The error of a body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} (--body-timeout)", humantime::format_duration(*.0))]
pub struct BodyTimedOut(pub Duration);

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err`, or what caused it, is a body that did not arrive in time.
pub fn timed_out<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(timed_out) = e.downcast_ref::<BodyTimedOut>() {
            return Some(timed_out);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_answer_says_its_own_length() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.lines().any(|l| l == format!("content-length: {}", body.len())), "{head}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
