//! Failed accepts, handled alike by every runtime's accept loop.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

/// How long an accept loop waits after a failed accept. Running out of file
/// descriptors makes every accept fail at once until a connection closes,
/// so the loop must not spin.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// Logs a failed accept: at debug level for a client that left before the
/// accept, otherwise as a warning at most once a second.
pub(crate) fn failed(error: &io::Error) {
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        debug!(%error, "a client left before its connection was accepted");
        return;
    }
    let second = crate::core::now();
    if LAST_WARNING.swap(second, Ordering::Relaxed) != second {
        warn!(%error, "failed to accept a connection; if the open-file limit is reached, raise `ulimit -n` or lower BROKER_MAX_CONNECTIONS");
    }
}
