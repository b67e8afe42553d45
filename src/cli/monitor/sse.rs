//! A server-sent events parser, sans IO: bytes in, events out, following the
//! WHATWG rules the stream is written to (`field: value` lines, a blank line
//! ends an event, `:` starts a comment, LF, CRLF or CR end a line).

/// Longest line kept: a summary is a few hundred bytes, so a longer line is a
/// broken or hostile stream, and buffering it would cost unbounded memory.
pub const MAX_LINE: usize = 256 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty means the default, "message").
    pub event: String,
    /// `id:` of this event, or the last one seen.
    pub id: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// The stream broke the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`].
    #[error("event stream line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Parser state across chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF starting this one belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: String,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                        out.push(event);
                    }
                }
                _ if self.line.len() >= MAX_LINE => return Err(SseError::LineTooLong),
                _ => self.line.push(b),
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            // An event without data lines is not dispatched (the spec's rule).
            return std::mem::take(&mut self.has_data).then(|| SseEvent { event, id: self.last_id.clone(), data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = value.to_owned(),
            _ => {} // retry and unknown fields: nothing to do here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        input.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    fn ev(event: &str, id: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), id: id.into(), data: data.into() }
    }

    #[test]
    fn events_comments_and_keepalives() {
        let got = all(&[b": connected\n\nevent: request\nid: req_1\ndata: {\"a\":1}\n\n: keep-alive\n\n"]);
        assert_eq!(got, [ev("request", "req_1", "{\"a\":1}")]);
    }

    #[test]
    fn split_anywhere_across_chunks() {
        let input = b"event: request\nid: req_1\ndata: {\"a\":1}\n\nevent: request\ndata:x\n\n";
        let whole = all(&[input]);
        assert_eq!(whole.len(), 2);
        for cut in 0..input.len() {
            assert_eq!(all(&[&input[..cut], &input[cut..]]), whole, "cut at {cut}");
        }
        // Byte by byte too.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
    }

    #[test]
    fn line_endings_multiline_data_and_defaults() {
        assert_eq!(all(&[b"data: a\r\ndata: b\r\n\r\n"]), [ev("", "", "a\nb")]);
        assert_eq!(all(&[b"data: a\r", b"\ndata:b\r\r"]), [ev("", "", "a\nb")]);
        // No space after the colon, a field without a colon, and unknown fields.
        assert_eq!(all(&[b"data:x\ndata\nretry: 5\nfoo: bar\n\n"]), [ev("", "", "x\n")]);
        // An event with no data is not dispatched, and its name does not leak.
        assert_eq!(all(&[b"event: request\n\ndata: y\n\n"]), [ev("", "", "y")]);
        // The last id carries over to later events.
        assert_eq!(all(&[b"id: 7\ndata: a\n\ndata: b\n\n"]), [ev("", "7", "a"), ev("", "7", "b")]);
        // Nothing is dispatched before the blank line.
        assert_eq!(all(&[b"event: request\ndata: z\n"]), []);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut p = SseParser::default();
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(p.push(&long), Err(SseError::LineTooLong));
    }
}
