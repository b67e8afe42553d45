//! The server's quinn runtime: tokio's, with connection drivers that let
//! concurrent requests share packets and syscalls.
//!
//! quinn sends a connection's packets from its driver task, which every stream
//! write wakes. On tokio's multi-threaded scheduler a woken task takes the
//! worker's LIFO slot and runs next, so under load the driver ran after each
//! edge task's write and sent that one request's packet in a `sendmsg` of its
//! own: 0.89 per request at concurrency 64, where the client, on a
//! current-thread runtime whose FIFO order lets writes pile up, made 0.17.
//!
//! While more than one request is in flight ([`InFlight`]), each wake-up of a
//! driver first yields to the scheduler ([`tokio::task::yield_now`]), which
//! defers it until the worker has run the tasks already ready (or until its
//! periodic maintenance). The writes of those tasks then go out in one pass,
//! several packets to a syscall (GSO): 0.24 `sendmsg` per request, measured.
//! A lone request is not deferred: with nothing to batch, the yield would only
//! add a trip through the scheduler to its latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Requests being forwarded through a server's tunnels right now.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one request until the guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Whether other requests could share a driver's next send.
    fn concurrent(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 1
    }
}

/// One request counted in [`InFlight`].
#[derive(Debug)]
pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`TokioRuntime`], except that spawned drivers are `Deferred` (they yield once) under load.
#[derive(Debug)]
pub struct BatchingRuntime {
    in_flight: InFlight,
}

impl BatchingRuntime {
    /// Defers drivers while `in_flight` counts more than one request.
    pub fn new(in_flight: InFlight) -> Self {
        Self { in_flight }
    }
}

impl Runtime for BatchingRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: BoxFuture) {
        tokio::spawn(Deferred { inner: future, in_flight: self.in_flight.clone(), yielding: None });
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

/// Polls `inner`, after yielding once to the scheduler per wake-up while
/// other requests are in flight.
struct Deferred {
    inner: BoxFuture,
    in_flight: InFlight,
    /// The yield in progress, between a wake-up and the poll it leads to.
    yielding: Option<BoxFuture>,
}

impl Future for Deferred {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.yielding.is_none() && !this.in_flight.concurrent() {
            return this.inner.as_mut().poll(cx);
        }
        let yielding = this.yielding.get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
        if yielding.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.yielding = None;
        this.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Spawns, through the runtime, a future that records `name`, then a plain
    /// task that records "other", and returns the order they ran in.
    async fn order(runtime: &BatchingRuntime) -> Vec<&'static str> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seen = log.clone();
        runtime.spawn(Box::pin(async move {
            seen.lock().unwrap().push("driver");
            let _ = tx.send(());
        }));
        let seen = log.clone();
        tokio::spawn(async move { seen.lock().unwrap().push("other") }).await.unwrap();
        rx.await.unwrap();
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    }

    /// Under concurrency a driver runs after the tasks that were ready when it
    /// was woken, the order that lets their writes batch; alone it runs at once.
    /// Either way it runs to completion.
    #[tokio::test(flavor = "current_thread")]
    async fn drivers_defer_only_while_requests_overlap() {
        let in_flight = InFlight::default();
        let runtime = BatchingRuntime::new(in_flight.clone());
        assert_eq!(order(&runtime).await, ["driver", "other"], "no request in flight");
        let _one = in_flight.enter();
        assert_eq!(order(&runtime).await, ["driver", "other"], "one request in flight");
        let two = in_flight.enter();
        assert_eq!(order(&runtime).await, ["other", "driver"], "two requests in flight");
        drop(two);
        assert_eq!(order(&runtime).await, ["driver", "other"], "the guard gave its count back");
    }
}
