//! Changes made outside idlewatcher, as the provider family's event source reports them: a
//! backend started by hand is adopted (probed, then ready, with no start call of ours); stopped by
//! hand → napping; removed → error; recreated → napping again.

use std::sync::Arc;

use crate::backend::events::WakeEventKind;
use crate::backend::{State, WakeError, Watcher};
use crate::providers::{BackendEvent, BackendObserver, BackendStatus};

impl BackendObserver for Watcher {
    fn observe(&self, event: BackendEvent) {
        let mut control = self.control.lock();
        let state = self.state();
        tracing::debug!(backend = %self.backend(), ?event, ?state, "backend event");
        match (event, state) {
            // Started by hand (or by anything but our own wake): probe, then serve.
            (BackendEvent::Started, State::Napping | State::Error)
            | (BackendEvent::Resync(BackendStatus::Running), State::Napping | State::Error) => {
                self.adopt(&mut control)
            }
            (
                BackendEvent::Resync(BackendStatus::Stopped | BackendStatus::Paused),
                State::Ready,
            ) => self.nap(&mut control, "was stopped outside idlewatcher"),
            // Events can arrive late (the `die` of our own last stop, after a new wake already
            // made the backend ready again): believe the engine's current status, not the event.
            (BackendEvent::Stopped, State::Ready) => {
                let generation = control.generation;
                if let Some(this) = self.this.upgrade() {
                    tokio::spawn(async move { this.confirm_stopped(generation).await });
                }
            }
            (
                BackendEvent::Resync(BackendStatus::Stopped | BackendStatus::Paused),
                State::Error,
            )
            | (BackendEvent::Created, State::Error) => {
                control.retry_at = None;
                control.consecutive_failures = 0;
                self.nap(&mut control, "is back");
            }
            (
                BackendEvent::Removed | BackendEvent::Resync(BackendStatus::Missing),
                State::Napping | State::Ready | State::Error,
            ) => {
                let error = Arc::new(WakeError::Removed {
                    backend: self.backend().to_string(),
                    noun: self.provider.noun(),
                });
                control.retry_at = None;
                self.set_state(&mut control, State::Error, Some(error.clone()));
                self.events.clear();
                self.events.push(
                    WakeEventKind::Error,
                    format!("{} was removed", self.backend()),
                    Some(error.to_string()),
                );
            }
            // Removed or created anew during our wake: a re-create, perhaps (the wake, if it
            // fails, looks for the new backend; see `run_wake`).
            (BackendEvent::Removed | BackendEvent::Created, State::Starting) => {
                control.recreated = true;
            }
            // Our own wake or stop is in charge; its own checks see what happened.
            _ => {}
        }
    }
}
