//! The capture's hot path: copying a bounded prefix of each body as it
//! streams through, and handing the record over when the exchange ends.
//!
//! The record is shared by the request body (which may still be uploading
//! from a task of its own) and the response body (streamed by hyper); it is
//! submitted when the last of them is dropped, however the exchange ended:
//! answered, failed, timed out or abandoned by the caller.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{Capture, Captured, FlatHeaders};
use crate::server::http::{Body, EdgeErrorKind};

/// Which body a [`TapBody`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug)]
struct Progress {
    record: Captured,
    /// When the response body ended (or failed).
    finished: Option<Instant>,
    /// The response body's exact length, when known up front.
    expected: Option<u64>,
    /// The request's declared `content-length`.
    declared: Option<u64>,
    /// Whether the request body was read to its end (else what was kept may
    /// be only its start, however short).
    request_read: bool,
    /// Whether the request body failed (the caller's fault: a malformed chunk,
    /// a connection cut mid-body), which makes the exchange `incomplete`
    /// whatever the edge answered.
    request_failed: bool,
    /// Whether the record was handed over already (see [`Shared::settle`]).
    submitted: bool,
}

impl Progress {
    /// Whether the response body reached its end (or its declared length,
    /// where hyper stops reading).
    fn response_done(&self) -> bool {
        self.finished.is_some() || self.expected == Some(self.record.response_body.size)
    }

    /// Whether the exchange is over: both bodies read to their ends.
    fn over(&self) -> bool {
        self.response_done() && self.request_read
    }

    /// The record as it stands, with the facts only its end settles; leaves a
    /// placeholder behind.
    fn seal(&mut self, started: Instant) -> Captured {
        let complete = self.response_done();
        let mut record = std::mem::replace(&mut self.record, placeholder());
        if self.request_failed {
            // The caller broke its body off: its size is what arrived, but
            // that is not the body it meant to send. Marked short, so that a
            // replay asks for a body instead of sending the start of one as
            // if whole (the app would take it for the webhook itself). Not
            // when all it declared had arrived (an HTTP/2 caller may reset
            // its stream after the last byte).
            let body = &mut record.request_body;
            body.truncated |= self.declared != Some(body.size);
        } else if !self.request_read {
            // Not read to its end (tunnel offline, body refused, caller gone):
            // what was kept is at most a start, and the declared size is the
            // truth. Without bodies kept, a body of unknown length is marked
            // so too: its size (0) is not known to be the truth, and a replay
            // must not send it as empty.
            let body = &mut record.request_body;
            body.size = body.size.max(self.declared.unwrap_or(0));
            body.truncated |= match body.data {
                Some(_) => self.declared.is_none_or(|n| n > body.kept() as u64),
                None => self.declared.is_none(),
            };
        }
        if (!complete || self.request_failed) && record.outcome == "ok" {
            // The caller went away, or the body stopped, before its end.
            record.outcome = "incomplete";
        }
        record.duration = self.finished.unwrap_or_else(Instant::now).duration_since(started);
        self.submitted = true;
        record
    }
}

#[derive(Debug)]
struct Shared {
    hub: Arc<Capture>,
    /// The record's id, outside the lock: it goes to the client in the
    /// request's head.
    id: Bytes,
    started: Instant,
    progress: Mutex<Progress>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn data(&self, side: Side, chunk: &[u8]) {
        let (limit, budget) = (self.hub.config.body_limit, &self.hub.budget);
        let mut p = self.lock();
        match side {
            Side::Request => p.record.request_body.push(chunk, limit, budget),
            Side::Response => {
                p.record.response_body.push(chunk, limit, budget);
                self.settle(p);
            }
        }
    }

    fn request_read(&self) {
        let mut p = self.lock();
        p.request_read = true;
        self.settle(p);
    }

    /// Hands the record over as soon as the exchange is over, rather than
    /// when hyper drops the bodies: it may do so only after the caller has
    /// the whole answer (it polls a body again to see its end), and a
    /// listing made right away should show the request.
    fn settle(&self, mut p: std::sync::MutexGuard<'_, Progress>) {
        if p.submitted || !p.over() {
            return;
        }
        if p.finished.is_none() {
            p.finished = Some(Instant::now());
        }
        let record = p.seal(self.started);
        drop(p);
        self.hub.submit(record);
    }

    fn request_failed(&self) {
        self.lock().request_failed = true;
    }

    fn finish(&self, failed: bool) {
        let mut p = self.lock();
        if p.finished.is_none() {
            p.finished = Some(Instant::now());
            if failed {
                p.record.outcome = "incomplete";
            }
        }
        self.settle(p);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let p = self.progress.get_mut().unwrap_or_else(|p| p.into_inner());
        if !p.submitted {
            let record = p.seal(self.started);
            self.hub.submit(record);
        }
    }
}

fn placeholder() -> Captured {
    Captured {
        id: Bytes::new(),
        tunnel_id: String::new(),
        at: std::time::SystemTime::UNIX_EPOCH,
        method: Method::GET,
        target: Bytes::new(),
        client_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        replay: None,
        request_headers: Default::default(),
        request_body: Default::default(),
        status: None,
        response_headers: None,
        response_body: Default::default(),
        duration: Default::default(),
        outcome: "",
    }
}

/// One exchange being captured.
#[derive(Debug)]
pub struct Tap(Arc<Shared>);

impl Tap {
    pub(super) fn new(hub: Arc<Capture>, record: Captured, declared: Option<u64>) -> Self {
        Self(Arc::new(Shared {
            hub,
            id: record.id.clone(),
            started: Instant::now(),
            progress: Mutex::new(Progress {
                record,
                finished: None,
                expected: None,
                declared,
                request_read: false,
                request_failed: false,
                submitted: false,
            }),
        }))
    }

    /// The record's id (`req_…`).
    pub fn id(&self) -> &Bytes {
        &self.0.id
    }

    /// Whether the request's body was read to its end and kept whole: the
    /// record holds all of the request, as a replay needs it.
    pub fn request_recorded_whole(&self) -> bool {
        let p = self.0.lock();
        p.request_read && !p.request_failed && p.record.request_body.data.is_some() && !p.record.request_body.truncated
    }

    /// Wraps the request body so its bytes are copied as they are forwarded.
    /// Dropping the wrapper unread records the body as not kept.
    pub fn request_body<B: HttpBody>(&self, body: B) -> TapBody<B> {
        if body.is_end_stream() {
            self.0.request_read();
        }
        TapBody { inner: body, tap: Some(self.0.clone()), side: Side::Request }
    }

    /// Records the response head and wraps its body; the record is complete
    /// when that body has been sent (or given up on).
    pub fn response(self, mut resp: Response<Body>) -> Response<Body> {
        let status = resp.status();
        let no_body = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || resp.body().is_end_stream();
        {
            let mut p = self.0.lock();
            let is_head = p.record.method == Method::HEAD;
            p.record.status = Some(status);
            p.record.response_headers = Some(FlatHeaders::copy(resp.headers()));
            p.record.outcome = match resp.extensions().get::<EdgeErrorKind>() {
                // The edge's answer to a body that broke off (400 bad-request-body).
                _ if p.request_failed => "incomplete",
                Some(kind) => kind.0,
                None => "ok",
            };
            // hyper stops reading a body once it has sent the declared length,
            // without waiting for the end: that length marks it complete too.
            p.expected = resp
                .body()
                .size_hint()
                .exact()
                .or_else(|| resp.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok());
            if no_body || is_head {
                p.finished = Some(Instant::now());
            }
            self.0.settle(p);
        }
        let body = std::mem::replace(resp.body_mut(), crate::server::http::full(Bytes::new()));
        *resp.body_mut() = TapBody { inner: body, tap: Some(self.0), side: Side::Response }.boxed_unsync();
        resp
    }
}

/// A body that copies what passes through it into a [`Tap`].
#[derive(Debug)]
pub struct TapBody<B> {
    inner: B,
    tap: Option<Arc<Shared>>,
    side: Side,
}

impl<B> TapBody<B> {
    /// A body passed through untouched (capture is off).
    pub fn plain(body: B) -> Self {
        Self { inner: body, tap: None, side: Side::Request }
    }
}

impl<B> HttpBody for TapBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(tap), Poll::Ready(frame)) = (&this.tap, &polled) {
            match frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        tap.data(this.side, data);
                    }
                }
                Some(Err(_)) if this.side == Side::Response => tap.finish(true),
                None if this.side == Side::Response => tap.finish(false),
                None => tap.request_read(),
                Some(Err(_)) => tap.request_failed(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if let (true, Some(tap)) = (end, &self.tap) {
            match self.side {
                Side::Response => tap.finish(false),
                Side::Request => tap.request_read(),
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
