//! Property tests of the insert parser, its error bodies and the request
//! parsing of the HTTP API, through the public library API. The SSE encoder
//! and the query parser have their own property tests inside the crate,
//! because their functions are private.

use broker::api::ApiError;
use broker::{InsertError, NewEvent, MAX_EVENT_LEN, MAX_TIMESTAMP};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

/// A fragment of JSON text, and the same fragment without whitespace
/// between tokens, which is how Broker stores `data`.
#[derive(Debug, Clone)]
struct Json {
    text: String,
    compact: String,
    /// Whether serde_json can read the fragment as a `Value` apart from its
    /// strings: every number fits an f64 and nesting stays under 128 levels.
    readable: bool,
}

impl Json {
    fn token(text: impl Into<String>, readable: bool) -> Self {
        let text = text.into();
        Self {
            compact: text.clone(),
            text,
            readable,
        }
    }
}

/// JSON whitespace, mostly none.
fn whitespace() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just(String::new()), 1 => "[ \t\r\n]{1,3}"]
}

/// Generates one piece of a JSON string literal: raw text, a short escape, or a
/// `\u` escape of any code unit, including lone surrogates and NUL.
fn string_piece() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z ]{1,4}",
        2 => prop::sample::select(vec![
            "\u{2028}", "\u{2029}", "\u{85}", "\u{feff}", "é", "中", "😀", "\u{10ffff}",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t", r"\u0000", r"\u000A",
            r"\u000d", r"\u2028", r"\u0085", r"\ud83d\ude00", r"\uD800", r"\udfff",
        ])
        .prop_map(str::to_owned),
        1 => any::<u16>().prop_map(|unit| format!("\\u{unit:04x}")),
        // Raw control characters, which JSON strings must not contain.
        1 => prop::sample::select(vec!["\n", "\r", "\0", "\t", "\u{1f}"]).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ]
    .boxed()
}

fn string_literal() -> BoxedStrategy<String> {
    prop::collection::vec(string_piece(), 0..6)
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()))
        .boxed()
}

/// Numbers in and out of the f64 range, and some that JSON forbids.
fn number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(|n| Json::token(n.to_string(), true)),
        any::<u64>().prop_map(|n| Json::token(n.to_string(), true)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Json::token(format!("{f:?}"), true)),
        prop::sample::select(vec!["-0", "1.0", "1E+2", "0.5e-3", "1700000000.0", "1e308"])
            .prop_map(|n| Json::token(n, true)),
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "123456789012345678901234567890123456789012345678901234567890e300",
        ])
        .prop_map(|n| Json::token(n, false)),
        prop::sample::select(vec!["01", "1.", "+1", "NaN", "Infinity", "0x10", ".5"])
            .prop_map(|n| Json::token(n, true)),
    ]
}

/// Any JSON value as text, with random whitespace, nested up to five levels.
fn json_value() -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["null", "true", "false"]).prop_map(|t| Json::token(t, true)),
        number(),
        string_literal().prop_map(|s| Json::token(s, true)),
        // Nesting beyond serde_json's recursion limit of 128.
        (100..3000usize)
            .prop_map(|depth| { Json::token("[".repeat(depth) + &"]".repeat(depth), depth < 128) }),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let member = (string_literal(), whitespace(), inner.clone(), whitespace());
        prop_oneof![
            prop::collection::vec((whitespace(), inner, whitespace()), 0..6)
                .prop_map(|items| join('[', ']', items)),
            prop::collection::vec(member, 0..6).prop_map(|members| {
                let items = members.into_iter().map(|(key, before, value, after)| {
                    let text = format!("{key}{before}:{after}{}", value.text);
                    let compact = format!("{key}:{}", value.compact);
                    let value = Json {
                        text,
                        compact,
                        readable: value.readable,
                    };
                    (String::new(), value, String::new())
                });
                join('{', '}', items.collect())
            }),
        ]
    })
    .boxed()
}

/// Joins items with commas between `open` and `close`, keeping each item's
/// surrounding whitespace in the text only.
fn join(open: char, close: char, items: Vec<(String, Json, String)>) -> Json {
    let text: Vec<String> = items
        .iter()
        .map(|(before, item, after)| format!("{before}{}{after}", item.text))
        .collect();
    let compact: Vec<&str> = items
        .iter()
        .map(|(_, item, _)| item.compact.as_str())
        .collect();
    Json {
        text: format!("{open}{}{close}", text.join(",")),
        compact: format!("{open}{}{close}", compact.join(",")),
        readable: items.iter().all(|(_, item, _)| item.readable),
    }
}

/// Generates a top-level key: mostly a real field, sometimes escaped, duplicated
/// by chance, or junk.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            r#""event""#, r#""timestamp""#, r#""published""#, r#""data""#,
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec![r#""\u0065vent""#, r#""d\u0061ta""#, r#""Event""#, r#""""#])
            .prop_map(str::to_owned),
        1 => string_literal(),
    ]
}

/// Generates a value suited to `key`, or any value.
fn value_for(key: &str) -> BoxedStrategy<Json> {
    let suited = match key {
        r#""event""# => prop_oneof![
            3 => "[a-zA-Z0-9 :é中😀\u{2028}]{1,8}".prop_map(|s| Json::token(format!("\"{s}\""), true)),
            1 => string_literal().prop_map(|s| Json::token(s, true)),
        ]
        .boxed(),
        r#""timestamp""# => prop_oneof![
            (0..=MAX_TIMESTAMP + 10).prop_map(|n| Json::token(n.to_string(), true)),
            number(),
        ]
        .boxed(),
        r#""published""# => prop::sample::select(vec!["true", "false", "null"])
            .prop_map(|t| Json::token(t, true))
            .boxed(),
        _ => json_value(),
    };
    prop_oneof![4 => suited, 1 => json_value()].boxed()
}

/// Generates an insert body: an object of 0 to 5 members, with whitespace anywhere,
/// sometimes cut short or followed by junk. Returns the body and its
/// members as (key, value) pairs.
fn near_valid_body() -> impl Strategy<Value = (String, Vec<(String, Json)>)> {
    let member = key().prop_flat_map(|key| (Just(key.clone()), value_for(&key)));
    (
        prop::collection::vec((member, whitespace()), 0..6),
        whitespace(),
        prop_oneof![8 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
        prop_oneof![8 => Just(""), 1 => Just("x"), 1 => Just(",}")],
    )
        .prop_map(|(members, space, cut, junk)| {
            let text: Vec<String> = members
                .iter()
                .map(|((key, value), space)| format!("{space}{key}{space}:{space}{}", value.text))
                .collect();
            let mut body = format!("{space}{{{}{space}}}{junk}", text.join(","));
            if let Some(cut) = cut {
                let mut at = cut.index(body.len() + 1);
                while !body.is_char_boundary(at) {
                    at -= 1;
                }
                body.truncate(at);
            }
            let members = members.into_iter().map(|(member, _)| member).collect();
            (body, members)
        })
}

/// Checks what holds for every accepted body, given the text of its `data`
/// member (`None` when it has none).
fn check_accepted(event: &NewEvent, data: Option<&Json>) -> Result<(), TestCaseError> {
    let name = event.event();
    prop_assert!(NewEvent::new(name, &Value::Null).is_ok(), "{name:?}");
    prop_assert!(!name.is_empty());
    prop_assert!(name.len() <= MAX_EVENT_LEN);
    prop_assert!(!name.chars().any(char::is_control), "{name:?}");
    prop_assert!(event.timestamp().is_none_or(|t| t <= MAX_TIMESTAMP));

    let stored = event.data().get();
    prop_assert!(!stored.contains(['\r', '\n']), "{stored:?}");
    prop_assert!(
        serde_json::from_str::<&RawValue>(stored).is_ok(),
        "{stored:?}"
    );
    let Some(data) = data else {
        prop_assert_eq!(stored, "null");
        return Ok(());
    };
    prop_assert_eq!(stored, &data.compact);
    if data.readable {
        let stored: Value = serde_json::from_str(stored)
            .map_err(|error| TestCaseError::fail(format!("{error}: {stored:?}")))?;
        let sent: Value = serde_json::from_str(&data.text).expect("accepted data is JSON");
        prop_assert_eq!(stored, sent);
    }
    Ok(())
}

/// Checks that an accepted body parsed from any input stores the input's
/// `data`, as far as serde_json can read the input.
fn check_accepted_input(event: &NewEvent, input: &[u8]) -> Result<(), TestCaseError> {
    let name = event.event();
    prop_assert!(NewEvent::new(name, &Value::Null).is_ok(), "{name:?}");
    let stored = event.data().get();
    prop_assert!(!stored.contains(['\r', '\n']), "{stored:?}");
    if let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(input) {
        let sent = input.get("data").cloned().unwrap_or(Value::Null);
        let stored: Value = serde_json::from_str(stored).expect("readable input stays readable");
        prop_assert_eq!(stored, sent);
    }
    Ok(())
}

/// The fields whose errors name them; `unknown_field` names the key as sent.
const FIELDS: [&str; 4] = ["event", "timestamp", "published", "data"];

/// Checks a rejection: a known code, the field at fault where there is one,
/// and a JSON error body that carries both.
fn check_rejected(error: &InsertError) -> Result<(), TestCaseError> {
    let code = error.code();
    let field = error.field();
    match code {
        "invalid_json" if matches!(error, InsertError::LoneSurrogate { .. }) => {
            prop_assert_eq!(field, Some("data"));
        }
        "invalid_json" | "not_an_object" => prop_assert_eq!(field, None),
        "unknown_field" => prop_assert!(field.is_some()),
        "missing_field" | "wrong_type" | "duplicate_field" => {
            prop_assert!(
                field.is_some_and(|field| FIELDS.contains(&field)),
                "{field:?}"
            );
        }
        "invalid_event" => prop_assert_eq!(field, Some("event")),
        "invalid_timestamp" => prop_assert_eq!(field, Some("timestamp")),
        other => prop_assert!(false, "unexpected code {other}"),
    }

    let message = error.to_string();
    let api = ApiError::from(error.clone());
    prop_assert_eq!(api.status(), 400);
    let body: Value = serde_json::from_slice(&api.to_json())
        .map_err(|e| TestCaseError::fail(format!("error body is not JSON: {e}")))?;
    prop_assert_eq!(&body["error"], code);
    prop_assert_eq!(&body["message"], message.as_str());
    match field {
        Some(field) => prop_assert_eq!(&body["field"], field),
        None => prop_assert!(body.get("field").is_none(), "{body}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parser_handles_any_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        match NewEvent::from_json(&input) {
            Ok(event) => check_accepted_input(&event, &input)?,
            Err(error) => check_rejected(&error)?,
        }
    }

    #[test]
    fn parser_handles_any_string(input in any::<String>()) {
        match NewEvent::from_json(input.as_bytes()) {
            Ok(event) => check_accepted_input(&event, input.as_bytes())?,
            Err(error) => check_rejected(&error)?,
        }
    }

    #[test]
    fn parser_handles_near_valid_objects((body, members) in near_valid_body()) {
        match NewEvent::from_json(body.as_bytes()) {
            Ok(event) => {
                let data: Vec<&Json> = members
                    .iter()
                    .filter(|(key, _)| serde_json::from_str::<String>(key).is_ok_and(|k| k == "data"))
                    .map(|(_, value)| value)
                    .collect();
                prop_assert!(data.len() <= 1, "an accepted body has one data member at most");
                check_accepted(&event, data.first().copied())?;
            }
            Err(error) => check_rejected(&error)?,
        }
    }
}

#[test]
fn lone_surrogate_in_data_rejected() {
    let error = NewEvent::from_json(br#"{"event":"a","data":{"k":"\ud800"}}"#).unwrap_err();
    assert_eq!(error.code(), "invalid_json");
    assert_eq!(error.field(), Some("data"));
}

/// `GET /events` and `GET /collection/{event}` request parsing, through
/// the API handlers on a broker of each compiled-in storage kind.
#[cfg(any(feature = "redb", feature = "sled"))]
mod requests {
    use broker::auth::Credentials;
    use broker::{api, Broker, Config, NewEvent, StorageKind};
    use futures_lite::future::block_on;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    use serde_json::Value;

    /// Names stored before the requests, so that segments can extend them.
    const NAMES: [&str; 3] = ["a", "a b", "é"];

    fn open(dir: &tempfile::TempDir, kind: StorageKind) -> Broker {
        let config = Config::default()
            .with_data_dir(dir.path())
            .with_storage(kind);
        let broker = block_on(Broker::open(config)).expect("broker opens");
        for name in NAMES {
            let event = NewEvent::new(name, &Value::from(1)).expect("valid event");
            block_on(broker.insert(event)).expect("insert succeeds");
        }
        broker
    }

    fn kinds() -> Vec<StorageKind> {
        vec![
            #[cfg(feature = "redb")]
            StorageKind::Redb,
            #[cfg(feature = "sled")]
            StorageKind::Sled,
        ]
    }

    /// Generates a stored name, percent-encoded or not, followed by percent escapes
    /// (NUL, invalid UTF-8, malformed) and raw text; or any string.
    fn segment() -> impl Strategy<Value = String> {
        let escape = prop_oneof![
            3 => Just("%00".to_owned()),
            2 => prop::sample::select(vec!["%0A", "%FF", "%C3", "%zz", "%", "%2F", "%20"])
                .prop_map(str::to_owned),
            1 => any::<u8>().prop_map(|byte| format!("%{byte:02X}")),
            1 => "[a-z]{1,3}",
        ];
        prop_oneof![
            (
                prop::sample::select(vec!["a", "a%20b", "%C3%A9", "é"]),
                prop::collection::vec(escape, 0..4),
            )
                .prop_map(|(name, escapes)| format!("{name}{}", escapes.concat())),
            any::<String>(),
        ]
    }

    #[test]
    fn requests_never_fail_storage() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let broker = open(&dir, kind);
            let mut runner = TestRunner::new(RunnerConfig::with_cases(256));
            let inputs = (
                segment(),
                any::<String>(),
                proptest::option::of("[0-9a-z +-]{0,22}"),
            );
            let result = runner.run(&inputs, |(segment, query, last_event_id)| {
                let open = Credentials::default();
                match block_on(api::collection(&broker, &segment, None, open)) {
                    Ok(body) => {
                        let records: Value = serde_json::from_slice(&body).unwrap();
                        prop_assert!(records.is_array(), "{records}");
                    }
                    Err(error) => prop_assert_eq!(error.code(), "invalid_path", "{}", error),
                }
                let last_event_id = last_event_id.as_deref();
                let events = api::events(&broker, Some(&query), last_event_id, open, None);
                if let Err(error) = block_on(events) {
                    let code = error.code();
                    prop_assert!(
                        matches!(code, "invalid_filter" | "invalid_last_event_id"),
                        "{error}"
                    );
                }
                Ok(())
            });
            if let Err(failure) = result {
                panic!("{kind:?}: {failure}");
            }
        }
    }

    /// Stored keys of `a` start with the bytes of `a`, NUL and the id, so
    /// a name of `a`, NUL and more must not match them by prefix.
    #[test]
    fn collection_of_name_with_nul_is_empty() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let broker = open(&dir, kind);
            for name in ["a\0", "a\0\0", "a\0\0\0\0\0\0\0\0\u{1}"] {
                let records = block_on(broker.collection(name)).expect("collection reads");
                assert!(records.is_empty(), "{kind:?}: {name:?}");
            }
            let records = block_on(broker.collection("a")).expect("collection reads");
            assert_eq!(records.len(), 1, "{kind:?}");
        }
    }
}
