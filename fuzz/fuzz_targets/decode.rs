//! Raw bytes into the frame decoder: it must never panic, `Ok(None)` must never
//! consume anything, and every decoded frame must survive a re-encode. See
//! `hookway_fuzz::decode_loop::check` for the exact properties.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookway_fuzz::decode_loop::check(data);
});
