//! Memory cost of idle tunnels: the real server binary with N connected, idle
//! tunnel clients (default 1,000), its resident memory read from /proc before
//! and after. Run: `cargo bench --bench idle` (`HOOKWAY_IDLE_TUNNELS` sets N).

use std::time::Duration;

use hookway::client::{self, ApiClient, ClientConfig, Event};
use tokio_util::sync::CancellationToken;

mod support;
use support::{API_KEY, spawn_server};

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let n: usize = std::env::var("HOOKWAY_IDLE_TUNNELS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut server = spawn_server().await;
        let pid = server.child.id().unwrap();
        let base = server.base.clone();
        let api = ApiClient::new(&base, Some(API_KEY.into()));
        let mut tunnels = Vec::with_capacity(n);
        for i in 0..n {
            tunnels.push(api.create_tunnel(&format!("idle-{i}"), None).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_mib(pid);

        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for t in &tunnels {
            // Port 9 is never called: the tunnels stay idle.
            let config = ClientConfig::new(&base, &t.tunnel.id, &t.auth_token, 9);
            let tx = tx.clone();
            tokio::spawn(client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
        }
        let mut connected = 0;
        while connected < n {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(Event::Connected { .. })) => connected += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        // Let keep-alives and heartbeats run for a while: steady idle state.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = rss_mib(pid);
        println!("idle tunnels: {connected}/{n} connected");
        println!("server RSS: {before:.1} MiB with {n} tunnels defined, {after:.1} MiB with {connected} connected");
        println!(
            "cost of the connections: {:.1} MiB in all, {:.1} KiB per idle tunnel",
            after - before,
            (after - before) * 1024.0 / connected.max(1) as f64
        );
        shutdown.cancel();
        let _ = server.child.start_kill();
    });
}
