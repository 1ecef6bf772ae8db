//! The head deadline of HTTP/1 requests that Pingora reads: a connection whose request head is
//! not complete in time is closed, however slowly its bytes trickle in (Pingora's own read
//! timeouts apply per read, so one byte every few seconds would keep a connection forever).
//!
//! The [early hold](crate::http::early_hold) runs each session of an HTTP/1 connection through
//! its [`HeadDeadline`] and says when each one [`begin`](HeadDeadline::begin)s; the gate calls
//! [`head_read`] first thing, which is when Pingora has the whole head.
//!
//! Cheap on the warm path, where a kept-alive connection serves request after request: one
//! timer per *connection*, polled only when it fires (its own waker marks it), and moved only
//! then; per request, a read of the idle clock's coarse tick (no clock call: later heads are
//! given their time in whole ticks, rounded up, so never less than their due), two relaxed
//! stores and a thread-local swap per poll (the gate runs inside the session's poll, in the
//! same thread, so that is how it finds the connection's deadline — not a task-local, which
//! costs a `RefCell` round trip per poll).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

use crate::idle::IdleClock;

thread_local! {
    /// The deadline of the session being polled on this thread (null outside such a poll). A
    /// plain pointer, set and reset around each poll by [`HeadDeadline::run`] (a `Cell` of an
    /// `Arc` would cost a destructor check per access, on every poll of every connection).
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

/// `due` once the current session's head was read: nothing is due.
const READ: u64 = u64::MAX;
/// `due` of the connection's first session: its head is due at [`Shared::first`].
const FIRST: u64 = u64::MAX - 1;

/// What the gate, the timer's waker and the connection share.
#[derive(Debug)]
struct Shared {
    /// When the first session's head is due.
    first: Instant,
    /// The idle clock's tick by which the current session's head must be read (from the
    /// second session on), or [`FIRST`], or [`READ`].
    due: AtomicU64,
    /// The timer woke: poll it again (it is polled only then).
    timer_woke: AtomicBool,
    /// The connection task's waker, woken by the timer's.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.timer_woke.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().as_ref() {
            task.wake_by_ref();
        }
    }
}

/// One HTTP/1 connection's head deadline: when the head of the session it serves must be
/// whole. Run every session of the connection through [`run`](Self::run).
pub struct HeadDeadline {
    shared: Arc<Shared>,
    /// The least time a later session gets (the keep-alive wait plus the head's own): when the
    /// timer fires with no head pending, no session beginning later can be due sooner.
    later: Duration,
    /// `later` in the idle clock's ticks, plus the tick that may have begun already.
    later_ticks: u64,
    /// The clock whose tick later sessions' deadlines count in.
    clock: Arc<IdleClock>,
    /// The connection's one timer.
    timer: Pin<Box<Sleep>>,
    /// Wakes the task through `shared` (marking the timer as woken).
    timer_waker: Waker,
    /// The task waker last handed to `shared`.
    task: Option<Waker>,
}

impl HeadDeadline {
    /// The deadline of a connection whose first head is due at `first`; later sessions are
    /// given at least `later` each (see [`begin`](Self::begin)), counted in `clock`'s ticks.
    pub fn new(first: Instant, later: Duration, clock: Arc<IdleClock>) -> Self {
        let shared = Arc::new(Shared {
            first,
            due: AtomicU64::new(FIRST),
            timer_woke: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Self {
            timer_waker: Waker::from(Arc::clone(&shared)),
            shared,
            later,
            later_ticks: u64::from(clock.ticks(later)) + 1,
            clock,
            timer: Box::pin(tokio::time::sleep_until(first)),
            task: None,
        }
    }

    /// A new session began (not the first): its head must be read within `later`.
    #[inline]
    pub fn begin(&self) {
        let due = u64::from(self.clock.now()) + self.later_ticks;
        self.shared.due.store(due, Ordering::Relaxed);
    }

    /// Runs one session of the connection: `None` if its head was not read in time (the
    /// session is dropped, which closes its connection).
    pub async fn run<F: Future>(&mut self, session: F) -> Option<F::Output> {
        let mut session = pin!(session);
        poll_fn(|cx| {
            if self.overdue(cx) {
                return Poll::Ready(None);
            }
            let _current = Current::enter(&self.shared);
            session.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Whether the current head is overdue. Looks at the timer only if it woke since (on the
    /// first poll too: it arms it).
    #[inline]
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        self.shared.timer_woke.load(Ordering::Acquire) && self.timer_fired(cx.waker())
    }

    /// The timer woke: whether the current head is overdue, the timer moved if not. `task` is
    /// the waker of the task polling the connection, which the timer wakes next time (a
    /// connection is served by one task for its whole life, so its waker is taken here, when
    /// the timer is armed, not checked on every poll).
    #[cold]
    fn timer_fired(&mut self, task: &Waker) -> bool {
        self.shared.timer_woke.store(false, Ordering::Relaxed);
        if !self
            .task
            .as_ref()
            .is_some_and(|known| known.will_wake(task))
        {
            self.task = Some(task.clone());
            *self.shared.task.lock() = Some(task.clone());
        }
        let mut timer_cx = Context::from_waker(&self.timer_waker);
        while self.timer.as_mut().poll(&mut timer_cx).is_ready() {
            let now = Instant::now();
            let next = match self.shared.due.load(Ordering::Relaxed) {
                // No head pending: a session beginning from now on is due `later` at least.
                READ => now + self.later,
                FIRST if self.shared.first <= now => return true,
                FIRST => self.shared.first,
                due => {
                    let tick = u64::from(self.clock.now());
                    if tick >= due {
                        return true;
                    }
                    let left = u32::try_from(due - tick).unwrap_or(u32::MAX);
                    now + self.clock.tick() * left
                }
            };
            self.timer.as_mut().reset(next);
        }
        false
    }
}

/// Points [`CURRENT`] at a connection's deadline for one poll of its session; puts the
/// previous value back when dropped (also when the poll panics).
struct Current {
    outer: *const Shared,
}

impl Current {
    #[inline]
    fn enter(shared: &Arc<Shared>) -> Self {
        Self {
            outer: CURRENT.replace(Arc::as_ptr(shared)),
        }
    }
}

impl Drop for Current {
    #[inline]
    fn drop(&mut self) {
        CURRENT.set(self.outer);
    }
}

/// The current session's request head was read (called by the gate; a no-op outside an
/// early hold's session).
#[inline]
pub fn head_read() {
    let current = CURRENT.get();
    // SAFETY: a non-null `CURRENT` points into the `Arc<Shared>` of the `HeadDeadline` whose
    // `run` is polling the session this call runs in, on this thread: `run` holds that `Arc`
    // (through `&mut self`) for the whole poll, and `Current` resets the pointer before the
    // poll returns or unwinds. Outside such a poll it is null (or an outer poll's, as valid).
    if let Some(shared) = unsafe { current.as_ref() } {
        shared.due.store(READ, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST_IN: Duration = Duration::from_millis(20);
    const LATER: Duration = Duration::from_millis(50);
    const TICK: Duration = Duration::from_millis(10);

    /// An idle clock whose tick follows tokio's (paused) time, as the ticker keeps it.
    fn clock() -> Arc<IdleClock> {
        let clock = IdleClock::new(TICK);
        let ticking = Arc::clone(&clock);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let ticks = started.elapsed().as_nanos() / TICK.as_nanos();
                ticking.set_now(u32::try_from(ticks).unwrap_or(u32::MAX));
            }
        });
        clock
    }

    /// Sessions of `lengths` each on one connection: which one was cut (by its index), if any,
    /// and how long after it began. Each session reads its head after `head`, then lasts its
    /// length.
    async fn serve(head: Duration, lengths: &[Duration]) -> Option<(usize, Duration)> {
        let mut deadline = HeadDeadline::new(Instant::now() + FIRST_IN, LATER, clock());
        for (index, length) in lengths.iter().enumerate() {
            let began = Instant::now();
            if index > 0 {
                deadline.begin();
            }
            let session = async {
                tokio::time::sleep(head).await;
                head_read();
                tokio::time::sleep(*length).await;
            };
            if deadline.run(session).await.is_none() {
                return Some((index, began.elapsed()));
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_whose_heads_come_in_time_outlive_every_deadline() {
        let long = Duration::from_millis(500);
        let lengths = [long, Duration::ZERO, long, Duration::from_millis(1), long];
        assert_eq!(serve(Duration::from_millis(10), &lengths).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_head_that_never_comes_is_cut_at_the_first_deadline() {
        let cut = serve(Duration::from_secs(3600), &[Duration::ZERO]).await;
        let (index, took) = cut.expect("cut");
        assert_eq!(index, 0);
        assert!(
            took >= FIRST_IN && took < FIRST_IN + Duration::from_millis(5),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_that_never_comes_is_cut_within_a_tick_after_its_deadline() {
        // The first session's head comes at once, and that session lasts well past the first
        // deadline (the timer fires and moves meanwhile); the second's head never comes.
        let mut deadline = HeadDeadline::new(Instant::now() + FIRST_IN, LATER, clock());
        let first = async {
            head_read();
            tokio::time::sleep(Duration::from_millis(135)).await;
        };
        assert_eq!(deadline.run(first).await, Some(()));
        let began = Instant::now();
        deadline.begin();
        let second = deadline.run(std::future::pending::<()>()).await;
        assert_eq!(second, None);
        let took = began.elapsed();
        // Never early; late by the tick it began in and the one counted up, at most.
        assert!(
            took >= LATER && took <= LATER + 2 * TICK + Duration::from_millis(2),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_read_outside_the_session_marks_nothing() {
        let mut deadline = HeadDeadline::new(Instant::now() + FIRST_IN, LATER, clock());
        head_read(); // Outside any session: a no-op.
        let session = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(deadline.run(session).await, None);
    }
}
