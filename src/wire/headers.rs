//! Header lists of head frames, without a copy either way.
//!
//! A head on its way out is written straight from the `http::HeaderMap` the
//! HTTP layer already holds. A head coming in is kept as the received frame:
//! decoding checks that its protobuf is well formed, and the headers are read
//! out of it only when the HTTP layer builds its own `HeaderMap` with
//! [`Headers::into_map`], which is also where the HTTP grammar is checked, once,
//! by `http` itself. No allocation or reference count per header until then.
//! Per request this saves a few dozen small allocations on each side of the
//! tunnel, which profiles showed as a large share of the data path's user-space
//! time.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::frame::InvalidFrame;
use super::walk::{self, Fields, HeadField, HeadFields};

/// The headers of a request or response head.
#[derive(Clone)]
pub struct Headers(Repr);

#[derive(Clone)]
enum Repr {
    /// Headers to send, or decoded from a frame in an unusual layout.
    Map(HeaderMap),
    /// Headers as received: the `Header` fields numbered `tag` of the head
    /// message at `buf[message]`, `count` of them. Their protobuf was checked
    /// when the frame was decoded.
    Wire { buf: Bytes, message: Range<usize>, tag: u32, count: usize },
}

impl Headers {
    /// The `count` headers (fields numbered `tag`) of the head message at
    /// `buf[message]`, whose fields must all be well formed: the frame
    /// decoder has walked them.
    pub(crate) fn wire(buf: Bytes, message: Range<usize>, tag: u32, count: usize) -> Self {
        Self(Repr::Wire { buf, message, tag, count })
    }

    /// How many header lines (a name with two values counts twice).
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Map(map) => map.len(),
            Repr::Wire { count, .. } => *count,
        }
    }

    /// No headers at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names and values, in order. Received headers come as they arrived,
    /// before [`Headers::into_map`] has checked them against the HTTP grammar.
    pub fn iter(&self) -> Iter<'_> {
        match &self.0 {
            Repr::Map(map) => Iter(IterRepr::Map(map.iter())),
            Repr::Wire { buf, message, tag, .. } => Iter(IterRepr::Wire(buf, WireSpans::new(buf, message, *tag))),
        }
    }

    /// The `HeaderMap` the HTTP layer needs; values share the frame's buffer.
    /// Fails with [`InvalidFrame::Header`] when a received name or value breaks
    /// the HTTP grammar (a non-empty RFC 9110 token; visible characters,
    /// spaces, tabs and obs-text), which `http` checks here.
    pub fn into_map(self) -> Result<HeaderMap, InvalidFrame> {
        match self.0 {
            Repr::Map(map) => Ok(map),
            Repr::Wire { buf, message, tag, count } => {
                let mut map = HeaderMap::with_capacity(count);
                for (name, value) in WireSpans::new(&buf, &message, tag) {
                    let name = crate::headers::header_name(&buf[name]).map_err(|_| InvalidFrame::Header)?;
                    let value = HeaderValue::from_maybe_shared(buf.slice(value)).map_err(|_| InvalidFrame::Header)?;
                    map.append(name, value);
                }
                Ok(map)
            }
        }
    }
}

/// Where each received header's name and value lie, walking the head message
/// again (decoding checked it, so nothing here can fail).
struct WireSpans<'a> {
    buf: &'a [u8],
    fields: HeadFields<'a>,
}

impl<'a> WireSpans<'a> {
    fn new(buf: &'a [u8], message: &Range<usize>, tag: u32) -> Self {
        Self { buf, fields: Fields::new(buf, message.clone()).of_head(tag) }
    }
}

impl Iterator for WireSpans<'_> {
    type Item = (Range<usize>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.fields.next()? {
                Ok(HeadField::Header(at)) => match walk::header(self.buf, at) {
                    Ok(spans) => return Some(spans),
                    Err(_) => break,
                },
                Ok(HeadField::Other(..)) => {}
                Err(_) => break,
            }
        }
        debug_assert!(false, "a head's fields are checked when its frame is decoded");
        None
    }
}

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
    Wire(&'a Bytes, WireSpans<'a>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Map(it) => it.next().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            IterRepr::Wire(buf, it) => it.next().map(|(name, value)| (&buf[name], &buf[value])),
        }
    }
}
