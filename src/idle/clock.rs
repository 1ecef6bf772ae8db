//! The coarse clock shared by the request path and the ticker: one relaxed load to read, a
//! lock-free queue to arm a backend's timer from any thread.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::idle::wheel::Tick;
use crate::idle::Sleeper;

/// A request to (re-)arm a backend's idle timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arm {
    pub(crate) id: u32,
    pub(crate) not_before: Tick,
}

/// What the ticker is told through the clock's queue, in order: a backend added by a reload
/// (before anything arms it), or an arm.
pub(crate) enum Message {
    /// A timer to (re-)arm.
    Arm(Arm),
    /// A new backend, whose `id()` is the next dense index (or one that is replaced).
    Join(Arc<dyn Sleeper>),
}

/// The coarse clock shared by the request path and the ticker, and the queue of arms.
pub struct IdleClock {
    now: AtomicU32,
    pub(crate) tick: Duration,
    arms: mpsc::Sender<Message>,
    pub(crate) pending: Mutex<Option<mpsc::Receiver<Message>>>,
    shutdown: watch::Sender<bool>,
}

impl IdleClock {
    /// A clock at tick 0 with the given resolution.
    pub fn new(tick: Duration) -> Arc<Self> {
        let (arms, pending) = mpsc::channel();
        Arc::new(Self {
            now: AtomicU32::new(0),
            tick,
            arms,
            pending: Mutex::new(Some(pending)),
            shutdown: watch::Sender::new(false),
        })
    }

    /// The current tick (coarse: advanced by the ticker). One relaxed load.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    /// The clock's resolution.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Converts a duration to whole ticks, rounding up (an idle timeout is never cut short).
    pub fn ticks(&self, duration: Duration) -> u32 {
        let ticks = duration.as_nanos().div_ceil(self.tick.as_nanos().max(1));
        ticks.min(u32::MAX as u128) as u32
    }

    /// Arms (or re-arms) backend `id`: its idle timeout counts from its last activity.
    pub fn arm(&self, id: u32) {
        self.arm_not_before(id, 0);
    }

    pub(crate) fn arm_not_before(&self, id: u32, not_before: Tick) {
        // The receiver lives as long as the ticker; if it is gone nothing sleeps anyway.
        let _ = self.arms.send(Message::Arm(Arm { id, not_before }));
    }

    /// Hands the ticker a backend added after start-up (by a reload). Ordered before any arm
    /// sent after it, so its first arm is never lost.
    pub fn join(&self, sleeper: Arc<dyn Sleeper>) {
        let _ = self.arms.send(Message::Join(sleeper));
    }

    /// Sets the coarse clock (the ticker does this; tests may too).
    pub fn set_now(&self, now: u32) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// A receiver that turns true when the gateway shuts down (long-lived answers such as the
    /// event stream end on it).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells long-lived answers to end.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}
