//! End-to-end benchmark on loopback: the same local app reached directly and
//! through the tunnel, in the same run, so the figures are ratios, not absolutes.
//!
//! The server and the client are the real `hookway` binary in their own
//! processes, and so is the local app (this binary again, serving on one
//! thread); the load generator runs here. Everything shares the machine's
//! cores, as it would on a developer's laptop. `direct` is the load generator
//! talking to that app process; `direct/inproc` is the same app served inside
//! the load generator's process, which skips the cross-process wakeups any real
//! app costs: shown for comparison, not used as the baseline.
//!
//! `tunnel/quic` captures every request for inspection, as a server does by
//! default; `quic/nocap` is the same tunnel on a server run with `--no-capture`.
//!
//! Run: `cargo bench --bench e2e` (`HOOKWAY_BENCH_SECS` sets seconds per
//! measurement, default 3; every loop is bounded in time and count).

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, BufReader};

mod support;
use support::{
    API_KEY, ServerProcess, full, hookway_bin, http_client, load, serve_app_if_asked, spawn_app, spawn_app_process,
    spawn_server, spawn_server_with, wait_line,
};

/// A tunnel client process serving one tunnel of the bench server.
struct Tunnel {
    _client: tokio::process::Child,
    url: String,
}

/// Creates a tunnel and connects the real client to it, over QUIC or (`ws`)
/// the WebSocket-JSON gateway.
async fn start_tunnel(server: &ServerProcess, app_port: u16, ws: bool) -> Tunnel {
    start_tunnel_with(&hookway_bin(), server, app_port, ws).await
}

/// [`start_tunnel`] with another client binary.
async fn start_tunnel_with(bin: &str, server: &ServerProcess, app_port: u16, ws: bool) -> Tunnel {
    let base = server.base.clone();
    let api = hookway::client::ApiClient::new(&base, Some(API_KEY.into()));
    let created = api.create_tunnel("bench", None).await.unwrap();
    let mut cmd = tokio::process::Command::new(bin);
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
                    let mut body = client.request(req).await.expect("request").into_body();
                    // Counted as it arrives, not collected: a load generator
                    // that copies what it downloads competes for the cores.
                    let mut got = 0;
                    while let Some(frame) = body.frame().await {
                        got += frame.unwrap().data_ref().map_or(0, Bytes::len);
                    }
                    if !upload {
                        assert_eq!(got, size, "download cut short");
                    }
                    moved += size;
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
    serve_app_if_asked();
    // `cargo bench` passes `--bench`; any other filter argument is ignored.
    let secs: f64 = std::env::var("HOOKWAY_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    // The bench's own runtime (load generator and the in-process app) is fixed,
    // so that `TOKIO_WORKER_THREADS`, if set, only changes the hookway
    // processes (the app process has its own single-threaded runtime).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let app_process = spawn_app_process().await;
        let app = app_process.addr;
        let inproc = format!("http://{}", spawn_app().await);
        let server = spawn_server().await;
        let tunnel = start_tunnel(&server, app.port(), false).await;
        let ws_tunnel = start_tunnel(&server, app.port(), true).await;
        // The same tunnel on a server that captures nothing: what inspection costs.
        let bare_server = spawn_server_with(&["--no-capture"]).await;
        let bare = start_tunnel(&bare_server, app.port(), false).await;
        // `HOOKWAY_BENCH_CLIENT_B=/path/to/hookway`: a `quic/B` row served by
        // another client binary through the same server, for A/B comparisons.
        let other = match std::env::var("HOOKWAY_BENCH_CLIENT_B") {
            Ok(bin) => Some(start_tunnel_with(&bin, &server, app.port(), false).await),
            Err(_) => None,
        };
        let direct = format!("http://{app}");
        println!("hookway e2e benchmark: {secs} s per measurement, loopback, 1 KiB POST");
        println!("{:<14} {:>5} {:>12} {:>10} {:>10}", "path", "conc", "req/s", "p50 µs", "p99 µs");
        let levels: Vec<usize> = std::env::var("HOOKWAY_BENCH_CONCURRENCY")
            .ok()
            .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 16, 64]);
        // `HOOKWAY_BENCH_ONLY=quic` (or direct, inproc, ws, nocap) measures only that row,
        // for profiling one path; the ratios are then meaningless and not printed.
        let only = std::env::var("HOOKWAY_BENCH_ONLY").ok();
        // `bodies` skips the request rows and measures only the bodies;
        // `nocap-bodies` only the bodies through the tunnel without capture,
        // `cap-bodies` only those through the tunnel with capture.
        let bodies_only = matches!(only.as_deref(), Some("bodies" | "nocap-bodies" | "cap-bodies"));
        let levels = if bodies_only { Vec::new() } else { levels };
        if let Some(row) = only.as_deref().filter(|_| !bodies_only) {
            let url = match row {
                "direct" => direct.clone(),
                "inproc" => inproc.clone(),
                "ws" => ws_tunnel.url.clone(),
                "nocap" => bare.url.clone(),
                _ => tunnel.url.clone(),
            };
            for c in levels {
                let s = load(&format!("{url}/hook"), c, secs).await;
                println!("{row:<14} {c:>5} {:>12.0} {:>10.0} {:>10.0}", s.rps, us(s.p50), us(s.p99));
            }
            return;
        }
        for c in levels {
            let d = load(&format!("{direct}/hook"), c, secs).await;
            let t = load(&format!("{}/hook", tunnel.url), c, secs).await;
            let w = load(&format!("{}/hook", ws_tunnel.url), c, secs).await;
            let n = load(&format!("{}/hook", bare.url), c, secs).await;
            let i = load(&format!("{inproc}/hook"), c, secs).await;
            for (label, s) in
                [("direct", &d), ("tunnel/quic", &t), ("tunnel/ws", &w), ("quic/nocap", &n), ("direct/inproc", &i)]
            {
                println!("{label:<14} {c:>5} {:>12.0} {:>10.0} {:>10.0}", s.rps, us(s.p50), us(s.p99));
            }
            if let Some(other) = &other {
                let b = load(&format!("{}/hook", other.url), c, secs).await;
                println!("{:<14} {c:>5} {:>12.0} {:>10.0} {:>10.0}", "quic/B", b.rps, us(b.p50), us(b.p99));
                println!("  ratio c={c}: quic reaches {:.1}% of quic/B req/s", 100.0 * t.rps / b.rps);
            }
            for (label, s) in [("quic", &t), ("ws", &w)] {
                println!(
                    "  ratio c={c}: {label} reaches {:.1}% of direct req/s; adds {:.0} µs to p50, {:.0} µs to p99",
                    100.0 * s.rps / d.rps,
                    us(s.p50) - us(d.p50),
                    us(s.p99) - us(d.p99)
                );
            }
            println!(
                "  ratio c={c}: against direct/inproc, quic reaches {:.1}% of its req/s and adds {:.0} µs to p50",
                100.0 * t.rps / i.rps,
                us(t.p50) - us(i.p50)
            );
            println!("  ratio c={c}: ws reaches {:.1}% of quic req/s", 100.0 * w.rps / t.rps);
            println!(
                "  ratio c={c}: with request capture, quic reaches {:.1}% of its req/s without (p50 {:+.0} µs)",
                100.0 * t.rps / n.rps,
                us(t.p50) - us(n.p50)
            );
        }
        if std::env::var("HOOKWAY_BENCH_SKIP_BODIES").is_ok() {
            return;
        }
        println!(
            "\n{:<30} {:>12} {:>12} {:>8} {:>12}",
            "bodies", "direct MiB/s", "tunnel MiB/s", "ratio", "nocap MiB/s"
        );
        for (label, upload, size, conc) in [
            ("1 MiB upload, c=4", true, 1 << 20, 4),
            ("1 MiB download, c=4", false, 1 << 20, 4),
            ("64 MiB upload, c=1", true, 64 << 20, 1),
            ("64 MiB download, c=1", false, 64 << 20, 1),
        ] {
            if only.as_deref() == Some("nocap-bodies") {
                let n = transfer(&bare.url, upload, size, conc, secs).await;
                println!("{label:<30} {:>12} {:>12} {:>8} {n:>12.0}", "-", "-", "-");
                continue;
            }
            if only.as_deref() == Some("cap-bodies") {
                let t = transfer(&tunnel.url, upload, size, conc, secs).await;
                println!("{label:<30} {:>12} {t:>12.0} {:>8} {:>12}", "-", "-", "-");
                continue;
            }
            let d = transfer(&direct, upload, size, conc, secs).await;
            let t = transfer(&tunnel.url, upload, size, conc, secs).await;
            let n = transfer(&bare.url, upload, size, conc, secs).await;
            println!("{label:<30} {d:>12.0} {t:>12.0} {:>7.1}% {n:>12.0}", 100.0 * t / d);
        }
    });
}
