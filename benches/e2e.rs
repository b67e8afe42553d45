//! End-to-end benchmark on loopback: the same local app reached directly and
//! through the tunnel, in the same run, so the figures are ratios, not absolutes.
//!
//! The server and the client are the real `hookway` binary in their own
//! processes; the local app and the load generator run here. Everything shares
//! the machine's cores, as it would on a developer's laptop.
//!
//! Run: `cargo bench --bench e2e` (`HOOKWAY_BENCH_SECS` sets seconds per
//! measurement, default 3; every loop is bounded in time and count).

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

mod support;
use support::{API_KEY, ServerProcess, spawn_server, wait_line};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

const MAX_REQUESTS: usize = 500_000;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The local app: `/hook` answers 200 with a small JSON body after reading the
/// request; `/sink` drains the body; `/source?n=N` sends N bytes.
async fn app(req: Request<hyper::body::Incoming>) -> Response<Body> {
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

async fn spawn_app() -> SocketAddr {
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

/// A tunnel client process serving one tunnel of the bench server.
struct Tunnel {
    _client: tokio::process::Child,
    url: String,
}

/// Creates a tunnel and connects the real client to it, over QUIC or (`ws`)
/// the WebSocket-JSON gateway.
async fn start_tunnel(server: &ServerProcess, app_port: u16, ws: bool) -> Tunnel {
    let base = server.base.clone();
    let api = hookway::client::ApiClient::new(&base, Some(API_KEY.into()));
    let created = api.create_tunnel("bench", None).await.unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &created.tunnel.id, &app_port.to_string(), "--json", "--server", &base])
        .args(["--token", &created.auth_token]);
    if ws {
        cmd.args(["--ws-url", &created.ws_url]);
    }
    let mut client = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap()).lines();
    let url = wait_line(&mut out, |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["tunnelUrl"].as_str().map(str::to_owned)
    })
    .await;
    // Drain the per-request log lines so the client never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Tunnel { _client: client, url }
}

fn http_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector)
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// `concurrency` workers POSTing 1 KiB to `url` for `secs`.
async fn load(url: &str, concurrency: usize, secs: f64) -> Stats {
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
                    assert!(resp.status().is_success(), "status {}", resp.status());
                    resp.into_body().collect().await.unwrap();
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

/// MiB/s moving `size`-byte bodies, `concurrency` at a time, for `secs` (at least one each).
async fn transfer(base: &str, upload: bool, size: usize, concurrency: usize, secs: f64) -> f64 {
    let client = http_client();
    let payload = Bytes::from(vec![b'y'; size]);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, payload, base) = (client.clone(), payload.clone(), base.to_owned());
            tokio::spawn(async move {
                let mut moved = 0usize;
                let mut count = 0;
                while count == 0 || (Instant::now() < deadline && count < 10_000) {
                    let req = if upload {
                        Request::post(format!("{base}/sink")).body(full(payload.clone())).unwrap()
                    } else {
                        Request::get(format!("{base}/source?n={size}")).body(full(Bytes::new())).unwrap()
                    };
                    let resp = client.request(req).await.expect("request");
                    let got = resp.into_body().collect().await.unwrap().to_bytes().len();
                    moved += if upload { size } else { got };
                    count += 1;
                }
                moved
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    total as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; any other filter argument is ignored.
    let secs: f64 = std::env::var("HOOKWAY_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    // The bench's own runtime (load generator + app) is fixed, so that
    // `TOKIO_WORKER_THREADS`, if set, only changes the hookway processes.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let app = spawn_app().await;
        let server = spawn_server().await;
        let tunnel = start_tunnel(&server, app.port(), false).await;
        let ws_tunnel = start_tunnel(&server, app.port(), true).await;
        let direct = format!("http://{app}");
        println!("hookway e2e benchmark: {secs} s per measurement, loopback, 1 KiB POST");
        println!("{:<12} {:>5} {:>12} {:>10} {:>10}", "path", "conc", "req/s", "p50 µs", "p99 µs");
        let levels: Vec<usize> = std::env::var("HOOKWAY_BENCH_CONCURRENCY")
            .ok()
            .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 16, 64]);
        for c in levels {
            let d = load(&format!("{direct}/hook"), c, secs).await;
            let t = load(&format!("{}/hook", tunnel.url), c, secs).await;
            let w = load(&format!("{}/hook", ws_tunnel.url), c, secs).await;
            for (label, s) in [("direct", &d), ("tunnel/quic", &t), ("tunnel/ws", &w)] {
                println!("{label:<12} {c:>5} {:>12.0} {:>10.0} {:>10.0}", s.rps, us(s.p50), us(s.p99));
            }
            for (label, s) in [("quic", &t), ("ws", &w)] {
                println!(
                    "  ratio c={c}: {label} reaches {:.1}% of direct req/s; adds {:.0} µs to p50, {:.0} µs to p99",
                    100.0 * s.rps / d.rps,
                    us(s.p50) - us(d.p50),
                    us(s.p99) - us(d.p99)
                );
            }
            println!("  ratio c={c}: ws reaches {:.1}% of quic req/s", 100.0 * w.rps / t.rps);
        }
        if std::env::var("HOOKWAY_BENCH_SKIP_BODIES").is_ok() {
            return;
        }
        println!("\n{:<30} {:>12} {:>12} {:>8}", "bodies", "direct MiB/s", "tunnel MiB/s", "ratio");
        for (label, upload, size, conc) in [
            ("1 MiB upload, c=4", true, 1 << 20, 4),
            ("1 MiB download, c=4", false, 1 << 20, 4),
            ("64 MiB upload, c=1", true, 64 << 20, 1),
            ("64 MiB download, c=1", false, 64 << 20, 1),
        ] {
            let d = transfer(&direct, upload, size, conc, secs).await;
            let t = transfer(&tunnel.url, upload, size, conc, secs).await;
            println!("{label:<30} {d:>12.0} {t:>12.0} {:>7.1}%", 100.0 * t / d);
        }
    });
}
