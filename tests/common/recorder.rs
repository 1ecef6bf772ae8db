//! A [`BackendObserver`] that records what a provider family's event source delivers, and lets a
//! test wait for it.

use std::sync::Mutex;
use std::time::Duration;

use idlewatcher::providers::{BackendEvent, BackendObserver};

/// Generous bound for anything an engine does at once (2 shared cores, parallel tests).
pub const SOON: Duration = Duration::from_secs(15);

/// Records every [`BackendEvent`] it observes, in order.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<BackendEvent>>,
    notify: tokio::sync::Notify,
}

impl BackendObserver for Recorder {
    fn observe(&self, event: BackendEvent) {
        self.events.lock().expect("recorder lock").push(event);
        self.notify.notify_waiters();
    }
}

impl Recorder {
    /// Everything observed so far.
    pub fn all(&self) -> Vec<BackendEvent> {
        self.events.lock().expect("recorder lock").clone()
    }

    /// Waits (at most [`SOON`]) for `want` at index `from` or later; returns the index after
    /// it. Panics with everything observed when it does not come.
    pub async fn expect_from(&self, from: usize, want: BackendEvent) -> usize {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(i) = self.all().iter().skip(from).position(|e| *e == want) {
                return from + i + 1;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {want:?} at or after #{from} within {SOON:?}; got {:?}",
                    self.all()
                );
            }
        }
    }
}
