//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): every
//! delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the bytes behind
//! the `whsec_` prefix. Receivers verify with any Standard Webhooks library.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of signing keys.
pub const KEY_PREFIX: &str = "whsec_";

/// A fresh signing key: `whsec_` and 32 random bytes in base64.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", B64.encode(bytes))
}

/// The HMAC key behind a `whsec_…` string (a key without the prefix is
/// accepted as well, as the reference libraries do).
fn key_bytes(key: &str) -> Option<Vec<u8>> {
    B64.decode(key.strip_prefix(KEY_PREFIX).unwrap_or(key)).ok()
}

/// `v1,<signature>` for one attempt.
pub fn sign(key: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes(key)?).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// Whether `header` (space-separated `v1,…` entries) holds a valid signature,
/// compared in constant time. For tests and for users' receivers written in Rust.
pub fn verify(key: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(expected) = sign(key, msg_id, timestamp, body) else { return false };
    header.split(' ').any(|candidate| {
        use subtle::ConstantTimeEq;
        candidate.len() == expected.len() && bool::from(candidate.as_bytes().ct_eq(expected.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published test vector.
    #[test]
    fn standard_webhooks_test_vector() {
        let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let sig = sign(key, id, ts, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(key, id, ts, body, &format!("v1,bm9wZQ== {sig}")));
        assert!(!verify(key, id, ts + 1, body, &sig));
        assert!(!verify(key, id, ts, b"{}", &sig));
    }

    #[test]
    fn generated_keys_sign() {
        let key = generate_key();
        assert!(key.starts_with("whsec_") && key.len() == 6 + 44, "{key}");
        assert_ne!(key, generate_key());
        assert!(sign(&key, "msg_1", 1, b"x").is_some());
        assert!(sign("whsec_***", "msg_1", 1, b"x").is_none());
    }
}
