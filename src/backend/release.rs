//! How requests enter a backend that just woke: the slow-start window.
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
//!   ([`WARM_UP`](crate::backend::WARM_UP));
//! - **fail-fast** and **retries**: HTTP's side of it, in [`crate::http::retry`].
//!
//! This file is the protocol-independent window; the per-request side of HTTP lives in
//! [`GateContext`](crate::http::GateContext).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
