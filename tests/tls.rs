//! TLS: the self-signed default is pinned automatically; a configured certificate
//! is used as given; a wrong pin never connects.

mod common;

use std::time::Duration;

use common::*;
use hookway::client::{self, ClientConfig, Event};
use hookway::server::TlsSource;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn self_signed_certificate_is_generated_once_and_kept() {
    let server = TestServer::start().await;
    let fp1 = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    let dir = server.stop().await;
    assert!(dir.path().join("tls/cert.pem").exists());
    let server = TestServer::start_in(dir, |_| {}).await;
    let fp2 = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    assert_eq!(fp1, fp2, "restarts keep the certificate, so pins stay valid");
}

async fn first_event(config: ClientConfig) -> Event {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    shutdown.cancel();
    let _ = task.await;
    event
}

#[tokio::test]
async fn configured_certificate_is_served_and_pins_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let fingerprint = hex::encode(Sha256::digest(generated.cert.der()));

    let server = TestServer::start_with(|c| c.tls = TlsSource::Files { cert, key }).await;
    let info = server.api().info().await.unwrap();
    assert_eq!(info.cert_fingerprint, None, "a real certificate is verified, not pinned");
    let app = spawn_app().await;
    let (id, token, _) = create_tunnel(&server, None).await;
    let config = |fp: Option<String>| ClientConfig {
        server: server.url.clone(),
        tunnel_id: id.clone(),
        token: token.clone(),
        local_host: "127.0.0.1".into(),
        local_port: app.port(),
        fingerprint: fp,
        quic_addr: None,
        ws_url: None,
        busy_poll: hookway::client::spin::DEFAULT_BUDGET,
    };

    // Not in the system roots: refused.
    match first_event(config(None)).await {
        Event::Reconnecting { reason, .. } => assert!(reason.contains("QUIC connection"), "{reason}"),
        other => panic!("must not connect: {other:?}"),
    }
    // A wrong pin: refused.
    match first_event(config(Some("00".repeat(32)))).await {
        Event::Reconnecting { .. } => {}
        other => panic!("must not connect: {other:?}"),
    }
    // The right pin (with colons, as people paste them): connected.
    let pretty =
        fingerprint.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    match first_event(config(Some(pretty))).await {
        Event::Connected { hello, .. } => assert_eq!(hello.tunnel_id, id),
        other => panic!("should connect: {other:?}"),
    }
}
