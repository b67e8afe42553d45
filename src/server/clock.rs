//! Timestamps as the API shows them: RFC 3339, UTC, seconds precision
//! (`2024-01-20T14:30:00Z`, as in seed 001).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time, formatted for the API.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now).format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_matches_seed() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), "2024-01-20T14:30:00Z".len(), "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
