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

#[cfg(all(test, any()))] // FIXME: enable with the fake provider
mod tests {
    use super::*;
    use crate::backend::{BackendSettings, Upstream, UpstreamTarget, Watcher};
    use crate::config::{HealthCheck, StopMethod};
    use crate::idle::IdleClock;
    use crate::providers::fake::FakeEngine;
    use std::time::Duration;

    fn failed() -> Handover {
        Handover::Failed(WakeFailure::ShuttingDown)
    }

    fn route(name: &str) -> Arc<Route> {
        let engine = FakeEngine::new();
        engine.create(name);
        let watcher = Watcher::new(
            0,
            Arc::new(engine.provider(name)),
            BackendSettings {
                idle_ticks: 0,
                wake_timeout: Duration::from_secs(1),
                stop_method: StopMethod::Stop,
                stop_signal: None,
                stop_timeout: Duration::from_secs(1),
                retry_backoff: Duration::from_secs(1),
            },
            Vec::new(),
            Vec::new(),
            IdleClock::new(Duration::from_secs(1)),
        );
        let upstream = Arc::new(Upstream::new(
            UpstreamTarget::BackendPort(80),
            HealthCheck::Tcp,
        ));
        Arc::new(Route::new(name.into(), watcher, upstream, None, false, 10))
    }

    #[tokio::test]
    async fn a_handover_is_taken_once_by_its_own_route() {
        let (three, four) = (route("three"), route("four"));
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
        let same_name = route("three");
        scope(Arc::clone(&three), failed(), async {
            assert!(
                take(&same_name).is_none(),
                "a route of the same name from a newer table"
            );
        })
        .await;
    }
}
