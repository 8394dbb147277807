//! [`Broker::serve`]: the entry point that picks the runtime.
//!
//! Each runtime feature adds its own module with its own entry points,
//! [`tokio_axum::serve`](crate::tokio_axum::serve) and
//! [`async_std_tide::serve`](crate::async_std_tide::serve), and both may be
//! compiled in at once. `Broker::serve` calls one of them by a fixed rule:
//! tokio with axum when the `tokio-axum` feature is on, otherwise async-std
//! with tide. Call a module's entry point to choose explicitly.

use std::net::SocketAddr;

/// The socket to serve on: an address to bind, or a listener bound already.
#[derive(Debug)]
pub enum Listen {
    /// Binds this address.
    Addr(SocketAddr),
    /// Serves on this bound listener, for example one bound to port 0 to
    /// learn the port before serving.
    Listener(std::net::TcpListener),
}

impl Listen {
    /// Returns the listener, binding the address first if needed, in
    /// non-blocking mode as async runtimes expect.
    ///
    /// Binding is one system call that does not wait on the network, so
    /// the runtimes call this from async code.
    #[cfg(any(feature = "tokio-axum", feature = "async-std-tide"))]
    pub(crate) fn into_std(self) -> std::io::Result<std::net::TcpListener> {
        let listener = match self {
            Self::Addr(addr) => std::net::TcpListener::bind(addr)?,
            Self::Listener(listener) => listener,
        };
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl From<std::net::TcpListener> for Listen {
    fn from(listener: std::net::TcpListener) -> Self {
        Self::Listener(listener)
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "tokio-axum")] {
        use crate::tokio_axum as default_runtime;
    } else if #[cfg(feature = "async-std-tide")] {
        use crate::async_std_tide as default_runtime;
    }
}

#[cfg(any(feature = "tokio-axum", feature = "async-std-tide"))]
impl crate::Broker {
    /// Serves the HTTP and SSE API until the process ends.
    ///
    /// Runs on tokio with axum when the `tokio-axum` feature is on, so call
    /// it from a tokio runtime; otherwise on async-std with tide.
    ///
    /// # Errors
    ///
    /// Returns the I/O error that stopped the server, such as an address
    /// already in use.
    pub async fn serve(&self, listen: impl Into<Listen>) -> std::io::Result<()> {
        default_runtime::serve(self.clone(), listen).await
    }

    /// Serves the HTTP and SSE API until `shutdown` completes, then ends
    /// every SSE stream, lets requests in flight finish, and returns.
    ///
    /// Picks the runtime as [`Broker::serve`](crate::Broker::serve) does.
    ///
    /// # Errors
    ///
    /// Returns the I/O error that stopped the server.
    pub async fn serve_with_shutdown<F>(
        &self,
        listen: impl Into<Listen>,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        default_runtime::serve_with_shutdown(self.clone(), listen, shutdown).await
    }
}
