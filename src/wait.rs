//! Waiting through a wake, whatever the protocol: a place among the route's waiters, the wake,
//! the deadline (`wake_timeout`), a client that leaves, the gateway shutting down, and finally a
//! place in the slow-start window. The HTTP gate, the HTTP early hold and (later) the TCP and UDP
//! fronts all wait with [`hold_until_admitted`]; none has a copy of it.

use std::future::Future;
use std::time::Instant;

use tokio::sync::watch;

use crate::backend::release::ReleaseTicket;
use crate::backend::{InFlight, WakeFailure, Watcher};
use crate::routes::Route;

/// How a hold ended.
pub enum HoldOutcome<E> {
    /// The route already holds `max_waiters` requests: nothing was waited for.
    Full,
    /// Ready, with the request's place in the slow-start window.
    Admitted(Admission),
    /// The wake failed, timed out, or the gateway is shutting down.
    Failed(WakeFailure),
    /// The client left (what its watch returned).
    ClientLeft(E),
}

/// A request that waited through a wake and may now enter the backend.
pub struct Admission {
    /// Keeps the backend awake until the request ends.
    pub in_flight: InFlight,
    /// Its place in the slow-start window.
    pub release: ReleaseTicket,
}

/// Takes a place among `route`'s waiters, wakes the backend and waits until it is ready and
/// the request has its place in the slow-start window, until the route's `wake_timeout`, or
/// until `shutdown`. A backend that falls asleep again meanwhile is woken again. `client_left`
/// completes when the client is gone (it may stay pending forever); the wait then ends at once,
/// without an answer. The place among the waiters is given back when this returns.
pub async fn hold_until_admitted<E>(
    route: &Route,
    mut shutdown: watch::Receiver<bool>,
    client_left: impl Future<Output = E>,
) -> HoldOutcome<E> {
    let Some(_held) = route.hold() else {
        return HoldOutcome::Full;
    };
    let watcher = &route.watcher;
    let deadline = Instant::now() + watcher.settings().wake_timeout;
    tokio::pin!(client_left);
    loop {
        // In a block of its own, so that the wait's state and the window's share memory.
        let result = {
            let wait = async {
                let generation = watcher.wake()?;
                watcher.wait_ready(generation, deadline).await
            };
            tokio::pin!(wait);
            loop {
                if *shutdown.borrow_and_update() {
                    break Err(WakeFailure::ShuttingDown);
                }
                tokio::select! {
                    result = &mut wait => break result,
                    gone = &mut client_left => return HoldOutcome::ClientLeft(gone),
                    _ = shutdown.changed() => {}
                }
            }
        };
        if let Err(failure) = result {
            return HoldOutcome::Failed(failure);
        }
        if let Some(in_flight) = watcher.enter() {
            return match enter_window(watcher, deadline).await {
                Ok(release) => HoldOutcome::Admitted(Admission { in_flight, release }),
                Err(failure) => HoldOutcome::Failed(failure),
            };
        }
        // Ready, then at once asleep again: wake once more within the deadline.
        if Instant::now() >= deadline {
            return HoldOutcome::Failed(watcher.timed_out());
        }
    }
}

/// Waits for a place in the backend's slow-start window, until `deadline`.
pub async fn enter_window(
    watcher: &Watcher,
    deadline: Instant,
) -> Result<ReleaseTicket, WakeFailure> {
    let window = watcher.release_window();
    tokio::time::timeout_at(deadline.into(), window.enter())
        .await
        .map_err(|_| watcher.timed_out())
}
