//! Serving a tunnel over the WebSocket-JSON gateway (seed 001's protocol), for
//! networks where UDP (and so QUIC) is blocked.
//!
//! One socket carries every request, each answered as a whole JSON message:
//! bodies are buffered and capped by the server's limit, which it announces in
//! `x-hookway-max-body` on the upgrade response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::{Attempt, CONNECT_TIMEOUT, ClientError, Event, LocalApp, RequestLog};
use crate::quic::{close, tls};
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
}

/// Connects, serves until the socket ends or `shutdown`; (connected, how it ended).
pub(super) async fn session(
    url: &str,
    tunnel_id: &str,
    app: &LocalApp,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    shutdown: &CancellationToken,
    reconnected: bool,
) -> (bool, Attempt) {
    let (ws, welcome) = tokio::select! {
        _ = shutdown.cancelled() => return (false, Attempt::Stopped),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect(url, tunnel_id)) => match r {
            Ok(Ok(pair)) => pair,
            Ok(Err(end)) => return (false, end),
            Err(_) => return (false, Attempt::Retry("timed out connecting to the WebSocket gateway".into())),
        },
    };
    on_event(Event::Connected { hello: welcome.hello, reconnected });
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
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
    });
    // The server pings on an interval: three missed intervals mean it is gone.
    let silence_limit = (welcome.ping_interval * 3).max(Duration::from_secs(5));
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    let end = loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "client shutting down".into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                break Attempt::Stopped;
            }
            _ = &mut silence => break Attempt::Retry(format!("no word from the server for {silence_limit:?}")),
            msg = stream.next() => msg,
        };
        silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
        let data = match msg {
            Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(frame))) => break closed(frame),
            Some(Ok(_)) => continue,
            Some(Err(err)) => break Attempt::Retry(format!("WebSocket error: {err}")),
            None => break Attempt::Retry("the server closed the connection".into()),
        };
        match wsjson::parse_server_message(&data) {
            Ok(ServerMessage::Request(req)) => {
                let (app, tx, on_event) = (app.clone(), tx.clone(), on_event.clone());
                let max_body = welcome.max_body;
                tokio::spawn(async move {
                    let (reply, log) = answer(&app, req, max_body).await;
                    let _ = tx.send(Message::text(reply)).await;
                    on_event(Event::Request(log));
                });
            }
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
    };
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    (true, end)
}

/// Forwards one request to the local app; the response message and the log line.
async fn answer(app: &LocalApp, req: wsjson::Request, max_body: usize) -> (String, RequestLog) {
    let started = Instant::now();
    let mut log = RequestLog {
        method: req.method.to_string(),
        path: req.path.clone(),
        status: None,
        duration: Duration::ZERO,
        error: None,
    };
    let result = app.exchange_buffered(req.method, &req.path, req.headers, req.body, max_body).await;
    log.duration = started.elapsed();
    let reply = match result {
        Ok(resp) => {
            log.status = Some(resp.status.as_u16());
            wsjson::response(&req.id, resp.status, &resp.headers, &resp.body)
        }
        Err((kind, message)) => {
            // The same answer the edge gives for a QUIC tunnel.
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            headers.insert("x-hookway-error", HeaderValue::from_static(kind));
            let body = format!("hookway: {message}\n");
            log.error = Some(message);
            wsjson::response(&req.id, StatusCode::BAD_GATEWAY, &headers, body.as_bytes())
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

/// Opens the socket; refusals (401/404) are final, the rest worth a retry.
async fn connect(url: &str, tunnel_id: &str) -> Result<(Socket, Welcome), Attempt> {
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let connector = url.starts_with("wss:").then(|| {
        let mut tls = tls::Trust::SystemRoots.client_config();
        tls.alpn_protocols.clear();
        Connector::Rustls(Arc::new(tls))
    });
    let (ws, resp) = tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
        .await
        .map_err(|err| match err {
            tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let message = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("HTTP {status}"));
                if status.is_client_error() {
                    Attempt::Fatal(ClientError::Rejected(message))
                } else {
                    Attempt::Retry(format!("the WebSocket gateway answered {status}: {message}"))
                }
            }
            tungstenite::Error::Url(err) => Attempt::Fatal(ClientError::Config(format!("bad WebSocket URL: {err}"))),
            other => Attempt::Retry(format!("cannot connect to {}: {other}", redact(url))),
        })?;
    let h = resp.headers();
    let text = |name: &str| h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let number = |name: &str| text(name).parse::<u64>().ok();
    let subdomain = url.split("/tunnels/").nth(1).and_then(|r| r.split('/').next()).unwrap_or("").to_owned();
    let ping_ms = number("x-hookway-ping-interval-ms").unwrap_or(10_000).clamp(1_000, 3_600_000);
    let hello = ServerHello {
        tunnel_id: tunnel_id.to_owned(),
        name: text("x-hookway-tunnel-name"),
        tunnel_url: text("x-hookway-tunnel-url"),
        host_url: Some(text("x-hookway-host-url")).filter(|u| !u.is_empty()),
        subdomain,
        heartbeat_interval_ms: ping_ms as u32,
    };
    let max_body = number("x-hookway-max-body").map_or(DEFAULT_MAX_BODY, |n| n as usize);
    Ok((ws, Welcome { hello, max_body, ping_interval: Duration::from_millis(ping_ms) }))
}

/// The URL without its token, for messages.
fn redact(url: &str) -> String {
    match url.split_once("token=") {
        Some((head, tail)) => {
            let rest = tail.find('&').map_or("", |i| &tail[i..]);
            format!("{head}token=…{rest}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_token() {
        assert_eq!(
            super::redact("ws://h/tunnels/a/ws?tunnelId=t&token=secret"),
            "ws://h/tunnels/a/ws?tunnelId=t&token=…"
        );
        assert_eq!(super::redact("ws://h/x?token=s&b=1"), "ws://h/x?token=…&b=1");
    }
}
