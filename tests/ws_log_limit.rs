//! What a WebSocket-JSON client can make the server log: one client sending
//! malformed messages as fast as it can must not write the log without bound
//! (the first is logged, the rest counted), and what a client sent is never
//! logged or echoed at full length. Its own binary: it installs the global
//! tracing subscriber and reads what the server logged.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Everything the server logged, shared with the subscriber.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    /// The lines that mention `needle`, and their total length.
    fn lines_with(&self, needle: &str) -> (usize, usize) {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).fold((0, 0), |(n, len), l| (n + 1, len + l.len()))
    }
}

#[tokio::test]
async fn a_flood_of_malformed_messages_is_logged_once_not_per_message() {
    const N: usize = 2000;
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt().with_env_filter("hookway=info").with_writer(move || writer.clone()).init();

    let server = TestServer::start().await;
    let t = server.api().create_tunnel("log flood", None).await.unwrap();
    let (ws, _) = connect_async(&t.ws_url).await.expect("upgrade");
    let status = format!("/api/tunnels/{}/status", t.tunnel.id);
    while server.api().call(reqwest::Method::GET, &status, None).await.unwrap()["liveStatus"]["connected"] != true {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lines_before, bytes_before) = log.lines_with(&t.tunnel.id);
    let (mut tx, mut rx) = ws.split();

    // A client that reads every reply (so nothing else drops it) and sends `{` N times.
    let reader = tokio::spawn(async move {
        let mut errors = Vec::new();
        while errors.len() < N + 2 {
            match rx.next().await {
                Some(Ok(Message::Text(text))) => errors.push(serde_json::from_str::<Value>(&text).unwrap()),
                Some(Ok(_)) => {}
                other => panic!("socket ended after {} replies: {other:?}", errors.len()),
            }
        }
        errors
    });
    for _ in 0..N {
        tx.feed(Message::text("{")).await.unwrap();
    }
    // And one whose `type` is 1 MB long, and a response whose id is.
    let huge = "x".repeat(1 << 20);
    tx.feed(Message::text(format!(r#"{{"type":"{huge}"}}"#))).await.unwrap();
    tx.feed(Message::text(format!(r#"{{"type":"response","id":"{huge}","status":200}}"#))).await.unwrap();
    tx.flush().await.unwrap();
    let replies = timeout(Duration::from_secs(20), reader).await.expect("all replies in time").unwrap();

    // Every message still gets its error reply, a short one.
    assert!(replies.iter().all(|r| r["type"] == "error"), "{:?}", &replies[..2]);
    let longest = replies.iter().map(|r| r.to_string().len()).max().unwrap();
    assert!(longest < 1024, "an error reply of {longest} bytes echoes what the client sent");

    let (lines, bytes) = log.lines_with(&t.tunnel.id);
    let (lines, bytes) = (lines - lines_before, bytes - bytes_before);
    assert!(lines <= 2, "{lines} log lines for one client's {N} malformed messages");
    assert!(bytes < 4096, "{bytes} bytes logged for one client's malformed messages");
    // The session itself is fine.
    let st = server.api().call(reqwest::Method::GET, &status, None).await.unwrap();
    assert_eq!(st["liveStatus"]["connected"], true);
}
