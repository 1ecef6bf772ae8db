//! Waiting through a wake, whatever the protocol: a place among the route's waiters, the wake,
//! the deadline (`wake_timeout`), a client that leaves, the gateway shutting down, and finally a
//! place in the slow-start window. The HTTP gate, the HTTP early hold and (later) the TCP and UDP
//! fronts all wait with [`hold_until_admitted`]; none has a copy of it. While they wait, they
//! notice a client leaving without reading its bytes ([`departure`]).

pub mod departure;

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
                // Listening before looking: a removal in between is not missed.
                let removal = route.removal();
                tokio::pin!(removal);
                removal.as_mut().enable();
                if route.is_removed() {
                    break Err(WakeFailure::RouteRemoved);
                }
                tokio::select! {
                    result = &mut wait => break result,
                    gone = &mut client_left => return HoldOutcome::ClientLeft(gone),
                    _ = shutdown.changed() => {}
                    () = &mut removal => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fake::FakeEngine;
    use crate::routes::testing::route;
    use std::future::pending;
    use std::sync::Arc;
    use std::time::Duration;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_held_request_is_admitted_once_ready_with_a_window_place() {
        let engine = FakeEngine::new();
        let port = free_port();
        let app = route(&engine, "app", port, 10, Duration::from_secs(5));
        engine.listen_on("app", port).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        match hold_until_admitted(&app, shutdown, pending::<()>()).await {
            HoldOutcome::Admitted(admission) => {
                assert!(app.watcher.is_ready());
                assert_eq!(app.watcher.in_flight(), 1, "the admission keeps it awake");
                drop(admission);
                assert_eq!(app.watcher.in_flight(), 0);
            }
            _ => panic!("not admitted"),
        }
        assert_eq!(engine.calls("app").starts, 1);
    }

    #[tokio::test]
    async fn beyond_max_waiters_nothing_is_waited_for() {
        let engine = FakeEngine::new();
        let app = route(&engine, "app", free_port(), 1, Duration::from_secs(5));
        let _held = app.hold().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let outcome = hold_until_admitted(&app, shutdown, pending::<()>()).await;
        assert!(matches!(outcome, HoldOutcome::Full));
        assert_eq!(
            engine.calls("app").starts,
            0,
            "nothing woken for a refused request"
        );
    }

    #[tokio::test]
    async fn a_client_that_leaves_gives_its_place_back_and_the_wake_goes_on() {
        let engine = FakeEngine::new();
        let app = route(&engine, "app", free_port(), 1, Duration::from_secs(5));
        let (_stop, shutdown) = watch::channel(false);
        let left = async { tokio::time::sleep(Duration::from_millis(20)).await };
        let outcome = hold_until_admitted(&app, shutdown, left).await;
        assert!(matches!(outcome, HoldOutcome::ClientLeft(())));
        assert!(app.hold().is_some(), "the place was given back");
        assert_eq!(
            engine.calls("app").starts,
            1,
            "the wake itself was not cancelled"
        );
    }

    #[tokio::test]
    async fn the_deadline_and_shutdown_end_a_hold_with_a_failure() {
        let engine = FakeEngine::new();
        // Nothing listens at the upstream: the backend never becomes ready.
        let app = route(&engine, "app", free_port(), 10, Duration::from_millis(200));
        let (_stop, shutdown) = watch::channel(false);
        match hold_until_admitted(&app, shutdown, pending::<()>()).await {
            HoldOutcome::Failed(failure) => {
                assert!(
                    failure
                        .to_string()
                        .contains("did not become ready within 200ms"),
                    "{failure}"
                )
            }
            _ => panic!("not failed"),
        }
        let other = route(&engine, "other", free_port(), 10, Duration::from_secs(30));
        let (stop, shutdown) = watch::channel(false);
        let hold = tokio::spawn({
            let other = Arc::clone(&other);
            async move {
                matches!(
                    hold_until_admitted(&other, shutdown, pending::<()>()).await,
                    HoldOutcome::Failed(WakeFailure::ShuttingDown)
                )
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.send_replace(true);
        assert!(hold.await.unwrap(), "shutdown ends the hold at once");
    }
}
