//! Shared by the benchmarks: the real `hookway server` binary in its own process.
// Each bench uses a different part of this module.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

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

/// Starts `hookway server` on ephemeral ports and waits until it listens.
pub async fn spawn_server() -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"))
        .args(["server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
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
