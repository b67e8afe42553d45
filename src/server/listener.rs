//! The public TCP listener: accepting connections and driving each through
//! hyper, with bounds on how long a connection may hold its socket (a file
//! descriptor) without using it.
//!
//! hyper bounds a slow HTTP/1 head (`header_read_timeout`), but a connection
//! that sends nothing never reaches it: hyper-util's `auto` builder first reads
//! the bytes that tell HTTP/1 from HTTP/2, with no timer. And an HTTP/2
//! connection may stay open without a request for ever. So each connection is
//! watched here: one that has started no request within
//! [`HttpLimits::header_timeout`] (its first) or [`HttpLimits::idle_timeout`]
//! (later) is shut down gracefully, so a request still in flight finishes. An
//! HTTP/2 peer must also answer keep-alive pings, which ends connections whose
//! peer went silent, graceful shutdown included (it waits for a ping's answer).

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{State, http};

/// Default time a connection has to send a complete request head, counted
/// from the accept for its first request.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may go without starting a request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default interval of HTTP/2 keep-alive pings (sent when nothing was read for that long).
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time an HTTP/2 peer has to answer a ping.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default limit of concurrent streams per HTTP/2 connection (hyper's own default, made explicit).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 200;

/// Timers and limits of the public HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time a connection has to send a complete request head (its first one
    /// counted from the accept), before it is closed.
    pub header_timeout: Duration,
    /// Time a connection may go without starting a request before it is shut
    /// down gracefully (HTTP/1 keep-alive connections are also closed by
    /// hyper after `header_timeout`).
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Duration,
    /// Time an HTTP/2 peer has to answer a ping before the connection is closed.
    pub h2_keep_alive_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            h2_keep_alive_interval: DEFAULT_H2_KEEP_ALIVE_INTERVAL,
            h2_keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Longest timeout accepted: hyper and the connection watcher add timeouts to
/// the clock, which must not overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

impl HttpLimits {
    /// Checks that every timeout is positive and at most [`MAX_TIMEOUT`], and
    /// that HTTP/2 connections may open at least one stream.
    pub fn validate(&self) -> Result<(), String> {
        let timeouts = [
            ("header timeout", self.header_timeout),
            ("idle timeout", self.idle_timeout),
            ("HTTP/2 keep-alive interval", self.h2_keep_alive_interval),
            ("HTTP/2 keep-alive timeout", self.h2_keep_alive_timeout),
        ];
        for (name, value) in timeouts {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(format!("the HTTP {name} must be between 1 ms and {MAX_TIMEOUT:?}, not {value:?}"));
            }
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err("HTTP/2 connections must allow at least one stream".into());
        }
        Ok(())
    }
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    // The keep-alive ping costs hyper a mutex per received HTTP/2 frame; webhooks
    // arrive over HTTP/1 far more often, and a dead HTTP/2 peer would keep its
    // socket for ever without it.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .max_concurrent_streams(limits.h2_max_concurrent_streams);
    builder
}

/// Serves HTTP on `listener` until `shutdown`, then lets in-flight requests
/// finish for up to `grace` and closes the connections still open.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken, grace: Duration) {
    let limits = state.config.http;
    let builder = builder(&limits);
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let requests = Arc::new(AtomicU64::new(0));
        let service = {
            let (state, requests) = (state.clone(), requests.clone());
            hyper::service::service_fn(move |req| {
                requests.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                async move { Ok::<_, Infallible>(http::handle(state, req, peer).await) }
            })
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let span = tracing::debug_span!("http", ?peer);
        connections.spawn(drive(conn, requests, limits, shutdown.clone(), cut.clone()).instrument(span));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("in-flight requests still running after {grace:?}; closing them");
        cut.cancel();
    }
}

/// Runs one connection to its end: shuts it down gracefully at `shutdown` or
/// once it has started no request (`requests` unchanged) for a while, and
/// drops it at `cut`.
async fn drive<C>(
    conn: C,
    requests: Arc<AtomicU64>,
    limits: HttpLimits,
    shutdown: CancellationToken,
    cut: CancellationToken,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let idle = tokio::time::sleep(limits.header_timeout);
    let mut idle = pin!(idle);
    let (mut seen, mut closing) = (0, false);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(%err, "http connection ended with an error");
                }
                return;
            }
            () = cut.cancelled() => return,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = idle.as_mut(), if !closing => {
                let started = requests.load(Ordering::Relaxed);
                if started == seen {
                    tracing::debug!(requests = started, "closing an idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    seen = started;
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        assert_eq!(HttpLimits::default().validate(), Ok(()));
        let zero = HttpLimits { idle_timeout: Duration::ZERO, ..HttpLimits::default() };
        assert!(zero.validate().unwrap_err().contains("idle timeout"));
        let huge = HttpLimits { header_timeout: Duration::MAX, ..HttpLimits::default() };
        assert!(huge.validate().unwrap_err().contains("header timeout"));
        let no_streams = HttpLimits { h2_max_concurrent_streams: 0, ..HttpLimits::default() };
        assert!(no_streams.validate().is_err());
    }
}
