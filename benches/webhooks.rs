//! Status webhooks must never slow a tunnel down. Two servers run side by side
//! in the same run: one with no webhooks, one with 10 webhooks whose receivers
//! accept connections and never answer. Against each: connect/disconnect
//! latency of a real tunnel client (each connect and disconnect fires events
//! for all 10 webhooks) and forwarding requests/s. Measurements alternate
//! between the two servers so drift on a noisy machine hits both alike.
//!
//! Run: `cargo bench --bench webhooks` (`HOOKWAY_BENCH_SECS` seconds per load
//! measurement, default 3; `HOOKWAY_BENCH_CYCLES` connect/disconnect cycles per
//! round, default 30). Every loop is bounded in count and time.

use std::time::{Duration, Instant};

use hookway::client::{self, ApiClient, ClientConfig, Event};
use tokio_util::sync::CancellationToken;

mod support;
use support::{API_KEY, ServerProcess, load, spawn_app, spawn_server_with};

/// A receiver that accepts connections and reads, but never answers.
async fn hanging_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream); // kept open, never written to
            if held.len() > 10_000 {
                held.remove(0);
            }
        }
    });
    format!("http://{addr}/hook")
}

fn config(base: &str, id: &str, token: &str, port: u16) -> ClientConfig {
    ClientConfig::new(base, id, token, port)
}

/// Connects and disconnects a tunnel `cycles` times; connect and disconnect latencies.
async fn cycle(server: &ServerProcess, app_port: u16, cycles: usize) -> (Vec<Duration>, Vec<Duration>) {
    let api = ApiClient::new(&server.base, Some(API_KEY.into()));
    let t = api.create_tunnel("cycling", None).await.unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let cfg = config(&server.base, &t.tunnel.id, &t.auth_token, app_port);
        let task = tokio::spawn(client::run(cfg, move |e| drop(tx.send(e)), shutdown.clone()));
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Event::Connected { .. })) => break,
                Ok(Some(_)) => {}
                _ => panic!("tunnel did not connect within 10 s"),
            }
        }
        up.push(started.elapsed());
        // Disconnected = the server no longer routes to it (503 at the edge).
        let stopped = Instant::now();
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        let url = format!("{}/t/{}/hook", server.base, t.tunnel.subdomain);
        let http = reqwest::Client::new();
        while http.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 503 {
            assert!(stopped.elapsed() < Duration::from_secs(10), "tunnel still routed 10 s after disconnect");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        down.push(stopped.elapsed());
    }
    (up, down)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let secs: f64 = std::env::var("HOOKWAY_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let cycles: usize = std::env::var("HOOKWAY_BENCH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    hookway::quic::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let app = spawn_app().await;
        let flags = ["--allow-private-webhooks", "--webhook-timeout", "30"];
        let plain = spawn_server_with(&flags).await;
        let hooked = spawn_server_with(&flags).await;
        let api = ApiClient::new(&hooked.base, Some(API_KEY.into()));
        for i in 0..10 {
            let url = hanging_receiver().await;
            let body = serde_json::json!({ "name": format!("hang-{i}"), "url": url,
                "events": ["tunnel.connected", "tunnel.disconnected", "token.connected", "token.disconnected"] });
            api.call(reqwest::Method::POST, "/api/webhooks", Some(&body)).await.unwrap();
        }
        // A long-lived tunnel on each server for the forwarding load.
        let mut loaded = Vec::new();
        let stop = CancellationToken::new();
        for server in [&plain, &hooked] {
            let t = ApiClient::new(&server.base, Some(API_KEY.into())).create_tunnel("load", None).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let cfg = config(&server.base, &t.tunnel.id, &t.auth_token, app.port());
            tokio::spawn(client::run(cfg, move |e| drop(tx.send(e)), stop.clone()));
            while !matches!(rx.recv().await, Some(Event::Connected { .. })) {}
            loaded.push(format!("{}/hook", t.tunnel_url));
        }

        println!("webhooks bench: 10 hanging receivers vs none; {cycles} connect/disconnect cycles and {secs} s of c=16 load per round");
        let (mut results_plain, mut results_hooked) = ((vec![], vec![], vec![]), (vec![], vec![], vec![]));
        for round in 0..2 {
            for (server, url, out) in
                [(&plain, &loaded[0], &mut results_plain), (&hooked, &loaded[1], &mut results_hooked)]
            {
                let (up, down) = cycle(server, app.port(), cycles).await;
                let stats = load(url, 16, secs).await;
                out.0.extend(up);
                out.1.extend(down);
                out.2.push(stats.rps);
            }
            println!("  round {} done", round + 1);
        }
        println!("{:<22} {:>14} {:>14} {:>16} {:>16} {:>10}", "server", "connect p50 ms", "connect p99 ms", "disconnect p50 ms", "disconnect p99 ms", "req/s c=16");
        let mut rows = Vec::new();
        for (label, r) in [("no webhooks", &mut results_plain), ("10 hanging webhooks", &mut results_hooked)] {
            let rps = r.2.iter().sum::<f64>() / r.2.len() as f64;
            let row = (pct(&mut r.0, 0.5), pct(&mut r.0, 0.99), pct(&mut r.1, 0.5), pct(&mut r.1, 0.99), rps);
            println!("{label:<22} {:>14.2} {:>14.2} {:>16.2} {:>16.2} {:>10.0}", row.0, row.1, row.2, row.3, row.4);
            rows.push(row);
        }
        let (a, b) = (rows[0], rows[1]);
        println!(
            "ratios (hanging / none): connect p50 {:.2}, disconnect p50 {:.2}, req/s {:.2}",
            b.0 / a.0,
            b.2 / a.2,
            b.4 / a.4
        );
        stop.cancel();
    });
}
