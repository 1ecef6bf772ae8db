//! How requests enter a backend that just woke: slow start, fail-fast, retries.
//!
//! When a wake completes, every held request is released at once. A freshly started server
//! often has a tiny listen backlog (busybox httpd: 9) and cold caches; thousands of simultaneous
//! connections overflow its accept queue, and the kernel then silently drops connections that
//! the gateway believes are open — they hang for minutes before a reset. Three measures:
//!
//! - **slow start** ([`ReleaseWindow`]): like TCP's, [`INITIAL_WINDOW`] requests may be on
//!   their way to the backend at once, and every response received opens one more place (the
//!   window doubles each round trip, up to [`MAX_WINDOW`]), so a capable backend is at full
//!   concurrency within a few round trips while a small one is never flooded. Requests released
//!   from a hold use it, and so do those arriving during the warm-up right after the wake
//!   ([`WARM_UP`](crate::watcher::WARM_UP));
//! - **fail-fast**: a bodiless request on a fresh upstream connection must be acknowledged by
//!   the backend's kernel within [`UNACKNOWLEDGED_TIMEOUT`] (`TCP_USER_TIMEOUT`);
//! - **retries** ([`MAX_RETRIES`], jittered backoff): a failed connection attempt, and an
//!   idempotent request whose fresh connection was dropped before any answer (or any idempotent
//!   request in the slow start), are tried again.
//!
//! The per-request side lives in [`GateContext`](crate::gate::GateContext).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests released at once before the backend answered any.
pub const INITIAL_WINDOW: usize = 8;
/// The window stops growing here: enough to keep any backend busy, few enough that a small
/// one's accept queue is not flooded.
pub const MAX_WINDOW: usize = 64;

/// One wake's release window. Cheap to clone (shared by every waiter of that wake).
#[derive(Clone)]
pub struct ReleaseWindow {
    places: Arc<Semaphore>,
    size: Arc<AtomicUsize>,
}

impl Default for ReleaseWindow {
    fn default() -> Self {
        Self {
            places: Arc::new(Semaphore::new(INITIAL_WINDOW)),
            size: Arc::new(AtomicUsize::new(INITIAL_WINDOW)),
        }
    }
}

impl ReleaseWindow {
    /// Waits for a place in the window.
    pub async fn enter(&self) -> ReleaseTicket {
        let permit = Arc::clone(&self.places).acquire_owned().await.ok();
        ReleaseTicket {
            permit,
            window: self.clone(),
        }
    }

    /// How many places are free right now.
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }
}

/// A released request's place in the window. Dropped without a response (the request failed
/// or was abandoned), the place is returned; after [`responded`](Self::responded), the window
/// also grows by one.
pub struct ReleaseTicket {
    permit: Option<OwnedSemaphorePermit>,
    window: ReleaseWindow,
}

impl ReleaseTicket {
    /// The backend answered (response headers arrived): give the place back and open one more.
    pub fn responded(&mut self) {
        if self.permit.take().is_none() {
            return;
        }
        let size = &self.window.size;
        let grown = size.fetch_update(Ordering::AcqRel, Ordering::Acquire, |size| {
            (size < MAX_WINDOW).then_some(size + 1)
        });
        if grown.is_ok() {
            self.window.places.add_permits(1);
        }
    }
}

/// How long the request on a fresh upstream connection may stay unacknowledged by the
/// backend's kernel (see [`GateContext::connected_to_upstream`](crate::gate::GateContext::connected_to_upstream)).
pub const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(1);

/// Sets `TCP_USER_TIMEOUT` on a connected socket (zero restores the system default).
pub(crate) fn set_user_timeout(fd: RawFd, timeout: Duration) {
    let millis = timeout.as_millis().min(u32::MAX as u128) as libc::c_uint;
    // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from a live local; `fd` is the
    // socket Pingora just handed to a hook, alive for the duration of the call.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&millis as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(fd, error = %std::io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
    }
}

/// Whether the upstream failure is the connection being dropped: closed, reset, or timing out
/// (data never acknowledged, or connect).
pub(crate) fn connection_dropped(error: &pingora::Error) -> bool {
    use pingora::ErrorType;
    if matches!(
        error.etype(),
        ErrorType::ConnectionClosed | ErrorType::ConnectTimedout | ErrorType::ConnectRefused
    ) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.root_cause());
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return io.raw_os_error() == Some(libc::ETIMEDOUT)
                || matches!(
                    io.kind(),
                    TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                );
        }
        cause = current.source();
    }
    false
}

/// At most this many extra attempts for a request (see `GateContext::should_retry`).
pub const MAX_RETRIES: u32 = 6;

/// A cheap, good-enough random number below `bound` (for jitter only).
fn fastrand_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound.max(1)
}

/// The pause before retry number `retries` (zero before the first attempt): 10 ms doubling per
/// retry, with jitter so retried requests do not arrive together again.
pub(crate) fn retry_delay(retries: u32) -> Duration {
    if retries == 0 {
        return Duration::ZERO;
    }
    let base = 10u64 << (retries - 1).min(8);
    Duration::from_millis(base + fastrand_below(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_grow_the_window_and_failures_do_not() {
        let window = ReleaseWindow::default();
        let mut tickets = Vec::new();
        for _ in 0..INITIAL_WINDOW {
            tickets.push(window.enter().await);
        }
        assert_eq!(window.available(), 0);
        // A failed request gives its place back, no more.
        drop(tickets.pop());
        assert_eq!(window.available(), 1);
        tickets.push(window.enter().await);
        // A response gives the place back and opens another.
        for ticket in &mut tickets {
            ticket.responded();
        }
        assert_eq!(window.available(), 2 * INITIAL_WINDOW);
        drop(tickets);
        assert_eq!(window.available(), 2 * INITIAL_WINDOW);
    }

    #[tokio::test]
    async fn the_window_stops_growing_at_its_maximum() {
        let window = ReleaseWindow::default();
        for _ in 0..(MAX_WINDOW * 4) {
            window.enter().await.responded();
        }
        assert_eq!(window.available(), MAX_WINDOW);
    }
}
