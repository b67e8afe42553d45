//! Structured input for the `roundtrip` target: an `Arbitrary` mirror of
//! `hookway::wire::Frame`, converted into real frames through the public
//! constructors only (`HeaderName::from_bytes`, `HeaderValue::from_bytes`,
//! `Method::from_bytes`, `StatusCode::from_u16`).
//! Values those constructors refuse are skipped, not forced into shape.

use std::net::IpAddr;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use hookway::wire::codec::encode_body_header;
use hookway::wire::frame::InvalidFrame;
use hookway::wire::{
    self, ClientHello, DecodeError, Frame, FrameDecoder, Headers, RejectCode, Rejected, RequestHead, ResponseHead,
    ServerHello, SessionEnded, StreamError, StreamErrorCode,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// One fuzz case: a sequence of frames, and the sizes of the pieces in which their
/// concatenated encoding is fed to a `FrameDecoder` (cycled; 0 is a valid empty push).
#[derive(Arbitrary, Debug)]
pub struct RoundtripInput {
    /// Frames to encode back to back.
    pub frames: Vec<FuzzFrame>,
    /// Piece sizes for the incremental decoder.
    pub pieces: Vec<u8>,
}

/// Mirror of `Frame` with raw, possibly invalid, field values.
#[allow(missing_docs)]
#[derive(Arbitrary, Debug)]
pub enum FuzzFrame {
    ClientHello {
        tunnel_id: String,
        auth_token: String,
        protocol_version: u32,
        client_version: String,
    },
    ServerHello {
        tunnel_id: String,
        name: String,
        subdomain: String,
        tunnel_url: String,
        host_url: Option<String>,
        heartbeat_interval_ms: u32,
        accepts_leaving: bool,
    },
    Rejected {
        code: FuzzRejectCode,
        message: String,
    },
    Ping(u64),
    Pong(u64),
    RequestHead {
        method: FuzzMethod,
        target: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        client_ip: Option<FuzzIp>,
        request_id: Vec<u8>,
    },
    ResponseHead {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        reason: Vec<u8>,
    },
    Body(Vec<u8>),
    End,
    Error {
        code: FuzzStreamErrorCode,
        message: String,
    },
    SessionEnded {
        close_code: u32,
        message: String,
    },
    Leaving,
}

/// Either a standard method or arbitrary bytes for `Method::from_bytes`.
#[allow(missing_docs)]
#[derive(Arbitrary, Debug)]
pub enum FuzzMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
    Raw(Vec<u8>),
}

#[allow(missing_docs)]
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FuzzIp {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[allow(missing_docs)]
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FuzzRejectCode {
    Unspecified,
    BadToken,
    UnknownTunnel,
    UnsupportedVersion,
    Internal,
}

#[allow(missing_docs)]
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FuzzStreamErrorCode {
    Unspecified,
    LocalUnreachable,
    LocalTimeout,
    LocalProtocol,
    Cancelled,
    Protocol,
}

/// What a mirror frame turned into.
#[derive(Debug)]
pub enum Built {
    /// A frame that must round-trip exactly.
    Valid(Frame),
    /// A `RequestHead` whose target is not origin-form, or whose request id
    /// breaks its rule: `RequestHead` has no validating constructor, so the
    /// decoder must be the one to refuse it, with this error.
    Refused(Frame, InvalidFrame),
}

/// The request target rule from the protocol: origin-form, i.e. starts with `/`,
/// no controls, spaces, DEL or fragment.
pub fn target_is_valid(target: &[u8]) -> bool {
    target.first() == Some(&b'/') && target.iter().all(|&b| b > 0x20 && b != 0x7f && b != b'#')
}

/// The request id rule from the protocol: at most 64 ASCII letters, digits,
/// `_` and `-`.
pub fn request_id_is_valid(id: &[u8]) -> bool {
    id.len() <= 64 && id.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The reason phrase rule from the protocol: at most 256 bytes of tabs,
/// spaces, visible ASCII and obs-text.
pub fn reason_is_valid(reason: &[u8]) -> bool {
    reason.len() <= 256 && reason.iter().all(|&b| b == b'\t' || b == b' ' || (b > 0x20 && b != 0x7f))
}

fn headers(raw: &[(Vec<u8>, Vec<u8>)]) -> Option<Headers> {
    let mut map = HeaderMap::new();
    for (n, v) in raw {
        map.append(HeaderName::from_bytes(n).ok()?, HeaderValue::from_bytes(v).ok()?);
    }
    Some(map.into())
}

impl FuzzFrame {
    /// Converts into a real frame, or `None` when a public constructor refuses a
    /// field (the input is then skipped).
    pub fn build(&self) -> Option<Built> {
        Some(Built::Valid(match self {
            FuzzFrame::ClientHello { tunnel_id, auth_token, protocol_version, client_version } => {
                Frame::ClientHello(ClientHello {
                    tunnel_id: tunnel_id.clone(),
                    auth_token: auth_token.clone(),
                    protocol_version: *protocol_version,
                    client_version: client_version.clone(),
                })
            }
            FuzzFrame::ServerHello {
                tunnel_id,
                name,
                subdomain,
                tunnel_url,
                host_url,
                heartbeat_interval_ms,
                accepts_leaving,
            } => {
                // The wire encodes "no host URL" as an empty string, so `Some("")`
                // cannot survive a round trip: it is not a meaningful value.
                if host_url.as_deref() == Some("") {
                    return None;
                }
                Frame::ServerHello(ServerHello {
                    tunnel_id: tunnel_id.clone(),
                    name: name.clone(),
                    subdomain: subdomain.clone(),
                    tunnel_url: tunnel_url.clone(),
                    host_url: host_url.clone(),
                    heartbeat_interval_ms: *heartbeat_interval_ms,
                    accepts_leaving: *accepts_leaving,
                })
            }
            FuzzFrame::Rejected { code, message } => {
                Frame::Rejected(Rejected { code: reject_code(*code), message: message.clone() })
            }
            FuzzFrame::SessionEnded { close_code, message } => {
                Frame::SessionEnded(SessionEnded { close_code: *close_code, message: message.clone() })
            }
            FuzzFrame::Leaving => Frame::Leaving,
            FuzzFrame::Ping(seq) => Frame::Ping(*seq),
            FuzzFrame::Pong(seq) => Frame::Pong(*seq),
            FuzzFrame::RequestHead { method, target, headers: raw_headers, client_ip, request_id } => {
                let method = match method {
                    FuzzMethod::Get => Method::GET,
                    FuzzMethod::Post => Method::POST,
                    FuzzMethod::Put => Method::PUT,
                    FuzzMethod::Patch => Method::PATCH,
                    FuzzMethod::Delete => Method::DELETE,
                    FuzzMethod::Head => Method::HEAD,
                    FuzzMethod::Options => Method::OPTIONS,
                    FuzzMethod::Raw(raw) => Method::from_bytes(raw).ok()?,
                };
                let head = RequestHead {
                    method,
                    target: Bytes::copy_from_slice(target),
                    headers: headers(raw_headers)?,
                    client_ip: client_ip.map(|ip| match ip {
                        FuzzIp::V4(o) => IpAddr::from(o),
                        FuzzIp::V6(o) => IpAddr::from(o),
                    }),
                    request_id: Bytes::copy_from_slice(request_id),
                };
                if !target_is_valid(target) {
                    return Some(Built::Refused(Frame::RequestHead(head), InvalidFrame::Target));
                }
                if !request_id_is_valid(request_id) {
                    return Some(Built::Refused(Frame::RequestHead(head), InvalidFrame::RequestId));
                }
                Frame::RequestHead(head)
            }
            FuzzFrame::ResponseHead { status, headers: raw_headers, reason } => {
                let head = ResponseHead {
                    status: StatusCode::from_u16(*status).ok()?,
                    headers: headers(raw_headers)?,
                    reason: Bytes::copy_from_slice(reason),
                };
                if !reason_is_valid(reason) {
                    return Some(Built::Refused(Frame::ResponseHead(head), InvalidFrame::Reason));
                }
                Frame::ResponseHead(head)
            }
            FuzzFrame::Body(body) => Frame::Body(Bytes::copy_from_slice(body)),
            FuzzFrame::End => Frame::End,
            FuzzFrame::Error { code, message } => {
                Frame::Error(StreamError { code: stream_error_code(*code), message: message.clone() })
            }
        }))
    }
}

fn reject_code(code: FuzzRejectCode) -> RejectCode {
    match code {
        FuzzRejectCode::Unspecified => RejectCode::Unspecified,
        FuzzRejectCode::BadToken => RejectCode::BadToken,
        FuzzRejectCode::UnknownTunnel => RejectCode::UnknownTunnel,
        FuzzRejectCode::UnsupportedVersion => RejectCode::UnsupportedVersion,
        FuzzRejectCode::Internal => RejectCode::Internal,
    }
}

fn stream_error_code(code: FuzzStreamErrorCode) -> StreamErrorCode {
    match code {
        FuzzStreamErrorCode::Unspecified => StreamErrorCode::Unspecified,
        FuzzStreamErrorCode::LocalUnreachable => StreamErrorCode::LocalUnreachable,
        FuzzStreamErrorCode::LocalTimeout => StreamErrorCode::LocalTimeout,
        FuzzStreamErrorCode::LocalProtocol => StreamErrorCode::LocalProtocol,
        FuzzStreamErrorCode::Cancelled => StreamErrorCode::Cancelled,
        FuzzStreamErrorCode::Protocol => StreamErrorCode::Protocol,
    }
}

/// Builds every frame of `input`; `None` if any of them is skipped.
pub fn build_all(input: &RoundtripInput) -> Option<Vec<Built>> {
    input.frames.iter().map(FuzzFrame::build).collect()
}

/// The `roundtrip` target's body.
pub fn check(input: &RoundtripInput) {
    let Some(built) = build_all(input) else { return };

    // A non-origin-form target or a bad request id must be refused by the
    // decoder, on its own.
    for b in &built {
        if let Built::Refused(frame, why) = b {
            let mut buf = BytesMut::from(&wire::encode_to_bytes(frame)[..]);
            assert_eq!(
                wire::decode(&mut buf),
                Err(DecodeError::Invalid(why.clone())),
                "a request head the protocol forbids was accepted"
            );
        }
    }
    let frames: Vec<Frame> = built
        .into_iter()
        .filter_map(|b| match b {
            Built::Valid(frame) => Some(frame),
            Built::Refused(..) => None,
        })
        .collect();

    // One frame at a time, and `encode_body_header` agrees with `encode`.
    let mut all = BytesMut::new();
    for frame in &frames {
        let bytes = wire::encode_to_bytes(frame);
        if let Frame::Body(body) = frame {
            let mut split = BytesMut::new();
            encode_body_header(body.len(), &mut split);
            split.extend_from_slice(body);
            assert_eq!(split, bytes, "encode_body_header disagrees with encode");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(wire::decode(&mut buf), Ok(Some(frame.clone())), "single frame round trip");
        assert!(buf.is_empty(), "single frame left trailing bytes");
        let before = all.len();
        wire::encode(frame, &mut all);
        assert_eq!(&all[before..], &bytes[..], "encode and encode_to_bytes disagree");
    }

    // All frames back to back, through `decode`.
    let encoded = all.freeze();
    let mut buf = BytesMut::from(&encoded[..]);
    for frame in &frames {
        assert_eq!(wire::decode(&mut buf), Ok(Some(frame.clone())), "sequence round trip");
    }
    assert_eq!(wire::decode(&mut buf), Ok(None));
    assert!(buf.is_empty());

    // And through `FrameDecoder`, in fuzzer-chosen pieces, whole frames and
    // streamed bodies.
    let decoded = decode_in_pieces(FrameDecoder::new(), &encoded, &input.pieces);
    assert_eq!(decoded, frames, "FrameDecoder produced different frames");
    let streamed = decode_in_pieces(FrameDecoder::streaming_bodies(0), &encoded, &input.pieces);
    crate::decode_loop::check_pieces(&frames, &streamed, None, "in fuzzer-chosen pieces");
}

/// Pushes `encoded` into `decoder` in pieces of the given sizes (cycled),
/// draining it after each; returns the frames, and checks that the decoder
/// ends between frames with nothing kept.
fn decode_in_pieces(mut decoder: FrameDecoder, encoded: &[u8], pieces: &[u8]) -> Vec<Frame> {
    let mut decoded = Vec::new();
    let mut rest = encoded;
    // All-zero sizes would never make progress: then push everything at once.
    let pieces: &[u8] = if pieces.iter().all(|&p| p == 0) { &[] } else { pieces };
    let mut sizes = pieces.iter().copied().cycle();
    while !rest.is_empty() {
        let size = match sizes.next() {
            Some(size) => usize::from(size).min(rest.len()),
            None => rest.len(),
        };
        let (piece, tail) = rest.split_at(size);
        decoder.push(bytes::Bytes::copy_from_slice(piece));
        rest = tail;
        while let Some(frame) = decoder.next_frame().expect("valid encoding rejected by FrameDecoder") {
            decoded.push(frame);
        }
    }
    assert_eq!(decoder.pending(), 0, "FrameDecoder kept bytes after the last frame");
    assert!(!decoder.in_frame(), "FrameDecoder still inside a frame after the last one");
    decoded
}
