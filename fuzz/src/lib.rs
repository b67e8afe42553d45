//! Shared code for hookway's fuzz targets.
//!
//! * [`decode_loop`]: raw bytes through the decoder (also run over the corpus by
//!   the main crate's `tests/fuzz_corpus.rs`, which includes that file by path);
//! * [`structured`]: `Arbitrary` frames for the round-trip target;
//! * [`wsjson_check`]: WebSocket-JSON messages (also replayed by `tests/fuzz_corpus.rs`).

pub mod decode_loop;
pub mod structured;
pub mod wsjson_check;
