//! Application close codes on the QUIC connection.
//!
//! The code tells a client whether to reconnect: the server ending a session on
//! purpose (disconnect, token regenerated, tunnel deleted, another client took
//! over) is final; a shutdown or restart is not.

use quinn::VarInt;

/// The peer is going away normally (client exit).
pub const NORMAL: VarInt = VarInt::from_u32(0);
/// `POST /api/tunnels/{id}/disconnect` ended the session.
pub const DISCONNECTED: VarInt = VarInt::from_u32(0x10);
/// The token this session used was regenerated.
pub const TOKEN_REVOKED: VarInt = VarInt::from_u32(0x11);
/// Another client connected to the same tunnel and took it over.
pub const REPLACED: VarInt = VarInt::from_u32(0x12);
/// The tunnel was deleted.
pub const TUNNEL_DELETED: VarInt = VarInt::from_u32(0x13);
/// The server is shutting down; reconnecting later will work.
pub const SERVER_SHUTDOWN: VarInt = VarInt::from_u32(0x20);
/// The peer broke the protocol.
pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x30);
/// Handshake refused (details were sent in a `Rejected` frame).
pub const REJECTED: VarInt = VarInt::from_u32(0x31);

/// Stream reset code: the exchange was abandoned (caller gone, timeout).
pub const STREAM_CANCELLED: VarInt = VarInt::from_u32(1);
/// Stream stop code: the server stopped waiting for the response head (its
/// request timeout) and answered the caller 504.
pub const REQUEST_TIMEOUT: VarInt = VarInt::from_u32(2);
/// Stream reset code: the client is stopping and takes no new requests (the
/// server answers the caller 503 at once rather than after the drain).
pub const STREAM_REFUSED: VarInt = VarInt::from_u32(3);
/// Stream stop and reset code: the caller's streamed body stopped arriving,
/// the server gave up on it at its request timeout and answered the caller
/// 408; the app got part of the body at most. Also the reset of an upload
/// that went on after the app's answer, once none of it moved for twice the
/// request timeout.
pub const BODY_TIMEOUT: VarInt = VarInt::from_u32(4);
/// Stream stop and reset code: the server's shutdown grace ran out before the
/// response head came; it answered the caller 502 saying so.
pub const SHUTTING_DOWN: VarInt = VarInt::from_u32(5);

/// The WebSocket close code carrying `code`: 1000 for a normal close, else
/// `4000 + code` (the range RFC 6455 leaves to applications), so a legacy-socket
/// client learns the same reasons as a QUIC one.
pub fn ws_code(code: VarInt) -> u16 {
    if code == NORMAL { 1000 } else { 4000 + (code.into_inner() % 1000) as u16 }
}

/// The close code carried by a WebSocket close code made by [`ws_code`].
pub fn from_ws_code(ws: u16) -> Option<VarInt> {
    (4000..5000).contains(&ws).then(|| VarInt::from_u32(u32::from(ws - 4000)))
}

/// Whether a client should give up rather than reconnect after this close code.
pub fn is_final(code: VarInt) -> bool {
    [DISCONNECTED, TOKEN_REVOKED, REPLACED, TUNNEL_DELETED, REJECTED].contains(&code)
}

/// A sentence for the user explaining a close code.
pub fn describe(code: VarInt) -> &'static str {
    match code {
        c if c == DISCONNECTED => "the tunnel was disconnected through the API",
        c if c == TOKEN_REVOKED => "the tunnel's auth token was regenerated; this client's token is no longer valid",
        c if c == REPLACED => "another client connected to this tunnel and took it over",
        c if c == TUNNEL_DELETED => "the tunnel was deleted",
        c if c == SERVER_SHUTDOWN => "the server is shutting down",
        c if c == PROTOCOL_ERROR => "protocol error",
        c if c == REJECTED => "the server refused the connection",
        _ => "the connection was closed",
    }
}
