//! An SSE parser written from the WHATWG HTML standard's EventSource rules
//! ("Interpreting an event stream"), and proptest strategies for the
//! events that [`NewEvent::from_json`] accepts. The crate's property tests
//! parse Broker's frames back with it, so it shares no code with the encoder.

use proptest::prelude::*;
use serde_json::Value;

use crate::event::{validate_event, NewEvent, Publication, Record};

/// One line of an event stream, before dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line that starts with `:`, without that colon.
    Comment(String),
    /// A field name and its value, with one leading space of the value removed.
    Field(String, String),
}

/// An event stream cut into blocks at blank lines.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The lines of each block that a blank line ended, in order.
    pub(crate) blocks: Vec<Vec<Line>>,
    /// Lines after the last blank line, which no blank line dispatched.
    pub(crate) pending: Vec<Line>,
    /// Text after the last line ending, which the standard discards.
    pub(crate) unterminated: String,
}

/// A dispatched message event, as an EventSource fires it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The last event ID buffer at dispatch.
    pub(crate) last_event_id: String,
    /// The event type, `message` when no `event` field set one.
    pub(crate) event: String,
    /// The `data` values joined with LF.
    pub(crate) data: String,
}

/// What an EventSource makes of a whole stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Interpreted {
    pub(crate) messages: Vec<Message>,
    /// The reconnection time in milliseconds from the last valid `retry` field.
    pub(crate) retry: Option<u64>,
}

/// Splits `stream` into lines and blocks. Lines end at CRLF, LF or CR; a
/// leading byte order mark is dropped; invalid UTF-8 becomes U+FFFD, as
/// the standard's UTF-8 decode does.
pub(crate) fn parse(stream: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(stream);
    let mut rest = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut parsed = Parsed::default();
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let ending = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + ending..];
        if line.is_empty() {
            parsed.blocks.push(std::mem::take(&mut parsed.pending));
        } else if let Some(comment) = line.strip_prefix(':') {
            parsed.pending.push(Line::Comment(comment.to_owned()));
        } else {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            parsed
                .pending
                .push(Line::Field(name.to_owned(), value.to_owned()));
        }
    }
    parsed.unterminated = rest.to_owned();
    parsed
}

/// Applies the standard's field processing to every line, and dispatch to
/// every block that a blank line ended.
pub(crate) fn interpret(parsed: &Parsed) -> Interpreted {
    let mut interpreted = Interpreted::default();
    let mut last_event_id = String::new();
    let blocks = parsed.blocks.iter().map(|block| (block, true));
    for (block, dispatched) in blocks.chain([(&parsed.pending, false)]) {
        let mut event = String::new();
        let mut data = String::new();
        for line in block {
            let Line::Field(name, value) = line else {
                continue;
            };
            match name.as_str() {
                "event" => event = value.clone(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => last_event_id = value.clone(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    // Digits beyond u64 are out of any real range; keep the maximum.
                    interpreted.retry = Some(value.parse().unwrap_or(u64::MAX));
                }
                _ => {}
            }
        }
        if !dispatched || data.is_empty() {
            continue;
        }
        data.pop();
        if event.is_empty() {
            event = "message".to_owned();
        }
        interpreted.messages.push(Message {
            last_event_id: last_event_id.clone(),
            event,
            data,
        });
    }
    interpreted
}

/// Characters that stress names and JSON strings: line breaks of every
/// kind, NUL and other controls, the byte order mark, SSE syntax, and text
/// outside ASCII and the Basic Multilingual Plane.
fn tricky_char() -> BoxedStrategy<char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        4 => prop::sample::select(vec![
            ' ', ':', '"', '\\', '/', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', 'é', '中',
            '😀', '\u{10ffff}',
        ]),
        1 => prop::sample::select(vec!['\r', '\n', '\0', '\t', '\u{7f}', '\u{85}', '\u{1b}']),
        1 => any::<char>(),
    ]
    .boxed()
}

/// Any event name that [`validate_event`] accepts, up to its maximum length.
pub(crate) fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::collection::vec(tricky_char(), 1..24).prop_map(String::from_iter),
        1 => (1..=crate::error::MAX_EVENT_LEN).prop_map(|len| "n".repeat(len)),
    ]
    .prop_filter("valid event names", |name| validate_event(name).is_ok())
}

/// Any JSON value, nested up to four levels, with tricky strings and keys.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let text = prop::collection::vec(tricky_char(), 0..12)
        .prop_map(String::from_iter)
        .boxed();
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// An accepted event: a body with `name` and `data`, pretty-printed or
/// compact, parsed by [`NewEvent::from_json`].
pub(crate) fn accepted_event(name: &str, data: &Value, pretty: bool) -> NewEvent {
    let body = serde_json::json!({ "event": name, "data": data });
    let text = if pretty {
        serde_json::to_string_pretty(&body)
    } else {
        serde_json::to_string(&body)
    }
    .expect("a Value serializes");
    NewEvent::from_json(text.as_bytes()).expect("a valid name and any data are accepted")
}

/// A publication of an accepted event with any name, any data and any id.
pub(crate) fn publication() -> impl Strategy<Value = Publication> {
    (
        event_name(),
        json_value(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(name, data, pretty, id, record_id)| {
            let event = accepted_event(&name, &data, pretty);
            Publication {
                id,
                record: Record {
                    id: record_id,
                    event: event.event().to_owned(),
                    timestamp: 0,
                    published: true,
                    data: event.data().to_owned(),
                },
            }
        })
}

/// The message an EventSource must fire for `publication`.
pub(crate) fn expected_message(publication: &Publication) -> Message {
    Message {
        last_event_id: publication.id.to_string(),
        event: publication.record.event.clone(),
        data: publication.record.data.get().to_owned(),
    }
}

#[test]
fn parser_follows_line_rules() {
    let parsed = parse(b"\xef\xbb\xbfdata:a\r\ndata: b\rid\n: hi\nevent:  x\r\n\r\nretry: 5\ndata");
    assert_eq!(
        parsed.blocks,
        vec![vec![
            Line::Field("data".into(), "a".into()),
            Line::Field("data".into(), "b".into()),
            Line::Field("id".into(), String::new()),
            Line::Comment(" hi".into()),
            Line::Field("event".into(), " x".into()),
        ]]
    );
    assert_eq!(
        parsed.pending,
        vec![Line::Field("retry".into(), "5".into())]
    );
    assert_eq!(parsed.unterminated, "data");

    let interpreted = interpret(&parsed);
    let message = Message {
        last_event_id: String::new(),
        event: " x".into(),
        data: "a\nb".into(),
    };
    assert_eq!(interpreted.messages, vec![message]);
    assert_eq!(
        interpreted.retry,
        Some(5),
        "a field takes effect before dispatch"
    );
}

#[test]
fn interpreter_keeps_last_event_id() {
    let interpreted = interpret(&parse(b"id: 1\ndata: a\n\nretry: x\n\nid: 2\x00\ndata\n\n"));
    let ids: Vec<&str> = interpreted
        .messages
        .iter()
        .map(|message| message.last_event_id.as_str())
        .collect();
    assert_eq!(ids, ["1", "1"], "an id with NUL is ignored");
    assert_eq!(interpreted.messages[1].data, "");
    assert_eq!(interpreted.messages[1].event, "message");
    assert_eq!(
        interpreted.retry, None,
        "a retry that is not digits is ignored"
    );
}
