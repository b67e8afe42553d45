//! Shared code for hookway's fuzz targets.
//!
//! * [`decode_loop`]: raw bytes through the decoder (also run over the corpus by
//!   the main crate's `tests/fuzz_corpus.rs`, which includes that file by path);
//! * [`structured`]: `Arbitrary` frames for the round-trip target;
//! * [`wsjson_check`]: WebSocket-JSON messages (also replayed by `tests/fuzz_corpus.rs`);
//! * [`inbound_check`]: a request's query and `Authorization` through a
//!   tunnel's inbound options (also replayed by `tests/fuzz_corpus.rs`).

pub mod decode_loop;
pub mod inbound_check;
pub mod structured;
pub mod wsjson_check;
