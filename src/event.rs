//! The event model: what a publisher sends ([`NewEvent`]) and what Broker
//! stores ([`Record`]).
//!
//! Publishers are untrusted. Event names end up on an SSE `event:` line, so
//! they must not contain CR, LF or any other control character. `data` ends
//! up on a `data:` line, so it is stored as compact JSON, which never
//! contains a raw line break.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{InsertError, MAX_EVENT_LEN, MAX_TIMESTAMP};

/// Timestamps above the maximum and at least this large are taken for epoch
/// milliseconds, and the error message gives the hint. 10^12 ms is
/// 2001-09-09, so every instant since then, in milliseconds, is in range.
const FIRST_MILLISECOND_TIMESTAMP: u64 = 1_000_000_000_000;

/// A validated event version that is not stored yet.
///
/// Build one with [`NewEvent::new`] or parse one from a request body with
/// [`NewEvent::from_json`]. Both check the name and the timestamp.
#[derive(Debug, Clone)]
pub struct NewEvent {
    event: String,
    timestamp: Option<u64>,
    data: Box<RawValue>,
}

impl NewEvent {
    /// Creates an event version with `data`, due now.
    ///
    /// # Errors
    ///
    /// Returns an [`InsertError`] when the name is empty, longer than 256
    /// bytes or contains a control character.
    ///
    /// ```
    /// let event = broker::NewEvent::new("title", &serde_json::json!({"text": "hi"}))?;
    /// assert_eq!(event.event(), "title");
    /// assert!(broker::NewEvent::new("bad\nname", &serde_json::Value::Null).is_err());
    /// # Ok::<(), broker::InsertError>(())
    /// ```
    pub fn new(event: impl Into<String>, data: &Value) -> Result<Self, InsertError> {
        let event = event.into();
        validate_event(&event)?;
        let data = RawValue::from_string(data.to_string()).expect("a Value serializes to JSON");
        Ok(Self {
            event,
            timestamp: None,
            data,
        })
    }

    /// Sets the epoch second at which this version becomes current.
    ///
    /// # Errors
    ///
    /// Returns an [`InsertError`] for a timestamp beyond 253402300799,
    /// with a hint when it looks like milliseconds.
    pub fn at(mut self, timestamp: u64) -> Result<Self, InsertError> {
        self.timestamp = Some(check_timestamp(timestamp)?);
        Ok(self)
    }

    /// Parses a request body: a JSON object with `event`, and optionally
    /// `timestamp`, `published` (ignored) and `data`.
    ///
    /// # Errors
    ///
    /// Returns an [`InsertError`] naming the field at fault and the fix.
    ///
    /// A UTF-8 byte order mark before the JSON is skipped, as RFC 8259
    /// allows, because some Windows tools write one.
    ///
    /// ```
    /// let event = broker::NewEvent::from_json(br#"{"event": "a", "timestamp": 10}"#)?;
    /// assert_eq!(event.timestamp(), Some(10));
    ///
    /// let error = broker::NewEvent::from_json(br#"{"event": "a", "timestamp": 1733312000000}"#)
    ///     .unwrap_err();
    /// assert!(error.to_string().contains("seconds"));
    /// # Ok::<(), broker::InsertError>(())
    /// ```
    pub fn from_json(body: &[u8]) -> Result<Self, InsertError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let fields = parse_fields(body)?;
        let event = match fields.event {
            None => return Err(InsertError::MissingField { field: "event" }),
            Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(event)) => event,
                Ok(other) => {
                    return Err(InsertError::WrongType {
                        field: "event",
                        expected: "a string",
                        found: json_type(&other),
                    })
                }
                Err(error) => return Err(invalid_json(error)),
            },
        };
        validate_event(&event)?;

        let timestamp = match fields.timestamp {
            None => None,
            Some(raw) => parse_timestamp(&raw)?,
        };

        if let Some(raw) = fields.published {
            let value: Value = serde_json::from_str(raw.get()).map_err(invalid_json)?;
            if !matches!(value, Value::Bool(_) | Value::Null) {
                return Err(InsertError::WrongType {
                    field: "published",
                    expected: "a boolean",
                    found: json_type(&value),
                });
            }
        }

        let data = match fields.data {
            None => null(),
            Some(raw) => compact(&raw),
        };
        if let Some(escape) = find_lone_surrogate(data.get()) {
            return Err(InsertError::LoneSurrogate {
                escape: escape.to_owned(),
            });
        }
        Ok(Self {
            event,
            timestamp,
            data,
        })
    }

    /// Returns the event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// Returns the timestamp, or `None` when the version is due on arrival.
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }

    /// Returns the data as compact JSON.
    pub fn data(&self) -> &RawValue {
        &self.data
    }

    /// Splits into name, timestamp and data, with a missing timestamp set to `now`.
    pub(crate) fn into_parts(self, now: u64) -> (String, u64, Box<RawValue>) {
        (self.event, self.timestamp.unwrap_or(now), self.data)
    }
}

/// A stored event version, as `POST /insert` and `GET /collection` return it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Record id: assigned at insert, growing in insertion order, never reused.
    pub id: u64,
    /// Event name.
    pub event: String,
    /// Epoch second at which this version becomes current.
    pub timestamp: u64,
    /// Whether this version has been published; the server owns this flag.
    pub published: bool,
    /// The publisher's data, as compact JSON, byte for byte as stored.
    pub data: Box<RawValue>,
}

/// A record as published: the record and the publication id that SSE
/// clients see as the message `id`.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Publication id: assigned at publication, growing in publication order.
    pub id: u64,
    /// The published version.
    pub record: Record,
}

/// Checks an event name: 1 to 256 bytes, no control characters.
pub(crate) fn validate_event(event: &str) -> Result<(), InsertError> {
    if event.is_empty() {
        return Err(InsertError::EmptyEvent);
    }
    if event.len() > MAX_EVENT_LEN {
        return Err(InsertError::EventTooLong { len: event.len() });
    }
    if let Some((position, character)) = event.char_indices().find(|(_, c)| c.is_control()) {
        return Err(InsertError::ControlCharacter {
            character,
            position,
        });
    }
    Ok(())
}

fn check_timestamp(timestamp: u64) -> Result<u64, InsertError> {
    if timestamp <= MAX_TIMESTAMP {
        Ok(timestamp)
    } else {
        Err(too_large(timestamp, &timestamp.to_string()))
    }
}

/// Returns the error for a timestamp above the maximum, with a hint when it
/// reads as epoch milliseconds. `text` is the value as sent.
fn too_large(timestamp: u64, text: &str) -> InsertError {
    if timestamp >= FIRST_MILLISECOND_TIMESTAMP && timestamp / 1000 <= MAX_TIMESTAMP {
        InsertError::TimestampInMilliseconds {
            value: timestamp,
            seconds: timestamp / 1000,
        }
    } else {
        InsertError::TimestampTooLarge {
            value: text.to_owned(),
        }
    }
}

/// Parses `timestamp`: a non-negative integer, or `null` for "now".
///
/// A number with a zero fraction, such as `1700000000.0`, counts as an
/// integer, because some JSON encoders write every number that way.
fn parse_timestamp(raw: &RawValue) -> Result<Option<u64>, InsertError> {
    let text = raw.get();
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        // The raw value is valid JSON, so the only failure left is a number
        // too large for a 64-bit float, such as 1e400.
        Err(_) => {
            return Err(InsertError::TimestampTooLarge {
                value: text.to_owned(),
            })
        }
    };
    let number = match value {
        Value::Null => return Ok(None),
        Value::Number(number) => number,
        other => {
            return Err(InsertError::WrongType {
                field: "timestamp",
                expected: "an integer number of epoch seconds",
                found: json_type(&other),
            })
        }
    };

    if let Some(timestamp) = number.as_u64() {
        return check_timestamp(timestamp).map(Some);
    }
    if number.as_i64().is_some() || text.starts_with('-') {
        return Err(InsertError::NegativeTimestamp {
            value: text.to_owned(),
        });
    }

    // A float, or an integer too large for 64 bits, which serde_json reads as a float.
    let float = number.as_f64().unwrap_or(f64::INFINITY);
    if float.fract() != 0.0 {
        Err(InsertError::FractionalTimestamp {
            value: text.to_owned(),
        })
    } else if float <= MAX_TIMESTAMP as f64 {
        Ok(Some(float as u64))
    } else {
        // Saturates at u64::MAX, which is far beyond any millisecond value.
        Err(too_large(float as u64, text))
    }
}

/// The top-level fields of an insert body, still unparsed.
#[derive(Default)]
struct Fields {
    event: Option<Box<RawValue>>,
    timestamp: Option<Box<RawValue>>,
    published: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
}

/// A field-level error found while reading the object, reported after the
/// whole body has parsed so that invalid JSON is reported first.
enum FieldsOutcome {
    Fields(Fields),
    Rejected(InsertError),
}

fn parse_fields(body: &[u8]) -> Result<Fields, InsertError> {
    let value: &RawValue = serde_json::from_slice(body).map_err(invalid_json)?;
    let text = value.get();
    if !text.starts_with('{') {
        let value: Value = serde_json::from_str(text).map_err(invalid_json)?;
        return Err(InsertError::NotAnObject {
            found: json_type(&value),
        });
    }
    match serde_json::from_str::<FieldsOutcome>(text).map_err(invalid_json)? {
        FieldsOutcome::Fields(fields) => Ok(fields),
        FieldsOutcome::Rejected(error) => Err(error),
    }
}

impl<'de> Deserialize<'de> for FieldsOutcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = FieldsOutcome;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        let mut rejected = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: Box<RawValue> = map.next_value()?;
            let slot = match key.as_str() {
                "event" => &mut fields.event,
                "timestamp" => &mut fields.timestamp,
                "published" => &mut fields.published,
                "data" => &mut fields.data,
                _ => {
                    rejected.get_or_insert(InsertError::UnknownField { field: key });
                    continue;
                }
            };
            if slot.replace(value).is_some() {
                rejected.get_or_insert(InsertError::DuplicateField { field: key });
            }
        }
        Ok(match rejected {
            Some(error) => FieldsOutcome::Rejected(error),
            None => FieldsOutcome::Fields(fields),
        })
    }
}

fn invalid_json(error: serde_json::Error) -> InsertError {
    InsertError::InvalidJson {
        reason: error.to_string(),
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// Returns `raw` without insignificant whitespace.
///
/// Strings, numbers and key order stay exactly as sent, which a round trip
/// through `serde_json::Value` would not guarantee (large integers, `1.0`,
/// duplicate keys).
pub(crate) fn compact(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    RawValue::from_string(out).expect("removing whitespace between tokens keeps JSON valid")
}

/// Returns the first `\u` escape in `json` of a UTF-16 surrogate that is
/// not half of a high-low pair. `json` must be valid JSON, whose parser
/// checked that each `\u` has four hex digits.
fn find_lone_surrogate(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let unit_at = |at: usize| -> Option<u16> {
        let escape = json.get(at..at + 6)?.strip_prefix("\\u")?;
        u16::from_str_radix(escape, 16).ok()
    };
    let mut in_string = false;
    let mut at = 0;
    while at < bytes.len() {
        match (in_string, bytes[at]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') if bytes[at + 1] != b'u' => at += 1,
            (true, b'\\') => {
                let unit = unit_at(at)?;
                let paired = (0xD800..0xDC00).contains(&unit)
                    && unit_at(at + 6).is_some_and(|next| (0xDC00..0xE000).contains(&next));
                if paired {
                    at += 6;
                } else if (0xD800..0xE000).contains(&unit) {
                    return Some(&json[at..at + 6]);
                }
                at += 5;
            }
            _ => {}
        }
        at += 1;
    }
    None
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(body: &str) -> InsertError {
        NewEvent::from_json(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn parses_full_body() {
        let body = r#"{"event":"a","timestamp":5,"published":false,"data":{"x":[1, 2]}}"#;
        let event = NewEvent::from_json(body.as_bytes()).unwrap();
        assert_eq!(event.event(), "a");
        assert_eq!(event.timestamp(), Some(5));
        assert_eq!(event.data().get(), r#"{"x":[1,2]}"#);
    }

    #[test]
    fn byte_order_mark_skipped() {
        let event = NewEvent::from_json(b"\xEF\xBB\xBF{\"event\":\"a\"}").unwrap();
        assert_eq!(event.event(), "a");
        let twice = NewEvent::from_json(b"\xEF\xBB\xBF\xEF\xBB\xBF{\"event\":\"a\"}");
        assert!(twice.is_err(), "only one byte order mark is skipped");
    }

    #[test]
    fn defaults_timestamp_and_data() {
        let event = NewEvent::from_json(br#"{"event":"a","timestamp":null}"#).unwrap();
        assert_eq!(event.timestamp(), None);
        assert_eq!(event.data().get(), "null");
    }

    #[test]
    fn compact_keeps_strings_and_numbers() {
        let raw = RawValue::from_string(
            "{ \"a b\" : \"x \\\" y\\n\" ,\n \"n\": 12345678901234567890, \"f\": 1.50 }".into(),
        )
        .unwrap();
        assert_eq!(
            compact(&raw).get(),
            r#"{"a b":"x \" y\n","n":12345678901234567890,"f":1.50}"#
        );
    }

    #[test]
    fn rejects_each_bad_field() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("{", "invalid_json", None),
            ("[1]", "not_an_object", None),
            ("null", "not_an_object", None),
            (r#"{}"#, "missing_field", Some("event")),
            (r#"{"event":1}"#, "wrong_type", Some("event")),
            (r#"{"event":""}"#, "invalid_event", Some("event")),
            (r#"{"event":"a\r"}"#, "invalid_event", Some("event")),
            (r#"{"event":"a\u0000"}"#, "invalid_event", Some("event")),
            (
                r#"{"event":"a","timestamp":-1}"#,
                "invalid_timestamp",
                Some("timestamp"),
            ),
            (
                r#"{"event":"a","timestamp":1.5}"#,
                "invalid_timestamp",
                Some("timestamp"),
            ),
            (
                r#"{"event":"a","timestamp":"1"}"#,
                "wrong_type",
                Some("timestamp"),
            ),
            (
                r#"{"event":"a","timestamp":1e300}"#,
                "invalid_timestamp",
                Some("timestamp"),
            ),
            (
                r#"{"event":"a","timestamp":253402300800}"#,
                "invalid_timestamp",
                Some("timestamp"),
            ),
            (
                r#"{"event":"a","published":1}"#,
                "wrong_type",
                Some("published"),
            ),
            (r#"{"event":"a","extra":1}"#, "unknown_field", Some("extra")),
            (
                r#"{"event":"a","event":"b"}"#,
                "duplicate_field",
                Some("event"),
            ),
        ];
        for (body, code, field) in cases {
            let error = reject(body);
            assert_eq!(error.code(), *code, "code for {body}");
            assert_eq!(error.field(), *field, "field for {body}");
        }
    }

    #[test]
    fn lone_surrogates_in_data_rejected() {
        for (data, escape) in [
            (r#""\ud800""#, r"\ud800"),
            (r#""a\uDFFFb""#, r"\uDFFF"),
            (r#"{"\udc00":1}"#, r"\udc00"),
            (r#"["\ud83d\ud83d\ude00"]"#, r"\ud83d"),
            (r#""\\ud800\ud800x""#, r"\ud800"),
        ] {
            let error = reject(&format!(r#"{{"event":"a","data":{data}}}"#));
            let expected = InsertError::LoneSurrogate {
                escape: escape.to_owned(),
            };
            assert_eq!(error, expected, "data {data}");
            assert_eq!(error.field(), Some("data"));
        }
        for data in [r#""\ud83d\ude00""#, r#""\\ud800""#, r#""\u00e9\\""#] {
            let body = format!(r#"{{"event":"a","data":{data}}}"#);
            let event = NewEvent::from_json(body.as_bytes()).expect(&body);
            assert_eq!(event.data().get(), data);
        }
    }

    #[test]
    fn milliseconds_hint_seconds() {
        let error = reject(r#"{"event":"a","timestamp":1733312000000}"#);
        assert_eq!(
            error,
            InsertError::TimestampInMilliseconds {
                value: 1_733_312_000_000,
                seconds: 1_733_312_000
            }
        );
        assert!(error.to_string().contains("seconds"), "{error}");
    }

    #[test]
    fn event_length_counts_bytes() {
        let name = "é".repeat(128);
        assert!(NewEvent::from_json(format!(r#"{{"event":"{name}"}}"#).as_bytes()).is_ok());
        let error = reject(&format!(r#"{{"event":"{name}a"}}"#));
        assert_eq!(error, InsertError::EventTooLong { len: 257 });
    }

    #[test]
    fn timestamp_edges() {
        let max_plus_one = reject(r#"{"event":"a","timestamp":253402300800}"#);
        assert_eq!(max_plus_one.code(), "invalid_timestamp");
        assert!(
            !max_plus_one.to_string().contains("milliseconds"),
            "{max_plus_one}"
        );

        let float_millis = reject(r#"{"event":"a","timestamp":1733312000000.0}"#);
        assert!(
            float_millis.to_string().contains("milliseconds"),
            "{float_millis}"
        );

        let below_i64 = reject(r#"{"event":"a","timestamp":-9223372036854775809}"#);
        assert!(
            below_i64.to_string().contains("-9223372036854775809"),
            "{below_i64}"
        );

        let huge = reject(r#"{"event":"a","timestamp":1e400}"#);
        assert!(huge.to_string().contains("1e400"), "{huge}");
        assert!(!huge.to_string().contains("column"), "{huge}");

        let tiny_fraction = reject(r#"{"event":"a","timestamp":-1.5}"#);
        assert_eq!(tiny_fraction.code(), "invalid_timestamp");
    }

    #[test]
    fn integral_float_timestamp_accepted() {
        let event = NewEvent::from_json(br#"{"event":"a","timestamp":1700000000.0}"#).unwrap();
        assert_eq!(event.timestamp(), Some(1_700_000_000));
    }
}
