//! Raw bytes as a request's query and `Authorization` through a tunnel's
//! inbound options: no panic, no verdict unearned, no code left unmasked.
//! See `hookway_fuzz::inbound_check::check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookway_fuzz::inbound_check::check(data);
});
