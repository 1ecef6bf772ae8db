//! The idle clock: puts backends to sleep after `idle_timeout` without traffic.
//!
//! Cost model, from hottest to coldest:
//!
//! - **request path**: [`Watcher::mark_activity`](crate::backend::Watcher::mark_activity) reads the coarse current tick from
//!   [`IdleClock::now`] (one relaxed load) and stores it as the watcher's "last seen" only if it
//!   changed; an [`InFlight`](crate::backend::InFlight) guard counts the request while it lives.
//!   No timer is touched, nothing is allocated.
//! - **arming** ([`IdleClock::arm`]): when a backend becomes ready, its id goes into a lock-free
//!   queue (`std::sync::mpsc`), from any thread.
//! - **the ticker** ([`IdleTimers::tick`]), one task for all backends: advances the coarse clock,
//!   drains the queue into a [`TimingWheel`], and handles what comes due. An entry that fires
//!   re-arms lazily at `last seen + idle_timeout` if the route saw traffic since, looks again next
//!   tick while anything is in flight, and otherwise moves the backend to `stopping` and hands it
//!   to the stopper. A backend that is not armed (napping, idle_timeout 0) costs nothing at all.
//! - **the stopper**: bounded concurrency (`max_concurrent_stops`), its own tasks, never on the
//!   request path or the ticker; a failed stop is retried with a doubling backoff while the
//!   backend keeps serving.
//!
//! Time is counted in ticks (default 1 s) since the clock started. Tests drive
//! [`IdleTimers::tick`] with whatever tick they like: no real time passes.

//!
//! | file | concern |
//! |---|---|
//! | [`clock`] | the coarse clock the request path reads, the arm queue, the shutdown signal |
//! | [`timers`] | the ticker's decisions over the wheel, separated from real time |
//! | [`ticker`] | the background service: real time, the stopper |
//! | [`wheel`] | the hierarchical timing wheel |
//!
//! The clock knows backends only as [`Sleeper`]s, so it sits below the backend layer.

pub mod clock;
pub mod ticker;
pub mod timers;
pub mod wheel;

use std::time::Duration;

use async_trait::async_trait;

pub use clock::IdleClock;
pub use ticker::IdleTicker;
pub use timers::IdleTimers;

/// What the idle clock needs of a backend (implemented by [`Watcher`](crate::backend::Watcher)).
#[async_trait]
pub trait Sleeper: Send + Sync + 'static {
    /// The backend's dense index: its key in the wheel and the arm queue.
    fn id(&self) -> u32;
    /// Whether the backend is up, so that idleness may put it to sleep (ready, or a failed wake
    /// that may have left it running).
    fn may_sleep(&self) -> bool;
    /// The tick from which the backend counts as idle; `None` = never sleeps.
    fn idle_deadline(&self) -> Option<u64>;
    /// Requests, connections or sessions using the backend right now.
    fn in_flight(&self) -> u32;
    /// Moves the backend to `stopping` if nothing is in flight; true when the caller must now
    /// call [`put_to_sleep`](Self::put_to_sleep).
    fn try_begin_stop(&self) -> bool;
    /// Puts the backend to sleep (unless its provider says someone else still uses it).
    async fn put_to_sleep(&self) -> SleepOutcome;
    /// How often, in ticks, the backend's provider wants to hear of its traffic (a lease shared
    /// with other gateways); `None` (the default): never. The timer of such a backend then
    /// fires at least that often while it is awake.
    fn report_every(&self) -> Option<wheel::Tick> {
        None
    }
    /// Tells the provider, in the background, of the traffic seen up to tick `now`; called when
    /// the timer fires, never per request. Rate-limited by the backend itself.
    fn report_activity(&self, _now: wheel::Tick) {}
}

/// What became of an attempt to put a backend to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepOutcome {
    /// It sleeps.
    Asleep,
    /// It failed: the backend keeps serving, and the idle clock retries with a backoff.
    Failed,
    /// Someone else still uses it (another gateway): the idle clock asks again after this.
    Postponed(Duration),
}
