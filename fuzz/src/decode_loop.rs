//! The decode loop shared by the `decode` fuzz target and `tests/fuzz_corpus.rs`
//! (which includes this file by path, so it may only use `hookway` and `bytes`).
//!
//! Properties checked on any input:
//! * decoding never panics;
//! * `Ok(None)` consumes and alters nothing, and only happens when the buffer
//!   really is short of the announced frame;
//! * `Ok(Some(_))` consumes exactly the prefix plus the announced length;
//! * `Err(TooLarge)` consumes nothing and is only raised above `MAX_FRAME_LEN`;
//! * every decoded frame re-encodes to bytes that decode to an equal frame, and
//!   re-encoding that is byte-for-byte stable;
//! * a decoded head has at most `MAX_HEADERS` headers, and building its
//!   `HeaderMap` keeps every line or fails cleanly;
//! * feeding the same bytes through `FrameDecoder`, in chunks of one byte, of a
//!   few bytes or all at once, gives the same frames and the same final outcome;
//! * so does a decoder that streams body frames, except that a body frame may
//!   come as several non-empty pieces that add up to it exactly (and the pieces
//!   of a body cut short by the end of the input may follow the last frame).

use bytes::BytesMut;
use hookway::wire::{self, DecodeError, Frame, FrameDecoder, LEN_PREFIX, MAX_FRAME_LEN};

/// Every frame kind, named as the corpus files and reports name them.
pub const KINDS: [&str; 12] = [
    "client_hello",
    "server_hello",
    "rejected",
    "session_ended",
    "leaving",
    "ping",
    "pong",
    "request_head",
    "response_head",
    "body",
    "end",
    "error",
];

/// The name of a frame's kind, one of [`KINDS`].
pub fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::ClientHello(_) => "client_hello",
        Frame::ServerHello(_) => "server_hello",
        Frame::Rejected(_) => "rejected",
        Frame::SessionEnded(_) => "session_ended",
        Frame::Leaving => "leaving",
        Frame::Ping(_) => "ping",
        Frame::Pong(_) => "pong",
        Frame::RequestHead(_) => "request_head",
        Frame::ResponseHead(_) => "response_head",
        Frame::Body(_) => "body",
        Frame::End => "end",
        Frame::Error(_) => "error",
    }
}

/// How a decode loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The rest of the input is an incomplete frame (possibly empty).
    NeedMore,
    /// The decoder rejected the input.
    Error(DecodeError),
}

/// Frames decoded from one input, and how decoding stopped.
#[derive(Debug)]
pub struct Outcome {
    /// Frames decoded, in order.
    pub frames: Vec<Frame>,
    /// How the loop ended.
    pub end: End,
    /// Bytes left undecoded at the end.
    pub rest: usize,
}

/// The announced length of the frame at the front of `rest`, if it has a prefix.
fn announced_len(rest: &[u8]) -> Option<usize> {
    let prefix: [u8; LEN_PREFIX] = rest.get(..LEN_PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Decodes `data` with repeated `wire::decode` calls until `Ok(None)` or an
/// error, checking every property listed in the module docs.
pub fn check(data: &[u8]) -> Outcome {
    let outcome = decode_all(data);
    for size in [1, 7, 61, data.len().max(1)] {
        let chunked = decode_in_chunks(FrameDecoder::new(), data, size);
        assert_eq!(outcome.frames, chunked.frames, "decoding in {size}-byte chunks disagrees");
        assert_eq!(outcome.end, chunked.end, "decoding in {size}-byte chunks ends differently");
        let streamed = decode_in_chunks(FrameDecoder::streaming_bodies(0), data, size);
        assert_eq!(outcome.end, streamed.end, "streaming bodies in {size}-byte chunks ends differently");
        // What the whole-frame decoder left undecoded: a streamed body's first
        // pieces may come from it.
        let rest = (outcome.end == End::NeedMore).then(|| &data[data.len() - outcome.rest..]);
        check_pieces(&outcome.frames, &streamed.frames, rest, &format!("in {size}-byte chunks"));
    }
    outcome
}

/// Asserts that `streamed` is `whole` with body frames possibly in pieces,
/// none empty. `cut_short` is the input's undecoded end, if it ended inside a
/// frame: a streamed body's first pieces may come from it, and are then
/// exactly its last bytes. `context` says which decoding this is.
pub fn check_pieces(whole: &[Frame], streamed: &[Frame], cut_short: Option<&[u8]>, context: &str) {
    let mut got = streamed.iter();
    for frame in whole {
        let Frame::Body(body) = frame else {
            assert_eq!(got.next(), Some(frame), "streaming bodies {context} disagrees");
            continue;
        };
        if body.is_empty() {
            // Its header is all of it: never streamed.
            assert_eq!(got.next(), Some(frame), "an empty body {context}");
            continue;
        }
        let mut joined = Vec::new();
        while joined.len() < body.len() {
            match got.next() {
                Some(Frame::Body(piece)) if !piece.is_empty() => joined.extend_from_slice(piece),
                other => panic!("a body {context} interrupted by {other:?}"),
            }
        }
        assert_eq!(&joined[..], &body[..], "a body's pieces {context} differ");
    }
    // Anything more is the start of a body the input cuts short.
    let mut joined = Vec::new();
    for extra in got {
        match extra {
            Frame::Body(piece) if !piece.is_empty() => joined.extend_from_slice(piece),
            other => panic!("an extra {other:?} {context}"),
        }
    }
    if !joined.is_empty() {
        let rest = cut_short.unwrap_or_else(|| panic!("pieces of a body {context} that the input does not cut short"));
        assert_eq!(rest.get(LEN_PREFIX), Some(&0x42), "pieces {context} of a frame that is no body");
        assert!(rest.len() > joined.len() && rest.ends_with(&joined), "pieces {context} not from the cut-short body");
    }
}

fn decode_all(data: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        let rest = &data[data.len() - buf.len()..];
        match wire::decode(&mut buf) {
            Ok(None) => {
                assert_eq!(&buf[..], rest, "Ok(None) consumed or altered bytes");
                if let Some(len) = announced_len(rest) {
                    assert!(rest.len() < LEN_PREFIX + len, "Ok(None) with a whole frame buffered");
                }
                return Outcome { frames, end: End::NeedMore, rest: buf.len() };
            }
            Ok(Some(frame)) => {
                let len = announced_len(rest).expect("a frame without a length prefix");
                assert!(len <= MAX_FRAME_LEN, "decoded a frame over MAX_FRAME_LEN");
                assert_eq!(buf.len(), rest.len() - LEN_PREFIX - len, "decode consumed the wrong amount");
                assert_eq!(&buf[..], &rest[LEN_PREFIX + len..], "decode altered the remaining bytes");
                check_reencode(&frame);
                frames.push(frame);
            }
            Err(err) => {
                if let DecodeError::TooLarge(len) = err {
                    assert!(len > MAX_FRAME_LEN, "TooLarge({len}) within the limit");
                    assert_eq!(announced_len(rest), Some(len), "TooLarge reports the wrong length");
                    assert_eq!(&buf[..], rest, "TooLarge consumed bytes");
                }
                return Outcome { frames, end: End::Error(err), rest: buf.len() };
            }
        }
    }
}

/// The same input pushed into `decoder` in chunks of `size` bytes (the last
/// may be shorter), draining it after every push. Whole chunks exercise frames
/// cut out of a chunk without a copy; small ones, frames assembled across
/// chunks (or, in a streaming decoder, bodies in pieces); sizes in between,
/// both in turn.
fn decode_in_chunks(mut decoder: FrameDecoder, data: &[u8], size: usize) -> Outcome {
    let mut frames = Vec::new();
    for chunk in data.chunks(size) {
        decoder.push(bytes::Bytes::copy_from_slice(chunk));
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return Outcome { frames, end: End::Error(err), rest: decoder.pending() },
            }
        }
    }
    Outcome { frames, end: End::NeedMore, rest: decoder.pending() }
}

/// Asserts that `frame` survives encode → decode unchanged, and that encoding is
/// deterministic.
pub fn check_reencode(frame: &Frame) {
    let bytes = wire::encode_to_bytes(frame);
    let mut buf = BytesMut::from(&bytes[..]);
    let again = match wire::decode(&mut buf) {
        Ok(Some(again)) => again,
        other => panic!("re-encoded {frame:?} does not decode: {other:?}"),
    };
    assert_eq!(&again, frame, "frame changed through encode/decode");
    assert!(buf.is_empty(), "re-encoded frame left {} trailing bytes", buf.len());
    assert_eq!(wire::encode_to_bytes(&again), bytes, "encoding is not deterministic");
    check_header_map(frame);
}

/// A decoded head's headers become a `HeaderMap` (where their HTTP grammar is
/// checked) or a clean error, and an accepted map has every header line.
fn check_header_map(frame: &Frame) {
    let headers = match frame {
        Frame::RequestHead(head) => &head.headers,
        Frame::ResponseHead(head) => &head.headers,
        _ => return,
    };
    assert!(headers.len() <= wire::MAX_HEADERS, "a head with {} headers decoded", headers.len());
    if let Ok(map) = headers.clone().into_map() {
        assert_eq!(map.len(), headers.len(), "header lines lost building the HeaderMap");
    }
}
