//! Session lifecycle: token regeneration, disconnect, takeover, a killed client,
//! and a server restart that brings the same URL back.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hookway::client::ClientError;
use reqwest::Method;
use serde_json::Value;

async fn status(server: &TestServer, id: &str) -> Value {
    server.api().call(Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap()
}

#[tokio::test]
async fn regenerating_the_token_ends_the_session_and_invalidates_the_old_token() {
    let s = Setup::new().await;
    let new_token = s.server.api().regenerate_token(&s.tunnel_id).await.unwrap();
    assert_ne!(new_token, s.token);
    let end = s.client.finished(Duration::from_secs(10)).await;
    match end {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("regenerated"), "{msg}"),
        other => panic!("client should stop for good, got {other:?}"),
    }
    // The old token is refused at the handshake, with a reason.
    let old = TestClient::spawn(&s.server, &s.tunnel_id, &s.token, s.app.port());
    match old.finished(Duration::from_secs(10)).await {
        Err(ClientError::TokenRefused(msg)) => assert!(msg.contains("token"), "{msg}"),
        other => panic!("old token must be rejected, got {other:?}"),
    }
    // The new one works.
    let client = TestClient::connect(&s.server, &s.tunnel_id, &new_token, s.app.port()).await;
    let resp = http().get(format!("{}/echo", client.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn disconnect_ends_the_session_and_the_tunnel_goes_offline() {
    let s = Setup::new().await;
    assert_eq!(status(&s.server, &s.tunnel_id).await["liveStatus"]["connected"], true);
    let v = s.server.api().call(Method::POST, &format!("/api/tunnels/{}/disconnect", s.tunnel_id), None).await;
    assert_eq!(v.unwrap(), serde_json::json!({ "success": true }));
    match s.client.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("disconnected"), "{msg}"),
        other => panic!("client should stop for good, got {other:?}"),
    }
    let st = status(&s.server, &s.tunnel_id).await;
    assert_eq!(st["tunnel"]["status"], "disconnected");
    assert_eq!(st["liveStatus"]["connected"], false);
    let resp = http().get(format!("{}/t/{}/echo", s.server.url, s.subdomain)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn a_second_client_takes_over_and_the_first_is_told() {
    let s = Setup::new().await;
    let app2 = spawn_app().await;
    let second = TestClient::connect(&s.server, &s.tunnel_id, &s.token, app2.port()).await;
    match s.client.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("another client"), "{msg}"),
        other => panic!("first client should stop for good, got {other:?}"),
    }
    let resp = http().get(format!("{}/echo", second.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(status(&s.server, &s.tunnel_id).await["liveStatus"]["connected"], true);
}

#[tokio::test]
async fn deleting_a_tunnel_ends_its_session() {
    let s = Setup::new().await;
    s.server.api().call(Method::DELETE, &format!("/api/tunnels/{}", s.tunnel_id), None).await.unwrap();
    match s.client.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("deleted"), "{msg}"),
        other => panic!("client should stop for good, got {other:?}"),
    }
    let resp = http().get(format!("{}/t/{}/", s.server.url, s.subdomain)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn client_dropping_mid_request_fails_the_request_and_frees_the_tunnel() {
    let s = Setup::new().await;
    let url = s.url("/slow?ms=5000");
    let pending = tokio::spawn(async move { http().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.client.task.abort();
    let code = tokio::time::timeout(Duration::from_secs(15), pending).await.unwrap().unwrap().unwrap();
    assert_eq!(code, 502, "the request reached the client: not a 503 'offline'");
    let deadline = Instant::now() + Duration::from_secs(12);
    while status(&s.server, &s.tunnel_id).await["liveStatus"]["connected"] == true {
        assert!(Instant::now() < deadline, "tunnel still marked connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the real binary as a client; returns the child and its public URL.
async fn spawn_cli_client(server: &TestServer, id: &str, token: &str, port: u16) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", id, &port.to_string(), "--json", "--server", &server.url, "--token", token])
        .env_remove("HOOKWAY_API_KEY")
        .stderr(Stdio::null());
    let (child, _, v) = spawn_connected(cmd).await;
    (child, v["tunnelUrl"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn killed_client_process_is_noticed_within_ten_seconds() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let (mut child, url) = spawn_cli_client(&server, &id, &token, app.port()).await;
    let ok = http().get(format!("{url}/echo")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let pending = tokio::spawn(async move { http().get(format!("{url}/slow?ms=30000")).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap(); // SIGKILL: no goodbye reaches the server.
    child.wait().await.unwrap();
    let killed_at = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(15), pending).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), 502, "the request reached the client, which died: not a 503 'offline'");
    assert_eq!(resp.headers()["x-hookway-error"], "tunnel-disconnected");
    loop {
        if status(&server, &id).await["liveStatus"]["connected"] == false {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "dead client not noticed within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn server_restart_brings_the_same_url_back() {
    let server = TestServer::start().await;
    let (http_addr, quic_addr) = (server.http, server.quic);
    let s = Setup::with_server(server).await;
    let url = s.client.tunnel_url.clone();
    for _ in 0..3 {
        assert_eq!(http().get(s.url("/echo")).send().await.unwrap().status(), 200);
    }
    let Setup { server, mut client, tunnel_id, .. } = s;
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |c| {
        c.http_addr = http_addr;
        c.quic_addr = quic_addr;
    })
    .await;
    let (again, _) = client.wait_connected().await;
    assert_eq!(again, url, "same tunnel, same URL after a restart");
    let resp = http().post(format!("{url}/echo")).body("after restart").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let t = server.api().call(Method::GET, &format!("/api/tunnels/{tunnel_id}"), None).await.unwrap();
    assert_eq!(t["tunnel"]["totalRequests"], 4, "counters survive the restart: {t}");
    assert_eq!(t["tunnel"]["status"], "connected");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_clients_wait_to_reconnect() {
    let s = Setup::new().await;
    let url = s.url("/slow?ms=800");
    let in_flight = tokio::spawn(async move {
        let resp = http().get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Setup { server, mut client, .. } = s;
    let http_addr = server.http;
    server.shutdown.cancel();
    // The request that was already running completes normally.
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "slow done"));
    tokio::time::timeout(Duration::from_secs(15), server.task).await.unwrap().unwrap().unwrap();
    // New connections are refused once it has stopped.
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
    // The client was told the server is going away: it retries instead of exiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, client.events.recv()).await.unwrap().unwrap();
        if let hookway::client::Event::Reconnecting { reason, .. } = event {
            assert!(reason.contains("shutting down") || reason.contains("cannot reach"), "{reason}");
            break;
        }
    }
    assert!(!client.task.is_finished(), "a server shutdown is not a reason to give up");
}

/// Issue: a request still waiting for the app when the server's shutdown
/// grace ran out had its caller's connection dropped without an answer, and
/// the client logged that the caller went away. The caller now gets a 502
/// saying the server shut down, and the client's log says so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_shutdown_grace_cuts_is_answered_why() {
    let server = TestServer::start_with(|c| c.shutdown_grace = Duration::from_millis(300)).await;
    let mut app = spawn_held_app().await;
    let (tunnel_id, token, _) = create_tunnel(&server, None).await;
    let mut client = TestClient::connect(&server, &tunnel_id, &token, app.addr.port()).await;
    let held = tokio::spawn(http().get(format!("{}/hold", client.tunnel_url)).send());
    assert_eq!(app.next_arrival().await, "/hold");
    server.shutdown.cancel();

    let resp = tokio::time::timeout(Duration::from_secs(5), held).await.expect("answered in time").unwrap().unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-hookway-error"], "tunnel-disconnected");
    let body = resp.text().await.unwrap();
    assert!(body.contains("the server shut down before the client of tunnel"), "{body}");
    let log = next_request_log(&mut client).await;
    assert!(
        log.error.as_deref().is_some_and(|e| e.contains("the server shut down before the app answered")),
        "{log:?}"
    );
    tokio::time::timeout(Duration::from_secs(15), server.task).await.unwrap().unwrap().unwrap();
}

/// A request still waiting for the app when the server ends the session
/// (here `disconnect`) is logged as cut by that, not by its caller.
#[tokio::test]
async fn a_request_cut_by_the_end_of_the_session_is_logged_as_such() {
    let server = TestServer::start().await;
    let mut app = spawn_held_app().await;
    let (tunnel_id, token, _) = create_tunnel(&server, None).await;
    let mut client = TestClient::connect(&server, &tunnel_id, &token, app.addr.port()).await;
    let held = tokio::spawn(http().get(format!("{}/hold", client.tunnel_url)).send());
    assert_eq!(app.next_arrival().await, "/hold");
    server.api().call(reqwest::Method::POST, &format!("/api/tunnels/{tunnel_id}/disconnect"), None).await.unwrap();
    let log = next_request_log(&mut client).await;
    let error = log.error.unwrap_or_default();
    assert!(error.starts_with("not answered before the server ended the session ("), "{error}");
    held.abort();
}

/// Ending a session mid-transfer, with the server sending as fast as it can,
/// still tells the client why and stops it for good (a client that missed the
/// reason would reconnect and bring the tunnel back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_an_upload_still_ends_the_client_for_good() {
    use futures_util::stream;
    let s = Setup::new().await;
    // An upload the app drains as fast as it comes: the server sends to the
    // client as fast as congestion control lets it.
    let chunk = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    let body = stream::iter((0..16 * 1024).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let upload = tokio::spawn(http().post(s.url("/upload")).body(reqwest::Body::wrap_stream(body)).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = s.server.api().call(Method::POST, &format!("/api/tunnels/{}/disconnect", s.tunnel_id), None).await;
    assert_eq!(v.unwrap(), serde_json::json!({ "success": true }));
    match s.client.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("disconnected"), "{msg}"),
        other => panic!("client should stop for good, got {other:?}"),
    }
    // The upload was still running when the session ended, and failed with it.
    let upload = tokio::time::timeout(Duration::from_secs(10), upload).await.unwrap().unwrap();
    assert!(upload.map_or(true, |r| r.status() != 200), "the upload outlived its session");
    assert_eq!(status(&s.server, &s.tunnel_id).await["liveStatus"]["connected"], false);
}

/// A bare QUIC endpoint standing in for the server (the real one answers
/// `/api/info`): it takes one client's handshake, answers with `hello`, and
/// hands the connection and its control stream to `then`.
async fn fake_quic_server<F, Fut, T>(
    accepts_leaving: bool,
    then: F,
) -> (TestServer, hookway::client::ClientConfig, tokio::task::JoinHandle<T>)
where
    F: FnOnce(quinn::Endpoint, quinn::Connection, hookway::quic::FrameWriter, hookway::quic::FrameReader) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    use hookway::quic::{self, FrameReader, FrameWriter, tls};
    use hookway::wire::{Frame, ServerHello};

    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = tls::Identity::self_signed_in(dir.path(), &[]).unwrap();
    let fake = quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, None, &Default::default()).unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let _dir = dir;
        let conn = fake.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let (mut tx, mut rx) = (FrameWriter::new(send), FrameReader::new(recv));
        assert!(matches!(rx.next().await.unwrap(), Some(Frame::ClientHello(_))));
        let hello = ServerHello {
            tunnel_id: "tun_fake".into(),
            name: "fake".into(),
            subdomain: "fake".into(),
            tunnel_url: "http://127.0.0.1/t/fake".into(),
            host_url: None,
            heartbeat_interval_ms: 5000,
            accepts_leaving,
        };
        tx.send(&Frame::ServerHello(hello)).await.unwrap();
        then(fake, conn, tx, rx).await
    });
    let config = hookway::client::ClientConfig {
        fingerprint: Some(identity.fingerprint()),
        quic_addr: Some(fake_addr.to_string()),
        ..hookway::client::ClientConfig::new(&server.url, "tun_fake", "tok", closed_port().await)
    };
    (server, config, peer)
}

/// A server whose close packet never comes (quinn sends none while
/// congestion-blocked, and a lost one is not resent): the client learns from
/// the notice on the control stream alone that its session was ended on
/// purpose, closes by itself and stops for good, without a reconnect.
#[tokio::test]
async fn the_client_stops_on_the_end_notice_even_if_no_close_packet_arrives() {
    use hookway::quic::close;
    use hookway::wire::{Frame, SessionEnded};

    // The fake sends the notice and then never closes.
    let (_server, config, peer) = fake_quic_server(false, |fake, conn, mut tx, _rx| async move {
        let notice = SessionEnded { close_code: close::DISCONNECTED.into_inner() as u32, message: "bye".into() };
        tx.send(&Frame::SessionEnded(notice)).await.unwrap();
        let closed = conn.closed().await;
        // A reconnect would show up here; none may within a backoff or two.
        let again = tokio::time::timeout(Duration::from_secs(1), fake.accept()).await.is_ok();
        (closed, again)
    })
    .await;
    let client = hookway::client::run(config, |_| {}, tokio_util::sync::CancellationToken::new());
    // Well within the server's grace period: the notice, not a timeout, ended it.
    match tokio::time::timeout(Duration::from_secs(1), client).await.expect("the client stops on the notice") {
        Err(ClientError::Ended(msg)) => assert!(msg.contains("disconnected"), "{msg}"),
        other => panic!("client should stop for good, got {other:?}"),
    }
    let (closed, reconnected) = peer.await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::NORMAL),
        other => panic!("the client should close the connection itself, got {other}"),
    }
    assert!(!reconnected, "the client reconnected after a final end");
}

/// A stopping client says it is leaving only to a server whose hello says it
/// takes that: one from before it would read the frame as a protocol error
/// and end the session with the requests still in flight.
#[tokio::test]
async fn a_stopping_client_says_it_is_leaving_only_to_a_server_that_takes_it() {
    use hookway::quic::FrameWriter;
    use hookway::wire::{Frame, RequestHead};

    for accepts in [true, false] {
        let mut app = spawn_held_app().await;
        let (_server, mut config, peer) = fake_quic_server(accepts, |fake, conn, tx, mut rx| async move {
            // (Held: a control stream dropped would end the session.)
            let _held = (fake, tx);
            // A request the app holds: the client drains while it is answered.
            let (send, _recv) = conn.open_bi().await.unwrap();
            let mut request = FrameWriter::new(send);
            let head = RequestHead {
                method: http::Method::GET,
                target: bytes::Bytes::from_static(b"/hold"),
                headers: Default::default(),
                client_ip: None,
                request_id: bytes::Bytes::new(),
            };
            request.send(&Frame::RequestHead(head)).await.unwrap();
            request.send(&Frame::End).await.unwrap();
            let mut frames = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while let Ok(Ok(Some(frame))) = tokio::time::timeout_at(deadline, rx.next()).await {
                frames.push(frame);
            }
            (conn, frames)
        })
        .await;
        config.local_port = app.addr.port();
        let stop = tokio_util::sync::CancellationToken::new();
        let client = tokio::spawn(hookway::client::run(config, |_| {}, stop.clone()));
        assert_eq!(app.next_arrival().await, "/hold");
        stop.cancel();
        let (_conn, frames) = peer.await.unwrap();
        let left = frames.iter().any(|f| matches!(f, Frame::Leaving));
        assert_eq!(left, accepts, "hello accepts leaving: {accepts}; frames: {frames:?}");
        app.release.add_permits(1);
        let stopped = tokio::time::timeout(Duration::from_secs(5), client).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    }
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux platform.
    Duration::from_millis(ticks * 10)
}

/// The client busy-polls around a request (`--busy-poll-us` reaches it), and
/// an idle client uses no CPU, before a request and after its budget: a
/// spinner that never stopped would burn a core for as long as the tunnel is
/// up. (Whether the polling itself shows as CPU depends on how busy the
/// machine is: the client backs off when preempted.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_client_busy_polls_around_requests_and_never_while_idle() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &id, &app.port().to_string(), "--json", "--server", &server.url])
        .args(["--token", &token, "--busy-poll-us", "200000"])
        .env_remove("HOOKWAY_API_KEY")
        .env("RUST_LOG", "hookway::client::spin=trace")
        .stderr(Stdio::piped());
    let (mut child, _, connected) = spawn_connected(cmd).await;
    let url = connected["tunnelUrl"].as_str().unwrap().to_owned();
    let pid = child.id().unwrap();
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu_time(pid) - before;
    assert!(idle < Duration::from_millis(100), "connected and idle, the client used {idle:?} of CPU in 1 s");

    let resp = http().post(format!("{url}/echo")).body("hi").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let polled = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("busy-polling") && line.contains("budget_us=200000") {
                return;
            }
        }
        panic!("the client exited");
    });
    polled.await.expect("the client logs that it busy-polls around the request");

    // Well past the budget: polling has stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cpu_time(pid) - before;
    assert!(after < Duration::from_millis(100), "the client kept polling after the budget: {after:?} of CPU in 1 s");
}

/// ctrl-c on a client lets the request the app is answering finish, then
/// says goodbye: the server knows at once, and a request after it is told
/// the tunnel is offline (503), not that the tunnel broke (502).
#[tokio::test]
async fn a_stopped_client_finishes_its_requests_and_says_goodbye() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args([
        "tunnels",
        "connect",
        &id,
        &app.port().to_string(),
        "--json",
        "--server",
        &server.url,
        "--token",
        &token,
    ])
    .env_remove("HOOKWAY_API_KEY")
    .stderr(Stdio::null());
    let (mut child, mut lines, v) = spawn_connected(cmd).await;
    let url = v["tunnelUrl"].as_str().unwrap().to_owned();
    let slow = tokio::spawn({
        let url = url.clone();
        async move { http().get(format!("{url}/slow?ms=3000")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    // Sent while the client drains: refused at once (not after the drain), as offline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let during = http().get(format!("{url}/echo")).send().await.unwrap();
    assert!(sent.elapsed() < Duration::from_millis(1500), "answered before the drain ended: {:?}", sent.elapsed());
    assert_eq!(during.status(), 503, "{:?}", during.text().await);

    let resp = tokio::time::timeout(Duration::from_secs(10), slow).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in flight finished");
    assert_eq!(resp.text().await.unwrap(), "slow done");
    assert!(tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap().success());
    let mut events = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        events.push(serde_json::from_str::<Value>(&line).unwrap()["event"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        events.contains(&"stopping".to_owned()) && events.last().map(String::as_str) == Some("stopped"),
        "{events:?}"
    );
    // The goodbye arrived: no idle timeout to wait for.
    assert_eq!(status(&server, &id).await["liveStatus"]["connected"], false);
    let after = http().get(format!("{url}/echo")).send().await.unwrap();
    assert_eq!(after.status(), 503);
}

/// A server that crashed (SIGKILL: no goodbye) and came back on the same
/// data dir: its clients learn at their next keep-alive that their connection
/// is gone (a stateless reset signed with the key kept in the data dir) and
/// reconnect at once, instead of waiting out the 9 s idle timeout.
#[tokio::test]
async fn clients_of_a_crashed_server_reconnect_as_soon_as_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = closed_port().await;
    let quic_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server_cmd = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
        cmd.args(["server", "--http", &format!("127.0.0.1:{http_port}")])
            .args(["--quic", &format!("127.0.0.1:{quic_port}"), "--data-dir"])
            .arg(dir.path())
            .env("HOOKWAY_API_KEY", API_KEY)
            .stderr(Stdio::null());
        cmd
    };
    let (mut server, addr) = spawn_server(server_cmd()).await;
    let base = format!("http://{addr}");
    let created = hookway::client::ApiClient::new(&base, Some(API_KEY.into())).create_tunnel("crash", None).await;
    let created = created.unwrap();
    let app = spawn_app().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &created.tunnel.id, &app.port().to_string(), "--json", "--server", &base])
        .args(["--token", &created.auth_token])
        .env_remove("HOOKWAY_API_KEY")
        .stderr(Stdio::null());
    let (_client, mut lines, _) = spawn_connected(cmd).await;

    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let killed_at = Instant::now();
    let (_server, _) = spawn_server(server_cmd()).await;
    next_event(&mut lines, Duration::from_secs(15), "reconnection", |e| e["event"] == "reconnected").await;
    // Keep-alives go every 2 s; the idle timeout is 9 s: room for a slow
    // restart of the server and a first back-off, and still well short of 9.
    assert!(killed_at.elapsed() < Duration::from_millis(7500), "reconnected only after {:?}", killed_at.elapsed());
    let resp = http().post(format!("{}/echo", created.tunnel_url)).body("back").send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// A server that cannot be reached is retried, and each retry says why in
/// full, as the start-up error does.
#[tokio::test]
async fn retries_name_the_root_cause() {
    let url = format!("http://127.0.0.1:{}", closed_port().await);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let config = hookway::client::ClientConfig {
        busy_poll: Duration::ZERO,
        ..hookway::client::ClientConfig::new(&url, "tun_x", "t", closed_port().await)
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(hookway::client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    let hookway::client::Event::Reconnecting { reason, .. } = event else { panic!("{event:?}") };
    // reqwest's own message stops at "error sending request for url (…)".
    assert!(reason.contains("cannot reach") && reason.contains("Connection refused"), "{reason}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A QUIC port that never answers (UDP blocked on the way) is retried, and
/// the client says what to try instead: `--ws`, over the HTTP port. It says
/// so first after `SLOW_CONNECT`, naming the address, while the first
/// attempt goes on, rather than nothing until that attempt times out.
#[tokio::test]
async fn a_silent_quic_port_suggests_the_websocket_transport() {
    let server = TestServer::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    // Bound, so nothing answers "port unreachable"; never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let config = hookway::client::ClientConfig {
        quic_addr: Some(to.clone()),
        busy_poll: Duration::ZERO,
        ..hookway::client::ClientConfig::new(&server.url, id, token, closed_port().await)
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(hookway::client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
    let event = tokio::time::timeout(Duration::from_secs(8), events.recv()).await.unwrap().unwrap();
    let hookway::client::Event::SlowConnect { to: told, waited } = event else { panic!("{event:?}") };
    assert_eq!((told, waited), (to, hookway::client::SLOW_CONNECT));
    assert!(started.elapsed() >= hookway::client::SLOW_CONNECT, "told after {:?}", started.elapsed());
    let event = tokio::time::timeout(Duration::from_secs(20), events.recv()).await.unwrap().unwrap();
    let hookway::client::Event::Reconnecting { reason, was_connected: false, .. } = event else { panic!("{event:?}") };
    assert!(reason.contains("timed out connecting over QUIC") && reason.contains("--ws"), "{reason}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Issue: with its data dir deleted under it, the server went on as if
/// nothing happened: tunnels created, tokens regenerated and requests
/// captured went into files no path led to, all lost at the next start (and
/// with the lock file gone, a second server could take the dir). It now
/// notices within its check period and stops, gracefully, saying why; and
/// so when a file of the dir is replaced by another.
#[tokio::test]
async fn a_server_whose_data_dir_goes_stops_and_says_why() {
    let every = Duration::from_millis(100);
    let server = TestServer::start_with(|c| c.data_dir_check = every).await;
    create_tunnel(&server, None).await;
    tokio::time::sleep(every * 3).await;
    assert!(!server.task.is_finished(), "an untouched dir is no reason to stop");
    std::fs::remove_dir_all(server.data_dir()).unwrap();
    let TestServer { task, shutdown, http, dir, .. } = server;
    let lost = tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on its own").unwrap();
    let lost = lost.expect_err("says why");
    assert_eq!((lost.path, lost.change), (dir.path().join("hookway.db"), "deleted"));
    assert!(!shutdown.is_cancelled(), "the caller's token is left alone");
    assert!(tokio::net::TcpStream::connect(http).await.is_err(), "no longer serving");

    // A database put in place of the one the server has open (a restore
    // under a running server) is not the one it writes to either.
    let server = TestServer::start_with(|c| c.data_dir_check = every).await;
    let db = server.data_dir().join("hookway.db");
    std::fs::copy(&db, db.with_extension("copy")).unwrap();
    std::fs::rename(db.with_extension("copy"), &db).unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("stops on its own").unwrap();
    let lost = lost.expect_err("says why");
    assert_eq!((lost.path.as_path(), lost.change), (db.as_path(), "replaced"));
    assert!(lost.to_string().contains("restore it from a backup"), "{lost}");
}
