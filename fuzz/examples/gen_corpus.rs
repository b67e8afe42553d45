//! Writes the seed corpora: `cargo run --example gen_corpus` from `fuzz/`.
//!
//! * `corpus/decode/`: the encoding of one frame of every kind, a few frames back
//!   to back, and truncated, oversized, malformed and invalid inputs;
//! * `corpus/roundtrip/`: for every frame kind, an input that the `roundtrip`
//!   target's `Arbitrary` parsing turns into one valid frame of that kind (found by
//!   a deterministic random search), plus one with several frames.
//!
//! Existing files of the same names are overwritten; others are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use hookway::wire::{
    ClientHello, Frame, Headers, MAX_FRAME_LEN, RejectCode, Rejected, RequestHead, ResponseHead, ServerHello,
    SessionEnded, StreamError, StreamErrorCode, encode_to_bytes,
};
use hookway_fuzz::decode_loop::{KINDS, kind};
use hookway_fuzz::structured::{Built, RoundtripInput, build_all};
use http::{Method, StatusCode};

fn headers(pairs: &[(&'static str, &'static str)]) -> Headers {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, http::HeaderValue::from_static(value));
    }
    Headers::from(map)
}

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::ClientHello(ClientHello {
            tunnel_id: "tun_01h9x".into(),
            auth_token: "hwt_secret".into(),
            protocol_version: 1,
            client_version: "hookway 0.1.0".into(),
        }),
        Frame::ServerHello(ServerHello {
            tunnel_id: "tun_01h9x".into(),
            name: "github".into(),
            subdomain: "brisk-otter".into(),
            tunnel_url: "https://hw.example/t/brisk-otter".into(),
            host_url: Some("https://brisk-otter.hw.example".into()),
            heartbeat_interval_ms: 15_000,
            accepts_leaving: true,
        }),
        Frame::Rejected(Rejected { code: RejectCode::BadToken, message: "bad token".into() }),
        Frame::SessionEnded(SessionEnded { close_code: 0x10, message: "disconnected through the API".into() }),
        Frame::Leaving,
        Frame::Ping(1),
        Frame::Pong(u64::MAX),
        Frame::RequestHead(RequestHead {
            method: Method::POST,
            target: Bytes::from_static(b"/webhooks/github?x=1"),
            headers: headers(&[("content-type", "application/json"), ("x-github-event", "push")]),
            client_ip: Some("203.0.113.7".parse().expect("ip")),
            request_id: Bytes::from_static(b"req_0192f3a4b5c600000001"),
        }),
        Frame::ResponseHead(ResponseHead {
            status: StatusCode::ACCEPTED,
            headers: headers(&[("content-type", "text/plain")]),
        }),
        Frame::Body(Bytes::from_static(b"{\"ok\":true}")),
        Frame::End,
        Frame::Error(StreamError { code: StreamErrorCode::LocalTimeout, message: "timed out".into() }),
    ]
}

/// Protobuf field with wire type 2 (length-delimited); all our test lengths < 128.
fn ld(field: u8, data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 128);
    let mut out = vec![(field << 3) | 2, data.len() as u8];
    out.extend_from_slice(data);
    out
}

/// Protobuf varint field (value < 2^14).
fn varint(field: u8, value: u16) -> Vec<u8> {
    let mut out = vec![field << 3];
    if value < 128 {
        out.push(value as u8);
    } else {
        out.extend([(value & 0x7f) as u8 | 0x80, (value >> 7) as u8]);
    }
    out
}

fn prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::write(dir.join(name), data).expect("write corpus file");
}

fn decode_corpus(dir: &Path) {
    let frames = sample_frames();
    for frame in &frames {
        write(dir, &format!("valid-{}", kind(frame)), &encode_to_bytes(frame));
    }
    // Found by kind, not by place: the list grows with the protocol.
    let of_kind = |name: &str| frames.iter().position(|f| kind(f) == name).expect("a sample of every kind");
    let mut stream = Vec::new();
    for frame in &frames[of_kind("request_head")..] {
        stream.extend_from_slice(&encode_to_bytes(frame));
    }
    write(dir, "valid-request-exchange", &stream);
    // A ServerHello without a host URL: the empty string on the wire.
    let mut hello = frames[of_kind("server_hello")].clone();
    if let Frame::ServerHello(h) = &mut hello {
        h.host_url = None;
    }
    write(dir, "valid-server_hello-no-host", &encode_to_bytes(&hello));

    let head = encode_to_bytes(&frames[of_kind("request_head")]);
    write(dir, "truncated-prefix", &head[..3]);
    write(dir, "truncated-head", &head[..head.len() / 2]);
    let mut then_cut = encode_to_bytes(&Frame::End).to_vec();
    then_cut.extend_from_slice(&head[..head.len() - 1]);
    write(dir, "frame-then-truncated", &then_cut);
    write(dir, "oversized-limit-plus-one", &((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    write(dir, "oversized-u32-max", &[0xff, 0xff, 0xff, 0xff, 0x00]);
    write(dir, "garbage-protobuf", &[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    write(dir, "empty-frame", &[0, 0, 0, 0]);
    // A body frame cut short: a streaming decoder hands out its first bytes.
    let body = encode_to_bytes(&Frame::Body(Bytes::from(vec![b'x'; 300])));
    write(dir, "body-cut-short", &body[..100]);
    // A body field followed by an End field in one frame: protobuf keeps the
    // last field of a oneof, so this is `End`, and a streaming decoder must not
    // take it for a body. Whole, and cut short.
    let mut two_fields = vec![0x42, 20];
    two_fields.extend_from_slice(&[b'y'; 20]);
    two_fields.extend_from_slice(&[0x4a, 0x00]);
    let two_fields = prefixed(&two_fields);
    write(dir, "body-then-end-field", &two_fields);
    write(dir, "body-then-end-field-cut-short", &two_fields[..12]);
    // A body field whose length is u64::MAX (a varint of ten bytes) in a
    // 13-byte frame: the fuzzer's first find in the streaming decoder, which
    // added the two lengths and overflowed.
    write(dir, "body-length-overflow", &[&[0, 0, 0, 13, 0x42][..], &[0xff; 9], &[0x01]].concat());
    // Unknown oneof field 15 only: well-formed, but no known kind.
    write(dir, "unknown-kind", &prefixed(&varint(15, 1)));

    let req = |method: &[u8], target: &[u8], header: &[u8], ip: &[u8]| {
        let mut inner = ld(1, method);
        inner.extend(ld(2, target));
        if !header.is_empty() {
            inner.extend(ld(3, header));
        }
        if !ip.is_empty() {
            inner.extend(ld(4, ip));
        }
        prefixed(&ld(6, &inner))
    };
    let good_header = [ld(1, b"x-a"), ld(2, b"b")].concat();
    let bad_header = [ld(1, b"bad name"), ld(2, b"")].concat();
    write(dir, "invalid-header-name", &req(b"POST", b"/", &bad_header, &[]));
    write(dir, "invalid-header-value", &req(b"POST", b"/", &[ld(1, b"x-a"), ld(2, b"a\nb")].concat(), &[]));
    write(dir, "invalid-method", &req(b"P OST", b"/", &good_header, &[]));
    write(dir, "invalid-target", &req(b"GET", b"http://x/", &good_header, &[]));
    write(dir, "invalid-target-fragment", &req(b"GET", b"/a#b", &good_header, &[]));
    write(dir, "invalid-client-ip", &req(b"GET", b"/", &good_header, &[1, 2, 3, 4, 5]));
    write(
        dir,
        "valid-request-ipv6",
        &req(b"GET", b"/", &good_header, &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    );
    write(dir, "invalid-status", &prefixed(&ld(7, &varint(1, 1000))));
    // Unknown enum values decode as Unspecified.
    write(dir, "unknown-reject-code", &prefixed(&ld(3, &[varint(1, 99), ld(2, b"?")].concat())));
    write(dir, "unknown-error-code", &prefixed(&ld(10, &[varint(1, 99), ld(2, b"?")].concat())));
    write(dir, "invalid-utf8-string", &prefixed(&ld(3, &[varint(1, 1), ld(2, &[0xc3, 0x28])].concat())));
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Mostly header- and path-friendly bytes, some arbitrary ones.
    fn byte(&mut self) -> u8 {
        const PALETTE: &[u8] = b"/////abcdefghxyz-_.:=?&0123456789 ";
        let r = self.next();
        if r & 3 == 0 { (r >> 8) as u8 } else { PALETTE[((r >> 8) % PALETTE.len() as u64) as usize] }
    }
}

fn parse(data: &[u8]) -> Option<RoundtripInput> {
    RoundtripInput::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// A "rich" single frame: one that exercises its fields, not all defaults.
fn rich(frame: &Frame) -> bool {
    match frame {
        Frame::ClientHello(h) => !h.tunnel_id.is_empty() && !h.auth_token.is_empty(),
        Frame::ServerHello(h) => h.host_url.is_some() && !h.tunnel_url.is_empty(),
        Frame::Rejected(r) => !r.message.is_empty(),
        Frame::SessionEnded(e) => !e.message.is_empty(),
        Frame::Ping(n) | Frame::Pong(n) => *n > 0,
        Frame::RequestHead(h) => !h.headers.is_empty() && h.client_ip.is_some() && h.target.len() > 1,
        Frame::ResponseHead(h) => !h.headers.is_empty(),
        Frame::Body(b) => !b.is_empty(),
        Frame::End | Frame::Leaving => true,
        Frame::Error(e) => !e.message.is_empty(),
    }
}

fn roundtrip_corpus(dir: &Path) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut found: Vec<Option<Vec<u8>>> = vec![None; KINDS.len()];
    let mut multi: Option<Vec<u8>> = None;
    for _ in 0..20_000_000u64 {
        if found.iter().all(Option::is_some) && multi.is_some() {
            break;
        }
        let len = 8 + (rng.next() % 120) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let Some(input) = parse(&data) else { continue };
        let Some(built) = build_all(&input) else { continue };
        let frames: Vec<&Frame> = built
            .iter()
            .filter_map(|b| match b {
                Built::Valid(f) => Some(f),
                Built::Refused(..) => None,
            })
            .collect();
        if frames.len() != built.len() || frames.is_empty() {
            continue;
        }
        if frames.len() == 1 {
            let i = KINDS.iter().position(|k| *k == kind(frames[0])).expect("known kind");
            if found[i].is_none() && rich(frames[0]) {
                found[i] = Some(data);
            }
        } else if multi.is_none() && frames.len() >= 3 && !input.pieces.is_empty() {
            multi = Some(data);
        }
    }
    for (kind, data) in KINDS.iter().zip(&found) {
        match data {
            Some(data) => write(dir, &format!("seed-{kind}"), data),
            None => eprintln!("no roundtrip seed found for {kind}"),
        }
    }
    match multi {
        Some(data) => write(dir, "seed-several-frames", &data),
        None => eprintln!("no several-frame roundtrip seed found"),
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let decode = root.join("decode");
    let roundtrip = root.join("roundtrip");
    fs::create_dir_all(&decode).expect("mkdir");
    fs::create_dir_all(&roundtrip).expect("mkdir");
    decode_corpus(&decode);
    roundtrip_corpus(&roundtrip);
    // Every decode seed must pass the decode target's checks.
    for entry in fs::read_dir(&decode).expect("read corpus") {
        let path = entry.expect("entry").path();
        let outcome = hookway_fuzz::decode_loop::check(&fs::read(&path).expect("read"));
        println!("{}: {} frame(s), {:?}", path.display(), outcome.frames.len(), outcome.end);
    }
    for entry in fs::read_dir(&roundtrip).expect("read corpus") {
        let path = entry.expect("entry").path();
        let input = parse(&fs::read(&path).expect("read")).expect("parses");
        hookway_fuzz::structured::check(&input);
        println!("{}: {input:?}", path.display());
    }
}
