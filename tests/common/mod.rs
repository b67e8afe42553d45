//! Test harness: a real server on 127.0.0.1:0 with a SQLite file in a temp dir,
//! a real local app (hyper) on 127.0.0.1:0, and real tunnel clients over QUIC.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use hookway::client::{self, ApiClient, ClientConfig, ClientError, Event};
use hookway::quic::{self, FrameReader, FrameWriter, tls};
use hookway::server::{DataDirLost, Server, ServerConfig};
use hookway::store::StoreHandle;
use hookway::wire::{ClientHello, Frame};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "hwk_test_key_for_integration_tests";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A running server.
pub struct TestServer {
    pub dir: Arc<tempfile::TempDir>,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub url: String,
    pub store: StoreHandle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), DataDirLost>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, tweak).await
    }

    /// Starts a server on an existing data dir (restarts keep the dir alive).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::local(dir.path().to_path_buf());
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.quic_addr = "127.0.0.1:0".parse().unwrap();
        config.api_key = Some(API_KEY.into());
        config.shutdown_grace = Duration::from_secs(2);
        tweak(&mut config);
        let server = Server::bind(config).await.expect("server binds");
        let (http, quic) = (server.http_addr(), server.quic_addr());
        let url = server.public_url().to_owned();
        let store = server.store();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self { dir, http, quic, url, store, shutdown, task }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(15), self.task).await.expect("server stops in time");
        stopped.unwrap().expect("its data dir stayed");
        self.dir
    }

    pub fn api(&self) -> ApiClient {
        ApiClient::new(&self.url, Some(API_KEY.into()))
    }

    pub fn api_with(&self, key: &str) -> ApiClient {
        ApiClient::new(&self.url, Some(key.into()))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// A tunnel client running in a task, with its events.
pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ClientError>>,
    pub tunnel_url: String,
    pub host_url: Option<String>,
}

impl TestClient {
    /// Connects `tunnel_id` to the local `port` and waits until it is live.
    pub async fn connect(server: &TestServer, tunnel_id: &str, token: &str, port: u16) -> Self {
        let mut client = Self::spawn(server, tunnel_id, token, port);
        let hello = client.wait_connected().await;
        client.tunnel_url = hello.0;
        client.host_url = hello.1;
        client
    }

    pub fn spawn(server: &TestServer, tunnel_id: &str, token: &str, port: u16) -> Self {
        Self::spawn_to(server, tunnel_id, token, "127.0.0.1", port)
    }

    /// [`TestClient::spawn`] forwarding to the app at `host` (`--local-host`).
    pub fn spawn_to(server: &TestServer, tunnel_id: &str, token: &str, host: &str, port: u16) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let config = ClientConfig { local_host: host.into(), ..ClientConfig::new(&server.url, tunnel_id, token, port) };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
        Self { events, shutdown, task, tunnel_url: String::new(), host_url: None }
    }

    /// Waits for the next `Connected` event; returns (tunnel URL, host URL).
    pub async fn wait_connected(&mut self) -> (String, Option<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("client connects within 20 s")
                .expect("client still running");
            if let Event::Connected { hello, .. } = event {
                return (hello.tunnel_url, hello.host_url);
            }
        }
    }

    /// Waits for the client to stop and returns its result.
    pub async fn finished(self, within: Duration) -> Result<(), ClientError> {
        tokio::time::timeout(within, self.task).await.expect("client stops in time").unwrap()
    }
}

/// Creates a tunnel through the API; returns (id, token, subdomain).
pub async fn create_tunnel(server: &TestServer, subdomain: Option<&str>) -> (String, String, String) {
    let created = server.api().create_tunnel("test tunnel", subdomain).await.expect("create tunnel");
    (created.tunnel.id, created.auth_token, created.tunnel.subdomain)
}

/// A server, a local app and a connected tunnel, ready for requests.
pub struct Setup {
    pub server: TestServer,
    pub app: SocketAddr,
    pub client: TestClient,
    pub tunnel_id: String,
    pub token: String,
    pub subdomain: String,
}

impl Setup {
    pub async fn new() -> Self {
        Self::with_server(TestServer::start().await).await
    }

    pub async fn with_server(server: TestServer) -> Self {
        let app = spawn_app().await;
        let (tunnel_id, token, subdomain) = create_tunnel(&server, None).await;
        let client = TestClient::connect(&server, &tunnel_id, &token, app.port()).await;
        Self { server, app, client, tunnel_id, token, subdomain }
    }

    /// `{tunnel url}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.client.tunnel_url)
    }
}

/// A new tunnel on `server`, its client connected and serving an echo app of
/// its own: the tunnel's id and the client (for tests that keep the server).
pub async fn connected_tunnel(server: &TestServer) -> (String, TestClient) {
    let app = spawn_app().await;
    let (tunnel_id, token, _) = create_tunnel(server, None).await;
    let client = TestClient::connect(server, &tunnel_id, &token, app.port()).await;
    (tunnel_id, client)
}

/// Runs the `hookway` binary with `args` against `server`, with the test API
/// key, at the default width (no `COLUMNS`): its raw output.
pub async fn run_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"))
        .args(args)
        .env("HOOKWAY_SERVER", &server.url)
        .env("HOOKWAY_API_KEY", API_KEY)
        .env_remove("COLUMNS")
        .output()
        .await
        .unwrap()
}

/// A plain HTTP client (no pool surprises between tests).
pub fn http() -> reqwest::Client {
    hookway::quic::tls::install_default_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Raw JSON call with an arbitrary Authorization header.
pub async fn raw_api(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = http().request(method, format!("{}{path}", server.url));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub fn bearer() -> String {
    format!("Bearer {API_KEY}")
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The local app. Routes:
/// * `/echo…`: JSON of what arrived (method, path with query, headers, body as
///   lossy text, body length), status from `?status=`, header `x-app: echo`.
/// * `/raw-headers`: JSON of the headers as they arrived, each name with the
///   base64 of its values' bytes (which `/echo` shows lossily), and a response
///   header that is not UTF-8, `x-latin1: été` in Latin-1 ([`LATIN1`]).
/// * `/upload`: streams the body, answers `{"bytes": n, "sum": wrapping sum}`.
/// * `/download?n=N`: N bytes of a known pattern, streamed in 64 KiB chunks.
/// * `/broken`: 64 KiB of a declared 1 MiB body, then the connection is cut.
/// * `/sse`: three events 300 ms apart.
/// * `/slow?ms=N`: answers after N ms.
pub async fn spawn_app() -> SocketAddr {
    spawn_app_on("127.0.0.1:0").await
}

/// [`spawn_app`] listening on `addr` (e.g. `[::1]:0`, an app on IPv6 only).
pub async fn spawn_app_on(addr: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(app(req).await) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A local app that says when each request arrives and holds `/hold…` ones
/// until the test releases them; anything else it answers `fast` at once.
pub struct HeldApp {
    pub addr: SocketAddr,
    /// The path of each request, as it arrives.
    pub arrived: mpsc::UnboundedReceiver<String>,
    /// One permit answers one held request (`released`).
    pub release: Arc<tokio::sync::Semaphore>,
}

impl HeldApp {
    /// Waits (up to 10 s) for the next request to reach the app; its path.
    pub async fn next_arrival(&mut self) -> String {
        let next = tokio::time::timeout(Duration::from_secs(10), self.arrived.recv());
        next.await.expect("a request reaches the app within 10 s").expect("the app runs")
    }
}

pub async fn spawn_held_app() -> HeldApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (tx, gate) = (tx.clone(), gate.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = tx.send(path.clone());
                        if !path.starts_with("/hold") {
                            return Ok::<_, Infallible>(Response::new(full("fast")));
                        }
                        gate.acquire().await.expect("the gate stays open").forget();
                        Ok(Response::new(full("released")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HeldApp { addr, arrived, release }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// The value of the `x-latin1` header `/raw-headers` answers with: "été" in
/// Latin-1, legal in HTTP (obs-text) and not UTF-8.
pub const LATIN1: &[u8] = b"\xe9t\xe9";

/// A signature header value with bytes that are not UTF-8 (obs-text).
pub const RAW_SIGNATURE: &[u8] = b"t=1,v1=caf\xe9\x80\xff";

/// POSTs to `{base}/raw-headers` with obs-text values: `x-signature`
/// ([`RAW_SIGNATURE`]), `x-multi` twice (`plain`, then byte 0xfe) and a plain
/// `x-plain: ok`; checks the app's Latin-1 header came back as sent, and
/// returns what the app says it received.
pub async fn post_raw_headers(base: &str) -> Value {
    let resp = http()
        .post(format!("{base}/raw-headers"))
        .header("x-signature", reqwest::header::HeaderValue::from_bytes(RAW_SIGNATURE).unwrap())
        .header("x-multi", "plain")
        .header("x-multi", reqwest::header::HeaderValue::from_bytes(b"\xfe").unwrap())
        .header("x-plain", "ok")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-latin1"].as_bytes(), LATIN1, "the app's header reaches the caller as the app sent it");
    resp.json().await.unwrap()
}

/// What `/early` read of each body, by id.
fn early_results() -> &'static std::sync::Mutex<std::collections::HashMap<String, i64>> {
    static RESULTS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, i64>>> =
        std::sync::OnceLock::new();
    RESULTS.get_or_init(Default::default)
}

/// Byte `i` of the download pattern.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

async fn app(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        p if p.starts_with("/echo") => {
            let status = query_param(&req, "status").and_then(|s| s.parse().ok()).unwrap_or(200u16);
            let method = req.method().to_string();
            let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                headers.insert(k.to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into()));
            }
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let json = json!({
                "method": method, "path": target, "headers": headers,
                "body": String::from_utf8_lossy(&body), "bodyLen": body.len(),
            });
            let mut resp = Response::new(full(serde_json::to_vec(&json).unwrap()));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            resp.headers_mut().insert("x-app", "echo".parse().unwrap());
            resp.headers_mut().append("set-cookie", "a=1".parse().unwrap());
            resp.headers_mut().append("set-cookie", "b=2".parse().unwrap());
            resp
        }
        "/raw-headers" => {
            use base64::Engine as _;
            let mut headers = serde_json::Map::new();
            for name in req.headers().keys() {
                let values = req.headers().get_all(name).iter();
                let values = values.map(|v| Value::String(base64::engine::general_purpose::STANDARD.encode(v)));
                headers.insert(name.to_string(), Value::Array(values.collect()));
            }
            let mut resp = Response::new(full(Value::Object(headers).to_string()));
            resp.headers_mut().insert("x-latin1", http::HeaderValue::from_bytes(LATIN1).unwrap());
            resp
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut n, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    for b in data.iter() {
                        sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
                    }
                    n += data.len() as u64;
                }
            }
            Response::new(full(json!({ "bytes": n, "sum": sum }).to_string()))
        }
        "/download" => {
            let n: u64 = query_param(&req, "n").and_then(|s| s.parse().ok()).unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let chunks = stream::unfold(0u64, move |off| async move {
                (off < n).then(|| {
                    let len = CHUNK.min(n - off);
                    let data: Vec<u8> = (off..off + len).map(pattern).collect();
                    (Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(data))), off + len)
                })
            });
            let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
            resp.headers_mut().insert("content-length", n.to_string().parse().unwrap());
            resp
        }
        // `n` zero bytes, cheaply: 256 KiB chunks of one buffer.
        "/zeros" => {
            let n: u64 = query_param(&req, "n").and_then(|s| s.parse().ok()).unwrap_or(0);
            let zeros = Bytes::from(vec![0u8; 256 * 1024]);
            let chunks = stream::unfold(0u64, move |off| {
                let zeros = zeros.clone();
                async move {
                    (off < n).then(|| {
                        let len = (zeros.len() as u64).min(n - off);
                        (Ok::<_, BoxError>(http_body::Frame::data(zeros.slice(..len as usize))), off + len)
                    })
                }
            });
            let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
            resp.headers_mut().insert("content-length", n.to_string().parse().unwrap());
            resp
        }
        "/broken" => {
            // Declares 1 MiB, sends 64 KiB, then fails: hyper cuts the connection
            // mid-response. (The pause lets the head and the first part go out.)
            let chunks = stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok(http_body::Frame::data(Bytes::from(vec![b'z'; 64 * 1024]))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Err(BoxError::from("the app broke off")), 2))
                    }
                    _ => None,
                }
            });
            let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
            resp.headers_mut().insert("content-length", (1024 * 1024).to_string().parse().unwrap());
            resp
        }
        "/sse" => {
            let events = stream::unfold(0u32, |i| async move {
                if i >= 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let data = Bytes::from(format!("data: event {i}\n\n"));
                Some((Ok::<_, BoxError>(http_body::Frame::data(data)), i + 1))
            });
            let mut resp = Response::new(StreamBody::new(events).boxed_unsync());
            resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
        // Answers at once, then reads the body after `hold` ms (holding it
        // unread till then) and notes its length, or -1 if it broke, for
        // `/early-result?id=`.
        "/early" => {
            let id = query_param(&req, "id").unwrap_or_default();
            let hold: u64 = query_param(&req, "hold").and_then(|s| s.parse().ok()).unwrap_or(0);
            let mut body = req.into_body();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(hold)).await;
                let mut n: i64 = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => n += frame.data_ref().map_or(0, |d| d.len() as i64),
                        Err(_) => {
                            n = -1;
                            break;
                        }
                    }
                }
                early_results().lock().unwrap().insert(id, n);
            });
            Response::new(full("early"))
        }
        "/early-result" => {
            let id = query_param(&req, "id").unwrap_or_default();
            match early_results().lock().unwrap().get(&id) {
                Some(n) => Response::new(full(n.to_string())),
                None => {
                    let mut resp = Response::new(full("not yet"));
                    *resp.status_mut() = StatusCode::NOT_FOUND;
                    resp
                }
            }
        }
        "/slow" => {
            let ms: u64 = query_param(&req, "ms").and_then(|s| s.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        _ => {
            let mut resp = Response::new(full("not found"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// Stdout lines of a spawned `hookway` process.
pub type CliLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Spawns a `hookway … --json` client command (stdout piped, killed on drop)
/// and waits up to 20 s for its first line, the `connected` event; returns the
/// process, its further stdout lines and that event.
pub async fn spawn_connected(mut cmd: tokio::process::Command) -> (tokio::process::Child, CliLines, Value) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "connected", "{line}");
    (child, lines, event)
}

/// Reads a `--json` client's events until one satisfies `pred` (at most
/// `within`; the client must keep running): that event.
pub async fn next_event(lines: &mut CliLines, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let read = async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the client keeps running");
            let event: Value = serde_json::from_str(&line).unwrap();
            if pred(&event) {
                return event;
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or_else(|_| panic!("no {what} within {within:?}"))
}

/// Spawns `hookway server …` (stdout piped, killed on drop) and reads its
/// banner up to the HTTP address it listens on; the rest of its stdout is
/// drained so the server never blocks writing it.
pub async fn spawn_server(mut cmd: tokio::process::Command) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the server prints its address");
            if line.contains("HTTP listen") {
                return line.split_whitespace().last().unwrap().parse().unwrap();
            }
        }
    };
    let addr = tokio::time::timeout(Duration::from_secs(20), banner).await.expect("the server started");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// A local port with nothing listening.
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A bare QUIC connection to the server's listener, trusting its certificate.
pub async fn raw_connection(server: &TestServer) -> quinn::Connection {
    let fp = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    let endpoint = quic::client_endpoint(server.quic, &tls::Trust::pinned(&fp).unwrap()).unwrap();
    endpoint.connect(server.quic, "localhost").unwrap().await.unwrap()
}

/// Connects as `id` with `token` and completes the handshake; the control stream's two halves.
pub async fn live_peer(server: &TestServer, id: &str, token: &str) -> (quinn::Connection, FrameWriter, FrameReader) {
    let conn = raw_connection(server).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let hello = ClientHello {
        tunnel_id: id.into(),
        auth_token: token.into(),
        protocol_version: hookway::wire::PROTOCOL_VERSION,
        client_version: "test".into(),
    };
    let (mut control_tx, mut control_rx) = (FrameWriter::new(send), FrameReader::new(recv));
    control_tx.send(&Frame::ClientHello(hello)).await.unwrap();
    assert!(matches!(control_rx.next().await.unwrap(), Some(Frame::ServerHello(_))));
    (conn, control_tx, control_rx)
}

/// Reads `stream` until the peer closes it (end of file or reset) or `within`
/// passes; returns what arrived and whether the peer closed.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Sends `request` as raw bytes on a new connection to `addr` and returns the
/// whole answer as text; the request should say `Connection: close`. Panics if
/// the server has not closed the connection within 10 s.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(closed, "the server kept the connection open; so far: {text}");
    text
}

/// Polls a tunnel's captured requests until there are `n` (the capture writer
/// batches for ~100 ms); newest first.
pub async fn wait_for_records(server: &TestServer, tunnel_id: &str, n: usize) -> Vec<Value> {
    let path = format!("/api/tunnels/{tunnel_id}/requests?limit=1000");
    for _ in 0..100 {
        let (status, body) = raw_api(server, reqwest::Method::GET, &path, Some(&bearer()), None).await;
        assert_eq!(status, 200, "{body}");
        let list = body["requests"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} records did not appear within 5 s");
}

/// Starts the library client over WebSocket and waits until it is live.
pub async fn ws_client(server: &TestServer, port: u16) -> (TestClient, String) {
    let created = server.api().create_tunnel("ws tunnel", None).await.unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let config = ClientConfig {
        ws_url: Some(created.ws_url.parse().unwrap()),
        ..ClientConfig::new(&server.url, &created.tunnel.id, &created.auth_token, port)
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
    let mut client = TestClient { events, shutdown, task, tunnel_url: String::new(), host_url: None };
    let (url, host) = client.wait_connected().await;
    assert_eq!(url, created.tunnel_url, "the client learns its public URL from the upgrade");
    (client.tunnel_url, client.host_url) = (url, host);
    (client, created.tunnel.id)
}

/// The client's next request log line (within 5 s).
pub async fn next_request_log(client: &mut TestClient) -> hookway::client::RequestLog {
    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.events.recv().await {
                Some(hookway::client::Event::Request(log)) => return log,
                Some(_) => {}
                None => panic!("the client ended without logging the request"),
            }
        }
    });
    logged.await.expect("the request is logged")
}
