//! Captured requests as the user reads them: the summary row and the detail
//! text, shared by `tunnels requests|request` and the monitor's panes so both
//! show a record the same way.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Bytes of a binary body shown as hex: enough to recognise a format's magic
/// number, short enough for one line.
const HEX_PREVIEW: usize = 32;

/// The local UTC offset, looked up once while the process has one thread:
/// `time` refuses the lookup later (another thread could be changing `TZ`).
static LOCAL_OFFSET: OnceLock<UtcOffset> = OnceLock::new();

/// Records the local offset; call before the async runtime starts threads.
pub fn init_local_offset() {
    let _ = LOCAL_OFFSET.set(UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC));
}

fn local_offset() -> UtcOffset {
    *LOCAL_OFFSET.get_or_init(|| UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC))
}

/// One captured request as the list and the stream carry it (unknown fields are
/// ignored, so a newer server's additions do not break an older client).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// `req_…`, time-sortable: newer ids compare greater.
    pub id: String,
    /// RFC 3339 arrival time.
    #[serde(default)]
    pub time: String,
    /// HTTP method.
    #[serde(default)]
    pub method: String,
    /// Path with query.
    #[serde(default)]
    pub path: String,
    /// Status the caller got, if any.
    #[serde(default)]
    pub status: Option<u16>,
    /// Arrival to end of the response body.
    #[serde(default)]
    pub duration_ms: Option<f64>,
    /// `ok`, `tunnel-offline`, `local-unreachable`, …
    #[serde(default)]
    pub outcome: String,
    /// The record this one replays.
    #[serde(default)]
    pub replay_of: Option<String>,
}

impl Summary {
    /// Arrival time as local `hh:mm:ss.mmm` (the date matters little while
    /// watching webhooks arrive; the detail view has it).
    pub fn clock(&self) -> String {
        let format = format_description!("[hour]:[minute]:[second].[subsecond digits:3]");
        in_local(&self.time, format).unwrap_or_else(|| self.time.clone())
    }

    /// The status, or `-` when the caller got none.
    pub fn status_text(&self) -> String {
        self.status.map_or_else(|| "-".to_owned(), |s| s.to_string())
    }

    /// Duration in milliseconds with one decimal.
    pub fn duration_text(&self) -> String {
        self.duration_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
    }

    /// The outcome, marked when the record is a replay.
    pub fn outcome_text(&self) -> String {
        if self.replay_of.is_some() { format!("{} (replay)", self.outcome) } else { self.outcome.clone() }
    }
}

/// `rfc3339` in local time, written as `format`; `None` when it is no
/// RFC 3339 time (each caller shows it otherwise).
fn in_local(rfc3339: &str, format: &(impl time::formatting::Formattable + ?Sized)) -> Option<String> {
    OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?.to_offset(local_offset()).format(format).ok()
}

/// Full time in local time, with the date and offset: for lines that have
/// the room (a table's column takes [`local_time`]). To the millisecond when
/// the time has a fraction; a time kept to the second (a tunnel's, a
/// webhook's) is shown so, not with a `.000` it never had.
pub fn full_time(rfc3339: &str) -> String {
    let with_ms = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3] [offset_hour sign:mandatory]:[offset_minute]"
    );
    let whole = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory]:[offset_minute]"
    );
    let format = if rfc3339.contains('.') { with_ms } else { whole };
    in_local(rfc3339, format).unwrap_or_else(|| rfc3339.to_owned())
}

/// Date and time in local time, to the second, always 19 characters: a
/// column of times the server keeps to the second (a tunnel's last connection).
pub fn local_time_s(rfc3339: &str) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    in_local(rfc3339, format).unwrap_or_else(|| clean(rfc3339))
}

/// Date and time in local time, to the millisecond, always 23 characters
/// (`2026-11-22 10:00:00.120`: RFC 3339 drops a fraction's trailing zeros,
/// which would change a column's width from row to row).
pub fn local_time(rfc3339: &str) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]");
    in_local(rfc3339, format).unwrap_or_else(|| clean(rfc3339))
}

/// `s` cut to `width` characters, ending with `…` when cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// What a detail line is, so the monitor can style it (the CLI prints text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// The request line and summary.
    Title,
    /// A section heading ("Request headers", …).
    Heading,
    /// `name: value`.
    Header,
    /// Body content.
    Body,
    /// Remarks: truncated, binary, capture off.
    Note,
    /// Spacing between sections.
    Blank,
}

/// One line of a record's detail.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailLine {
    /// How to show it.
    pub kind: LineKind,
    /// The text, free of control characters.
    pub text: String,
}

fn line(kind: LineKind, text: impl Into<String>) -> DetailLine {
    DetailLine { kind, text: text.into() }
}

/// The detail of one record (the API's `request` object) as lines; body lines
/// beyond `max_body_lines` are left out with a note saying how many.
pub fn detail_lines(d: &Value, max_body_lines: usize) -> Vec<DetailLine> {
    let summary: Option<Summary> = serde_json::from_value(d.clone()).ok();
    let mut out = Vec::new();
    if let Some(s) = &summary {
        out.push(line(
            LineKind::Title,
            clean(&format!("{} {}  →  {} {}  {}", s.method, s.path, s.status_text(), s.outcome, s.duration_text())),
        ));
    }
    let mut facts = vec![d["id"].as_str().unwrap_or("").to_owned()];
    if let Some(t) = d["time"].as_str() {
        facts.push(format!("at {}", full_time(t)));
    }
    if let Some(ip) = d["clientIp"].as_str() {
        facts.push(format!("from {ip}"));
    }
    if let Some(of) = d["replayOf"].as_str() {
        facts.push(format!("replay of {of}"));
    }
    out.push(line(LineKind::Note, clean(&facts.join("  "))));
    out.push(line(LineKind::Blank, ""));
    part_lines(&mut out, "Request", &d["request"], max_body_lines);
    out.push(line(LineKind::Blank, ""));
    match &d["response"] {
        Value::Null => {
            let outcome = summary.as_ref().map_or("", |s| s.outcome.as_str());
            out.push(line(LineKind::Heading, format!("Response: none ({outcome})")));
        }
        response => {
            let status = summary.as_ref().map_or_else(|| "-".to_owned(), Summary::status_text);
            out.push(line(LineKind::Heading, format!("Response {status}")));
            part_lines(&mut out, "Response", response, max_body_lines);
        }
    }
    out
}

/// What the detail says of a body none of which was received.
const NONE_RECEIVED: &str = "  (none of it was received: not read, or broken off before its first byte; not known)";

/// Whether none of a captured body was received: never read (no client took
/// the request, or its caller left first) with no length declared, or
/// broken off before its first byte. Its size, 0, is not known to be it.
pub fn none_received(part: &Value) -> bool {
    part["truncated"] == true && part["bodySize"].as_u64().unwrap_or(0) == 0
}

/// Whether the `kept` bytes of a body are all that was received of it, and
/// it is short all the same: it broke off, or was not read to an end it never
/// declared.
pub fn received_short(part: &Value, kept: usize) -> bool {
    part["truncated"] == true && part["bodySize"].as_u64().unwrap_or(0) == kept as u64
}

/// What is said of a body all of whose received bytes were kept, and yet
/// short of the body: it broke off, or was not read to an end it never
/// declared. (Not "n of n bytes captured": the capture cut nothing.)
pub fn incomplete(size: u64) -> String {
    format!("(incomplete: only these {size} bytes were received; the body broke off or was not read to its end)")
}

/// Headers and body of the request or the response.
fn part_lines(out: &mut Vec<DetailLine>, name: &str, part: &Value, max_body_lines: usize) {
    out.push(line(LineKind::Heading, format!("{name} headers")));
    let headers = part["headers"].as_object();
    for (k, v) in headers.into_iter().flatten() {
        // A value that is not UTF-8 is text with U+FFFD in `headers`, and its
        // bytes, at the same place, in `headersBase64`.
        let exact = values_of(&part["headersBase64"][k]);
        for (i, value) in values_of(v).iter().enumerate() {
            let Some(text) = value.as_str() else { continue };
            let bytes = exact.get(i).and_then(Value::as_str).and_then(|b| BASE64.decode(b).ok());
            let shown = bytes.map_or_else(|| text.to_owned(), |b| escape_not_utf8(&b));
            out.push(line(LineKind::Header, clean(&format!("  {k}: {shown}"))));
        }
    }
    let size = part["bodySize"].as_u64().unwrap_or(0);
    if none_received(part) {
        out.push(line(LineKind::Heading, format!("{name} body")));
        return out.push(line(LineKind::Note, NONE_RECEIVED));
    }
    out.push(line(LineKind::Heading, format!("{name} body ({size} bytes)")));
    let body = match &part["body"] {
        Value::Null => return out.push(line(LineKind::Note, "  (body capture is off)")),
        Value::String(b) => b,
        _ => return out.push(line(LineKind::Note, "  (unreadable body)")),
    };
    // The bytes kept, and the text to show of them: the API's text, or text
    // that broke off inside a character (which the API sends as base64),
    // its last bytes as `\xNN`.
    let (captured, text): (usize, Option<std::borrow::Cow<str>>) = if part["bodyEncoding"] == "base64" {
        match BASE64.decode(body) {
            Ok(bytes) if std::str::from_utf8(&bytes).is_err_and(|e| e.error_len().is_none() && e.valid_up_to() > 0) => {
                (bytes.len(), Some(escape_not_utf8(&bytes).into()))
            }
            Ok(bytes) => {
                let preview: Vec<String> = bytes.iter().take(HEX_PREVIEW).map(|b| format!("{b:02x}")).collect();
                let more = if bytes.len() > HEX_PREVIEW { " …" } else { "" };
                out.push(line(LineKind::Note, format!("  <{size} bytes binary>")));
                out.push(line(LineKind::Body, format!("  {}{more}", preview.join(" "))));
                (bytes.len(), None)
            }
            Err(_) => {
                out.push(line(LineKind::Note, "  (body is not valid base64)"));
                (0, None)
            }
        }
    } else if body.is_empty() && size == 0 {
        out.push(line(LineKind::Note, "  (empty)"));
        (0, None)
    } else {
        (body.len(), Some(body.as_str().into()))
    };
    if let Some(body) = text {
        let text = pretty_if_json(&body);
        let lines: Vec<&str> = text.lines().collect();
        for l in lines.iter().take(max_body_lines) {
            out.push(line(LineKind::Body, format!("  {}", clean(l))));
        }
        if lines.len() > max_body_lines {
            out.push(line(LineKind::Note, format!("  … {} more lines", lines.len() - max_body_lines)));
        }
    }
    if part["overBudget"] == true {
        out.push(line(
            LineKind::Note,
            format!("  (truncated: {captured} of {size} bytes captured; the server's capture budget was spent)"),
        ));
    } else if received_short(part, captured) {
        out.push(line(LineKind::Note, format!("  {}", incomplete(size))));
    } else if part["truncated"] == true {
        out.push(line(LineKind::Note, format!("  (truncated: {captured} of {size} bytes captured)")));
    }
}

/// A header's values in the API's shape: a string, or an array of them.
fn values_of(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    }
}

/// `bytes` as text, with each byte of a sequence that is not UTF-8 as `\xNN`:
/// a header value such as Latin-1 `caf\xe9` shows which bytes it holds,
/// where U+FFFD would hide them.
fn escape_not_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// JSON pretty-printed when it parses, whatever the content type says (senders
/// often omit it, and a truncated JSON body does not parse); other text as is.
fn pretty_if_json(body: &str) -> String {
    let trimmed = body.trim_start();
    let container = trimmed.starts_with('{') || trimmed.starts_with('[');
    if container && serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
        reindent(body)
    } else {
        body.to_owned()
    }
}

/// Re-indents valid JSON text by two spaces. Works on the text rather than a
/// parsed `Value` so keys keep the sender's order (a `Value` sorts them), which
/// matters when comparing a payload with what the sender signed or logged.
fn reindent(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|&n| n == '}' || n == ']') {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A JSON string field of an API answer as [`clean`] text; empty when it is
/// missing or not a string.
pub fn text(v: &Value) -> String {
    clean(v.as_str().unwrap_or(""))
}

/// Text safe to print: tabs become spaces, and other control characters and
/// the bidirectional controls `�`, so a captured body or a tunnel's name
/// cannot move the cursor, recolour the terminal or reorder what is printed
/// after it (U+202E turns the rest of a line around).
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' => '\u{fffd}',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detail(request: Value, response: Value) -> Value {
        json!({
            "id": "req_1", "time": "2026-11-22T10:00:00.123456Z", "method": "POST", "path": "/hook",
            "status": 200, "durationMs": 1.5, "outcome": "ok", "clientIp": "127.0.0.1",
            "request": request, "response": response,
        })
    }

    fn texts(lines: &[DetailLine]) -> Vec<String> {
        lines.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn json_bodies_are_pretty_printed_even_without_a_json_content_type() {
        let d = detail(
            json!({"headers": {"x-a": ["1", "2"]}, "body": "{\"a\":{\"b\":1}}", "bodyEncoding": "utf8",
                   "bodySize": 13, "truncated": false}),
            json!({"headers": {"content-type": "text/plain"}, "body": "ok", "bodyEncoding": "utf8",
                   "bodySize": 2, "truncated": false}),
        );
        let t = texts(&detail_lines(&d, 100));
        assert!(t.contains(&"    \"a\": {".to_owned()), "{t:#?}");
        assert!(t.contains(&"      \"b\": 1".to_owned()), "{t:#?}");
        assert!(t.contains(&"  x-a: 1".to_owned()) && t.contains(&"  x-a: 2".to_owned()), "{t:#?}");
        assert!(t.contains(&"Response 200".to_owned()) && t.contains(&"  ok".to_owned()), "{t:#?}");
    }

    #[test]
    fn pretty_printing_keeps_key_order_strings_and_empty_containers() {
        let body = r#" {"z": 1, "a": [], "s": "x,{\"y\":[1]}", "o": {"k": [1, {}]}} "#;
        let expected = "{\n  \"z\": 1,\n  \"a\": [],\n  \"s\": \"x,{\\\"y\\\":[1]}\",\n  \"o\": {\n    \"k\": [\n      1,\n      {}\n    ]\n  }\n}";
        assert_eq!(pretty_if_json(body), expected);
        assert_eq!(pretty_if_json("{\"a\":"), "{\"a\":", "invalid JSON stays as it is");
        assert_eq!(pretty_if_json("42"), "42");
    }

    #[test]
    fn binary_truncated_and_uncaptured_bodies_say_so() {
        let d = detail(
            json!({"headers": {}, "body": "AAEC/w==", "bodyEncoding": "base64", "bodySize": 9000, "truncated": true}),
            json!({"headers": {}, "body": null, "bodySize": 5, "truncated": false}),
        );
        let t = texts(&detail_lines(&d, 100));
        assert!(t.contains(&"  <9000 bytes binary>".to_owned()), "{t:#?}");
        assert!(t.contains(&"  00 01 02 ff".to_owned()), "{t:#?}");
        assert!(t.contains(&"  (truncated: 4 of 9000 bytes captured)".to_owned()), "{t:#?}");
        assert!(t.contains(&"  (body capture is off)".to_owned()), "{t:#?}");
    }

    /// A body never read, of undeclared length, kept or not, is not shown as
    /// empty nor as "0 of 0 bytes".
    #[test]
    fn a_body_never_read_says_its_length_is_not_known() {
        for body in [json!(""), Value::Null] {
            let request =
                json!({"headers": {}, "body": body, "bodyEncoding": "utf8", "bodySize": 0, "truncated": true});
            let d = detail(request, json!({"headers": {}, "body": "", "bodySize": 0, "truncated": false}));
            let t = texts(&detail_lines(&d, 100));
            assert!(t.contains(&"Request body".to_owned()), "{t:#?}");
            assert!(t.contains(&NONE_RECEIVED.to_owned()), "{t:#?}");
            assert!(!t.iter().any(|l| l.contains("0 of 0")), "{t:#?}");
        }
    }

    /// A body its caller broke off: all that arrived was kept, and it is
    /// still short of the body, which is not "n of n bytes captured".
    #[test]
    fn a_body_broken_off_says_only_that_much_arrived() {
        let d = detail(
            json!({"headers": {}, "body": "aaaa", "bodyEncoding": "utf8", "bodySize": 4, "truncated": true}),
            json!({"headers": {}, "body": "", "bodySize": 0, "truncated": false}),
        );
        let t = texts(&detail_lines(&d, 100));
        assert!(t.contains(&format!("  {}", incomplete(4))), "{t:#?}");
        assert!(incomplete(4).contains("only these 4 bytes were received"), "{t:#?}");
        assert!(!t.iter().any(|l| l.contains("4 of 4")), "{t:#?}");

        // Broken inside a character (the API sends it as base64): still text.
        let d = detail(
            json!({"headers": {}, "body": BASE64.encode(b"caf\xc3"), "bodyEncoding": "base64", "bodySize": 4,
                   "truncated": true}),
            json!({"headers": {}, "body": "", "bodySize": 0, "truncated": false}),
        );
        let t = texts(&detail_lines(&d, 100));
        assert!(t.contains(&"  caf\\xc3".to_owned()) && !t.iter().any(|l| l.contains("binary")), "{t:#?}");
        // Binary that is not text at all stays binary.
        let d = detail(
            json!({"headers": {}, "body": BASE64.encode(b"\xff\xfe"), "bodyEncoding": "base64", "bodySize": 2,
                   "truncated": false}),
            json!({"headers": {}, "body": "", "bodySize": 0, "truncated": false}),
        );
        assert!(texts(&detail_lines(&d, 100)).contains(&"  <2 bytes binary>".to_owned()));
    }

    #[test]
    fn a_body_cut_by_the_capture_budget_says_why() {
        let d = detail(
            json!({"headers": {}, "body": "ab", "bodyEncoding": "utf8", "bodySize": 5000, "truncated": true,
                   "overBudget": true}),
            json!({"headers": {}, "body": "ok", "bodySize": 2, "truncated": false, "overBudget": false}),
        );
        let t = texts(&detail_lines(&d, 100));
        let note = "  (truncated: 2 of 5000 bytes captured; the server's capture budget was spent)";
        assert!(t.contains(&note.to_owned()), "{t:#?}");
    }

    /// Issue: a header value that is not UTF-8 showed as U+FFFD, hiding
    /// which bytes it held; the detail shows them as `\xNN`, still free of
    /// control characters.
    #[test]
    fn header_values_that_are_not_utf8_show_their_bytes() {
        let b64 = |v: &[u8]| BASE64.encode(v);
        let d = detail(
            json!({"headers": {"x-sig": "caf\u{fffd}", "x-multi": ["plain", "\u{fffd}\u{1b}[31m"], "x-ok": "é"},
                   "headersBase64": {"x-sig": b64(b"caf\xe9"), "x-multi": [b64(b"plain"), b64(b"\xff\x1b[31m")]},
                   "body": "", "bodyEncoding": "utf8", "bodySize": 0, "truncated": false}),
            Value::Null,
        );
        let t = texts(&detail_lines(&d, 100));
        let headers: Vec<&str> = t.iter().map(String::as_str).filter(|l| l.starts_with("  x-")).collect();
        assert_eq!(headers, ["  x-sig: caf\\xe9", "  x-multi: plain", "  x-multi: \\xff\u{fffd}[31m", "  x-ok: é"]);
    }

    #[test]
    fn no_response_and_long_bodies_and_control_characters() {
        let mut d = detail(
            json!({"headers": {}, "body": "a\nb\nc\n\u{1b}[31mred", "bodyEncoding": "utf8", "bodySize": 12,
                   "truncated": false}),
            Value::Null,
        );
        d["outcome"] = json!("local-unreachable");
        let t = texts(&detail_lines(&d, 2));
        assert!(t.contains(&"  … 2 more lines".to_owned()), "{t:#?}");
        assert!(t.contains(&"Response: none (local-unreachable)".to_owned()), "{t:#?}");
        assert_eq!(clean("\u{1b}[31mred\tx"), "\u{fffd}[31mred x");
        assert_eq!(clean("paid\u{202e}txt.exe\u{2066}x\u{2069}"), "paid\u{fffd}txt.exe\u{fffd}x\u{fffd}");
    }

    #[test]
    fn summary_columns() {
        let s: Summary = serde_json::from_value(json!({
            "id": "req_1", "time": "2026-11-22T10:00:00.123456Z", "method": "GET", "path": "/",
            "status": null, "durationMs": 12.34, "outcome": "tunnel-offline", "replayOf": "req_0", "extra": 1
        }))
        .unwrap();
        assert_eq!(s.status_text(), "-");
        assert_eq!(s.duration_text(), "12.3 ms");
        assert_eq!(s.outcome_text(), "tunnel-offline (replay)");
        assert_eq!(s.clock().len(), "10:00:00.123".len());
        assert!(s.clock().ends_with(":00.123"), "{}", s.clock());
        assert_eq!(local_time("2026-11-22T10:00:00.1Z").len(), "2026-11-22 10:00:00.100".len());
        assert!(local_time("2026-11-22T10:00:00.1Z").ends_with(":00.100"));
        assert!(local_time("2026-11-22T10:00:00Z").ends_with(":00.000"));
        assert_eq!(local_time_s("2026-11-22T10:00:00Z").len(), "2026-11-22 10:00:00".len());
        // Lines show a time kept to the second without a fraction it never had.
        let (whole, ms) = (full_time("2026-11-22T10:00:07Z"), full_time("2026-11-22T10:00:07.25Z"));
        assert!(whole.contains(":07 ") && !whole.contains(".000"), "{whole}");
        assert!(ms.contains(":07.250 "), "{ms}");
        assert_eq!(local_time("not a time"), "not a time");
        assert_eq!(fit("/abcdef", 4), "/ab…");
        assert_eq!(fit("/ab", 4), "/ab");
    }
}
