//! 100 MiB each way through the tunnel with memory bounded by the flow-control
//! windows. Its own test binary so the RSS it measures is only its own.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{StreamExt, stream};
use serde_json::Value;

const SIZE: u64 = 100 * 1024 * 1024;

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_up_and_down_with_bounded_memory() {
    let s = Setup::new().await;
    // Warm up allocator and pools with a small exchange first.
    assert_eq!(http().get(s.url("/echo")).send().await.unwrap().status(), 200);
    let before = peak_rss();

    // Upload: streamed from a generator, never held whole by the test either.
    const CHUNK: u64 = 256 * 1024;
    let chunks = stream::iter(0..SIZE / CHUNK).map(|c| {
        let data: Vec<u8> = (c * CHUNK..(c + 1) * CHUNK).map(pattern).collect();
        Ok::<_, std::io::Error>(Bytes::from(data))
    });
    let resp = http()
        .post(s.url("/upload"))
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    let want_sum = (0..SIZE).fold(0u64, |acc, i| acc.wrapping_mul(31).wrapping_add(u64::from(pattern(i))));
    assert_eq!(got["bytes"], SIZE);
    assert_eq!(got["sum"], want_sum);

    // Download: checked byte by byte as it streams.
    let resp = http().get(s.url(&format!("/download?n={SIZE}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(SIZE));
    let mut body = resp.bytes_stream();
    let mut offset = 0u64;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next()).await.unwrap() {
        let chunk = chunk.unwrap();
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, pattern(offset + i as u64), "byte {}", offset + i as u64);
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, SIZE);

    let grown = peak_rss().saturating_sub(before);
    // Server, client, local app and caller all live in this process; buffering a
    // whole body anywhere would add 100 MiB or more.
    eprintln!("peak RSS grew by {} MiB over 200 MiB of transfers", grown / (1024 * 1024));
    assert!(grown < 80 * 1024 * 1024, "peak RSS grew by {} MiB", grown / (1024 * 1024));
}
