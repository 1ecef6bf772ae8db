//! Putting a backend to sleep: the idle clock asks ([`Watcher::try_begin_stop`], then
//! [`Watcher::put_to_sleep`]); a stop never happens under a request in flight, and a request that
//! arrives during the stop wakes the backend again once it is down.

use std::sync::atomic::Ordering;

use async_trait::async_trait;

use crate::backend::events::WakeEventKind;
use crate::backend::watcher::Control;
use crate::backend::{State, Watcher};
use crate::config::StopMethod;
use crate::idle::{SleepOutcome, Sleeper};
use crate::providers::{BackendStatus, ProviderError};

impl Watcher {
    /// Moves `ready` (or `error`: a failed wake may have left the backend running) to
    /// `stopping` if nothing is in flight. The caller then runs
    /// [`put_to_sleep`](Self::put_to_sleep).
    pub fn try_begin_stop(&self) -> bool {
        self.begin_stop(false)
    }

    /// [`try_begin_stop`](Self::try_begin_stop) for an operator who said so explicitly (the
    /// admin API's sleep with `force`): requests in flight and awake dependents do not hold the
    /// backend; they fail as if it had been stopped by hand.
    pub fn begin_forced_stop(&self) -> bool {
        self.begin_stop(true)
    }

    fn begin_stop(&self, force: bool) -> bool {
        let mut control = self.control.lock();
        let before = self.state();
        if !matches!(before, State::Ready | State::Error) {
            return false;
        }
        // State first, then the count: pairs with `enter` (see there). Likewise for dependents:
        // a dependent sets `starting` before it wakes this backend, so either it sees `stopping`
        // (and waits for the stop, then wakes it again) or this sees it held.
        self.state.store(State::Stopping as u8, Ordering::SeqCst);
        if !force && (self.in_flight.load(Ordering::SeqCst) != 0 || self.is_held()) {
            self.state.store(before as u8, Ordering::SeqCst);
            return false;
        }
        control.before_stop = (before, control.error.clone());
        self.set_state(&mut control, State::Stopping, None);
        // The history ends with this backend's last `ready`: a page opened now must not act on it.
        self.events.clear();
        true
    }

    /// Puts the backend to sleep with the configured method (after
    /// [`try_begin_stop`](Self::try_begin_stop) returned true). On success the backend naps (or
    /// is woken again at once if requests arrived meanwhile); on failure it stays ready.
    pub async fn put_to_sleep(&self) -> Result<(), ProviderError> {
        let result = self.send_to_sleep().await;
        if let Err(ProviderError::InUse { reason, .. }) = &result {
            // Not a failure: another gateway uses it (decided on the manager's own answer).
            tracing::info!(backend = %self.backend(), %reason, "not put to sleep: still in use");
            self.cancel_stop();
            return result;
        }
        if let Some(metrics) = self.metrics.get() {
            metrics.slept(result.is_ok());
        }
        let settings = self.settings.load_full();
        let mut control = self.control.lock();
        match &result {
            Ok(()) => {
                for upstream in self.upstreams.load().iter() {
                    upstream.set_address(None);
                }
                self.nap(&mut control, "was put to sleep");
                if control.wake_after_stop {
                    self.start_flight(&mut control);
                }
                tracing::info!(backend = %self.backend(), method = ?settings.stop_method, "asleep");
            }
            Err(error) => {
                // The backend keeps serving; the idle clock retries later.
                drop(control);
                self.cancel_stop();
                tracing::warn!(backend = %self.backend(), %error, "could not put to sleep");
            }
        }
        result
    }

    /// Goes back to what the backend was before [`try_begin_stop`](Self::try_begin_stop): it
    /// keeps serving, and requests that came meanwhile find it up.
    pub(super) fn cancel_stop(&self) {
        let mut control = self.control.lock();
        let (state, previous_error) = control.before_stop.clone();
        control.wake_after_stop = false;
        self.set_state(&mut control, state, previous_error);
    }

    /// The provider call for the configured stop method.
    pub(super) async fn send_to_sleep(&self) -> Result<(), ProviderError> {
        let settings = self.settings.load_full();
        let signal = settings.stop_signal.as_deref();
        match settings.stop_method {
            StopMethod::Pause => self.provider.pause().await,
            StopMethod::Stop => self.provider.stop(signal, settings.stop_timeout).await,
            StopMethod::Kill => self.provider.kill(signal).await,
        }
    }

    pub(super) fn nap(&self, control: &mut Control, why: &str) {
        self.set_state(control, State::Napping, None);
        // A dependency's idle clock starts when its last dependent sleeps, not at its own last
        // traffic (a database serving no HTTP has none).
        for (dependency, _) in self.dependencies.load().iter() {
            dependency.mark_activity();
        }
        self.events.clear();
        self.events.push(
            WakeEventKind::Napping,
            format!("{} {why}", self.backend()),
            None,
        );
    }

    /// Naps if the backend really is down and nothing changed since generation `generation`.
    pub(super) async fn confirm_stopped(&self, generation: u64) {
        let status = match self.provider.status().await {
            Ok(BackendStatus::Running) | Err(_) => return,
            Ok(status) => status,
        };
        let mut control = self.control.lock();
        if control.generation == generation && self.state() == State::Ready {
            tracing::debug!(backend = %self.backend(), ?status, "stopped outside idlewatcher");
            self.nap(&mut control, "was stopped outside idlewatcher");
        }
    }

    pub(super) fn adopt(&self, control: &mut Control) {
        tracing::info!(backend = %self.backend(), "started outside idlewatcher: adopting");
        control.retry_at = None;
        control.consecutive_failures = 0;
        self.start_flight(control);
    }
}

/// The idle clock's view of a backend.
#[async_trait]
impl Sleeper for Watcher {
    fn id(&self) -> u32 {
        self.id
    }

    fn may_sleep(&self) -> bool {
        !self.is_retired() && matches!(self.state(), State::Ready | State::Error)
    }

    fn idle_deadline(&self) -> Option<u64> {
        Watcher::idle_deadline(self)
    }

    /// Requests in flight, plus one while a dependent holds the backend awake: the idle clock
    /// then looks again next tick, as for a request.
    fn in_flight(&self) -> u32 {
        Watcher::in_flight(self) + u32::from(self.is_held())
    }

    fn try_begin_stop(&self) -> bool {
        Watcher::try_begin_stop(self)
    }

    /// Asks the provider first (a backend shared with other gateways may still be in use),
    /// then puts the backend to sleep.
    async fn put_to_sleep(&self) -> SleepOutcome {
        if let Some(retry_in) = self.vetoed().await {
            return SleepOutcome::Postponed(retry_in);
        }
        match Watcher::put_to_sleep(self).await {
            Ok(()) => SleepOutcome::Asleep,
            Err(ProviderError::InUse { retry_in, .. }) => SleepOutcome::Postponed(retry_in),
            Err(_) => SleepOutcome::Failed,
        }
    }

    fn report_every(&self) -> Option<u64> {
        self.report_period().map(u64::from)
    }

    fn report_activity(&self, now: u64) {
        Watcher::report_activity(self, u32::try_from(now).unwrap_or(u32::MAX));
    }
}
