//! The Tunnels REST API against seed 001: shapes, field names, and every error.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn create_get_list_update_delete_shapes_match_seed_001() {
    let server = TestServer::start().await;
    let auth = bearer();
    let (status, created) =
        raw_api(&server, Method::POST, "/api/tunnels", Some(&auth), Some(r#"{"name":"Dev Server"}"#)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(keys(&created), ["authToken", "tunnel", "tunnelUrl", "wsUrl"]);
    let t = &created["tunnel"];
    assert_eq!(keys(t), ["createdAt", "id", "name", "status", "subdomain", "totalRequests"]);
    let id = t["id"].as_str().unwrap();
    let sub = t["subdomain"].as_str().unwrap();
    assert!(id.starts_with("tun_"), "{id}");
    let parts: Vec<&str> = sub.split('-').collect();
    assert_eq!(parts.len(), 3, "generated subdomains look like cool-sunset-x7kf: {sub}");
    assert_eq!(t["name"], "Dev Server");
    assert_eq!(t["status"], "disconnected");
    assert_eq!(t["totalRequests"], 0);
    let created_at = t["createdAt"].as_str().unwrap();
    assert!(created_at.len() == 20 && created_at.ends_with('Z'), "{created_at}");
    assert_eq!(created["tunnelUrl"], format!("{}/t/{sub}", server.url));
    let token = created["authToken"].as_str().unwrap();
    let host = server.url.strip_prefix("http://").unwrap();
    assert_eq!(created["wsUrl"], format!("ws://{host}/tunnels/{sub}/ws?tunnelId={id}&token={token}"));

    let (status, got) = raw_api(&server, Method::GET, &format!("/api/tunnels/{id}"), Some(&auth), None).await;
    assert_eq!(status, 200);
    assert_eq!(got, json!({ "tunnel": t }));

    let (status, list) = raw_api(&server, Method::GET, "/api/tunnels", Some(&auth), None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!({ "tunnels": [t] }));

    let (status, updated) =
        raw_api(&server, Method::PATCH, &format!("/api/tunnels/{id}"), Some(&auth), Some(r#"{"name":"Updated Name"}"#))
            .await;
    assert_eq!(status, 200);
    assert_eq!(updated["tunnel"]["name"], "Updated Name");
    assert_eq!(updated["tunnel"]["subdomain"], sub);

    let (status, st) = raw_api(&server, Method::GET, &format!("/api/tunnels/{id}/status"), Some(&auth), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        st,
        json!({
            "tunnel": { "id": id, "name": "Updated Name", "status": "disconnected" },
            "liveStatus": { "connected": false, "connectedAt": null, "clientIp": null, "requestsInSession": 0 }
        })
    );

    let (status, regen) =
        raw_api(&server, Method::POST, &format!("/api/tunnels/{id}/regenerate-token"), Some(&auth), None).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&regen), ["authToken", "tunnel", "wsUrl"]);
    assert_eq!(regen["tunnel"], json!({ "id": id, "name": "Updated Name", "subdomain": sub }));
    assert_ne!(regen["authToken"], token);

    let (status, del) = raw_api(&server, Method::DELETE, &format!("/api/tunnels/{id}"), Some(&auth), None).await;
    assert_eq!((status.as_u16(), del), (200, json!({ "success": true })));
    let (status, _) = raw_api(&server, Method::GET, &format!("/api/tunnels/{id}"), Some(&auth), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn live_status_of_a_connected_tunnel() {
    let s = Setup::new().await;
    for _ in 0..3 {
        http().get(s.url("/echo")).send().await.unwrap();
    }
    let (status, st) =
        raw_api(&s.server, Method::GET, &format!("/api/tunnels/{}/status", s.tunnel_id), Some(&bearer()), None).await;
    assert_eq!(status, 200);
    assert_eq!(st["tunnel"]["status"], "connected");
    let live = &st["liveStatus"];
    assert_eq!(live["connected"], true);
    assert_eq!(live["clientIp"], "127.0.0.1");
    assert_eq!(live["requestsInSession"], 3);
    assert!(live["connectedAt"].as_str().unwrap().ends_with('Z'));
    let (_, t) = raw_api(&s.server, Method::GET, &format!("/api/tunnels/{}", s.tunnel_id), Some(&bearer()), None).await;
    assert_eq!(t["tunnel"]["totalRequests"], 3);
    assert_eq!(t["tunnel"]["lastConnectedAt"], live["connectedAt"]);
}

/// A server on a dual-stack socket (`--http [::]:80`, `--quic [::]:4443`)
/// sees its IPv4 peers as IPv4-mapped IPv6 addresses; `clientIp` (and what
/// the app is told in `x-forwarded-for`, and what the capture keeps) shows
/// them as the IPv4 addresses they are, as seed 001's `"192.168.1.100"`. The
/// server binds `[::ffff:127.0.0.1]`: a dual-stack socket that stays on
/// loopback.
#[tokio::test]
async fn ipv4_peers_of_a_dual_stack_server_are_shown_as_ipv4() {
    let mapped = |port: u16| std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port));
    let server = TestServer::start_with(|c| {
        c.http_addr = mapped(0);
        c.quic_addr = mapped(0);
    })
    .await;
    let client_ip = |st: &Value| st["liveStatus"]["clientIp"].clone();

    // A QUIC client, and a caller through its tunnel.
    let s = Setup::with_server(server).await;
    let echoed: Value = http().get(s.url("/echo")).send().await.unwrap().json().await.unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");
    let path = format!("/api/tunnels/{}/status", s.tunnel_id);
    let (_, st) = raw_api(&s.server, Method::GET, &path, Some(&bearer()), None).await;
    assert_eq!(client_ip(&st), "127.0.0.1", "{st}");
    let records = wait_for_records(&s.server, &s.tunnel_id, 1).await;
    assert_eq!(records[0]["clientIp"], "127.0.0.1");

    // A WebSocket client.
    let (_ws, ws_id) = ws_client(&s.server, s.app.port()).await;
    let (_, st) = raw_api(&s.server, Method::GET, &format!("/api/tunnels/{ws_id}/status"), Some(&bearer()), None).await;
    assert_eq!(client_ip(&st), "127.0.0.1", "{st}");
}

/// A public URL whose host is itself under `--domain`
/// (`--public-url https://hooks.example.test --domain example.test`) stays
/// the API's: its label is no tunnel's host, and no tunnel may take it (it
/// would receive every API call, API keys included, and every `wsUrl`).
#[tokio::test]
async fn the_public_urls_own_host_is_never_a_tunnel() {
    let server = TestServer::start_with(|c| {
        c.public_url = Some("http://hooks.example.test".into());
        c.domain = Some("example.test".into());
    })
    .await;
    let url = format!("http://127.0.0.1:{}", server.http.port());
    let server = TestServer { url, ..server };
    let as_public_host = |method: &str, path: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: hooks.example.test\r\n{}: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            "authorization",
            bearer(),
            body.len()
        )
    };
    let list = raw_exchange(server.http, as_public_host("GET", "/api/tunnels", "").as_bytes()).await;
    assert!(list.starts_with("HTTP/1.1 200"), "{list}");
    assert!(list.ends_with(r#"{"tunnels":[]}"#), "{list}");

    let (status, err) =
        raw_api(&server, Method::POST, "/api/tunnels", Some(&bearer()), Some(r#"{"name":"X","subdomain":"hooks"}"#))
            .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("reserved"), "{err}");

    // Other names under the domain are tunnels as before.
    let (status, _) =
        raw_api(&server, Method::POST, "/api/tunnels", Some(&bearer()), Some(r#"{"name":"Y","subdomain":"other"}"#))
            .await;
    assert_eq!(status, 201);
    let list = raw_exchange(server.http, as_public_host("GET", "/api/tunnels", "").as_bytes()).await;
    assert!(list.contains(r#""subdomain":"other""#), "{list}");
    let edge =
        raw_exchange(server.http, b"GET / HTTP/1.1\r\nHost: other.example.test\r\nconnection: close\r\n\r\n").await;
    assert!(edge.starts_with("HTTP/1.1 503") && edge.contains("x-hookway-error: tunnel-offline"), "{edge}");

    // A public host of two labels under the domain, which no tunnel could
    // have, still serves the API (other such hosts are a tunnel 404).
    let nested = TestServer::start_with(|c| {
        c.public_url = Some("http://in.hooks.example.test".into());
        c.domain = Some("example.test".into());
    })
    .await;
    let get = |host: &str| format!("GET /api/tunnels HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n");
    let list = raw_exchange(nested.http, get("in.hooks.example.test").as_bytes()).await;
    assert!(list.starts_with("HTTP/1.1 401"), "the API, asking for a key: {list}");
    let other = raw_exchange(nested.http, get("in.other.example.test").as_bytes()).await;
    assert!(other.starts_with("HTTP/1.1 404") && other.contains("x-hookway-error: tunnel-not-found"), "{other}");
}

#[tokio::test]
async fn custom_subdomains_follow_the_rules_and_are_unique() {
    let server = TestServer::start().await;
    let auth = bearer();
    let create = |body: String| {
        let server = &server;
        let auth = auth.clone();
        async move { raw_api(server, Method::POST, "/api/tunnels", Some(&auth), Some(&body)).await }
    };
    let (status, ok) = create(r#"{"name":"P","subdomain":"my-custom-subdomain"}"#.into()).await;
    assert_eq!(status, 201, "{ok}");
    assert_eq!(ok["tunnelUrl"], format!("{}/t/my-custom-subdomain", server.url));
    let (status, dup) = create(r#"{"name":"Q","subdomain":"my-custom-subdomain"}"#.into()).await;
    assert_eq!(status, 409, "{dup}");
    assert!(dup["error"].as_str().unwrap().contains("taken"));
    let long = "a".repeat(64);
    for bad in ["ab", "1abc", "-abc", "Upper", "under_score", "dot.ted", long.as_str()] {
        let (status, err) = create(format!(r#"{{"name":"X","subdomain":"{bad}"}}"#)).await;
        assert_eq!(status, 400, "{bad}: {err}");
        assert!(err["error"].is_string(), "{err}");
    }
}

/// `Authorization: Bearer {token}` as seed 001 writes it, with the scheme in
/// any case (RFC 9110 §11.1: the scheme is case-insensitive) and any
/// whitespace after it (`1*SP` in RFC 9110, tabs in the wild).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = TestServer::start().await;
    for scheme in ["Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer   ", "Bearer\t"] {
        let auth = format!("{scheme}{API_KEY}");
        let (status, v) = raw_api(&server, Method::GET, "/api/tunnels", Some(&auth), None).await;
        assert_eq!(status, 200, "{auth:?}: {v}");
        assert_eq!(v, json!({ "tunnels": [] }));
    }
    for refused in [format!("Bearerx {API_KEY}"), format!("Basic {API_KEY}"), API_KEY.to_owned()] {
        let (status, v) = raw_api(&server, Method::GET, "/api/tunnels", Some(&refused), None).await;
        assert_eq!(status, 401, "{refused:?}: {v}");
    }
}

#[tokio::test]
async fn every_error_is_json_with_the_right_status() {
    let server = TestServer::start().await;
    let auth = bearer();
    let (id, _, _) = create_tunnel(&server, None).await;
    /// (method, path, Authorization, body, expected status)
    type Case<'a> = (Method, String, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (Method::GET, "/api/tunnels".into(), None, None, 401),
        (Method::GET, "/api/tunnels".into(), Some("Bearer wrong-key"), None, 401),
        (Method::GET, "/api/tunnels".into(), Some("Basic abc"), None, 401),
        (Method::GET, "/api/tunnels".into(), Some("Bearer "), None, 401),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some("{not json"), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some("[1,2]"), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some("{}"), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": 5}"#), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": "   "}"#), 400),
        // Control characters would rewrite a terminal that lists the tunnels.
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": "a\u001b[2Jb"}"#), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": "fake\r\nline"}"#), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": "nul\u0000"}"#), 400),
        (Method::PATCH, format!("/api/tunnels/{id}"), Some(&auth), Some(r#"{"name":"x\u0007"}"#), 400),
        // So would a text-direction override (the rest of the line shown reversed).
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name": "invoice\u202egpj.exe"}"#), 400),
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name":"a","subdomain":7}"#), 400),
        (Method::PATCH, format!("/api/tunnels/{id}"), Some(&auth), Some("{}"), 400),
        (Method::PATCH, format!("/api/tunnels/{id}"), Some(&auth), Some(r#"{"subdomain":"other"}"#), 400),
        // A typo is refused, not ignored (the tunnel would get a random subdomain).
        (Method::POST, "/api/tunnels".into(), Some(&auth), Some(r#"{"name":"a","subdomian":"my-one"}"#), 400),
        (Method::PATCH, format!("/api/tunnels/{id}"), Some(&auth), Some(r#"{"name":"ok","bogus":1}"#), 400),
        (Method::GET, "/api/tunnels/tun_doesnotexist".into(), Some(&auth), None, 404),
        (Method::PATCH, "/api/tunnels/tun_doesnotexist".into(), Some(&auth), Some(r#"{"name":"x"}"#), 404),
        (Method::DELETE, "/api/tunnels/tun_doesnotexist".into(), Some(&auth), None, 404),
        (Method::GET, "/api/tunnels/tun_doesnotexist/status".into(), Some(&auth), None, 404),
        (Method::POST, "/api/tunnels/tun_doesnotexist/regenerate-token".into(), Some(&auth), None, 404),
        (Method::POST, "/api/tunnels/tun_doesnotexist/disconnect".into(), Some(&auth), None, 404),
        (Method::PUT, "/api/tunnels".into(), Some(&auth), None, 405),
        (Method::GET, format!("/api/tunnels/{id}/disconnect"), Some(&auth), None, 405),
        (Method::GET, "/api/nothing-here".into(), Some(&auth), None, 404),
    ];
    for (method, path, authz, body, want) in cases {
        let (status, v) = raw_api(&server, method.clone(), &path, authz, body).await;
        assert_eq!(status.as_u16(), want, "{method} {path} {body:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {v}");
    }
    // Not found, as always; and an id of another kind says so.
    let (_, v) = raw_api(&server, Method::GET, "/api/tunnels/tun_doesnotexist", Some(&auth), None).await;
    assert_eq!(v["error"], "tunnel not found");
    let (_, v) = raw_api(&server, Method::GET, "/api/tunnels/wh_abc", Some(&auth), None).await;
    assert_eq!(v["error"], "tunnel not found: wh_abc is a webhook's id (tunnel ids start with tun_)");
    let (status, v) = raw_api(&server, Method::GET, &format!("/api/webhooks/{id}"), Some(&auth), None).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], format!("webhook not found: {id} is a tunnel's id (webhook ids start with wh_)"));
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000));
    let (status, v) = raw_api(&server, Method::POST, "/api/tunnels", Some(&auth), Some(&big)).await;
    assert_eq!(status, 413, "{v}");
    // A declared length over the limit is refused at once, not after waiting
    // 30 s for a body that is never sent.
    let declared = format!(
        "POST /api/tunnels HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: 99999999999\r\n\r\n",
        server.http
    );
    let asked = std::time::Instant::now();
    let answer = raw_exchange(server.http, declared.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(asked.elapsed() < std::time::Duration::from_secs(5), "answered after {:?}", asked.elapsed());
    let long_name = format!(r#"{{"name":"{}"}}"#, "x".repeat(201));
    let (status, _) = raw_api(&server, Method::POST, "/api/tunnels", Some(&auth), Some(&long_name)).await;
    assert_eq!(status, 400);
    // Nothing above created a tunnel.
    let (_, list) = raw_api(&server, Method::GET, "/api/tunnels", Some(&auth), None).await;
    assert_eq!(list["tunnels"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn organizations_see_only_their_own_tunnels() {
    let server = TestServer::start().await;
    let (id, _, sub) = create_tunnel(&server, Some("acme-private")).await;
    let other_key = hookway::server::create_api_key(&server.store, "other-org").unwrap();
    assert!(other_key.starts_with("hwk_"));
    let other = format!("Bearer {other_key}");
    let (status, list) = raw_api(&server, Method::GET, "/api/tunnels", Some(&other), None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!({ "tunnels": [] }));
    for (method, path, body) in [
        (Method::GET, format!("/api/tunnels/{id}"), None),
        (Method::PATCH, format!("/api/tunnels/{id}"), Some(r#"{"name":"stolen"}"#)),
        (Method::GET, format!("/api/tunnels/{id}/status"), None),
        (Method::POST, format!("/api/tunnels/{id}/regenerate-token"), None),
        (Method::POST, format!("/api/tunnels/{id}/disconnect"), None),
        (Method::DELETE, format!("/api/tunnels/{id}"), None),
    ] {
        let (status, v) = raw_api(&server, method.clone(), &path, Some(&other), body).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
    }
    // Subdomains are unique across organizations.
    let (status, _) = raw_api(
        &server,
        Method::POST,
        "/api/tunnels",
        Some(&other),
        Some(r#"{"name":"x","subdomain":"acme-private"}"#),
    )
    .await;
    assert_eq!(status, 409);
    // The owner still sees it, untouched.
    let (_, t) = raw_api(&server, Method::GET, &format!("/api/tunnels/{id}"), Some(&bearer()), None).await;
    assert_eq!(t["tunnel"]["name"], "test tunnel");
    assert_eq!(t["tunnel"]["subdomain"], sub);
}

#[tokio::test]
async fn first_start_generates_a_key_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hookway::server::ServerConfig::local(dir.path());
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.quic_addr = "127.0.0.1:0".parse().unwrap();
    let server = hookway::server::Server::bind(config.clone()).await.unwrap();
    let key = server.generated_api_key().expect("a key on first start").to_owned();
    drop(server);
    let again = hookway::server::Server::bind(config.clone()).await.unwrap();
    assert!(again.generated_api_key().is_none(), "shown once only");
    drop(again);
    // A key chosen through the environment is stored as a hash only, even a short one.
    let mut chosen = config.clone();
    chosen.api_key = Some("k1-short".into());
    drop(hookway::server::Server::bind(chosen).await.unwrap());
    let db = std::fs::read(dir.path().join("hookway.db")).unwrap();
    let wal = std::fs::read(dir.path().join("hookway.db-wal")).unwrap_or_default();
    for needle in [key.as_bytes(), b"k1-short".as_slice(), b"k1-s".as_slice()] {
        for file in [&db, &wal] {
            assert!(!file.windows(needle.len()).any(|w| w == needle), "a key is stored in clear");
        }
    }
}

/// `HOOKWAY_API_KEY` names the server's key: a start with another value
/// rotates it (the old one stops working), while keys made otherwise (the
/// first start's, `keys create`) are kept.
#[tokio::test]
async fn a_changed_hookway_api_key_replaces_the_one_it_set_before() {
    let status = |server: &TestServer, key: &str| {
        let api = server.api_with(key);
        async move {
            match api.call(Method::GET, "/api/tunnels", None).await {
                Ok(_) => 200,
                Err(hookway::client::ApiError::Status { status, .. }) => status,
                Err(err) => panic!("{err}"),
            }
        }
    };
    let first = TestServer::start_with(|c| c.api_key = Some("first-key".into())).await;
    let made = hookway::server::create_api_key(&first.store, hookway::server::DEFAULT_ORG).unwrap();
    assert_eq!(status(&first, "first-key").await, 200);
    let dir = first.stop().await;
    let same = TestServer::start_in(dir, |c| c.api_key = Some("first-key".into())).await;
    assert_eq!(status(&same, "first-key").await, 200, "the same value again changes nothing");
    let dir = same.stop().await;
    let second = TestServer::start_in(dir, |c| c.api_key = Some("second-key".into())).await;
    assert_eq!(status(&second, "second-key").await, 200);
    assert_eq!(status(&second, "first-key").await, 401, "the previous HOOKWAY_API_KEY still works");
    assert_eq!(status(&second, &made).await, 200, "a key made with `keys create` is kept");
    let dir = second.stop().await;
    // A start given a key the store already has (one made by `keys create`,
    // exported for the CLI) replaces nothing.
    let existing = TestServer::start_in(dir, |c| c.api_key = Some(made.clone())).await;
    assert_eq!(status(&existing, "second-key").await, 200, "an existing key retired the environment's");
    let dir = existing.stop().await;
    let unset = TestServer::start_in(dir, |c| c.api_key = None).await;
    assert_eq!(status(&unset, "second-key").await, 200, "a start without the variable keeps the last one");
}

#[tokio::test]
async fn info_endpoint_tells_clients_how_to_connect() {
    let server = TestServer::start().await;
    let (status, info) = raw_api(&server, Method::GET, "/api/info", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(info["quicPort"], server.quic.port());
    assert_eq!(info["publicUrl"], server.url);
    assert_eq!(info["certFingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(info["capture"], true);
}

/// A 405 names the methods its path accepts in `Allow` (RFC 9110 §15.5.6),
/// keeps seed 001's error body, and every method it names is served there.
#[tokio::test]
async fn method_not_allowed_lists_the_methods_of_the_path() {
    let server = TestServer::start().await;
    let auth = bearer();
    // One tunnel for the requests routes, another for the tunnel routes (whose
    // allowed methods include DELETE).
    let (id, _, _) = create_tunnel(&server, None).await;
    let (other, _, _) = create_tunnel(&server, None).await;
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/api/info".into(), "GET, HEAD"),
        (Method::PUT, "/api/tunnels".into(), "GET, HEAD, POST"),
        (Method::PUT, format!("/api/tunnels/{id}/requests/"), "GET, HEAD, DELETE"),
        (Method::POST, format!("/api/tunnels/{id}/requests/stream"), "GET, HEAD"),
        (Method::DELETE, format!("/api/tunnels/{id}/requests/req_nothere"), "GET, HEAD"),
        (Method::GET, format!("/api/tunnels/{id}/requests/req_nothere/replay"), "POST"),
        (Method::DELETE, "/api/webhooks".into(), "GET, HEAD, POST"),
        (Method::POST, "/api/webhooks/wh_nothere".into(), "GET, HEAD, PATCH, DELETE"),
        (Method::GET, "/api/webhooks/wh_nothere/regenerate-signing-key".into(), "POST"),
        (Method::GET, "/api/webhooks/wh_nothere/test".into(), "POST"),
        (Method::PUT, "/api/webhooks/wh_nothere/deliveries".into(), "GET, HEAD"),
        (Method::GET, format!("/api/tunnels/{other}/regenerate-token"), "POST"),
        (Method::GET, format!("/api/tunnels/{other}/disconnect"), "POST"),
        (Method::POST, format!("/api/tunnels/{other}/status"), "GET, HEAD"),
        (Method::POST, format!("/api/tunnels/{other}"), "GET, HEAD, PATCH, DELETE"),
    ];
    for (method, path, allow) in &cases {
        let resp = send(&server, method.clone(), path, &auth).await;
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some(*allow), "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({ "error": "method not allowed on this path" }), "{method} {path}");
    }
    // The list cannot drift from the dispatch: each method it names is served
    // (a 2xx, or a 4xx about the id or the body, never 405 again).
    for (_, path, allow) in &cases {
        for name in allow.split(", ") {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            let status = send(&server, method, path, &auth).await.status();
            assert_ne!(status, 405, "{name} {path} is in Allow: {allow}");
        }
    }
    // HEAD is GET without a body, over HTTP/1.1 and HTTP/2 (where hyper does
    // not drop the body by itself).
    let get = send(&server, Method::GET, "/api/tunnels", &auth).await;
    let length = get.bytes().await.unwrap().len().to_string();
    hookway::quic::tls::install_default_provider();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for client in [reqwest::Client::new(), h2] {
        let resp = client.head(format!("{}/api/tunnels", server.url)).header("authorization", &auth).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.version());
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["content-length"], length.as_str(), "{:?}", resp.version());
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // Other errors carry no Allow.
    for path in ["/api/nothing-here", "/api/tunnels/tun_doesnotexist", "/api/webhooks/wh_nothere/other"] {
        let resp = send(&server, Method::GET, path, &auth).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers().get("allow").is_none(), "{path}");
    }
}

/// `method path` with `Authorization: auth`, answered up to its headers (a
/// live stream's body never ends).
async fn send(server: &TestServer, method: Method, path: &str, auth: &str) -> reqwest::Response {
    http().request(method, format!("{}{path}", server.url)).header("authorization", auth).send().await.unwrap()
}

#[tokio::test]
async fn malformed_or_doubled_authorization_is_refused() {
    let server = TestServer::start().await;
    // The right key under a wrong or missing scheme is still refused, and
    // told what the header must look like.
    for bad in ["Bearer", "{key}", "Bearerx {key}", "Basic {key}", "bear er {key}", "Bearer-{key}"] {
        let bad = bad.replace("{key}", API_KEY);
        let (status, body) = raw_api(&server, Method::GET, "/api/tunnels", Some(&bad), None).await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("must be 'Bearer <api key>'"), "{bad}: {body}");
    }
    // Two keys, the valid one first or last: neither is picked silently.
    for pair in [[bearer(), "Bearer wrong".to_owned()], ["Bearer wrong".to_owned(), bearer()]] {
        let mut req = http().get(format!("{}/api/tunnels", server.url));
        for value in &pair {
            req = req.header("authorization", value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{pair:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("more than one"), "{body}");
    }
}

/// Changes to one tunnel are made one at a time: after token regenerations at
/// once, the one token the server accepts is the one its store keeps (else a
/// restart would refuse the token in use and bring back a revoked one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_to_a_tunnel_leave_the_store_as_the_server() {
    let server = TestServer::start().await;
    let api = server.api();
    let (id, _, sub) = create_tunnel(&server, None).await;
    let accepted = async |token: &str| {
        let url = format!("{}/tunnels/{sub}/ws?tunnelId={id}&token={token}", server.url);
        match http().get(url).send().await.unwrap().status().as_u16() {
            426 => true, // the token is good: only the upgrade is missing
            401 => false,
            other => panic!("unexpected status {other}"),
        }
    };
    for round in 0..60 {
        let path = format!("/api/tunnels/{id}/regenerate-token");
        let calls = (0..4).map(|_| api.call(Method::POST, &path, None));
        let tokens: Vec<String> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|v| v.unwrap()["authToken"].as_str().unwrap().to_owned())
            .collect();
        let mut good = Vec::new();
        for token in &tokens {
            if accepted(token).await {
                good.push(token.clone());
            }
        }
        assert_eq!(good.len(), 1, "round {round}: {good:?}");
        let stored = server.store.blocking().load_tunnels().unwrap().into_iter().find(|t| t.id == id).unwrap();
        assert_eq!(stored.token_hash, hookway::server::names::hash_secret(&good[0]), "round {round}");
    }
}

/// Issue: wrong API keys were answered at once and logged nowhere: a short
/// `HOOKWAY_API_KEY` could be guessed at some 13,000 tries a second (found
/// by a security probe). Past 20 wrong keys in a minute an address is
/// refused, whatever key it sends, until the minute ends; others are not.
#[tokio::test]
async fn an_address_sending_many_wrong_api_keys_is_refused_for_a_while() {
    let server = TestServer::start().await;
    let from =
        |ip: &str| reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let guesser = from("127.0.0.1");
    let call =
        |client: &reqwest::Client, key: &str| client.get(format!("{}/api/tunnels", server.url)).bearer_auth(key).send();
    for i in 0..20 {
        assert_eq!(call(&guesser, &format!("hwk_guess{i}")).await.unwrap().status(), 401, "guess {i}");
    }
    let refused = call(&guesser, "hwk_guess20").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("too many wrong API keys"), "{body}");
    assert_eq!(call(&guesser, API_KEY).await.unwrap().status(), 429, "even the right key, for the rest of the minute");
    assert_eq!(call(&from("127.0.0.2"), API_KEY).await.unwrap().status(), 200, "another address is not refused");
}
