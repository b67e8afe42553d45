//! How a session ends when the client breaks the WebSocket protocol: with the
//! close code RFC 6455 §7.4.1 gives the fault (1002, 1007 for text that is not
//! UTF-8), not a normal close (1000) carrying the library's error message, so
//! the client can tell its own bug from the server going away.
//!
//! tungstenite answers a close frame with a code no endpoint may send (999,
//! 1004–1006, 1015, 5000…) by itself, with 1002 (what [`is_invalid_close`]
//! recognizes); a frame it cannot read at all comes out of the stream as an
//! error, which [`for_read_error`] turns into the close frame to answer with.

use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Utf8Bytes};

/// Longest reason a close frame may carry: a control frame's payload is at
/// most 125 bytes (RFC 6455 §5.5), two of which are the code.
pub const MAX_REASON: usize = 123;

/// The frame tungstenite reports, and answers with, in place of a client's
/// close frame whose code is invalid. (A client that sent exactly this frame
/// is taken for one that sent an invalid code: the answer is the same, only
/// the log line differs.)
pub fn is_invalid_close(frame: &CloseFrame) -> bool {
    frame.code == CloseCode::Protocol && frame.reason == "Protocol violation"
}

/// The close frame that answers a read error the client caused, or `None`
/// when the socket is gone (nothing would arrive) or the error is ours.
pub fn for_read_error(err: &Error) -> Option<CloseFrame> {
    let (code, reason) = match err {
        Error::Capacity(_) => (CloseCode::Size, "message too big".to_owned()),
        // A text message, or a close frame's reason, that is not UTF-8 (§8.1).
        Error::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8".to_owned()),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        // A close frame with a one-byte payload, an unmasked frame, reserved
        // bits or opcodes, a fragmented or oversized control frame…
        Error::Protocol(why) => (CloseCode::Protocol, format!("protocol error: {why}")),
        _ => return None,
    };
    Some(CloseFrame { code, reason: Utf8Bytes::from(truncate(reason, MAX_REASON)) })
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::CapacityError;

    #[test]
    fn broken_frames_are_answered_with_the_code_for_what_broke() {
        let frame = for_read_error(&Error::Protocol(ProtocolError::InvalidCloseSequence)).unwrap();
        assert_eq!(frame.code, CloseCode::Protocol);
        assert_eq!(frame.reason, "protocol error: Invalid close sequence");
        let frame = for_read_error(&Error::Utf8("invalid utf-8 sequence".into())).unwrap();
        assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Invalid, "invalid UTF-8"));
        let too_big = CapacityError::MessageTooLong { size: 10, max_size: 5 };
        assert_eq!(for_read_error(&Error::Capacity(too_big)).unwrap().code, CloseCode::Size);
        assert!(for_read_error(&Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)).is_none());
        assert!(for_read_error(&Error::ConnectionClosed).is_none());
        assert!(for_read_error(&Error::Io(std::io::ErrorKind::BrokenPipe.into())).is_none());
    }

    #[test]
    fn a_reason_fits_in_a_control_frame() {
        let long = ProtocolError::ExpectedFragment(tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text);
        let frame = for_read_error(&Error::Protocol(long)).unwrap();
        assert!(frame.reason.len() <= MAX_REASON);
        assert_eq!(truncate("é".repeat(100), MAX_REASON).len(), 122, "cut at a character boundary");
        assert_eq!(truncate("short".into(), MAX_REASON), "short");
    }
}
