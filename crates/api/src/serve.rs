//! Serving the router over HTTP/1.1, with bounds on what slow, idle or hostile clients can
//! hold: a deadline for each request's header and one for its body, and a cap on the
//! connections open at once. What a connection can hold at most, and why the defaults are
//! what they are, is in docs/operations.md ("Slow and hostile clients").

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::Request;
use axum::Router;
use bytes::BytesMut;
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::error::BodyTimedOut;
use crate::metrics::Metrics;

/// Default of `--header-read-timeout-ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default of `--body-read-timeout-ms`.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of `--max-http-connections`.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: u32 = 1_024;

/// Most bytes of a request header a connection buffers; a longer header is answered 431.
/// (hyper's own default is about 400 KiB; real headers, tokens included, fit in a few KiB.)
pub const HEADER_LIMIT: usize = 64 * 1024;

/// Connections the kernel completes and holds until the server accepts them (it caps this at
/// `net.core.somaxconn`). The standard library's and tokio's default, 128, is too few for a
/// burst of clients: beyond it the kernel drops their handshakes' last packets, and each such
/// client waits a second or more for a retransmission before the server sees it.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `address` with a backlog of [`LISTEN_BACKLOG`].
///
/// # Errors
/// The address cannot be bound (in use, not this machine's, not allowed).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A timeout flag's largest value, a day.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// A timeout flag's values: from 1 ms to a day (a deadline must stay within the clock's range).
fn milliseconds() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS)
}

/// The bounds of the HTTP connections.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// How long a client has to send a whole request header, in milliseconds: counted from
    /// the connection's opening, and on a kept-alive connection from the end of the previous
    /// response, so it is also how long an idle kept-alive connection stays open.
    #[arg(long, env = "CUTOVER_HEADER_READ_TIMEOUT_MS", value_parser = milliseconds())]
    #[arg(default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS)]
    pub header_read_timeout_ms: u64,

    /// How long a client has to send a whole request body once its header has arrived, in
    /// milliseconds; a body still incomplete then is answered 408 and the connection closed.
    #[arg(long, env = "CUTOVER_BODY_READ_TIMEOUT_MS", value_parser = milliseconds())]
    #[arg(default_value_t = DEFAULT_BODY_READ_TIMEOUT_MS)]
    pub body_read_timeout_ms: u64,

    /// Most HTTP connections open at once. Beyond it the server accepts no more until one
    /// closes: new clients wait in the kernel's listen backlog.
    #[arg(
        long,
        env = "CUTOVER_MAX_HTTP_CONNECTIONS",
        default_value_t = DEFAULT_MAX_HTTP_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_http_connections: u32,
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then accepts no more connections,
/// lets each open one finish its request in flight, and returns once all have closed. A
/// connection ended before its request reached the router is counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    metrics: Metrics,
    limits: &ConnectionArgs,
    shutdown: impl Future<Output = ()>,
) {
    let body_timeout = Duration::from_millis(limits.body_read_timeout_ms);
    let service = TowerToHyperService::new(app.layer(axum::middleware::map_request(
        move |request: Request| async move { with_body_deadline(request, body_timeout) },
    )));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_header_size(HEADER_LIMIT)
        .max_buf_size(HEADER_LIMIT);
    let slots = Arc::new(Semaphore::new(limits.max_http_connections as usize));
    let connections = GracefulShutdown::new();
    let mut listener = listener;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first, then a connection: at the cap, clients wait in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        // (The slots are never closed.)
        let Ok(slot) = slot else { break };
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            // axum's accept: retries, and waits a second after running out of descriptors
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
                if let Some(reason) = refusal(&e) {
                    metrics.refused_before_routing(reason);
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Why hyper ended a connection before its request reached the router, if it did: `malformed`
/// (a request line or header it cannot parse, a NUL byte in a header among them; answered
/// 400), `head_too_large` (a URI or header beyond the limits; 414 or 431) or `header_timeout`
/// (no complete header within `--header-read-timeout-ms`; closed without an answer).
fn refusal(error: &hyper::Error) -> Option<&'static str> {
    if error.is_parse_too_large() {
        Some("head_too_large")
    } else if error.is_parse() {
        Some("malformed")
    } else if error.is_timeout() {
        Some("header_timeout")
    } else {
        None
    }
}

/// `request`, whose body fails with [`BodyTimedOut`] unless it has all arrived within
/// `timeout` (from now, the end of its header).
fn with_body_deadline(request: Request, timeout: Duration) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    request.map(|body| {
        Body::new(DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            pending: BytesMut::new(),
            trailers: None,
        })
    })
}

/// The size of the pieces [`DeadlineBody`] passes its data on in (the last may be shorter).
const BODY_PIECE: usize = 16 * 1024;

/// A request body with a deadline for all of it, passed on in pieces of [`BODY_PIECE`] bytes.
///
/// tower-http's `RequestBodyTimeout` bounds the wait for each chunk instead, which a client
/// sending a byte at a time never meets. And each small read of the connection is a slice of
/// a read buffer of its own (8 KiB): kept as they come, as a handler that collects the body
/// keeps them, a body sent a byte at a time would hold 8 KiB per byte; copied together here,
/// it holds what it sent.
struct DeadlineBody {
    body: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// Data received and not yet passed on, less than a piece.
    pending: BytesMut,
    /// Trailers received behind `pending`, passed on after it.
    trailers: Option<Frame<Bytes>>,
}

impl DeadlineBody {
    /// `pending` as a frame, leaving it empty.
    fn piece(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(
            std::mem::take(&mut self.pending).freeze(),
        ))))
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.pending.extend_from_slice(&data);
                        if self.pending.len() >= BODY_PIECE {
                            return self.piece();
                        }
                    }
                    Err(trailers) if self.pending.is_empty() => {
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                    Err(trailers) => {
                        self.trailers = Some(trailers);
                        return self.piece();
                    }
                },
                Poll::Ready(None) if !self.pending.is_empty() => return self.piece(),
                Poll::Ready(end_or_error) => return Poll::Ready(end_or_error),
                Poll::Pending => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        let timed_out = BodyTimedOut(self.timeout);
                        return Poll::Ready(Some(Err(axum::Error::new(timed_out))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.trailers.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.body.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(pending));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, StreamExt as _};

    use super::*;

    fn byte() -> Result<Bytes, std::io::Error> {
        Ok(Bytes::from_static(b"a"))
    }

    #[tokio::test]
    async fn a_body_sent_a_byte_at_a_time_is_passed_on_in_pieces() {
        let body = Body::from_stream(stream::iter((0..40_000).map(|_| byte())));
        let request = with_body_deadline(Request::new(body), Duration::from_secs(5));
        let pieces: Vec<usize> = request
            .into_body()
            .into_data_stream()
            .map(|piece| piece.unwrap().len())
            .collect()
            .await;
        assert_eq!(pieces, [BODY_PIECE, BODY_PIECE, 40_000 - 2 * BODY_PIECE]);
    }

    #[tokio::test]
    async fn a_body_that_has_not_all_arrived_by_its_deadline_fails() {
        let body = Body::from_stream(stream::iter([byte()]).chain(stream::pending()));
        let request = with_body_deadline(Request::new(body), Duration::from_millis(50));
        let started = std::time::Instant::now();
        let read = axum::body::to_bytes(request.into_body(), usize::MAX).await;
        let error = read.unwrap_err().to_string();
        assert!(error.contains("did not arrive within 50 ms"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
