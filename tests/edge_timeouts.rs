//! Connections that hold a socket without using it are closed: each one costs
//! the server a file descriptor, and a few hundred silent ones used to starve
//! everyone else. Real server, raw TCP peers on loopback, short timeouts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use hookway::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// Timeouts long enough never to fire in these tests, so each test shortens
/// only the one it is about.
fn long_timeouts(c: &mut ServerConfig) {
    c.http.header_timeout = Duration::from_secs(60);
    c.http.idle_timeout = Duration::from_secs(60);
    c.http.body_timeout = Duration::from_secs(60);
    c.http.h2_keep_alive_interval = Duration::from_secs(60);
    c.http.h2_keep_alive_timeout = Duration::from_secs(60);
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// A raw HTTP/2 peer that sends the preface and its SETTINGS, then nothing
/// but, if `answer_pings`, the acknowledgements a live client sends. Returns
/// the types of the frames the server sent and whether it closed the
/// connection within `within`.
async fn h2_peer(addr: SocketAddr, answer_pings: bool, within: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let mut kinds = Vec::new();
    let closed = tokio::time::timeout(within, async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len.min(1 << 16)];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let (kind, flags) = (head[3], head[4]);
            kinds.push(kind);
            let ack = match kind {
                SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, &[]),
                PING if flags & ACK == 0 => frame(PING, ACK, &payload),
                _ => continue,
            };
            if answer_pings && stream.write_all(&ack).await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok();
    (kinds, closed)
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.header_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.http).await.unwrap();
    let (got, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a connection that never sent a byte was still open after 5 s");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before its time: {:?}", started.elapsed());
    // The server itself is fine.
    assert_eq!(http().get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_idle_http2_connection_is_shut_down_even_when_it_answers_pings() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.header_timeout = Duration::from_millis(300);
        c.http.h2_keep_alive_interval = Duration::from_millis(100);
    })
    .await;
    let (kinds, closed) = h2_peer(server.http, true, Duration::from_secs(5)).await;
    assert!(closed, "an HTTP/2 connection without a request was still open after 5 s: frames {kinds:?}");
    assert!(kinds.contains(&GOAWAY), "closed gracefully, with a GOAWAY: {kinds:?}");
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_dropped() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.h2_keep_alive_interval = Duration::from_millis(200);
        c.http.h2_keep_alive_timeout = Duration::from_millis(300);
    })
    .await;
    let (kinds, closed) = h2_peer(server.http, false, Duration::from_secs(5)).await;
    assert!(closed, "an HTTP/2 peer that answers nothing was still connected after 5 s: frames {kinds:?}");
    assert!(kinds.contains(&PING), "the server pinged first: {kinds:?}");
}

#[tokio::test]
async fn an_api_body_that_stalls_gets_408_and_the_connection_closes() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.body_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST /api/tunnels HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"name\"",
        server.http,
        bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains(r#"{"error":"#), "the API's error shape: {text}");
    assert!(closed, "the connection, its body unread, is closed: {text}");
    // Nothing was created.
    let list = server.api().call(reqwest::Method::GET, "/api/tunnels", None).await.unwrap();
    assert_eq!(list["tunnels"], serde_json::json!([]));
}

/// The server binary under `ulimit -n 64`, with more silent connections than
/// it has file descriptors: failed accepts pause instead of spinning, the log
/// gets one warning rather than one per attempt, and once the connections go,
/// the server answers again.
#[tokio::test]
async fn out_of_file_descriptors_accepts_pause_and_warn_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-c", r#"ulimit -n 64 && exec "$0" "$@""#, env!("CARGO_BIN_EXE_hookway")])
        .args(["server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // Above what the descriptors allow, so that accepts do fail (the
        // default limit, from `ulimit -n`, would keep them from failing).
        .args(["--max-connections", "1000"])
        .env("HOOKWAY_API_KEY", "hwk_test")
        .env("RUST_LOG", "hookway=info")
        .stderr(std::process::Stdio::piped());
    let (mut child, addr) = spawn_server(cmd).await;
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = http().get(format!("http://{addr}/healthz")).timeout(Duration::from_secs(2)).send().await;
        if resp.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz still unanswered 10 s after the silent connections left");
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().await.unwrap().success());
    let log = log.await.unwrap();
    let warnings = log.matches("accept failed").count();
    assert_eq!(warnings, 1, "accept warnings in 2 s:\n{log}");
    assert!(log.contains("accepting connections again"), "{log}");
}

/// Sends a request on `stream` and waits up to `within` for its answer (a
/// small one: hyper writes it at once, so one read takes it all).
async fn answered(stream: &mut TcpStream, within: Duration) -> bool {
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(head).await.unwrap();
    let mut answer = vec![0u8; 4096];
    match tokio::time::timeout(within, stream.read(&mut answer)).await {
        Ok(read) => {
            let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn at_the_connection_limit_a_new_connection_waits_until_one_closes() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.max_connections = 2;
    })
    .await;
    let mut first = TcpStream::connect(server.http).await.unwrap();
    let mut second = TcpStream::connect(server.http).await.unwrap();
    assert!(answered(&mut first, Duration::from_secs(5)).await);
    assert!(answered(&mut second, Duration::from_secs(5)).await);
    // The kernel completes the handshake, but the server does not take the
    // connection while two are open.
    let mut third = TcpStream::connect(server.http).await.unwrap();
    let waiting = tokio::spawn(async move { answered(&mut third, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served while two were open");
    drop(first);
    assert!(waiting.await.unwrap(), "the third connection was not served once the first closed");
    assert!(answered(&mut second, Duration::from_secs(5)).await, "the open connections are unaffected");
}

/// Issue: one address could open every connection the server keeps (one
/// that sends nothing keeps its place for the head timeout), and every other
/// caller waited in the backlog (found by a probe). An address past its own
/// limit is now answered 429 and closed, while the others are served; a
/// trusted proxy, which speaks for many callers, is not limited.
#[tokio::test]
async fn an_address_past_its_connection_limit_is_refused_and_others_are_not() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.max_connections_per_address = 2;
    })
    .await;
    let mut first = TcpStream::connect(server.http).await.unwrap();
    let mut second = TcpStream::connect(server.http).await.unwrap();
    assert!(answered(&mut first, Duration::from_secs(5)).await);
    assert!(answered(&mut second, Duration::from_secs(5)).await);
    // The answer is written as the connection is taken, before any request.
    let mut third = TcpStream::connect(server.http).await.unwrap();
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut refusal)).await.unwrap().unwrap();
    assert!(refusal.starts_with("HTTP/1.1 429 "), "{refusal}");
    assert!(refusal.contains("x-hookway-error: too-many-connections"), "{refusal}");
    assert!(refusal.contains("retry-after: 1"), "{refusal}");
    assert!(refusal.ends_with("too many connections from your address are open; close some and try again\n"));
    // Another address (127.0.0.2, loopback too) is served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(server.http).await.unwrap();
    assert!(answered(&mut other, Duration::from_secs(5)).await, "another address was refused");
    drop(first);
    // The place comes back once the connection's task sees it closed.
    let started = Instant::now();
    loop {
        let mut next = TcpStream::connect(server.http).await.unwrap();
        let _ = next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut answer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), next.read(&mut answer)).await.unwrap();
        if read.is_ok_and(|n| answer[..n].starts_with(b"HTTP/1.1 200")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the closed connection's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered(&mut second, Duration::from_secs(5)).await, "the open connections are unaffected");

    let behind = TestServer::start_with(|c| {
        long_timeouts(c);
        c.http.max_connections_per_address = 1;
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut proxy = TcpStream::connect(behind.http).await.unwrap();
        assert!(answered(&mut proxy, Duration::from_secs(5)).await, "a trusted proxy was limited");
        open.push(proxy);
    }
}

/// A WebSocket tunnel keeps its socket after hyper hands it over from the
/// HTTP connection, so its session keeps the connection's place: with a
/// limit of one, nothing else is served until the session ends.
#[tokio::test]
async fn a_websocket_session_keeps_its_connections_place_under_the_limit() {
    let server = TestServer::start_with(|c| {
        long_timeouts(c);
        // The API's keep-alive connections (the test's, the client's) close
        // soon, so the upgrade gets the one place.
        c.http.header_timeout = Duration::from_millis(300);
        c.http.idle_timeout = Duration::from_millis(300);
        c.http.max_connections = 1;
    })
    .await;
    let app = spawn_app().await;
    let (client, _) = ws_client(&server, app.port()).await;
    let mut other = TcpStream::connect(server.http).await.unwrap();
    let waiting = tokio::spawn(async move { answered(&mut other, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "a connection was served while the WebSocket session held the only place");
    client.shutdown.cancel();
    assert!(waiting.await.unwrap(), "not served once the session ended");
}
