//! [`Broker::serve`]: the entry point that picks the runtime.
//!
//! Each runtime feature adds its own module with its own entry points, such
//! as [`tokio_axum::serve`](crate::tokio_axum::serve). `Broker::serve` calls
//! the default one: tokio with axum when the `tokio-axum` feature is on.

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

#[cfg(feature = "tokio-axum")]
mod tokio_axum_default {
    use std::future::Future;
    use std::io;

    use super::Listen;
    use crate::Broker;

    impl Broker {
        /// Serves the HTTP and SSE API until the process ends.
        ///
        /// Runs on tokio with axum, so call it from a tokio runtime.
        ///
        /// # Errors
        ///
        /// Returns the I/O error that stopped the server, such as an address
        /// already in use.
        pub async fn serve(&self, listen: impl Into<Listen>) -> io::Result<()> {
            self.serve_with_shutdown(listen, std::future::pending())
                .await
        }

        /// Serves the HTTP and SSE API until `shutdown` completes, then ends
        /// every SSE stream, lets requests in flight finish, and returns.
        ///
        /// # Errors
        ///
        /// Returns the I/O error that stopped the server.
        pub async fn serve_with_shutdown<F>(
            &self,
            listen: impl Into<Listen>,
            shutdown: F,
        ) -> io::Result<()>
        where
            F: Future<Output = ()> + Send + 'static,
        {
            let listener = match listen.into() {
                Listen::Addr(addr) => tokio::net::TcpListener::bind(addr).await?,
                Listen::Listener(listener) => {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)?
                }
            };
            crate::tokio_axum::serve_with_shutdown(self.clone(), listener, shutdown).await
        }
    }
}
