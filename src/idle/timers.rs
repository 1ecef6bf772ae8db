//! The ticker's decisions: owner of the timing wheel, separated from real time so tests drive
//! it tick by tick.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::idle::clock::{Arm, Message};
use crate::idle::wheel::{Expired, Tick, TimingWheel};
use crate::idle::{IdleClock, SleepOutcome, Sleeper};

/// Longest pause between attempts to put a backend to sleep after failures, in ticks.
const MAX_STOP_RETRY_TICKS: u32 = 300;

/// Owner of the timing wheel: the decisions of the ticker, separated from real time.
pub struct IdleTimers {
    pub(crate) clock: Arc<IdleClock>,
    pub(crate) backends: Vec<Arc<dyn Sleeper>>,
    generations: Vec<u32>,
    wheel: TimingWheel,
    arms: mpsc::Receiver<Message>,
    fired: Vec<Expired>,
}

impl IdleTimers {
    /// Takes the clock's arm queue. `backends[i].id()` must be `i`. Panics if called twice for
    /// one clock (one owner per wheel).
    pub fn new(clock: Arc<IdleClock>, backends: Vec<Arc<dyn Sleeper>>) -> Self {
        let arms = clock
            .pending
            .lock()
            .take()
            .expect("IdleTimers::new called twice for one IdleClock");
        let count = backends.len();
        Self {
            clock,
            backends,
            generations: vec![0; count],
            wheel: TimingWheel::new(),
            arms,
            fired: Vec::new(),
        }
    }

    /// How many timers are armed (stale entries included).
    pub fn armed(&self) -> usize {
        self.wheel.len()
    }

    /// Advances to tick `now`: takes new arms, handles what came due, and returns the backends
    /// that were moved to `stopping` and must now be put to sleep.
    pub fn tick(&mut self, now: Tick) -> Vec<Arc<dyn Sleeper>> {
        self.clock.set_now(now as u32);
        while let Ok(message) = self.arms.try_recv() {
            match message {
                Message::Arm(arm) => self.arm(arm, now),
                Message::Join(sleeper) => self.join(sleeper),
            }
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now, &mut fired);
        let mut to_stop = Vec::new();
        for expired in fired.drain(..) {
            let id = expired.key as usize;
            if self.generations.get(id) != Some(&expired.generation) {
                continue; // Stale: re-armed since.
            }
            let watcher = &self.backends[id];
            if !watcher.may_sleep() {
                continue; // Asleep or busy waking: armed again when it becomes ready.
            }
            let Some(idle_until) = watcher.idle_deadline() else {
                continue;
            };
            let every = watcher.report_every();
            if idle_until > now {
                if every.is_some() {
                    watcher.report_activity(now);
                }
                // A backend whose traffic is reported looks again within its report period.
                let next = every.map_or(idle_until, |every| idle_until.min(now + every));
                self.insert(id, next);
            } else if watcher.in_flight() > 0 {
                if every.is_some() {
                    watcher.report_activity(now);
                }
                self.insert(id, now + 1);
            } else if watcher.try_begin_stop() {
                to_stop.push(Arc::clone(watcher));
            } else {
                self.insert(id, now + 1); // A request slipped in: look again.
            }
        }
        self.fired = fired;
        to_stop
    }

    /// A backend added by a reload: the next dense index, or a replacement of one.
    fn join(&mut self, sleeper: Arc<dyn Sleeper>) {
        let id = sleeper.id() as usize;
        match id.cmp(&self.backends.len()) {
            std::cmp::Ordering::Less => self.backends[id] = sleeper,
            std::cmp::Ordering::Equal => {
                self.backends.push(sleeper);
                self.generations.push(0);
            }
            std::cmp::Ordering::Greater => {
                tracing::error!(
                    id,
                    known = self.backends.len(),
                    "idle timers: a backend joined out of order"
                );
            }
        }
    }

    fn arm(&mut self, arm: Arm, now: Tick) {
        let Some(watcher) = self.backends.get(arm.id as usize) else {
            return;
        };
        let Some(idle_until) = watcher.idle_deadline() else {
            return; // idle_timeout 0: never sleeps.
        };
        let mut deadline = idle_until.max(arm.not_before).max(now);
        if let Some(every) = watcher.report_every() {
            if arm.not_before <= now {
                // Its first report is due within one period, not at its idle deadline.
                deadline = deadline.min(now + every);
            }
        }
        self.insert(arm.id as usize, deadline);
    }

    fn insert(&mut self, id: usize, deadline: Tick) {
        self.generations[id] = self.generations[id].wrapping_add(1);
        self.wheel.insert(id as u32, self.generations[id], deadline);
    }

    /// Records the outcome of putting `watcher` to sleep: a failure re-arms it with a backoff,
    /// a postponement after the time the provider asked for.
    pub fn stop_finished(
        clock: &IdleClock,
        watcher: &dyn Sleeper,
        failures: &AtomicU32,
        outcome: SleepOutcome,
    ) {
        match outcome {
            SleepOutcome::Asleep => failures.store(0, Ordering::Relaxed),
            SleepOutcome::Postponed(retry_in) => {
                failures.store(0, Ordering::Relaxed);
                let ticks = clock.ticks(retry_in).max(1);
                clock.arm_not_before(watcher.id(), clock.now() as u64 + ticks as u64);
            }
            SleepOutcome::Failed => {
                let count = failures.fetch_add(1, Ordering::Relaxed);
                let backoff = (1u32 << count.min(16)).min(MAX_STOP_RETRY_TICKS);
                clock.arm_not_before(watcher.id(), clock.now() as u64 + backoff as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendSettings, State, Upstream, UpstreamTarget, Watcher};
    use crate::config::{HealthCheck, StopMethod};
    use crate::providers::fake::{FakeEngine, FakeOp};
    use std::time::Duration;

    /// The settings every watcher here runs with, sleeping after `idle_ticks`.
    fn settings(idle_ticks: u32) -> BackendSettings {
        BackendSettings {
            idle_ticks,
            wake_timeout: Duration::from_secs(5),
            stop_method: StopMethod::Stop,
            stop_signal: None,
            stop_timeout: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
        }
    }

    struct Fixture {
        clock: Arc<IdleClock>,
        timers: IdleTimers,
        watcher: Arc<Watcher>,
        engine: Arc<FakeEngine>,
    }

    /// The fake backend's name.
    const BACKEND: &str = "idle";

    /// A watcher over a fake backend that listens on a real port while running (the probe
    /// connects).
    async fn fixture(idle_ticks: u32) -> Fixture {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let clock = IdleClock::new(Duration::from_secs(1));
        let engine = FakeEngine::new();
        engine.create(BACKEND).unwrap();
        engine.listen_on(BACKEND, port).unwrap();
        let upstream = Arc::new(Upstream::new(
            UpstreamTarget::BackendPort(port),
            HealthCheck::Tcp,
        ));
        let watcher = Watcher::new(
            0,
            Arc::new(engine.provider(BACKEND)),
            settings(idle_ticks),
            Vec::new(),
            vec![upstream],
            clock.clone(),
        );
        let timers = IdleTimers::new(clock.clone(), vec![watcher.clone() as Arc<dyn Sleeper>]);
        Fixture {
            clock,
            timers,
            watcher,
            engine,
        }
    }

    impl Fixture {
        async fn wake(&self) {
            let generation = self.watcher.wake().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            self.watcher.wait_ready(generation, deadline).await.unwrap();
        }

        /// Ticks from the clock's current tick + 1 up to `until`; returns the first tick at
        /// which a stop was handed out (and the stop itself, done).
        async fn run_until(&mut self, until: Tick) -> Option<Tick> {
            let from = self.clock.now() as Tick + 1;
            for now in from..=until {
                let to_stop = self.timers.tick(now);
                if let Some(watcher) = to_stop.first() {
                    let _ = watcher.put_to_sleep().await;
                    return Some(now);
                }
            }
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_exactly_idle_timeout_after_the_last_activity() {
        let mut f = fixture(5).await;
        f.wake().await; // Activity at tick 0.
                        // Traffic at tick 0 may have come at its very end: idle from tick 1, asleep at 1 + 5.
        assert_eq!(f.run_until(20).await, Some(6));
        assert_eq!(f.watcher.state(), State::Napping);
        assert_eq!(f.engine.calls(BACKEND).stops, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn traffic_re_arms_lazily() {
        let mut f = fixture(5).await;
        f.wake().await;
        assert_eq!(f.run_until(3).await, None);
        f.watcher.mark_activity(); // Traffic at tick 3.
        assert_eq!(f.run_until(20).await, Some(9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_sleeps_while_a_request_is_in_flight() {
        let mut f = fixture(2).await;
        f.wake().await;
        let guard = f.watcher.enter().expect("ready");
        assert_eq!(f.run_until(10).await, None, "stopped under a request");
        assert_eq!(f.watcher.state(), State::Ready);
        drop(guard); // Ends at tick 10: counts as traffic then.
        assert_eq!(f.run_until(30).await, Some(13));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_timeout_zero_never_sleeps_and_costs_no_timer() {
        let mut f = fixture(0).await;
        f.wake().await;
        assert_eq!(f.run_until(1000).await, None);
        assert_eq!(f.timers.armed(), 0);
        assert_eq!(f.watcher.state(), State::Ready);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_stop_keeps_the_backend_serving_and_is_retried() {
        let mut f = fixture(2).await;
        f.wake().await;
        f.engine.fail_next(BACKEND, FakeOp::Stop, 1, "refused");
        let failures = AtomicU32::new(0);
        assert_eq!(f.run_until(10).await, Some(3));
        assert_eq!(f.watcher.state(), State::Ready, "still serving");
        IdleTimers::stop_finished(
            &f.clock,
            f.watcher.as_ref(),
            &failures,
            SleepOutcome::Failed,
        );
        // Retried after a backoff (1 tick after the first failure, doubling); the next stop works.
        assert_eq!(f.run_until(10).await, Some(4));
        assert_eq!(f.watcher.state(), State::Napping);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_during_the_stop_wakes_the_backend_again() {
        let mut f = fixture(2).await;
        f.wake().await;
        let to_stop = f.timers.tick(3);
        assert_eq!(to_stop.len(), 1);
        assert_eq!(f.watcher.state(), State::Stopping);
        assert!(
            f.watcher.enter().is_none(),
            "never proxied to a stopping backend"
        );
        // A request arrives: it will wait for the next generation.
        let generation = f.watcher.wake().unwrap();
        let waiter = {
            let watcher = f.watcher.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                watcher.wait_ready(generation, deadline).await
            })
        };
        assert_eq!(to_stop[0].put_to_sleep().await, SleepOutcome::Asleep);
        waiter.await.unwrap().unwrap();
        assert_eq!(f.watcher.state(), State::Ready);
        assert_eq!(f.engine.calls(BACKEND).starts, 2);
        assert_eq!(f.engine.calls(BACKEND).stops, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backend_joined_by_a_reload_sleeps_and_a_changed_idle_timeout_re_arms() {
        let mut f = fixture(5).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        f.engine.create("later").unwrap();
        f.engine.listen_on("later", port).unwrap();
        let upstream = Arc::new(Upstream::new(
            UpstreamTarget::BackendPort(port),
            HealthCheck::Tcp,
        ));
        // Added after the ticker started: the next dense id, handed over through the clock.
        let later = Watcher::new(
            1,
            Arc::new(f.engine.provider("later")),
            settings(50),
            Vec::new(),
            vec![Arc::clone(&upstream)],
            f.clock.clone(),
        );
        f.clock.join(later.clone());
        let generation = later.wake().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        later.wait_ready(generation, deadline).await.unwrap(); // Activity at tick 0, armed.
        assert_eq!(f.run_until(3).await, None);
        // A reload shortens its idle timeout to 5 ticks: re-armed, asleep at 0 + 1 + 5.
        later
            .reconfigure(settings(5), Vec::new(), vec![Arc::clone(&upstream)])
            .await;
        assert_eq!(later.state(), State::Ready, "kept as it was");
        assert_eq!(f.run_until(30).await, Some(6));
        assert_eq!(later.state(), State::Napping);
        assert_eq!(f.engine.calls("later").starts, 1);
        assert_eq!(
            f.engine.calls(BACKEND).stops,
            0,
            "the other backend never woke"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_dependency_sleeps_its_idle_timeout_after_its_last_dependent() {
        use crate::config::DependencyCondition;

        let clock = IdleClock::new(Duration::from_secs(1));
        let engine = FakeEngine::new();
        let watcher = |id, name: &str, idle_ticks, dependencies| {
            engine.create(name).unwrap();
            Watcher::new(
                id,
                Arc::new(engine.provider(name)),
                settings(idle_ticks),
                dependencies,
                Vec::new(), // Nothing to probe: ready once started.
                clock.clone(),
            )
        };
        let db = watcher(0, "db", 2, Vec::new());
        let app = watcher(
            1,
            "app",
            0,
            vec![(db.clone(), DependencyCondition::Started)],
        );
        assert!(db.set_dependents(vec![("app".into(), &app)]));
        let sleepers: Vec<Arc<dyn Sleeper>> = vec![db.clone(), app.clone()];
        let mut timers = IdleTimers::new(clock.clone(), sleepers);
        let generation = app.wake().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        app.wait_ready(generation, deadline).await.unwrap();
        // `service_started`: the app may be ready before the db's own wake has ended.
        let db_generation = db.wake().unwrap();
        db.wait_ready(db_generation, deadline).await.unwrap();
        assert_eq!(db.state(), State::Ready);
        for now in 1..=20 {
            assert!(
                timers.tick(now).is_empty(),
                "db stopped under its ready dependent at tick {now}"
            );
        }
        assert!(app.try_begin_stop());
        app.put_to_sleep().await.unwrap(); // At tick 20.
        let mut asleep_at = None;
        for now in 21..=40 {
            if let Some(stop) = timers.tick(now).first() {
                assert_eq!(stop.put_to_sleep().await, SleepOutcome::Asleep);
                asleep_at = Some(now);
                break;
            }
        }
        // Idle from tick 21 (the nap may have come at the end of tick 20), asleep at 21 + 2.
        assert_eq!(asleep_at, Some(23));
        assert_eq!(db.state(), State::Napping);
    }

    /// A backend whose provider wants activity reports; it never gets idle on its own and its
    /// stop is only handed out (`try_begin_stop` true) once `stoppable` is set.
    struct Shared {
        deadline: u64,
        stoppable: std::sync::atomic::AtomicBool,
        reports: parking_lot::Mutex<Vec<Tick>>,
    }

    #[async_trait::async_trait]
    impl Sleeper for Shared {
        fn id(&self) -> u32 {
            0
        }
        fn may_sleep(&self) -> bool {
            true
        }
        fn idle_deadline(&self) -> Option<u64> {
            Some(self.deadline)
        }
        fn in_flight(&self) -> u32 {
            0
        }
        fn try_begin_stop(&self) -> bool {
            self.stoppable.load(Ordering::Relaxed)
        }
        async fn put_to_sleep(&self) -> SleepOutcome {
            SleepOutcome::Asleep
        }
        fn report_every(&self) -> Option<Tick> {
            Some(2)
        }
        fn report_activity(&self, now: Tick) {
            self.reports.lock().push(now);
        }
    }

    #[test]
    fn a_reporting_backend_is_looked_at_every_period_and_a_postponement_re_arms() {
        let clock = IdleClock::new(Duration::from_secs(1));
        let shared = Arc::new(Shared {
            deadline: 9,
            stoppable: std::sync::atomic::AtomicBool::new(false),
            reports: parking_lot::Mutex::new(Vec::new()),
        });
        let mut timers = IdleTimers::new(clock.clone(), vec![shared.clone() as Arc<dyn Sleeper>]);
        clock.arm(0);
        for now in 0..=9 {
            assert!(timers.tick(now).is_empty());
        }
        // Reported every 2 ticks until the idle deadline (not only at it).
        assert_eq!(*shared.reports.lock(), vec![2, 4, 6, 8]);
        shared.stoppable.store(true, Ordering::Relaxed);
        let stopped = timers.tick(10);
        assert_eq!(stopped.len(), 1, "handed out once idle");
        // Another gateway still uses it: asked again 5 ticks later, not before.
        IdleTimers::stop_finished(
            &clock,
            stopped[0].as_ref(),
            &AtomicU32::new(0),
            SleepOutcome::Postponed(Duration::from_secs(5)),
        );
        for now in 11..15 {
            assert!(timers.tick(now).is_empty(), "asked again early, at {now}");
        }
        assert_eq!(timers.tick(15).len(), 1);
    }
}
