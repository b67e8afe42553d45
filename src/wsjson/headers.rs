//! Headers in seed 001's messages: a JSON object of lowercase names, each with
//! a string (or an array of strings), both ways.

use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use super::{QUOTE_MAX, clip};

/// Headers from a JSON object: values are strings, numbers or booleans
/// (stringified), or arrays of those (one header line each).
pub(super) fn headers_from_json(value: Option<&Value>) -> Result<HeaderMap, String> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(HeaderMap::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err("\"headers\" must be an object".into()),
    };
    let too_many = || format!("more than {} header lines", crate::wire::MAX_HEADERS);
    if obj.len() > crate::wire::MAX_HEADERS {
        return Err(too_many());
    }
    let mut map = HeaderMap::with_capacity(obj.len());
    for (name, value) in obj {
        let quoted = || clip(name, QUOTE_MAX);
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {:?}", quoted()))?;
        let mut add = |v: &Value| -> Result<(), String> {
            let text = match v {
                Value::String(s) => HeaderValue::from_str(s),
                Value::Number(n) => HeaderValue::from_str(&n.to_string()),
                Value::Bool(b) => HeaderValue::from_str(if *b { "true" } else { "false" }),
                _ => return Err(format!("header {:?} must be a string or an array of strings", quoted())),
            };
            if map.len() == crate::wire::MAX_HEADERS {
                return Err(too_many());
            }
            map.append(header.clone(), text.map_err(|_| format!("invalid value for header {:?}", quoted()))?);
            Ok(())
        };
        match value {
            Value::Array(items) => items.iter().try_for_each(&mut add)?,
            Value::Null => {}
            other => add(other)?,
        }
    }
    Ok(map)
}

/// Headers as a JSON object of lowercase names. Repeated headers are folded
/// into one value as HTTP allows (`, `; `; ` for `cookie`), except
/// `set-cookie`, which cannot be folded and becomes an array when repeated.
pub(super) struct JsonHeaders<'a>(pub(super) &'a HeaderMap);

impl Serialize for JsonHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            let mut values = self.0.get_all(name).iter();
            let first = values.next().map(lossy).unwrap_or_default();
            let second = values.next();
            match second {
                None => map.serialize_entry(name.as_str(), &first)?,
                Some(second) if name == header::SET_COOKIE => {
                    let all: Vec<String> = [first, lossy(second)].into_iter().chain(values.map(lossy)).collect();
                    map.serialize_entry(name.as_str(), &all)?;
                }
                Some(second) => {
                    let sep = if name == header::COOKIE { "; " } else { ", " };
                    let mut folded = first;
                    for v in std::iter::once(second).chain(values) {
                        folded.push_str(sep);
                        folded.push_str(&lossy(v));
                    }
                    map.serialize_entry(name.as_str(), &folded)?;
                }
            }
        }
        map.end()
    }
}

fn lossy(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}
