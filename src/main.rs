//! The `broker` server: `cargo run --release` serves on `PORT` (8080) with
//! the database under `./tmp`. Every flag also reads an environment variable;
//! `broker --help` lists them.

#[cfg(not(all(
    any(feature = "tokio-axum", feature = "async-std-tide"),
    any(feature = "redb", feature = "sled", feature = "postgres")
)))]
compile_error!(
    "the broker binary needs a runtime feature (tokio-axum or async-std-tide) \
     and a storage feature (redb, sled or postgres)"
);

use std::error::Error as StdError;
use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "postgres")]
use broker::backends::postgres::Database;
use broker::config::{DEFAULT_BODY_LIMIT, DEFAULT_MAX_CONNECTIONS, DEFAULT_QUEUE_CAPACITY};
use broker::{AllowedOrigins, Broker, Config, Secret, StorageKind};
use clap::{Parser, ValueEnum};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// A real-time, zero-code API server: POST /insert JSON events, receive them
/// over Server-Sent Events at GET /events, read a name's history at
/// GET /collection/{event}.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Logging: RUST_LOG sets the filter (default info), e.g. RUST_LOG=broker=debug; \
                  --log-format sets the line format. Logs go to stdout."
)]
struct Args {
    /// IP address to listen on.
    #[arg(long, env = "BROKER_HOST", default_value = "0.0.0.0")]
    host: IpAddr,

    /// TCP port to listen on; 0 picks a free port and logs it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,

    /// Folder for the database; created if missing.
    #[arg(long, env = "BROKER_DATA_DIR", default_value = broker::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    /// Allowed CORS origins: `*`, or a comma-separated list of exact origins
    /// such as https://app.example,http://localhost:5173.
    #[arg(long, env = "BROKER_ORIGIN", default_value = "*")]
    origin: AllowedOrigins,

    /// Maximum request body, in bytes; larger bodies get 413.
    #[arg(long, env = "BROKER_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT, value_parser = parse_positive)]
    body_limit: usize,

    /// Seconds between keep-alive comments on idle SSE streams (decimals allowed).
    #[arg(long, env = "BROKER_KEEP_ALIVE", default_value = "15", value_parser = parse_seconds)]
    keep_alive: Duration,

    /// Seconds that SSE clients should wait before reconnecting, sent as the
    /// `retry:` field at the start of each stream (decimals allowed).
    #[arg(long, env = "BROKER_RETRY", default_value = "3", value_parser = parse_seconds)]
    retry: Duration,

    /// Messages a subscriber may have queued before it is disconnected as too slow.
    #[arg(long, env = "BROKER_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY, value_parser = parse_positive)]
    queue_capacity: usize,

    /// Maximum number of open client connections (each SSE stream is one);
    /// requests on connections past it get 503.
    /// [default: 20000, or less when the open-file limit cannot be raised that far]
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", value_parser = parse_positive)]
    max_connections: Option<usize>,

    /// Seconds a client has to send a request's headers, and then again its
    /// body, before its connection is closed. Decimals are allowed. Under
    /// async-std-tide, at most 60 applies to headers.
    #[arg(long, env = "BROKER_REQUEST_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    request_timeout: Duration,

    /// Serve the debug page at GET /: true or false. The page shows the
    /// live stream and the current values, inserts events and loads
    /// histories through the API. When false, / gets 404.
    #[arg(
        long,
        env = "BROKER_DEBUG_PAGE",
        default_value = "true",
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    debug_page: bool,

    /// Storage backend.
    #[arg(long, env = "BROKER_STORAGE", value_enum, default_value_t)]
    storage: StorageChoice,

    /// PostgreSQL URL for --storage postgres, such as
    /// postgresql://USER:PASSWORD@HOST:5432/DATABASE. Brokers given the same
    /// database and schema share one event log. Prefer the environment
    /// variable: other users can read command lines.
    #[cfg(feature = "postgres")]
    #[arg(
        long,
        env = "BROKER_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,

    /// Schema that contains Broker's tables in that database; created if missing.
    #[cfg(feature = "postgres")]
    #[arg(long, env = "BROKER_DATABASE_SCHEMA", default_value = broker::backends::postgres::DEFAULT_SCHEMA)]
    database_schema: String,

    /// Async runtime and HTTP server.
    #[arg(long, env = "BROKER_RUNTIME", value_enum, default_value_t)]
    runtime: RuntimeChoice,

    /// HS256 secret (at least 32 bytes) that POST /insert tokens must be
    /// signed with; unset, anyone can publish. Prefer the environment
    /// variable: other users can read command lines.
    #[arg(long, env = "BROKER_PUBLISHER_SECRET", hide_env_values = true, value_parser = SecretParser)]
    publisher_secret: Option<Secret>,

    /// HS256 secret (at least 32 bytes) that GET /events and
    /// GET /collection tokens must be signed with; unset, anyone can
    /// subscribe. Prefer the environment variable.
    #[arg(long, env = "BROKER_SUBSCRIBER_SECRET", hide_env_values = true, value_parser = SecretParser)]
    subscriber_secret: Option<Secret>,

    /// Serve Prometheus metrics at GET /metrics (true or false). The route
    /// needs no token and is served past the connection limit; set false
    /// to answer it with 404.
    #[arg(long, env = "BROKER_METRICS", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    metrics: bool,

    /// Log line format: `text` for people, `json` for one JSON object per
    /// line, for log collectors.
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

/// Formats of the log lines.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields under `fields`.
    Json,
}

/// Storage backends compiled into this binary.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StorageChoice {
    /// One redb file, broker.redb, in the data folder.
    #[cfg(feature = "redb")]
    Redb,
    /// A sled database in the folder sled inside the data folder.
    #[cfg(feature = "sled")]
    Sled,
    /// A PostgreSQL database at --database-url, which several brokers can share.
    #[cfg(feature = "postgres")]
    Postgres,
}

impl StorageChoice {
    fn kind(self) -> StorageKind {
        match self {
            #[cfg(feature = "redb")]
            Self::Redb => StorageKind::Redb,
            #[cfg(feature = "sled")]
            Self::Sled => StorageKind::Sled,
            #[cfg(feature = "postgres")]
            Self::Postgres => StorageKind::Postgres,
        }
    }
}

impl Default for StorageChoice {
    fn default() -> Self {
        Self::value_variants()[0]
    }
}

/// Runtimes compiled into this binary.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeChoice {
    /// axum on tokio.
    #[cfg(feature = "tokio-axum")]
    TokioAxum,
    /// tide on async-std.
    #[cfg(feature = "async-std-tide")]
    AsyncStdTide,
}

impl Default for RuntimeChoice {
    fn default() -> Self {
        Self::value_variants()[0]
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt().with_env_filter(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    );
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }

    let result = match args.runtime {
        #[cfg(feature = "tokio-axum")]
        RuntimeChoice::TokioAxum => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run(args)),
            Err(error) => Err(format!("failed to start the tokio runtime: {error}").into()),
        },
        #[cfg(feature = "async-std-tide")]
        RuntimeChoice::AsyncStdTide => async_std::task::block_on(run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match start_hint(error.as_ref()) {
                Some(hint) => {
                    error!(error = %Chain(error.as_ref()), hint, "broker stopped on an error")
                }
                None => error!(error = %Chain(error.as_ref()), "broker stopped on an error"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Opens the broker and serves it on the runtime that `main` started.
async fn run(args: Args) -> Result<(), Box<dyn StdError>> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|error| format!("failed to listen on {addr}: {error}"))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    let max_connections = connection_limit(args.max_connections);
    survive_file_size_limit()?;

    let config = Config::default()
        .with_data_dir(&args.data_dir)
        .with_allowed_origins(args.origin.clone())
        .with_body_limit(args.body_limit)
        .with_keep_alive(args.keep_alive)
        .with_queue_capacity(args.queue_capacity)
        .with_retry(args.retry)
        .with_max_connections(max_connections)
        .with_request_timeout(args.request_timeout)
        .with_metrics(args.metrics)
        .with_debug_page(args.debug_page)
        .with_storage(args.storage.kind());
    let config = with_secrets(config, &args);
    let config = with_database(config, &args)?;
    let broker = Broker::open(config).await?;
    log_access(broker.config());

    // The line names where the log is: the data folder, or the database.
    macro_rules! listening {
        ($($location:tt)*) => {
            info!(
                address = %addr,
                $($location)*
                storage = %value_name(args.storage),
                runtime = %value_name(args.runtime),
                origin = %args.origin,
                max_connections,
                metrics = args.metrics,
                debug_page = args.debug_page,
                "listening"
            )
        };
    }
    match database_location(broker.config()) {
        Some((database, schema)) => listening!(database = %database, schema = %schema,),
        None => {
            let data_dir = std::fs::canonicalize(&args.data_dir).unwrap_or(args.data_dir.clone());
            listening!(data_dir = %data_dir.display(),)
        }
    }
    match args.runtime {
        #[cfg(feature = "tokio-axum")]
        RuntimeChoice::TokioAxum => {
            broker::tokio_axum::serve_with_shutdown(broker, listener, shutdown).await?
        }
        #[cfg(feature = "async-std-tide")]
        RuntimeChoice::AsyncStdTide => {
            broker::async_std_tide::serve_with_shutdown(broker, listener, shutdown).await?
        }
    }
    info!("stopped");
    Ok(())
}

/// Open files that the server needs besides its connections: the database,
/// the listener, log output and a margin.
const RESERVED_FILES: u64 = 64;

/// Returns the connection limit to use, and raises this process's soft
/// limit on open files up to its hard limit as far as that limit needs.
///
/// Many systems start processes with a soft limit of 1024, which would stop
/// the server from accepting connections long before the cap. Without a
/// configured limit, the default is lowered to fit the hard limit; a
/// configured one is kept, with a warning.
fn connection_limit(configured: Option<usize>) -> usize {
    let requested = configured.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let needed = (requested as u64).saturating_add(RESERVED_FILES);
    let limit = match rlimit::increase_nofile_limit(needed) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "failed to read or raise the open-file limit");
            return requested;
        }
    };
    if limit >= needed {
        return requested;
    }
    let fitting = usize::try_from(limit.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    match configured {
        None => {
            info!(
                open_file_limit = limit,
                max_connections = fitting,
                "lowered the default connection limit to fit the open-file limit; raise `ulimit -Hn` for more"
            );
            fitting
        }
        Some(_) => {
            warn!(
                open_file_limit = limit,
                files_needed = needed,
                max_connections = requested,
                "the open-file limit is below what BROKER_MAX_CONNECTIONS needs, so connections past it will wait; raise `ulimit -Hn` or lower BROKER_MAX_CONNECTIONS"
            );
            requested
        }
    }
}

/// Sets the database of the `postgres` storage from its flags.
#[cfg(feature = "postgres")]
fn with_database(config: Config, args: &Args) -> Result<Config, Box<dyn StdError>> {
    // Parsed here rather than by clap, whose error would repeat the URL
    // and its password.
    match &args.database_url {
        Some(url) => {
            let database = Database::new(url)?.with_schema(&args.database_schema)?;
            Ok(config.with_database(database))
        }
        None => Ok(config),
    }
}

#[cfg(not(feature = "postgres"))]
fn with_database(config: Config, _args: &Args) -> Result<Config, Box<dyn StdError>> {
    Ok(config)
}

/// Returns the database, without the password, and the schema of the
/// `postgres` storage, or `None` for a storage in the data folder.
fn database_location(config: &Config) -> Option<(String, String)> {
    #[cfg(feature = "postgres")]
    if config.storage == StorageKind::Postgres {
        let database = config.database.as_ref()?;
        return Some((database.target(), database.schema().to_owned()));
    }
    let _ = config;
    None
}

fn with_secrets(mut config: Config, args: &Args) -> Config {
    if let Some(secret) = &args.publisher_secret {
        config = config.with_publisher_secret(secret.clone());
    }
    if let Some(secret) = &args.subscriber_secret {
        config = config.with_subscriber_secret(secret.clone());
    }
    config
}

/// Logs who may publish and subscribe, without the secrets.
fn log_access(config: &Config) {
    match &config.publisher_secret {
        Some(_) => info!("publishing requires a token signed with BROKER_PUBLISHER_SECRET"),
        None => warn!(
            "publishing is open: anyone who can reach the server can POST /insert; \
             set BROKER_PUBLISHER_SECRET (or --publisher-secret) to require a token"
        ),
    }
    match &config.subscriber_secret {
        Some(_) => info!("subscribing requires a token signed with BROKER_SUBSCRIBER_SECRET"),
        None => info!(
            "subscribing is open: anyone who can reach the server can read events; \
             set BROKER_SUBSCRIBER_SECRET (or --subscriber-secret) to require a token"
        ),
    }
    if config.publisher_secret.is_some() && config.publisher_secret == config.subscriber_secret {
        warn!(
            "the publisher and subscriber secrets are the same, so subscriber tokens can \
             publish; set different secrets"
        );
    }
}

/// Returns a future that completes on the first SIGINT (Ctrl-C) or SIGTERM.
/// A second signal exits at once.
///
/// A plain thread waits for the signals, so this works under any runtime.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let (received, receiver) = async_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("broker-signals".into())
        .spawn(move || {
            let mut count = 0;
            for signal in signals.forever() {
                count += 1;
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if count > 1 {
                    warn!(
                        signal = name,
                        "second signal, exiting without a graceful shutdown"
                    );
                    std::process::exit(1);
                }
                info!(signal = name, "received a signal, shutting down");
                let _ = received.try_send(());
            }
        })?;
    Ok(async move {
        let _ = receiver.recv().await;
    })
}

/// Makes writes past the file size limit (`RLIMIT_FSIZE`, as set by
/// `ulimit -f` or `prlimit --fsize`) fail with `EFBIG` instead of killing the
/// process.
///
/// The kernel sends SIGXFSZ along with each such `EFBIG`, and the default
/// action of SIGXFSZ ends the process with a core dump. A limit is one way a
/// disk fills up, and the broker handles that as a storage error: the insert
/// gets `503`, nothing is stored, and the core retries and recovers once
/// writes succeed again. The handler that signal-hook installs only sets a
/// flag, which nothing reads, because the `EFBIG` already reports the failure.
#[cfg(unix)]
fn survive_file_size_limit() -> std::io::Result<()> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(AtomicBool::new(false)),
    )?;
    Ok(())
}

/// Does nothing: only Unix has SIGXFSZ.
#[cfg(not(unix))]
fn survive_file_size_limit() -> std::io::Result<()> {
    Ok(())
}

/// Returns a future that never completes: stop the process to stop the server.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(std::future::pending())
}

/// Parses a [`Secret`] with an error message that leaves out the value,
/// which clap's own value errors would print.
#[derive(Debug, Clone, Copy)]
struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg.map(ToString::to_string).unwrap_or_default();
        let invalid = |reason: String| {
            let message = format!("invalid value for '{name}': {reason}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(command)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("the secret is not UTF-8".to_owned()))?;
        text.parse()
            .map_err(|error: broker::auth::InvalidSecret| invalid(error.to_string()))
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!(
            "{seconds} is out of range; use 0.001 to 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Returns the name of a choice as written on the command line.
fn value_name(choice: impl ValueEnum) -> String {
    choice
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default()
}

/// Returns what to do about a database that failed to open at start, for
/// errors whose own message names no fix, such as a damaged file.
fn start_hint(error: &(dyn StdError + 'static)) -> Option<&'static str> {
    match error.downcast_ref::<broker::Error>() {
        Some(broker::Error::Storage(storage))
            if matches!(**storage, broker::StorageError::Open { .. }) =>
        {
            Some(
                "check that the data folder holds a Broker database of this storage and \
                 that no other process uses it; restore a damaged file from a backup, or \
                 set BROKER_DATA_DIR to another folder",
            )
        }
        _ => None,
    }
}

/// Displays an error followed by its chain of causes.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
