//! Structured frames built only from valid values: encode, decode, compare; and
//! the same encoding fed to `FrameDecoder` in fuzzer-chosen pieces.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: hookway_fuzz::structured::RoundtripInput| {
    hookway_fuzz::structured::check(&input);
});
