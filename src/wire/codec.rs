//! Length-delimited framing: a 4-byte big-endian length, then one protobuf `Frame`.
//!
//! A fixed-width prefix keeps "need more bytes" trivially distinct from "malformed":
//! with fewer than four bytes, or fewer than the announced length, decoding answers
//! `Ok(None)` and consumes nothing. The length is checked against [`MAX_FRAME_LEN`]
//! before any buffer is reserved, so a peer cannot make us allocate what it claims.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use super::frame::{Frame, InvalidFrame};
use super::pb;

/// Hard maximum size of one encoded frame (without its length prefix).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The protobuf key of a body frame's one field: field 8 (`body`), wire type 2
/// (length-delimited). One byte, written by [`encode_body_header`] and looked
/// for by the streaming decoder.
const BODY_KEY: u8 = (8 << 3) | 2;

/// Why a buffer could not be decoded. All variants are the peer's fault and final:
/// the stream they arrived on should be reset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The bytes are not a protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A head frame's protobuf is malformed (read by the `wire::head` walker).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The protobuf is well-formed but its content is not acceptable.
    #[error("invalid frame: {0}")]
    Invalid(#[from] InvalidFrame),
}

/// Decodes one frame from the front of `src`.
///
/// Returns `Ok(None)` (consuming nothing) when `src` does not yet hold a whole
/// frame; on success the frame's bytes are split off `src`, and `Bytes` fields of
/// the frame share that allocation instead of copying it.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(len) = peek_len(src)? else {
        return Ok(None);
    };
    if src.len() < LEN_PREFIX + len {
        // Reserve for the rest of this frame only: `len` is already bounded.
        src.reserve(LEN_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    let body = src.split_to(len).freeze();
    decode_body(body).map(Some)
}

/// Reads and checks the length prefix without consuming it.
fn peek_len(src: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Decodes a frame body (the bytes after the prefix).
fn decode_body(body: Bytes) -> Result<Frame, DecodeError> {
    if let Some(layout) = super::head::layout(&body) {
        return super::head::decode(body, layout);
    }
    let raw = pb::Frame::decode(body)?;
    Ok(Frame::try_from(raw)?)
}

/// Appends `frame`, length-prefixed, to `dst`.
///
/// # Panics
/// Never for frames built by this crate: heads are bounded by the HTTP layer and
/// bodies by [`super::MAX_BODY_CHUNK`]. A frame over [`MAX_FRAME_LEN`] is a bug in
/// the caller, caught by a debug assertion; in release it is still written and the
/// peer rejects it.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::RequestHead(head) => return super::head::encode_request(head, dst),
        Frame::ResponseHead(head) => return super::head::encode_response(head, dst),
        _ => {}
    }
    let raw = pb::Frame::from(frame);
    let len = raw.encoded_len();
    debug_assert!(len <= MAX_FRAME_LEN, "encoding an oversized frame ({len} bytes)");
    dst.reserve(LEN_PREFIX + len);
    dst.put_u32(len as u32);
    raw.encode_raw(dst);
}

/// Writes the prefix and protobuf field header of a [`Frame::Body`] of `len`
/// bytes, so the body itself can be sent as its own buffer without a copy.
/// `header + body` is byte-for-byte what [`encode`] produces for the same frame.
pub fn encode_body_header(len: usize, dst: &mut BytesMut) {
    let key = u64::from(BODY_KEY);
    let frame_len = prost::encoding::encoded_len_varint(key) + prost::encoding::encoded_len_varint(len as u64) + len;
    dst.put_u32(frame_len as u32);
    prost::encoding::encode_varint(key, dst);
    prost::encoding::encode_varint(len as u64, dst);
}

/// Encodes one frame into a fresh buffer.
pub fn encode_to_bytes(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf);
    buf.freeze()
}

/// Incremental decoder over byte chunks from any source (the QUIC
/// [`crate::quic::FrameReader`] feeds it stream chunks).
///
/// A frame that arrives whole inside one chunk (a head, `End`, a small body) is
/// cut out of that chunk without a copy: its `Bytes` fields share the chunk,
/// which is itself a slice of the datagram QUIC received. A frame split across
/// chunks is assembled in a buffer of its own, except, in a decoder made by
/// [`FrameDecoder::streaming_bodies`], a large body frame: its payload is handed
/// out piece by piece as it arrives, each piece a slice of its chunk. (Only when
/// a chunk ends inside the frame's few header bytes is the next chunk copied
/// into the buffer, and that one piece is a slice of the copy.)
///
/// Holds at most one partial frame plus whatever the caller pushed; bounded by
/// [`MAX_FRAME_LEN`] as long as the caller drains frames before pushing more.
#[derive(Debug)]
pub struct FrameDecoder {
    /// A frame split across chunks, being assembled.
    buf: BytesMut,
    /// The undecoded rest of the last chunk pushed while `buf` was empty.
    chunk: Bytes,
    /// Payload bytes of the body frame being streamed that are still to come.
    body_left: usize,
    /// Body frames with a payload over this are streamed (`usize::MAX`: none).
    stream_over: usize,
}

impl FrameDecoder {
    /// A decoder that hands out whole frames only.
    pub fn new() -> Self {
        Self::streaming_bodies(usize::MAX)
    }

    /// A decoder that hands out a body frame whose payload is over `min_len`
    /// bytes, and that does not arrive in one chunk, as one or more
    /// [`Frame::Body`] pieces, in order, none empty, whose concatenation is the
    /// frame's payload: a piece as soon as its bytes are pushed.
    ///
    /// Why: a body frame (up to [`super::MAX_BODY_CHUNK`]) spans dozens of
    /// QUIC packets, and assembling it copied every byte of every large body
    /// once more on each side of the tunnel. A body's consumer only streams it
    /// on, so it can take the packets' own slices. Small frames stay whole, so
    /// a small request body still comes as one frame and keeps its known length.
    pub fn streaming_bodies(min_len: usize) -> Self {
        Self { buf: BytesMut::new(), chunk: Bytes::new(), body_left: 0, stream_over: min_len }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: Bytes) {
        if self.buf.is_empty() && self.chunk.is_empty() {
            self.chunk = bytes;
        } else {
            self.assemble();
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Moves the chunk's rest into the assembly buffer.
    fn assemble(&mut self) {
        if !self.chunk.is_empty() {
            self.buf.extend_from_slice(&std::mem::take(&mut self.chunk));
        }
    }

    /// The next complete frame (or the next piece of a streamed body), if what
    /// was pushed holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.body_left > 0 {
            return Ok(self.body_piece());
        }
        if !self.chunk.is_empty() {
            match peek_len(&self.chunk)? {
                Some(len) if self.chunk.len() >= LEN_PREFIX + len => {
                    self.chunk.advance(LEN_PREFIX);
                    return decode_body(self.chunk.split_to(len)).map(Some);
                }
                // The chunk ends inside a frame: stream it, or wait for the rest in `buf`.
                _ => match self.streamed_body(&self.chunk) {
                    Some((header, payload)) => {
                        self.chunk.advance(header);
                        self.body_left = payload;
                        return Ok(self.body_piece());
                    }
                    None => self.assemble(),
                },
            }
        }
        if let Some((header, payload)) = self.streamed_body(&self.buf) {
            self.buf.advance(header);
            self.body_left = payload;
            return Ok(self.body_piece());
        }
        decode(&mut self.buf)
    }

    /// For a body frame to stream that starts `src` but does not end in it:
    /// the length of its prefix and field header, and of its payload. `None`
    /// for anything else, including a header not yet whole, which then waits
    /// for more bytes like any partial frame.
    fn streamed_body(&self, src: &[u8]) -> Option<(usize, usize)> {
        let len = peek_len(src).ok()??;
        if src.len() >= LEN_PREFIX + len || src.get(LEN_PREFIX) != Some(&BODY_KEY) {
            return None;
        }
        let mut pos = LEN_PREFIX + 1;
        let payload = super::walk::varint(src, &mut pos)?;
        // The frame must be exactly that one field, its length written the way
        // prost reads it; anything unusual is left to the whole-frame decoder.
        // The announced length is the peer's: compared, never added to.
        let field_header = pos - LEN_PREFIX;
        let minimal = prost::encoding::encoded_len_varint(payload) == field_header - 1;
        let payload = usize::try_from(payload).ok()?;
        (minimal && len.checked_sub(field_header) == Some(payload) && payload > self.stream_over)
            .then_some((pos, payload))
    }

    /// The next piece of the body being streamed, from what is buffered.
    fn body_piece(&mut self) -> Option<Frame> {
        // At most one of `buf` and `chunk` holds bytes (see `push`).
        let piece = if !self.buf.is_empty() {
            self.buf.split_to(self.buf.len().min(self.body_left)).freeze()
        } else if !self.chunk.is_empty() {
            self.chunk.split_to(self.chunk.len().min(self.body_left))
        } else {
            return None;
        };
        self.body_left -= piece.len();
        Some(Frame::Body(piece))
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.chunk.len()
    }

    /// Whether the bytes so far end inside a frame: pending bytes, or a
    /// streamed body whose payload is not all here. A stream that ends now is
    /// truncated.
    pub fn in_frame(&self) -> bool {
        self.pending() != 0 || self.body_left != 0
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::RequestHead;
    use http::{HeaderMap, HeaderValue, Method};

    fn head() -> Frame {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-github-event", HeaderValue::from_static("push"));
        Frame::RequestHead(RequestHead {
            method: Method::POST,
            target: Bytes::from_static(b"/hooks/github?delivery=1"),
            headers: headers.into(),
            client_ip: Some("203.0.113.7".parse().unwrap()),
            request_id: Bytes::from_static(b"req_0192f3a4b5c600000001"),
        })
    }

    #[test]
    fn round_trip() {
        let frames = [head(), Frame::Body(Bytes::from_static(b"{}")), Frame::End, Frame::Ping(7)];
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf);
        }
        for f in &frames {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    /// Frames whole in a chunk are cut out of it (their bytes point into the
    /// chunk); a frame split across chunks is assembled; nothing is lost in
    /// between.
    #[test]
    fn decoder_slices_whole_frames_and_assembles_split_ones() {
        let frames = [head(), Frame::Body(Bytes::from_static(b"payload")), Frame::End];
        let mut all = BytesMut::new();
        for f in &frames {
            encode(f, &mut all);
        }
        let all = all.freeze();
        let within = |b: &Bytes, chunk: &Bytes| {
            let (p, c) = (b.as_ptr() as usize, chunk.as_ptr() as usize);
            p >= c && p + b.len() <= c + chunk.len()
        };
        let mut decoder = FrameDecoder::new();
        decoder.push(all.clone());
        assert_eq!(decoder.next_frame().unwrap().as_ref(), Some(&frames[0]));
        match decoder.next_frame().unwrap() {
            Some(Frame::Body(data)) => assert!(within(&data, &all), "a whole frame is not copied"),
            other => panic!("{other:?}"),
        }
        assert_eq!(decoder.next_frame().unwrap(), Some(Frame::End));
        assert_eq!((decoder.next_frame().unwrap(), decoder.pending()), (None, 0));

        // Every split point: the first chunk ends inside some frame.
        for cut in 1..all.len() {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in [all.slice(..cut), all.slice(cut..)] {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "cut at {cut}");
            assert_eq!(decoder.pending(), 0);
        }
    }

    /// A large body frame split across chunks comes out in pieces that add
    /// up to it, wherever the chunks are cut; small bodies and other frames
    /// stay whole.
    #[test]
    fn a_streaming_decoder_hands_out_large_bodies_in_pieces() {
        let big = Bytes::from((0..200u8).collect::<Vec<u8>>());
        let frames = [head(), Frame::Body(Bytes::from_static(b"small")), Frame::Body(big.clone()), Frame::End];
        let mut all = BytesMut::new();
        for f in &frames {
            encode(f, &mut all);
        }
        let all = all.freeze();
        for a in 1..all.len() {
            for b in a..all.len() {
                let mut decoder = FrameDecoder::streaming_bodies(16);
                let mut got = Vec::new();
                for chunk in [all.slice(..a), all.slice(a..b), all.slice(b..)] {
                    decoder.push(chunk);
                    while let Some(frame) = decoder.next_frame().unwrap() {
                        got.push(frame);
                    }
                }
                assert_eq!(got[..2], frames[..2], "cuts at {a}, {b}");
                assert_eq!(got.last(), Some(&Frame::End), "cuts at {a}, {b}");
                let mut joined = Vec::new();
                for piece in &got[2..got.len() - 1] {
                    let Frame::Body(piece) = piece else { panic!("cuts at {a}, {b}: {piece:?}") };
                    assert!(!piece.is_empty(), "cuts at {a}, {b}: an empty piece");
                    joined.extend_from_slice(piece);
                }
                assert_eq!(joined, big, "cuts at {a}, {b}");
                assert!(!decoder.in_frame());
                // A cut strictly inside the payload gives two pieces at least.
                let end = all.len() - encode_to_bytes(&Frame::End).len();
                let inside = end - big.len() + 1..end;
                if inside.contains(&a) || inside.contains(&b) {
                    assert!(got.len() - 3 > 1, "cuts at {a}, {b}: one piece");
                }
            }
        }
    }

    /// `min_len` itself is not over the threshold: such a frame is assembled
    /// whole; one byte more and it streams.
    #[test]
    fn the_streaming_threshold_is_exclusive() {
        for (len, whole) in [(100, true), (101, false)] {
            let body = Bytes::from(vec![3u8; len]);
            let all = encode_to_bytes(&Frame::Body(body.clone()));
            let mut decoder = FrameDecoder::streaming_bodies(100);
            let mut got = Vec::new();
            for chunk in [all.slice(..50), all.slice(50..)] {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            if whole {
                assert_eq!(got, [Frame::Body(body)], "{len} bytes");
            } else {
                assert_eq!(got.len(), 2, "{len} bytes");
                let joined: Vec<u8> = got
                    .iter()
                    .flat_map(|f| match f {
                        Frame::Body(b) => b.to_vec(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(joined, body);
            }
        }
    }

    /// Pushed twice without draining, the second chunk is copied after the
    /// first; the body's pieces then come out of that buffer and stop where the
    /// body ends, before the next frame.
    #[test]
    fn streamed_pieces_from_the_buffer_stop_at_the_end_of_the_body() {
        let body = Bytes::from((0..=255u8).cycle().take(1000).collect::<Vec<u8>>());
        let mut all = BytesMut::new();
        encode(&Frame::Body(body.clone()), &mut all);
        encode(&Frame::End, &mut all);
        let all = all.freeze();
        let mut decoder = FrameDecoder::streaming_bodies(16);
        decoder.push(all.slice(..200));
        let Some(Frame::Body(first)) = decoder.next_frame().unwrap() else { panic!("a first piece") };
        decoder.push(all.slice(200..600));
        decoder.push(all.slice(600..));
        let Some(Frame::Body(rest)) = decoder.next_frame().unwrap() else { panic!("the rest") };
        assert_eq!([first, rest].concat(), body);
        assert_eq!(decoder.next_frame().unwrap(), Some(Frame::End));
        assert!(!decoder.in_frame());
    }

    /// The pieces are slices of the chunks they arrived in, and a decoder in
    /// the middle of one knows it is inside a frame.
    #[test]
    fn streamed_body_pieces_are_not_copied() {
        let big = Bytes::from(vec![9u8; 1000]);
        let all = encode_to_bytes(&Frame::Body(big.clone()));
        let (first, second) = (all.slice(..300), all.slice(300..));
        let mut decoder = FrameDecoder::streaming_bodies(16);
        decoder.push(first.clone());
        let Some(Frame::Body(a)) = decoder.next_frame().unwrap() else { panic!("a first piece") };
        assert_eq!(a.as_ptr(), first[LEN_PREFIX + 3..].as_ptr(), "a slice of the first chunk");
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert!(decoder.in_frame() && decoder.pending() == 0, "inside the frame, with nothing buffered");
        decoder.push(second.clone());
        let Some(Frame::Body(b)) = decoder.next_frame().unwrap() else { panic!("a second piece") };
        assert_eq!(b.as_ptr(), second.as_ptr(), "a slice of the second chunk");
        assert_eq!([a, b].concat(), big);
        assert!(!decoder.in_frame());

        // A whole-frame decoder assembles the same frame.
        let mut whole = FrameDecoder::new();
        whole.push(first);
        assert_eq!(whole.next_frame().unwrap(), None);
        whole.push(second);
        assert_eq!(whole.next_frame().unwrap(), Some(Frame::Body(big)));
    }

    #[test]
    fn body_header_matches_full_encoding() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, super::super::MAX_BODY_CHUNK] {
            let body = Bytes::from(vec![7u8; len]);
            let mut split = BytesMut::new();
            encode_body_header(len, &mut split);
            split.extend_from_slice(&body);
            assert_eq!(split.freeze(), encode_to_bytes(&Frame::Body(body)), "len {len}");
        }
    }

    #[test]
    fn every_truncation_needs_more_bytes() {
        let bytes = encode_to_bytes(&head());
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert_eq!(decode(&mut buf), Err(DecodeError::TooLarge(u32::MAX as usize)));
        assert!(buf.capacity() < 1024, "no allocation sized by the peer");
        let mut buf = BytesMut::from(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes()[..]);
        assert!(matches!(decode(&mut buf), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf), Err(DecodeError::Protobuf(_))));
        // An empty Frame (no oneof set) is well-formed protobuf but not a frame.
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(decode(&mut buf), Err(DecodeError::Invalid(_))));
    }

    /// A header name breaking the HTTP grammar is refused in either layout:
    /// the usual one when its `HeaderMap` is built, another one (left to the
    /// generated decoder, which builds the map at once) on decode.
    #[test]
    fn invalid_header_is_rejected() {
        let raw = pb::Frame {
            kind: Some(pb::frame::Kind::RequestHead(pb::RequestHead {
                method: Bytes::from_static(b"GET"),
                target: Bytes::from_static(b"/"),
                headers: vec![pb::Header { name: Bytes::from_static(b"bad name"), value: Bytes::new() }],
                client_ip: Bytes::new(),
                request_id: Bytes::new(),
            })),
        };
        let mut buf = BytesMut::new();
        buf.put_u32(raw.encoded_len() as u32);
        raw.encode_raw(&mut buf);
        let Ok(Some(Frame::RequestHead(head))) = decode(&mut buf) else { panic!("a request head") };
        assert_eq!(head.headers.into_map(), Err(InvalidFrame::Header));

        // An unknown varint field (number 15) before the head.
        let mut unusual = BytesMut::from(&[0x78, 0x01][..]);
        raw.encode_raw(&mut unusual);
        let mut buf = BytesMut::new();
        buf.put_u32(unusual.len() as u32);
        buf.extend_from_slice(&unusual);
        assert_eq!(decode(&mut buf), Err(DecodeError::Invalid(InvalidFrame::Header)));
    }
}
