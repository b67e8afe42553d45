//! The WebSocket-JSON gateway for legacy tunnel clients (seed 001), driven by a
//! raw `tokio-tungstenite` client that speaks only the seed's JSON, with
//! reqwest as the public caller: handshake refusals, round trips, multiplexing,
//! binary bodies, heartbeats, idle drop, close handling, takeover, the body cap,
//! malformed messages, and the disconnect / regenerate-token APIs.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hookway::client::ClientError;
use hookway::server::gateway::WsLimits;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Upper bound on any single wait for the server.
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A tunnel created through the API, with the seed-001 `wsUrl`.
struct WsTunnel {
    id: String,
    sub: String,
    token: String,
    ws_url: String,
}

async fn ws_tunnel(server: &TestServer) -> WsTunnel {
    let c = server.api().create_tunnel("ws gateway test", None).await.expect("create tunnel");
    assert!(c.ws_url.starts_with("ws://"), "{}", c.ws_url);
    assert!(c.ws_url.contains(&format!("/tunnels/{}/ws?", c.tunnel.subdomain)), "{}", c.ws_url);
    WsTunnel { id: c.tunnel.id, sub: c.tunnel.subdomain, token: c.auth_token, ws_url: c.ws_url }
}

/// `{server}/t/{sub}{path}`.
fn public(server: &TestServer, sub: &str, path: &str) -> String {
    format!("{}/t/{sub}{path}", server.url)
}

/// Connects a raw WebSocket client; the upgrade must succeed.
async fn connect(url: &str) -> Ws {
    let (ws, resp) = timeout(WAIT, connect_async(url)).await.expect("handshake in time").expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    ws
}

/// Connects and waits until the server routes the tunnel's requests to it.
async fn connect_live(server: &TestServer, t: &WsTunnel) -> Ws {
    let ws = connect(&t.ws_url).await;
    wait_connected(server, &t.id, true).await;
    ws
}

/// An upgrade that must be refused: its status and JSON body.
async fn refusal(url: &str) -> (u16, Value) {
    match timeout(WAIT, connect_async(url)).await.expect("answer in time") {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
            (resp.status().as_u16(), json)
        }
        Ok(_) => panic!("upgrade should have been refused: {url}"),
        Err(e) => panic!("expected an HTTP refusal for {url}, got {e}"),
    }
}

async fn status(server: &TestServer, id: &str) -> Value {
    server.api().call(Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap()
}

async fn total_requests(server: &TestServer, id: &str) -> u64 {
    let t = server.api().call(Method::GET, &format!("/api/tunnels/{id}"), None).await.unwrap();
    t["tunnel"]["totalRequests"].as_u64().unwrap_or_else(|| panic!("no totalRequests in {t}"))
}

/// Polls the live status until `connected` is `want` (5 s at most).
async fn wait_connected(server: &TestServer, id: &str, want: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = status(server, id).await;
        if st["liveStatus"]["connected"] == want {
            assert_eq!(st["tunnel"]["status"], if want { "connected" } else { "disconnected" }, "{st}");
            return;
        }
        assert!(Instant::now() < deadline, "tunnel {id} not connected={want} within {WAIT:?}: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next text message as JSON, skipping WebSocket control frames (5 s at most in all).
async fn recv_json(ws: &mut Ws) -> Value {
    let next = async {
        loop {
            match ws.next().await.expect("socket still open").expect("read succeeds") {
                Message::Text(text) => return text,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Binary(b) => panic!("seed 001 uses text messages, got binary {b:?}"),
                Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            }
        }
    };
    let text = timeout(WAIT, next).await.expect("a message from the server within 5 s");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("server sent non-JSON ({e}): {text}"))
}

/// The next request message (asserting its type).
async fn recv_request(ws: &mut Ws) -> Value {
    let msg = recv_json(ws).await;
    assert_eq!(msg["type"], "request", "{msg}");
    assert!(msg["id"].as_str().is_some_and(|id| !id.is_empty()), "request without an id: {msg}");
    msg
}

/// Reads until a close frame (skipping control frames, 5 s at most); a message first is an error.
async fn recv_close(ws: &mut Ws) -> CloseFrame {
    let next = async {
        loop {
            match ws.next().await.expect("a close frame before the socket ends").expect("read succeeds") {
                Message::Close(Some(frame)) => return frame,
                Message::Close(None) => panic!("close frame without a code"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    timeout(WAIT, next).await.expect("a close frame within 5 s")
}

/// Asserts no text/binary message arrives within `d`.
async fn assert_quiet(ws: &mut Ws, d: Duration) {
    let got = timeout(d, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    if let Ok(msg) = got {
        panic!("expected no message, got {msg:?}");
    }
}

async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send to server");
}

/// What a public caller got.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a public request (10 s at most).
async fn call(req: reqwest::RequestBuilder) -> Reply {
    let exchange = async {
        let resp = req.send().await.expect("public request gets an answer");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("public response body").to_vec();
        Reply { status, headers, body }
    };
    timeout(Duration::from_secs(10), exchange).await.expect("public request answered within 10 s")
}

/// Runs `req` in its own task (so the WS client can answer meanwhile).
fn spawn_call(req: reqwest::RequestBuilder) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(call(req))
}

async fn join(h: tokio::task::JoinHandle<Reply>) -> Reply {
    timeout(Duration::from_secs(11), h).await.expect("public caller answered within 10 s").expect("caller task")
}

fn short_limits(max_body: usize, ping_ms: u64, idle_ms: u64) -> WsLimits {
    WsLimits { max_body, ping_interval: Duration::from_millis(ping_ms), idle_timeout: Duration::from_millis(idle_ms) }
}

#[tokio::test]
async fn handshake_refusals_are_json_errors_before_the_upgrade() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let other = ws_tunnel(&server).await;

    // Unknown subdomain (valid id and token otherwise).
    let url = t.ws_url.replace(&format!("/tunnels/{}/ws", t.sub), "/tunnels/no-such-tunnel/ws");
    let (code, body) = refusal(&url).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");

    // Wrong token.
    let url = t.ws_url.replace(&t.token, "definitely-not-the-token");
    assert_ne!(url, t.ws_url);
    let (code, body) = refusal(&url).await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");

    // Another tunnel's token is just as wrong.
    let (code, body) = refusal(&t.ws_url.replace(&t.token, &other.token)).await;
    assert_eq!(code, 401, "{body}");

    // Missing token.
    let base = format!("{}/tunnels/{}/ws", server.url.replacen("http://", "ws://", 1), t.sub);
    let (code, body) = refusal(&format!("{base}?tunnelId={}", t.id)).await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (code, _) = refusal(&format!("{base}?tunnelId={}&token=", t.id)).await;
    assert_eq!(code, 401);

    // tunnelId of another tunnel (with this tunnel's token).
    let (code, body) = refusal(&format!("{base}?tunnelId={}&token={}", other.id, t.token)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");

    // No tunnelId at all.
    let (code, body) = refusal(&format!("{base}?token={}", t.token)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("missing tunnelId")), "{body}");

    // A parameter given twice, the good token last (it once won).
    for url in [
        format!("{base}?tunnelId={}&token=nope&token={}", t.id, t.token),
        format!("{base}?tunnelId={}&tunnelId={}&token={}", other.id, t.id, t.token),
    ] {
        let (code, body) = refusal(&url).await;
        assert_eq!(code, 400, "{url}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("given more than once")), "{body}");
    }

    // A valid URL fetched without upgrade headers.
    let resp = http().get(t.ws_url.replacen("ws://", "http://", 1)).send().await.unwrap();
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers().get("upgrade").and_then(|v| v.to_str().ok()), Some("websocket"));
    let body: Value = resp.json().await.expect("426 body is JSON");
    assert!(body["error"].is_string(), "{body}");

    // None of that connected anything.
    for id in [&t.id, &other.id] {
        assert_eq!(status(&server, id).await["liveStatus"]["connected"], false);
    }
    let resp = http().get(public(&server, &t.sub, "/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);

    // And the right URL does upgrade.
    let _ws = connect_live(&server, &t).await;
}

#[tokio::test]
async fn request_and_response_round_trip_with_exact_fields() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    assert_eq!(total_requests(&server, &t.id).await, 0);
    let mut ws = connect_live(&server, &t).await;
    let st = status(&server, &t.id).await;
    assert_eq!(st["liveStatus"]["connected"], true, "{st}");
    assert_eq!(st["liveStatus"]["requestsInSession"], 0, "{st}");

    let payload = r#"{"event":"push","n":1,"text":"héllo"}"#;
    let caller = spawn_call(
        http()
            .post(public(&server, &t.sub, "/webhook?x=1"))
            .header("content-type", "application/json")
            .header("X-Custom-Header", "Value-42")
            .body(payload),
    );
    let req = recv_request(&mut ws).await;
    assert_eq!(req["method"], "POST", "{req}");
    assert_eq!(req["path"], "/webhook?x=1", "{req}");
    assert_eq!(req["body"], payload, "{req}");
    assert!(req.get("bodyEncoding").is_none_or(|e| e.is_null()), "UTF-8 body must be plain: {req}");
    let headers = req["headers"].as_object().unwrap_or_else(|| panic!("headers must be an object: {req}"));
    for name in headers.keys() {
        assert_eq!(name, &name.to_lowercase(), "header names are lowercase: {req}");
    }
    assert_eq!(headers.get("x-custom-header"), Some(&json!("Value-42")), "{req}");
    assert_eq!(headers.get("content-type"), Some(&json!("application/json")), "{req}");
    let id = req["id"].as_str().unwrap().to_owned();

    // A legacy client may capitalize header names.
    let answer = json!({
        "type": "response", "id": id, "status": 201,
        "headers": { "content-type": "application/json", "X-Reply": "yes" },
        "body": "{\"received\":true}",
    });
    send_json(&mut ws, &answer).await;
    let reply = join(caller).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-reply"), Some("yes"));
    assert_eq!(reply.text(), "{\"received\":true}");

    let st = status(&server, &t.id).await;
    assert_eq!(st["liveStatus"]["connected"], true, "{st}");
    assert_eq!(st["liveStatus"]["requestsInSession"], 1, "{st}");
    assert_eq!(total_requests(&server, &t.id).await, 1);

    // A second exchange: a GET without body; ids differ.
    let caller = spawn_call(http().get(public(&server, &t.sub, "/")));
    let req = recv_request(&mut ws).await;
    assert_eq!((&req["method"], &req["path"], &req["body"]), (&json!("GET"), &json!("/"), &json!("")), "{req}");
    assert_ne!(req["id"], json!(id), "ids are unique per request");
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 204, "headers": {} })).await;
    let reply = join(caller).await;
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());
    assert_eq!(status(&server, &t.id).await["liveStatus"]["requestsInSession"], 2);
    assert_eq!(total_requests(&server, &t.id).await, 2);

    // A 204 that a client answers with a body and a length reaches an HTTP/2
    // caller with neither (hyper's HTTP/2 server would send both, and the
    // caller reset the stream as malformed).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let caller = spawn_call(h2.get(public(&server, &t.sub, "/")));
    let req = recv_request(&mut ws).await;
    let answer = json!({
        "type": "response", "id": req["id"], "status": 204,
        "headers": { "content-length": "5", "x-reply": "yes" }, "body": "hello",
    });
    send_json(&mut ws, &answer).await;
    let reply = join(caller).await;
    assert_eq!((reply.status, reply.header("x-reply")), (204, Some("yes")));
    assert_eq!(reply.header("content-length"), None);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn two_hundred_concurrent_requests_answered_in_reverse_order() {
    const N: usize = 200;
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let client = http();
    let callers: Vec<_> = (0..N)
        .map(|i| {
            spawn_call(client.post(public(&server, &t.sub, &format!("/item/{i}?n={i}"))).body(format!("body-{i}")))
        })
        .collect();

    // All N arrive before any is answered: they are in flight together.
    let mut requests = Vec::with_capacity(N);
    let mut ids = HashSet::new();
    for _ in 0..N {
        let req = recv_request(&mut ws).await;
        assert!(ids.insert(req["id"].as_str().unwrap().to_owned()), "duplicate id: {req}");
        requests.push(req);
    }
    let paths: HashSet<_> = requests.iter().map(|r| r["path"].as_str().unwrap().to_owned()).collect();
    let expected: HashSet<_> = (0..N).map(|i| format!("/item/{i}?n={i}")).collect();
    assert_eq!(paths, expected);
    for r in &requests {
        let i = r["path"].as_str().unwrap().trim_start_matches("/item/").split('?').next().unwrap().to_owned();
        assert_eq!(r["body"], format!("body-{i}"), "{r}");
    }
    assert!(callers.iter().all(|c| !c.is_finished()), "no caller is answered before its response");

    for r in requests.iter().rev() {
        let i: usize = r["path"].as_str().unwrap()["/item/".len()..].split('?').next().unwrap().parse().unwrap();
        let msg = json!({
            "type": "response", "id": r["id"], "status": 200 + (i % 3),
            "headers": { "x-item": i.to_string() },
            "body": format!("answer to {} with {}", r["path"].as_str().unwrap(), r["body"].as_str().unwrap()),
        });
        ws.feed(Message::text(msg.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();

    for (i, caller) in callers.into_iter().enumerate() {
        let reply = join(caller).await;
        assert_eq!(reply.status as usize, 200 + (i % 3), "caller {i}: {}", reply.text());
        assert_eq!(reply.header("x-item"), Some(i.to_string().as_str()), "caller {i}");
        assert_eq!(reply.text(), format!("answer to /item/{i}?n={i} with body-{i}"));
    }
    assert_eq!(status(&server, &t.id).await["liveStatus"]["requestsInSession"], N as u64);
}

#[tokio::test]
async fn binary_bodies_travel_base64_both_ways() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let sent: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    assert!(std::str::from_utf8(&sent).is_err());
    let caller = spawn_call(
        http()
            .put(public(&server, &t.sub, "/bin?raw=1"))
            .header("content-type", "application/octet-stream")
            .body(sent.clone()),
    );
    let req = recv_request(&mut ws).await;
    assert_eq!(req["bodyEncoding"], "base64", "{req}");
    assert_eq!((&req["method"], &req["path"]), (&json!("PUT"), &json!("/bin?raw=1")));
    let body = B64.decode(req["body"].as_str().expect("body is a string")).expect("body is base64");
    assert_eq!(body, sent);

    let answer: Vec<u8> = (0..=255u8).rev().chain([0x80, 0x00, 0xff]).collect();
    send_json(
        &mut ws,
        &json!({
            "type": "response", "id": req["id"], "status": 200,
            "headers": { "content-type": "application/octet-stream" },
            "body": B64.encode(&answer), "bodyEncoding": "base64",
        }),
    )
    .await;
    let reply = join(caller).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
    assert_eq!(reply.body, answer);
}

#[tokio::test]
async fn json_ping_gets_json_pong_and_server_sends_websocket_pings() {
    let server = TestServer::start_with(|c| c.ws = short_limits(1 << 20, 300, 30_000)).await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;

    send_json(&mut ws, &json!({ "type": "ping" })).await;
    assert_eq!(recv_json(&mut ws).await, json!({ "type": "pong" }));
    send_json(&mut ws, &json!({ "type": "ping" })).await;
    assert_eq!(recv_json(&mut ws).await, json!({ "type": "pong" }));

    // WebSocket Ping frames every ping_interval.
    let mut pings = 0;
    timeout(Duration::from_secs(3), async {
        while pings < 2 {
            match ws.next().await.expect("socket open").expect("read succeeds") {
                Message::Ping(_) => pings += 1,
                Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("two WebSocket pings within 3 s (ping_interval 300 ms)");
    // A client that pongs stays connected.
    assert_eq!(status(&server, &t.id).await["liveStatus"]["connected"], true);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| c.ws = short_limits(1 << 20, 1000, 2000)).await;
    let silent = ws_tunnel(&server).await;
    let lively = ws_tunnel(&server).await;

    let connect_started = Instant::now();
    // Never read or written: it does not even answer the server's pings.
    let mut quiet_ws = connect_live(&server, &silent).await;
    // A control client that only reads (tungstenite answers pings with pongs).
    let mut lively_ws = connect_live(&server, &lively).await;
    let keeper = tokio::spawn(async move {
        let mut pings = 0;
        let _ = timeout(Duration::from_millis(4500), async {
            while let Some(Ok(msg)) = lively_ws.next().await {
                pings += usize::from(msg.is_ping());
            }
        })
        .await;
        (lively_ws, pings)
    });

    let deadline = Instant::now() + Duration::from_secs(6);
    while status(&server, &silent.id).await["liveStatus"]["connected"] == true {
        assert!(Instant::now() < deadline, "silent client still connected after 6 s (idle_timeout 2 s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped_after = connect_started.elapsed();
    assert!(dropped_after >= Duration::from_millis(1900), "dropped before the idle timeout: {dropped_after:?}");
    let resp = call(http().get(public(&server, &silent.sub, "/hook"))).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("x-hookway-error"), Some("tunnel-offline"));

    // The silent socket is closed by the server.
    let end = timeout(WAIT, async {
        loop {
            match quiet_ws.next().await {
                Some(Ok(Message::Close(frame))) => return Some(frame),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the dropped client's socket was not closed");

    // The control client, which answered pings, is still live past the idle timeout.
    let (_lively_ws, pings) = keeper.await.unwrap();
    assert!(pings >= 2, "control client saw {pings} pings in 4.5 s (ping_interval 1 s)");
    assert_eq!(status(&server, &lively.id).await["liveStatus"]["connected"], true);
}

#[tokio::test]
async fn client_closing_mid_request_gives_502_then_503() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;

    // A clean close frame while a request is in flight.
    let mut ws = connect_live(&server, &t).await;
    let caller = spawn_call(http().post(public(&server, &t.sub, "/slow")).body("wait for me"));
    let _req = recv_request(&mut ws).await;
    ws.close(None).await.expect("close handshake starts");
    let reply = join(caller).await;
    assert!(reply.status == 502 || reply.status == 503, "got {}: {}", reply.status, reply.text());
    if reply.status == 502 {
        assert_eq!(reply.header("x-hookway-error"), Some("tunnel-disconnected"), "{}", reply.text());
    }
    wait_connected(&server, &t.id, false).await;
    let reply = call(http().get(public(&server, &t.sub, "/after"))).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("x-hookway-error"), Some("tunnel-offline"));

    // The socket simply dropped (no close frame) while a request is in flight.
    let mut ws = connect_live(&server, &t).await;
    let caller = spawn_call(http().get(public(&server, &t.sub, "/slow2")));
    let _req = recv_request(&mut ws).await;
    drop(ws);
    let reply = join(caller).await;
    assert!(reply.status == 502 || reply.status == 503, "got {}: {}", reply.status, reply.text());
    wait_connected(&server, &t.id, false).await;
    let reply = call(http().get(public(&server, &t.sub, "/after"))).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
}

#[tokio::test]
async fn newest_client_wins_across_transports() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;

    // WS A replaced by WS B.
    let mut a = connect_live(&server, &t).await;
    let mut b = connect(&t.ws_url).await;
    let frame = recv_close(&mut a).await;
    assert_eq!(u16::from(frame.code), 4018, "{frame:?}");
    assert!(frame.reason.contains("another client"), "{frame:?}");
    wait_connected(&server, &t.id, true).await;
    let caller = spawn_call(http().get(public(&server, &t.sub, "/to-b")));
    let req = recv_request(&mut b).await;
    assert_eq!(req["path"], "/to-b");
    send_json(&mut b, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "from b" })).await;
    let reply = join(caller).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "from b"));
    drop(a);

    // QUIC client replaced by a WS client.
    let app = spawn_app().await;
    let quic = TestClient::connect(&server, &t.id, &t.token, app.port()).await;
    let frame = recv_close(&mut b).await;
    assert_eq!(u16::from(frame.code), 4018, "a QUIC client replaces the WS one: {frame:?}");
    let reply = call(http().get(public(&server, &t.sub, "/echo"))).await;
    assert_eq!(reply.status, 200, "served by the QUIC client's app: {}", reply.text());
    assert_eq!(reply.header("x-app"), Some("echo"));

    let mut c = connect(&t.ws_url).await;
    match quic.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("another client"), "{msg}"),
        other => panic!("QUIC client should stop for good, got {other:?}"),
    }
    wait_connected(&server, &t.id, true).await;
    let caller = spawn_call(http().get(public(&server, &t.sub, "/echo?to=c")));
    let req = recv_request(&mut c).await;
    assert_eq!(req["path"], "/echo?to=c");
    send_json(&mut c, &json!({ "type": "response", "id": req["id"], "status": 202, "body": "from c" })).await;
    let reply = join(caller).await;
    assert_eq!((reply.status, reply.text().as_str()), (202, "from c"));
}

#[tokio::test]
async fn oversized_request_bodies_get_413_at_the_edge() {
    let server = TestServer::start_with(|c| c.ws = short_limits(1024, 10_000, 30_000)).await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;

    // Declared length over the cap.
    let reply = call(http().post(public(&server, &t.sub, "/big")).body(vec![b'a'; 1025])).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.header("x-hookway-error"), Some("body-too-large"));
    assert!(reply.text().contains("1024"), "the answer explains the cap: {}", reply.text());

    // Chunked (no length) over the cap.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 512]))).collect::<Vec<_>>(),
    );
    let reply =
        call(http().post(public(&server, &t.sub, "/big-chunked")).body(reqwest::Body::wrap_stream(chunks))).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.header("x-hookway-error"), Some("body-too-large"));
    // Neither reached the client.
    assert_quiet(&mut ws, Duration::from_millis(300)).await;

    // At and just under the cap they pass.
    for n in [1024usize, 1000] {
        let caller = spawn_call(http().post(public(&server, &t.sub, "/fits")).body(vec![b'c'; n]));
        let req = recv_request(&mut ws).await;
        assert_eq!(req["body"].as_str().map(str::len), Some(n), "body of {n} bytes");
        send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "fits" })).await;
        let reply = join(caller).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "fits"), "body of {n} bytes");
    }
    // A response over the cap is refused too, saying whose body it was.
    let caller = spawn_call(http().get(public(&server, &t.sub, "/huge-answer")));
    let req = recv_request(&mut ws).await;
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "z".repeat(5000) })).await;
    let reply = join(caller).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.header("x-hookway-error"), Some("body-too-large"));
    assert!(reply.text().contains("response"), "{}", reply.text());
}

#[tokio::test]
async fn head_answers_keep_their_content_length() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let caller = spawn_call(http().head(public(&server, &t.sub, "/file")));
    let req = recv_request(&mut ws).await;
    assert_eq!(req["method"], "HEAD");
    let headers = json!({ "content-length": "1234", "content-type": "text/plain" });
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "headers": headers, "body": "" }))
        .await;
    let reply = join(caller).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("1234"));
}

/// A HEAD answer's `content-length` reaches the caller as is (its body is
/// empty), so one that is not a length is refused instead of passed on.
#[tokio::test]
async fn head_answers_with_an_invalid_content_length_get_502() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    for bad in [json!("abc"), json!("12, 13"), json!(["5", "6"]), json!("-1"), json!("+7"), json!("")] {
        let caller = spawn_call(http().head(public(&server, &t.sub, "/file")));
        let req = recv_request(&mut ws).await;
        let headers = json!({ "content-length": bad, "content-type": "text/plain" });
        send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "headers": headers })).await;
        let reply = join(caller).await;
        assert_eq!(reply.status, 502, "content-length {bad}: {:?}", reply.headers);
        assert_eq!(reply.header("x-hookway-error"), Some("tunnel-error"), "content-length {bad}");
        assert!(reply.header("content-length") != Some("abc"), "content-length {bad}");
    }
    // Repeating the same length is allowed (RFC 9110 §8.6), and sent once.
    let caller = spawn_call(http().head(public(&server, &t.sub, "/file")));
    let req = recv_request(&mut ws).await;
    let headers = json!({ "content-length": "42, 42" });
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "headers": headers })).await;
    let reply = join(caller).await;
    assert_eq!((reply.status, reply.header("content-length")), (200, Some("42")));
}

#[tokio::test]
async fn malformed_messages_get_error_replies_and_the_socket_stays_usable() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;

    let caller = spawn_call(http().post(public(&server, &t.sub, "/pending")).body("x"));
    let pending = recv_request(&mut ws).await;
    let pending_id = pending["id"].as_str().unwrap().to_owned();

    let is_error = |v: &Value| v["type"] == "error" && v["message"].as_str().is_some_and(|m| !m.is_empty());

    // Invalid JSON.
    ws.send(Message::text("this is {not json")).await.unwrap();
    let e = recv_json(&mut ws).await;
    assert!(is_error(&e), "{e}");

    // Unknown type.
    send_json(&mut ws, &json!({ "type": "hello", "foo": 1 })).await;
    let e = recv_json(&mut ws).await;
    assert!(is_error(&e), "{e}");
    assert!(e["message"].as_str().unwrap().contains("hello"), "{e}");

    // The id is the request's record's, which `hookway tunnels request` takes.
    assert!(hookway::wsjson::is_record_id(&pending_id), "{pending_id}");
    // Responses for ids never issued get an error naming them: a later
    // record's, numbered ones (none was issued on a recording server), and
    // other spellings of the pending one's.
    let shouted = format!("req_{}", pending_id["req_".len()..].to_uppercase());
    let bogus_ids = ["req_ffffffffffffffffffff", "req_1", "not-an-id", "req_0", "req_", &shouted, &pending_id[..23]];
    for bogus in bogus_ids {
        send_json(&mut ws, &json!({ "type": "response", "id": bogus, "status": 200, "body": "?" })).await;
        let e = recv_json(&mut ws).await;
        assert!(is_error(&e), "{e}");
        assert_eq!(e["id"], bogus, "{e}");
    }
    // An earlier record's id is a late answer: ignored without an error
    // (the next message is the pong).
    send_json(&mut ws, &json!({ "type": "response", "id": "req_00000000000000000000", "status": 200 })).await;
    send_json(&mut ws, &json!({ "type": "ping" })).await;
    assert_eq!(recv_json(&mut ws).await, json!({ "type": "pong" }));
    // The pending request is unaffected by all that.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!caller.is_finished(), "the pending request must still wait");

    // A malformed response (no status) for the pending id fails it with 502.
    send_json(&mut ws, &json!({ "type": "response", "id": pending_id, "headers": {}, "body": "oops" })).await;
    let e = recv_json(&mut ws).await;
    assert!(is_error(&e), "{e}");
    assert_eq!(e["id"], json!(pending_id), "{e}");
    let reply = join(caller).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.header("x-hookway-error"), Some("tunnel-error"));
    let records = wait_for_records(&server, &t.id, 1).await;
    assert_eq!(records[0]["id"], json!(pending_id), "the message's id is the record's: {records:?}");

    // Still usable: a correct round trip, and pings.
    send_json(&mut ws, &json!({ "type": "ping" })).await;
    assert_eq!(recv_json(&mut ws).await, json!({ "type": "pong" }));
    let caller = spawn_call(http().get(public(&server, &t.sub, "/after?ok=1")));
    let req = recv_request(&mut ws).await;
    assert_eq!(req["path"], "/after?ok=1");
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "fine" })).await;
    let reply = join(caller).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "fine"));
    assert_eq!(status(&server, &t.id).await["liveStatus"]["connected"], true);
}

/// On a server that records nothing, request ids number the socket's
/// requests; an answer to one already answered is late, not an error.
#[tokio::test]
async fn without_capture_request_ids_number_the_sockets_requests() {
    let server = TestServer::start_with(|c| c.capture.enabled = false).await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    for n in 1..=2 {
        let caller = spawn_call(http().get(public(&server, &t.sub, "/n")));
        let req = recv_request(&mut ws).await;
        assert_eq!(req["id"], format!("req_{n}"));
        send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "ok" })).await;
        assert_eq!(join(caller).await.status, 200);
    }
    send_json(&mut ws, &json!({ "type": "response", "id": "req_1", "status": 200 })).await;
    send_json(&mut ws, &json!({ "type": "ping" })).await;
    assert_eq!(recv_json(&mut ws).await, json!({ "type": "pong" }), "a late answer gets no error");
    send_json(&mut ws, &json!({ "type": "response", "id": "req_3", "status": 200 })).await;
    assert_eq!(recv_json(&mut ws).await["id"], "req_3", "one never issued does");
}

#[tokio::test]
async fn disconnect_and_regenerate_token_close_the_socket_with_their_codes() {
    let server = TestServer::start().await;

    // Disconnect through the API: 4016.
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let v = server.api().call(Method::POST, &format!("/api/tunnels/{}/disconnect", t.id), None).await.unwrap();
    assert_eq!(v, json!({ "success": true }));
    let frame = recv_close(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4016, "{frame:?}");
    wait_connected(&server, &t.id, false).await;
    let reply = call(http().get(public(&server, &t.sub, "/x"))).await;
    assert_eq!(reply.status, 503, "{}", reply.text());

    // Regenerate the token: 4017, and the old token is refused afterwards.
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let new_token = server.api().regenerate_token(&t.id).await.unwrap();
    assert_ne!(new_token, t.token);
    let frame = recv_close(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4017, "{frame:?}");
    wait_connected(&server, &t.id, false).await;
    let (code, body) = refusal(&t.ws_url).await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");

    // The new token works.
    let new_url = t.ws_url.replace(&t.token, &new_token);
    let mut ws = connect(&new_url).await;
    wait_connected(&server, &t.id, true).await;
    let caller = spawn_call(http().get(public(&server, &t.sub, "/new")));
    let req = recv_request(&mut ws).await;
    send_json(&mut ws, &json!({ "type": "response", "id": req["id"], "status": 200, "body": "new token" })).await;
    assert_eq!(join(caller).await.text(), "new token");

    // Deleting the tunnel closes the socket too (4000 + 0x13), and the URL is then unknown.
    server.api().call(Method::DELETE, &format!("/api/tunnels/{}", t.id), None).await.unwrap();
    let frame = recv_close(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4019, "{frame:?}");
    let (code, body) = refusal(&new_url).await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn a_request_body_still_arriving_at_the_timeout_is_a_408_and_never_reaches_the_client() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|c| c.request_timeout = Duration::from_millis(800)).await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    let mut caller = TcpStream::connect(server.http).await.unwrap();
    let head = format!("POST /t/{}/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", t.sub);
    caller.write_all(head.as_bytes()).await.unwrap();
    let (got, _) = read_until_closed(&mut caller, WAIT).await;
    let got = String::from_utf8_lossy(&got);
    // The app never saw the request: the caller's body is late, not the app's answer.
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(got.contains("x-hookway-error: request-body-timeout"), "{got}");
    assert!(got.contains("request body did not arrive"), "{got}");
    assert_quiet(&mut ws, Duration::from_millis(300)).await;
}

/// `{"type":"leaving"}` (our addition, announced on the upgrade): the tunnel
/// is offline at once while the socket stays open for the requests the
/// client has, and a `503 tunnel-offline` answer is taken for the tunnel
/// going offline (its offline reply) only after it: before, it is the app's.
#[tokio::test]
async fn a_leaving_client_takes_its_tunnel_offline_and_its_refusals_get_the_offline_reply() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let set = json!({"offlineReply": {"status": 202}});
    server.api().call(Method::PATCH, &format!("/api/tunnels/{}", t.id), Some(&set)).await.unwrap();
    let (ws, resp) = timeout(WAIT, connect_async(&t.ws_url)).await.unwrap().unwrap();
    assert_eq!(resp.headers()["x-hookway-accepts-leaving"], "1");
    let mut ws = ws;
    wait_connected(&server, &t.id, true).await;
    let refusal = |id: &Value| {
        json!({
            "type": "response", "id": id, "status": 503,
            "headers": {"x-hookway-error": "tunnel-offline", "content-type": "text/plain"},
            "body": "hookway: going offline",
        })
    };

    // Before `leaving`: the app's own answer, passed on as it is.
    let caller = spawn_call(http().post(public(&server, &t.sub, "/before")).body("b"));
    let req = recv_request(&mut ws).await;
    send_json(&mut ws, &refusal(&req["id"])).await;
    let before = join(caller).await;
    assert_eq!(before.status, 503, "{}", before.text());
    assert_eq!(before.text(), "hookway: going offline");

    // A request on its way, then `leaving`.
    let caller = spawn_call(http().post(public(&server, &t.sub, "/on-its-way")).body("w"));
    let req = recv_request(&mut ws).await;
    send_json(&mut ws, &json!({"type": "leaving"})).await;
    wait_connected(&server, &t.id, false).await;
    // New requests no longer reach the socket: an offline tunnel's answer.
    let after = call(http().post(public(&server, &t.sub, "/after")).body("a")).await;
    assert_eq!((after.status, after.header("x-hookway-offline")), (202, Some("recorded")), "{}", after.text());
    assert_quiet(&mut ws, Duration::from_millis(200)).await;
    // The one on its way, refused now: no app saw it.
    send_json(&mut ws, &refusal(&req["id"])).await;
    let refused = join(caller).await;
    assert_eq!((refused.status, refused.header("x-hookway-offline")), (202, Some("recorded")), "{}", refused.text());

    // The socket is still the client's to close.
    ws.close(None).await.unwrap();
    // (Forwarded: the two the socket got, not the one after `leaving`.)
    assert_eq!(total_requests(&server, &t.id).await, 2);
}

/// A client that said it is leaving and then never closes (buggy, or
/// holding on) is closed by the server once twice our client's drain has
/// passed, as over QUIC: out of the routing map, no API call reaches it.
#[tokio::test]
async fn a_leaving_client_that_never_closes_is_closed_after_its_drain() {
    let server = TestServer::start().await;
    let t = ws_tunnel(&server).await;
    let mut ws = connect_live(&server, &t).await;
    send_json(&mut ws, &json!({"type": "leaving"})).await;
    let left = Instant::now();
    wait_connected(&server, &t.id, false).await;
    // Reading answers the server's pings: the socket stays lively.
    let close = timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => panic!("expected only control frames, then a close: {other:?}"),
            }
        }
    })
    .await
    .expect("closed by the server");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1000));
    let after = left.elapsed();
    assert!(after >= hookway::server::session::LEFT_DRAIN - Duration::from_millis(500), "closed after {after:?}");
}
