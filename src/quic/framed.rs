//! Frames over QUIC streams: the IO edge of [`crate::wire`].

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use crate::error_chain;
use crate::wire::{self, DecodeError, Frame, FrameDecoder};

/// Bodies whose size is known to be at most this are read whole and sent in the
/// same write as their head and end: one packet for a typical webhook.
///
/// It is also the size over which a [`FrameReader`] hands out a body frame in
/// pieces as its packets arrive, so an inline body always comes as one frame
/// (the client then gives the local app a body of known length).
pub const INLINE_BODY: u64 = 64 * 1024;

/// How sending a message (head, body, end) ended.
#[derive(Debug)]
pub enum SendOutcome {
    /// Everything, including `End`, was written; the caller may finish the stream.
    Sent,
    /// The peer stopped reading or the connection is gone.
    PeerGone,
    /// The HTTP body failed before its end; the caller decides how to signal
    /// it. `head_sent`: whether the head went out first (else nothing did).
    BodyFailed {
        /// What went wrong.
        error: String,
        /// Whether the head was sent.
        head_sent: bool,
    },
}

/// Whether [`send_message`] reads `body` whole and sends it with the head (no
/// body, or one of at most [`INLINE_BODY`] bytes by its size hint), rather than
/// streaming it.
pub fn sent_inline<B: http_body::Body>(body: &B) -> bool {
    body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= INLINE_BODY)
}

/// How [`send_message`] waits for a body small enough to go out with its
/// head ([`sent_inline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallBody {
    /// Read it whole first, however long it takes: a caller's body at the
    /// edge, whose own timeout bounds the wait (and which the edge must have
    /// whole to answer a broken one itself).
    Whole,
    /// Send it with the head if it is all there now; else send the head with
    /// what is there and stream the rest: an app's answer, whose head must
    /// not wait on a slow body (a caller got a false 504 "no answer" from an
    /// app that had answered its head at once and trickled its body).
    Ready,
}

/// Sends `head`, then `body` as `Body` frames, then `End`. Small sized bodies go
/// out with the head in one write; others stream chunk by chunk under flow
/// control, so memory stays bounded by the windows. A body that stalls while
/// the peer stops reading (its caller left, its timeout ran out) ends the
/// sending at once rather than when the body next moves.
pub async fn send_message<B>(writer: &mut FrameWriter, head: Frame, mut body: B, small: SmallBody) -> SendOutcome
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let sent = |r: Result<(), quinn::WriteError>| if r.is_ok() { SendOutcome::Sent } else { SendOutcome::PeerGone };
    if body.is_end_stream() {
        return sent(writer.send_frames(&[head, Frame::End]).await);
    }
    let inline = sent_inline(&body);
    if inline && small == SmallBody::Whole {
        return match body.collect().await {
            Ok(all) => sent(writer.send_frames(&[head, Frame::Body(all.to_bytes()), Frame::End]).await),
            Err(err) => SendOutcome::BodyFailed { error: error_chain(&*err.into()), head_sent: false },
        };
    }
    // The head waits for body frames already on their way: hyper decodes
    // them, once asked, in the connection's own task, one trip through the
    // scheduler away. A body that fails at once (a malformed first chunk)
    // then becomes an error answer instead of a head followed by a cut
    // stream, which left an HTTP/1.1 caller with an empty reply (hyper sends
    // a head with its first body bytes). A slow body (server-sent events)
    // does not hold the head back. A small body takes all its frames that
    // are there (usually all of it: one write); a larger one its first.
    let (ready, end) = match ready_now(&mut body, inline).await {
        Ok(ready) => ready,
        Err(err) => return SendOutcome::BodyFailed { error: error_chain(&*err.into()), head_sent: false },
    };
    let written = match ready {
        // The first bytes go out in the head's write, and so does `End` when
        // they were the whole body: one packet for a short answer.
        Some(data) => match writer.send_head_and_body(&head, data, end).await {
            Ok(()) if end => return SendOutcome::Sent,
            written => written,
        },
        None if end => return sent(writer.send_frames(&[head, Frame::End]).await),
        None => writer.send(&head).await,
    };
    if written.is_err() {
        return SendOutcome::PeerGone;
    }
    // Made once: each one made registers with the connection under its lock.
    // (quinn forgets it when the stream finishes or is stopped, not when it
    // is reset: one small entry per reset stream, for the connection's life.)
    let stopped = writer.stopped_owned();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            // The body first, and no random pick; the stop is looked at
            // only while the body has nothing, or a write waits.
            biased;
            next = body.frame() => next,
            _ = &mut stopped => return SendOutcome::PeerGone,
        };
        let (data, last) = match next {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                // The last bytes and `End` in one write, as for a short body.
                (data, body.is_end_stream())
            }
            Some(Err(err)) => return SendOutcome::BodyFailed { error: error_chain(&*err.into()), head_sent: true },
            None => (Bytes::new(), true),
        };
        let write = async {
            match (last, data.is_empty()) {
                (true, true) => writer.send(&Frame::End).await,
                (true, false) => writer.send_last_body(data).await,
                (false, _) => writer.send_body(data).await,
            }
        };
        // A write is not told of a stop while it waits on the connection's
        // flow control: quinn looks at the connection's window before the
        // stream's stop, and once the window reopens it wakes only the
        // writers whose own stream window has room, which a stream its peer
        // stopped reading never gets back. Such a write waited for good (a
        // stalled download whose caller left, in a flood of them: the app
        // stayed blocked writing until the client stopped).
        let sent = tokio::select! {
            biased;
            sent = write => sent,
            _ = &mut stopped => return SendOutcome::PeerGone,
        };
        match sent {
            Err(_) => return SendOutcome::PeerGone,
            Ok(()) if last => return SendOutcome::Sent,
            Ok(()) => {}
        }
    }
}

/// The body bytes `body` has ready now, or after one trip through the
/// scheduler: its first frame's, or with `all`, every frame's until one is
/// not ready or the body ends (copied into one buffer past the first); and
/// whether it ended.
async fn ready_now<B>(body: &mut B, all: bool) -> Result<(Option<Bytes>, bool), B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    let mut gathered = Gathered::default();
    let mut yielded = false;
    while !body.is_end_stream() {
        let Some(next) = body.frame().now_or_never() else {
            // One trip through the scheduler per wait: a body that keeps
            // coming (its head and bytes written apart, or spanning reads)
            // goes whole with its head; one that breaks soon after is still
            // an error answer rather than a cut one.
            if yielded {
                break;
            }
            yielded = true;
            tokio::task::yield_now().await;
            continue;
        };
        yielded = false;
        let Some(frame) = next else { return Ok((gathered.take(), true)) };
        let Ok(data) = frame?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        gathered.push(data);
        if !all {
            break;
        }
    }
    Ok((gathered.take(), body.is_end_stream()))
}

/// Body chunks gathered into one: the first kept as it is (no copy for a body
/// that comes in one chunk), the rest copied after it into one buffer, so
/// that the chunks' read buffers are not kept alive (each can hold KiBs for
/// a few bytes of an event stream).
#[derive(Default)]
pub(crate) struct Gathered {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Gathered {
    /// Adds `data` after what came before.
    pub(crate) fn push(&mut self, data: Bytes) {
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(data),
            (Some(first), None) => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(first);
                buf.extend_from_slice(&data);
                self.more = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }

    /// All of it, `None` if nothing came.
    pub(crate) fn take(self) -> Option<Bytes> {
        self.more.map(BytesMut::freeze).or(self.first)
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
    /// What [`FrameReader::end_is_next`] decoded when it was not `End`.
    peeked: Option<Result<Frame, DecodeError>>,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: RecvStream) -> Self {
        // The decoder's buffer grows on demand: most streams carry a few hundred
        // bytes, and a large eager buffer per stream showed up as malloc
        // consolidation in profiles. Body frames larger than an inline body
        // come in pieces, slices of the received packets, instead of being
        // copied into one buffer per frame.
        Self { recv, decoder: FrameDecoder::streaming_bodies(INLINE_BODY as usize), peeked: None }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly
    /// between frames.
    ///
    /// Cancel safety: safe. Bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        if let Some(peeked) = self.peeked.take() {
            return Ok(Some(peeked?));
        }
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                if matches!(frame, Frame::End) {
                    self.take_fin();
                }
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(wire::MAX_FRAME_LEN, true).await? {
                Some(chunk) => self.decoder.push(chunk.bytes),
                None if !self.decoder.in_frame() => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }

    /// Whether `End` is the next frame and has already arrived; if so it is
    /// consumed. No IO: a body reader calls this with its last chunk in hand,
    /// because hyper may drop a body once it has its declared length, and a
    /// stream dropped before its end costs a STOP_SENDING packet.
    pub fn end_is_next(&mut self) -> bool {
        if self.peeked.is_some() {
            return false;
        }
        match self.decoder.next_frame() {
            Ok(Some(Frame::End)) => {
                self.take_fin();
                true
            }
            Ok(Some(frame)) => {
                self.peeked = Some(Ok(frame));
                false
            }
            Err(err) => {
                self.peeked = Some(Err(err));
                false
            }
            Ok(None) => false,
        }
    }

    /// After `End`, takes the stream's FIN if it has already arrived (it usually
    /// comes in the same packet), without waiting. A receive stream dropped
    /// before its FIN was read makes quinn send STOP_SENDING: one more packet,
    /// and one more wakeup on each side, for every request.
    fn take_fin(&mut self) {
        use futures_util::FutureExt;
        if self.decoder.pending() != 0 {
            return;
        }
        // Anything after `End` stays buffered for the next call.
        if let Some(Ok(Some(chunk))) = self.recv.read_chunk(wire::MAX_FRAME_LEN, true).now_or_never() {
            self.decoder.push(chunk.bytes);
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
    /// What a cancelled [`FrameWriter::send`] left unwritten of its frame:
    /// the next write sends it first, so half a frame is never followed by
    /// another. (Only `send` is cancel-safe so: the body writers are not,
    /// and a request stream whose write is given up on is reset instead.)
    unsent: Bytes,
}

/// Send priority of a control stream; request streams keep quinn's 0.
const CONTROL_PRIORITY: i32 = 1;

impl FrameWriter {
    /// Wraps a send stream.
    pub fn new(send: SendStream) -> Self {
        Self { send, buf: BytesMut::new(), unsent: Bytes::new() }
    }

    /// Wraps a control stream, whose frames go out before request bodies
    /// queued on the same connection: a ping behind a 100 MiB upload would
    /// make a busy peer look dead, and an end-of-session notice behind it
    /// would arrive after the close it explains.
    pub fn control(send: SendStream) -> Self {
        let _ = send.set_priority(CONTROL_PRIORITY);
        Self::new(send)
    }

    /// Encodes and writes one frame.
    ///
    /// Cancel-safe at frame granularity: dropped while flow control holds it
    /// back, it keeps the rest of its frame, and the next write on this writer
    /// sends that first. Why: the client's control stream is written by the
    /// heartbeat loop, which a ctrl-c drops mid-ping, and then by `Leaving`;
    /// half a ping before it would be a malformed frame to the server.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), quinn::WriteError> {
        self.send_unsent().await?;
        wire::encode(frame, &mut self.buf);
        self.unsent = self.buf.split().freeze();
        self.send_unsent().await
    }

    /// Finishes the frame a cancelled [`FrameWriter::send`] left. (Each
    /// `write_chunks` call either writes and advances `unsent` or does
    /// nothing, so dropping this future loses no byte and repeats none.)
    async fn send_unsent(&mut self) -> Result<(), quinn::WriteError> {
        while !self.unsent.is_empty() {
            self.send.write_chunks(std::slice::from_mut(&mut self.unsent)).await?;
        }
        Ok(())
    }

    /// Encodes several frames and writes them at once (one packet for a small
    /// request: head, body, end).
    pub async fn send_frames(&mut self, frames: &[Frame]) -> Result<(), quinn::WriteError> {
        self.send_unsent().await?;
        // One allocation for the whole write: grown frame by frame, the
        // buffer was reallocated (and copied) up to twice per request.
        let bodies: usize = frames.iter().map(|f| if let Frame::Body(data) = f { data.len() + 16 } else { 0 }).sum();
        self.buf.reserve(bodies + 512);
        for frame in frames {
            wire::encode(frame, &mut self.buf);
        }
        let bytes = self.buf.split().freeze();
        self.send.write_chunk(bytes).await
    }

    /// Writes `head`, then `data` as a body, then `End` if `end`, in one
    /// write where the body fits one frame (the body itself is not copied).
    pub async fn send_head_and_body(&mut self, head: &Frame, data: Bytes, end: bool) -> Result<(), quinn::WriteError> {
        self.send_unsent().await?;
        if data.len() > wire::MAX_BODY_CHUNK {
            self.send(head).await?;
            self.send_body(data).await?;
            return if end { self.send(&Frame::End).await } else { Ok(()) };
        }
        wire::encode(head, &mut self.buf);
        wire::codec::encode_body_header(data.len(), &mut self.buf);
        let before = self.buf.split().freeze();
        if end {
            wire::encode(&Frame::End, &mut self.buf);
            let after = self.buf.split().freeze();
            self.send.write_all_chunks(&mut [before, data, after]).await
        } else {
            self.send.write_all_chunks(&mut [before, data]).await
        }
    }

    /// Writes a body, split into frames of at most [`wire::MAX_BODY_CHUNK`].
    pub async fn send_body(&mut self, mut data: Bytes) -> Result<(), quinn::WriteError> {
        self.send_unsent().await?;
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(wire::MAX_BODY_CHUNK));
            // Header and body go out as two buffers: the body is never copied.
            wire::codec::encode_body_header(piece.len(), &mut self.buf);
            let header = self.buf.split().freeze();
            self.send.write_all_chunks(&mut [header, piece]).await?;
        }
        Ok(())
    }

    /// Resolves when the peer no longer wants what we send: with its stop
    /// code if it stopped reading (none once all was sent and acknowledged),
    /// or why the connection is gone.
    pub async fn stopped(&self) -> Result<Option<quinn::VarInt>, quinn::StoppedError> {
        self.send.stopped().await
    }

    /// [`FrameWriter::stopped`] as a future that does not borrow the writer,
    /// to be kept across writes.
    pub fn stopped_owned(
        &self,
    ) -> impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>> + Send + 'static {
        self.send.stopped()
    }

    /// Writes the last of a body and `End`, in one write where the body fits one frame.
    pub async fn send_last_body(&mut self, data: Bytes) -> Result<(), quinn::WriteError> {
        self.send_unsent().await?;
        if data.len() > wire::MAX_BODY_CHUNK {
            self.send_body(data).await?;
            return self.send(&Frame::End).await;
        }
        wire::codec::encode_body_header(data.len(), &mut self.buf);
        let header = self.buf.split().freeze();
        wire::encode(&Frame::End, &mut self.buf);
        let end = self.buf.split().freeze();
        self.send.write_all_chunks(&mut [header, data, end]).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loopback QUIC connection, client side first.
    struct Pair {
        client: quinn::Connection,
        server: quinn::Connection,
        _dir: tempfile::TempDir,
    }

    impl Pair {
        async fn new() -> Self {
            let (conn, server, dir) = crate::quic::loopback_pair().await;
            // Streams of the client's own, many and large: what the server
            // allows only a client that authenticated (one stream, a small
            // window before), which is not what these tests are about.
            crate::quic::open_receive_window(&server);
            server.set_max_concurrent_bi_streams(64u32.into());
            Self { client: conn, server, _dir: dir }
        }

        /// Sends `bytes` from the client on a new stream (finished when
        /// `finish`); returns the server's reader of it.
        async fn send(&self, bytes: &[u8], finish: bool) -> FrameReader {
            let (mut send, _recv) = self.client.open_bi().await.unwrap();
            send.write_all(bytes).await.unwrap();
            if finish {
                send.finish().unwrap();
            }
            let (_send, recv) = self.server.accept_bi().await.unwrap();
            std::mem::forget(send); // dropping it would finish the stream
            FrameReader::new(recv)
        }

        /// STOP_SENDING frames the client has received, after a round trip on
        /// another stream: anything the server queued before is delivered by then.
        async fn stop_sendings(&self) -> u64 {
            let (mut send, mut recv) = self.client.open_bi().await.unwrap();
            send.write_all(b"ping").await.unwrap();
            send.finish().unwrap();
            let (mut back, mut got) = self.server.accept_bi().await.unwrap();
            got.read_to_end(16).await.unwrap();
            back.write_all(b"pong").await.unwrap();
            back.finish().unwrap();
            recv.read_to_end(16).await.unwrap();
            self.client.stats().frame_rx.stop_sending
        }
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        for frame in frames {
            wire::encode(frame, &mut buf);
        }
        buf
    }

    fn body(b: &'static [u8]) -> Frame {
        Frame::Body(Bytes::from_static(b))
    }

    /// A head with its first body chunk (and `End`) in one write reads back
    /// as the same frames as written one by one, for a chunk that fits one
    /// frame and one that does not.
    #[tokio::test]
    async fn head_and_body_in_one_write_read_back_frame_by_frame() {
        let pair = Pair::new().await;
        let head = Frame::Ping(7); // any frame: the writer does not look at it
        let big = Bytes::from(vec![b'x'; wire::MAX_BODY_CHUNK + 10]);
        for (data, end) in [(Bytes::from_static(b"first"), true), (Bytes::from_static(b"more"), false), (big, true)] {
            let (send, _recv) = pair.client.open_bi().await.unwrap();
            let mut writer = FrameWriter::new(send);
            writer.send_head_and_body(&head, data.clone(), end).await.unwrap();
            writer.finish();
            let (_send, recv) = pair.server.accept_bi().await.unwrap();
            let mut reader = FrameReader::new(recv);
            assert_eq!(reader.next().await.unwrap(), Some(head.clone()));
            let mut got = Vec::new();
            while got.len() < data.len() {
                match reader.next().await.unwrap() {
                    Some(Frame::Body(piece)) => got.extend_from_slice(&piece),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, data);
            let last = if end { Some(Frame::End) } else { None };
            assert_eq!(reader.next().await.unwrap(), last);
        }
    }

    /// A `send` dropped while flow control holds its frame back (as ctrl-c
    /// drops the client's heartbeat loop mid-ping) leaves no half frame: the
    /// next frame follows the whole of it, and the reader reads every frame.
    #[tokio::test]
    async fn a_send_cancelled_midway_finishes_its_frame_before_the_next() {
        let pair = Pair::new().await;
        let (send, _recv) = pair.client.open_bi().await.unwrap();
        let mut writer = FrameWriter::control(send);
        // Frames of a size that does not divide the stream's window, sent
        // until one waits for a window the server, not reading, never opens.
        let frame = Frame::Body(Bytes::from(vec![b'x'; 100_000]));
        let mut whole = 0;
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(200), writer.send(&frame)).await {
                Ok(sent) => sent.unwrap(),
                Err(_) => break,
            }
            whole += 1;
            assert!(whole < 1000, "the window never filled");
        }
        assert!(!writer.unsent.is_empty(), "the cancelled frame was written in part");
        let (_send, recv) = pair.server.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(recv);
        let next = tokio::spawn(async move {
            writer.send(&Frame::Leaving).await.unwrap();
            writer
        });
        // (The reader hands a large body on in pieces: count its bytes.)
        let mut bytes = 0;
        let read = async {
            loop {
                match reader.next().await {
                    Ok(Some(Frame::Body(piece))) => bytes += piece.len(),
                    other => break other.map(|f| f.map(|f| format!("{f:?}"))),
                }
            }
        };
        // (A half frame would have the reader wait for bytes that never come.)
        let last = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.expect("frames end");
        assert_eq!(bytes, (whole + 1) * 100_000, "every body frame whole");
        assert_eq!(last.unwrap().as_deref(), Some("Leaving"), "then the next frame");
        drop(next.await.unwrap());
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_costs_no_stop_sending() {
        let pair = Pair::new().await;
        let mut reader = pair.send(&encode_all(&[body(b"{}"), Frame::End]), true).await;
        assert_eq!(reader.next().await.unwrap(), Some(body(b"{}")));
        assert_eq!(reader.next().await.unwrap(), Some(Frame::End));
        drop(reader);
        assert_eq!(pair.stop_sendings().await, 0);
    }

    #[tokio::test]
    async fn end_is_next_consumes_only_end() {
        let pair = Pair::new().await;
        let mut reader = pair.send(&encode_all(&[body(b"a"), body(b"b"), Frame::End]), true).await;
        assert_eq!(reader.next().await.unwrap(), Some(body(b"a")));
        // The second body frame is decoded to look at it, and kept.
        assert!(!reader.end_is_next());
        assert!(!reader.end_is_next());
        assert_eq!(reader.next().await.unwrap(), Some(body(b"b")));
        assert!(reader.end_is_next());
        // A body reader dropped by hyper right here: the stream was read whole.
        drop(reader);
        assert_eq!(pair.stop_sendings().await, 0);
    }

    /// The control for the two tests above: a stream dropped unread is stopped,
    /// and the round trip sees it.
    #[tokio::test]
    async fn a_stream_dropped_before_its_end_is_stopped() {
        let pair = Pair::new().await;
        let mut reader = pair.send(&encode_all(&[body(b"a"), Frame::End]), false).await;
        assert_eq!(reader.next().await.unwrap(), Some(body(b"a")));
        drop(reader);
        assert_eq!(pair.stop_sendings().await, 1);
    }

    /// A large body frame comes in pieces as its packets arrive; a stream
    /// that ends inside it is still truncated, not finished.
    #[tokio::test]
    async fn a_stream_ending_inside_a_streamed_body_is_truncated() {
        let pair = Pair::new().await;
        let bytes = encode_all(&[Frame::Body(Bytes::from(vec![1u8; 100_000]))]);
        let mut reader = pair.send(&bytes[..50_000], true).await;
        let (mut pieces, mut got) = (0, 0);
        loop {
            match reader.next().await {
                Ok(Some(Frame::Body(piece))) => (pieces, got) = (pieces + 1, got + piece.len()),
                Err(ReadFrameError::Truncated) => break,
                other => panic!("{other:?}"),
            }
        }
        // The prefix, the field's key and a 3-byte length came before the payload.
        assert_eq!(got, 50_000 - wire::LEN_PREFIX - 4);
        assert!(pieces > 1, "the payload came in pieces");
    }

    /// An inline body (at most `INLINE_BODY`) always comes as one frame, which
    /// the client needs to give the app a body of known length; a frame one
    /// byte larger comes in pieces.
    #[tokio::test]
    async fn a_reader_streams_only_bodies_larger_than_an_inline_one() {
        let pair = Pair::new().await;
        for (len, whole) in [(INLINE_BODY as usize, true), (INLINE_BODY as usize + 1, false)] {
            let body = Bytes::from(vec![5u8; len]);
            let mut reader = pair.send(&encode_all(&[Frame::Body(body.clone()), Frame::End]), true).await;
            let mut pieces = Vec::new();
            loop {
                match reader.next().await.unwrap() {
                    Some(Frame::Body(piece)) => pieces.push(piece),
                    Some(Frame::End) => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(pieces.len() == 1, whole, "{len} bytes came in {} pieces", pieces.len());
            assert_eq!(pieces.concat(), body);
        }
    }

    #[tokio::test]
    async fn a_malformed_frame_seen_by_end_is_next_is_still_reported() {
        let pair = Pair::new().await;
        let mut bytes = encode_all(&[body(b"a")]);
        bytes.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
        let mut reader = pair.send(&bytes, true).await;
        assert_eq!(reader.next().await.unwrap(), Some(body(b"a")));
        // Wait until the malformed frame is buffered too.
        while reader.decoder.pending() == 0 {
            if let Some(chunk) = reader.recv.read_chunk(64, true).await.unwrap() {
                reader.decoder.push(chunk.bytes);
            }
        }
        assert!(!reader.end_is_next());
        assert!(matches!(reader.next().await, Err(ReadFrameError::Decode(_))));
    }

    /// Issue: quinn looks at a stream's stop only once the connection's
    /// window has room, so a body write waiting on a full connection window
    /// never saw its stream stopped: a stalled download whose caller had left,
    /// in a flood of them, kept its local app blocked writing until the client
    /// stopped. Other streams, never read, hold all of the connection's window
    /// but 128 KiB; the stopped stream's 128 KiB is less than the eighth of
    /// the window whose release sends MAX_DATA, so the window stays full.
    #[tokio::test]
    async fn a_stop_ends_a_body_blocked_on_the_connection_window() {
        use std::time::Duration;
        let pair = Pair::new().await;
        let mut left = crate::quic::CONNECTION_WINDOW as usize - 128 * 1024;
        let mut fillers = Vec::new();
        while left > 0 {
            let n = left.min(crate::quic::STREAM_WINDOW as usize);
            let (mut send, _recv) = pair.client.open_bi().await.unwrap();
            send.write_all(&vec![0u8; n]).await.unwrap();
            fillers.push(send);
            left -= n;
        }
        let (send, _recv) = pair.client.open_bi().await.unwrap();
        let sending = tokio::spawn(async move {
            let mut writer = FrameWriter::new(send);
            let chunk = Bytes::from(vec![1u8; 16 * 1024]);
            let frames = futures_util::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))
            });
            let body = http_body_util::StreamBody::new(frames);
            send_message(&mut writer, Frame::Ping(1), body, SmallBody::Ready).await
        });
        let mut held = Vec::new();
        for _ in 0..fillers.len() {
            held.push(pair.server.accept_bi().await.unwrap());
        }
        let (_send, mut recv) = pair.server.accept_bi().await.unwrap();
        // All the connection window left for it: its next write waits on the
        // window (reading these is too little to release any).
        let mut got = vec![0u8; 128 * 1024];
        recv.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sending.is_finished());
        drop(recv);
        let outcome = tokio::time::timeout(Duration::from_secs(5), sending).await.expect("the stop ends the sending");
        assert!(matches!(outcome.unwrap(), SendOutcome::PeerGone));
    }
}
