//! The tunnel's wire protocol, sans IO.
//!
//! Nothing here touches a socket or a clock: [`codec`] turns bytes into validated
//! [`Frame`]s and back, which is what the fuzzer and the benchmarks exercise. The
//! protobuf types generated from `proto/hookway.proto` stay private to this module;
//! everything outside sees the validated domain types in [`frame`].

pub mod codec;
pub mod frame;
mod head;
pub mod headers;
mod walk;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/hookway.v1.rs"));
}

pub use codec::{DecodeError, FrameDecoder, LEN_PREFIX, MAX_FRAME_LEN, decode, encode, encode_to_bytes};
pub use frame::{
    ClientHello, Frame, MAX_HEADERS, MAX_REASON, RejectCode, Rejected, RequestHead, ResponseHead, ServerHello,
    SessionEnded, StreamError, StreamErrorCode, is_id,
};
pub use headers::Headers;

/// Version of the frame protocol spoken by this build; sent in [`ClientHello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier negotiated on the QUIC connection.
pub const ALPN: &[u8] = b"hookway/1";

/// Largest body chunk a sender puts in one [`Frame::Body`]; well under
/// [`MAX_FRAME_LEN`] so a frame never has to be split.
pub const MAX_BODY_CHUNK: usize = 256 * 1024;
