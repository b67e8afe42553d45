//! The REST API's routing tables: which paths exist and which methods each
//! accepts. Each API module keeps one table next to its dispatcher; a request
//! no dispatch arm takes is looked up here, so a 405 and its `Allow` header
//! (RFC 9110 §15.5.6) come from the same list, and a path the table does not
//! know is a 404.

use http::StatusCode;

use super::api::ApiError;

/// One segment of a path shape: a literal, or [`ANY`] for an id.
pub(super) type Shape = &'static [&'static str];
/// Path shapes (segments after the module's prefix) and the methods each
/// accepts, as the `Allow` header lists them. The first matching shape wins.
pub(super) type Routes = &'static [(Shape, &'static str)];

/// The segment of a [`Shape`] that matches any one segment (an id).
pub(super) const ANY: &str = "{id}";

/// The methods `segments` accepts, if it is a path of `routes`.
pub(super) fn allowed(routes: Routes, segments: &[&str]) -> Option<&'static str> {
    routes.iter().find(|(shape, _)| fits(shape, segments)).map(|(_, methods)| *methods)
}

fn fits(shape: Shape, segments: &[&str]) -> bool {
    shape.len() == segments.len() && shape.iter().zip(segments).all(|(s, seg)| *s == ANY || s == seg)
}

/// The error for a request no dispatch arm took: 405 naming the methods the
/// path accepts when `routes` knows the path, else 404 with `not_found`.
pub(super) fn unrouted(routes: Routes, segments: &[&str], not_found: impl FnOnce() -> String) -> ApiError {
    match allowed(routes, segments) {
        Some(methods) => ApiError::not_allowed(methods),
        None => ApiError::new(StatusCode::NOT_FOUND, not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: Routes = &[(&[], "GET, POST"), (&["stream"], "GET"), (&[ANY], "GET, DELETE"), (&[ANY, "x"], "POST")];

    #[test]
    fn literal_shapes_win_over_ids_and_lengths_must_match() {
        assert_eq!(allowed(TABLE, &[]), Some("GET, POST"));
        assert_eq!(allowed(TABLE, &["stream"]), Some("GET"));
        assert_eq!(allowed(TABLE, &["req_1"]), Some("GET, DELETE"));
        assert_eq!(allowed(TABLE, &["req_1", "x"]), Some("POST"));
        assert_eq!(allowed(TABLE, &["req_1", "y"]), None);
        assert_eq!(allowed(TABLE, &["req_1", "x", "z"]), None);
    }
}
