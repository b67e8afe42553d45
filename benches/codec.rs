//! Frame codec cost: protobuf frames (this crate's wire format) beside the
//! serde_json messages a JSON-over-WebSocket tunnel would send for the same data.
//!
//! Benchmark ids read `{what}/{direction}/{format}`, e.g.
//! `request_head/decode/protobuf` vs `request_head/decode/serde_json`.
//!
//! * `request_head`: a GitHub webhook delivery's request head (POST, 12 headers,
//!   client address).
//! * `body_chunk`: one 64 KiB body chunk. JSON cannot carry raw bytes, so the JSON
//!   side carries the body as a **base64 string** (base64 0.22, standard alphabet),
//!   which is what a binary-safe JSON protocol has to do; the base64 step is part of
//!   the measured encode and decode, since the data starts and ends as bytes.
//!
//! Both formats encode into a reused buffer. Protobuf decoding of a head starts
//! from the chunk QUIC hands the frame reader (prepared outside the
//! measurement) and goes through the same `FrameDecoder`; a body chunk's decode
//! starts from a `BytesMut` holding the frame. serde_json decoding starts from
//! the encoded `&[u8]`.

use std::hint::black_box;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hookway::wire::{Frame, FrameDecoder, RequestHead, decode, encode, encode_to_bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

const TARGET: &str = "/webhooks/github?x=1";
const CLIENT_IP: &str = "140.82.115.10";
/// The id of the server's record of the request, as every captured head carries.
const REQUEST_ID: &str = "req_0192f3a4b5c600000001";
const HEADERS: [(&str, &str); 12] = [
    ("host", "brisk-otter.hookway.example"),
    ("user-agent", "GitHub-Hookshot/abc1234"),
    ("content-type", "application/json"),
    ("content-length", "7364"),
    ("x-github-event", "push"),
    ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ("x-hub-signature", "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"),
    ("x-hub-signature-256", "sha256=d57c68ca6f92289e6987922ff26938930f6e66a2d161ef06abdf1859230aa23c"),
    ("accept", "*/*"),
    ("x-forwarded-for", "140.82.115.10"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "brisk-otter.hookway.example"),
];
const CHUNK_LEN: usize = 64 * 1024;

/// The JSON message for a request head.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct JsonRequestHead {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    client_ip: String,
    request_id: String,
}

/// The JSON message for a body chunk: the bytes as a base64 string.
#[derive(Debug, Serialize, Deserialize)]
struct JsonBodyChunk {
    body: String,
}

fn request_head_frame() -> Frame {
    Frame::RequestHead(RequestHead {
        method: Method::POST,
        target: Bytes::from_static(TARGET.as_bytes()),
        headers: HEADERS
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect::<HeaderMap>()
            .into(),
        client_ip: Some(CLIENT_IP.parse::<IpAddr>().expect("valid ip")),
        request_id: Bytes::from_static(REQUEST_ID.as_bytes()),
    })
}

fn request_head_json() -> JsonRequestHead {
    JsonRequestHead {
        method: "POST".to_owned(),
        path: TARGET.to_owned(),
        headers: HEADERS.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        client_ip: CLIENT_IP.to_owned(),
        request_id: REQUEST_ID.to_owned(),
    }
}

/// 64 KiB of a GitHub-like JSON payload, as a webhook body would be.
fn body_chunk() -> Bytes {
    let piece = br#"{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","repository":{"id":186853002,"full_name":"octo/hello-world","private":false},"pusher":{"name":"octocat"},"commits":[]}"#;
    let mut body = Vec::with_capacity(CHUNK_LEN);
    while body.len() < CHUNK_LEN {
        let take = piece.len().min(CHUNK_LEN - body.len());
        body.extend_from_slice(&piece[..take]);
    }
    Bytes::from(body)
}

/// `frame` as QUIC hands it to the frame reader: a chunk cut out of a received
/// datagram's buffer (so already shared, like every chunk quinn returns).
fn received(frame: &Bytes) -> Bytes {
    let mut datagram = BytesMut::from(&frame[..]);
    datagram.split_to(frame.len()).freeze()
}

/// Decodes the one frame in `chunk` as the QUIC frame reader does.
fn decode_chunk(chunk: Bytes) -> Frame {
    let mut decoder = FrameDecoder::new();
    decoder.push(chunk);
    decoder.next_frame().expect("valid frame").expect("complete frame")
}

fn decode_one(encoded: &Bytes) -> Frame {
    let mut buf = BytesMut::from(&encoded[..]);
    decode(&mut buf).expect("valid frame").expect("complete frame")
}

fn bench_request_head(c: &mut Criterion) {
    let frame = request_head_frame();
    let json = request_head_json();
    let pb_bytes = encode_to_bytes(&frame);
    let json_bytes = serde_json::to_vec(&json).expect("serialize");
    assert_eq!(decode_one(&pb_bytes), frame);
    assert_eq!(serde_json::from_slice::<JsonRequestHead>(&json_bytes).expect("deserialize"), json);
    eprintln!("request_head: protobuf {} bytes (with prefix), serde_json {} bytes", pb_bytes.len(), json_bytes.len());

    let mut group = c.benchmark_group("request_head/encode");
    group.bench_function("protobuf", |b| {
        let mut buf = BytesMut::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            encode(black_box(&frame), &mut buf);
            black_box(buf.len())
        });
    });
    group.bench_function("serde_json", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&json)).expect("serialize");
            black_box(buf.len())
        });
    });
    group.finish();

    let mut group = c.benchmark_group("request_head/decode");
    group.bench_function("protobuf", |b| {
        b.iter_batched(|| received(&pb_bytes), decode_chunk, BatchSize::SmallInput);
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::from_slice::<JsonRequestHead>(black_box(&json_bytes)).expect("deserialize"));
    });
    group.finish();

    // What the client does with a head: decode it, then build the `HeaderMap`
    // hyper needs (JSON's owned strings would need the same step on top).
    let mut group = c.benchmark_group("request_head/decode_to_header_map");
    group.bench_function("protobuf", |b| {
        b.iter_batched(
            || received(&pb_bytes),
            |chunk| match decode_chunk(chunk) {
                Frame::RequestHead(head) => head.headers.into_map().expect("valid headers"),
                _ => unreachable!("a request head"),
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn bench_body_chunk(c: &mut Criterion) {
    let body = body_chunk();
    let frame = Frame::Body(body.clone());
    let pb_bytes = encode_to_bytes(&frame);
    let json_bytes = serde_json::to_vec(&JsonBodyChunk { body: BASE64.encode(&body) }).expect("serialize");
    assert_eq!(decode_one(&pb_bytes), frame);
    let back: JsonBodyChunk = serde_json::from_slice(&json_bytes).expect("deserialize");
    assert_eq!(BASE64.decode(back.body).expect("base64"), body);
    eprintln!(
        "body_chunk: protobuf {} bytes (with prefix), serde_json+base64 {} bytes",
        pb_bytes.len(),
        json_bytes.len()
    );

    let mut group = c.benchmark_group("body_chunk/encode");
    group.throughput(Throughput::Bytes(CHUNK_LEN as u64));
    group.bench_function("protobuf", |b| {
        let mut buf = BytesMut::with_capacity(2 * CHUNK_LEN);
        b.iter(|| {
            buf.clear();
            encode(black_box(&frame), &mut buf);
            black_box(buf.len())
        });
    });
    group.bench_function("serde_json", |b| {
        let mut buf = Vec::with_capacity(2 * CHUNK_LEN);
        b.iter(|| {
            buf.clear();
            let chunk = JsonBodyChunk { body: BASE64.encode(black_box(&body)) };
            serde_json::to_writer(&mut buf, &chunk).expect("serialize");
            black_box(buf.len())
        });
    });
    group.finish();

    let mut group = c.benchmark_group("body_chunk/decode");
    group.throughput(Throughput::Bytes(CHUNK_LEN as u64));
    group.bench_function("protobuf", |b| {
        b.iter_batched(
            || BytesMut::from(&pb_bytes[..]),
            |mut buf| decode(&mut buf).expect("valid frame").expect("complete frame"),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let chunk: JsonBodyChunk = serde_json::from_slice(black_box(&json_bytes)).expect("deserialize");
            BASE64.decode(chunk.body).expect("base64")
        });
    });
    group.finish();
}

/// What the edge and the client do to every head: drop hop-by-hop headers.
/// A typical webhook has none.
fn bench_strip_hop_by_hop(c: &mut Criterion) {
    let map: HeaderMap =
        HEADERS.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect();
    c.bench_function("headers/strip_hop_by_hop", |b| {
        b.iter_batched_ref(|| map.clone(), hookway::headers::strip_hop_by_hop, BatchSize::SmallInput);
    });
}

criterion_group!(benches, bench_request_head, bench_body_chunk, bench_strip_hop_by_hop);
criterion_main!(benches);
