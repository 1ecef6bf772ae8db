//! The watcher: one per backend, shared by every route that fronts it.
//!
//! It owns the backend's state (`napping | starting | ready | stopping | error`) as one atomic
//! byte, so the request path learns "ready" with a single load. Everything else happens off the
//! request path, under a small mutex that serialises state *changes*:
//!
//! - **wake** ([`Watcher::wake`]): singleflight. The first caller starts one wake task
//!   (dependencies, provider start, address lookup, readiness probes) bounded by `wake_timeout`;
//!   later callers join it. The task is detached, so a client that disconnects never cancels it.
//!   A failure reaches every waiter; the next wake is refused until a backoff passes (doubling per
//!   consecutive failure) so a broken backend under traffic is not restarted in a tight loop.
//! - **waiting** ([`Watcher::wait_ready`]): waiters watch a `watch` channel that the wake task
//!   updates the moment readiness is seen; nobody polls a timer to notice it.
//! - **sleep** ([`Watcher::try_begin_stop`], [`Watcher::put_to_sleep`]): driven by the idle
//!   clock. A request that arrives while the backend is stopping is held and wakes it again once
//!   the stop has finished: never proxied to a dying backend, never lost.
//! - **outside changes** ([`BackendObserver::observe`]): a backend started by hand is adopted
//!   (probed, then ready, with no start call of ours); stopped by hand → napping; removed → error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::{DependencyCondition, HealthCheck, StopMethod};
use crate::events::{EventLog, WakeEventKind};
use crate::idle::IdleClock;
use crate::providers::{BackendEvent, BackendObserver, BackendStatus, Provider, ProviderError};
use crate::readiness;
use crate::release::ReleaseWindow;

/// After a wake, how long new requests still enter through the slow start (at most).
pub const WARM_UP: Duration = Duration::from_secs(3);
/// Longest pause before a failed backend may be woken again.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// While probing, how often the provider is asked whether the backend is still running
/// (so a backend that exits during its start fails the wake at once, not at the deadline).
const STATUS_RECHECK: Duration = Duration::from_secs(1);

/// A backend's lifecycle state, stored as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Asleep (stopped or paused); the next request wakes it.
    Napping = 0,
    /// A wake is in flight.
    Starting = 1,
    /// Answering: requests pass straight through.
    Ready = 2,
    /// Being put to sleep; requests are held until it can be woken again.
    Stopping = 3,
    /// The last wake failed, or the backend is gone.
    Error = 4,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Napping,
            1 => Self::Starting,
            2 => Self::Ready,
            3 => Self::Stopping,
            _ => Self::Error,
        }
    }

    /// The lowercase name used in the `status` endpoint and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Napping => "napping",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
            Self::Error => "error",
        }
    }
}

/// Where a route's requests go once its backend is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// A fixed `host:port` (e.g. a published port), resolved again after every wake.
    Fixed(String),
    /// The backend's own address (asked from the provider after every wake) and this port.
    BackendPort(u16),
}

/// One route's upstream: what to probe, and the address resolved by the last wake.
///
/// Kept per route because routes sharing a backend may use different ports.
pub struct Upstream {
    /// How the address is found.
    pub target: UpstreamTarget,
    /// How readiness is probed at that address.
    pub health: HealthCheck,
    address: ArcSwapOption<SocketAddr>,
}

impl Upstream {
    /// An upstream with no address yet (one is resolved by the first wake).
    pub fn new(target: UpstreamTarget, health: HealthCheck) -> Self {
        Self {
            target,
            health,
            address: ArcSwapOption::empty(),
        }
    }

    /// The address resolved by the last wake (lock-free).
    #[inline]
    pub fn address(&self) -> Option<SocketAddr> {
        self.address.load().as_deref().copied()
    }
}

/// How a backend is woken and put to sleep: the backend-level route settings.
#[derive(Debug, Clone)]
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

/// A snapshot of the state with what waiters need to interpret it.
#[derive(Debug, Clone)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Which wake this state belongs to (increments at each wake).
    pub generation: u64,
    /// The current wake already has the backend running (for `service_started` dependents).
    pub backend_up: bool,
    /// Why the last wake failed, in state `Error`.
    pub error: Option<Arc<str>>,
}

/// Why a request could not be let through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeFailure {
    /// The wake failed.
    #[error("{0}")]
    Failed(Arc<str>),
    /// The last wake failed recently; another is not attempted before `retry_after`.
    #[error("{error} (next attempt in {}s)", retry_after.as_secs().max(1))]
    BackingOff {
        /// The last failure.
        error: Arc<str>,
        /// How long until a new wake may start.
        retry_after: Duration,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The request's own deadline passed first.
    #[error("{backend} did not become ready within {}", humantime::format_duration(*.timeout))]
    TimedOut {
        /// The backend.
        backend: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

impl WakeFailure {
    /// The `Retry-After` a client should be told, in seconds.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::BackingOff { retry_after, .. } => {
                retry_after.as_secs_f64().ceil().max(1.0) as u64
            }
            _ => 2,
        }
    }
}

struct Control {
    generation: u64,
    since: SystemTime,
    error: Option<Arc<str>>,
    backend_up: bool,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    wake_after_stop: bool,
    /// The current wake's slow start for released requests.
    release: ReleaseWindow,
    /// The current wake started (or unpaused) the backend itself.
    woke_it: bool,
    /// A failed wake's backend is being put back to sleep; no new wake until it is done.
    cleaning_up: bool,
    /// What to go back to if putting the backend to sleep fails.
    before_stop: (State, Option<Arc<str>>),
}

/// One backend's lifecycle. See the module docs.
pub struct Watcher {
    id: u32,
    backend: String,
    provider: Arc<dyn Provider>,
    settings: BackendSettings,
    dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
    upstreams: Vec<Arc<Upstream>>,
    state: AtomicU8,
    control: Mutex<Control>,
    status: watch::Sender<Status>,
    events: EventLog,
    last_seen: AtomicU32,
    in_flight: AtomicU32,
    warm_until: AtomicU32,
    idle: Arc<IdleClock>,
    this: Weak<Watcher>,
}

impl Watcher {
    /// A napping watcher. `id` is its dense index (the idle clock's key); `upstreams` are the
    /// routes' upstreams it resolves and probes on every wake.
    pub fn new(
        id: u32,
        provider: Arc<dyn Provider>,
        settings: BackendSettings,
        dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
        upstreams: Vec<Arc<Upstream>>,
        idle: Arc<IdleClock>,
    ) -> Arc<Self> {
        let backend = provider.describe().to_string();
        Arc::new_cyclic(|this| Self {
            id,
            backend,
            provider,
            settings,
            dependencies,
            upstreams,
            state: AtomicU8::new(State::Napping as u8),
            control: Mutex::new(Control {
                generation: 0,
                since: SystemTime::now(),
                error: None,
                backend_up: false,
                consecutive_failures: 0,
                retry_at: None,
                wake_after_stop: false,
                release: ReleaseWindow::default(),
                woke_it: false,
                cleaning_up: false,
                before_stop: (State::Napping, None),
            }),
            status: watch::Sender::new(Status {
                state: State::Napping,
                generation: 0,
                backend_up: false,
                error: None,
            }),
            events: EventLog::new(),
            last_seen: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            warm_until: AtomicU32::new(0),
            idle,
            this: this.clone(),
        })
    }

    /// The dense index of this watcher.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The backend, as its provider describes it (`docker container "whoami"`).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The backend-level settings.
    pub fn settings(&self) -> &BackendSettings {
        &self.settings
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
    pub fn snapshot(&self) -> (State, SystemTime, Option<Arc<str>>) {
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
        let idle_ticks = self.settings.idle_ticks as u64;
        (idle_ticks > 0).then(|| self.last_seen() as u64 + 1 + idle_ticks)
    }

    /// How many requests (or upgraded connections) are using the backend right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether the backend woke moments ago: new requests then enter through the slow start
    /// too (see [`release`](crate::release)), until [`WARM_UP`] has passed (on the idle clock,
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

    fn set_state(&self, control: &mut Control, state: State, error: Option<Arc<str>>) {
        self.state.store(state as u8, Ordering::SeqCst);
        control.since = SystemTime::now();
        control.error = error.clone();
        if state != State::Starting {
            control.backend_up = state == State::Ready;
        }
        self.status.send_replace(Status {
            state,
            generation: control.generation,
            backend_up: control.backend_up,
            error,
        });
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
                        error: control
                            .error
                            .clone()
                            .unwrap_or_else(|| Arc::from("the last wake failed")),
                        retry_after: Duration::from_secs(1),
                    });
                }
                if let Some(retry_at) = control.retry_at {
                    let now = Instant::now();
                    if now < retry_at {
                        return Err(WakeFailure::BackingOff {
                            error: control
                                .error
                                .clone()
                                .unwrap_or_else(|| Arc::from("the last wake failed")),
                            retry_after: retry_at - now,
                        });
                    }
                }
                Ok(self.start_flight(&mut control))
            }
        }
    }

    fn start_flight(&self, control: &mut Control) -> u64 {
        control.generation += 1;
        control.backend_up = false;
        control.woke_it = false;
        control.wake_after_stop = false;
        control.release = ReleaseWindow::default();
        let generation = control.generation;
        self.set_state(control, State::Starting, None);
        self.events.clear();
        self.events.push(
            WakeEventKind::Starting,
            format!("Waking {}", self.backend),
            None,
        );
        if let Some(this) = self.this.upgrade() {
            tokio::spawn(this.run_wake(generation));
        }
        generation
    }

    /// The slow-start window through which requests held during the last wake are released.
    pub fn release_window(&self) -> ReleaseWindow {
        self.control.lock().release.clone()
    }

    /// The failure of a request whose own `wake_timeout` deadline passed.
    pub fn timed_out(&self) -> WakeFailure {
        WakeFailure::TimedOut {
            backend: self.backend.clone(),
            timeout: self.settings.wake_timeout,
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
        let mut receiver = self.status.subscribe();
        loop {
            let wake_again = {
                let status = receiver.borrow_and_update();
                if done(&status) {
                    return Ok(());
                }
                match status.state {
                    State::Error if status.generation >= generation => {
                        let error = status.error.clone();
                        return Err(WakeFailure::Failed(
                            error.unwrap_or_else(|| Arc::from("wake failed")),
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
            let changed = tokio::time::timeout_at(deadline.into(), receiver.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(self.timed_out());
            }
        }
    }

    async fn run_wake(self: Arc<Self>, generation: u64) {
        let deadline = Instant::now() + self.settings.wake_timeout;
        let mut last_problem = String::new();
        let result = tokio::time::timeout_at(
            deadline.into(),
            self.wake_steps(generation, deadline, &mut last_problem),
        )
        .await
        .unwrap_or_else(|_| {
            let mut message = format!(
                "{} did not become ready within {}",
                self.backend,
                humantime::format_duration(self.settings.wake_timeout)
            );
            if !last_problem.is_empty() {
                message.push_str(&format!(" (last probe: {last_problem})"));
            }
            Err(message)
        });
        if self.finish_wake(generation, result) {
            // A failed wake leaves nothing running (the next wake restarts it afresh); a
            // backend started by hand is left alone.
            if let Err(error) = self.send_to_sleep().await {
                tracing::warn!(backend = %self.backend, %error, "could not stop after a failed wake");
            }
            self.control.lock().cleaning_up = false;
        }
    }

    /// Publishes a wake's outcome. Returns whether the backend must now be put back to sleep.
    fn finish_wake(&self, generation: u64, result: Result<(), String>) -> bool {
        let mut control = self.control.lock();
        if control.generation != generation || self.state() != State::Starting {
            return false; // Superseded: the backend was stopped or removed meanwhile.
        }
        match result {
            Ok(()) => {
                control.consecutive_failures = 0;
                control.retry_at = None;
                self.mark_activity();
                let warm_ticks = self.idle.ticks(WARM_UP) + 1;
                self.warm_until.store(
                    self.idle.now().saturating_add(warm_ticks),
                    Ordering::Relaxed,
                );
                // Armed before anyone can see `ready` (the idle clock checks the state when the
                // timer fires, not now).
                self.idle.arm(self.id);
                self.set_state(&mut control, State::Ready, None);
                self.events.push(
                    WakeEventKind::Ready,
                    format!("{} is ready", self.backend),
                    None,
                );
                tracing::info!(backend = %self.backend, "ready");
                false
            }
            Err(error) => {
                let woke_it = control.woke_it;
                control.cleaning_up = woke_it;
                control.consecutive_failures += 1;
                let backoff = self
                    .settings
                    .retry_backoff
                    .saturating_mul(1 << (control.consecutive_failures - 1).min(16))
                    .min(MAX_RETRY_BACKOFF);
                control.retry_at = Some(Instant::now() + backoff);
                let error: Arc<str> = Arc::from(error);
                self.set_state(&mut control, State::Error, Some(error.clone()));
                self.events.push(
                    WakeEventKind::Error,
                    format!("Could not wake {}", self.backend),
                    Some(error.to_string()),
                );
                tracing::warn!(backend = %self.backend, %error, retry_in = ?backoff, "wake failed");
                woke_it
            }
        }
    }

    /// The wake itself: dependencies, provider start, addresses, readiness.
    async fn wake_steps(
        &self,
        generation: u64,
        deadline: Instant,
        last_problem: &mut String,
    ) -> Result<(), String> {
        for (dependency, condition) in &self.dependencies {
            self.events.push(
                WakeEventKind::WakingDep,
                format!("Waking dependency {}", dependency.backend),
                None,
            );
            let dependency_failed =
                |e: WakeFailure| format!("dependency {} failed: {e}", dependency.backend);
            let dep_generation = dependency.wake().map_err(dependency_failed)?;
            match condition {
                DependencyCondition::Healthy => {
                    dependency.wait_ready(dep_generation, deadline).await
                }
                DependencyCondition::Started => {
                    dependency.wait_started(dep_generation, deadline).await
                }
            }
            .map_err(dependency_failed)?;
            self.events.push(
                WakeEventKind::DepReady,
                format!("Dependency {} is up", dependency.backend),
                None,
            );
        }

        let status = self.provider.status().await.map_err(|e| e.to_string())?;
        if matches!(status, BackendStatus::Paused | BackendStatus::Stopped) {
            let mut control = self.control.lock();
            if control.generation == generation {
                control.woke_it = true;
            }
        }
        let woke = match status {
            BackendStatus::Running => "is running",
            BackendStatus::Paused => {
                self.provider.unpause().await.map_err(|e| e.to_string())?;
                "was unpaused"
            }
            BackendStatus::Stopped => {
                self.provider.start().await.map_err(|e| e.to_string())?;
                "was started"
            }
            BackendStatus::Missing => return Err(format!("{} not found", self.backend)),
        };
        {
            let mut control = self.control.lock();
            if control.generation == generation && self.state() == State::Starting {
                control.backend_up = true;
                self.status.send_modify(|status| status.backend_up = true);
            }
        }
        self.events.push(
            WakeEventKind::ContainerWoke,
            format!("{} {woke}", self.backend),
            None,
        );

        let addresses = match self.resolve_addresses().await {
            Ok(addresses) => addresses,
            // No address is often the symptom of a process that already exited: say that.
            Err(error) => match self.provider.status().await {
                Ok(status) if status != BackendStatus::Running => {
                    return Err(self.stopped_while_starting(status, &error.to_string()))
                }
                _ => return Err(error.to_string()),
            },
        };
        let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        self.events.push(
            WakeEventKind::WaitingReady,
            format!(
                "Waiting for {} to answer on {}",
                self.backend,
                shown.join(", ")
            ),
            None,
        );
        for (upstream, address) in self.upstreams.iter().zip(addresses) {
            self.probe_until_ready(address, &upstream.health, last_problem)
                .await?;
            upstream.address.store(Some(Arc::new(address)));
        }
        Ok(())
    }

    /// Resolves every route's upstream address afresh (container IPs change on restart).
    async fn resolve_addresses(&self) -> Result<Vec<SocketAddr>, ProviderError> {
        let mut backend_ip = None;
        let mut addresses = Vec::with_capacity(self.upstreams.len());
        for upstream in &self.upstreams {
            let address = match &upstream.target {
                UpstreamTarget::BackendPort(port) => {
                    let ip = match backend_ip {
                        Some(ip) => ip,
                        None => *backend_ip.insert(self.provider.address().await?),
                    };
                    SocketAddr::new(ip, *port)
                }
                UpstreamTarget::Fixed(host_port) => tokio::net::lookup_host(host_port.as_str())
                    .await
                    .ok()
                    .and_then(|mut found| found.next())
                    .ok_or_else(|| ProviderError::Api {
                        action: "resolve",
                        backend: host_port.clone(),
                        message: "the upstream name does not resolve".into(),
                    })?,
            };
            addresses.push(address);
        }
        Ok(addresses)
    }

    async fn probe_until_ready(
        &self,
        address: SocketAddr,
        health: &HealthCheck,
        last_problem: &mut String,
    ) -> Result<(), String> {
        let mut interval = Duration::ZERO;
        let mut status_checked = Instant::now();
        loop {
            let failure = match readiness::probe_once(address, health).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            *last_problem = failure.to_string();
            if status_checked.elapsed() >= STATUS_RECHECK {
                status_checked = Instant::now();
                match self.provider.status().await {
                    Ok(BackendStatus::Running) | Err(_) => {}
                    Ok(other) => {
                        return Err(
                            self.stopped_while_starting(other, &format!("last probe: {failure}"))
                        )
                    }
                }
            }
            interval = readiness::next_interval(interval, &failure);
            tokio::time::sleep(interval).await;
        }
    }

    fn stopped_while_starting(&self, status: BackendStatus, detail: &str) -> String {
        let what = match status {
            BackendStatus::Stopped => "exited",
            BackendStatus::Paused => "was paused",
            BackendStatus::Missing => "was removed",
            BackendStatus::Running => "is running",
        };
        format!("{} {what} while starting ({detail})", self.backend)
    }

    /// Moves `ready` (or `error`: a failed wake may have left the backend running) to
    /// `stopping` if nothing is in flight. The caller then runs
    /// [`put_to_sleep`](Self::put_to_sleep).
    pub fn try_begin_stop(&self) -> bool {
        let mut control = self.control.lock();
        let before = self.state();
        if !matches!(before, State::Ready | State::Error) {
            return false;
        }
        // State first, then the count: pairs with `enter` (see there).
        self.state.store(State::Stopping as u8, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) != 0 {
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
        let settings = &self.settings;
        let mut control = self.control.lock();
        match &result {
            Ok(()) => {
                for upstream in &self.upstreams {
                    upstream.address.store(None);
                }
                self.nap(&mut control, "was put to sleep");
                if control.wake_after_stop {
                    self.start_flight(&mut control);
                }
                tracing::info!(backend = %self.backend, method = ?settings.stop_method, "asleep");
            }
            Err(error) => {
                // The backend keeps serving; the idle clock retries later.
                let (state, previous_error) = control.before_stop.clone();
                control.wake_after_stop = false; // Requests that came meanwhile find it up.
                self.set_state(&mut control, state, previous_error);
                tracing::warn!(backend = %self.backend, %error, "could not put to sleep");
            }
        }
        result
    }

    /// The provider call for the configured stop method.
    async fn send_to_sleep(&self) -> Result<(), ProviderError> {
        let settings = &self.settings;
        let signal = settings.stop_signal.as_deref();
        match settings.stop_method {
            StopMethod::Pause => self.provider.pause().await,
            StopMethod::Stop => self.provider.stop(signal, settings.stop_timeout).await,
            StopMethod::Kill => self.provider.kill(signal).await,
        }
    }

    fn nap(&self, control: &mut Control, why: &str) {
        self.set_state(control, State::Napping, None);
        self.events.clear();
        self.events.push(
            WakeEventKind::Napping,
            format!("{} {why}", self.backend),
            None,
        );
    }

    /// Naps if the backend really is down and nothing changed since generation `generation`.
    async fn confirm_stopped(&self, generation: u64) {
        let status = match self.provider.status().await {
            Ok(BackendStatus::Running) | Err(_) => return,
            Ok(status) => status,
        };
        let mut control = self.control.lock();
        if control.generation == generation && self.state() == State::Ready {
            tracing::debug!(backend = %self.backend, ?status, "stopped outside idlewatcher");
            self.nap(&mut control, "was stopped outside idlewatcher");
        }
    }

    fn adopt(&self, control: &mut Control) {
        tracing::info!(backend = %self.backend, "started outside idlewatcher: adopting");
        control.retry_at = None;
        control.consecutive_failures = 0;
        self.start_flight(control);
    }
}

impl BackendObserver for Watcher {
    fn observe(&self, event: BackendEvent) {
        let mut control = self.control.lock();
        let state = self.state();
        tracing::debug!(backend = %self.backend, ?event, ?state, "backend event");
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
                let error: Arc<str> = Arc::from(format!("{}: container removed", self.backend));
                control.retry_at = None;
                self.set_state(&mut control, State::Error, Some(error.clone()));
                self.events.clear();
                self.events.push(
                    WakeEventKind::Error,
                    format!("{} was removed", self.backend),
                    Some(error.to_string()),
                );
            }
            // Our own wake or stop is in charge; its own checks see what happened.
            _ => {}
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
