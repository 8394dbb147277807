//! Broker: a real-time, zero-code API server.
//!
//! Clients `POST /insert` a JSON event (`event` name, `timestamp` in epoch
//! seconds when it becomes current, any JSON `data`). Broker stores every
//! version for good, publishes each one over Server-Sent Events
//! (`GET /events`) when its timestamp comes, sends the current version of
//! every name the moment a client connects, and serves the history of a name
//! at `GET /collection/{event}`.
//!
//! # Layout
//!
//! - [`Broker`]: the cloneable handle; [`Broker::open`] starts one and
//!   [`Broker::serve`] serves it over HTTP.
//! - [`Config`]: settings and their defaults.
//! - [`auth`]: optional publisher and subscriber tokens (HS256 JWTs) and the
//!   [`Secret`] that verifies them.
//! - [`NewEvent`], [`Record`], [`Publication`]: the event model and validation.
//! - [`Storage`]: the contract a storage backend implements; [`backends`]
//!   contains one module per storage feature.
//! - [`api`] and [`sse`]: the HTTP API and SSE framing without a web
//!   framework, shared by every runtime.
//! - [`debug_page`]: the HTML page at `GET /` and its response headers,
//!   shared by every runtime.
//! - [`connection`]: the connection count behind
//!   [`Config::max_connections`], and the switch that lets the core close a
//!   subscriber's connection when it stops reading.
//! - `tokio_axum` and `async_std_tide`: the API served by axum on tokio and
//!   by tide on async-std, one module per runtime feature.
//! - [`metrics`]: the Prometheus metrics that `GET /metrics` serves, kept
//!   per broker and reachable with [`Broker::metrics`].
//! - [`Error`], [`InsertError`], [`StorageError`]: what can fail.
//!
//! The core runs on a thread of its own and owns the event log, the schedule
//! of future events and the subscribers. The runtime modules only translate
//! HTTP, so the core never names an async runtime and storage I/O never runs
//! on an async executor thread.
//!
//! # Features
//!
//! | feature          | default | what it adds                                        |
//! |------------------|---------|-----------------------------------------------------|
//! | `tokio-axum`     | yes     | `tokio_axum`: the HTTP server on axum and tokio     |
//! | `async-std-tide` | no      | `async_std_tide`: the HTTP server on tide and async-std |
//! | `redb`           | yes     | `backends::redb`: storage in one redb file          |
//! | `sled`           | no      | `backends::sled`: storage in a sled database        |
//! | `postgres`       | no      | `backends::postgres`: storage in PostgreSQL, shared by several processes |
//! | `cli`            | yes     | the `broker` binary's flags, signals and logging    |
//!
//! Features only add: each adds a module and removes nothing, so any
//! combination builds. With two runtimes or two storages compiled in, the
//! choice is explicit:
//!
//! - [`Broker::serve`] runs on tokio with axum when `tokio-axum` is on, and
//!   on async-std with tide otherwise. `tokio_axum::serve` and
//!   `async_std_tide::serve` choose one explicitly.
//! - `Config::storage` picks the backend that [`Broker::open`] opens: redb
//!   when `redb` is on, then sled, then PostgreSQL. A data folder written by
//!   one backend is never opened with the other. Brokers on one PostgreSQL
//!   database and schema share one log; see `backends::postgres`.
//!
//! tide has had no stable release since 0.16.0, and async-std's maintainers
//! discontinued it in 1.13.1 in favour of smol. Everything that uses either
//! stays in `async_std_tide` and the private module that serves its SSE
//! streams, behind its own feature.
//!
//! # Examples
//!
//! On tokio with axum and redb, the default features:
//!
//! ```no_run
//! # #[cfg(all(feature = "tokio-axum", feature = "redb"))]
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = broker::Config::default().with_data_dir("./tmp");
//!     let broker = broker::Broker::open(config).await?;
//!
//!     // Library code can insert too; HTTP clients see the same event.
//!     let event = broker::NewEvent::new("greeting", &serde_json::json!({"text": "hi"}))?;
//!     broker.insert(event).await?;
//!
//!     let addr: std::net::SocketAddr = "127.0.0.1:8080".parse()?;
//!     broker::tokio_axum::serve(broker, addr).await?;
//!     Ok(())
//! }
//! # #[cfg(not(all(feature = "tokio-axum", feature = "redb")))]
//! # fn main() {}
//! ```
//!
//! On async-std with tide and sled (`default-features = false`, features
//! `async-std-tide` and `sled`):
//!
//! ```no_run
//! # #[cfg(all(feature = "async-std-tide", feature = "sled"))]
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     async_std::task::block_on(async {
//!         let config = broker::Config::default()
//!             .with_data_dir("./tmp")
//!             .with_storage(broker::StorageKind::Sled);
//!         let broker = broker::Broker::open(config).await?;
//!
//!         let addr: std::net::SocketAddr = "127.0.0.1:8080".parse()?;
//!         broker::async_std_tide::serve(broker, addr).await?;
//!         Ok(())
//!     })
//! }
//! # #[cfg(not(all(feature = "async-std-tide", feature = "sled")))]
//! # fn main() {}
//! ```

#[cfg(any(feature = "tokio-axum", feature = "async-std-tide"))]
mod accept;
pub mod api;
pub mod auth;
mod broker;
pub mod config;
pub mod connection;
mod core;
pub mod debug_page;
mod error;
mod event;
pub mod metrics;
mod serve;
pub mod sse;
mod storage;

#[path = "../backends/mod.rs"]
pub mod backends;

#[cfg(feature = "tokio-axum")]
#[path = "../runtimes/tokio_axum.rs"]
pub mod tokio_axum;

#[cfg(any(feature = "tokio-axum", feature = "async-std-tide"))]
#[path = "../runtimes/stream/mod.rs"]
mod stream;

#[cfg(feature = "tokio-axum")]
#[path = "../runtimes/tokio_stream.rs"]
mod tokio_stream;

#[cfg(feature = "async-std-tide")]
#[path = "../runtimes/async_std_stream.rs"]
mod async_std_stream;

#[cfg(feature = "async-std-tide")]
#[path = "../runtimes/async_std_tide.rs"]
pub mod async_std_tide;

pub use crate::auth::Secret;
pub use crate::broker::{Broker, SubscribeOptions, Subscription};
pub use crate::config::{AllowedOrigins, Config};
pub use crate::error::{Error, InsertError, StorageError, MAX_EVENT_LEN, MAX_TIMESTAMP};
pub use crate::event::{NewEvent, Publication, Record};
pub use crate::serve::Listen;
pub use crate::storage::{Appended, LogState, SharedLog, Storage, Version};

#[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
pub use crate::backends::StorageKind;
