//! Frames over QUIC streams: the IO edge of [`crate::wire`].

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use crate::wire::{self, DecodeError, Frame, FrameDecoder};

/// Bodies whose size is known to be at most this are read whole and sent in the
/// same write as their head and end: one packet for a typical webhook.
pub const INLINE_BODY: u64 = 64 * 1024;

/// How sending a message (head, body, end) ended.
#[derive(Debug)]
pub enum SendOutcome {
    /// Everything, including `End`, was written; the caller may finish the stream.
    Sent,
    /// The peer stopped reading or the connection is gone.
    PeerGone,
    /// The HTTP body failed before its end; the caller decides how to signal it.
    BodyFailed(String),
}

/// Sends `head`, then `body` as `Body` frames, then `End`. Small sized bodies go
/// out with the head in one write; others stream chunk by chunk under flow
/// control, so memory stays bounded by the windows.
pub async fn send_message<B>(writer: &mut FrameWriter, head: Frame, mut body: B) -> SendOutcome
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let sent = |r: Result<(), quinn::WriteError>| if r.is_ok() { SendOutcome::Sent } else { SendOutcome::PeerGone };
    if body.is_end_stream() {
        return sent(writer.send_frames(&[head, Frame::End]).await);
    }
    if body.size_hint().upper().is_some_and(|n| n <= INLINE_BODY) {
        return match body.collect().await {
            Ok(all) => sent(writer.send_frames(&[head, Frame::Body(all.to_bytes()), Frame::End]).await),
            Err(err) => SendOutcome::BodyFailed(err.to_string()),
        };
    }
    if writer.send(&head).await.is_err() {
        return SendOutcome::PeerGone;
    }
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if writer.send_body(data).await.is_err() {
                        return SendOutcome::PeerGone;
                    }
                }
            }
            Some(Err(err)) => return SendOutcome::BodyFailed(err.to_string()),
            None => return sent(writer.send(&Frame::End).await),
        }
    }
}

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The stream failed (reset by the peer, connection lost).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Reads frames from a QUIC receive stream.
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: RecvStream) -> Self {
        // The decoder's buffer grows on demand: most streams carry a few hundred
        // bytes, and a large eager buffer per stream showed up as malloc
        // consolidation in profiles.
        Self { recv, decoder: FrameDecoder::new() }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly
    /// between frames.
    ///
    /// Cancel safety: safe. Bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(wire::MAX_FRAME_LEN, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.pending() == 0 => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }

    /// Asks the peer to stop sending (used when the reader gives up early).
    pub fn stop(&mut self, code: quinn::VarInt) {
        let _ = self.recv.stop(code);
    }
}

/// Writes frames to a QUIC send stream.
pub struct FrameWriter {
    send: SendStream,
    buf: BytesMut,
}

impl FrameWriter {
    /// Wraps a send stream.
    pub fn new(send: SendStream) -> Self {
        Self { send, buf: BytesMut::new() }
    }

    /// Encodes and writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), quinn::WriteError> {
        wire::encode(frame, &mut self.buf);
        let bytes = self.buf.split().freeze();
        self.send.write_chunk(bytes).await
    }

    /// Encodes several frames and writes them at once (one packet for a small
    /// request: head, body, end).
    pub async fn send_frames(&mut self, frames: &[Frame]) -> Result<(), quinn::WriteError> {
        for frame in frames {
            wire::encode(frame, &mut self.buf);
        }
        let bytes = self.buf.split().freeze();
        self.send.write_chunk(bytes).await
    }

    /// Writes a body, split into frames of at most [`wire::MAX_BODY_CHUNK`].
    pub async fn send_body(&mut self, mut data: Bytes) -> Result<(), quinn::WriteError> {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(wire::MAX_BODY_CHUNK));
            // Header and body go out as two buffers: the body is never copied.
            wire::codec::encode_body_header(piece.len(), &mut self.buf);
            let header = self.buf.split().freeze();
            self.send.write_all_chunks(&mut [header, piece]).await?;
        }
        Ok(())
    }

    /// Resolves when the peer no longer wants what we send (it stopped reading,
    /// or the connection is gone).
    pub async fn stopped(&self) {
        let _ = self.send.stopped().await;
    }

    /// Ends the stream after everything written.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: quinn::VarInt) {
        let _ = self.send.reset(code);
    }
}
