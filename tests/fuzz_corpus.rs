//! Replays the fuzz corpora under plain `cargo test`, through the same decode loop
//! as the `decode` fuzz target: no panic, `Ok(None)` consumes nothing, and every
//! decoded frame re-encodes and decodes to an equal frame. Each file is fed as is
//! and once more behind a length prefix announcing the whole file. The `wsjson`
//! corpus goes through the WebSocket-JSON parsers the same way, and the
//! `inbound` corpus through a tunnel's inbound options.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/decode_loop.rs"]
mod decode_loop;
#[path = "../fuzz/src/inbound_check.rs"]
mod inbound_check;
#[path = "../fuzz/src/wsjson_check.rs"]
mod wsjson_check;

fn corpus_files(name: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty: the corpus test would pass vacuously", dir.display());
    files
}

/// Runs the decode loop over every file of a corpus; returns the kinds of frame seen.
fn replay(name: &str) -> BTreeSet<&'static str> {
    let mut kinds = BTreeSet::new();
    let (mut frames, mut errors, mut needs_more) = (0, 0, 0);
    for path in corpus_files(name) {
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        // Also behind a length prefix announcing exactly the file, so that
        // inputs whose first bytes read as a huge length still reach protobuf.
        let mut prefixed = u32::try_from(data.len()).expect("small corpus file").to_be_bytes().to_vec();
        prefixed.extend_from_slice(&data);
        for (input, how) in [(&data, "as is"), (&prefixed, "length-prefixed")] {
            let outcome = std::panic::catch_unwind(|| decode_loop::check(input))
                .unwrap_or_else(|_| panic!("decode loop failed on {} ({how})", path.display()));
            match &outcome.end {
                decode_loop::End::NeedMore => needs_more += 1,
                decode_loop::End::Error(_) => errors += 1,
            }
            frames += outcome.frames.len();
            kinds.extend(outcome.frames.iter().map(decode_loop::kind));
        }
    }
    println!("corpus {name}: {frames} frame(s) decoded, {errors} input(s) rejected, {needs_more} ending short");
    kinds
}

#[test]
fn decode_corpus_replays_cleanly() {
    let kinds = replay("decode");
    // The seeds hold a valid encoding of every kind: make sure they still decode.
    let missing: Vec<_> = decode_loop::KINDS.iter().filter(|k| !kinds.contains(*k)).collect();
    assert!(missing.is_empty(), "no frame of kind {missing:?} decoded from fuzz/corpus/decode");
}

#[test]
fn roundtrip_corpus_replays_cleanly() {
    // These are `Arbitrary` inputs, not encodings; as raw bytes they are mostly
    // garbage to the decoder, which is exactly what it must survive.
    replay("roundtrip");
}

/// Runs `check` on every file of `fuzz/corpus/<dir>`, failing on a panic
/// (naming the file); the outcomes seen.
fn outcomes<O: Ord>(dir: &str, check: impl Fn(&[u8]) -> O + std::panic::RefUnwindSafe) -> BTreeSet<O> {
    let mut seen = BTreeSet::new();
    for path in corpus_files(dir) {
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data))
            .unwrap_or_else(|_| panic!("{dir} check failed on {}", path.display()));
        seen.insert(outcome);
    }
    seen
}

#[test]
fn wsjson_corpus_replays_cleanly() {
    let seen = outcomes("wsjson", wsjson_check::check);
    use wsjson_check::Outcome::*;
    assert_eq!(seen, BTreeSet::from([Response, Request, Control, Rejected]), "the seeds cover every outcome");
}

#[test]
fn inbound_corpus_replays_cleanly() {
    let seen = outcomes("inbound", inbound_check::check);
    use inbound_check::Outcome::*;
    assert_eq!(
        seen,
        BTreeSet::from([Authed, Unauthorized, Challenge, Verified, Failed]),
        "the seeds cover every outcome"
    );
}

/// The seeds with `headersBase64` reach the parsers' byte path: their values
/// that are not UTF-8 come out as those bytes, not as the U+FFFD of `headers`.
#[test]
fn wsjson_seeds_with_headers_base64_carry_exact_bytes() {
    use hookway::wsjson::{self, ClientMessage, ServerMessage};
    let read =
        |name: &str| fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/wsjson").join(name)).unwrap();
    let Ok(ServerMessage::Request(r)) = wsjson::parse_server_message(&read("request_headers_base64.json")) else {
        panic!("request_headers_base64.json is a request");
    };
    assert_eq!(r.headers["x-sig"].as_bytes(), b"caf\xe9");
    let Ok(ClientMessage::Response(r)) = wsjson::parse_client_message(&read("response_headers_base64.json")) else {
        panic!("response_headers_base64.json is a response");
    };
    assert_eq!(r.headers["x-latin1"].as_bytes(), b"\xe9t\xe9");
    let err = wsjson::parse_client_message(&read("response_bad_headers_base64.json")).unwrap_err();
    assert_eq!(err.id.as_deref(), Some("req_5"), "{err:?}");
}
