//! WebSocket-JSON clients that stop reading: the server must bound what it
//! queues for them, drop them once they leave its messages unread for the idle
//! timeout, and close their socket on `disconnect` even while a write to them
//! is blocked. Real server, real sockets on loopback; the client's receive
//! buffer is made small so that the server's writes block after a few MiB.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use hookway::server::gateway::WsLimits;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

/// Largest body in these tests; requests carry exactly this much.
const MAX_BODY: usize = 1 << 20;

fn limits(ping_ms: u64, idle_ms: u64) -> WsLimits {
    WsLimits {
        max_body: MAX_BODY,
        ping_interval: Duration::from_millis(ping_ms),
        idle_timeout: Duration::from_millis(idle_ms),
    }
}

struct Tunnel {
    id: String,
    sub: String,
    ws_url: String,
}

async fn tunnel(server: &TestServer) -> Tunnel {
    let c = server.api().create_tunnel("slow peer", None).await.expect("create tunnel");
    Tunnel { id: c.tunnel.id, sub: c.tunnel.subdomain, ws_url: c.ws_url }
}

/// Connects with a 64 KiB receive buffer (no autotuning), so that a client
/// that does not read stops the server's writes after its send buffer fills.
async fn connect_small_window(server: &TestServer, t: &Tunnel) -> Ws {
    let ws = small_window_socket(server.http, &t.ws_url).await;
    wait_connected(server, &t.id, true, Duration::from_secs(5)).await;
    ws
}

/// The upgrade alone (the session is live once the 101 arrives).
async fn small_window_socket(addr: SocketAddr, ws_url: &str) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let stream = socket.connect(addr).await.expect("TCP connect");
    let (ws, resp) = timeout(Duration::from_secs(5), tokio_tungstenite::client_async(ws_url, stream))
        .await
        .expect("handshake in time")
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    ws
}

async fn connected(server: &TestServer, id: &str) -> bool {
    let st = server.api().call(Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap();
    st["liveStatus"]["connected"] == true
}

/// Polls the live status until `connected` is `want`; false if `within` passes first.
async fn wait_connected(server: &TestServer, id: &str, want: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while connected(server, id).await != want {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// `n` public POSTs of `MAX_BODY` bytes each, in their own tasks; each yields its status.
fn big_posts(server: &TestServer, sub: &str, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    let client = http();
    (0..n)
        .map(|i| {
            let req = client.post(format!("{}/t/{sub}/big/{i}", server.url)).body(vec![b'a'; MAX_BODY]);
            tokio::spawn(async move { req.send().await.map_or(0, |r| r.status().as_u16()) })
        })
        .collect()
}

/// Sends a JSON pong every 200 ms without ever reading, until a write fails
/// (the server dropped the socket) or `within` passes; returns when the
/// writes started failing.
async fn pong_until_dropped(ws: &mut Ws, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let pong = Message::text(json!({ "type": "pong" }).to_string());
        match timeout(Duration::from_secs(1), ws.send(pong)).await {
            Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(Err(_)) => return Some(Instant::now()),
            Err(_) => {} // our own send buffer is full: the server stopped reading
        }
    }
    None
}

/// Issue: a client that keeps its session alive with pongs but never reads
/// used to stay `connected` for ever, its writer blocked on the socket, while
/// every request queued for it (up to 256 × 10 MiB) waited and timed out.
#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| c.ws = limits(500, 2000)).await;
    let t = tunnel(&server).await;
    let mut ws = connect_small_window(&server, &t).await;
    let started = Instant::now();
    let callers = big_posts(&server, &t.sub, 12);

    let dropped = pong_until_dropped(&mut ws, Duration::from_secs(12)).await;
    assert!(dropped.is_some(), "the server kept the socket of a client that reads nothing for 12 s (idle 2 s)");
    assert!(!connected(&server, &t.id).await, "tunnel still connected");
    for caller in callers {
        let status = timeout(Duration::from_secs(5), caller).await.expect("caller answered").unwrap();
        assert!(status == 502 || status == 503, "a request to the dropped client got {status}");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "callers waited {:?}", started.elapsed());
}

/// Issue: `disconnect` (and `regenerate-token`) cancelled the session, but the
/// writer, blocked on a socket the client did not read, kept it open (and the
/// 4 MiB queued on it) until the client read again, minutes later.
#[tokio::test]
async fn disconnect_closes_the_socket_even_while_a_write_is_blocked() {
    for action in ["disconnect", "regenerate-token"] {
        // A long idle timeout: only the API call may end this session.
        let server = TestServer::start_with(|c| c.ws = limits(10_000, 60_000)).await;
        let t = tunnel(&server).await;
        let mut ws = connect_small_window(&server, &t).await;
        let callers = big_posts(&server, &t.sub, 12);
        // 12 MiB does not fit in the socket's buffers: give the writer time to fill them and block.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let asked = Instant::now();
        server.api().call(Method::POST, &format!("/api/tunnels/{}/{action}", t.id), None).await.unwrap();
        let dropped = pong_until_dropped(&mut ws, Duration::from_secs(10)).await;
        let took = dropped.map(|d| d - asked);
        assert!(took.is_some_and(|d| d < Duration::from_secs(6)), "{action}: socket closed after {took:?}");
        for caller in callers {
            let status = timeout(Duration::from_secs(5), caller).await.expect("caller answered").unwrap();
            assert!(status == 502 || status == 503, "{action}: a request got {status}");
        }
    }
}

/// Issue: a request that timed out left its message queued for the client,
/// so memory grew with every 504 and stayed; a client that read again later
/// received requests nobody was waiting for any more.
#[tokio::test]
async fn requests_that_timed_out_are_not_sent_later() {
    const N: usize = 16;
    let server = TestServer::start_with(|c| {
        c.ws = limits(500, 8000);
        c.request_timeout = Duration::from_secs(1);
    })
    .await;
    let t = tunnel(&server).await;
    let mut ws = connect_small_window(&server, &t).await;
    let callers = big_posts(&server, &t.sub, N);
    for caller in callers {
        let status = timeout(Duration::from_secs(10), caller).await.expect("caller answered").unwrap();
        assert_eq!(status, 504);
    }

    // Now read: what the socket's buffers already held arrives, the rest was dropped.
    let mut delivered = 0;
    let mut quiet_until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(msg)) = tokio::time::timeout_at(quiet_until, ws.next()).await {
        if let Message::Text(text) = msg.expect("read") {
            let v: Value = serde_json::from_str(&text).unwrap();
            delivered += usize::from(v["type"] == "request");
            quiet_until = tokio::time::Instant::now() + Duration::from_millis(1500);
        }
    }
    // The server's send buffer (4 MiB at most on Linux) plus one message in
    // the writer's hands hold about 5 of these 1.3 MiB messages.
    assert!(delivered <= N / 2, "{delivered} of {N} timed-out requests were still sent to the client");

    // The session still works.
    let caller = tokio::spawn(http().get(format!("{}/t/{}/after", server.url, t.sub)).send());
    let req = loop {
        let msg = timeout(Duration::from_secs(5), ws.next()).await.expect("request in time").unwrap().unwrap();
        if let Message::Text(text) = msg {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    assert_eq!(req["path"], "/after", "{req}");
    ws.send(Message::text(json!({ "type": "response", "id": req["id"], "status": 200, "body": "ok" }).to_string()))
        .await
        .unwrap();
    let resp = caller.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
}

/// Issue: a client that flooded invalid messages and never read the error
/// replies blocked the server's read loop on the full queue, so neither the
/// idle timeout nor anything else dropped it. Replies must not wait: once
/// they pile up, the client is dropped, long before the idle timeout.
#[tokio::test]
async fn a_client_that_floods_bad_messages_without_reading_is_dropped() {
    let server = TestServer::start_with(|c| c.ws = limits(10_000, 60_000)).await;
    let t = tunnel(&server).await;
    let mut ws = connect_small_window(&server, &t).await;

    // Send until the server stops reading (our writes stall) or 8 s pass.
    let bad = Message::text(format!("{{bad{}", "x".repeat(100)));
    let flood_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < flood_until {
        let batch = async {
            for _ in 0..1000 {
                ws.feed(bad.clone()).await?;
            }
            ws.flush().await
        };
        match timeout(Duration::from_secs(1), batch).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(
        wait_connected(&server, &t.id, false, Duration::from_secs(6)).await,
        "a client that does not read the server's replies is still connected"
    );
    assert!(pong_until_dropped(&mut ws, Duration::from_secs(6)).await.is_some(), "its socket is still open");
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Issue: each request to a client that does not keep up had its whole body
/// read and serialized before it waited for room in the outbox, so 40
/// callers held 60 bodies and their messages: memory grew with the number of
/// callers. Now a session reads at most four largest bodies at a time; the
/// other callers wait with theirs unsent. Run on the real binary, whose peak
/// memory is its own.
#[tokio::test]
async fn callers_of_a_slow_client_wait_with_their_bodies_unread() {
    use futures_util::stream;
    const BODY: usize = 4 << 20;
    const CALLERS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--no-capture"])
        .args(["--ws-max-body", &BODY.to_string(), "--request-timeout", "3", "--data-dir"])
        .arg(dir.path())
        .env("HOOKWAY_API_KEY", "hwk_test")
        .stderr(std::process::Stdio::null());
    let (child, addr) = spawn_server(cmd).await;
    let created: Value = http()
        .post(format!("http://{addr}/api/tunnels"))
        .bearer_auth("hwk_test")
        .json(&json!({ "name": "slow" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_url = created["wsUrl"].as_str().unwrap();
    let sub = created["tunnel"]["subdomain"].as_str().unwrap().to_owned();
    let ws = small_window_socket(addr, ws_url).await;
    let baseline = peak_rss_mib(child.id().unwrap());

    // Bodies streamed from one shared chunk, so this process stays small.
    let chunk = bytes::Bytes::from(vec![b'a'; 64 << 10]);
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let chunks = stream::iter((0..BODY / chunk.len()).map({
                let chunk = chunk.clone();
                move |_| Ok::<_, std::io::Error>(chunk.clone())
            }));
            let req = http()
                .post(format!("http://{addr}/t/{sub}/big/{i}"))
                .header("content-length", BODY)
                .body(reqwest::Body::wrap_stream(chunks));
            tokio::spawn(async move { req.send().await.map_or(0, |r| r.status().as_u16()) })
        })
        .collect();
    for caller in callers {
        let status = timeout(Duration::from_secs(20), caller).await.expect("caller answered").unwrap();
        assert!(status == 504 || status == 0, "a request to a client that reads nothing got {status}");
    }
    let peak = peak_rss_mib(child.id().unwrap());
    drop(ws);
    // Measured: +70 MiB (four bodies and their messages, the outbox's two,
    // 60 connections' buffers, the allocator's slack); +170 before the fix,
    // when every caller's body was read at once.
    assert!(peak < baseline + 130, "peak memory {peak} MiB (before the callers: {baseline} MiB)");
}

/// Uploads in progress hold the intake's room (by declared length), but a
/// request without a body needs none: a GET must not wait behind them.
#[tokio::test]
async fn a_request_without_a_body_does_not_wait_for_uploads_in_progress() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|c| c.ws = limits(10_000, 60_000)).await;
    let app = spawn_app().await;
    let (client, _) = ws_client(&server, app.port()).await;
    let sub = client.tunnel_url.rsplit('/').next().unwrap().to_owned();
    // Four uploads that declare the largest body and send a little of it: the whole intake.
    let mut uploads = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(server.http).await.unwrap();
        let head = format!("POST /t/{sub}/slow/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\nabc");
        s.write_all(head.as_bytes()).await.unwrap();
        uploads.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = timeout(Duration::from_secs(5), http().get(format!("{}/echo", client.tunnel_url)).send())
        .await
        .expect("a GET waited behind the uploads")
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(uploads);
    client.shutdown.cancel();
}
