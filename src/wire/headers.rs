//! Header lists of head frames, without a copy either way.
//!
//! A head on its way out is written straight from the `http::HeaderMap` the
//! HTTP layer already holds. A head coming in is checked against the HTTP
//! grammar while it is decoded, and then kept as ranges of the received frame:
//! no allocation or reference count per header until the HTTP layer builds its
//! own `HeaderMap` with [`Headers::into_map`]. Per request this saves a few
//! dozen small allocations on each side of the tunnel, which profiles showed
//! as a large share of the data path's user-space time.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The headers of a request or response head.
#[derive(Clone)]
pub struct Headers(Repr);

#[derive(Clone)]
enum Repr {
    /// Headers to send, or decoded from a frame in an unusual layout.
    Map(HeaderMap),
    /// Headers as received: checked ranges of `buf`.
    Wire { buf: Bytes, spans: Vec<Span> },
}

/// Where one header's name and value lie in the received frame.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) name: Range<usize>,
    pub(crate) value: Range<usize>,
}

impl Headers {
    /// Headers received in `buf`; every span must have passed [`valid`].
    pub(crate) fn wire(buf: Bytes, spans: Vec<Span>) -> Self {
        Self(Repr::Wire { buf, spans })
    }

    /// How many header lines (a name with two values counts twice).
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Map(map) => map.len(),
            Repr::Wire { spans, .. } => spans.len(),
        }
    }

    /// No headers at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names and values, in order.
    pub fn iter(&self) -> Iter<'_> {
        match &self.0 {
            Repr::Map(map) => Iter(IterRepr::Map(map.iter())),
            Repr::Wire { buf, spans } => Iter(IterRepr::Wire(buf, spans.iter())),
        }
    }

    /// The `HeaderMap` the HTTP layer needs. Values share the frame's buffer.
    pub fn into_map(self) -> HeaderMap {
        match self.0 {
            Repr::Map(map) => map,
            Repr::Wire { buf, spans } => {
                let mut map = HeaderMap::with_capacity(spans.len());
                for s in spans {
                    // Both were checked on decode with the same grammar `http` uses.
                    let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(&buf[s.name]), HeaderValue::from_maybe_shared(buf.slice(s.value)))
                    else {
                        continue;
                    };
                    map.append(name, value);
                }
                map
            }
        }
    }
}

/// Whether a header name and value are acceptable: a non-empty RFC 9110 token,
/// and a value of visible characters, spaces, tabs and obs-text.
pub(crate) fn valid(name: &[u8], value: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| TOKEN[usize::from(b)]) && valid_value(value)
}

/// Eight bytes at a time: a word with no control character and no DEL passes
/// at once (almost every word of a real header); others are checked bytewise,
/// where a tab is allowed.
fn valid_value(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte is below `n` (n <= 0x80); bytes >= 0x80 never count.
    let has_less = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    let mut words = value.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        if (has_less(x, 0x20) || has_less(x ^ (ONES * 0x7f), 1)) && !word.iter().all(|&b| VALUE[usize::from(b)]) {
            return false;
        }
    }
    words.remainder().iter().all(|&b| VALUE[usize::from(b)])
}

/// `tchar` from RFC 9110 §5.6.2, as a table.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        i += 1;
    }
    table
};

/// Field-value bytes, as `http::HeaderValue` accepts them.
static VALUE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i == b'\t' as usize || (i >= 0x20 && i != 0x7f);
        i += 1;
    }
    table
};

impl From<HeaderMap> for Headers {
    fn from(map: HeaderMap) -> Self {
        Self(Repr::Map(map))
    }
}

impl Default for Headers {
    fn default() -> Self {
        Self(Repr::Map(HeaderMap::new()))
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))))
            .finish()
    }
}

/// Iterator over [`Headers`]: `(name, value)` byte slices.
pub struct Iter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Map(http::header::Iter<'a, HeaderValue>),
    Wire(&'a Bytes, std::slice::Iter<'a, Span>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Map(it) => it.next().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            IterRepr::Wire(buf, it) => it.next().map(|s| (&buf[s.name.clone()], &buf[s.value.clone()])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert!(valid(b"x-github-event", b"push"));
        assert!(valid(b"X-Mixed_Case!", b"a\tb \x80\xff"));
        assert!(valid(b"empty-value", b""));
        for (name, value) in
            [(&b""[..], &b"v"[..]), (b"sp ace", b"v"), (b"colon:", b"v"), (b"n", b"a\r\nb"), (b"n", b"\x7f")]
        {
            assert!(!valid(name, value), "{name:?}: {value:?}");
        }
        // The word-at-a-time check agrees with the table at every position.
        for len in 0..20 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    assert_eq!(valid_value(&v), VALUE[usize::from(b)], "byte {b:#x} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn wire_headers_become_a_map_sharing_the_buffer() {
        let buf = Bytes::from_static(b"content-typeapplication/jsonX-Onea");
        let spans = vec![Span { name: 0..12, value: 12..28 }, Span { name: 28..33, value: 33..34 }];
        let headers = Headers::wire(buf, spans);
        assert_eq!(headers.len(), 2);
        let pairs: Vec<_> = headers.iter().collect();
        assert_eq!(pairs[1], (&b"X-One"[..], &b"a"[..]));
        let map = headers.into_map();
        assert_eq!(map["content-type"], "application/json");
        assert_eq!(map["x-one"], "a");
    }
}
