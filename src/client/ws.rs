//! Serving a tunnel over the WebSocket-JSON gateway (seed 001's protocol), for
//! networks where UDP (and so QUIC) is blocked.
//!
//! One socket carries every request, each answered as a whole JSON message:
//! bodies are buffered and capped by the server's limit, which it announces in
//! `x-hookway-max-body` on the upgrade response.
//!
//! On stop it drains as the QUIC client does (see the `drain` module): it
//! tells a server that announces `x-hookway-accepts-leaving` that it is
//! leaving (`{"type":"leaving"}`, our addition to seed 001's messages), so
//! its tunnel goes offline at once; a request that still arrives gets a
//! `response` message with the edge's 503 "going offline"; then a normal
//! close frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Attempt, CONNECT_TIMEOUT, ClientError, Event, LocalApp, RequestLog, WsUrl, drain, leaving_linger};
use crate::quic::{close, tls};
use crate::shutdown::Shutdown;
use crate::wire::ServerHello;
use crate::wsjson::{self, DEFAULT_MAX_BODY, ServerMessage};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The largest message accepted from the server, whatever it announces.
const MAX_MESSAGE: usize = 512 << 20;

/// What the upgrade response told us.
struct Welcome {
    hello: ServerHello,
    max_body: usize,
    ping_interval: Duration,
    /// How long the server's edge waits for an answer: past it, the caller
    /// has had a 504 and the answer would go nowhere. `None`: not said.
    request_timeout: Option<Duration>,
    /// How long the upgrade took: at least two round trips (TCP's, then the
    /// upgrade's), the estimate a leaving client lingers by.
    handshake: Duration,
}

/// Connects, serves until the socket ends or `shutdown`; (connected, how it ended).
pub(super) async fn session(
    url: &WsUrl,
    app: &LocalApp,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    shutdown: &Shutdown,
    reconnected: bool,
) -> (bool, Attempt) {
    let (ws, welcome) = tokio::select! {
        _ = shutdown.stop_token().cancelled() => return (false, Attempt::Stopped),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect(url)) => match r {
            Ok(Ok(pair)) => pair,
            Ok(Err(end)) => return (false, end),
            Err(_) => return (false, Attempt::Retry("timed out connecting to the WebSocket gateway".into())),
        },
    };
    on_event(Event::Connected { hello: welcome.hello.clone(), reconnected });
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(write(sink, rx));
    let requests = TaskTracker::new();
    let abandon = GiveUp::default();
    let end = match serve(&mut stream, &tx, &requests, &abandon, app, on_event, &welcome, shutdown).await {
        Some(end) => end,
        None => {
            // As over QUIC, but in the protocol's own terms: the server
            // routes nothing new here once it reads `leaving`, and a request
            // it sent before that is refused with the 503 the edge gives for
            // a refused stream (which it then takes for the tunnel going
            // offline: its offline reply, if set).
            let mut linger = Duration::ZERO;
            if welcome.hello.accepts_leaving {
                // (Bounded as over QUIC: a second ctrl-c must still quit at once.)
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::text(wsjson::leaving()))) => {}
                    _ = shutdown.cut_token().cancelled() => {}
                }
                // (Half the upgrade's two round trips or more: at least one.)
                linger = leaving_linger(welcome.handshake / 2);
            }
            let subdomain = &welcome.hello.subdomain;
            let refuse = async {
                while let Ok(next) = next_request(&mut stream, &tx).await {
                    if let Some(req) = next {
                        let _ = tx.send(Message::text(going_offline(&req.id, subdomain))).await;
                    }
                }
            };
            drain::drain(&requests, shutdown, on_event, refuse, linger).await;
            let frame = CloseFrame { code: CloseCode::Normal, reason: "client shutting down".into() };
            // Bounded like the writer below: a server that stopped reading
            // would otherwise hold the client here with the queue full.
            let _ = tokio::time::timeout(CLOSE_WAIT, tx.send(Message::Close(Some(frame)))).await;
            Attempt::Stopped
        }
    };
    // What the app is still answering is given up with the connection: each
    // gets its line, saying so, as over QUIC (they went unlogged).
    requests.close();
    abandon.now(given_up(&end));
    let _ = tokio::time::timeout(CLOSE_WAIT, requests.wait()).await;
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
    (true, end)
}

/// Tells the requests still in the app's hands that they are given up, and why.
#[derive(Clone, Default)]
struct GiveUp {
    token: CancellationToken,
    why: Arc<std::sync::OnceLock<&'static str>>,
}

impl GiveUp {
    fn now(&self, why: &'static str) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    /// Once given up: why.
    async fn wait(&self) -> &'static str {
        self.token.cancelled().await;
        self.why.get().copied().unwrap_or("not answered before the connection closed")
    }
}

/// Why a request still in the app's hands went unanswered, by how its
/// connection ended (the words a QUIC client's log uses).
fn given_up(end: &Attempt) -> &'static str {
    match end {
        Attempt::Stopped => "not answered before this client stopped",
        Attempt::Fatal(_) => "not answered before the server ended the session",
        Attempt::Retry(_) => "not answered before the connection closed",
    }
}

/// Longest the client waits, when it stops, to queue its close frame and for
/// the writer to send what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Sends what `rx` carries, flushing once per batch; ends after a close frame.
async fn write(mut sink: SplitSink<Socket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        let close = msg.is_close();
        if sink.feed(msg).await.is_err() {
            return;
        }
        while let Ok(msg) = rx.try_recv() {
            if sink.feed(msg).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() || close {
            return;
        }
    }
}

/// Forwards the server's requests to the local app, each in a task of
/// `requests`, until the socket ends (how it ended) or a stop is asked for (`None`).
#[allow(clippy::too_many_arguments)]
async fn serve(
    stream: &mut SplitStream<Socket>,
    tx: &mpsc::Sender<Message>,
    requests: &TaskTracker,
    abandon: &GiveUp,
    app: &LocalApp,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    welcome: &Welcome,
    shutdown: &Shutdown,
) -> Option<Attempt> {
    // The server pings on an interval: three missed intervals mean it is gone.
    let silence_limit = (welcome.ping_interval * 3).max(Duration::from_secs(5));
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    loop {
        let next = tokio::select! {
            _ = shutdown.stop_token().cancelled() => return None,
            _ = &mut silence => return Some(Attempt::Retry(format!("no word from the server for {silence_limit:?}"))),
            next = next_request(stream, tx) => next,
        };
        silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
        match next {
            Ok(Some(req)) => {
                let (app, tx, on_event, abandon) = (app.clone(), tx.clone(), on_event.clone(), abandon.clone());
                let (max_body, timeout) = (welcome.max_body, welcome.request_timeout);
                requests.spawn(async move {
                    let (started, mut unanswered) = (Instant::now(), request_log(&req));
                    // (Without this an app that never answered held a
                    // connection and a task for every such request, for good.)
                    let log = tokio::select! {
                        (reply, log) = answer(&app, req, max_body) => {
                            let _ = tx.send(Message::text(reply)).await;
                            log
                        }
                        why = abandon.wait() => {
                            unanswered.duration = started.elapsed();
                            unanswered.error = Some(why.to_owned());
                            unanswered
                        }
                        timeout = async {
                            match timeout {
                                Some(timeout) => tokio::time::sleep(timeout).await,
                                None => std::future::pending().await,
                            };
                            timeout
                        } => {
                            unanswered.duration = started.elapsed();
                            unanswered.error = Some(format!(
                                "not answered within the server's request timeout ({:?}): the caller got a 504",
                                timeout.unwrap_or_default()
                            ));
                            unanswered
                        }
                    };
                    on_event(Event::Request(log));
                });
            }
            Ok(None) => {}
            Err(end) => return Some(end),
        }
    }
}

/// Reads the server's next message: a request to answer, `None` for one
/// already dealt with (a ping answered, an error logged), or how the socket ended.
/// Cancelling it (a stop, the silence timer) loses at most a pong or an error
/// reply being queued, never a request: a request returns as soon as it is read.
async fn next_request(
    stream: &mut SplitStream<Socket>,
    tx: &mpsc::Sender<Message>,
) -> Result<Option<wsjson::Request>, Attempt> {
    let data = match stream.next().await {
        Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
        Some(Ok(Message::Binary(data))) => data,
        Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
        Some(Ok(_)) => return Ok(None),
        Some(Err(err)) => return Err(Attempt::Retry(format!("WebSocket error: {err}"))),
        None => return Err(Attempt::Retry("the server closed the connection".into())),
    };
    match wsjson::parse_server_message(&data) {
        Ok(ServerMessage::Request(req)) => return Ok(Some(req)),
        Ok(ServerMessage::Ping) => {
            let _ = tx.send(Message::text(wsjson::pong())).await;
        }
        Ok(ServerMessage::Pong) => {}
        Ok(ServerMessage::Error(message)) => tracing::warn!(%message, "the server reported an error"),
        Err(err) => {
            tracing::warn!(reason = %err.reason, "malformed message from the server");
            let _ = tx.send(Message::text(wsjson::error(err.id.as_deref(), &err.reason))).await;
        }
    }
    Ok(None)
}

/// The answer to a request that arrives while the client drains: the 503 the
/// edge gives when a QUIC client refuses a request for the same reason.
fn going_offline(id: &str, subdomain: &str) -> String {
    let message = format!("tunnel '{subdomain}' is going offline: its client is stopping");
    error_response(id, StatusCode::SERVICE_UNAVAILABLE, "tunnel-offline", &message)
}

/// A response message in the edge's own error form (`x-hookway-error: kind`,
/// `hookway: message` as plain text).
fn error_response(id: &str, status: StatusCode, kind: &'static str, message: &str) -> String {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert("x-hookway-error", HeaderValue::from_static(kind));
    wsjson::response(id, status, &headers, format!("hookway: {message}\n").as_bytes())
}

/// Forwards one request to the local app; the response message and the log line.
/// The log of `req`, before its answer.
fn request_log(req: &wsjson::Request) -> RequestLog {
    RequestLog {
        // The record's id, when the server keeps one (as over QUIC).
        id: wsjson::is_record_id(&req.id).then(|| req.id.clone()),
        method: req.method.to_string(),
        path: req.path.clone(),
        status: None,
        duration: Duration::ZERO,
        error: None,
    }
}

async fn answer(app: &LocalApp, req: wsjson::Request, max_body: usize) -> (String, RequestLog) {
    let started = Instant::now();
    let mut log = request_log(&req);
    let result = app.exchange_buffered(req.method, &req.path, req.headers, req.body, max_body).await;
    log.duration = started.elapsed();
    let reply = match result {
        Ok(resp) => {
            log.status = Some(resp.status.as_u16());
            wsjson::response(&req.id, resp.status, &resp.headers, &resp.body)
        }
        Err((kind, message)) => {
            // The same answer the edge gives for a QUIC tunnel.
            let reply = error_response(&req.id, StatusCode::BAD_GATEWAY, kind, &message);
            log.error = Some(message);
            reply
        }
    };
    (reply, log)
}

/// The end a close frame announces (see [`Attempt::closed_with`]).
fn closed(frame: Option<CloseFrame>) -> Attempt {
    let code = frame.as_ref().and_then(|f| close::from_ws_code(u16::from(f.code)));
    match code {
        Some(code) => Attempt::closed_with(code),
        None => Attempt::Retry(frame.map_or_else(
            || "the server closed the connection".into(),
            |f| format!("the server closed the connection ({}: {})", f.code, f.reason),
        )),
    }
}

/// Opens the socket; refusals (401/404, a certificate we cannot trust) are
/// final, the rest worth a retry.
async fn connect(url: &WsUrl) -> Result<(Socket, Welcome), Attempt> {
    let started = Instant::now();
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let refusal = tls::Refusal::default();
    let connector = url.as_str().starts_with("wss:").then(|| {
        let mut tls = tls::Trust::SystemRoots.client_config_noting(&refusal);
        tls.alpn_protocols.clear();
        Connector::Rustls(Arc::new(tls))
    });
    let dialled = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), Some(config), true, connector).await;
    if dialled.is_err()
        && let Some(refused) = refusal.take()
    {
        return Err(Attempt::Fatal(refused.into()));
    }
    let (ws, resp) = dialled.map_err(|err| match err {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let message = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"));
            if status == http::StatusCode::UNAUTHORIZED {
                Attempt::Fatal(ClientError::TokenRefused(message))
            } else if status.is_client_error() {
                Attempt::Fatal(ClientError::Rejected(message))
            } else {
                Attempt::Retry(format!("the WebSocket gateway answered {status}: {message}"))
            }
        }
        tungstenite::Error::Url(err) => Attempt::Fatal(ClientError::Config(format!("bad WebSocket URL: {err}"))),
        other => Attempt::Retry(format!("cannot connect to {url}: {other}")),
    })?;
    let h = resp.headers();
    let text = |name: &str| h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let number = |name: &str| text(name).parse::<u64>().ok();
    let subdomain = url.as_str().split("/tunnels/").nth(1).and_then(|r| r.split('/').next()).unwrap_or("").to_owned();
    let ping_ms = number("x-hookway-ping-interval-ms").unwrap_or(10_000).clamp(1_000, 3_600_000);
    let hello = ServerHello {
        tunnel_id: url.tunnel_id().to_owned(),
        name: text("x-hookway-tunnel-name"),
        tunnel_url: text("x-hookway-tunnel-url"),
        host_url: Some(text("x-hookway-host-url")).filter(|u| !u.is_empty()),
        subdomain,
        heartbeat_interval_ms: ping_ms as u32,
        accepts_leaving: h.contains_key(wsjson::ACCEPTS_LEAVING),
    };
    let max_body = number("x-hookway-max-body").map_or(DEFAULT_MAX_BODY, |n| n as usize);
    let ping_interval = Duration::from_millis(ping_ms);
    // (A server that does not say, an older one, may wait longer than the
    // default: then the client waits as long as the app takes, as before.)
    let request_timeout = number(wsjson::REQUEST_TIMEOUT)
        .map(|ms| Duration::from_millis(ms).clamp(Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600)));
    Ok((ws, Welcome { hello, max_body, ping_interval, request_timeout, handshake: started.elapsed() }))
}
