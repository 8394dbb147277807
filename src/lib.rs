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
//! - [`NewEvent`], [`Record`], [`Publication`]: the event model and validation.
//! - [`Storage`]: the contract a storage backend implements; [`backends`]
//!   holds one module per storage feature.
//! - [`api`]: the HTTP API without a framework, shared by every runtime.
//! - [`tokio_axum`]: the API served by axum on tokio.
//! - [`Error`], [`InsertError`], [`StorageError`]: what can fail.
//!
//! The core runs on a thread of its own and owns the event log, the schedule
//! of future events and the subscribers. The runtime modules only translate
//! HTTP, so the core never names an async runtime and storage I/O never runs
//! on an async executor thread.
//!
//! # Features
//!
//! | feature      | default | what it adds                                   |
//! |--------------|---------|------------------------------------------------|
//! | `tokio-axum` | yes     | [`tokio_axum`] and [`Broker::serve`] on tokio  |
//! | `redb`       | yes     | [`backends::redb`] and [`Broker::open`]        |
//! | `cli`        | yes     | the `broker` binary's flags and logging        |
//!
//! Features are additive: each adds a module and removes nothing.
//!
//! # Example
//!
//! Serving on tokio with axum and redb, the default features:
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
//!     broker.serve(addr).await?;
//!     Ok(())
//! }
//! # #[cfg(not(all(feature = "tokio-axum", feature = "redb")))]
//! # fn main() {}
//! ```

pub mod api;
mod broker;
pub mod config;
mod core;
mod error;
mod event;
mod serve;
pub mod sse;
mod storage;

#[path = "../backends/mod.rs"]
pub mod backends;

#[cfg(feature = "tokio-axum")]
#[path = "../runtimes/tokio_axum.rs"]
pub mod tokio_axum;

pub use crate::broker::{Broker, Subscription};
pub use crate::config::{AllowedOrigins, Config};
pub use crate::error::{Error, InsertError, StorageError, MAX_EVENT_LEN, MAX_TIMESTAMP};
pub use crate::event::{NewEvent, Publication, Record};
pub use crate::serve::Listen;
pub use crate::storage::{Appended, Storage, Version};
