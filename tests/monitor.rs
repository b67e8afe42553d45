//! Request inspection from the user's side: the `tunnels requests|request|
//! replay|clear-requests` commands, and `tunnels monitor` driven through a real
//! terminal (tmux) against a real server, tunnel and local app.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// One request the local app received.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A local app that records what reaches it and answers `{"received":true}`.
struct Recorder {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let log = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            log.lock().unwrap().push(Hit { path, headers, body });
                            let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{\"received\":true}")));
                            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, hits }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits_to(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }
}

/// Runs the binary with the server and key in its environment.
async fn hookway(args: &[&str], server: &TestServer) -> (i32, String, String) {
    let out = run_cli(server, args).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn hookway_json(args: &[&str], server: &TestServer) -> Value {
    let (code, out, err) = hookway(args, server).await;
    assert_eq!(code, 0, "{args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Polls `f` every 100 ms, at most 100 times (10 s).
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The captured records, newest first, once there are `n`.
async fn records(server: &TestServer, id: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} captured records"), async || {
        let v = hookway_json(&["tunnels", "requests", id, "--limit", "1000", "--json"], server).await;
        let list = v["requests"].as_array().cloned().unwrap_or_default();
        (list.len() == n).then_some(list)
    })
    .await
}

fn looks_like_clock(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && [2, 5].iter().all(|&i| b[i] == b':')
        && b[8] == b'.'
        && b.iter().enumerate().all(|(i, c)| [2, 5, 8].contains(&i) || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_commands_list_show_replay_and_clear() {
    let server = TestServer::start().await;
    let app = Recorder::start().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let client = TestClient::connect(&server, &id, &token, app.port()).await;
    let url = client.tunnel_url.clone();
    let send = async |req: reqwest::RequestBuilder| assert_eq!(req.send().await.unwrap().status(), 200);
    send(
        http().post(format!("{url}/cli/json")).header("content-type", "application/json").body(r#"{"probe":"cli-1"}"#),
    )
    .await;
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x01, 0x02];
    send(http().post(format!("{url}/cli/bin")).body(binary.to_vec())).await;
    send(http().get(format!("{url}/cli/get?x=1"))).await;
    let listed = records(&server, &id, 3).await;
    let ids: Vec<String> = listed.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    let paths: Vec<&str> = listed.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/cli/get?x=1", "/cli/bin", "/cli/json"], "newest first");
    let (get_id, bin_id, json_id) = (&ids[0], &ids[1], &ids[2]);

    // The table: the asked-for columns, newest first, local clock times.
    let (code, out, err) = hookway(&["tunnels", "requests", &id], &server).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "METHOD", "PATH", "STATUS", "DURATION", "OUTCOME", "ID"]);
    assert_eq!(lines.len(), 4, "{out}");
    for (line, (path, rid)) in lines[1..].iter().zip(paths.iter().zip(&ids)) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(looks_like_clock(cols[0]), "{line}");
        assert_eq!((cols[2], cols[3], cols[5], cols[6], cols[7]), (*path, "200", "ms", "ok", rid.as_str()), "{line}");
    }
    assert!(!err.contains("--before"), "a short page has no next page: {err}");

    // A full page that is all there is offers no next one.
    let (code, out, err) = hookway(&["tunnels", "requests", &id, "--limit", "3"], &server).await;
    assert_eq!((code, out.lines().count()), (0, 4), "{out}");
    assert!(!err.contains("--before"), "nothing more: {err}");

    // Paging: a full page says how to get the next one.
    let (code, out, err) = hookway(&["tunnels", "requests", &id, "--limit", "2"], &server).await;
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
    assert!(err.contains(&format!("--before {bin_id}")), "{err}");
    let next = hookway_json(&["tunnels", "requests", &id, "--limit", "2", "--before", bin_id, "--json"], &server).await;
    assert_eq!(next["requests"].as_array().unwrap().len(), 1);
    assert_eq!(&next["requests"][0]["id"], json_id.as_str());

    // The detail: headers, JSON body pretty-printed, response.
    let (code, out, err) = hookway(&["tunnels", "request", &id, json_id], &server).await;
    assert_eq!(code, 0, "{err}");
    for expected in [
        "POST /cli/json  →  200 ok",
        "Request headers",
        "  content-type: application/json",
        "Request body (17 bytes)",
        "    \"probe\": \"cli-1\"",
        "Response 200",
        "    \"received\": true",
    ] {
        assert!(out.lines().any(|l| l.starts_with(expected)), "{expected:?} missing from\n{out}");
    }
    let (code, out, _) = hookway(&["tunnels", "request", &id, bin_id], &server).await;
    assert_eq!(code, 0);
    assert!(out.contains("<5 bytes binary>") && out.contains("ff fe 00 01 02"), "{out}");
    // The exact bytes, for a file or a pipe (the request's, when not named).
    for which in [&["--body-only", "request"][..], &["--body-only"]] {
        let args: Vec<&str> = ["tunnels", "request", &id, bin_id].into_iter().chain(which.iter().copied()).collect();
        let raw = run_cli(&server, &args).await;
        assert!(raw.status.success(), "{which:?}: {}", String::from_utf8_lossy(&raw.stderr));
        assert_eq!(raw.stdout, [0xff, 0xfe, 0x00, 0x01, 0x02], "{which:?}");
    }
    let (code, out, _) = hookway(&["tunnels", "request", &id, get_id], &server).await;
    assert_eq!(code, 0);
    assert!(out.contains("GET /cli/get?x=1") && out.contains("(empty)"), "{out}");
    let detail = hookway_json(&["tunnels", "request", &id, bin_id, "--json"], &server).await;
    assert_eq!(
        (&detail["request"]["id"], &detail["request"]["request"]["bodyEncoding"]),
        (&Value::from(bin_id.as_str()), &Value::from("base64"))
    );
    let (code, _, err) = hookway(&["tunnels", "request", &id, "req_0000000000000000000a"], &server).await;
    assert!(code != 0 && err.contains("request not found"), "{err}");

    // Replays: plain, with an edited body and header, and with a binary body file.
    let (code, out, err) = hookway(
        &["tunnels", "replay", &id, json_id, "--body", r#"{"probe":"edited"}"#, "-H", "X-Replayed: yes"],
        &server,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("Replayed {json_id} as req_")) && out.contains(": 200 ok in "), "{out}");
    let hits = app.hits_to("/cli/json");
    assert_eq!(hits.len(), 2);
    assert_eq!(&hits[1].body[..], br#"{"probe":"edited"}"#);
    assert_eq!(hits[1].headers["x-replayed"], "yes");
    let replayed = hookway_json(&["tunnels", "replay", &id, bin_id, "--json"], &server).await;
    assert_eq!(&replayed["request"]["replayOf"], bin_id.as_str());
    assert_eq!(app.hits_to("/cli/bin").iter().map(|h| h.body.clone()).collect::<Vec<_>>(), [binary, binary]);
    let file = server.data_dir().join("body.bin");
    std::fs::write(&file, [0x80, 0x81, 0xff]).unwrap();
    let (code, _, err) =
        hookway(&["tunnels", "replay", &id, bin_id, "--body-file", file.to_str().unwrap()], &server).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(&app.hits_to("/cli/bin")[2].body[..], [0x80, 0x81, 0xff], "non-UTF-8 files arrive byte for byte");

    // Body capture off, then on again; `update` still wants something to change.
    let updated = hookway_json(&["tunnels", "update", &id, "--no-capture-bodies", "--json"], &server).await;
    assert_eq!(updated["tunnel"]["captureBodies"], false);
    send(http().post(format!("{url}/cli/nocap")).body("secret")).await;
    let nocap = records(&server, &id, 7).await[0]["id"].as_str().unwrap().to_owned();
    let (code, out, _) = hookway(&["tunnels", "request", &id, &nocap], &server).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("Request body (6 bytes)") && out.contains("(body capture is off)") && !out.contains("secret"),
        "{out}"
    );
    let (code, _, err) = hookway(&["tunnels", "replay", &id, &nocap], &server).await;
    assert!(code != 0 && err.contains("409"), "no body to replay: {err}");
    // In the CLI's words, not the API's.
    assert!(err.contains("bodies are not captured") && err.contains("--body TEXT or --body-file PATH"), "{err}");
    // Not how to get what was kept of it: nothing was (issue: it offered
    // `--body-only`, which then failed).
    assert!(!err.contains("--body-only"), "{err}");
    assert!(!err.contains(r#"{"body""#), "{err}");
    let (status, api) = raw_api(
        &server,
        reqwest::Method::POST,
        &format!("/api/tunnels/{id}/requests/{nocap}/replay"),
        Some(&bearer()),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert!(api["error"].as_str().unwrap().ends_with(r#"send the body to replay with {"body": "…"}"#), "{api}");
    let updated = hookway_json(&["tunnels", "update", &id, "--capture-bodies", "--json"], &server).await;
    assert_eq!(updated["tunnel"].get("captureBodies"), None, "only shown when off: {updated}");
    let (code, _, err) = hookway(&["tunnels", "update", &id], &server).await;
    assert!(code != 0 && err.contains("--capture-bodies"), "{err}");
    let created =
        hookway_json(&["tunnels", "create", "--name", "quiet", "--no-capture-bodies", "--json"], &server).await;
    assert_eq!(created["tunnel"]["captureBodies"], false);

    // Clearing.
    let (code, out, err) = hookway(&["tunnels", "clear-requests", &id], &server).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("Deleted 7 captured requests of {id}."));
    let cleared = hookway_json(&["tunnels", "clear-requests", &id, "--json"], &server).await;
    assert_eq!(cleared, serde_json::json!({"success": true, "deleted": 0}));
    let (code, out, err) = hookway(&["tunnels", "requests", &id], &server).await;
    assert_eq!((code, out.as_str()), (0, ""), "an empty list is a hint, not a bare header: {err}");
    // Not `tunnels monitor`, which would take the tunnel over from its client
    // (issue: that was the hint).
    assert!(err.contains("No captured requests yet") && err.contains("its client is connected"), "{err}");
    assert!(!err.contains("tunnels monitor"), "{err}");
    let (offline, _, _) = create_tunnel(&server, None).await;
    let (code, _, err) = hookway(&["tunnels", "requests", &offline], &server).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("tunnels monitor {offline} <port>")), "one with no client may be served so: {err}");
    let (code, out, err) = hookway(&["tunnels", "requests", &id, "--before", json_id], &server).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains(&format!("before {json_id}")), "{err}");

    // A body cut at the capture's limit: what was kept is a command away.
    send(http().post(format!("{url}/cli/big")).body(vec![b'x'; (1 << 20) + 16])).await;
    let big = records(&server, &id, 1).await[0]["id"].as_str().unwrap().to_owned();
    let (code, _, err) = hookway(&["tunnels", "replay", &id, &big], &server).await;
    assert!(code != 0 && err.contains("cut at"), "{err}");
    assert!(err.contains(&format!("tunnels request {id} {big} --body-only --server {} > PATH", server.url)), "{err}");
}

/// A tmux server of its own (`-L`), with one session running a command; killed on drop.
struct Tmux {
    socket: String,
    /// The socket file, which `kill-server` leaves behind.
    socket_path: Option<String>,
}

const SESSION: &str = "monitor";

impl Tmux {
    /// Starts `hookway ARGS` in a 160×45 terminal. The command is followed by
    /// its exit status and a pause, so that a crash stays readable on screen.
    fn start(server: &TestServer, args: &[&str]) -> Self {
        Self::start_with_stdout(server, args, None)
    }

    /// Like [`Tmux::start`], with stdout redirected to `stdout` when given
    /// (stdin and stderr stay on the terminal).
    fn start_with_stdout(server: &TestServer, args: &[&str], stdout: Option<&std::path::Path>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        match Command::new("tmux").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            _ => panic!("this test drives the monitor through tmux, which is not installed: apt-get install tmux"),
        }
        let socket = format!("hookway-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut command = format!(
            "env HOOKWAY_SERVER={} HOOKWAY_API_KEY={} RUST_LOG=debug {}",
            quote(&server.url),
            quote(API_KEY),
            quote(env!("CARGO_BIN_EXE_hookway"))
        );
        for arg in args {
            command.push(' ');
            command.push_str(&quote(arg));
        }
        if let Some(file) = stdout {
            command.push_str(&format!(" > {}", quote(file.to_str().unwrap())));
        }
        command.push_str("; echo EXITED:$?; sleep 60");
        let mut tmux = Self { socket, socket_path: None };
        tmux.run(&["new-session", "-d", "-s", SESSION, "-x", "160", "-y", "45", &command]);
        tmux.socket_path = Some(tmux.run(&["display-message", "-p", "#{socket_path}"]).trim().to_owned());
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", SESSION])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Polls the screen every 100 ms, at most 100 times, until `ok` holds.
    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        for _ in 0..100 {
            screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; the screen shows:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Rows of the list (the left pane) that show `path`.
fn rows_with<'a>(screen: &'a str, path: &str) -> Vec<&'a str> {
    let list = screen.lines().filter_map(|l| l.split("││").next().filter(|_| l.contains("││")));
    list.filter(|l| l.contains(&format!(" {path} "))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_live_requests_details_and_replays() {
    let server = TestServer::start().await;
    let app = Recorder::start().await;
    let (id, _, subdomain) = create_tunnel(&server, None).await;
    let tmux = Tmux::start(&server, &["tunnels", "monitor", &id, &app.port().to_string()]);
    let url = format!("{}/t/{subdomain}", server.url);
    tmux.wait_for("the tunnel to connect", |s| s.contains(&url) && s.contains(" connected")).await;

    let post = async |path: &str, body: &'static str| {
        let resp = http().post(format!("{url}{path}")).header("content-type", "application/json").body(body);
        assert_eq!(resp.send().await.unwrap().status(), 200);
    };
    post("/hooks/alpha", r#"{"probe":"alpha-7731","n":1}"#).await;
    // The first request selects itself and its detail shows the body pretty-printed.
    let screen = tmux
        .wait_for("the request and its detail", |s| {
            rows_with(s, "/hooks/alpha").len() == 1 && s.contains(r#""probe": "alpha-7731","#)
        })
        .await;
    let row = rows_with(&screen, "/hooks/alpha")[0];
    assert!(row.contains("POST") && row.contains("200") && row.contains(" ok"), "{row}");
    assert!(screen.contains("requests: 1"), "{screen}");

    post("/hooks/beta", r#"{"probe":"beta-5520"}"#).await;
    tmux.wait_for("the second request", |s| rows_with(s, "/hooks/beta").len() == 1).await;
    let screen = tmux.screen();
    assert!(screen.contains("alpha-7731") && !screen.contains("beta-5520"), "arrivals keep the selection:\n{screen}");
    let beta_row = screen.lines().position(|l| l.contains(rows_with(&screen, "/hooks/beta")[0])).unwrap();
    let alpha_row = screen.lines().position(|l| l.contains(rows_with(&screen, "/hooks/alpha")[0])).unwrap();
    assert!(beta_row < alpha_row, "newest on top:\n{screen}");

    tmux.keys(&["k"]);
    tmux.wait_for("k to select the newer request", |s| s.contains(r#""probe": "beta-5520""#)).await;
    tmux.keys(&["Down"]);
    tmux.wait_for("Down to select the older one", |s| s.contains(r#""probe": "alpha-7731","#)).await;

    // Replay: the app gets the same request again and the list shows the new record.
    tmux.keys(&["r"]);
    eventually("the replay to reach the app", async || (app.hits_to("/hooks/alpha").len() == 2).then_some(())).await;
    let hits = app.hits_to("/hooks/alpha");
    assert_eq!(hits[0].body, hits[1].body);
    let screen = tmux
        .wait_for("the replay in the list", |s| {
            rows_with(s, "/hooks/alpha").len() == 2 && s.contains("ok (replay)") && s.contains("Replayed ")
        })
        .await;
    let replay = records(&server, &id, 3).await.remove(0);
    assert!(screen.contains(replay["id"].as_str().unwrap()), "the status line names the new record:\n{screen}");

    // Logs (RUST_LOG=debug) never reach the screen's text: only the header's log field.
    let text: Vec<&str> = screen.lines().collect();
    assert!(text[0].starts_with(" hookway monitor"), "{screen}");
    for (i, line) in text.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(!line.contains("DEBUG") && !line.contains(" TRACE "), "log on line {i}:\n{screen}");
    }
    assert!(text[1].contains("log: "), "debug logs are shown in the header:\n{screen}");

    // q leaves cleanly: exit status 0, the terminal's own screen back, the tunnel offline.
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("the monitor to exit", |s| s.contains("EXITED:")).await;
    assert!(screen.contains("EXITED:0"), "{screen}");
    assert!(!screen.contains("hookway monitor") && !screen.contains("Requests (newest first)"), "{screen}");
    let api = server.api();
    eventually("the tunnel to go offline", async || {
        let v = api.call(reqwest::Method::GET, &format!("/api/tunnels/{id}/status"), None).await.unwrap();
        (v["liveStatus"]["connected"] == false).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_monitor_serves_a_new_tunnel_and_quits_on_ctrl_c() {
    let server = TestServer::start().await;
    let app = Recorder::start().await;
    let tmux = Tmux::start(&server, &["start", &app.port().to_string(), "--monitor", "--subdomain", "monitored"]);
    let url = format!("{}/t/monitored", server.url);
    tmux.wait_for("the new tunnel to connect", |s| s.contains(&url) && s.contains(" connected")).await;
    let resp = http().put(format!("{url}/from/start")).body("plain text body").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    tmux.wait_for("the request and its body", |s| {
        rows_with(s, "/from/start").len() == 1 && s.contains("  plain text body")
    })
    .await;
    assert_eq!(app.hits_to("/from/start").len(), 1);
    // In raw mode ctrl-c is a key, not a signal: it must still quit.
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_for("the monitor to exit", |s| s.contains("EXITED:")).await;
    assert!(screen.contains("EXITED:0") && !screen.contains("Requests (newest first)"), "{screen}");
    // Back on the terminal's own screen: how to serve the same URL again.
    let id = tunnels(&server).await[0]["id"].as_str().unwrap().to_owned();
    let again = format!("tunnels connect {id} {}", app.port());
    assert!(screen.contains("To serve the same URL again:") && screen.contains(&again), "{screen}");
}

/// The tunnels the server has.
async fn tunnels(server: &TestServer) -> Vec<Value> {
    let listed = server.api().call(reqwest::Method::GET, "/api/tunnels", None).await.unwrap();
    listed["tunnels"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_without_a_terminal_is_a_usage_error_before_any_api_call() {
    let server = TestServer::start().await;
    let app = Recorder::start().await;
    let port = app.port().to_string();
    // Piped stdio: no terminal at all. No tunnel is created.
    let (code, out, err) = hookway(&["start", &port, "--monitor", "--subdomain", "notty"], &server).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--monitor needs a terminal (stdin and stdout)") && out.is_empty(), "{err}");
    assert_eq!(tunnels(&server).await, Vec::<Value>::new(), "no tunnel left behind");

    // `tunnels monitor` issues no new token: the tunnel's token still connects.
    let (id, token, _) = create_tunnel(&server, None).await;
    let (code, out, err) = hookway(&["tunnels", "monitor", &id, &port], &server).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`tunnels monitor` needs a terminal") && !err.contains("new auth token"), "{err}");
    assert!(out.is_empty(), "{out}");
    let client = TestClient::connect(&server, &id, &token, app.port()).await;
    client.shutdown.cancel();

    // A terminal, but stdout redirected to a file: the same error on the
    // terminal (stderr), nothing in the file, no tunnel.
    let file = server.data_dir().join("monitor-out");
    let tmux =
        Tmux::start_with_stdout(&server, &["start", &port, "--monitor", "--subdomain", "redirected"], Some(&file));
    let screen = tmux.wait_for("the monitor to refuse", |s| s.contains("EXITED:")).await;
    assert!(screen.contains("EXITED:2") && screen.contains("--monitor needs a terminal"), "{screen}");
    assert_eq!(std::fs::read(&file).unwrap(), b"", "no escape codes in the file");
    assert_eq!(tunnels(&server).await.len(), 1, "only the tunnel made above");
}

#[test]
fn monitor_help_lists_the_keys() {
    for args in [&["tunnels", "monitor", "--help"][..], &["start", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_hookway")).args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        for key in ["k/j select", "PgUp/PgDn scroll the detail", "r replays", "q/Esc/Ctrl-C quit"] {
            assert!(help.contains(key), "{args:?}: {key:?} missing from\n{help}");
        }
    }
}
