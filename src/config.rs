//! Broker configuration and its defaults.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::Secret;

/// Default folder for the database, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./tmp";

/// Default maximum request body, in bytes (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Default interval between SSE keep-alive comments.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Default reconnection delay that each SSE stream sends to clients.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);

/// Default number of messages a subscriber may have queued before it is
/// disconnected as too slow.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Default maximum number of open client connections. Each open SSE stream
/// is one connection and one file descriptor.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Default time a client has to send a request's headers, and then again
/// its body. See [`Config::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for a [`Broker`](crate::Broker).
///
/// Start from [`Config::default`] and change what you need:
///
/// ```
/// let config = broker::Config::default()
///     .with_data_dir("/var/lib/broker")
///     .with_allowed_origins("https://app.example".parse().unwrap());
/// assert_eq!(config.body_limit, broker::config::DEFAULT_BODY_LIMIT);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Folder that contains the database, created if missing.
    pub data_dir: PathBuf,
    /// Origins allowed by CORS.
    pub allowed_origins: AllowedOrigins,
    /// Maximum request body in bytes; larger bodies get `413`.
    pub body_limit: usize,
    /// Interval between keep-alive comments on idle SSE streams.
    pub keep_alive: Duration,
    /// Messages a subscriber may have queued before it is disconnected.
    pub queue_capacity: usize,
    /// Reconnection delay sent as the `retry:` field at the start of each
    /// SSE stream, in whole milliseconds.
    pub retry: Duration,
    /// Maximum number of open client connections; requests on connections
    /// past it get `503`.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from the
    /// connection's start or from the end of its previous response, and then
    /// again its body. A connection past either deadline is closed, after a
    /// `408` error when the body is late.
    pub request_timeout: Duration,
    /// Secret that verifies publisher tokens on `POST /insert`; `None`
    /// leaves publishing open. See [`auth`](crate::auth).
    pub publisher_secret: Option<Secret>,
    /// Secret that verifies subscriber tokens on `GET /events` and
    /// `GET /collection/{event}`; `None` leaves subscribing open.
    pub subscriber_secret: Option<Secret>,
    /// Whether the runtimes serve `GET /metrics`; without it, that path
    /// gets `404` like any unknown route. The broker counts either way.
    pub metrics: bool,
    /// Whether `GET /` serves the [debug page](crate::debug_page). When
    /// off, `/` gets `404` like any unknown route.
    pub debug_page: bool,
    /// Storage backend that [`Broker::open`](crate::Broker::open) opens.
    #[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
    pub storage: crate::backends::StorageKind,
    /// The PostgreSQL database and schema of the `postgres` storage, which
    /// ignores [`data_dir`](Config::data_dir). Brokers that name the same
    /// database and schema share one event log.
    #[cfg(feature = "postgres")]
    pub database: Option<crate::backends::postgres::Database>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            allowed_origins: AllowedOrigins::Any,
            body_limit: DEFAULT_BODY_LIMIT,
            keep_alive: DEFAULT_KEEP_ALIVE,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            retry: DEFAULT_RETRY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            publisher_secret: None,
            subscriber_secret: None,
            metrics: true,
            debug_page: true,
            #[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
            storage: crate::backends::StorageKind::default(),
            #[cfg(feature = "postgres")]
            database: None,
        }
    }
}

impl Config {
    /// Sets the folder that contains the database.
    pub fn with_data_dir(mut self, data_dir: impl Into<PathBuf>) -> Self {
        self.data_dir = data_dir.into();
        self
    }

    /// Sets the origins allowed by CORS.
    pub fn with_allowed_origins(mut self, origins: AllowedOrigins) -> Self {
        self.allowed_origins = origins;
        self
    }

    /// Sets the maximum request body, in bytes.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the interval between SSE keep-alive comments.
    pub fn with_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets how many messages a subscriber may have queued before it is
    /// disconnected as too slow.
    pub fn with_queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages;
        self
    }

    /// Sets the reconnection delay sent as the `retry:` field of each SSE stream.
    pub fn with_retry(mut self, delay: Duration) -> Self {
        self.retry = delay;
        self
    }

    /// Sets the maximum number of open client connections.
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets the time a client has to send a request's headers, and then its body.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Requires publishers to send a token signed with `secret`.
    ///
    /// Use a different secret from the subscriber one, so that subscriber
    /// tokens cannot publish.
    pub fn with_publisher_secret(mut self, secret: Secret) -> Self {
        self.publisher_secret = Some(secret);
        self
    }

    /// Requires subscribers to send a token signed with `secret`.
    pub fn with_subscriber_secret(mut self, secret: Secret) -> Self {
        self.subscriber_secret = Some(secret);
        self
    }

    /// Sets whether the runtimes serve `GET /metrics`.
    pub fn with_metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled;
        self
    }

    /// Turns the [debug page](crate::debug_page) at `GET /` on or off.
    pub fn with_debug_page(mut self, enabled: bool) -> Self {
        self.debug_page = enabled;
        self
    }

    /// Sets the storage backend that [`Broker::open`](crate::Broker::open) opens.
    #[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
    pub fn with_storage(mut self, storage: crate::backends::StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the PostgreSQL database of the `postgres` storage.
    #[cfg(feature = "postgres")]
    pub fn with_database(mut self, database: crate::backends::postgres::Database) -> Self {
        self.database = Some(database);
        self
    }
}

/// The origins that CORS allows.
///
/// Parses from `*` or a comma-separated list of exact origins such as
/// `https://a.example,http://localhost:5173`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Any origin: responses carry `Access-Control-Allow-Origin: *`.
    Any,
    /// Only these origins, compared exactly; a match is echoed back.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Returns the `Access-Control-Allow-Origin` value for a request from
    /// `origin`, or `None` when that origin is not allowed.
    pub fn allow(&self, origin: Option<&str>) -> Option<&str> {
        match self {
            Self::Any => Some("*"),
            Self::List(list) => {
                let origin = origin?;
                list.iter()
                    .map(String::as_str)
                    .find(|&allowed| allowed == origin)
            }
        }
    }
}

impl FromStr for AllowedOrigins {
    type Err = InvalidOrigin;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "*" {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            check_origin(origin)?;
            list.push(origin.to_owned());
        }
        if list.is_empty() {
            return Err(InvalidOrigin {
                origin: text.to_owned(),
                reason: "it lists no origin",
            });
        }
        Ok(Self::List(list))
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::List(list) => f.write_str(&list.join(",")),
        }
    }
}

/// Checks that `origin` is written as browsers send it in the `Origin`
/// header, because the comparison is exact.
fn check_origin(origin: &str) -> Result<(), InvalidOrigin> {
    let invalid = |reason| {
        Err(InvalidOrigin {
            origin: origin.to_owned(),
            reason,
        })
    };
    let Some((scheme, host)) = origin.split_once("://") else {
        return invalid("it has no scheme; write it as https://host or http://host:port");
    };
    if scheme != "http" && scheme != "https" {
        return invalid("the scheme must be http or https");
    }
    if host.is_empty() || host.contains(['/', '?', '#']) {
        return invalid("it must be a scheme and host only, with no path and no trailing slash");
    }
    if host.contains('*') {
        return invalid(
            "wildcards are not supported in a list; list each origin, or use `*` alone",
        );
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if host.ends_with(default_port) {
        return invalid(
            "browsers leave the scheme's default port out of the Origin header; remove the port",
        );
    }
    Ok(())
}

/// An origin that is neither `*` nor written as browsers send it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin {origin:?}: {reason}; expected `*` or a comma-separated list such as https://app.example,http://localhost:5173")]
pub struct InvalidOrigin {
    /// The origin as written.
    pub origin: String,
    /// The reason it is rejected.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_list() {
        let origins: AllowedOrigins = "https://a.example, http://localhost:5173".parse().unwrap();
        assert_eq!(
            origins.allow(Some("https://a.example")),
            Some("https://a.example")
        );
        assert_eq!(origins.allow(Some("https://b.example")), None);
        assert_eq!(origins.allow(None), None);
    }

    #[test]
    fn origins_reject_paths() {
        assert!("https://a.example/".parse::<AllowedOrigins>().is_err());
        assert!("a.example".parse::<AllowedOrigins>().is_err());
        assert!(",".parse::<AllowedOrigins>().is_err());
        assert!("https://a.example:443".parse::<AllowedOrigins>().is_err());
        assert!("http://a.example:80".parse::<AllowedOrigins>().is_err());
        assert!("ftp://a.example".parse::<AllowedOrigins>().is_err());
        assert!("https://a.example:8443".parse::<AllowedOrigins>().is_ok());
        assert_eq!("*".parse::<AllowedOrigins>(), Ok(AllowedOrigins::Any));
    }
}
