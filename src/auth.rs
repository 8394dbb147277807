//! Publisher and subscriber authorization with JSON Web Tokens.
//!
//! Each role has its own optional HS256 secret in [`Config`](crate::Config).
//! Without a secret the role is open. With one, a request must carry a token
//! signed with that secret, and the token's claims decide which event names
//! it may publish or receive:
//!
//! - `exp` (required): expiry time in epoch seconds, checked with a leeway
//!   of [`LEEWAY_SECS`] seconds for clock skew.
//! - `nbf` (optional): not-before time in epoch seconds, checked the same way.
//! - `events` (optional): an array of event names. Without it the token
//!   covers every name; an empty array covers none.
//!
//! A token whose header `alg` is anything but `HS256` is rejected, `none`
//! included. So is a token with an `aud` claim, because Broker has no
//! audience of its own to match it against.
//!
//! A request carries its token in the first of these sources that is present:
//! the `Authorization: Bearer <token>` header, the [`COOKIE_NAME`] cookie, or,
//! for subscribers only, the [`QUERY_PARAMETER`] query parameter, because a
//! browser's `EventSource` cannot set headers.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::debug;

/// The cookie that carries a token, for both roles.
pub const COOKIE_NAME: &str = "broker_authorization";

/// The query parameter that carries a subscriber token.
pub const QUERY_PARAMETER: &str = "authorization";

/// Seconds by which `exp` and `nbf` may be off to allow for clock skew
/// between the token issuer and the broker.
pub const LEEWAY_SECS: u64 = 5;

/// The minimum secret length in bytes. RFC 7518 (JSON Web Algorithms)
/// requires an HS256 key at least as long as its 32-byte SHA-256 output.
pub const MIN_SECRET_LEN: usize = 32;

/// The realm named in `WWW-Authenticate` challenges.
const REALM: &str = "broker";

/// An HS256 secret that verifies tokens. Its `Debug` output never shows the
/// secret.
#[derive(Clone)]
pub struct Secret {
    key: DecodingKey,
}

impl Secret {
    /// Creates a secret from its bytes, used as they are.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidSecret`] when the secret is shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, InvalidSecret> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(InvalidSecret { len: secret.len() });
        }
        let key =
            DecodingKey::from_secret(secret).map_err(|_| InvalidSecret { len: secret.len() })?;
        Ok(Self { key })
    }

    fn bytes(&self) -> &[u8] {
        self.key
            .try_get_as_bytes()
            .expect("a secret is always an HMAC key")
    }
}

impl FromStr for Secret {
    type Err = InvalidSecret;

    /// Parses a secret from text, taking its UTF-8 bytes as the key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compares in time that depends only on the lengths, so that the
/// comparison does not reveal where two secrets differ.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (left, right) = (self.bytes(), other.bytes());
        left.len() == right.len()
            && left
                .iter()
                .zip(right)
                .fold(0u8, |difference, (a, b)| difference | (a ^ b))
                == 0
    }
}

impl Eq for Secret {}

/// A secret too short for HS256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secret is {len} bytes long; HS256 needs at least 32 bytes, for example the output of `openssl rand -base64 32`")]
pub struct InvalidSecret {
    /// The length of the secret given, in bytes.
    pub len: usize,
}

/// The kind of client that sends a request: a publisher inserts, a
/// subscriber reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `POST /insert`, checked against the publisher secret.
    Publisher,
    /// `GET /events` and `GET /collection/{event}`, checked against the
    /// subscriber secret.
    Subscriber,
}

impl Role {
    /// Returns the activity of the role, for messages.
    fn activity(self) -> &'static str {
        match self {
            Self::Publisher => "publishing",
            Self::Subscriber => "subscribing",
        }
    }

    /// Returns the token sources that the role accepts, for messages.
    fn sources(self) -> &'static str {
        match self {
            Self::Publisher => {
                "an `Authorization: Bearer <token>` header or a `broker_authorization` cookie"
            }
            Self::Subscriber => {
                "an `Authorization: Bearer <token>` header, a `broker_authorization` cookie \
                 or an `authorization` query parameter"
            }
        }
    }

    /// Returns the verb for what an `events` claim limits, for messages.
    fn verb(self) -> &'static str {
        match self {
            Self::Publisher => "publish",
            Self::Subscriber => "receive",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publisher => "publisher",
            Self::Subscriber => "subscriber",
        })
    }
}

/// The request headers that may carry a token. Its `Debug` output shows
/// only whether each header is present.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `Cookie` header.
    pub cookie: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Creates credentials from the `Authorization` and `Cookie` headers.
    pub fn new(authorization: Option<&'a str>, cookie: Option<&'a str>) -> Self {
        Self {
            authorization,
            cookie,
        }
    }
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("cookie", &self.cookie.map(|_| "<redacted>"))
            .finish()
    }
}

/// The event names that a request may publish or receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every name: the role is open, or the token has no `events` claim.
    AllEvents,
    /// Only the names in the token's `events` claim.
    Events(Vec<String>),
}

impl Grant {
    /// Returns whether the grant covers `event`.
    pub fn allows(&self, event: &str) -> bool {
        match self {
            Self::AllEvents => true,
            Self::Events(names) => names.iter().any(|name| name == event),
        }
    }

    /// Checks that the grant covers `event`.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::EventNotAllowed`] when it does not.
    pub fn check(&self, role: Role, event: &str) -> Result<(), AuthError> {
        if self.allows(event) {
            Ok(())
        } else {
            debug!(%role, "rejected a request for an event outside the token's `events` claim");
            Err(AuthError::EventNotAllowed {
                role,
                event: event.to_owned(),
            })
        }
    }

    /// Limits a subscriber's name filter (`None` for every name) to the
    /// grant: without a filter the subscriber receives the granted names.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::EventNotAllowed`] for the first filtered name
    /// outside the grant.
    pub fn limit_filter(
        &self,
        filter: Option<Vec<String>>,
    ) -> Result<Option<Vec<String>>, AuthError> {
        match (self, filter) {
            (Self::AllEvents, filter) => Ok(filter),
            (Self::Events(names), None) => Ok(Some(names.clone())),
            (Self::Events(_), Some(filter)) => {
                for event in &filter {
                    self.check(Role::Subscriber, event)?;
                }
                Ok(Some(filter))
            }
        }
    }
}

/// A request that failed authorization: `401` or `403`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in any accepted source: `401`.
    #[error("{} requires a token; send {}, signed with HS256 and the {role} secret", .role.activity(), .role.sources())]
    MissingToken {
        /// The role the request needs.
        role: Role,
    },

    /// The token is malformed, has the wrong signature or algorithm, or
    /// fails a claim check other than expiry: `401`.
    #[error("the token is invalid: {reason}; send a JWT signed with HS256 and the {role} secret, with an `exp` claim")]
    InvalidToken {
        /// The role the request needs.
        role: Role,
        /// The reason the token is rejected. It never contains the token.
        reason: String,
    },

    /// The token's `exp` time has passed: `401`.
    #[error("the token has expired; send a new {role} token with a later `exp`")]
    TokenExpired {
        /// The role the request needs.
        role: Role,
    },

    /// The token's `events` claim does not list the event: `403`.
    #[error("the token's `events` claim does not allow you to {} {event:?}; use a token whose `events` claim lists it", .role.verb())]
    EventNotAllowed {
        /// The role the request needs.
        role: Role,
        /// The event name requested.
        event: String,
    },
}

impl AuthError {
    /// Returns the HTTP status code: `401` for a missing or bad token, `403`
    /// for an event outside the token's claim.
    pub fn status(&self) -> u16 {
        match self {
            Self::EventNotAllowed { .. } => 403,
            _ => 401,
        }
    }

    /// Returns a short, stable code for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken { .. } => "missing_token",
            Self::InvalidToken { .. } => "invalid_token",
            Self::TokenExpired { .. } => "token_expired",
            Self::EventNotAllowed { .. } => "event_not_allowed",
        }
    }

    /// Returns the request field at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::EventNotAllowed { .. } => Some("event"),
            _ => None,
        }
    }

    /// Returns the `WWW-Authenticate` challenge for the response, with the
    /// error codes of RFC 6750 (bearer tokens): none for a missing token,
    /// `invalid_token` for a bad or expired one, and `insufficient_scope`
    /// for an event outside the claim.
    pub fn www_authenticate(&self) -> String {
        let error = match self {
            Self::MissingToken { .. } => return format!("Bearer realm=\"{REALM}\""),
            Self::InvalidToken { .. } => ("invalid_token", "the token is invalid"),
            Self::TokenExpired { .. } => ("invalid_token", "the token has expired"),
            Self::EventNotAllowed { .. } => (
                "insufficient_scope",
                "the events claim does not include the event",
            ),
        };
        format!(
            "Bearer realm=\"{REALM}\", error=\"{}\", error_description=\"{}\"",
            error.0, error.1
        )
    }
}

/// Checks the token of a request in `role` against `secret`, and returns
/// what it grants. With no secret the role is open and every name is granted.
///
/// `query` is the raw query string, read only for [`Role::Subscriber`].
///
/// # Errors
///
/// Returns an [`AuthError`] when the token is missing, invalid or expired.
pub fn authorize(
    secret: Option<&Secret>,
    role: Role,
    credentials: Credentials<'_>,
    query: Option<&str>,
) -> Result<Grant, AuthError> {
    let Some(secret) = secret else {
        return Ok(Grant::AllEvents);
    };
    let query = match role {
        Role::Publisher => None,
        Role::Subscriber => query,
    };
    let verified = match find_token(credentials, query) {
        Some(token) => verify(secret, role, &token),
        None => Err(AuthError::MissingToken { role }),
    };
    if let Err(error) = &verified {
        debug!(%role, code = error.code(), %error, "rejected a request's token");
    }
    verified
}

/// Returns the token from the first source present: the `Authorization`
/// header with the `Bearer` scheme, the [`COOKIE_NAME`] cookie, then the
/// [`QUERY_PARAMETER`] in `query`. Empty values count as absent.
pub fn find_token(credentials: Credentials<'_>, query: Option<&str>) -> Option<String> {
    let header = credentials.authorization.and_then(bearer_token);
    let cookie = || {
        credentials
            .cookie
            .and_then(|cookie| cookie_value(cookie, COOKIE_NAME))
    };
    let query = || query.and_then(query_token);
    header
        .map(str::to_owned)
        .or_else(|| cookie().map(str::to_owned))
        .or_else(query)
}

/// Returns the token of an `Authorization` header with the `Bearer` scheme,
/// whose name is case-insensitive.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Returns the value of cookie `name` from a `Cookie` header, without the
/// optional double quotes around it.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|value| value.strip_suffix('"'))
                .unwrap_or(value)
        })
        .filter(|value| !value.is_empty())
}

/// Returns the first non-empty [`QUERY_PARAMETER`] value of a query string.
fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == QUERY_PARAMETER)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The claims that Broker reads; `exp` and `nbf` are checked by
/// `jsonwebtoken` itself.
#[derive(Deserialize)]
struct Claims {
    /// `None` when the claim is absent. A `null` claim is rejected rather
    /// than read as absent, so that a token minted with a missing list does
    /// not grant every name.
    #[serde(default, deserialize_with = "present")]
    events: Option<Vec<String>>,
}

/// Deserializes a claim that, when present, must not be `null`.
fn present<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Vec::<String>::deserialize(deserializer).map(Some)
}

/// Verifies the signature, algorithm and time claims of `token`.
fn verify(secret: &Secret, role: Role, token: &str) -> Result<Grant, AuthError> {
    let invalid = |reason: String| AuthError::InvalidToken { role, reason };

    // Reading the header first names a wrong algorithm in the message.
    let header = jsonwebtoken::decode_header(token).map_err(|error| invalid(describe(&error)))?;
    if header.alg != Algorithm::HS256 {
        return Err(invalid(format!(
            "its `alg` is {:?}, and only HS256 is accepted",
            header.alg
        )));
    }

    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    match jsonwebtoken::decode::<Claims>(token, &secret.key, &validation) {
        Ok(data) => Ok(match data.claims.events {
            Some(names) => Grant::Events(names),
            None => Grant::AllEvents,
        }),
        Err(error) if matches!(error.kind(), ErrorKind::ExpiredSignature) => {
            Err(AuthError::TokenExpired { role })
        }
        Err(error) => Err(invalid(describe(&error))),
    }
}

/// Describes a `jsonwebtoken` error without quoting the token.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::InvalidToken => {
            "it is not a JWT that this server reads: three base64url parts joined by dots, with a header of standard fields".to_owned()
        }
        ErrorKind::InvalidSignature => "the signature does not match the secret".to_owned(),
        ErrorKind::Base64(_) => "a part is not valid base64url".to_owned(),
        ErrorKind::Utf8(_) => "a part is not UTF-8".to_owned(),
        ErrorKind::Json(error) => format!("its header or claims do not decode ({error})"),
        ErrorKind::MissingRequiredClaim(claim) => format!(
            "the `{claim}` claim is missing or is not a whole number of epoch seconds; add it as a number such as 1796400000"
        ),
        ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim has the wrong type"),
        ErrorKind::ImmatureSignature => "its `nbf` time has not come yet".to_owned(),
        ErrorKind::InvalidAudience => {
            "it has an `aud` claim, which Broker does not accept".to_owned()
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its `alg` is not HS256".to_owned()
        }
        other => format!("it failed verification ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn sign(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn bearer_scheme_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER   abc ", "Bearer\tabc"] {
            assert_eq!(bearer_token(header), Some("abc"), "{header:?}");
        }
    }

    #[test]
    fn bearer_rejects_other_schemes() {
        for header in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[test]
    fn cookie_among_several() {
        let header = "theme=dark; broker_authorization=abc.def.ghi; other=1";
        assert_eq!(cookie_value(header, COOKIE_NAME), Some("abc.def.ghi"));
    }

    #[test]
    fn cookie_quoted_and_spaced() {
        let header = "a=1;broker_authorization = \"abc\" ;b=2";
        assert_eq!(cookie_value(header, COOKIE_NAME), Some("abc"));
    }

    #[test]
    fn cookie_name_matched_exactly() {
        let header = "xbroker_authorization=1; broker_authorization_old=2";
        assert_eq!(cookie_value(header, COOKIE_NAME), None);
        assert_eq!(cookie_value("broker_authorization=", COOKIE_NAME), None);
    }

    #[test]
    fn query_token_decoded() {
        let query = "event=a&authorization=abc%2Edef&lastEventId=3";
        assert_eq!(query_token(query), Some("abc.def".to_owned()));
        assert_eq!(query_token("authorization="), None);
        assert_eq!(query_token("event=a"), None);
    }

    #[test]
    fn token_source_precedence() {
        let both = Credentials::new(Some("Bearer header"), Some("broker_authorization=cookie"));
        let query = Some("authorization=query");
        assert_eq!(find_token(both, query).as_deref(), Some("header"));

        let cookie_only = Credentials::new(Some("Basic x"), Some("broker_authorization=cookie"));
        assert_eq!(find_token(cookie_only, query).as_deref(), Some("cookie"));

        let none = Credentials::default();
        assert_eq!(find_token(none, query).as_deref(), Some("query"));
        assert_eq!(find_token(none, None), None);
    }

    #[test]
    fn publisher_ignores_query_token() {
        let secret = Secret::new(SECRET).unwrap();
        let token = sign(&json!({ "exp": in_an_hour() }));
        let query = format!("authorization={token}");
        let result = authorize(
            Some(&secret),
            Role::Publisher,
            Credentials::default(),
            Some(&query),
        );
        assert_eq!(
            result,
            Err(AuthError::MissingToken {
                role: Role::Publisher
            })
        );
    }

    #[test]
    fn open_role_grants_all() {
        let grant = authorize(None, Role::Publisher, Credentials::default(), None);
        assert_eq!(grant, Ok(Grant::AllEvents));
    }

    #[test]
    fn events_claim_read() {
        let secret = Secret::new(SECRET).unwrap();
        let token = sign(&json!({ "exp": in_an_hour(), "events": ["a", "b"] }));
        let header = format!("Bearer {token}");
        let credentials = Credentials::new(Some(&header), None);
        let grant = authorize(Some(&secret), Role::Subscriber, credentials, None).unwrap();
        assert_eq!(grant, Grant::Events(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn token_errors_classified() {
        let secret = Secret::new(SECRET).unwrap();
        let expired = sign(&json!({ "exp": jsonwebtoken::get_current_timestamp() - 60 }));
        let no_exp = sign(&json!({ "events": ["a"] }));
        let bad_events = sign(&json!({ "exp": in_an_hour(), "events": "a" }));
        let null_events = sign(&json!({ "exp": in_an_hour(), "events": null }));
        let exp_text = sign(&json!({ "exp": in_an_hour().to_string() }));
        let with_aud = sign(&json!({ "exp": in_an_hour(), "aud": "someone" }));
        let cases = [
            (expired, "token_expired"),
            (no_exp, "invalid_token"),
            (bad_events, "invalid_token"),
            (null_events, "invalid_token"),
            (exp_text, "invalid_token"),
            (with_aud, "invalid_token"),
            ("not-a-token".to_owned(), "invalid_token"),
        ];
        for (token, code) in cases {
            let error = verify(&secret, Role::Publisher, &token).unwrap_err();
            assert_eq!(error.code(), code, "{error}");
            assert!(!error.to_string().contains(&token), "{error}");
        }
    }

    #[test]
    fn other_algorithms_rejected() {
        let secret = Secret::new(SECRET).unwrap();
        let claims = json!({ "exp": in_an_hour() });
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key).unwrap();
        let error = verify(&secret, Role::Publisher, &hs512).unwrap_err();
        assert!(error.to_string().contains("HS512"), "{error}");

        // `alg: none` with an empty signature, as an attacker would send it.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        let error = verify(&secret, Role::Publisher, none).unwrap_err();
        assert_eq!(error.code(), "invalid_token");
    }

    #[test]
    fn limit_filter_intersects() {
        let grant = Grant::Events(vec!["a".to_owned(), "b".to_owned()]);
        let all = grant.limit_filter(None).unwrap();
        assert_eq!(all, Some(vec!["a".to_owned(), "b".to_owned()]));
        let some = grant.limit_filter(Some(vec!["b".to_owned()])).unwrap();
        assert_eq!(some, Some(vec!["b".to_owned()]));
        let error = grant.limit_filter(Some(vec!["c".to_owned()])).unwrap_err();
        assert_eq!(error.status(), 403);
        assert_eq!(error.field(), Some("event"));
    }

    #[test]
    fn secret_hidden_and_checked() {
        let secret = Secret::new(SECRET).unwrap();
        assert!(!format!("{secret:?}").contains(SECRET));
        assert_eq!(secret, SECRET.parse::<Secret>().unwrap());
        assert_ne!(secret, Secret::new([b'x'; 32]).unwrap());
        assert_eq!(Secret::new("short").unwrap_err().len, 5);
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let missing = AuthError::MissingToken {
            role: Role::Subscriber,
        };
        assert_eq!(missing.www_authenticate(), "Bearer realm=\"broker\"");
        let expired = AuthError::TokenExpired {
            role: Role::Subscriber,
        };
        assert!(expired
            .www_authenticate()
            .contains("error=\"invalid_token\""));
    }
}
