//! Reading protobuf fields in place: the part of a protobuf decoder that
//! `wire::head` and [`super::Headers`] need, without building the generated
//! structs.
//!
//! A head is walked twice: once when its frame is decoded (checking that every
//! field is well formed), and once more when its headers are turned into a
//! `HeaderMap`. Walking is a few varint reads per field, cheaper than keeping a
//! list of where each header lies.

use std::ops::Range;

use super::codec::DecodeError;

/// Reads the varint at `buf[*pos..]`, as protobuf defines it (at most ten
/// bytes, fitting 64 bits); `None` when it is cut short or too long. Inlined:
/// almost every varint of a head is one byte.
#[inline(always)]
pub(crate) fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    varint_long(buf, pos)
}

#[cold]
fn varint_long(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return (i < 9 || b <= 1).then_some(v);
        }
    }
    None
}

/// A protobuf field's value: a varint, or the range of a length-delimited one.
pub(crate) enum Value {
    Varint(u64),
    Range(Range<usize>),
    /// Fixed-width: skipped, never used by heads.
    Fixed,
}

impl Value {
    /// A length-delimited field's range, or the error for another wire type.
    pub(crate) fn range(self) -> Result<Range<usize>, DecodeError> {
        match self {
            Value::Range(r) => Ok(r),
            _ => Err(wrong_type()),
        }
    }
}

pub(crate) fn wrong_type() -> DecodeError {
    DecodeError::Malformed("field of the wrong wire type")
}

/// The fields of the message in `buf[range]`, in order, as `(field number,
/// value)`. After an error it yields nothing more.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    /// Walks `buf[range]`; `range` must lie within `buf`.
    pub(crate) fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Self { buf: &buf[..range.end], pos: range.start }
    }

    #[inline(always)]
    fn field(&mut self) -> Result<(u32, Value), DecodeError> {
        let (buf, end) = (self.buf, self.buf.len());
        let varint = |pos: &mut usize| varint(buf, pos).ok_or(DecodeError::Malformed("bad varint"));
        let key = varint(&mut self.pos)?;
        let tag = u32::try_from(key >> 3).map_err(|_| DecodeError::Malformed("field number out of range"))?;
        if tag == 0 {
            return Err(DecodeError::Malformed("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.pos)?),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                if end - self.pos < width {
                    return Err(DecodeError::Malformed("truncated fixed-width field"));
                }
                self.pos += width;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut self.pos)?).unwrap_or(usize::MAX);
                if len > end - self.pos {
                    return Err(DecodeError::Malformed("field longer than its message"));
                }
                self.pos += len;
                Value::Range(self.pos - len..self.pos)
            }
            _ => return Err(DecodeError::Malformed("unsupported wire type")),
        };
        Ok((tag, value))
    }
}

impl<'a> Fields<'a> {
    /// The fields of a head message whose headers are the fields numbered
    /// `header_tag` (under 16): [`HeadField::Header`] for each header, with
    /// the range of its `Header` message, [`HeadField::Other`] for the rest.
    pub(crate) fn of_head(self, header_tag: u32) -> HeadFields<'a> {
        assert!(header_tag < 16, "a one-byte key");
        HeadFields { key: ((header_tag << 3) | 2) as u8, header_tag, fields: self }
    }

    /// If the next field has the one-byte `key` and a length under 128 (the
    /// layout every encoder writes for a header): its range, and the walk
    /// moves past it. `None` (the walk unmoved) for anything else.
    #[inline(always)]
    fn short(&mut self, key: u8) -> Option<Range<usize>> {
        let rest = self.buf.get(self.pos..)?;
        if let [k, len, ..] = rest {
            let len = usize::from(*len);
            if *k == key && len < 0x80 && len <= rest.len() - 2 {
                let start = self.pos + 2;
                self.pos = start + len;
                return Some(start..self.pos);
            }
        }
        None
    }
}

/// A field of a head message, as [`HeadFields`] yields it.
pub(crate) enum HeadField {
    /// A header: the range of its `Header` message (not yet checked).
    Header(Range<usize>),
    /// Any other field.
    Other(u32, Value),
}

/// The fields of a head message, headers told apart (see [`Fields::of_head`]).
/// A head is mostly headers: those in the usual layout skip the general key
/// and wire-type dispatch.
pub(crate) struct HeadFields<'a> {
    fields: Fields<'a>,
    key: u8,
    header_tag: u32,
}

impl Iterator for HeadFields<'_> {
    type Item = Result<HeadField, DecodeError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(at) = self.fields.short(self.key) {
            return Some(Ok(HeadField::Header(at)));
        }
        Some(match self.fields.next()? {
            Ok((tag, v)) if tag == self.header_tag => v.range().map(HeadField::Header),
            Ok((tag, v)) => Ok(HeadField::Other(tag, v)),
            Err(err) => Err(err),
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<(u32, Value), DecodeError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Nothing sensible follows a malformed field.
            self.pos = self.buf.len();
        }
        Some(field)
    }
}

/// Reads one `Header { bytes name = 1; bytes value = 2; }` message at
/// `buf[at]`: the ranges of its name and value (empty when absent; the last
/// occurrence wins, unknown fields are skipped, as protobuf reads it).
#[inline(always)]
pub(crate) fn header(buf: &[u8], at: Range<usize>) -> Result<(Range<usize>, Range<usize>), DecodeError> {
    // The layout every encoder writes for a name and value under 128 bytes
    // each: key 1, length, name, key 2, length, value. Anything else takes the
    // general walk.
    if let [0x0a, name_len, rest @ ..] = &buf[at.clone()] {
        let name_len = usize::from(*name_len);
        if let [0x12, value_len, ..] = rest.get(name_len..).unwrap_or_default() {
            let value_len = usize::from(*value_len);
            let name = at.start + 2..at.start + 2 + name_len;
            if name_len < 0x80 && value_len < 0x80 && name.end + 2 + value_len == at.end {
                return Ok((name.clone(), name.end + 2..at.end));
            }
        }
    }
    header_walk(buf, at)
}

fn header_walk(buf: &[u8], at: Range<usize>) -> Result<(Range<usize>, Range<usize>), DecodeError> {
    let (mut name, mut value) = (at.start..at.start, at.start..at.start);
    for field in Fields::new(buf, at) {
        match field? {
            (1, v) => name = v.range()?,
            (2, v) => value = v.range()?,
            _ => {}
        }
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use prost::encoding::encode_varint;

    use super::*;

    #[test]
    fn varints_as_protobuf_reads_them() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = BytesMut::new();
            encode_varint(v, &mut buf);
            let mut pos = 0;
            assert_eq!(varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
            // Cut short.
            assert_eq!(varint(&buf[..buf.len() - 1], &mut 0), None);
        }
        // Eleven bytes, and ten whose last overflows 64 bits.
        assert_eq!(varint(&[0xff; 11], &mut 0), None);
        let mut ten = [0xff; 10];
        ten[9] = 0x02;
        assert_eq!(varint(&ten, &mut 0), None);
        assert!(prost::encoding::decode_varint(&mut &ten[..]).is_err());
    }

    /// The short cut for the usual header layout reads exactly what the
    /// general walk reads, on the usual layout and on everything near it.
    #[test]
    fn header_short_cut_agrees_with_the_walk() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for (name_len, value_len) in [(1, 1), (12, 0), (0, 5), (127, 127), (128, 3), (3, 128), (100, 300)] {
            let mut m = BytesMut::new();
            for (tag, len) in [(0x0a, name_len), (0x12, value_len)] {
                if len > 0 {
                    m.extend_from_slice(&[tag]);
                    encode_varint(len as u64, &mut m);
                    m.extend_from_slice(&vec![b'a'; len]);
                }
            }
            let m = m.to_vec();
            cases.push([m.clone(), vec![0x18, 0x01]].concat()); // an unknown field after
            cases.push([m.clone(), m.clone()].concat()); // each field twice
            for cut in 0..=m.len() {
                cases.push(m[..cut].to_vec());
            }
            let mut bad = m.clone();
            bad[0] = 0x0b; // field 1 with another wire type
            cases.push(bad);
        }
        for case in cases {
            let fast = header(&case, 0..case.len());
            let walked = header_walk(&case, 0..case.len());
            assert_eq!(fast, walked, "{case:?}");
        }
    }

    #[test]
    fn a_malformed_field_ends_the_walk() {
        // Field 1 (varint 5), then a length-delimited field 2 claiming 9 bytes of 1.
        let buf = [0x08, 0x05, 0x12, 0x09, 0x00];
        let mut fields = Fields::new(&buf, 0..buf.len());
        assert!(matches!(fields.next(), Some(Ok((1, Value::Varint(5))))));
        assert!(matches!(fields.next(), Some(Err(DecodeError::Malformed(_)))));
        assert!(fields.next().is_none());
    }
}
