//! hookway's own client over the WebSocket-JSON gateway (`--ws`): the same
//! behaviour users get over QUIC, through the real server and a real local app.

mod common;

use std::process::Stdio;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use hookway::client::{ClientError, Event};
use hookway::server::gateway::WsLimits;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn forwards_method_path_headers_status_and_bodies() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (client, id) = ws_client(&server, app.port()).await;
    let url = &client.tunnel_url;

    let resp = http()
        .put(format!("{url}/echo/a?status=418&q=x%20y"))
        .header("x-custom", "1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-app"], "echo");
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated set-cookie headers survive the JSON hop");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/echo/a?status=418&q=x%20y");
    assert_eq!(v["headers"]["x-custom"], "1");
    assert_eq!(v["body"], "payload");
    assert!(v["headers"]["x-forwarded-for"].as_str().is_some_and(|s| s.contains("127.0.0.1")));

    // A binary body both ways, byte for byte.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let resp = http().post(format!("{url}/upload")).body(body.clone()).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    let sum = body.iter().fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    assert_eq!((v["bytes"].as_u64(), v["sum"].as_u64()), (Some(300_000), Some(sum)));
    let got = http().get(format!("{url}/download?n=200000")).send().await.unwrap().bytes().await.unwrap();
    assert!(got.len() == 200_000 && got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));

    let status = server.api().call(Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap();
    assert_eq!(status["liveStatus"]["connected"], true, "{status}");
    assert_eq!(status["liveStatus"]["requestsInSession"], 3, "{status}");
}

/// Issue: over a WebSocket tunnel, a header value that is not UTF-8
/// (obs-text, legal in HTTP: a raw signature, Latin-1) reached the app as
/// U+FFFD, and so did the app's on their way to the caller; QUIC tunnels carry
/// the bytes. Now they cross in `headersBase64`, byte for byte, both ways.
#[tokio::test]
async fn header_values_that_are_not_utf8_cross_byte_for_byte() {
    let b64 = |v: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(v));
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (client, _) = ws_client(&server, app.port()).await;
    let signature = RAW_SIGNATURE;
    let arrived = post_raw_headers(&client.tunnel_url).await;
    assert_eq!(arrived["x-signature"], json!([b64(signature)]), "{arrived}");
    // Repeated headers are folded into one line on this path, as before; their bytes are kept.
    assert_eq!(arrived["x-multi"], json!([b64(b"plain, \xfe")]), "{arrived}");
    assert_eq!(arrived["x-plain"], json!([b64(b"ok")]), "{arrived}");
}

#[tokio::test]
async fn local_app_down_gives_502_and_slow_app_gives_504() {
    let server = TestServer::start_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let (client, _) = ws_client(&server, closed_port().await).await;
    let resp = http().get(format!("{}/anything", client.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-hookway-error"], "local-unreachable");
    assert!(resp.text().await.unwrap().contains("refused the connection or is not running"));

    let app = spawn_app().await;
    let (client, _) = ws_client(&server, app.port()).await;
    let resp = http().get(format!("{}/slow?ms=3000", client.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-hookway-error"], "timeout");
    // The late answer is dropped quietly; the tunnel keeps working.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = http().get(format!("{}/echo", client.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_a_reason() {
    let server = TestServer::start_with(|c| c.ws = WsLimits { max_body: 64 * 1024, ..WsLimits::default() }).await;
    let app = spawn_app().await;
    let (client, _) = ws_client(&server, app.port()).await;
    let url = &client.tunnel_url;
    let resp = http().post(format!("{url}/upload")).body(vec![7u8; 64 * 1024 + 1]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("WebSocket"));
    let resp = http().post(format!("{url}/upload")).body(vec![7u8; 64 * 1024]).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a body at the limit passes");
    // The client enforces the limit the server announced on responses.
    let resp = http().get(format!("{url}/download?n=70000")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-hookway-error"], "body-too-large");
}

#[tokio::test]
async fn disconnect_ends_the_client_with_a_clear_reason() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let (client, id) = ws_client(&server, app.port()).await;
    server.api().call(Method::POST, &format!("/api/tunnels/{id}/disconnect"), None).await.unwrap();
    match client.finished(Duration::from_secs(10)).await {
        Err(ClientError::Ended(reason)) => assert!(reason.contains("disconnected through the API"), "{reason}"),
        other => panic!("expected Ended, got {other:?}"),
    }
    let resp = http().get(format!("{}/t/{}/x", server.url, status_sub(&server, &id).await)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

/// Stopping a `--ws` client drains as over QUIC: it says it is leaving, so
/// the tunnel is offline at once (a request that arrives meanwhile gets an
/// offline tunnel's 503 and never reaches the client) while the request the
/// app is answering finishes; then the client ends.
#[tokio::test]
async fn a_stopped_client_finishes_its_requests_and_refuses_new_ones() {
    let server = TestServer::start().await;
    let mut app = spawn_held_app().await;
    let (mut client, id) = ws_client(&server, app.addr.port()).await;
    let url = client.tunnel_url.clone();
    let held = tokio::spawn(http().get(format!("{url}/hold")).send());
    assert_eq!(app.next_arrival().await, "/hold");

    client.shutdown.cancel();
    let stopping = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.events.recv().await.expect("the client reports before it ends") {
                Event::Stopping { in_flight } => return in_flight,
                _ => continue,
            }
        }
    });
    assert_eq!(stopping.await.expect("the client says it is stopping"), 1);

    // The app still holds /hold: an answer now is not one after the drain.
    let during = tokio::time::timeout(Duration::from_secs(3), http().get(format!("{url}/echo")).send())
        .await
        .expect("refused at once, not after the drain")
        .unwrap();
    assert_eq!(during.status(), 503);
    assert_eq!(during.headers()["x-hookway-error"], "tunnel-offline");
    let text = during.text().await.unwrap();
    assert!(text.contains("is offline: no client is connected"), "{text}");
    assert!(app.arrived.try_recv().is_err(), "a request during the drain reached the app");
    let t = server.api().call(Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap();
    assert_eq!(t["liveStatus"]["connected"], false, "offline during the drain: {t}");
    // No app saw it: recorded as the tunnel going offline, for replay-offline.
    let list = wait_for_records(&server, &id, 1).await;
    let during = list.iter().find(|r| r["path"] == "/echo").expect("recorded");
    assert_eq!((during["outcome"].as_str(), during["status"].as_u64()), (Some("tunnel-offline"), Some(503)));

    app.release.add_permits(1);
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in flight finished");
    assert_eq!(resp.text().await.unwrap(), "released");
    client.finished(Duration::from_secs(2)).await.expect("a stop is not an error");
}

/// With an offline reply, a request a stopping `--ws` client refuses gets
/// it, as over QUIC: no app saw the request, and it is recorded whole.
#[tokio::test]
async fn a_stopping_client_leaves_its_callers_to_the_offline_reply() {
    let server = TestServer::start().await;
    let mut app = spawn_held_app().await;
    let (mut client, id) = ws_client(&server, app.addr.port()).await;
    let set = r#"{"offlineReply": {"status": 202}}"#;
    let path = format!("/api/tunnels/{id}");
    let (status, body) = raw_api(&server, Method::PATCH, &path, Some(&bearer()), Some(set)).await;
    assert_eq!(status, 200, "{body}");
    let url = client.tunnel_url.clone();
    let held = tokio::spawn(http().get(format!("{url}/hold")).send());
    assert_eq!(app.next_arrival().await, "/hold");
    client.shutdown.cancel();
    while !matches!(client.events.recv().await, Some(Event::Stopping { .. })) {}

    let during = http().post(format!("{url}/echo/during")).body("x").send().await.unwrap();
    assert_eq!(during.status(), 202);
    assert_eq!(during.headers()["x-hookway-offline"], "recorded");
    app.release.add_permits(1);
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let list = wait_for_records(&server, &id, 2).await;
    let during = list.iter().find(|r| r["path"] == "/echo/during").expect("recorded");
    assert_eq!((during["outcome"].as_str(), during["status"].as_u64()), (Some("tunnel-offline"), Some(202)));
}

async fn status_sub(server: &TestServer, id: &str) -> String {
    let t = server.api().call(Method::GET, &format!("/api/tunnels/{id}"), None).await.unwrap();
    t["tunnel"]["subdomain"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn reconnects_after_a_server_restart() {
    let server = TestServer::start().await;
    let (http_addr, quic_addr) = (server.http, server.quic);
    let app = spawn_app().await;
    let (mut client, _) = ws_client(&server, app.port()).await;
    let url = client.tunnel_url.clone();
    assert_eq!(http().get(format!("{url}/echo")).send().await.unwrap().status(), 200);
    let dir = server.stop().await;
    let _server = TestServer::start_in(dir, |c| {
        c.http_addr = http_addr;
        c.quic_addr = quic_addr;
    })
    .await;
    let (again, _) = client.wait_connected().await;
    assert_eq!(again, url);
    assert_eq!(http().get(format!("{url}/echo")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn cli_connect_with_ws_serves_the_tunnel() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let created = server.api().create_tunnel("cli ws", None).await.unwrap();
    // --token with --ws needs the subdomain: the CLI looks it up with the API key.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &created.tunnel.id, &app.port().to_string(), "--ws", "--json"])
        .args(["--server", &server.url, "--token", &created.auth_token, "--api-key", API_KEY])
        .stderr(Stdio::piped());
    let (_child, _lines, v) = spawn_connected(cmd).await;
    assert_eq!(v["tunnelUrl"], created.tunnel_url.as_str());
    let resp = http().post(format!("{}/echo", created.tunnel_url)).body("via cli").send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["body"], "via cli");
    let status = server.api().call(Method::GET, &format!("/api/tunnels/{}/status", created.tunnel.id), None).await;
    assert_eq!(status.unwrap()["liveStatus"]["connected"], true);

    // The banner says which way the tunnel goes.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &created.tunnel.id, &app.port().to_string(), "--ws"])
        .args(["--server", &server.url, "--api-key", API_KEY])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the client prints its banner");
            if line.starts_with("Tunnel is live.") {
                return line;
            }
        }
    });
    let banner = banner.await.expect("connected within 20 s");
    assert!(banner.ends_with(" (over the WebSocket gateway)"), "{banner}");
    drop(child);

    // Without an API key or --ws-url, --ws with --token cannot know the subdomain: a clear error.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"))
        .args(["tunnels", "connect", &created.tunnel.id, "3000", "--ws", "--server", &server.url])
        .args(["--token", &created.auth_token])
        .env_remove("HOOKWAY_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ws-url") && !err.contains("backtrace"), "{err}");

    // A wrong token is refused before the upgrade, and the CLI says why and exits.
    let bad = created.ws_url.replace(&created.auth_token, "wrong");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"))
        .args(["tunnels", "connect", &created.tunnel.id, "3000", "--ws-url", &bad, "--server", &server.url])
        .args(["--token", "wrong"])
        .env_remove("HOOKWAY_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid auth token"), "{err}");
}

/// `--ws-url` names its tunnel and carries its token: with an API key at hand
/// and no `--token`, the client serves that tunnel with that token, issuing no
/// new one. A URL that is no wsUrl, or names another tunnel or token than the
/// arguments, or is given to `start` (which serves the tunnel it creates), is a
/// usage error before anything is created or reissued.
#[tokio::test]
async fn cli_ws_url_serves_its_own_tunnel_with_its_own_token() {
    let server = TestServer::start().await;
    let app = spawn_app().await;
    let a = server.api().create_tunnel("a", None).await.unwrap();
    let b = server.api().create_tunnel("b", None).await.unwrap();
    let (id, port) = (a.tunnel.id.as_str(), app.port().to_string());
    let hookway = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
        cmd.args(args)
            .env("HOOKWAY_SERVER", &server.url)
            .env("HOOKWAY_API_KEY", API_KEY)
            .env_remove("HOOKWAY_TUNNEL_TOKEN")
            .env_remove("HOOKWAY_WS_URL")
            .kill_on_drop(true);
        cmd
    };
    let no_token = a.ws_url.replace(&format!("&token={}", a.auth_token), "");
    let http_url = a.ws_url.replacen("ws://", "http://", 1);
    let cases: [(&[&str], &str); 6] = [
        (&["tunnels", "connect", id, &port, "--ws-url", &b.ws_url], "--ws-url is for tunnel"),
        (&["tunnels", "connect", id, &port, "--token", "hwt_bad", "--ws-url", &a.ws_url], "differ"),
        (&["tunnels", "connect", id, &port, "--ws-url", "not a url"], "not a URL"),
        (&["tunnels", "connect", id, &port, "--ws-url", &http_url], "ws:// or wss://"),
        (&["tunnels", "connect", id, &port, "--ws-url", &no_token], "no token query parameter"),
        (&["start", &port, "--ws-url", &a.ws_url], "'--ws-url'"),
    ];
    for (args, says) in cases {
        let out = tokio::time::timeout(Duration::from_secs(20), hookway(args).output()).await;
        let out = out.unwrap_or_else(|_| panic!("{args:?} still runs after 20 s")).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains(&a.auth_token), "{args:?}: {err}");
    }
    let listed = server.api().call(Method::GET, "/api/tunnels", None).await.unwrap();
    assert_eq!(listed["tunnels"].as_array().unwrap().len(), 2, "`start` created nothing");

    // The token in the URL is still the tunnel's (nothing above reissued it), and it is used.
    let mut cmd = hookway(&["tunnels", "connect", id, &port, "--ws-url", &a.ws_url, "--json"]);
    cmd.stderr(Stdio::piped());
    let (mut child, _lines, live) = spawn_connected(cmd).await;
    assert_eq!((live["tunnelId"].as_str(), live["tunnelUrl"].as_str()), (Some(id), Some(a.tunnel_url.as_str())));
    let resp = http().post(format!("{}/echo", a.tunnel_url)).body("via ws-url").send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["body"], "via ws-url");
    child.kill().await.unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await.unwrap();
    assert!(!err.contains("new auth token"), "{err}");
}

/// `start --ws` and `tunnels connect --ws` reach the gateway at the server URL
/// they were given, as QUIC is dialled, not at the API's `wsUrl`: that is made
/// of the public URL, which may be a way in (a proxy's) that does not work
/// from where the client runs.
#[tokio::test]
async fn ws_clients_reach_the_gateway_at_the_server_url_they_were_given() {
    let unreachable = format!("http://127.0.0.1:{}", closed_port().await);
    let server = TestServer::start_with(|c| c.public_url = Some(unreachable.clone())).await;
    let local = format!("http://{}", server.http);
    let app = spawn_app().await;
    let port = app.port().to_string();
    let mut start = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    start.args(["start", &port, "--ws", "--json", "--server", &local, "--api-key", API_KEY]).stderr(Stdio::null());
    let (_child, _lines, v) = spawn_connected(start).await;
    let id = v["tunnelId"].as_str().unwrap().to_owned();
    assert!(v["tunnelUrl"].as_str().unwrap().starts_with(&unreachable), "{v}");
    let mut connect = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    connect.args(["tunnels", "connect", &id, &port, "--ws", "--json", "--server", &local, "--api-key", API_KEY]);
    connect.stderr(Stdio::null());
    let (_again, _, v) = spawn_connected(connect).await;
    assert_eq!(v["tunnelId"], id.as_str());
}

/// Issue: the WebSocket protocol has no message for a request the edge gave
/// up on, so a `--ws` client waited on its app for good: an app that never
/// answered held a connection and a task per request (one descriptor each,
/// found by a soak probe). The server now tells its request timeout on the
/// upgrade, and the client stops waiting then.
#[tokio::test]
async fn a_ws_client_stops_waiting_for_its_app_once_the_edge_gave_up() {
    let server = TestServer::start_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let mut app = spawn_held_app().await;
    let (mut client, _) = ws_client(&server, app.addr.port()).await;
    let resp = http().get(format!("{}/hold", client.tunnel_url)).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(app.next_arrival().await, "/hold");
    let log = next_request_log(&mut client).await;
    assert_eq!((log.path.as_str(), log.status), ("/hold", None));
    let error = log.error.unwrap_or_default();
    assert!(error.contains("request timeout (1s)"), "{error}");
}
