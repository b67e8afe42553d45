//! Request and response heads, written and read as protobuf without going
//! through the generated structs.
//!
//! Heads are the one frame every request pays for twice (out and back), and the
//! generated code costs an allocation per header name and value each way. Here
//! a head is encoded straight from its `HeaderMap`, and decoded by walking the
//! protobuf fields of the received frame: headers are checked in place and kept
//! as ranges of it ([`Headers`]). The bytes are the same protobuf the generated
//! code reads and writes (a test checks both directions), so the schema in
//! `proto/hookway.proto` stays the one description of the wire.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use prost::encoding::{WireType, encoded_len_varint, key_len};

use super::Frame;
use super::codec::DecodeError;
use super::frame::{
    InvalidFrame, RequestHead, ResponseHead, check_header_count, check_reason, check_request_id, check_target,
    client_ip_from,
};
use super::headers::Headers;
use super::walk::{self, Fields, HeadField, Value, varint};

/// `Frame` field numbers of the two heads.
const REQUEST_HEAD: u32 = 6;
const RESPONSE_HEAD: u32 = 7;

fn bytes_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(value.len() as u64) + value.len() }
}

/// Writes into the bytes reserved for one frame. The size is computed first
/// (protobuf needs it up front anyway), so writing is plain stores, not a
/// capacity check and a call per byte as through `BufMut`.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.pos] = (v as u8) | 0x80;
            v >>= 7;
            self.pos += 1;
        }
        self.buf[self.pos] = v as u8;
        self.pos += 1;
    }

    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint((u64::from(tag) << 3) | wire_type as u64);
    }

    fn bytes_field(&mut self, tag: u32, value: &[u8]) {
        if !value.is_empty() {
            self.key(tag, WireType::LengthDelimited);
            self.varint(value.len() as u64);
            self.buf[self.pos..self.pos + value.len()].copy_from_slice(value);
            self.pos += value.len();
        }
    }

    fn headers(&mut self, tag: u32, headers: &Headers) {
        for (name, value) in headers.iter() {
            self.key(tag, WireType::LengthDelimited);
            self.varint(header_len(name, value) as u64);
            self.bytes_field(1, name);
            self.bytes_field(2, value);
        }
    }
}

fn header_len(name: &[u8], value: &[u8]) -> usize {
    bytes_field_len(1, name) + bytes_field_len(2, value)
}

/// Encoded size of the header fields (`tag` is their field number).
fn headers_len(tag: u32, headers: &Headers) -> usize {
    headers
        .iter()
        .map(|(n, v)| {
            let len = header_len(n, v);
            key_len(tag) + encoded_len_varint(len as u64) + len
        })
        .sum()
}

fn ip_octets(head: &RequestHead) -> ([u8; 16], usize) {
    let mut out = [0; 16];
    match head.client_ip {
        None => (out, 0),
        Some(std::net::IpAddr::V4(v4)) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        Some(std::net::IpAddr::V6(v6)) => (v6.octets(), 16),
    }
}

/// Appends the frame holding `head`, length-prefixed, to `dst`.
pub(crate) fn encode_request(head: &RequestHead, dst: &mut BytesMut) {
    let (ip, ip_len) = ip_octets(head);
    let ip = &ip[..ip_len];
    let method = head.method.as_str().as_bytes();
    let inner = bytes_field_len(1, method)
        + bytes_field_len(2, &head.target)
        + headers_len(3, &head.headers)
        + bytes_field_len(4, ip)
        + bytes_field_len(5, &head.request_id);
    write_frame(REQUEST_HEAD, inner, dst, |out| {
        out.bytes_field(1, method);
        out.bytes_field(2, &head.target);
        out.headers(3, &head.headers);
        out.bytes_field(4, ip);
        out.bytes_field(5, &head.request_id);
    });
}

/// Appends the frame holding `head`, length-prefixed, to `dst`.
pub(crate) fn encode_response(head: &ResponseHead, dst: &mut BytesMut) {
    let status = u64::from(head.status.as_u16());
    let inner =
        key_len(1) + encoded_len_varint(status) + headers_len(2, &head.headers) + bytes_field_len(3, &head.reason);
    write_frame(RESPONSE_HEAD, inner, dst, |out| {
        out.key(1, WireType::Varint);
        out.varint(status);
        out.headers(2, &head.headers);
        out.bytes_field(3, &head.reason);
    });
}

/// Reserves the frame in `dst`, writes its length prefix and the head field's
/// key and length, then lets `content` write the `inner` bytes of the head.
fn write_frame(field: u32, inner: usize, dst: &mut BytesMut, content: impl FnOnce(&mut Out<'_>)) {
    let total = key_len(field) + encoded_len_varint(inner as u64) + inner;
    debug_assert!(total <= super::MAX_FRAME_LEN, "encoding an oversized head ({total} bytes)");
    let start = dst.len();
    dst.resize(start + super::LEN_PREFIX + total, 0);
    dst[start..start + super::LEN_PREFIX].copy_from_slice(&(total as u32).to_be_bytes());
    let mut out = Out { buf: &mut dst[start + super::LEN_PREFIX..], pos: 0 };
    out.key(field, WireType::LengthDelimited);
    out.varint(inner as u64);
    content(&mut out);
    debug_assert_eq!(out.pos, total, "head size computed and written agree");
}

/// Walks the head message at `body[inner]`: checks each header (the fields
/// numbered `header_tag`) and hands every other field to `other`. Returns how
/// many headers there are, at most [`super::MAX_HEADERS`].
#[inline(always)]
fn walk_head(
    body: &[u8],
    inner: Range<usize>,
    header_tag: u32,
    mut other: impl FnMut((u32, Value)) -> Result<(), DecodeError>,
) -> Result<usize, DecodeError> {
    let mut count = 0;
    for field in Fields::new(body, inner).of_head(header_tag) {
        match field? {
            HeadField::Header(at) => {
                walk::header(body, at)?;
                count += 1;
            }
            HeadField::Other(tag, v) => other((tag, v))?,
        }
    }
    check_header_count(count)?;
    Ok(count)
}

/// Where the head lies in a frame body that is exactly one request or
/// response head, the layout this crate writes.
pub(crate) struct Layout {
    request: bool,
    /// The head message's bytes.
    inner: Range<usize>,
}

/// The [`Layout`] of `body` if it is one head in the usual layout; `None` for
/// anything else, which the caller leaves to the generated decoder (it handles
/// every valid layout).
pub(crate) fn layout(body: &[u8]) -> Option<Layout> {
    let mut start = 0;
    let key = varint(body, &mut start)?;
    let tag = key >> 3;
    if key & 7 != 2 || (tag != u64::from(REQUEST_HEAD) && tag != u64::from(RESPONSE_HEAD)) {
        return None;
    }
    let len = varint(body, &mut start)?;
    (len == (body.len() - start) as u64)
        .then(|| Layout { request: tag == u64::from(REQUEST_HEAD), inner: start..body.len() })
}

/// Decodes the head `layout` found in `body`.
///
/// Every field is checked to be well-formed protobuf, down to each header's
/// name and value; the headers' HTTP grammar is checked once, by `http`, when
/// [`Headers::into_map`] builds the `HeaderMap`. The headers keep `body`
/// itself, so decoding takes one reference count, for the target.
pub(crate) fn decode(body: Bytes, layout: Layout) -> Result<Frame, DecodeError> {
    let Layout { request, inner } = layout;
    if request {
        let (mut method, mut target, mut ip, mut id) = (0..0, 0..0, 0..0, 0..0);
        let count = walk_head(&body, inner.clone(), 3, |field| {
            match field {
                (1, v) => method = v.range()?,
                (2, v) => target = v.range()?,
                (4, v) => ip = v.range()?,
                (5, v) => id = v.range()?,
                _ => {}
            }
            Ok(())
        })?;
        let method = Method::from_bytes(&body[method]).map_err(|_| InvalidFrame::Method)?;
        let target = body.slice(target);
        check_target(&target)?;
        let client_ip = client_ip_from(&body[ip])?;
        check_request_id(&body[id.clone()])?;
        let request_id = body.slice(id);
        let headers = Headers::wire(body, inner, 3, count);
        Ok(Frame::RequestHead(RequestHead { method, target, headers, client_ip, request_id }))
    } else {
        let (mut status, mut reason) = (0u64, 0..0);
        let count = walk_head(&body, inner.clone(), 2, |field| {
            match field {
                // uint32, as the generated code reads it: the low 32 bits.
                (1, Value::Varint(s)) => status = s & u64::from(u32::MAX),
                (1, _) => return Err(walk::wrong_type()),
                (3, v) => reason = v.range()?,
                _ => {}
            }
            Ok(())
        })?;
        let status = status as u32;
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or(InvalidFrame::Status(status))?;
        check_reason(&body[reason.clone()])?;
        let reason = body.slice(reason);
        Ok(Frame::ResponseHead(ResponseHead { status, headers: Headers::wire(body, inner, 2, count), reason }))
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use http::{HeaderMap, HeaderValue};
    use prost::Message;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::wire::frame::{MAX_REASON, MAX_REQUEST_ID};
    use crate::wire::{MAX_HEADERS, codec, pb};

    /// `decode` as the codec calls it: `None` for other layouts.
    fn fast(body: &Bytes) -> Result<Option<Frame>, DecodeError> {
        match layout(body) {
            Some(layout) => decode(body.clone(), layout).map(Some),
            None => Ok(None),
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(*n, HeaderValue::from_static(v));
        }
        map
    }

    fn heads() -> Vec<Frame> {
        // A header of 128 bytes or more takes the general walk; the others the short cut.
        let long: &'static str = Box::leak("v".repeat(200).into_boxed_str());
        let hdrs =
            map(&[("content-type", "application/json"), ("x-empty", ""), ("x-long", long), ("x-a", "1"), ("x-a", "2")]);
        vec![
            Frame::RequestHead(RequestHead {
                method: Method::POST,
                target: Bytes::from_static(b"/hooks/github?delivery=1"),
                headers: hdrs.clone().into(),
                client_ip: Some("203.0.113.7".parse().unwrap()),
                request_id: Bytes::from_static(b"req_0192f3a4b5c600000001"),
            }),
            Frame::RequestHead(RequestHead {
                method: Method::from_bytes(b"PROPFIND").unwrap(),
                target: Bytes::from_static(b"/"),
                headers: Headers::default(),
                client_ip: Some("2001:db8::1".parse().unwrap()),
                request_id: Bytes::new(),
            }),
            Frame::RequestHead(RequestHead {
                method: Method::GET,
                target: Bytes::from_static(b"/x"),
                headers: hdrs.clone().into(),
                client_ip: None,
                request_id: Bytes::from_static(b"x-1_Z"),
            }),
            Frame::ResponseHead(ResponseHead { status: StatusCode::OK, headers: hdrs.into(), reason: Bytes::new() }),
            Frame::ResponseHead(ResponseHead {
                status: StatusCode::from_u16(599).unwrap(),
                headers: Headers::default(),
                reason: Bytes::from_static(b"Weird \x80 \tphrase"),
            }),
            Frame::ResponseHead(ResponseHead {
                status: StatusCode::NO_CONTENT,
                headers: Headers::default(),
                reason: Bytes::new(),
            }),
        ]
    }

    fn put_bytes_field(tag: u32, value: &[u8], dst: &mut BytesMut) {
        encode_key(tag, WireType::LengthDelimited, dst);
        encode_varint(value.len() as u64, dst);
        dst.put_slice(value);
    }

    /// A frame body holding one request head whose content is `inner`.
    fn request_head_body(inner: &[u8]) -> Bytes {
        head_body(REQUEST_HEAD, inner)
    }

    /// A frame body holding one head (`field`: request or response) whose content is `inner`.
    fn head_body(field: u32, inner: &[u8]) -> Bytes {
        let mut body = BytesMut::new();
        encode_key(field, WireType::LengthDelimited, &mut body);
        encode_varint(inner.len() as u64, &mut body);
        body.extend_from_slice(inner);
        body.freeze()
    }

    /// What the generated code writes for `frame`.
    fn generated(frame: &Frame) -> Bytes {
        let raw = pb::Frame::from(frame);
        let mut buf = BytesMut::new();
        buf.put_u32(raw.encoded_len() as u32);
        raw.encode_raw(&mut buf);
        buf.freeze()
    }

    #[test]
    fn writes_the_bytes_the_generated_code_writes() {
        for frame in heads() {
            assert_eq!(codec::encode_to_bytes(&frame), generated(&frame), "{frame:?}");
        }
    }

    #[test]
    fn reads_what_it_writes_and_as_the_generated_code_reads() {
        for frame in heads() {
            let bytes = codec::encode_to_bytes(&frame);
            let body = bytes.slice(4..);
            let fast = fast(&body).unwrap().expect("a head in the usual layout");
            assert_eq!(fast, frame);
            let slow = Frame::try_from(pb::Frame::decode(body).unwrap()).unwrap();
            assert_eq!(slow, frame);
        }
    }

    /// Other valid layouts (an unknown field first, a head field twice) are
    /// left to the generated decoder, with the same result as protobuf gives.
    #[test]
    fn other_layouts_are_read_by_the_generated_decoder() {
        let frame = &heads()[0];
        let bytes = codec::encode_to_bytes(frame);
        let mut unusual = BytesMut::new();
        encode_key(15, WireType::Varint, &mut unusual);
        encode_varint(1, &mut unusual);
        unusual.extend_from_slice(&bytes[4..]);
        assert_eq!(fast(&unusual.clone().freeze()).unwrap(), None);
        let mut framed = BytesMut::new();
        framed.put_u32(unusual.len() as u32);
        framed.extend_from_slice(&unusual);
        assert_eq!(codec::decode(&mut framed).unwrap().as_ref(), Some(frame));
    }

    #[test]
    fn unknown_fields_inside_a_head_are_skipped() {
        let mut inner = BytesMut::new();
        put_bytes_field(1, b"GET", &mut inner);
        encode_key(9, WireType::SixtyFourBit, &mut inner);
        inner.put_u64(7);
        encode_key(10, WireType::ThirtyTwoBit, &mut inner);
        inner.put_u32(7);
        put_bytes_field(2, b"/p", &mut inner);
        let Some(Frame::RequestHead(head)) = fast(&request_head_body(&inner)).unwrap() else {
            panic!("a request head")
        };
        assert_eq!((head.method, &head.target[..]), (Method::GET, &b"/p"[..]));
    }

    /// A head may carry `MAX_HEADERS` header lines and no more, in either
    /// layout: `HeaderMap` panics past 32,768, and a 1 MiB frame holds far more.
    #[test]
    fn header_count_is_bounded() {
        for (count, ok) in [(MAX_HEADERS, true), (MAX_HEADERS + 1, false), (200_000, false)] {
            let mut inner = BytesMut::new();
            put_bytes_field(1, b"GET", &mut inner);
            put_bytes_field(2, b"/", &mut inner);
            for _ in 0..count {
                // `a: ` (name 1 = "a", no value).
                put_bytes_field(3, b"\x0a\x01a", &mut inner);
            }
            let body = request_head_body(&inner);
            match fast(&body) {
                Ok(Some(Frame::RequestHead(head))) => {
                    assert!(ok, "{count} headers accepted");
                    assert_eq!(head.headers.len(), count);
                }
                Err(err) => assert_eq!((ok, err), (false, InvalidFrame::TooManyHeaders(count).into())),
                Ok(other) => panic!("{other:?}"),
            }
            // The generated decoder, for another layout, agrees.
            let mut unusual = BytesMut::from(&[0x78, 0x01][..]);
            unusual.extend_from_slice(&body);
            let slow = pb::Frame::decode(unusual.freeze()).map(|raw| Frame::try_from(raw).map(|_| ()));
            assert_eq!(slow, Ok(if ok { Ok(()) } else { Err(InvalidFrame::TooManyHeaders(count)) }));
        }
    }

    /// A request id is shown in a terminal and typed back into commands: one
    /// with another byte than a letter, digit, `_` or `-`, or longer than
    /// `MAX_REQUEST_ID`, is refused in either layout.
    #[test]
    fn request_ids_are_checked() {
        let long_ok = "r".repeat(MAX_REQUEST_ID);
        let too_long = "r".repeat(MAX_REQUEST_ID + 1);
        let cases: [(&[u8], bool); 6] = [
            (b"req_0192f3a4b5c600000001", true),
            (long_ok.as_bytes(), true),
            (too_long.as_bytes(), false),
            (b"req 1", false),
            (b"req_1[2J", false),
            ("req_é".as_bytes(), false),
        ];
        for (id, ok) in cases {
            let mut inner = BytesMut::new();
            put_bytes_field(1, b"GET", &mut inner);
            put_bytes_field(2, b"/", &mut inner);
            put_bytes_field(5, id, &mut inner);
            let body = request_head_body(&inner);
            match fast(&body) {
                Ok(Some(Frame::RequestHead(head))) => {
                    assert!(ok, "{id:?} accepted");
                    assert_eq!(&head.request_id[..], id);
                }
                Err(err) => assert_eq!((ok, err), (false, InvalidFrame::RequestId.into()), "{id:?}"),
                Ok(other) => panic!("{other:?}"),
            }
            let mut unusual = BytesMut::from(&[0x78, 0x01][..]);
            unusual.extend_from_slice(&body);
            let slow = pb::Frame::decode(unusual.freeze()).map(|raw| Frame::try_from(raw).map(|_| ()));
            assert_eq!(slow, Ok(if ok { Ok(()) } else { Err(InvalidFrame::RequestId) }), "{id:?}");
        }
    }

    /// A reason phrase is what an HTTP/1 status line may carry, and bounded:
    /// a line break in one would let a tunnel client write the caller's
    /// headers (the edge hands it to hyper, which writes it as it is).
    #[test]
    fn reason_phrases_are_checked() {
        let long_ok = "r".repeat(MAX_REASON);
        let too_long = "r".repeat(MAX_REASON + 1);
        let cases: [(&[u8], bool); 7] = [
            (b"Everything Fine Here", true),
            (b"Caf\xe9\tok", true),
            (long_ok.as_bytes(), true),
            (too_long.as_bytes(), false),
            (b"OK\r\nSet-Cookie: x=1", false),
            (b"nul\0", false),
            (b"del\x7f", false),
        ];
        for (reason, ok) in cases {
            let mut inner = BytesMut::new();
            encode_key(1, WireType::Varint, &mut inner);
            encode_varint(599, &mut inner);
            put_bytes_field(3, reason, &mut inner);
            let body = head_body(RESPONSE_HEAD, &inner);
            match fast(&body) {
                Ok(Some(Frame::ResponseHead(head))) => {
                    assert!(ok, "{reason:?} accepted");
                    assert_eq!(&head.reason[..], reason);
                }
                Err(err) => assert_eq!((ok, err), (false, InvalidFrame::Reason.into()), "{reason:?}"),
                Ok(other) => panic!("{other:?}"),
            }
            let slow = pb::Frame::decode(body).map(|raw| Frame::try_from(raw).map(|_| ()));
            assert_eq!(slow, Ok(if ok { Ok(()) } else { Err(InvalidFrame::Reason) }), "{reason:?}");
        }
    }

    #[test]
    fn malformed_heads_are_errors() {
        let good = codec::encode_to_bytes(&heads()[0]).slice(4..);
        // Every truncation of the head's content, with the outer length fixed up.
        let inner_len = prost::encoding::decode_varint(&mut &good[1..]).unwrap() as usize;
        let inner_start = good.len() - inner_len;
        for cut in inner_start + 1..good.len() {
            let inner = &good[inner_start..cut];
            let body = request_head_body(inner);
            // Cut at a field boundary it is a smaller valid head or an invalid
            // one; inside a field it is malformed. Never a panic, and the
            // generated decoder agrees on whether it is acceptable.
            let fast = fast(&body);
            let slow = pb::Frame::decode(body.clone())
                .map_err(DecodeError::from)
                .and_then(|raw| Frame::try_from(raw).map_err(DecodeError::from));
            assert_eq!(fast.is_ok(), slow.is_ok(), "cut at {cut}: {fast:?} vs {slow:?}");
        }
        let bad_header = {
            let mut h = BytesMut::new();
            put_bytes_field(1, b"bad name", &mut h);
            let mut inner = BytesMut::new();
            put_bytes_field(1, b"GET", &mut inner);
            put_bytes_field(2, b"/", &mut inner);
            encode_key(3, WireType::LengthDelimited, &mut inner);
            encode_varint(h.len() as u64, &mut inner);
            inner.extend_from_slice(&h);
            request_head_body(&inner)
        };
        // Well-formed protobuf: the frame decodes, and the HTTP grammar is
        // checked where the `HeaderMap` is built.
        let Some(Frame::RequestHead(head)) = fast(&bad_header).unwrap() else { panic!("a request head") };
        assert_eq!(head.headers.into_map().unwrap_err(), InvalidFrame::Header);
    }
}
