//! A tunnel's inbound options (seed 004) through the real server, client and
//! app: basic auth, Facebook and Fitbit verification handshakes, throttling;
//! set, shown, changed and kept over a restart through the REST API.

mod common;

use common::*;
use reqwest::Method;
use serde_json::Value;

async fn patch(s: &Setup, body: &str) -> (reqwest::StatusCode, Value) {
    let path = format!("/api/tunnels/{}", s.tunnel_id);
    raw_api(&s.server, Method::PATCH, &path, Some(&bearer()), Some(body)).await
}

/// Runs `hookway tunnels <args…>` against `server`: (exit code, stdout,
/// stderr).
async fn tunnels_cli(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("tunnels").chain(args.iter().copied()).collect();
    let out = run_cli(server, &args).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Stops the setup's client and waits (up to 10 s) until the server has the
/// tunnel offline.
async fn take_offline(s: &Setup) {
    s.client.shutdown.cancel();
    let path = format!("/api/tunnels/{}", s.tunnel_id);
    for _ in 0..100 {
        let (_, got) = raw_api(&s.server, Method::GET, &path, Some(&bearer()), None).await;
        if got["tunnel"]["status"] == "disconnected" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the tunnel was still connected after 10 s");
}

#[tokio::test]
async fn basic_auth_guards_the_app_and_keeps_the_credential_from_it() {
    let s = Setup::new().await;
    let (status, body) = patch(&s, r#"{"basicAuth": {"username": "alice", "password": "s3cret"}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tunnel"]["basicAuth"], serde_json::json!({"username": "alice"}), "never the password");
    assert!(!body.to_string().contains("s3cret"), "{body}");

    let none = http().post(s.url("/echo/a")).body("x").send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], r#"Basic realm="hookway", charset="UTF-8""#);
    assert_eq!(none.headers()["x-hookway-error"], "unauthorized");
    let wrong = http().post(s.url("/echo/a")).basic_auth("alice", Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http().post(s.url("/echo/b?q=1")).basic_auth("alice", Some("s3cret")).body("hi").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let seen: Value = ok.json().await.unwrap();
    assert_eq!((seen["path"].as_str(), seen["body"].as_str()), (Some("/echo/b?q=1"), Some("hi")));
    assert!(seen["headers"].get("authorization").is_none(), "the tunnel's credential reached the app: {seen}");

    // Refused callers are not recorded: a stranger's requests would push
    // the tunnel's recorded webhooks out of the capture.
    let records = wait_for_records(&s.server, &s.tunnel_id, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let records = wait_for_records(&s.server, &s.tunnel_id, records.len()).await;
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, ["/echo/b?q=1"], "only the one let in: {records:?}");

    // Off again: no credential needed, and one sent reaches the app.
    let (status, body) = patch(&s, r#"{"basicAuth": null}"#).await;
    assert_eq!(status, 200);
    assert!(body["tunnel"].get("basicAuth").is_none(), "{body}");
    let open = http().get(s.url("/echo/c")).basic_auth("app", Some("own")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let seen: Value = open.json().await.unwrap();
    assert!(seen["headers"]["authorization"].as_str().is_some_and(|v| v.starts_with("Basic ")), "{seen}");
}

#[tokio::test]
async fn verification_handshakes_are_answered_at_the_edge_even_offline() {
    let s = Setup::new().await;
    let (status, body) = patch(&s, r#"{"verification": {"type": "facebook", "code": "my verify token"}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tunnel"]["verification"], serde_json::json!({"type": "facebook"}), "never the code");
    let handshake = "/webhook?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=my+verify+token";
    let resp = http().get(s.url(handshake)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-hookway-verification"], "facebook");
    assert_eq!(resp.text().await.unwrap(), "1158201444");
    let wrong = http().get(s.url("/webhook?hub.mode=subscribe&hub.challenge=1&hub.verify_token=x")).send().await;
    assert_eq!(wrong.unwrap().status(), 403);
    // Anything else reaches the app.
    let event = http().post(s.url("/echo/event?hub.mode=subscribe")).body("{}").send().await.unwrap();
    assert_eq!(event.headers()["x-app"], "echo");

    let (status, _) = patch(&s, r#"{"verification": {"type": "fitbit", "code": "c0ffee"}}"#).await;
    assert_eq!(status, 200);
    take_offline(&s).await;
    // Offline: the handshake is still answered, the rest is the edge's 503.
    let fitbit = http().get(s.url("/fitbit?verify=c0ffee")).send().await.unwrap();
    assert_eq!(fitbit.status(), 204);
    assert_eq!(fitbit.headers()["x-hookway-verification"], "fitbit");
    assert_eq!(
        http().get(s.url("/fitbit?verify=bad")).send().await.unwrap().status(),
        404,
        "Fitbit's wrong-code check"
    );
    assert_eq!(http().post(s.url("/fitbit")).send().await.unwrap().status(), 503);
}

#[tokio::test]
async fn throttling_answers_429_past_the_limit_and_can_be_lifted() {
    let s = Setup::new().await;
    let (status, body) = patch(&s, r#"{"rateLimit": {"requests": 3, "windowSeconds": 60}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tunnel"]["rateLimit"], serde_json::json!({"requests": 3, "windowSeconds": 60}));
    for i in 0..3 {
        let resp = http().get(s.url(&format!("/echo/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i} is within the limit");
    }
    let over = http().get(s.url("/echo/3")).send().await.unwrap();
    assert_eq!(over.status(), 429);
    assert_eq!(over.headers()["x-hookway-error"], "throttled");
    let retry: u64 = over.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(over.text().await.unwrap().contains("Over rate limit, request throttled"));
    let (_, listed) =
        raw_api(&s.server, Method::GET, &format!("/api/tunnels/{}", s.tunnel_id), Some(&bearer()), None).await;
    assert_eq!(listed["tunnel"]["totalRequests"], 3, "a throttled request is not forwarded: {listed}");

    let (status, _) = patch(&s, r#"{"rateLimit": null}"#).await;
    assert_eq!(status, 200);
    assert_eq!(http().get(s.url("/echo/4")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn inbound_options_are_validated_and_survive_a_restart() {
    let server = TestServer::start().await;
    let create = r#"{"name": "guarded", "basicAuth": {"username": "", "password": "pw"}, "rateLimit": {"requests": 100, "windowSeconds": 10}}"#;
    let (status, created) = raw_api(&server, Method::POST, "/api/tunnels", Some(&bearer()), Some(create)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tunnel"]["basicAuth"], serde_json::json!({"username": ""}));
    let id = created["tunnel"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/tunnels/{id}");
    for (bad, says) in [
        (r#"{"basicAuth": {"username": "", "password": ""}}"#, "a username, a password or both"),
        (r#"{"basicAuth": {"username": "bob"}}"#, "'basicAuth.password' is required"),
        (r#"{"basicAuth": {"username": "bob", "password": null}}"#, "'basicAuth.password' is required"),
        (r#"{"basicAuth": {"username": "a:b", "password": "x"}}"#, "':'"),
        (r#"{"basicAuth": {"user": "a"}}"#, "unknown field 'basicAuth.user'"),
        (r#"{"basicAuth": "alice:pw"}"#, "must be an object or null"),
        (r#"{"basicAuth": {"username": "a", "password": 5}}"#, "'basicAuth.password' must be a string"),
        (r#"{"verification": {"type": "alexa", "code": "x"}}"#, "\"facebook\" or \"fitbit\""),
        (r#"{"verification": {"type": "fitbit"}}"#, "verification code"),
        (r#"{"rateLimit": {"requests": 0, "windowSeconds": 10}}"#, "1 to 1000000 requests"),
        (r#"{"rateLimit": {"requests": 10, "windowSeconds": 86401}}"#, "1 to 86400 seconds"),
        (r#"{"rateLimit": {"requests": 1.5, "windowSeconds": 10}}"#, "whole number"),
        (r#"{"rateLimit": {"requests": 10}}"#, "'rateLimit.windowSeconds' is required"),
        (r#"{"rateLimit": {"requests": "10", "windowSeconds": 10}}"#, "'rateLimit.requests' must be a whole number"),
        (r#"{"offlineReply": {}}"#, "'offlineReply.status' is required"),
        (r#"{"offlineReply": {"status": "202"}}"#, "'offlineReply.status' must be an HTTP status"),
    ] {
        let (status, body) = raw_api(&server, Method::PATCH, &path, Some(&bearer()), Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{bad}: {body}");
    }
    let (status, _) = raw_api(
        &server,
        Method::PATCH,
        &path,
        Some(&bearer()),
        Some(r#"{"verification": {"type": "fitbit", "code": "abc"}}"#),
    )
    .await;
    assert_eq!(status, 200);

    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let (_, got) = raw_api(&server, Method::GET, &path, Some(&bearer()), None).await;
    assert_eq!(got["tunnel"]["basicAuth"], serde_json::json!({"username": ""}), "{got}");
    assert_eq!(got["tunnel"]["verification"], serde_json::json!({"type": "fitbit"}), "{got}");
    assert_eq!(got["tunnel"]["rateLimit"], serde_json::json!({"requests": 100, "windowSeconds": 10}), "{got}");
    // And in force: the handshake, the password (no client is connected).
    let url = format!("{}/t/{}", server.url, created["tunnel"]["subdomain"].as_str().unwrap());
    assert_eq!(http().get(format!("{url}/?verify=abc")).send().await.unwrap().status(), 204);
    assert_eq!(http().get(format!("{url}/x")).send().await.unwrap().status(), 401);
    let authed = http().get(format!("{url}/x")).basic_auth("", Some("pw")).send().await.unwrap();
    assert_eq!(authed.status(), 503, "past the password: the tunnel is offline");
    // A tunnel without options shows none of the fields (seed 001's shape).
    let (_, plain) =
        raw_api(&server, Method::POST, "/api/tunnels", Some(&bearer()), Some(r#"{"name": "plain"}"#)).await;
    for field in ["basicAuth", "verification", "rateLimit"] {
        assert!(plain["tunnel"].get(field).is_none(), "{plain}");
    }
}

/// `hookway tunnels test` sends one request to the tunnel's public URL, as a
/// sender would: through its inbound options, the client and the app.
#[tokio::test]
async fn a_test_request_goes_the_way_a_senders_does() {
    let s = Setup::new().await;
    let run = async |args: &[&str]| {
        let args: Vec<&str> = ["test", s.tunnel_id.as_str()].into_iter().chain(args.iter().copied()).collect();
        tunnels_cli(&s.server, &args).await
    };
    let (code, out, err) = run(&["--path", "/echo/test?x=1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("POST {}/echo/test?x=1 → 200 OK", s.client.tunnel_url)), "{out}");
    assert!(out.contains(r#""body":"{\"test\": true}""#) && out.contains("application/json"), "the app's echo: {out}");

    let (status, _) = patch(&s, r#"{"basicAuth": {"username": "ci", "password": "pw"}}"#).await;
    assert_eq!(status, 200);
    let (code, out, err) = run(&["--path", "/echo/t", "-X", "get"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("401") && out.contains("answered by the hookway server: unauthorized"), "{out}");
    assert!(err.contains("answered 401") && err.contains("pass --basic-auth"), "{err}");
    let (code, _, err) = run(&["--path", "/echo/t", "--basic-auth", "ci:wrong"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("answered 401") && err.contains("refused the --basic-auth credentials given"), "{err}");
    let (code, out, err) = run(&["--path", "/echo/t", "--basic-auth", "ci:pw", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&answer["answeredBy"], &answer["serverAnswer"], &answer["status"]),
        (&"app".into(), &Value::Null, &200.into())
    );
    let (code, out, err) = run(&["--path", "/echo/t", "--basic-auth", "ci:pw", "--body", "[1,2]"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#""body":"[1,2]""#), "{out}");
    // Credentials are read as `start --basic-auth` reads them: a usage error.
    let (code, _, err) = run(&["--basic-auth", "ci"]).await;
    assert!(code == 2 && err.contains("give USER:PASSWORD"), "{code}: {err}");
    let (code, _, err) = run(&["--body", "not json"]).await;
    assert!(code != 0 && err.contains("valid JSON"), "{err}");
    for path in ["/../api/tunnels", "/%2E%2e/x", "/a#frag"] {
        let (code, _, err) = run(&["--path", path]).await;
        assert!(code != 0 && err.contains("without '.' or '..' segments"), "{path}: {err}");
    }
}

/// The tunnel's secrets are nowhere but in their digests: not in the capture
/// of a refused or a throttled request (its `Authorization`), nor of a
/// handshake (its code), not in the capture database's file, and a replay
/// does not hand a credential to the app.
#[tokio::test]
async fn secrets_stay_out_of_captures_and_replays() {
    let s = Setup::new().await;
    let set = r#"{"basicAuth": {"username": "alice", "password": "s3cret-pw"},
                  "verification": {"type": "facebook", "code": "fb-code-77"},
                  "rateLimit": {"requests": 3, "windowSeconds": 600}}"#;
    let (status, _) = patch(&s, set).await;
    assert_eq!(status, 200);
    let fb = "/hook?hub.mode=subscribe&hub.challenge=9&hub.verify_token=fb-code-77";
    assert_eq!(http().get(s.url(fb)).send().await.unwrap().status(), 200);
    let near_miss = http().post(s.url("/echo/a")).basic_auth("alice", Some("s3cret-pw!")).send().await.unwrap();
    assert_eq!(near_miss.status(), 401);
    assert_eq!(
        http().post(s.url("/echo/b")).basic_auth("alice", Some("s3cret-pw")).send().await.unwrap().status(),
        200
    );
    let throttled = http().post(s.url("/echo/c")).basic_auth("alice", Some("s3cret-pw")).send().await.unwrap();
    assert_eq!(throttled.status(), 429);

    let list = wait_for_records(&s.server, &s.tunnel_id, 2).await;
    let mut all = String::new();
    for r in &list {
        let path = format!("/api/tunnels/{}/requests/{}", s.tunnel_id, r["id"].as_str().unwrap());
        let (_, detail) = raw_api(&s.server, Method::GET, &path, Some(&bearer()), None).await;
        all.push_str(&detail.to_string());
    }
    let basic = |pw: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"))
    };
    for secret in ["s3cret-pw", "fb-code-77", &basic("s3cret-pw"), &basic("s3cret-pw!")] {
        assert!(!all.contains(secret), "{secret} in a capture: {all}");
    }
    assert!(all.contains("hub.verify_token=(masked)"), "the handshake is there, masked: {all}");
    let db = std::fs::read(s.server.data_dir().join("hookway-requests.db")).unwrap();
    let wal = std::fs::read(s.server.data_dir().join("hookway-requests.db-wal")).unwrap_or_default();
    for secret in ["s3cret-pw", "fb-code-77"] {
        let found = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found(&db) && !found(&wal), "{secret} in the capture database");
    }

    // A replay given a credential does not pass it to the app.
    // (Refused callers are not recorded at all.)
    assert!(list.iter().all(|r| r["outcome"] != "unauthorized" && r["outcome"] != "throttled"), "{list:?}");
    let let_in = list.iter().find(|r| r["path"] == "/echo/b").unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/tunnels/{}/requests/{let_in}/replay", s.tunnel_id);
    let edits = r#"{"headers": {"authorization": "Basic YWxpY2U6czNjcmV0LXB3"}}"#;
    let (status, replayed) = raw_api(&s.server, Method::POST, &path, Some(&bearer()), Some(edits)).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["request"]["status"], 200, "{replayed}");
    let body = replayed["request"]["response"]["body"].as_str().unwrap();
    let seen: Value = serde_json::from_str(body).unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "the app saw a credential: {seen}");
}

/// Two updates at once both take effect: each held the tunnel from reading
/// its options to setting them.
#[tokio::test]
async fn concurrent_updates_are_not_lost() {
    let s = Setup::new().await;
    for round in 0..10 {
        let (a, b) = tokio::join!(
            patch(&s, r#"{"basicAuth": {"username": "u", "password": "p"}}"#),
            patch(&s, r#"{"rateLimit": {"requests": 50, "windowSeconds": 10}}"#),
        );
        assert_eq!((a.0, b.0), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
        let path = format!("/api/tunnels/{}", s.tunnel_id);
        let (_, got) = raw_api(&s.server, Method::GET, &path, Some(&bearer()), None).await;
        assert!(
            got["tunnel"]["basicAuth"].is_object() && got["tunnel"]["rateLimit"].is_object(),
            "round {round}: {got}"
        );
        let (status, _) = patch(&s, r#"{"basicAuth": null, "rateLimit": null}"#).await;
        assert_eq!(status, 200);
    }
}

/// A client that stops says so first (`Leaving`): its tunnel is offline from
/// then on, so a request during its drain gets the offline reply, recorded
/// whole to replay, instead of the client's own 503; the request its app is
/// still answering finishes.
#[tokio::test]
async fn a_stopping_client_leaves_its_tunnel_to_the_offline_reply() {
    let server = TestServer::start().await;
    let mut app = spawn_held_app().await;
    let (tunnel_id, token, subdomain) = create_tunnel(&server, None).await;
    let client = TestClient::connect(&server, &tunnel_id, &token, app.addr.port()).await;
    let s = Setup { server, app: app.addr, client, tunnel_id, token, subdomain };
    let (status, body) = patch(&s, r#"{"offlineReply": {"status": 202}}"#).await;
    assert_eq!(status, 200, "{body}");
    let held = tokio::spawn(http().get(s.url("/hold")).send());
    assert_eq!(app.next_arrival().await, "/hold");

    // Offline at once, not once the drain is over (the app still holds `/hold`).
    take_offline(&s).await;
    assert!(!held.is_finished(), "the request in flight is still being answered");
    let during = http().post(s.url("/echo/during")).body(r#"{"n":1}"#).send().await.unwrap();
    assert_eq!(during.status(), 202, "{:?}", during.text().await);

    app.release.add_permits(1);
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), held).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in flight finished");
    assert_eq!(resp.text().await.unwrap(), "released");
    let list = wait_for_records(&s.server, &s.tunnel_id, 2).await;
    let during = list.iter().find(|r| r["path"] == "/echo/during").expect("the request during the drain is recorded");
    assert_eq!((during["outcome"].as_str(), during["status"].as_u64()), (Some("tunnel-offline"), Some(202)));
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), s.client.task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the client stops once its request is done: {stopped:?}");
}

/// With an offline reply, a request while no client is connected gets that
/// status, not the 503, and is recorded as offline with its body, to be
/// replayed once the client is back.
#[tokio::test]
async fn an_offline_reply_answers_for_the_laptop_and_the_request_is_replayed_later() {
    let s = Setup::new().await;
    let (status, body) = patch(&s, r#"{"offlineReply": {"status": 202}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tunnel"]["offlineReply"], serde_json::json!({"status": 202}));
    let online = http().post(s.url("/echo/on")).body("1").send().await.unwrap();
    assert_eq!(online.status(), 200, "online, the app answers");
    take_offline(&s).await;
    let offline = http().post(s.url("/echo/while-away")).body(r#"{"event":"paid"}"#).send().await.unwrap();
    assert_eq!(offline.status(), 202);
    assert_eq!(offline.headers()["x-hookway-offline"], "recorded");
    assert!(offline.text().await.unwrap().contains("recorded"));

    let list = wait_for_records(&s.server, &s.tunnel_id, 2).await;
    assert_eq!(
        (list[0]["outcome"].as_str(), list[0]["status"].as_u64()),
        (Some("tunnel-offline"), Some(202)),
        "{}",
        list[0]
    );
    // A 205 carries no content (it carried the line): as a 204 does.
    let (status, body) = patch(&s, r#"{"offlineReply": {"status": 205}}"#).await;
    assert_eq!(status, 200, "{body}");
    let raw = raw_exchange(
        s.server.http,
        format!("POST /t/{}/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1", s.subdomain)
            .as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 205 "), "{raw}");
    let (head, content) = raw.split_once("\r\n\r\n").unwrap();
    assert!(content.is_empty() && !head.to_ascii_lowercase().contains("content-type"), "{raw}");

    // Back: the recorded request replays to the app, body and all.
    let app = spawn_app().await;
    let _back = TestClient::connect(&s.server, &s.tunnel_id, &s.token, app.port()).await;
    let replay = format!("/api/tunnels/{}/requests/{}/replay", s.tunnel_id, list[0]["id"].as_str().unwrap());
    let (status, replayed) = raw_api(&s.server, Method::POST, &replay, Some(&bearer()), Some("{}")).await;
    assert_eq!((status, replayed["request"]["status"].as_u64()), (reqwest::StatusCode::OK, Some(200)), "{replayed}");
    let seen: Value = serde_json::from_str(replayed["request"]["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["body"], r#"{"event":"paid"}"#);

    for bad in [
        r#"{"offlineReply": {"status": 302}}"#,
        r#"{"offlineReply": {"status": "ok"}}"#,
        r#"{"offlineReply": {"code": 1}}"#,
    ] {
        let (status, body) = patch(&s, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // It answers for requests only their record will deliver: not without bodies.
    let (status, body) = patch(&s, r#"{"captureBodies": false}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("captureBodies"), "{body}");
    let (status, body) = patch(&s, r#"{"offlineReply": null, "captureBodies": false}"#).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = patch(&s, r#"{"offlineReply": {"status": 200}}"#).await;
    assert_eq!(status, 409);
}

/// The offline reply goes out only for a request recorded whole: one whose
/// body the capture could not keep gets the 503, as a sender should see it.
#[tokio::test]
async fn an_offline_reply_is_only_for_a_request_recorded_whole() {
    let s = Setup::with_server(TestServer::start_with(|c| c.capture.body_limit = 64).await).await;
    let (status, _) = patch(&s, r#"{"offlineReply": {"status": 202}}"#).await;
    assert_eq!(status, 200);
    take_offline(&s).await;
    assert_eq!(http().post(s.url("/small")).body("x".repeat(64)).send().await.unwrap().status(), 202);
    let big = http().post(s.url("/big")).body("x".repeat(65)).send().await.unwrap();
    assert_eq!(big.status(), 503, "over the capture's body limit");
    // Nor does a test request count an offline reply as reaching the app.
    let (code, _, err) = tunnels_cli(&s.server, &["test", &s.tunnel_id]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not reach the app") && err.contains("offline reply"), "{err}");
    // The command as it runs here: `hookway` is not on the PATH in tests,
    // so it is the binary's path.
    let hint = format!(" tunnels replay-offline {} --server {}` will send it", s.tunnel_id, s.server.url);
    let command = err.split(&hint).next().and_then(|before| before.rsplit('`').next()).unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_hookway")).canonicalize().unwrap();
    assert_eq!(std::path::Path::new(command).canonicalize().ok(), Some(binary), "{err}");
}

/// `tunnels replay-offline` replays, oldest first, what was recorded while
/// the tunnel was offline and has no replay yet; a second run finds nothing.
#[tokio::test]
async fn replay_offline_sends_what_the_offline_reply_answered_for() {
    let s = Setup::new().await;
    let (status, _) = patch(&s, r#"{"offlineReply": {"status": 202}}"#).await;
    assert_eq!(status, 200);
    take_offline(&s).await;
    for i in 1..=3 {
        let resp = http().post(s.url(&format!("/echo/away-{i}"))).body(format!("event {i}")).send().await.unwrap();
        assert_eq!(resp.status(), 202);
    }
    let run = async || tunnels_cli(&s.server, &["replay-offline", &s.tunnel_id]).await;
    wait_for_records(&s.server, &s.tunnel_id, 3).await;
    // Too early, still offline: the first replay meets the edge's 503, and
    // the run stops with all three still waiting (a failed replay does not
    // count as one).
    let (code, out, err) = run().await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(POST /echo/away-1)") && out.contains("503 tunnel-offline"), "{out}");
    assert!(err.contains("replayed 0 of 3, then stopped") && err.contains("still wait"), "{err}");
    let app = spawn_app().await;
    let _back = TestClient::connect(&s.server, &s.tunnel_id, &s.token, app.port()).await;
    let (code, out, err) = run().await;
    assert_eq!(code, 0, "{err}");
    let order: Vec<&str> = out.lines().filter_map(|l| l.split(" (POST ").nth(1)?.split(')').next()).collect();
    assert_eq!(order, ["/echo/away-1", "/echo/away-2", "/echo/away-3"], "{out}");
    assert!(out.lines().all(|l| l.ends_with(": 200 ok")), "{out}");
    let (code, out, err) = run().await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("Nothing to replay"), "{err}");
    // With --json, one document: the new records, none this time.
    let (code, out, err) = tunnels_cli(&s.server, &["replay-offline", &s.tunnel_id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!({"requests": []}), "{out}");
}

/// A stored offline reply on a server restarted without capture is not
/// given (callers get the 503), and it does not block unrelated updates.
#[tokio::test]
async fn an_offline_reply_without_capture_is_not_given_and_blocks_nothing() {
    let server = TestServer::start().await;
    let body = r#"{"name": "away", "offlineReply": {"status": 202}}"#;
    let (status, created) = raw_api(&server, Method::POST, "/api/tunnels", Some(&bearer()), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["tunnel"]["id"].as_str().unwrap().to_owned();
    let url = format!("/t/{}/hook", created["tunnel"]["subdomain"].as_str().unwrap());
    let server = TestServer::start_in(server.stop().await, |c| c.capture.enabled = false).await;
    let resp = http().post(format!("{}{url}", server.url)).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 503, "not recorded, so not answered for");
    // Nothing to inspect, and the CLI says why rather than "not yet".
    let (code, _, err) = tunnels_cli(&server, &["requests", &id]).await;
    assert!(code == 0 && err.contains("runs with --no-capture, so it records none"), "{err}");
    let any = "req_00000000000000000000";
    let (code, _, err) = tunnels_cli(&server, &["request", &id, any]).await;
    assert!(code == 1 && err.contains("request not found: this server runs with --no-capture"), "{err}");
    let (code, _, err) = tunnels_cli(&server, &["replay", &id, any]).await;
    assert!(code == 1 && err.contains("(--no-capture)"), "{err}");
    let (code, _, err) = tunnels_cli(&server, &["replay-offline", &id]).await;
    assert!(code == 0 && err.contains("Nothing to replay: this server runs with --no-capture"), "{err}");
    let path = format!("/api/tunnels/{id}");
    let (status, body) = raw_api(&server, Method::PATCH, &path, Some(&bearer()), Some(r#"{"name": "renamed"}"#)).await;
    assert_eq!(status, 200, "{body}");
    let set = r#"{"offlineReply": {"status": 200}}"#;
    let (status, body) = raw_api(&server, Method::PATCH, &path, Some(&bearer()), Some(set)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--no-capture"), "{body}");
}

/// A record `replay-offline` cannot replay as it came (its body not kept
/// whole: here a chunked body to a tunnel that keeps no bodies) is passed
/// over with the command that can, and the run goes on to the next, instead
/// of stopping at it on every run.
#[tokio::test]
async fn replay_offline_passes_over_a_record_without_its_body() {
    let s = Setup::new().await;
    let (status, _) = patch(&s, r#"{"captureBodies": false}"#).await;
    assert_eq!(status, 200);
    take_offline(&s).await;
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("event=paid")]);
    let resp = http().post(s.url("/echo/chunked")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(http().get(s.url("/echo/ping")).send().await.unwrap().status(), 503);
    wait_for_records(&s.server, &s.tunnel_id, 2).await;
    let app = spawn_app().await;
    let _back = TestClient::connect(&s.server, &s.tunnel_id, &s.token, app.port()).await;
    let (code, out, err) = tunnels_cli(&s.server, &["replay-offline", &s.tunnel_id]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("Skipped req_") && err.contains("--body-file FILE"), "{err}");
    assert!(out.contains("(GET /echo/ping)") && out.trim_end().ends_with(": 200 ok"), "{out}");
}
