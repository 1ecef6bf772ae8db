//! The watcher: one per backend, shared by every route that fronts it.
//!
//! It owns the backend's state (`napping | starting | ready | stopping | error`) as one atomic
//! byte, so the request path learns "ready" with a single load. Everything else happens off the
//! request path, under a small mutex that serialises state *changes*:
//!
//! The watcher's work is split by concern: this file holds the state, the request-path entry
//! points and the singleflight; `wake.rs` the wake itself, `sleep.rs` putting the backend to
//! sleep, `outside.rs` changes made outside idlewatcher.
//!
//! - **wake** ([`Watcher::wake`]): singleflight. The first caller starts one wake task
//!   (dependencies, provider start, address lookup, readiness probes) bounded by `wake_timeout`;
//!   later callers join it. The task is detached, so a client that disconnects never cancels it.
//!   A failure reaches every waiter; the next wake is refused until a backoff passes (doubling per
//!   consecutive failure) so a broken backend under traffic is not restarted in a tight loop.
//! - **waiting** ([`Watcher::wait_ready`]): waiters are told (a `Notify`) the moment the wake
//!   task records readiness or failure, and read the state under the lock; nobody polls a timer.
//! - **sleep** ([`Watcher::try_begin_stop`], [`Watcher::put_to_sleep`]): driven by the idle
//!   clock. A request that arrives while the backend is stopping is held and wakes it again once
//!   the stop has finished: never proxied to a dying backend, never lost.
//! - **outside changes** ([`BackendObserver::observe`]): a backend started by hand is adopted
//!   (probed, then ready, with no start call of ours); stopped by hand → napping; removed → error.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use arc_swap::{ArcSwap, Guard};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::backend::events::{EventLog, WakeEventKind};
use crate::backend::release::ReleaseWindow;
use crate::backend::{State, Status, Upstream, WakeError, WakeFailure};
use crate::config::{DependencyCondition, StopMethod};
use crate::idle::IdleClock;
use crate::metrics::BackendMetrics;
use crate::providers::Provider;

/// After a wake, how long new requests still enter through the slow start (at most).
pub const WARM_UP: Duration = Duration::from_secs(3);

/// How a backend is woken and put to sleep: the backend-level route settings. Equal settings
/// are shared between backends (assembly interns them), hence `Eq` and `Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendSettings {
    /// Idle time before sleep, in idle-clock ticks; 0 = never.
    pub idle_ticks: u32,
    /// Deadline of one wake.
    pub wake_timeout: Duration,
    /// How to put it to sleep.
    pub stop_method: StopMethod,
    /// Signal for stop/kill.
    pub stop_signal: Option<String>,
    /// Grace period of `stop`.
    pub stop_timeout: Duration,
    /// First pause after a failed wake.
    pub retry_backoff: Duration,
}

/// What changes under the watcher's mutex (everything but the state byte and the counters).
pub(super) struct Control {
    pub(super) generation: u64,
    pub(super) since: SystemTime,
    pub(super) error: Option<Arc<WakeError>>,
    pub(super) backend_up: bool,
    pub(super) consecutive_failures: u32,
    pub(super) retry_at: Option<Instant>,
    pub(super) wake_after_stop: bool,
    /// The current wake's slow start for released requests (made at its first use: a
    /// backend that never woke has none).
    pub(super) release: Option<ReleaseWindow>,
    /// The current wake started (or unpaused) the backend itself.
    pub(super) woke_it: bool,
    /// A failed wake's backend is being put back to sleep; no new wake until it is done.
    pub(super) cleaning_up: bool,
    /// What to go back to if putting the backend to sleep fails.
    pub(super) before_stop: (State, Option<Arc<WakeError>>),
    /// The backend was removed or created anew (a re-create) during the current wake.
    pub(super) recreated: bool,
}

/// The backends one backend wakes first, each with the condition it must reach.
pub type Dependencies = Vec<(Arc<Watcher>, DependencyCondition)>;

/// `reported_at` before the first report.
pub(super) const NEVER: u32 = u32::MAX;

/// The backends that depend on one backend, by route name.
type Dependents = Vec<(String, Weak<Watcher>)>;

/// `list` in an `Arc`; an empty list (most backends have no dependencies and no dependents)
/// gets one `Arc` shared by all of them, so that it costs a napping backend no heap.
fn shared_if_empty<T: EmptyShared>(list: Vec<T>) -> Arc<Vec<T>> {
    if list.is_empty() {
        T::empty()
    } else {
        Arc::new(list)
    }
}

/// A list type with one shared empty instance ([`shared_if_empty`]).
trait EmptyShared: Sized {
    fn empty() -> Arc<Vec<Self>>;
}

impl EmptyShared for (Arc<Watcher>, DependencyCondition) {
    fn empty() -> Arc<Dependencies> {
        static EMPTY: LazyLock<Arc<Dependencies>> = LazyLock::new(|| Arc::new(Vec::new()));
        Arc::clone(&EMPTY)
    }
}

impl EmptyShared for (String, Weak<Watcher>) {
    fn empty() -> Arc<Dependents> {
        static EMPTY: LazyLock<Arc<Dependents>> = LazyLock::new(|| Arc::new(Vec::new()));
        Arc::clone(&EMPTY)
    }
}

/// One backend's lifecycle. See the module docs.
pub struct Watcher {
    pub(super) id: u32,
    /// Also what the backend is called ([`backend`](Watcher::backend)): its provider describes
    /// it, so the watcher keeps no copy of the name.
    pub(super) provider: Arc<dyn Provider>,
    /// Swapped whole by a reload ([`reconfigure`](Watcher::reconfigure)); read off the request
    /// path only.
    pub(super) settings: ArcSwap<BackendSettings>,
    pub(super) dependencies: ArcSwap<Dependencies>,
    /// The backends that depend on this one, by route name: set after assembly and after each
    /// reload (weak, since each of them holds this watcher strongly through its `dependencies`).
    pub(super) dependents: ArcSwap<Dependents>,
    pub(super) upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    pub(super) state: AtomicU8,
    pub(super) control: Mutex<Control>,
    /// Told whenever the state, the generation or `backend_up` changes (under `control`):
    /// waiters read those under the lock, so the channel carries no value (a `watch` channel's
    /// shared state costs a napping backend some 350 bytes; this costs nothing until waited on).
    pub(super) changed: Notify,
    pub(super) events: EventLog,
    pub(super) last_seen: AtomicU32,
    pub(super) in_flight: AtomicU32,
    pub(super) warm_until: AtomicU32,
    pub(super) idle: Arc<IdleClock>,
    /// Where wakes and sleeps are counted: set once by assembly (a watcher built without it, in
    /// a test or by an embedder, counts nothing).
    pub(super) metrics: OnceLock<BackendMetrics>,
    pub(super) this: Weak<Watcher>,
    /// A status re-check is under way (see `recheck.rs`): one at a time.
    pub(super) rechecking: AtomicBool,
    /// A reload removed every route of this backend: the idle clock leaves it alone.
    pub(super) retired: AtomicBool,
    /// The tick of the last activity report to the provider (`shared.rs`; `NEVER`: none).
    pub(super) reported_at: AtomicU32,
    /// An activity report is under way: one at a time.
    pub(super) reporting: AtomicBool,
}

impl Watcher {
    /// A napping watcher. `id` is its dense index (the idle clock's key); `upstreams` are the
    /// routes' upstreams it resolves and probes on every wake.
    pub fn new(
        id: u32,
        provider: Arc<dyn Provider>,
        settings: impl Into<Arc<BackendSettings>>,
        dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
        upstreams: Vec<Arc<Upstream>>,
        idle: Arc<IdleClock>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            id,
            provider,
            settings: ArcSwap::new(settings.into()),
            dependencies: ArcSwap::new(shared_if_empty(dependencies)),
            dependents: ArcSwap::new(shared_if_empty(Vec::new())),
            upstreams: ArcSwap::from_pointee(upstreams),
            state: AtomicU8::new(State::Napping as u8),
            control: Mutex::new(Control {
                generation: 0,
                since: SystemTime::now(),
                error: None,
                backend_up: false,
                consecutive_failures: 0,
                retry_at: None,
                wake_after_stop: false,
                release: None,
                woke_it: false,
                cleaning_up: false,
                before_stop: (State::Napping, None),
                recreated: false,
            }),
            changed: Notify::new(),
            events: EventLog::new(),
            last_seen: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            warm_until: AtomicU32::new(0),
            idle,
            metrics: OnceLock::new(),
            this: this.clone(),
            rechecking: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            reported_at: AtomicU32::new(NEVER),
            reporting: AtomicBool::new(false),
        })
    }

    /// Called when a reload removed every route fronting this backend: requests in flight
    /// finish, and the idle clock no longer puts it to sleep (it is no longer ours to manage).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Called when a later reload fronts the backend again: the idle clock manages it again.
    pub fn unretire(&self) {
        self.retired.store(false, Ordering::Relaxed);
    }

    /// Whether a reload removed every route of this backend.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Tells this watcher which backends depend on it (`name` is the dependent's route name, for
    /// the status endpoint): while any of them is awake, waking, stopping or busy, this backend
    /// is held awake. Set after every watcher is built (dependents are built after their
    /// dependencies), and again by each reload; returns whether the list was empty before.
    pub fn set_dependents(&self, dependents: Vec<(String, &Arc<Watcher>)>) -> bool {
        let weak: Vec<(String, Weak<Watcher>)> = dependents
            .into_iter()
            .map(|(name, watcher)| (name, Arc::downgrade(watcher)))
            .collect();
        self.dependents.swap(shared_if_empty(weak)).is_empty()
    }

    /// Applies a reload to a backend whose provider target did not change: it keeps its state,
    /// idle timer, event history and requests in flight, and takes the new settings, dependencies
    /// and upstreams. A changed idle timeout re-arms the timer (from the last traffic); a ready
    /// backend's new upstreams get their addresses before this returns (so requests routed to
    /// them after the swap find one).
    pub async fn reconfigure(
        &self,
        settings: impl Into<Arc<BackendSettings>>,
        dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
        upstreams: Vec<Arc<Upstream>>,
    ) {
        let settings = settings.into();
        let idle_changed = self.settings.load().idle_ticks != settings.idle_ticks;
        self.settings.store(settings);
        self.dependencies.store(shared_if_empty(dependencies));
        let unresolved = upstreams
            .iter()
            .any(|upstream| upstream.address().is_none());
        self.upstreams.store(Arc::new(upstreams));
        if unresolved && self.is_ready() {
            if let Err(error) = self.resolve_missing().await {
                tracing::warn!(backend = %self.backend(), %error, "reload: a new upstream of a ready backend could not be resolved");
            }
        }
        if idle_changed && self.is_ready() {
            self.idle.arm(self.id);
        }
    }

    /// Gives this watcher the metrics its wakes and sleeps count into; set once, after
    /// assembly. Returns false if it was already set.
    pub fn set_metrics(&self, metrics: BackendMetrics) -> bool {
        self.metrics.set(metrics).is_ok()
    }

    /// The metrics this watcher counts into, if assembly gave it some.
    pub fn metrics(&self) -> Option<&BackendMetrics> {
        self.metrics.get()
    }

    /// The dependencies this backend wakes first, with the condition each must reach.
    pub fn dependencies(&self) -> Guard<Arc<Dependencies>> {
        self.dependencies.load()
    }

    /// Whether this backend keeps its dependencies awake: it is waking, awake or stopping, or
    /// anything is in flight on it. A dependency is never stopped under such a dependent.
    pub fn holds_dependencies(&self) -> bool {
        matches!(
            self.state(),
            State::Starting | State::Ready | State::Stopping
        ) || self.in_flight() > 0
    }

    /// The dependents that hold this backend awake right now (route names), for the status
    /// endpoint. Empty for a backend nothing depends on.
    pub fn held_by(&self) -> Vec<String> {
        self.dependents
            .load()
            .iter()
            .filter(|(_, dependent)| dependent.upgrade().is_some_and(|d| d.holds_dependencies()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether any dependent holds this backend awake (see [`held_by`](Self::held_by)); no
    /// allocation, for the idle clock's every look.
    pub fn is_held(&self) -> bool {
        self.dependents
            .load()
            .iter()
            .any(|(_, dependent)| dependent.upgrade().is_some_and(|d| d.holds_dependencies()))
    }

    /// The dense index of this watcher.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The backend, as its provider describes it (`docker container "whoami"`).
    pub fn backend(&self) -> &str {
        self.provider.describe()
    }

    /// The upstreams this backend resolves and probes on every wake (every route's and
    /// stream's that fronts it).
    pub fn upstreams(&self) -> Guard<Arc<Vec<Arc<Upstream>>>> {
        self.upstreams.load()
    }

    /// The backend-level settings.
    pub fn settings(&self) -> Guard<Arc<BackendSettings>> {
        self.settings.load()
    }

    /// The current state: one atomic load, the whole cost of the request path's readiness check.
    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Whether requests may pass straight through.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == State::Ready as u8
    }

    /// The wake events of the current (or last) wake.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The state with when it began and the last error, for the `status` endpoint.
    pub fn snapshot(&self) -> (State, SystemTime, Option<Arc<WakeError>>) {
        let control = self.control.lock();
        (self.state(), control.since, control.error.clone())
    }

    /// Records traffic: stores the coarse current tick, only if it changed (so a busy route does
    /// not bounce a cache line between cores on every request).
    #[inline]
    pub fn mark_activity(&self) {
        let now = self.idle.now();
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }

    /// The tick of the last recorded traffic.
    pub fn last_seen(&self) -> u32 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// The tick from which the backend counts as idle, if it ever sleeps: `idle_timeout` after
    /// its last traffic. The last-seen tick is coarse (the traffic may have come at its very
    /// end), so the timeout counts from the tick after it: a backend never sleeps early.
    pub fn idle_deadline(&self) -> Option<u64> {
        let idle_ticks = self.settings.load().idle_ticks as u64;
        (idle_ticks > 0).then(|| self.last_seen() as u64 + 1 + idle_ticks)
    }

    /// How long until the backend is put to sleep if no traffic comes: `None` unless it is
    /// ready and has an idle timeout (for the status endpoint and the admin API).
    pub fn sleeps_in(&self) -> Option<Duration> {
        if self.state() != State::Ready {
            return None;
        }
        let due = self.idle_deadline()?;
        let left = due.saturating_sub(self.idle.now() as u64);
        Some(self.idle.tick() * u32::try_from(left).unwrap_or(u32::MAX))
    }

    /// How many requests (or upgraded connections) are using the backend right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether the backend woke moments ago: new requests then enter through the slow start
    /// too (see [`release`](crate::backend::release)), until [`WARM_UP`] has passed (on the idle clock,
    /// which the background service advances). Two relaxed loads.
    #[inline]
    pub fn is_warming_up(&self) -> bool {
        self.warm_until.load(Ordering::Relaxed) > self.idle.now()
    }

    /// Lets a request through if the backend is ready, holding an in-flight guard for the whole
    /// life of the request (so the backend is never put to sleep under it). `None` = not ready.
    #[inline]
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        // Counting first, then checking the state pairs with `try_begin_stop` (which sets the
        // state first, then checks the count): one of the two always sees the other.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        if self.state.load(Ordering::SeqCst) == State::Ready as u8 {
            self.mark_activity();
            Some(guard)
        } else {
            None
        }
    }

    pub(super) fn set_state(
        &self,
        control: &mut Control,
        state: State,
        error: Option<Arc<WakeError>>,
    ) {
        self.state.store(state as u8, Ordering::SeqCst);
        control.since = SystemTime::now();
        control.error = error;
        if state != State::Starting {
            control.backend_up = state == State::Ready;
        }
        self.changed.notify_waiters();
    }

    /// The state with what waiters need to interpret it, read under the lock `control` is from.
    fn status(&self, control: &Control) -> Status {
        Status {
            state: self.state(),
            generation: control.generation,
            backend_up: control.backend_up,
            error: control.error.clone(),
        }
    }

    /// Starts a wake unless one is running or the backend is ready (singleflight). Returns the
    /// generation to wait for, or why no wake may start now.
    pub fn wake(&self) -> Result<u64, WakeFailure> {
        let mut control = self.control.lock();
        match self.state() {
            State::Ready | State::Starting => Ok(control.generation),
            State::Stopping => {
                control.wake_after_stop = true;
                Ok(control.generation + 1)
            }
            State::Napping | State::Error => {
                if control.cleaning_up {
                    return Err(WakeFailure::BackingOff {
                        error: control.last_error(),
                        retry_after: Duration::from_secs(1),
                    });
                }
                if let Some(retry_at) = control.retry_at {
                    let now = Instant::now();
                    if now < retry_at {
                        return Err(WakeFailure::BackingOff {
                            error: control.last_error(),
                            retry_after: retry_at - now,
                        });
                    }
                }
                Ok(self.start_flight(&mut control))
            }
        }
    }

    pub(super) fn start_flight(&self, control: &mut Control) -> u64 {
        control.generation += 1;
        control.backend_up = false;
        control.woke_it = false;
        control.wake_after_stop = false;
        control.recreated = false;
        control.release = Some(ReleaseWindow::default());
        let generation = control.generation;
        self.set_state(control, State::Starting, None);
        self.events.clear();
        self.events.push(
            WakeEventKind::Starting,
            format!("Waking {}", self.backend()),
            None,
        );
        if let Some(this) = self.this.upgrade() {
            tokio::spawn(this.run_wake(generation));
        }
        generation
    }

    /// The slow-start window through which requests held during the last wake are released.
    pub fn release_window(&self) -> ReleaseWindow {
        self.control
            .lock()
            .release
            .get_or_insert_with(ReleaseWindow::default)
            .clone()
    }

    /// The failure of a request whose own `wake_timeout` deadline passed.
    pub fn timed_out(&self) -> WakeFailure {
        WakeFailure::TimedOut {
            backend: self.backend().to_string(),
            timeout: self.settings.load().wake_timeout,
        }
    }

    /// Waits until the backend is ready, the wake of `generation` (or a later one) fails, or
    /// `deadline` passes. A backend that falls asleep again meanwhile is woken again.
    pub async fn wait_ready(&self, generation: u64, deadline: Instant) -> Result<(), WakeFailure> {
        self.wait_for(generation, deadline, |status| status.state == State::Ready)
            .await
    }

    /// Like [`wait_ready`](Self::wait_ready), but content once the backend was started (for
    /// `service_started` dependencies).
    pub async fn wait_started(
        &self,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), WakeFailure> {
        self.wait_for(generation, deadline, |status| {
            status.state == State::Ready || status.backend_up
        })
        .await
    }

    async fn wait_for(
        &self,
        mut generation: u64,
        deadline: Instant,
        done: impl Fn(&Status) -> bool,
    ) -> Result<(), WakeFailure> {
        loop {
            // Listening before reading: a change between the read and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_again = {
                let status = self.status(&self.control.lock());
                if done(&status) {
                    return Ok(());
                }
                match status.state {
                    State::Error if status.generation >= generation => {
                        return Err(WakeFailure::Failed(
                            status.error.unwrap_or_else(|| Arc::new(WakeError::Unknown)),
                        ));
                    }
                    State::Error | State::Napping => true,
                    State::Starting | State::Stopping | State::Ready => false,
                }
            };
            if wake_again {
                generation = self.wake()?;
                continue;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(self.timed_out());
            }
        }
    }
}

/// Held for the whole life of a proxied request (or upgraded connection): the backend is not
/// put to sleep while any exists. Dropping it marks activity once more.
pub struct InFlight(Arc<Watcher>);

impl InFlight {
    /// The watcher this request is using.
    pub fn watcher(&self) -> &Arc<Watcher> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mark_activity();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Control {
    /// The last wake's error, for a refused wake.
    fn last_error(&self) -> Arc<WakeError> {
        self.error
            .clone()
            .unwrap_or_else(|| Arc::new(WakeError::Unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_share_one_allocation_and_others_get_their_own() {
        let none: Arc<Dependencies> = shared_if_empty(Vec::new());
        assert!(Arc::ptr_eq(&none, &shared_if_empty(Vec::new())));
        let no_dependents: Arc<Dependents> = shared_if_empty(Vec::new());
        assert!(Arc::ptr_eq(&no_dependents, &shared_if_empty(Vec::new())));
        let one: Arc<Dependents> = shared_if_empty(vec![("a".to_string(), Weak::new())]);
        assert!(!Arc::ptr_eq(&one, &no_dependents));
        assert_eq!(one.len(), 1);
    }
}
