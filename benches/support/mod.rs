//! Shared by the benchmarks: the real `hookway server` binary in its own process.
// Each bench uses a different part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The API key the benchmark servers accept.
pub const API_KEY: &str = "hwk_bench_key";

/// A server process with its data dir; killed on drop.
pub struct ServerProcess {
    /// The child process.
    pub child: tokio::process::Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Reads lines from a child's stdout until `pick` finds what it wants.
pub async fn wait_line<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    pick: impl Fn(&str) -> Option<String>,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("child answered in time")
            .unwrap()
            .expect("child still running");
        if let Some(found) = pick(&line) {
            return found;
        }
    }
}

/// The `hookway` binary the benchmarks run as server and client: the one
/// cargo built, or `HOOKWAY_BENCH_BIN`, so that two builds (another profile,
/// another commit) can be compared with the same load generator and app.
pub fn hookway_bin() -> String {
    std::env::var("HOOKWAY_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookway").to_owned())
}

/// Starts `hookway server` on ephemeral ports and waits until it listens.
pub async fn spawn_server() -> ServerProcess {
    spawn_server_with(&[]).await
}

/// [`spawn_server`] with extra command-line flags.
pub async fn spawn_server_with(extra: &[&str]) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(hookway_bin())
        .args(["server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("HOOKWAY_API_KEY", API_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let http = wait_line(&mut out, |l| l.trim().strip_prefix("HTTP listen:").map(|a| a.trim().to_owned())).await;
    // Keep draining so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    ServerProcess { child, base: format!("http://{http}"), _dir: dir }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub const MAX_REQUESTS: usize = 500_000;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The local app: `/hook` answers 200 with a small JSON body after reading the
/// request; `/sink` drains the body; `/source?n=N` sends N bytes.
pub async fn app(req: Request<hyper::body::Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/source" => {
            let n: usize =
                req.uri().query().and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
            let chunks = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    (left > 0).then(|| {
                        let len = left.min(chunk.len());
                        (Ok::<_, BoxError>(http_body::Frame::data(chunk.slice(..len))), left - len)
                    })
                }
            });
            let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
            resp.headers_mut().insert("content-length", n.into());
            resp
        }
        _ => {
            let mut body = req.into_body();
            while let Some(Ok(_)) = body.frame().await {}
            let mut resp = Response::new(full(&b"{\"received\":true}"[..]));
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            resp
        }
    }
}

pub async fn spawn_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(app(req).await) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The local app in a process of its own, as a developer's app is: this bench
/// binary started again with `HOOKWAY_BENCH_APP=1` (see [`serve_app_if_asked`]).
/// Killed on drop; it also exits when its stdin closes, should this process die.
pub struct AppProcess {
    _child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

pub async fn spawn_app_process() -> AppProcess {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("HOOKWAY_BENCH_APP", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = wait_line(&mut out, |l| l.strip_prefix("APP listen: ").map(str::to_owned)).await;
    AppProcess { _child: child, addr: addr.parse().unwrap() }
}

/// In a process started by [`spawn_app_process`]: serves the app on one thread
/// (as most development servers do) until stdin closes, and never returns.
/// Elsewhere: returns at once.
pub fn serve_app_if_asked() {
    if std::env::var_os("HOOKWAY_BENCH_APP").is_none() {
        return;
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr = spawn_app().await;
        println!("APP listen: {addr}");
        std::future::pending::<()>().await;
    });
}

pub fn http_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector)
}

pub struct Stats {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// `concurrency` workers POSTing 1 KiB to `url` for `secs`.
pub async fn load(url: &str, concurrency: usize, secs: f64) -> Stats {
    let client = http_client();
    let body = Bytes::from(vec![b'a'; 1024]);
    // Warm the pool.
    for _ in 0..concurrency.min(8) {
        let req = Request::post(url).body(full(body.clone())).unwrap();
        let _ = client.request(req).await.map(|r| r.into_body().collect());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let per_worker = MAX_REQUESTS / concurrency;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, body, url) = (client.clone(), body.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                while Instant::now() < deadline && lat.len() < per_worker {
                    let t = Instant::now();
                    let req = Request::post(url.as_str())
                        .header("content-type", "application/json")
                        .header("x-github-event", "push")
                        .body(full(body.clone()))
                        .unwrap();
                    let resp = client.request(req).await.expect("request");
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert!(status.is_success(), "status {status}: {}", String::from_utf8_lossy(&body));
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Stats { rps: all.len() as f64 / elapsed, p50: pct(0.50), p99: pct(0.99) }
}
