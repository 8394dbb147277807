//! Storage backends, one module per Cargo feature.
//!
//! Each implements [`Storage`](crate::Storage); any number of them may be
//! compiled in at once.

#[cfg(feature = "redb")]
mod codec;

#[cfg(feature = "redb")]
pub mod redb;
