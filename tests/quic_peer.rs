//! A hostile or broken peer on the QUIC listener: garbage, oversized frames and
//! wrong versions get a clear refusal and never disturb the server.

mod common;

use std::time::Duration;

use common::*;
use hookway::quic::{FrameReader, FrameWriter, close};
use hookway::wire::{ClientHello, Frame, RejectCode, ResponseHead};

async fn closed_with(conn: &quinn::Connection) -> quinn::VarInt {
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code,
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_connection_with_a_protocol_error() {
    let server = TestServer::start().await;
    for bytes in [vec![0, 0, 0, 3, 0xff, 0xff, 0xff], u32::MAX.to_be_bytes().to_vec(), vec![0, 0, 0, 0]] {
        let conn = raw_connection(&server).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        assert_eq!(closed_with(&conn).await, close::PROTOCOL_ERROR, "{bytes:?}");
    }
    // A frame that is valid but not a hello is refused the same way.
    let conn = raw_connection(&server).await;
    let (send, _recv) = conn.open_bi().await.unwrap();
    FrameWriter::new(send).send(&Frame::Ping(1)).await.unwrap();
    assert_eq!(closed_with(&conn).await, close::PROTOCOL_ERROR);
    // The server is unharmed.
    assert_eq!(http().get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn wrong_version_and_unknown_tunnel_are_rejected_with_a_reason() {
    let server = TestServer::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    for (tunnel_id, version, want) in [
        (id.as_str(), 99, RejectCode::UnsupportedVersion),
        ("tun_unknown", hookway::wire::PROTOCOL_VERSION, RejectCode::UnknownTunnel),
    ] {
        let conn = raw_connection(&server).await;
        let (send, recv) = conn.open_bi().await.unwrap();
        let hello = ClientHello {
            tunnel_id: tunnel_id.into(),
            auth_token: token.clone(),
            protocol_version: version,
            client_version: "test".into(),
        };
        FrameWriter::new(send).send(&Frame::ClientHello(hello)).await.unwrap();
        match FrameReader::new(recv).next().await.unwrap() {
            Some(Frame::Rejected(r)) => {
                assert_eq!(r.code, want);
                assert!(!r.message.is_empty());
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

/// A tunnel client whose response head carries a header name that is not
/// valid HTTP: the caller gets a 502 saying so, and the tunnel still serves.
#[tokio::test]
async fn a_response_header_that_is_not_http_is_a_bad_gateway() {
    let server = TestServer::start().await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    let (conn, _control_tx, _control_rx) = live_peer(&server, &id, &token).await;

    // Answers each request with `name: ok`, the name patched into the bytes.
    let peer = conn.clone();
    tokio::spawn(async move {
        while let Ok((send, recv)) = peer.accept_bi().await {
            let mut reader = FrameReader::new(recv);
            let Ok(Some(Frame::RequestHead(request))) = reader.next().await else { return };
            while !matches!(reader.next().await, Ok(Some(Frame::End)) | Ok(None) | Err(_)) {}
            let mut headers = http::HeaderMap::new();
            headers.insert("x-bad", http::HeaderValue::from_static("ok"));
            let head = Frame::ResponseHead(ResponseHead {
                status: http::StatusCode::OK,
                headers: headers.into(),
                reason: bytes::Bytes::new(),
            });
            let mut bytes = hookway::wire::encode_to_bytes(&head).to_vec();
            if &request.target[..] == b"/bad" {
                let at = bytes.windows(5).position(|w| w == b"x-bad").unwrap();
                bytes[at + 1] = b' ';
            }
            let mut send = send;
            send.write_all(&bytes).await.unwrap();
            send.write_all(&hookway::wire::encode_to_bytes(&Frame::End)).await.unwrap();
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    });
    let url = format!("{}/t/{subdomain}", server.url);
    let resp = http().get(format!("{url}/bad")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-hookway-error"], "tunnel-error");
    assert!(resp.text().await.unwrap().contains("not valid HTTP"));
    let resp = http().get(format!("{url}/good")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bad"], "ok");
}

/// A session ended through the API is told why on the control stream before
/// the close, and a peer that ignores the notice is closed with the same code
/// after the grace period: the reason does not depend on the close packet,
/// which quinn does not send while congestion-blocked.
#[tokio::test]
async fn an_ended_session_hears_why_on_the_control_stream_then_is_closed() {
    let server = TestServer::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let (conn, _control_tx, mut control_rx) = live_peer(&server, &id, &token).await;

    server.api().call(reqwest::Method::POST, &format!("/api/tunnels/{id}/disconnect"), None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), control_rx.next()).await.unwrap().unwrap() {
        Some(Frame::SessionEnded(notice)) => {
            assert_eq!(quinn::VarInt::from_u32(notice.close_code), close::DISCONNECTED);
            assert!(notice.message.contains("disconnected"), "{}", notice.message);
        }
        other => panic!("expected the session's end on the control stream, got {other:?}"),
    }
    // The notice is the last frame; the connection then closes with its code.
    assert!(matches!(control_rx.next().await, Ok(None) | Err(_)));
    assert_eq!(closed_with(&conn).await, close::DISCONNECTED);
}

/// A client stopping refuses the streams the server opened before it read
/// the client's `Leaving`: no app saw those requests, so, with an offline
/// reply set, their callers get it (the request recorded whole, to replay),
/// as a request a moment later does; without one, the 503 "going offline".
#[tokio::test]
async fn a_stream_refused_by_a_leaving_client_gets_the_offline_reply() {
    let server = TestServer::start().await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    let (conn, _control_tx, _control_rx) = live_peer(&server, &id, &token).await;
    let peer = conn.clone();
    tokio::spawn(async move {
        while let Ok((mut send, _recv)) = peer.accept_bi().await {
            let _ = send.reset(close::STREAM_REFUSED);
        }
    });
    let url = format!("{}/t/{subdomain}/hook", server.url);
    let before = http().post(&url).body(r#"{"n":1}"#).send().await.unwrap();
    assert_eq!(before.status(), 503);
    assert!(before.text().await.unwrap().contains("going offline"));

    let path = format!("/api/tunnels/{id}");
    let set = r#"{"offlineReply": {"status": 202}}"#;
    let (status, body) = raw_api(&server, reqwest::Method::PATCH, &path, Some(&bearer()), Some(set)).await;
    assert_eq!(status, 200, "{body}");
    let after = http().post(&url).body(r#"{"n":2}"#).send().await.unwrap();
    assert_eq!(after.status(), 202);
    assert_eq!(after.headers()["x-hookway-offline"], "recorded");
    let list = wait_for_records(&server, &id, 2).await;
    assert_eq!((list[0]["outcome"].as_str(), list[0]["status"].as_u64()), (Some("tunnel-offline"), Some(202)));
    assert_eq!((list[1]["outcome"].as_str(), list[1]["status"].as_u64()), (Some("tunnel-offline"), Some(503)));
}

/// A client that says it is leaving is offline at once, and one that then
/// never closes its connection (buggy, or holding on) is closed by the server
/// once twice our client's drain has passed: out of the routing map, no API
/// call could end it any more.
#[tokio::test]
async fn a_leaving_client_that_never_closes_is_closed_after_its_drain() {
    let server = TestServer::start().await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    let (conn, mut control_tx, _control_rx) = live_peer(&server, &id, &token).await;
    control_tx.send(&Frame::Leaving).await.unwrap();
    let left = tokio::time::Instant::now();
    let url = format!("{}/t/{subdomain}/x", server.url);
    let offline = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let resp = http().get(&url).send().await.unwrap();
            if resp.status() == 503 && resp.text().await.unwrap().contains("no client is connected") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    offline.await.expect("the tunnel is offline once the server read Leaving");
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await.expect("closed by the server");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::NORMAL),
        "{closed}"
    );
    let after = left.elapsed();
    assert!(
        after >= hookway::server::session::LEFT_DRAIN - Duration::from_millis(500),
        "closed after {after:?}, in its drain"
    );
}

/// After `Leaving`, pings go unanswered (a client that pings without reading
/// could otherwise block the server's pong, and with it the close at the end
/// of its drain), and a client that then ends its control stream is closed
/// at once: nothing else supervises a session out of the routing map.
#[tokio::test]
async fn after_leaving_pings_are_not_answered_and_the_control_streams_end_closes() {
    let server = TestServer::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let (conn, mut control_tx, mut control_rx) = live_peer(&server, &id, &token).await;
    control_tx.send(&Frame::Ping(1)).await.unwrap();
    assert!(matches!(control_rx.next().await.unwrap(), Some(Frame::Pong(1))), "answered before leaving");
    control_tx.send(&Frame::Leaving).await.unwrap();
    control_tx.send(&Frame::Ping(2)).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_millis(500), control_rx.next()).await;
    assert!(pong.is_err(), "a pong after leaving: {pong:?}");
    control_tx.finish();
    assert_eq!(closed_with(&conn).await, close::NORMAL);
}

/// A client endpoint bound to `ip` (any of 127/8 is this machine), trusting
/// `server`'s certificate.
async fn endpoint_on(server: &TestServer, ip: &str) -> quinn::Endpoint {
    let fp = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    let tls = hookway::quic::tls::Trust::pinned(&fp).unwrap().client_config();
    let config =
        quinn::ClientConfig::new(std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// Connections that never say who they are each hold a handshake place until
/// their handshake times out: one address has at most `MAX_HANDSHAKES_PER_IP`
/// of them and all together `MAX_HANDSHAKES`; past either, new connections are
/// refused at once, and places freed are taken again. A client that
/// authenticates gives its place back: live tunnels do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_bounded() {
    use hookway::server::session::{MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP};
    let server = TestServer::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    // One that authenticates first: it must not keep a place.
    let (_live, _control_tx, _control_rx) = live_peer(&server, &id, &token).await;
    let refused = |outcome: Result<quinn::Connection, quinn::ConnectionError>| match outcome {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        }
        _ => false,
    };
    let mut silent = Vec::new();
    let mut ips = 0;
    for (i, host) in (1..=MAX_HANDSHAKES / MAX_HANDSHAKES_PER_IP + 1).map(|i| (i, format!("127.0.0.{i}"))) {
        let endpoint = endpoint_on(&server, &host).await;
        let room = MAX_HANDSHAKES - silent.len();
        for _ in 0..MAX_HANDSHAKES_PER_IP.min(room) {
            silent.push(endpoint.connect(server.quic, "localhost").unwrap().await.expect("within the budget"));
        }
        let past = endpoint.connect(server.quic, "localhost").unwrap().await;
        assert!(refused(past), "{host}: past its share or the whole budget, refused");
        ips = i;
    }
    assert_eq!((silent.len(), ips), (MAX_HANDSHAKES, MAX_HANDSHAKES / MAX_HANDSHAKES_PER_IP + 1));
    // A tunnel client meeting the refusal says why, and retries.
    let (id2, token2, _) = create_tunnel(&server, None).await;
    let mut client = TestClient::spawn(&server, &id2, &token2, closed_port().await);
    match tokio::time::timeout(Duration::from_secs(10), client.events.recv()).await.unwrap().unwrap() {
        hookway::client::Event::Reconnecting { reason, .. } => assert!(reason.contains("busy"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    // Places freed are taken again: it connects.
    for conn in silent.drain(..) {
        conn.close(0u32.into(), b"bye");
    }
    client.wait_connected().await;
}

/// Anyone can be refused, as often as they like: the server logs refusals at
/// most about once a second, with the count left out, and the tunnel id (the
/// client's to choose) escaped and cut short, so it cannot forge log lines or
/// grow the log by its length.
#[tokio::test]
async fn refusals_cannot_flood_or_forge_the_log() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    cmd.env_remove("HOOKWAY_API_KEY").env_remove("RUST_LOG").stderr(std::process::Stdio::piped());
    let (mut child, http) = spawn_server(cmd).await;
    let info = hookway::client::ApiClient::new(&format!("http://{http}"), None).info().await.unwrap();
    let quic = std::net::SocketAddr::new(http.ip(), info.quic_port);
    let trust = hookway::quic::tls::Trust::pinned(&info.cert_fingerprint.unwrap()).unwrap();
    let endpoint = hookway::quic::client_endpoint(quic, &trust).unwrap();
    let refuse = async |i: usize| {
        let conn = endpoint.connect(quic, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let hello = ClientHello {
            tunnel_id: format!("tun_x\n2099-01-01T00:00:00Z  INFO fake: forged {i} {}", "y".repeat(10_000)),
            auth_token: "hwt_wrong".into(),
            protocol_version: hookway::wire::PROTOCOL_VERSION,
            client_version: "test".into(),
        };
        FrameWriter::new(send).send(&Frame::ClientHello(hello)).await.unwrap();
        let answer = FrameReader::new(recv).next().await.unwrap();
        assert!(matches!(answer, Some(Frame::Rejected(_))), "{answer:?}");
        conn.close(0u32.into(), b"");
    };
    for i in 0..20 {
        refuse(i).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refuse(20).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    child.wait().await.unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("client refused")).collect();
    assert!((2..=4).contains(&refused.len()), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("refused_unlogged=")), "{refused:#?}");
    assert!(refused[0].contains(r#"tunnel_id="tun_x\n2099"#), "escaped: {}", refused[0]);
    assert!(!log.lines().any(|l| l.starts_with("2099")), "a forged line: {log}");
    assert!(log.len() < 8_000, "the ids' length reached the log: {} bytes", log.len());
}

/// A tunnel client answering each request with the frames `answer` gives for
/// its target (after reading the request to its end).
fn scripted_peer(conn: quinn::Connection, answer: fn(&[u8]) -> Vec<Frame>) {
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let mut reader = FrameReader::new(recv);
                let Ok(Some(Frame::RequestHead(request))) = reader.next().await else { return };
                while !matches!(reader.next().await, Ok(Some(Frame::End)) | Ok(None) | Err(_)) {}
                let mut writer = FrameWriter::new(send);
                for frame in answer(&request.target) {
                    let _ = writer.send(&frame).await;
                }
                writer.finish();
            });
        }
    });
}

fn head_with(status: u16, headers: &[(&str, &str)]) -> Frame {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), http::HeaderValue::from_str(value).unwrap());
    }
    Frame::ResponseHead(ResponseHead {
        status: http::StatusCode::from_u16(status).unwrap(),
        headers: map.into(),
        reason: bytes::Bytes::new(),
    })
}

/// What a tunnel client says of a failed request reaches the caller as one
/// short line; a `content-length` it sends must be one length, and a body
/// that ends short of it is cut, not passed (or recorded) as whole.
#[tokio::test]
async fn a_clients_error_text_and_response_length_are_checked() {
    let server = TestServer::start().await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    let (conn, _control_tx, _control_rx) = live_peer(&server, &id, &token).await;
    scripted_peer(conn, |target| {
        let body = |text: &'static str| Frame::Body(bytes::Bytes::from_static(text.as_bytes()));
        match target {
            b"/error" => vec![Frame::Error(hookway::wire::StreamError {
                code: hookway::wire::StreamErrorCode::LocalUnreachable,
                message: format!("refused\r\nX-Injected: yes\n\u{1b}[2J{}", "z".repeat(100_000)),
            })],
            b"/invalid" => vec![head_with(200, &[("content-length", "abc")]), body("hello"), Frame::End],
            b"/two" => {
                vec![head_with(200, &[("content-length", "5"), ("content-length", "7")]), body("hello"), Frame::End]
            }
            b"/same" => vec![head_with(200, &[("content-length", "5, 5")]), body("hello"), Frame::End],
            b"/short" => vec![head_with(200, &[("content-length", "50")]), body("hello"), Frame::End],
            b"/long" => vec![head_with(200, &[("content-length", "5")]), body("hello"), body("world"), Frame::End],
            b"/longer" => vec![head_with(200, &[("content-length", "5")]), body("hello world"), Frame::End],
            _ => vec![head_with(200, &[("content-length", "5")]), body("hello"), Frame::End],
        }
    });
    let url = format!("{}/t/{subdomain}", server.url);

    let resp = http().get(format!("{url}/error")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-hookway-error"], "local-unreachable");
    let text = resp.text().await.unwrap();
    assert!(text.len() < 700 && text.trim_end().lines().count() == 1, "{} bytes: {text:?}", text.len());
    assert!(text.starts_with("hookway: refused") && !text.contains('\u{1b}'), "{text:?}");

    for bad in ["/invalid", "/two"] {
        let resp = http().get(format!("{url}{bad}")).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{bad}");
        assert_eq!(resp.headers()["x-hookway-error"], "tunnel-error", "{bad}");
        assert!(resp.text().await.unwrap().contains("invalid content-length"), "{bad}");
    }
    let resp = http().head(format!("{url}/invalid")).send().await.unwrap();
    assert_eq!(resp.status(), 502, "HEAD");

    let resp = http().get(format!("{url}/same")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
    assert_eq!(resp.text().await.unwrap(), "hello");

    let resp = http().get(format!("{url}/short")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "a body short of its length reads as whole");
    // A HEAD's length is the GET's: no body owed.
    let resp = http().head(format!("{url}/short")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["content-length"].to_str().unwrap()), (200, "50"));

    // More than declared: the caller gets what was declared, over HTTP/2 too
    // (hyper's HTTP/2 sent the rest, which the caller took for a protocol error).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for client in [http(), h2] {
        for long in ["/long", "/longer"] {
            let resp = client.get(format!("{url}{long}")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{long}");
            assert_eq!(resp.text().await.unwrap(), "hello", "{long}");
        }
    }

    let records = wait_for_records(&server, &id, 11).await;
    let short: Vec<_> =
        records.iter().filter(|r| r["path"] == "/short" && r["method"] == "GET").map(|r| &r["outcome"]).collect();
    assert_eq!(short, ["incomplete"], "{records:#?}");
}

/// A client that takes no new request stream (it has as many as it allows in
/// flight) gets the caller a 504 that says so, not one blaming the app.
#[tokio::test]
async fn a_client_taking_no_stream_is_a_timeout_that_says_so() {
    let server = TestServer::start_with(|c| c.request_timeout = Duration::from_millis(500)).await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    // A client endpoint that lets the server open no stream at all.
    let fp = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    let tls = hookway::quic::tls::Trust::pinned(&fp).unwrap().client_config();
    let mut config =
        quinn::ClientConfig::new(std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(0u32.into());
    config.transport_config(std::sync::Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(server.quic, "localhost").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let hello = ClientHello {
        tunnel_id: id,
        auth_token: token,
        protocol_version: hookway::wire::PROTOCOL_VERSION,
        client_version: "test".into(),
    };
    // (Kept: the end of the control stream would end the session.)
    let mut control_tx = FrameWriter::new(send);
    control_tx.send(&Frame::ClientHello(hello)).await.unwrap();
    let mut control_rx = FrameReader::new(recv);
    assert!(matches!(control_rx.next().await.unwrap(), Some(Frame::ServerHello(_))));
    let resp = http().get(format!("{}/t/{subdomain}/x", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-hookway-error"], "timeout");
    let text = resp.text().await.unwrap();
    assert!(text.contains("took no new request") && !text.contains("local app"), "{text}");
}

/// A client that answers at once and then reads no more of a large upload
/// does not hold the upload, or its caller's connection, for ever: once none
/// of it has moved for twice the request timeout, the edge lets both go.
#[tokio::test]
async fn an_upload_the_client_stops_taking_after_answering_is_ended() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|c| c.request_timeout = Duration::from_millis(500)).await;
    let (id, token, subdomain) = create_tunnel(&server, None).await;
    let (conn, _control_tx, _control_rx) = live_peer(&server, &id, &token).await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((send, recv)) = conn.accept_bi().await {
            let mut writer = FrameWriter::new(send);
            let _ = writer.send(&head_with(200, &[("content-length", "2")])).await;
            let _ = writer.send(&Frame::Body(bytes::Bytes::from_static(b"ok"))).await;
            let _ = writer.send(&Frame::End).await;
            writer.finish();
            held.push(recv); // never read
        }
    });
    let stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /t/{subdomain}/up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 512u64 << 20);
    write.write_all(head.as_bytes()).await.unwrap();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 ") && got.ends_with("ok"), "{got}");
    assert!(closed.is_ok(), "the edge kept the upload's connection open");
    sender.abort();
}
