//! Identifiers, secrets and subdomain rules.
//!
//! Secrets (API keys, tunnel tokens) are 32 random base62 characters (~190 bits):
//! high-entropy, so a plain SHA-256 is a sound way to store them, and lookups by
//! hash reveal nothing useful through timing.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const LOWER36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Prefix of API keys.
pub const API_KEY_PREFIX: &str = "hwk_";
/// Prefix of tunnel auth tokens.
pub const TOKEN_PREFIX: &str = "hwt_";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

/// A new tunnel id, `tun_` + 16 characters.
pub fn tunnel_id() -> String {
    format!("tun_{}", random_from(LOWER36, 16))
}

/// A new webhook id, `wh_` + 16 characters.
pub fn webhook_id() -> String {
    format!("wh_{}", random_from(LOWER36, 16))
}

/// `len` random base62 characters, for message ids.
pub fn random_suffix(len: usize) -> String {
    random_from(BASE62, len)
}

/// A new organization id.
pub fn org_id() -> String {
    format!("org_{}", random_from(LOWER36, 16))
}

/// A new API key id (not the key).
pub fn api_key_id() -> String {
    format!("key_{}", random_from(LOWER36, 16))
}

/// A new API key secret.
pub fn api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_from(BASE62, 32))
}

/// A new tunnel auth token.
pub fn auth_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_from(BASE62, 32))
}

/// SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time check of a presented secret against a stored hash.
pub fn secret_matches(secret: &str, hash: &[u8; 32]) -> bool {
    bool::from(hash_secret(secret).ct_eq(hash))
}

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cool", "cosmic", "crisp", "daring", "eager", "fancy",
    "fast", "fresh", "gentle", "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "misty", "noble",
    "proud", "quick", "quiet", "rapid", "shiny", "silent", "smooth", "snowy", "solar", "steady", "sunny", "swift",
    "tidy", "vivid", "warm", "wild",
];
const NOUNS: &[&str] = &[
    "anchor", "aurora", "breeze", "brook", "canyon", "cedar", "cloud", "comet", "coral", "dawn", "delta", "dune",
    "ember", "falcon", "fern", "field", "forest", "harbor", "island", "lake", "leaf", "meadow", "moon", "ocean",
    "orbit", "otter", "peak", "pine", "planet", "rain", "river", "sky", "spark", "star", "stone", "sunset", "thunder",
    "valley", "wave", "willow",
];

/// A generated subdomain like `cool-sunset-x7kf`.
pub fn generated_subdomain() -> String {
    let mut rng = rand::rng();
    let adj = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    format!("{adj}-{noun}-{}", random_from(LOWER36, 4))
}

/// Subdomains that would shadow the server's own names.
const RESERVED: &[&str] = &["api", "www", "admin", "tunnels"];

/// Whether `s` is a name kept for the server itself (`api.{domain}` serves
/// the API), never a tunnel's.
pub fn is_reserved(s: &str) -> bool {
    RESERVED.contains(&s)
}

/// Checks seed 001's rules: 3–63 characters, lowercase letters, digits and
/// hyphens, starting with a letter. Returns the reason when it fails.
pub fn validate_subdomain(s: &str) -> Result<(), String> {
    // The characters first: 'ünï' lacks ASCII letters, not a letter in front,
    // and 'WH' is told about its case as well as its length.
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        let long = if (3..=63).contains(&s.chars().count()) { "" } else { ", and be 3-63 characters long" };
        return Err(format!("subdomain may contain only lowercase letters a-z, digits and hyphens{long}"));
    }
    if !(3..=63).contains(&s.len()) {
        return Err("subdomain must be 3-63 characters long".into());
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("subdomain must start with a lowercase letter".into());
    }
    // Seed 001's rules allow it, but a host name's label cannot end with one
    // (RFC 1123): `abc-.example.com` would be no URL at all.
    if s.ends_with('-') {
        return Err("subdomain must not end with a hyphen (it would not be a valid host name)".into());
    }
    if is_reserved(s) {
        return Err(format!("subdomain '{s}' is reserved"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_follow_the_rules() {
        for _ in 0..200 {
            let s = generated_subdomain();
            validate_subdomain(&s).unwrap();
            assert_eq!(s.split('-').count(), 3, "{s}");
        }
        assert!(tunnel_id().starts_with("tun_"));
    }

    #[test]
    fn subdomain_rules() {
        for ok in ["abc", "my-custom-subdomain", "a1-2", &"a".repeat(63)] {
            assert!(validate_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "1abc", "-abc", "Abc", "ab_c", "ab.c", &"a".repeat(64), "api", ""] {
            assert!(validate_subdomain(bad).is_err(), "{bad}");
        }
        // Each refusal names what is wrong.
        for (bad, says) in [
            ("ünï", "a-z"),
            ("Abc", "a-z"),
            ("1abc", "start with"),
            ("ab", "3-63"),
            ("abc-", "end with"),
            ("WH", "a-z, digits and hyphens, and be 3-63"),
        ] {
            let err = validate_subdomain(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn secrets_match_only_themselves() {
        let token = auth_token();
        let hash = hash_secret(&token);
        assert!(secret_matches(&token, &hash));
        assert!(!secret_matches(&auth_token(), &hash));
        assert_ne!(api_key(), api_key());
    }
}
