//! The `broker` server: `cargo run --release` serves on `PORT` (8080) with
//! the database under `./tmp`. Every flag also reads an environment variable;
//! `broker --help` lists them.

use std::error::Error as StdError;
use std::fmt;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broker::config::{DEFAULT_BODY_LIMIT, DEFAULT_QUEUE_CAPACITY};
use broker::{AllowedOrigins, Broker, Config};
use clap::{Parser, ValueEnum};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// A real-time, zero-code API server: POST /insert JSON events, receive them
/// over Server-Sent Events at GET /events, read a name's history at
/// GET /collection/{event}.
#[derive(Debug, Parser)]
#[command(version, about)]
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
    #[arg(long, env = "BROKER_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,

    /// Seconds between keep-alive comments on idle SSE streams (decimals allowed).
    #[arg(long, env = "BROKER_KEEP_ALIVE", default_value = "15", value_parser = parse_seconds)]
    keep_alive: Duration,

    /// Messages a subscriber may have queued before it is disconnected as too slow.
    #[arg(long, env = "BROKER_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    queue_capacity: usize,

    /// Storage backend.
    #[arg(long, env = "BROKER_STORAGE", value_enum, default_value_t = StorageChoice::Redb)]
    storage: StorageChoice,

    /// Async runtime and HTTP server.
    #[arg(long, env = "BROKER_RUNTIME", value_enum, default_value_t = RuntimeChoice::TokioAxum)]
    runtime: RuntimeChoice,
}

/// Storage backends compiled into this binary.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StorageChoice {
    /// One redb file, broker.redb, in the data folder.
    Redb,
}

/// Runtimes compiled into this binary.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeChoice {
    /// axum on tokio.
    TokioAxum,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(error = %Chain(&error), "failed to start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = %Chain(error.as_ref()), "broker stopped on an error");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn StdError>> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|error| format!("failed to listen on {addr}: {error}"))?;
    let addr = listener.local_addr()?;

    let config = Config::default()
        .with_data_dir(&args.data_dir)
        .with_allowed_origins(args.origin.clone())
        .with_body_limit(args.body_limit)
        .with_keep_alive(args.keep_alive)
        .with_queue_capacity(args.queue_capacity);
    let broker = Broker::open(config).await?;

    let data_dir = std::fs::canonicalize(&args.data_dir).unwrap_or(args.data_dir);
    info!(
        address = %addr,
        data_dir = %data_dir.display(),
        storage = %value_name(args.storage),
        runtime = %value_name(args.runtime),
        origin = %args.origin,
        "listening"
    );
    broker
        .serve_with_shutdown(listener, shutdown_signal())
        .await?;
    info!("stopped");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "failed to listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                warn!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => info!("received SIGINT"),
        () = terminate => info!("received SIGTERM"),
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
