//! `hookway webhooks …` as a user reads it: the real binary against a real
//! server, with a real receiver for the deliveries.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use reqwest::Method;
use serde_json::{Value, json};

/// Runs the binary with the test key against `server`; (exit code, stdout, stderr).
async fn hookway(args: &[&str], server: &TestServer) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"))
        .args(args)
        .env("HOOKWAY_SERVER", &server.url)
        .env("HOOKWAY_API_KEY", API_KEY)
        .env("COLUMNS", "200")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A receiver that answers every delivery with `status` and `body`.
async fn receiver(status: u16, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn api(server: &TestServer, method: Method, path: &str, body: Value) -> (u16, Value) {
    let (status, v) = raw_api(server, method, path, Some(&bearer()), Some(&body.to_string())).await;
    (status.as_u16(), v)
}

async fn create_webhook(server: &TestServer, body: Value) -> String {
    let (status, v) = api(server, Method::POST, "/api/webhooks", body).await;
    assert_eq!(status, 201, "{v}");
    v["webhook"]["id"].as_str().unwrap().to_owned()
}

/// Polls the delivery log until it holds `n` deliveries, none pending.
async fn settled_deliveries(server: &TestServer, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) =
            raw_api(server, Method::GET, &format!("/api/webhooks/{id}/deliveries"), Some(&bearer()), None).await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        if list.len() >= n && list.iter().all(|d| d["status"] != "pending") {
            return list;
        }
        assert!(Instant::now() < deadline, "{n} settled deliveries within 20 s: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row of a table has its cells where the header puts its columns:
/// `left` ones start under their title, `right` ones end under it.
fn assert_aligned(out: &str, left: &[&str], right: &[&str]) {
    let lines: Vec<Vec<char>> = out.lines().map(|l| l.chars().collect()).collect();
    assert!(lines.len() > 1, "a header and rows: {out}");
    let header: String = lines[0].iter().collect();
    let blank = |row: &[char], i: usize| row.get(i).is_none_or(|c| *c == ' ');
    for row in &lines[1..] {
        for title in left {
            let at = header.find(title).unwrap_or_else(|| panic!("{title} in {header}"));
            assert!(blank(row, at.wrapping_sub(1)) && !blank(row, at), "{title} starts at {at}:\n{out}");
        }
        for title in right {
            let end = header.find(title).unwrap_or_else(|| panic!("{title} in {header}")) + title.len();
            assert!(!blank(row, end - 1) && blank(row, end), "{title} ends at {end}:\n{out}");
        }
    }
}

#[tokio::test]
async fn listings_line_up_whatever_the_values() {
    let server = TestServer::start_with(|c| c.webhooks.allow_private = true).await;
    let (code, out, err) = hookway(&["webhooks", "list"], &server).await;
    assert_eq!((code, out.as_str()), (0, ""), "no webhooks: no table, a hint instead");
    assert!(err.contains("hookway webhooks create"), "{err}");
    let refusing = receiver(400, "nope:\n  the payload\tlooks wrong").await;
    let id = create_webhook(
        &server,
        json!({"url": format!("http://{refusing}/hook"), "events": ["tunnel.connected", "token.connected"], "name": "ops alerts"}),
    )
    .await;
    create_webhook(
        &server,
        json!({"url": "http://127.0.0.1:9/a-much-longer-path/than-the-other", "events": ["tunnel.disconnected"], "enabled": false, "group": "prod"}),
    )
    .await;
    let (tunnel, token, _) = create_tunnel(&server, None).await;
    let client = TestClient::connect(&server, &tunnel, &token, closed_port().await).await;
    settled_deliveries(&server, &id, 2).await;

    let (code, out, err) = hookway(&["webhooks", "list"], &server).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_aligned(&out, &["ID", "NAME", "GROUP", "ENABLED", "URL", "EVENTS"], &["REQS/24H", "SUCCESS"]);
    assert!(out.lines().any(|l| l.contains("ops alerts")), "the name: {out}");
    assert!(out.lines().any(|l| l.contains(" prod ")), "the group: {out}");
    assert!(
        out.lines().any(|l| l.contains(" prod ") && l.contains(" no ")) && out.contains("0%") && out.contains(&id),
        "{out}"
    );

    let (code, out, err) = hookway(&["webhooks", "deliveries", &id], &server).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_aligned(&out, &["TIME", "EVENT", "SUBJECT", "STATUS", "DETAIL"], &["ATTEMPTS", "HTTP"]);
    // No error text: the receiver's answer shows, on one line.
    for row in out.lines().skip(1) {
        assert!(row.ends_with("  400  nope: the payload looks wrong"), "{row}");
    }
    // Whose event each is: the tunnel, or its token's public id.
    let subject =
        |event: &str| out.lines().find(|l| l.contains(event)).map(|l| l.split_whitespace().nth(3).unwrap_or(""));
    assert_eq!(subject("tunnel.connected"), Some(tunnel.as_str()), "{out}");
    assert!(subject("token.connected").is_some_and(|s| s.starts_with("tok_")), "{out}");
    for row in out.lines().skip(1) {
        let time: String = row.chars().take("2026-11-22 10:00:00.123".len()).collect();
        let b = time.as_bytes();
        assert!(b[10] == b' ' && b[19] == b'.' && b[20..].iter().all(u8::is_ascii_digit), "{row}");
    }
    client.shutdown.cancel();
}

#[tokio::test]
async fn test_exits_1_when_a_test_delivery_failed() {
    let server = TestServer::start_with(|c| c.webhooks.allow_private = true).await;
    let events = json!(["tunnel.connected", "token.disconnected"]);
    let fine = receiver(200, "ok").await;
    let id = create_webhook(&server, json!({"url": format!("http://{fine}/hook"), "events": events})).await;
    let (code, out, err) = hookway(&["webhooks", "test", &id], &server).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ") && l.contains("HTTP 200")).count(), 2, "{out}");

    let broken = receiver(500, "boom").await;
    let id = create_webhook(&server, json!({"url": format!("http://{broken}/hook"), "events": events})).await;
    let (code, out, err) = hookway(&["webhooks", "test", &id], &server).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("FAIL") && l.contains("HTTP 500")).count(), 2, "{out}");
    assert!(err.contains("2 of 2 test deliveries failed"), "{err}");
}
