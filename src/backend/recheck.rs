//! Re-checking a "ready" backend that stopped answering: a status call to its provider, handled
//! as if the family's event source had reported it.
//!
//! Events can be lost (the engine's event stream down, an engine that names or filters its
//! events differently), and then a backend stopped behind our back would stay "ready" forever
//! while every request fails to connect. The HTTP front calls [`Watcher::recheck`] when a
//! request to a ready backend cannot connect; the status it gets is fed to the watcher's
//! observer (`outside.rs`) as a resync, so a stopped backend naps and a removed one is in error
//! by the time the failed request is answered or soon after.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::{State, Watcher};
use crate::providers::{BackendEvent, BackendObserver};

impl Watcher {
    /// Asks the provider for the backend's status, in the background, and acts on it like on a
    /// resync of the family's event source. At most one check runs at a time per backend;
    /// only a backend believed ready is checked. Needs a tokio runtime.
    pub fn recheck(self: &Arc<Self>) {
        if self.state() != State::Ready || self.rechecking.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let status = this.provider.status().await;
            this.rechecking.store(false, Ordering::Release);
            match status {
                Ok(status) => {
                    tracing::debug!(backend = %this.backend(), ?status, "re-checked after connect failures");
                    this.observe(BackendEvent::Resync(status));
                }
                Err(error) => {
                    tracing::warn!(backend = %this.backend(), %error, "cannot re-check the backend's status");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::backend::State;
    use crate::providers::fake::FakeEngine;
    use crate::routes::testing::route;

    #[tokio::test]
    async fn a_ready_backend_stopped_without_an_event_naps_after_a_recheck() {
        let engine = FakeEngine::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Not watched by the watcher: no event of the engine reaches it.
        let app = route(&engine, "app", port, 10, Duration::from_secs(5));
        engine.listen_on("app", port).unwrap();
        let watcher = &app.watcher;
        let generation = watcher.wake().unwrap();
        watcher
            .wait_ready(
                generation,
                std::time::Instant::now() + Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(watcher.state(), State::Ready);
        engine.stop_by_hand("app").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            watcher.state(),
            State::Ready,
            "no event: still believed ready"
        );
        watcher.recheck();
        for _ in 0..100 {
            if watcher.state() == State::Napping {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still {:?} after the re-check", watcher.state());
    }
}
