//! Raw bytes as WebSocket-JSON messages from a client or the server: no panic,
//! and what parses re-encodes stably. See `hookway_fuzz::wsjson_check::check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookway_fuzz::wsjson_check::check(data);
});
