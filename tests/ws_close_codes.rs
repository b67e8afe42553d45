//! How the WebSocket-JSON gateway answers a tunnel client's close frame (RFC
//! 6455 §5.5.1, §7.4): a valid code is echoed; a code no endpoint may send, a
//! one-byte payload or another broken frame fails the connection with 1002,
//! text that is not UTF-8 (a close reason too) with 1007. Raw bytes on
//! loopback, since a WebSocket library will not send an invalid frame.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait for the server.
const WAIT: Duration = Duration::from_secs(5);

/// Opens a WebSocket to the gateway as the tunnel's client, by hand: the
/// socket, past the server's 101.
async fn raw_ws(server: &TestServer) -> TcpStream {
    let created = server.api().create_tunnel("close codes", None).await.expect("create tunnel");
    let path = created.ws_url.split_once(&server.http.to_string()).expect("wsUrl names the server").1.to_owned();
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.http
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8()).await.expect("an answer in time").unwrap();
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    stream
}

/// A masked close frame (clients must mask) carrying `payload` as is.
fn close_frame(payload: &[u8]) -> Vec<u8> {
    frame(0x8, payload, true)
}

/// A final frame of opcode `op` carrying `payload` (at most 125 bytes).
fn frame(op: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() <= 125, "the payload fits in the first length");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | op, payload.len() as u8];
    if masked {
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
    }
    frame.extend(payload.iter().enumerate().map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }));
    frame
}

/// A close payload: `code` then `reason`.
fn payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Sends a close frame with `payload` as the tunnel's client and reads until
/// the server closes the socket: the payload of the server's close frame, if
/// it sent one.
async fn close_with(server: &TestServer, payload: &[u8]) -> Option<Vec<u8>> {
    answer_to(server, &close_frame(payload)).await
}

/// Sends `frame` as the tunnel's client and reads until the server closes the
/// socket: the payload of the server's close frame, if it sent one.
async fn answer_to(server: &TestServer, frame: &[u8]) -> Option<Vec<u8>> {
    let mut ws = raw_ws(server).await;
    ws.write_all(frame).await.unwrap();
    let (got, closed) = read_until_closed(&mut ws, WAIT).await;
    assert!(closed, "the server closes the socket");
    first_close(&got)
}

/// The payload of the first close frame in `bytes` (server frames, unmasked),
/// skipping other frames.
fn first_close(mut bytes: &[u8]) -> Option<Vec<u8>> {
    while bytes.len() >= 2 {
        let (op, len) = (bytes[0] & 0x0f, usize::from(bytes[1] & 0x7f));
        let (header, len) = match len {
            126 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
            127 => (10, usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap()),
            n => (2, n),
        };
        let body = bytes.get(header..header + len)?;
        if op == 0x8 {
            return Some(body.to_vec());
        }
        bytes = &bytes[header + len..];
    }
    None
}

/// The code and reason of a close payload that must carry a code.
fn code_and_reason(payload: &[u8]) -> (u16, String) {
    assert!(payload.len() >= 2, "the server's close frame carries a code: {payload:?}");
    let reason = String::from_utf8(payload[2..].to_vec()).expect("the reason is UTF-8");
    (u16::from_be_bytes([payload[0], payload[1]]), reason)
}

#[tokio::test]
async fn a_valid_close_code_is_echoed() {
    let server = TestServer::start().await;
    for code in [1000, 1001, 3000, 4001, 4999] {
        let answer = close_with(&server, &payload(code, b"bye")).await.expect("a close frame answers");
        assert_eq!(code_and_reason(&answer).0, code, "the server echoes the code");
    }
    // A close frame without a code is answered without one (§5.5.1).
    assert_eq!(close_with(&server, &[]).await, Some(vec![]));
}

#[tokio::test]
async fn an_invalid_close_code_fails_the_connection_with_1002() {
    let server = TestServer::start().await;
    // Codes no endpoint may send (§7.4.1, §7.4.2): below 1000, reserved or
    // unassigned in 1000-2999, the three that only describe a close, and
    // past 4999.
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let answer = close_with(&server, &payload(code, b"")).await;
        let (got, reason) = code_and_reason(&answer.unwrap_or_else(|| panic!("no close frame answers code {code}")));
        assert_eq!(got, 1002, "code {code}: {reason}");
        assert!(!reason.is_empty(), "the answer to {code} says why");
    }
}

#[tokio::test]
async fn a_close_frame_it_cannot_read_fails_the_connection_with_1002_or_1007() {
    let server = TestServer::start().await;
    // A one-byte payload: half a code (§5.5.1).
    let (code, reason) = code_and_reason(&close_with(&server, &[0x03]).await.expect("a close frame answers"));
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("close"), "says why: {reason}");
    // A reason that is not UTF-8 (§5.5.1, §8.1).
    let answer = close_with(&server, &payload(1000, b"bye \xff\xfe")).await.expect("a close frame answers");
    assert_eq!(code_and_reason(&answer), (1007, "invalid UTF-8".to_owned()));
}

#[tokio::test]
async fn other_broken_frames_fail_the_connection_too() {
    let server = TestServer::start().await;
    // A text message that is not UTF-8 (§8.1).
    let answer = answer_to(&server, &frame(0x1, b"{\"type\": \"ping\xc3\"}", true)).await;
    assert_eq!(code_and_reason(&answer.expect("a close frame answers")).0, 1007);
    // An unmasked frame from a client (§5.1), an unknown opcode (§5.2).
    for broken in [frame(0x1, br#"{"type":"ping"}"#, false), frame(0x3, b"", true)] {
        let answer = answer_to(&server, &broken).await;
        let (code, reason) = code_and_reason(&answer.expect("a close frame answers"));
        assert_eq!(code, 1002, "{reason}");
    }
}
