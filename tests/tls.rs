//! TLS: the self-signed default is pinned automatically; a configured certificate
//! is used as given; a wrong pin never connects, and a certificate the client
//! cannot trust stops it at once, saying why in plain words.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hookway::client::{self, ClientConfig, ClientError, Event};
use hookway::quic::tls::CertRefused;
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

/// The client's first event, or how it ended if it ended first (within 20 s).
async fn first_event(config: ClientConfig) -> Result<Event, ClientError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client::run(config, move |e| drop(tx.send(e)), shutdown.clone()));
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("an event or an end in 20 s");
    shutdown.cancel();
    let ended = task.await.unwrap();
    event.ok_or_else(|| ended.expect_err("a client that ended without an event failed"))
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
        fingerprint: fp,
        ..ClientConfig::new(&server.url, &id, &token, app.port())
    };

    // Not in the system roots: refused for good, on the first attempt.
    match first_event(config(None)).await {
        Err(ClientError::Certificate(CertRefused::Untrusted { reason, presented, dated })) => {
            assert_eq!((reason.as_str(), presented.as_str()), ("unknown issuer", fingerprint.as_str()));
            assert!(!dated, "an unknown issuer is not a matter of dates");
        }
        other => panic!("must stop, untrusted: {other:?}"),
    }
    // A wrong pin: refused for good.
    match first_event(config(Some("00".repeat(32)))).await {
        Err(ClientError::Certificate(CertRefused::PinMismatch { pinned, presented })) => {
            assert_eq!((pinned, presented), ("00".repeat(32), fingerprint.clone()));
        }
        other => panic!("must stop, mismatched: {other:?}"),
    }
    // The right pin (with colons, as people paste them): connected.
    let pretty =
        fingerprint.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    match first_event(config(Some(pretty))).await {
        Ok(Event::Connected { hello, .. }) => assert_eq!(hello.tunnel_id, id),
        other => panic!("should connect: {other:?}"),
    }
}

/// A certificate and its key in PEM files, and its SHA-256 (of the DER), as hex.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

impl Pem {
    fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Self {
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Self { cert: cert_path, key: key_path, fingerprint: hex::encode(Sha256::digest(cert.der())) }
    }

    fn source(&self) -> TlsSource {
        TlsSource::Files { cert: self.cert.clone(), key: self.key.clone() }
    }
}

/// A private CA (`ca.pem`, a CA certificate, as `openssl req -x509` makes by
/// default), and a server certificate for 127.0.0.1 it signed (`server.pem`).
fn private_ca(dir: &Path) -> (Pem, Pem) {
    private_ca_with(dir, |_| {})
}

/// [`private_ca`], with the server certificate's parameters changed by `tweak`.
fn private_ca_with(dir: &Path, tweak: impl FnOnce(&mut rcgen::CertificateParams)) -> (Pem, Pem) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "hookway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Pem::write(dir, "ca", &ca_cert, &ca_key);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    tweak(&mut server_params);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    (ca, Pem::write(dir, "server", &server_cert, &server_key))
}

/// Stops `server` and starts it again on the same addresses and data, with
/// the certificate `tls`.
async fn restart_with(server: TestServer, tls: TlsSource) -> TestServer {
    let (http_addr, quic_addr) = (server.http, server.quic);
    let data = server.stop().await;
    TestServer::start_in(data, |c| {
        (c.http_addr, c.quic_addr) = (http_addr, quic_addr);
        c.tls = tls;
    })
    .await
}

/// Makes a certificate valid only in 2020, long expired.
fn expired(p: &mut rcgen::CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
}

/// `hookway tunnels connect` for a new tunnel of `server`, with `args` and
/// `env` and no trust settings of the test's environment.
async fn connect_cli(server: &TestServer, args: &[&str], env: &[(&str, &Path)]) -> tokio::process::Command {
    let (id, token, _) = create_tunnel(server, None).await;
    let port = closed_port().await.to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
    cmd.args(["tunnels", "connect", &id, &port, "--server", &server.url, "--token", &token])
        .args(args)
        .env_remove("HOOKWAY_API_KEY")
        .env_remove("HOOKWAY_FINGERPRINT")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    cmd
}

/// Runs a client that must refuse the server's certificate: it exits 1 on the
/// first attempt (a client still retrying after 20 s fails the test) with one
/// line on stderr, which is returned.
async fn refusal(mut cmd: tokio::process::Command) -> String {
    let run = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let out = tokio::time::timeout(Duration::from_secs(20), run).await.expect("the client gave up at once").unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no retries: {err}");
    err
}

/// The two ways to trust a private CA work (`SSL_CERT_FILE`, a pin of the
/// server's certificate); without either, the client stops at once and says
/// what to do, in words rather than rustls's debug text.
#[tokio::test]
async fn a_private_ca_is_trusted_through_ssl_cert_file_or_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = private_ca(dir.path());
    let server = TestServer::start_with(|c| c.tls = leaf.source()).await;

    let err = refusal(connect_cli(&server, &[], &[]).await).await;
    assert!(err.starts_with("Error: the server's certificate is not trusted (unknown issuer): "), "{err}");
    assert!(err.contains("SSL_CERT_FILE") && err.contains("--fingerprint"), "{err}");
    assert!(err.contains(&leaf.fingerprint) && !err.contains("UnknownIssuer"), "{err}");

    let trusted = connect_cli(&server, &["--json"], &[("SSL_CERT_FILE", &ca.cert)]).await;
    let (_client, _, live) = spawn_connected(trusted).await;
    assert_eq!(live["event"], "connected");
    let pinned = connect_cli(&server, &["--json", "--fingerprint", &leaf.fingerprint], &[]).await;
    let (_pinned, _, _) = spawn_connected(pinned).await;

    let wrong = "ab".repeat(32);
    let err = refusal(connect_cli(&server, &["--fingerprint", &wrong], &[]).await).await;
    let says = format!("does not match the pinned fingerprint {wrong} (it presents {})", leaf.fingerprint);
    assert!(err.starts_with("Error: the server's certificate ") && err.contains(&says), "{err}");
}

/// A CA's own certificate served as the server's (what `openssl req -x509`
/// makes) cannot verify, even with the CA trusted: said as such; a pin of it
/// still works.
#[tokio::test]
async fn a_ca_certificate_served_as_the_servers_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = private_ca(dir.path());
    let server = TestServer::start_with(|c| c.tls = ca.source()).await;
    let err = refusal(connect_cli(&server, &[], &[("SSL_CERT_FILE", &ca.cert)]).await).await;
    assert!(err.contains("not trusted (it is a CA certificate, not a server certificate"), "{err}");
    assert!(!err.contains("CaUsedAsEndEntity"), "{err}");
    let pinned = connect_cli(&server, &["--json", "--fingerprint", &ca.fingerprint], &[]).await;
    let (_pinned, _, _) = spawn_connected(pinned).await;
}

/// The default self-signed certificate with a pin that is not its own: a
/// possible interception, so no retry.
#[tokio::test]
async fn a_wrong_pin_of_the_self_signed_certificate_stops_the_client() {
    let server = TestServer::start().await;
    let announced = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    let wrong = "cd".repeat(32);
    let err = refusal(connect_cli(&server, &["--fingerprint", &wrong], &[]).await).await;
    assert!(err.contains(&format!("the pinned fingerprint {wrong} (it presents {announced})")), "{err}");
    assert!(!err.contains("ApplicationVerificationFailure"), "{err}");
}

/// A server that comes back with another certificate than the one pinned
/// stops a client that was serving: reconnecting would meet the same
/// certificate, and the change may be an interception.
#[tokio::test]
async fn a_new_certificate_after_a_restart_stops_a_reconnecting_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = private_ca(dir.path());
    let server = TestServer::start_with(|c| c.tls = first.source()).await;
    let mut cmd = connect_cli(&server, &["--json", "--fingerprint", &first.fingerprint], &[]).await;
    cmd.stderr(Stdio::null());
    let (mut child, mut lines, _) = spawn_connected(cmd).await;

    let renewed = tempfile::tempdir().unwrap();
    let (_, second) = private_ca(renewed.path());
    let _server = restart_with(server, second.source()).await;
    let reason = ended_reason(&mut child, &mut lines).await;
    let says = format!("the pinned fingerprint {} (it presents {})", first.fingerprint, second.fingerprint);
    assert!(reason.contains(&says), "{reason}");
}

/// A certificate refused only for its dates (a renewal that failed) stops a
/// client on its first connection, but one that was serving keeps trying,
/// saying why, and comes back once the server's certificate is valid again.
#[tokio::test]
async fn an_expired_certificate_after_a_restart_is_retried_until_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, valid) = private_ca(dir.path());
    let lapsed_dir = tempfile::tempdir().unwrap();
    let (_, lapsed) = private_ca_with(lapsed_dir.path(), expired);
    // The lapsed certificate is signed by another CA: trust both.
    let bundle = dir.path().join("bundle.pem");
    let lapsed_ca = std::fs::read_to_string(lapsed_dir.path().join("ca.pem")).unwrap();
    std::fs::write(&bundle, std::fs::read_to_string(&ca.cert).unwrap() + &lapsed_ca).unwrap();

    let server = TestServer::start_with(|c| c.tls = valid.source()).await;
    let mut cmd = connect_cli(&server, &["--json"], &[("SSL_CERT_FILE", &bundle)]).await;
    cmd.stderr(Stdio::null());
    let (mut child, mut lines, _) = spawn_connected(cmd).await;

    let server = restart_with(server, lapsed.source()).await;
    let expired_retry = |e: &serde_json::Value| {
        e["event"] == "reconnecting" && e["reason"].as_str().is_some_and(|r| r.contains("expired"))
    };
    next_event(&mut lines, Duration::from_secs(30), "retry that says 'expired'", expired_retry).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");

    let _server = restart_with(server, valid.source()).await;
    let back = |e: &serde_json::Value| e["event"] == "reconnected";
    next_event(&mut lines, Duration::from_secs(30), "reconnection once the certificate is valid", back).await;
}

/// On a first connection the same expired certificate stops the client: it
/// never served, so nothing says waiting will help.
#[tokio::test]
async fn an_expired_certificate_on_the_first_connection_stops_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, lapsed) = private_ca_with(dir.path(), expired);
    let server = TestServer::start_with(|c| c.tls = lapsed.source()).await;
    let err = refusal(connect_cli(&server, &[], &[("SSL_CERT_FILE", &ca.cert)]).await).await;
    assert!(err.contains("not trusted (expired"), "{err}");
}

/// Issue: a client that learned the server's fingerprint from the API (no
/// `--fingerprint`) learned it again at each reconnection, so a server that
/// came back announcing another certificate (or someone in the middle
/// answering for it) was trusted. The first fingerprint now holds for the run.
#[tokio::test]
async fn a_fingerprint_learned_from_the_api_holds_for_the_whole_run() {
    let server = TestServer::start().await;
    let first = server.api().info().await.unwrap().cert_fingerprint.expect("a self-signed server announces one");
    let mut cmd = connect_cli(&server, &["--json"], &[]).await;
    cmd.stderr(Stdio::null());
    let (mut child, mut lines, _) = spawn_connected(cmd).await;

    // The same server and data, but a new certificate: as after a lost `tls/`.
    let (http_addr, quic_addr) = (server.http, server.quic);
    let data = server.stop().await;
    for file in ["cert.pem", "key.pem"] {
        std::fs::remove_file(data.path().join("tls").join(file)).unwrap();
    }
    let server = TestServer::start_in(data, |c| (c.http_addr, c.quic_addr) = (http_addr, quic_addr)).await;
    let now = server.api().info().await.unwrap().cert_fingerprint.unwrap();
    assert_ne!(now, first);

    let reason = ended_reason(&mut child, &mut lines).await;
    assert!(
        reason.contains(&format!("another certificate than when this client started (fingerprint {now}, was {first})")),
        "{reason}"
    );
}

/// The `ended` event's reason, once the client has exited with code 1 (within 30 s).
async fn ended_reason(
    child: &mut tokio::process::Child,
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("the client stops").unwrap();
    assert_eq!(status.code(), Some(1));
    let mut ended = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "ended" {
            ended = event["reason"].as_str().map(str::to_owned);
        }
    }
    ended.expect("an `ended` event")
}

/// A client whose first connection verified the server's certificate against
/// the (here: private CA's) roots stops when the server comes back announcing
/// a self-signed one: someone in the middle answering the API could otherwise
/// have it pin theirs.
#[tokio::test]
async fn a_switch_from_a_verified_certificate_to_a_self_signed_one_stops_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, verified) = private_ca(dir.path());
    let server = TestServer::start_with(|c| c.tls = verified.source()).await;
    let mut cmd = connect_cli(&server, &["--json"], &[("SSL_CERT_FILE", &ca.cert)]).await;
    cmd.stderr(Stdio::null());
    let (mut child, mut lines, _) = spawn_connected(cmd).await;
    let _server = restart_with(server, TlsSource::SelfSigned).await;
    let reason = ended_reason(&mut child, &mut lines).await;
    assert!(reason.contains("now announces a self-signed certificate"), "{reason}");
}

/// The other way round is followed: a certificate the roots verify cannot be
/// presented by someone in the middle.
#[tokio::test]
async fn a_switch_from_a_self_signed_certificate_to_a_verified_one_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, verified) = private_ca(dir.path());
    let server = TestServer::start().await;
    let mut cmd = connect_cli(&server, &["--json"], &[("SSL_CERT_FILE", &ca.cert)]).await;
    cmd.stderr(Stdio::null());
    let (mut child, mut lines, _) = spawn_connected(cmd).await;
    let _server = restart_with(server, verified.source()).await;
    let back = |e: &serde_json::Value| e["event"] == "reconnected";
    next_event(&mut lines, Duration::from_secs(30), "reconnection with the verified certificate", back).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");
}

/// Review: with no pin, a client verified the server's certificate for the
/// QUIC host the API announced, so whoever answered the API could send it to
/// a host of theirs with a valid certificate for that host. The certificate
/// must now be issued for the host of the server's URL.
#[tokio::test]
async fn a_verified_certificate_must_be_for_the_servers_own_host() {
    let dir = tempfile::tempdir().unwrap();
    // A certificate for `localhost` only, announced at `localhost` while the
    // client was given 127.0.0.1.
    let (ca, elsewhere) = private_ca_with(dir.path(), |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("localhost".try_into().unwrap())];
    });
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = TestServer::start_with(|c| {
        c.tls = elsewhere.source();
        c.quic_addr = format!("127.0.0.1:{port}").parse().unwrap();
        c.quic_public_addr = Some(format!("localhost:{port}"));
    })
    .await;
    let err = refusal(connect_cli(&server, &[], &[("SSL_CERT_FILE", &ca.cert)]).await).await;
    assert!(err.contains("not issued for 127.0.0.1"), "{err}");
}

/// An `https://` server URL whose certificate a private CA issued (a TLS
/// terminator in front of the server) says how to trust that CA, as QUIC's
/// refusal does, rather than rustls's `UnknownIssuer` alone.
#[tokio::test]
async fn an_https_api_behind_a_private_ca_says_how_to_trust_it() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = private_ca(dir.path());
    hookway::quic::tls::install_default_provider();
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&leaf.cert).unwrap().map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap(),
    );
    // A TLS terminator that completes handshakes and then says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let _ = tls.complete_io(&mut stream);
        }
    });
    let run = |extra: Option<&Path>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookway"));
        cmd.args(["tunnels", "list", "--server", &format!("https://127.0.0.1:{}", addr.port()), "--api-key", "k"]);
        if let Some(ca) = extra {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output()
    };
    let out = tokio::time::timeout(Duration::from_secs(20), run(None)).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("private CA") && err.contains("SSL_CERT_FILE"), "{err}");
    // Trusted that way, the handshake passes (and the silent terminator is the trouble).
    let out = tokio::time::timeout(Duration::from_secs(40), run(Some(&ca.cert))).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("private CA"), "{err}");
}
