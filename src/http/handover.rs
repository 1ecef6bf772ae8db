//! The early hold's verdict, handed to the gate through the connection's task: a request held
//! before Pingora read it arrives at the gate already admitted (or already failed), and must not
//! be held a second time.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

use crate::backend::WakeFailure;
use crate::routes::Route;
use crate::wait::Admission;

/// What an early hold hands to the gate, through the connection's task.
pub(crate) enum Handover {
    /// The request may enter the backend.
    Admitted(Admission),
    /// The wake failed: answer 503 at once, do not hold again.
    Failed(WakeFailure),
}

tokio::task_local! {
    static HANDOVER: Cell<Option<(Arc<Route>, Handover)>>;
}

/// Runs `served` (the connection, served by Pingora) with `handover` waiting for the gate's
/// request for `route`.
pub(crate) async fn scope<F: Future>(
    route: Arc<Route>,
    handover: Handover,
    served: F,
) -> F::Output {
    HANDOVER
        .scope(Cell::new(Some((route, handover))), served)
        .await
}

/// Drops an unclaimed handover (its admission gives the window place and the backend back).
pub(crate) fn forget() {
    drop(HANDOVER.try_with(Cell::take));
}

/// The early hold's verdict for the request the gate is looking at, if it was held early for
/// `route` (the very same route, not one of the same name in a newer table). Taken once: later
/// requests on the same connection find nothing.
pub(crate) fn take(route: &Arc<Route>) -> Option<Handover> {
    let taken = HANDOVER.try_with(Cell::take).ok().flatten();
    match taken {
        Some((held_for, handover)) if Arc::ptr_eq(&held_for, route) => Some(handover),
        _ => None,
    }
}

/// The early hold's failure for a route a reload removed while the request was held (the gate
/// no longer finds the route by its host): the request is answered 503 for that route, not 404.
pub(crate) fn take_removed() -> Option<(Arc<Route>, WakeFailure)> {
    let taken = HANDOVER.try_with(Cell::take).ok().flatten();
    match taken {
        Some((route, Handover::Failed(failure @ WakeFailure::RouteRemoved))) => {
            Some((route, failure))
        }
        Some(other) => {
            // Not ours: put it back for the gate's own look-up.
            let _ = HANDOVER.try_with(|cell| cell.set(Some(other)));
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fake::FakeEngine;
    use crate::routes::testing::route;
    use std::time::Duration;

    fn failed() -> Handover {
        Handover::Failed(WakeFailure::ShuttingDown)
    }

    #[tokio::test]
    async fn a_handover_is_taken_once_by_its_own_route() {
        let engine = FakeEngine::new();
        let second = Duration::from_secs(1);
        let (three, four) = (
            route(&engine, "three", 1, 10, second),
            route(&engine, "four", 1, 10, second),
        );
        assert!(take(&three).is_none(), "outside any held connection");
        scope(Arc::clone(&three), failed(), async {
            assert!(matches!(
                take(&three),
                Some(Handover::Failed(WakeFailure::ShuttingDown))
            ));
            assert!(take(&three).is_none(), "a later request finds nothing");
        })
        .await;
        scope(Arc::clone(&three), failed(), async {
            assert!(take(&four).is_none(), "another route's request");
        })
        .await;
        let other_engine = FakeEngine::new();
        let same_name = route(&other_engine, "three", 1, 10, second);
        scope(Arc::clone(&three), failed(), async {
            assert!(
                take(&same_name).is_none(),
                "a route of the same name from a newer table"
            );
        })
        .await;
    }
}
