//! The backend state machine (`napping | starting | ready | stopping | error`) driven through the
//! public API — `Watcher::new` with a `FakeProvider`, an `IdleClock`, `BackendSettings` and an
//! `Upstream` — with no Docker engine and no gateway: each transition, singleflight, the backoff
//! after failures, sleeping, and the changes made by hand that the event stream reports.
//!
//! The fake backends really listen on 127.0.0.1 while they run (`FakeEngine::listen_on`), so
//! the watcher's own readiness probe decides "ready", as in production.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idlewatcher::backend::events::WakeEventKind;
use idlewatcher::backend::{
    BackendSettings, State, Upstream, UpstreamTarget, WakeError, WakeFailure, Watcher,
};
use idlewatcher::config::{DependencyCondition, HealthCheck, StopMethod};
use idlewatcher::idle::IdleClock;
use idlewatcher::providers::fake::{FakeCalls, FakeEngine, FakeOp};
use idlewatcher::providers::{BackendStatus, Provider, ProviderError};

/// More than anything here should take; a test fails rather than hangs.
const SOON: Duration = Duration::from_secs(5);

/// Settings with short timeouts; tests change what they exercise.
fn settings() -> BackendSettings {
    BackendSettings {
        idle_ticks: 0,
        wake_timeout: Duration::from_secs(3),
        stop_method: StopMethod::Stop,
        stop_signal: None,
        stop_timeout: Duration::from_secs(2),
        retry_backoff: Duration::from_millis(200),
    }
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// One fake backend (listening on its own port while it runs) and its watcher, which watches
/// the backend's events like the gateway's watchers watch Docker's.
struct Rig {
    engine: Arc<FakeEngine>,
    name: String,
    port: u16,
    watcher: Arc<Watcher>,
    upstream: Arc<Upstream>,
}

impl Rig {
    /// A stopped backend `name` on a new engine, its upstream the backend's address and port.
    fn new(name: &str, settings: BackendSettings) -> Self {
        Self::on(&FakeEngine::new(), name, settings, Vec::new(), false)
    }

    /// A stopped backend `name` on `engine`, with dependencies; the upstream is the backend's
    /// address and port, or the fixed `127.0.0.1:PORT` when `fixed`.
    fn on(
        engine: &Arc<FakeEngine>,
        name: &str,
        settings: BackendSettings,
        dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
        fixed: bool,
    ) -> Self {
        let port = free_port();
        engine.create(name).expect("create");
        engine.listen_on(name, port).expect("listen_on");
        let target = if fixed {
            UpstreamTarget::Fixed(format!("127.0.0.1:{port}"))
        } else {
            UpstreamTarget::BackendPort(port)
        };
        let upstream = Arc::new(Upstream::new(
            target,
            HealthCheck::Http {
                path: "/".into(),
                statuses: vec![(200, 299)],
            },
        ));
        let provider: Arc<dyn Provider> = Arc::new(engine.provider(name));
        let watcher = Watcher::new(
            0,
            provider,
            settings,
            dependencies,
            vec![upstream.clone()],
            IdleClock::new(Duration::from_secs(1)),
        );
        engine.watch(name, watcher.clone());
        Self {
            engine: engine.clone(),
            name: name.to_string(),
            port,
            watcher,
            upstream,
        }
    }

    fn calls(&self) -> FakeCalls {
        self.engine.calls(&self.name)
    }

    fn backend(&self) -> BackendStatus {
        self.engine.status(&self.name)
    }

    /// The kinds of the current wake's events, oldest first.
    fn kinds(&self) -> Vec<WakeEventKind> {
        let mut events = Vec::new();
        self.watcher.events().since(0, &mut events);
        events.iter().map(|event| event.kind).collect()
    }

    /// The error of the status snapshot (state `error`).
    fn error(&self) -> String {
        self.watcher
            .snapshot()
            .2
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Wakes the backend and waits until it is ready.
    async fn wake_ready(&self) {
        let generation = self.watcher.wake().expect("a wake may start");
        self.watcher
            .wait_ready(generation, Instant::now() + SOON)
            .await
            .expect("ready");
        assert_eq!(self.watcher.state(), State::Ready);
    }

    /// Waits until the watcher is in `state`; panics with the state seen after [`SOON`].
    async fn wait_state(&self, state: State) {
        let deadline = Instant::now() + SOON;
        while self.watcher.state() != state {
            assert!(
                Instant::now() < deadline,
                "{} is {:?}, not {state:?}, after {SOON:?}; events {:?}",
                self.name,
                self.watcher.state(),
                self.kinds()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Waking
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wake_goes_from_napping_through_starting_to_ready() {
    let rig = Rig::new("web", settings());
    rig.engine
        .set_delay("web", FakeOp::Start, Duration::from_millis(150));
    assert_eq!(rig.watcher.state(), State::Napping);
    assert!(!rig.watcher.is_ready());
    assert!(
        rig.watcher.enter().is_none(),
        "nothing passes while napping"
    );
    assert_eq!(rig.upstream.address(), None);

    let generation = rig.watcher.wake().expect("a wake starts");
    assert_eq!(generation, 1);
    assert_eq!(rig.watcher.state(), State::Starting);
    assert_eq!(rig.watcher.snapshot().0, State::Starting);
    assert_eq!(rig.kinds(), [WakeEventKind::Starting]);
    // Still starting while the provider's start takes its time.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rig.watcher.state(), State::Starting);
    assert_eq!(rig.backend(), BackendStatus::Stopped);

    rig.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready");
    assert_eq!(rig.watcher.state(), State::Ready);
    assert_eq!(rig.backend(), BackendStatus::Running);
    assert_eq!(
        rig.upstream.address(),
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, rig.port))),
        "the address resolved by the wake"
    );
    assert_eq!(
        rig.kinds(),
        [
            WakeEventKind::Starting,
            WakeEventKind::ContainerWoke,
            WakeEventKind::WaitingReady,
            WakeEventKind::Ready
        ]
    );
    assert!(rig.watcher.enter().is_some(), "requests pass when ready");
    let calls = rig.calls();
    assert_eq!((calls.starts, calls.unpauses, calls.stops), (1, 0, 0));
    // Waking a ready backend is a no-op.
    assert_eq!(rig.watcher.wake().expect("ready"), generation);
    assert_eq!(rig.calls().starts, 1);
}

#[tokio::test]
async fn a_fixed_upstream_is_probed_and_resolved() {
    let engine = FakeEngine::new();
    let rig = Rig::on(&engine, "fixed", settings(), Vec::new(), true);
    rig.wake_ready().await;
    assert_eq!(
        rig.upstream.address(),
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, rig.port)))
    );
    assert_eq!(
        rig.calls().addresses,
        0,
        "a fixed upstream needs no address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_wakes_start_the_backend_once() {
    let rig = Arc::new(Rig::new("herd", settings()));
    rig.engine
        .set_delay("herd", FakeOp::Start, Duration::from_millis(100));
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut wakes = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let rig = rig.clone();
        let barrier = barrier.clone();
        wakes.spawn(async move {
            barrier.wait().await;
            let generation = rig.watcher.wake()?;
            rig.watcher
                .wait_ready(generation, Instant::now() + SOON)
                .await
                .map(|()| generation)
        });
    }
    let mut generations = Vec::new();
    while let Some(result) = wakes.join_next().await {
        generations.push(result.expect("wake task").expect("every waiter sees ready"));
    }
    assert_eq!(generations.len(), 100);
    assert!(generations.iter().all(|&g| g == 1), "{generations:?}");
    let calls = rig.calls();
    assert_eq!(calls.starts, 1, "exactly one provider start: {calls:?}");
    assert_eq!(calls.status, 1, "one wake task: {calls:?}");
    assert_eq!(rig.watcher.state(), State::Ready);
}

#[tokio::test]
async fn a_failed_start_is_an_error_then_the_backoff_doubles() {
    let backoff = Duration::from_millis(200);
    let rig = Rig::new("broken", settings());
    rig.engine
        .fail_next("broken", FakeOp::Start, 2, "no space left on device");

    // First failure: every waiter gets it, the state says it, the backend stays stopped.
    let generation = rig.watcher.wake().expect("a wake starts");
    let err = rig
        .watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect_err("the start fails");
    assert!(
        matches!(&err, WakeFailure::Failed(e)
            if matches!(&**e, WakeError::Provider(ProviderError::Api { action: "start", .. }))
                && e.to_string().contains("no space left on device")),
        "{err:?}"
    );
    assert_eq!(rig.watcher.state(), State::Error);
    assert!(
        rig.error().contains("no space left on device"),
        "{}",
        rig.error()
    );
    assert_eq!(rig.kinds().last(), Some(&WakeEventKind::Error));
    assert_eq!(rig.backend(), BackendStatus::Stopped);

    // Refused while backing off, with the time left (at most the first backoff)…
    let (refused_at, first) = refusal(&rig, backoff).await;
    assert!(first > Duration::ZERO && first <= backoff, "{first:?}");
    // …and accepted once it has passed, not before.
    let generation = accepted(&rig).await;
    assert!(
        refused_at.elapsed() >= first,
        "a wake began {:?} after a refusal saying {first:?}",
        refused_at.elapsed()
    );
    assert_eq!(generation, 2);

    // Second consecutive failure: the backoff doubles.
    rig.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect_err("the second start fails too");
    let (refused_at, second) = refusal(&rig, 2 * backoff).await;
    assert!(
        second > backoff && second <= 2 * backoff,
        "the second backoff {second:?} is not double the first ({backoff:?})"
    );
    let generation = accepted(&rig).await;
    assert!(refused_at.elapsed() >= second);

    // The third start works: ready, and the failures are forgotten.
    rig.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready at last");
    assert_eq!(rig.calls().starts, 3);
    assert_eq!(rig.watcher.state(), State::Ready);
}

/// The first `BackingOff` refusal of a new wake that promises at most `limit` (a wake that
/// failed puts its backend back to sleep first, refusing for a second meanwhile): when, and its
/// `retry_after`.
async fn refusal(rig: &Rig, limit: Duration) -> (Instant, Duration) {
    let deadline = Instant::now() + SOON;
    loop {
        match rig.watcher.wake() {
            Err(WakeFailure::BackingOff { retry_after, error }) if retry_after <= limit => {
                assert!(
                    matches!(&*error, WakeError::Provider(_))
                        && error.to_string().contains("no space left on device"),
                    "{error}"
                );
                return (Instant::now(), retry_after);
            }
            Err(WakeFailure::BackingOff { .. }) => {}
            other => panic!("expected a refusal while backing off, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no refusal of the backoff itself"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Tries to wake until a wake starts; its generation.
async fn accepted(rig: &Rig) -> u64 {
    let deadline = Instant::now() + SOON;
    loop {
        match rig.watcher.wake() {
            Ok(generation) => return generation,
            Err(WakeFailure::BackingOff { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the backoff never ended");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_fails_the_wake_and_is_stopped_again() {
    let rig = Rig::new(
        "deaf",
        BackendSettings {
            wake_timeout: Duration::from_millis(500),
            ..settings()
        },
    );
    // Runs, but nothing listens on its port.
    rig.engine
        .listen_on("deaf", free_port())
        .expect("listen_on");
    let began = Instant::now();
    let generation = rig.watcher.wake().expect("a wake starts");
    let err = rig
        .watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect_err("never ready");
    let took = began.elapsed();
    assert!(
        matches!(&err, WakeFailure::Failed(e)
            if matches!(&**e, WakeError::TimedOut { last_probe: Some(_), .. })
                && e.to_string().contains("did not become ready within 500ms")),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "failed after {took:?} (wake_timeout 500ms)"
    );
    // What the wake started, it stops again: the backend is left as it was found.
    let deadline = Instant::now() + SOON;
    while rig.backend() != BackendStatus::Stopped {
        assert!(Instant::now() < deadline, "still {:?}", rig.backend());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let calls = rig.calls();
    assert_eq!((calls.starts, calls.stops), (1, 1), "{calls:?}");
    assert_eq!(rig.watcher.state(), State::Error);
}

#[tokio::test]
async fn a_backend_that_exits_while_starting_fails_at_once() {
    let rig = Rig::new("crashy", settings());
    rig.engine.exit_after_start("crashy", true);
    let began = Instant::now();
    let generation = rig.watcher.wake().expect("a wake starts");
    let err = rig
        .watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect_err("it exited");
    assert!(
        matches!(&err, WakeFailure::Failed(e)
            if matches!(&**e, WakeError::Exited { status: BackendStatus::Stopped, .. })
                && e.to_string().contains("exited while starting")),
        "{err:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "took {:?}, not at once (wake_timeout 3s)",
        began.elapsed()
    );
    assert_eq!(rig.backend(), BackendStatus::Stopped);
}

#[tokio::test]
async fn wait_ready_gives_up_at_its_own_deadline() {
    let rig = Rig::new("slow", settings());
    rig.engine
        .set_delay("slow", FakeOp::Start, Duration::from_millis(600));
    let generation = rig.watcher.wake().expect("a wake starts");
    let began = Instant::now();
    let err = rig
        .watcher
        .wait_ready(generation, Instant::now() + Duration::from_millis(100))
        .await
        .expect_err("not ready within 100ms");
    assert!(matches!(err, WakeFailure::TimedOut { .. }), "{err:?}");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(500),
        "{took:?}"
    );
    // The wake itself goes on, for whoever waits longer.
    assert_eq!(rig.watcher.state(), State::Starting);
    rig.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready later");
}

#[tokio::test]
async fn a_dependency_is_woken_and_ready_first() {
    let engine = FakeEngine::new();
    let db = Rig::on(&engine, "db", settings(), Vec::new(), false);
    engine.set_delay("db", FakeOp::Start, Duration::from_millis(100));
    let app = Rig::on(
        &engine,
        "app",
        settings(),
        vec![(db.watcher.clone(), DependencyCondition::Healthy)],
        false,
    );
    app.wake_ready().await;
    assert_eq!(db.watcher.state(), State::Ready);
    let starts: Vec<String> = engine
        .journal()
        .into_iter()
        .filter(|call| call.op == FakeOp::Start)
        .map(|call| call.backend)
        .collect();
    assert_eq!(starts, ["db", "app"]);
    assert_eq!(
        app.kinds(),
        [
            WakeEventKind::Starting,
            WakeEventKind::WakingDep,
            WakeEventKind::DepReady,
            WakeEventKind::ContainerWoke,
            WakeEventKind::WaitingReady,
            WakeEventKind::Ready
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Sleeping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_sleep_while_a_request_is_in_flight_then_put_to_sleep_naps() {
    let rig = Rig::new("busy", settings());
    rig.wake_ready().await;
    let guard = rig.watcher.enter().expect("ready: the request passes");
    assert_eq!(rig.watcher.in_flight(), 1);
    assert!(!rig.watcher.try_begin_stop(), "a request is in flight");
    assert_eq!(rig.watcher.state(), State::Ready);
    drop(guard);
    assert_eq!(rig.watcher.in_flight(), 0);

    assert!(rig.watcher.try_begin_stop());
    assert_eq!(rig.watcher.state(), State::Stopping);
    assert!(
        rig.watcher.enter().is_none(),
        "nothing enters a stopping backend"
    );
    assert!(!rig.watcher.try_begin_stop(), "already stopping");
    rig.watcher.put_to_sleep().await.expect("asleep");
    assert_eq!(rig.watcher.state(), State::Napping);
    assert_eq!(rig.backend(), BackendStatus::Stopped);
    assert_eq!(
        rig.upstream.address(),
        None,
        "forgotten until the next wake"
    );
    assert_eq!(rig.kinds(), [WakeEventKind::Napping]);
    let calls = rig.calls();
    assert_eq!((calls.starts, calls.stops), (1, 1));
    assert_eq!(calls.last_stop_timeout, Some(settings().stop_timeout));
}

#[tokio::test]
async fn each_stop_method_puts_the_backend_to_sleep_its_way() {
    let engine = FakeEngine::new();
    let method = |stop_method, signal: Option<&str>| BackendSettings {
        stop_method,
        stop_signal: signal.map(str::to_string),
        ..settings()
    };
    let paused = Rig::on(
        &engine,
        "p",
        method(StopMethod::Pause, None),
        Vec::new(),
        false,
    );
    let stopped = Rig::on(
        &engine,
        "s",
        method(StopMethod::Stop, Some("SIGINT")),
        Vec::new(),
        false,
    );
    let killed = Rig::on(
        &engine,
        "k",
        method(StopMethod::Kill, Some("SIGUSR1")),
        Vec::new(),
        false,
    );
    for rig in [&paused, &stopped, &killed] {
        rig.wake_ready().await;
        assert!(rig.watcher.try_begin_stop());
        rig.watcher.put_to_sleep().await.expect("asleep");
        assert_eq!(rig.watcher.state(), State::Napping, "{}", rig.name);
    }
    assert_eq!(paused.backend(), BackendStatus::Paused);
    assert_eq!(paused.calls().pauses, 1);
    assert_eq!(stopped.backend(), BackendStatus::Stopped);
    assert_eq!(stopped.calls().stops, 1);
    assert_eq!(stopped.calls().last_signal.as_deref(), Some("SIGINT"));
    assert_eq!(killed.backend(), BackendStatus::Stopped);
    assert_eq!(killed.calls().kills, 1);
    assert_eq!(killed.calls().last_signal.as_deref(), Some("SIGUSR1"));

    // A paused backend wakes with unpause, not start.
    paused.wake_ready().await;
    let calls = paused.calls();
    assert_eq!((calls.starts, calls.unpauses), (1, 1), "{calls:?}");
}

#[tokio::test]
async fn a_wake_during_a_stop_starts_the_backend_again_once_it_is_down() {
    let rig = Rig::new("restart", settings());
    rig.wake_ready().await;
    rig.engine
        .set_delay("restart", FakeOp::Stop, Duration::from_millis(200));
    assert!(rig.watcher.try_begin_stop());
    let sleeper = {
        let watcher = rig.watcher.clone();
        tokio::spawn(async move { watcher.put_to_sleep().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rig.watcher.state(), State::Stopping);
    let generation = rig.watcher.wake().expect("held for after the stop");
    assert_eq!(generation, 2, "the wake after the stop");
    assert_eq!(rig.watcher.state(), State::Stopping, "the stop goes on");
    rig.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready again");
    sleeper.await.expect("sleeper").expect("the stop succeeded");
    let order: Vec<FakeOp> = rig
        .engine
        .journal()
        .into_iter()
        .map(|call| call.op)
        .filter(|op| matches!(op, FakeOp::Start | FakeOp::Stop))
        .collect();
    assert_eq!(order, [FakeOp::Start, FakeOp::Stop, FakeOp::Start]);
    assert_eq!(rig.backend(), BackendStatus::Running);
}

#[tokio::test]
async fn a_failed_stop_leaves_the_backend_ready() {
    let rig = Rig::new("stubborn", settings());
    rig.wake_ready().await;
    rig.engine
        .fail_next("stubborn", FakeOp::Stop, 1, "engine busy");
    assert!(rig.watcher.try_begin_stop());
    let err = rig
        .watcher
        .put_to_sleep()
        .await
        .expect_err("the stop fails");
    assert!(err.to_string().contains("engine busy"), "{err}");
    assert_eq!(rig.watcher.state(), State::Ready);
    assert!(rig.watcher.enter().is_some(), "it keeps serving");
    assert_eq!(rig.backend(), BackendStatus::Running);
    // The next attempt succeeds.
    assert!(rig.watcher.try_begin_stop());
    rig.watcher.put_to_sleep().await.expect("asleep");
    assert_eq!(rig.watcher.state(), State::Napping);
}

// ---------------------------------------------------------------------------------------------
// Changes made by hand
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_started_by_hand_is_adopted_without_a_start_of_ours() {
    let rig = Rig::new("adopted", settings());
    rig.engine
        .start_by_hand("adopted")
        .expect("started by hand");
    // The event arrived at once: the watcher is probing already.
    assert_eq!(rig.watcher.state(), State::Starting);
    rig.watcher
        .wait_ready(1, Instant::now() + SOON)
        .await
        .expect("adopted");
    assert_eq!(rig.watcher.state(), State::Ready);
    let calls = rig.calls();
    assert_eq!((calls.starts, calls.unpauses), (0, 0), "{calls:?}");
    assert_eq!(
        rig.kinds(),
        [
            WakeEventKind::Starting,
            WakeEventKind::ContainerWoke,
            WakeEventKind::WaitingReady,
            WakeEventKind::Ready
        ]
    );
}

#[tokio::test]
async fn a_backend_stopped_or_paused_by_hand_while_ready_naps() {
    let rig = Rig::new("handy", settings());
    rig.wake_ready().await;
    rig.engine.stop_by_hand("handy").expect("stopped by hand");
    rig.wait_state(State::Napping).await;
    let mut events = Vec::new();
    rig.watcher.events().since(0, &mut events);
    let last = events.last().expect("a napping event");
    assert_eq!(last.kind, WakeEventKind::Napping);
    assert!(
        last.message.contains("stopped outside idlewatcher"),
        "{}",
        last.message
    );

    // Woken again by us, then paused by hand: napping too; the next wake unpauses.
    rig.wake_ready().await;
    rig.engine.pause_by_hand("handy").expect("paused by hand");
    rig.wait_state(State::Napping).await;
    rig.wake_ready().await;
    let calls = rig.calls();
    assert_eq!((calls.starts, calls.unpauses), (2, 1), "{calls:?}");
}

#[tokio::test]
async fn a_removed_backend_is_an_error_until_it_is_recreated() {
    let rig = Rig::new("gone", settings());
    rig.wake_ready().await;
    rig.engine.remove("gone").expect("removed by hand");
    assert_eq!(rig.watcher.state(), State::Error);
    assert!(rig.error().contains("removed"), "{}", rig.error());
    assert!(rig.watcher.enter().is_none());
    assert_eq!(rig.kinds(), [WakeEventKind::Error]);

    rig.engine.recreate("gone").expect("recreated by hand");
    assert_eq!(rig.watcher.state(), State::Napping, "back, asleep");
    assert_eq!(rig.error(), "");
    rig.wake_ready().await;
    assert_eq!(rig.calls().starts, 2);

    // Removed while napping: an error too; recreated: napping.
    assert!(rig.watcher.try_begin_stop());
    rig.watcher.put_to_sleep().await.expect("asleep");
    rig.engine.remove("gone").expect("removed by hand");
    assert_eq!(rig.watcher.state(), State::Error);
    rig.engine.recreate("gone").expect("recreated by hand");
    assert_eq!(rig.watcher.state(), State::Napping);
}

// ---------------------------------------------------------------------------------------------
// Dependencies as a reference-counted graph
// ---------------------------------------------------------------------------------------------

/// `app` depends on `db` (service_healthy), with the graph linked as assembly links it.
fn app_on_db(engine: &Arc<FakeEngine>) -> (Rig, Rig) {
    let db = Rig::on(engine, "db", settings(), Vec::new(), false);
    let app = Rig::on(
        engine,
        "app",
        settings(),
        vec![(db.watcher.clone(), DependencyCondition::Healthy)],
        false,
    );
    assert!(db
        .watcher
        .set_dependents(vec![("app".into(), &app.watcher)]));
    (app, db)
}

/// The order of the engine's start calls.
fn starts(engine: &FakeEngine) -> Vec<String> {
    engine
        .journal()
        .into_iter()
        .filter(|call| call.op == FakeOp::Start)
        .map(|call| call.backend)
        .collect()
}

#[tokio::test]
async fn a_dependency_is_not_stopped_while_its_dependent_is_starting_ready_or_stopping() {
    use idlewatcher::idle::Sleeper;
    let engine = FakeEngine::new();
    let (app, db) = app_on_db(&engine);
    assert!(db.watcher.held_by().is_empty(), "nothing holds it yet");
    app.wake_ready().await;
    assert_eq!(db.watcher.held_by(), ["app"]);
    assert_eq!(
        Sleeper::in_flight(&*db.watcher),
        1,
        "held counts as in flight"
    );
    assert!(!db.watcher.try_begin_stop(), "held by a ready dependent");
    assert_eq!(db.watcher.state(), State::Ready);

    // Stopping: the dependent still needs it until it is down.
    engine.set_delay("app", FakeOp::Stop, Duration::from_millis(200));
    assert!(app.watcher.try_begin_stop());
    let stopping = tokio::spawn({
        let app = app.watcher.clone();
        async move { app.put_to_sleep().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(app.watcher.state(), State::Stopping);
    assert!(!db.watcher.try_begin_stop(), "held by a stopping dependent");
    stopping.await.unwrap().expect("app asleep");

    // Napping: no longer held.
    assert!(db.watcher.held_by().is_empty());
    assert_eq!(Sleeper::in_flight(&*db.watcher), 0);
    assert!(db.watcher.try_begin_stop());
    db.watcher.put_to_sleep().await.expect("db asleep");

    // Starting: the dependent holds it from the first moment of its wake.
    engine.set_delay("app", FakeOp::Start, Duration::from_millis(300));
    let generation = app.watcher.wake().unwrap();
    db.wait_state(State::Ready).await;
    assert_eq!(app.watcher.state(), State::Starting);
    assert_eq!(db.watcher.held_by(), ["app"]);
    assert!(!db.watcher.try_begin_stop(), "held by a starting dependent");
    app.watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_request_in_flight_on_the_dependent_holds_the_dependency() {
    let engine = FakeEngine::new();
    let (app, db) = app_on_db(&engine);
    app.wake_ready().await;
    let guard = app.watcher.enter().expect("ready");
    // Even if the dependent's state were to move on, its request keeps the dependency up.
    assert!(!app.watcher.try_begin_stop(), "the request holds the app");
    assert!(!db.watcher.try_begin_stop(), "and so the db");
    drop(guard);
    assert!(app.watcher.try_begin_stop());
    app.watcher.put_to_sleep().await.unwrap();
    assert!(db.watcher.try_begin_stop(), "released once the app sleeps");
}

#[tokio::test]
async fn a_shared_dependency_stays_up_while_any_dependent_is_awake() {
    let engine = FakeEngine::new();
    let db = Rig::on(&engine, "db", settings(), Vec::new(), false);
    let dep = || vec![(db.watcher.clone(), DependencyCondition::Healthy)];
    let one = Rig::on(&engine, "one", settings(), dep(), false);
    let two = Rig::on(&engine, "two", settings(), dep(), false);
    db.watcher.set_dependents(vec![
        ("one".into(), &one.watcher),
        ("two".into(), &two.watcher),
    ]);
    one.wake_ready().await;
    two.wake_ready().await;
    assert_eq!(db.watcher.held_by(), ["one", "two"]);
    assert!(one.watcher.try_begin_stop());
    one.watcher.put_to_sleep().await.unwrap();
    assert_eq!(db.watcher.held_by(), ["two"]);
    assert!(!db.watcher.try_begin_stop(), "two still needs it");
    assert_eq!(engine.calls("db").starts, 1);
    assert!(two.watcher.try_begin_stop());
    two.watcher.put_to_sleep().await.unwrap();
    assert!(db.watcher.try_begin_stop(), "the last dependent slept");
}

#[tokio::test]
async fn a_diamond_starts_each_backend_once_and_independent_dependencies_concurrently() {
    // a → b, c; b → d; c → d. b and c each take 300 ms to start, d 100 ms.
    let engine = FakeEngine::new();
    let d = Rig::on(&engine, "d", settings(), Vec::new(), false);
    let on_d = || vec![(d.watcher.clone(), DependencyCondition::Healthy)];
    let b = Rig::on(&engine, "b", settings(), on_d(), false);
    let c = Rig::on(&engine, "c", settings(), on_d(), false);
    let a = Rig::on(
        &engine,
        "a",
        settings(),
        vec![
            (b.watcher.clone(), DependencyCondition::Healthy),
            (c.watcher.clone(), DependencyCondition::Started),
        ],
        false,
    );
    engine.set_delay("d", FakeOp::Start, Duration::from_millis(100));
    engine.set_delay("b", FakeOp::Start, Duration::from_millis(300));
    engine.set_delay("c", FakeOp::Start, Duration::from_millis(300));
    let began = Instant::now();
    a.wake_ready().await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(650),
        "b and c start concurrently (sequential: ≥ 700 ms): {took:?}"
    );
    let order = starts(&engine);
    assert_eq!(order.len(), 4, "each once: {order:?}");
    assert_eq!(order[0], "d");
    assert_eq!(order[3], "a");
    assert_eq!(
        a.kinds()
            .iter()
            .filter(|kind| **kind == WakeEventKind::WakingDep)
            .count(),
        2
    );
    let kinds = a.kinds();
    let last_dep_ready = kinds
        .iter()
        .rposition(|kind| *kind == WakeEventKind::DepReady)
        .unwrap();
    let woke = kinds
        .iter()
        .position(|kind| *kind == WakeEventKind::ContainerWoke)
        .unwrap();
    assert!(last_dep_ready < woke, "{kinds:?}");
}

#[tokio::test]
async fn a_failing_dependency_fails_the_dependent_naming_it() {
    let engine = FakeEngine::new();
    let (app, db) = app_on_db(&engine);
    engine.fail_next("db", FakeOp::Start, 1, "no space left");
    let generation = app.watcher.wake().unwrap();
    let failure = app
        .watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .unwrap_err();
    let WakeFailure::Failed(error) = failure else {
        panic!("{failure:?}")
    };
    assert!(
        matches!(&*error, WakeError::Dependency { dependency, .. } if dependency.contains("db")),
        "{error:?}"
    );
    assert!(
        db.error().contains("no space left"),
        "db's own error: {}",
        db.error()
    );
    assert!(!db.error().contains("dependency"));
    assert_eq!(engine.calls("app").starts, 0, "the app is never started");
}

#[tokio::test]
async fn the_backends_own_health_check_decides_readiness() {
    use idlewatcher::providers::BackendHealth;
    let engine = FakeEngine::new();
    let port = free_port();
    engine.create("hc").unwrap();
    engine.listen_on("hc", port).unwrap();
    engine.set_health("hc", Some(BackendHealth::Starting));
    let upstream = Arc::new(Upstream::new(
        UpstreamTarget::BackendPort(port),
        HealthCheck::Docker,
    ));
    let watcher = Watcher::new(
        0,
        Arc::new(engine.provider("hc")),
        settings(),
        Vec::new(),
        vec![upstream],
        IdleClock::new(Duration::from_secs(1)),
    );
    let generation = watcher.wake().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.state(), State::Starting, "not healthy yet");
    engine.set_health("hc", Some(BackendHealth::Healthy));
    watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready once healthy");

    // Unhealthy: failed with the reason.
    assert!(watcher.try_begin_stop());
    watcher.put_to_sleep().await.unwrap();
    engine.set_health(
        "hc",
        Some(BackendHealth::Unhealthy {
            reason: "db not migrated".into(),
        }),
    );
    let generation = watcher.wake().unwrap();
    let failure = watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .unwrap_err();
    assert!(failure.to_string().contains("db not migrated"), "{failure}");

    // docker: true on a backend with no health check: an error saying so, not a timeout.
    engine.set_health("hc", None);
    tokio::time::sleep(settings().retry_backoff * 3).await;
    let generation = watcher.wake().unwrap();
    let failure = watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .unwrap_err();
    assert!(failure.to_string().contains("no health check"), "{failure}");
}

#[tokio::test]
async fn without_a_configured_probe_the_backends_own_health_check_must_pass_too() {
    use idlewatcher::providers::BackendHealth;
    let engine = FakeEngine::new();
    let port = free_port();
    engine.create("implicit").unwrap();
    engine.listen_on("implicit", port).unwrap();
    engine.set_health("implicit", Some(BackendHealth::Starting));
    let default_probe = Upstream::new(UpstreamTarget::BackendPort(port), HealthCheck::Tcp);
    let watcher = Watcher::new(
        0,
        Arc::new(engine.provider("implicit")),
        settings(),
        Vec::new(),
        vec![Arc::new(default_probe.with_default_health())],
        IdleClock::new(Duration::from_secs(1)),
    );
    let generation = watcher.wake().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        watcher.state(),
        State::Starting,
        "the port answers, but the HEALTHCHECK has not passed"
    );
    engine.set_health("implicit", Some(BackendHealth::Healthy));
    watcher
        .wait_ready(generation, Instant::now() + SOON)
        .await
        .expect("ready once healthy");
}
