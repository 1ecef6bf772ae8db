//! The provider contract: what every provider family must do, written once and run against each
//! family through a small [`Harness`] — Docker (real containers of the busybox test image, see
//! `common::container`) and the in-memory fake (`idlewatcher::providers::fake`).
//!
//! The watcher relies on exactly these semantics: idempotent start/stop/pause/unpause/kill, start
//! unpausing a paused backend, pause of a stopped backend being a no-op but unpause of one an
//! error (a wake must not pass for a start), `NotFound` for a backend that does not exist, an
//! address only while the backend is up, and events for every change, made by hand or not.
//!
//! Adding a family (Proxmox, Swarm…) is one `impl Harness` and one line:
//! `contract_suite!(proxmox, ProxmoxHarness::new().await);`.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::container::{unique_name, TestContainer};
use common::recorder::{Recorder, SOON};
use idlewatcher::providers::docker::{connect, DockerEvents, DockerProvider};
use idlewatcher::providers::fake::FakeEngine;
use idlewatcher::providers::{BackendEvent, BackendStatus, Provider, ProviderError};

/// A change made to a backend from outside idlewatcher, as someone at a shell would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByHand {
    /// `docker start`.
    Start,
    /// `docker stop`.
    Stop,
    /// `docker kill` (SIGKILL).
    Kill,
    /// `docker pause`.
    Pause,
    /// `docker unpause`.
    Unpause,
    /// `docker rm -f`.
    Remove,
    /// Removed, then created again under the same name (stopped).
    Recreate,
}

/// One provider family under contract: how to make a backend of it and act on it from outside.
trait Harness {
    /// A backend of this family; dropping it removes it.
    type Backend;

    /// Creates a backend, stopped (created, never started). `tag` is a hint for its name.
    async fn create(&self, tag: &str) -> Self::Backend;

    /// The family's [`Provider`] for `backend`.
    fn provider(&self, backend: &Self::Backend) -> Arc<dyn Provider>;

    /// The family's [`Provider`] for a backend that does not exist.
    fn missing(&self) -> Arc<dyn Provider>;

    /// Changes `backend` from outside; returns once the change is done.
    async fn by_hand(&self, backend: &Self::Backend, change: ByHand);

    /// Delivers the family's events about `backend` to `observer` from now on, as the family's
    /// event source would deliver them to a watcher; returns once the source is live (its
    /// first event, the resync, was delivered). Watching stops when the guard drops.
    async fn watch(&self, backend: &Self::Backend, observer: Arc<Recorder>) -> Box<dyn Any>;
}

/// Generates one `#[tokio::test]` per contract check for a family: `contract_suite!(name,
/// harness expression)` (the expression may `.await`).
macro_rules! contract_suite {
    ($family:ident, $harness:expr) => {
        mod $family {
            use super::*;
            contract_suite!(@checks $harness;
                a_created_backend_is_stopped_and_has_no_address,
                start_runs_it_and_is_idempotent,
                start_unpauses_a_paused_backend,
                stop_stops_it_and_is_idempotent,
                kill_stops_it_and_is_idempotent,
                pause_and_unpause_are_idempotent,
                pause_of_a_stopped_backend_is_a_no_op_but_unpause_fails,
                stop_and_kill_a_paused_backend,
                a_missing_backend_is_not_found,
                a_backend_removed_by_hand_is_missing_until_recreated,
                events_follow_changes_made_by_hand,
                events_report_the_providers_own_changes,
                watching_a_running_backend_resyncs_running,
            );
        }
    };
    (@checks $harness:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                common::init_tracing();
                checks::$check(&$harness).await;
            }
        )+
    };
}

contract_suite!(docker, DockerHarness::new().await);
contract_suite!(fake, FakeHarness::new());
// Proxmox LXC guests are never paused (LXC suspend is an experimental CRIU checkpoint that leaves
// the guest stopped): every check that does not pause.
mod proxmox {
    use super::*;
    contract_suite!(@checks ProxmoxHarness::new().await;
        a_created_backend_is_stopped_and_has_no_address,
        start_runs_it_and_is_idempotent,
        stop_stops_it_and_is_idempotent,
        kill_stops_it_and_is_idempotent,
        a_missing_backend_is_not_found,
        a_backend_removed_by_hand_is_missing_until_recreated,
    );
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

mod checks {
    use super::*;
    use BackendEvent::{Created, Removed, Resync, Started, Stopped};

    /// Waits until the provider reports `want` (engines act asynchronously: a killed process
    /// takes a moment to be reaped); panics with the last status after [`SOON`].
    async fn eventually(provider: &dyn Provider, want: BackendStatus) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let status = provider.status().await.expect("status");
            if status == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} is {status:?}, not {want:?}, after {SOON:?}",
                provider.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_no_address(result: Result<std::net::IpAddr, ProviderError>, when: &str) {
        assert!(
            matches!(result, Err(ProviderError::NoAddress { .. })),
            "{when}: expected NoAddress, got {result:?}"
        );
    }

    async fn status(provider: &dyn Provider) -> BackendStatus {
        provider.status().await.expect("status")
    }

    pub async fn a_created_backend_is_stopped_and_has_no_address<H: Harness>(h: &H) {
        let b = h.create("created").await;
        let p = h.provider(&b);
        assert!(!p.describe().is_empty());
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        assert_no_address(p.address().await, "created");
    }

    pub async fn start_runs_it_and_is_idempotent<H: Harness>(h: &H) {
        let b = h.create("start").await;
        let p = h.provider(&b);
        p.start().await.expect("start");
        assert_eq!(status(&*p).await, BackendStatus::Running);
        let address = p.address().await.expect("an address while running");
        p.start().await.expect("start a running backend");
        assert_eq!(status(&*p).await, BackendStatus::Running);
        assert_eq!(
            p.address().await.expect("address"),
            address,
            "a second start changes nothing"
        );
    }

    pub async fn start_unpauses_a_paused_backend<H: Harness>(h: &H) {
        let b = h.create("unpause-by-start").await;
        let p = h.provider(&b);
        p.start().await.expect("start");
        p.pause().await.expect("pause");
        assert_eq!(status(&*p).await, BackendStatus::Paused);
        p.start().await.expect("start a paused backend");
        assert_eq!(status(&*p).await, BackendStatus::Running);
    }

    pub async fn stop_stops_it_and_is_idempotent<H: Harness>(h: &H) {
        let b = h.create("stop").await;
        let p = h.provider(&b);
        p.stop(None, Duration::from_secs(5))
            .await
            .expect("stop a never-started backend");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        p.start().await.expect("start");
        p.stop(None, Duration::from_secs(5)).await.expect("stop");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        assert_no_address(p.address().await, "stopped");
        p.stop(None, Duration::from_secs(5))
            .await
            .expect("stop a stopped backend");
        p.stop(Some("SIGTERM"), Duration::from_secs(5))
            .await
            .expect("stop a stopped backend, with a signal");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        // And it starts again.
        p.start().await.expect("start after stop");
        assert_eq!(status(&*p).await, BackendStatus::Running);
    }

    pub async fn kill_stops_it_and_is_idempotent<H: Harness>(h: &H) {
        let b = h.create("kill").await;
        let p = h.provider(&b);
        p.kill(None).await.expect("kill a never-started backend");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        p.start().await.expect("start");
        p.kill(None).await.expect("kill");
        eventually(&*p, BackendStatus::Stopped).await;
        p.kill(None).await.expect("kill a stopped backend");
        p.kill(Some("SIGTERM"))
            .await
            .expect("kill a stopped backend, with a signal");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
    }

    pub async fn pause_and_unpause_are_idempotent<H: Harness>(h: &H) {
        let b = h.create("pause").await;
        let p = h.provider(&b);
        p.start().await.expect("start");
        p.pause().await.expect("pause");
        assert_eq!(status(&*p).await, BackendStatus::Paused);
        p.address()
            .await
            .expect("a paused backend keeps its address");
        p.pause().await.expect("pause a paused backend");
        assert_eq!(status(&*p).await, BackendStatus::Paused);
        p.unpause().await.expect("unpause");
        assert_eq!(status(&*p).await, BackendStatus::Running);
        p.unpause().await.expect("unpause a running backend");
        assert_eq!(status(&*p).await, BackendStatus::Running);
    }

    pub async fn pause_of_a_stopped_backend_is_a_no_op_but_unpause_fails<H: Harness>(h: &H) {
        let b = h.create("pause-stopped").await;
        let p = h.provider(&b);
        p.pause()
            .await
            .expect("pause a stopped backend: already asleep");
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
        let err = p
            .unpause()
            .await
            .expect_err("unpause must not pass for a start");
        assert!(
            matches!(&err, ProviderError::Api { action: "unpause", backend, message }
                if backend == p.describe() && !message.is_empty()),
            "{err:?}"
        );
        assert_eq!(status(&*p).await, BackendStatus::Stopped);
    }

    pub async fn stop_and_kill_a_paused_backend<H: Harness>(h: &H) {
        let stopped = h.create("stop-paused").await;
        let killed = h.create("kill-paused").await;
        let (ps, pk) = (h.provider(&stopped), h.provider(&killed));
        for p in [&ps, &pk] {
            p.start().await.expect("start");
            p.pause().await.expect("pause");
        }
        ps.stop(None, Duration::from_secs(5))
            .await
            .expect("stop a paused backend");
        assert_eq!(status(&*ps).await, BackendStatus::Stopped);
        pk.kill(None).await.expect("kill a paused backend");
        eventually(&*pk, BackendStatus::Stopped).await;
    }

    pub async fn a_missing_backend_is_not_found<H: Harness>(h: &H) {
        let p = h.missing();
        assert_eq!(status(&*p).await, BackendStatus::Missing);
        let checks = [
            ("start", p.start().await),
            ("stop", p.stop(None, Duration::from_secs(1)).await),
            (
                "stop+signal",
                p.stop(Some("SIGINT"), Duration::from_secs(1)).await,
            ),
            ("kill", p.kill(None).await),
            ("pause", p.pause().await),
            ("unpause", p.unpause().await),
            ("address", p.address().await.map(|_| ())),
        ];
        for (what, result) in checks {
            match result {
                Err(ProviderError::NotFound { backend }) => assert_eq!(backend, p.describe()),
                other => panic!("{what}: expected NotFound, got {other:?}"),
            }
        }
    }

    pub async fn a_backend_removed_by_hand_is_missing_until_recreated<H: Harness>(h: &H) {
        let b = h.create("removed").await;
        let p = h.provider(&b);
        p.start().await.expect("start");
        h.by_hand(&b, ByHand::Remove).await;
        assert_eq!(status(&*p).await, BackendStatus::Missing);
        assert!(
            matches!(p.start().await, Err(ProviderError::NotFound { .. })),
            "start a removed backend"
        );
        assert!(
            matches!(
                p.stop(None, Duration::from_secs(1)).await,
                Err(ProviderError::NotFound { .. })
            ),
            "stop a removed backend"
        );
        h.by_hand(&b, ByHand::Recreate).await;
        assert_eq!(status(&*p).await, BackendStatus::Stopped, "recreated");
        p.start().await.expect("start the recreated backend");
        assert_eq!(status(&*p).await, BackendStatus::Running);
    }

    pub async fn events_follow_changes_made_by_hand<H: Harness>(h: &H) {
        let b = h.create("events").await;
        let recorder = Arc::new(Recorder::default());
        let _watching = h.watch(&b, recorder.clone()).await;
        assert_eq!(
            recorder.all().first(),
            Some(&Resync(BackendStatus::Stopped)),
            "the resync comes first: {:?}",
            recorder.all()
        );
        let mut at = 1;
        for (change, event) in [
            (ByHand::Start, Started),
            (ByHand::Pause, Stopped),
            (ByHand::Unpause, Started),
            (ByHand::Stop, Stopped),
            (ByHand::Remove, Removed),
            (ByHand::Recreate, Created),
            (ByHand::Start, Started),
            (ByHand::Kill, Stopped),
        ] {
            h.by_hand(&b, change).await;
            at = recorder.expect_from(at, event).await;
        }
        // Removing a running backend tells it stopped, then removed.
        h.by_hand(&b, ByHand::Start).await;
        at = recorder.expect_from(at, Started).await;
        h.by_hand(&b, ByHand::Remove).await;
        at = recorder.expect_from(at, Stopped).await;
        recorder.expect_from(at, Removed).await;
    }

    pub async fn events_report_the_providers_own_changes<H: Harness>(h: &H) {
        let b = h.create("own-events").await;
        let p = h.provider(&b);
        let recorder = Arc::new(Recorder::default());
        let _watching = h.watch(&b, recorder.clone()).await;
        let mut at = recorder
            .expect_from(0, Resync(BackendStatus::Stopped))
            .await;
        p.start().await.expect("start");
        at = recorder.expect_from(at, Started).await;
        p.pause().await.expect("pause");
        at = recorder.expect_from(at, Stopped).await;
        p.unpause().await.expect("unpause");
        at = recorder.expect_from(at, Started).await;
        p.stop(None, Duration::from_secs(5)).await.expect("stop");
        at = recorder.expect_from(at, Stopped).await;
        p.start().await.expect("start again");
        at = recorder.expect_from(at, Started).await;
        p.kill(None).await.expect("kill");
        recorder.expect_from(at, Stopped).await;
    }

    pub async fn watching_a_running_backend_resyncs_running<H: Harness>(h: &H) {
        let b = h.create("resync").await;
        h.by_hand(&b, ByHand::Start).await;
        let recorder = Arc::new(Recorder::default());
        let _watching = h.watch(&b, recorder.clone()).await;
        assert_eq!(
            recorder.all().first(),
            Some(&Resync(BackendStatus::Running)),
            "{:?}",
            recorder.all()
        );
        // Another watcher, later: the current status again.
        h.by_hand(&b, ByHand::Pause).await;
        let late = Arc::new(Recorder::default());
        let _watching_too = h.watch(&b, late.clone()).await;
        assert_eq!(
            late.all().first(),
            Some(&Resync(BackendStatus::Paused)),
            "{:?}",
            late.all()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------------

/// Docker: containers of the busybox test image, changed by hand with the `docker` CLI, watched
/// through a `DockerEvents` stream of their own.
struct DockerHarness {
    docker: bollard::Docker,
}

impl DockerHarness {
    async fn new() -> Self {
        Self {
            docker: connect(None).await.expect("the Docker engine"),
        }
    }
}

impl Harness for DockerHarness {
    type Backend = TestContainer;

    async fn create(&self, tag: &str) -> TestContainer {
        TestContainer::http(&format!("contract-{tag}")).await
    }

    fn provider(&self, backend: &TestContainer) -> Arc<dyn Provider> {
        Arc::new(DockerProvider::new(self.docker.clone(), &backend.name))
    }

    fn missing(&self) -> Arc<dyn Provider> {
        Arc::new(DockerProvider::new(
            self.docker.clone(),
            &unique_name("contract-missing"),
        ))
    }

    async fn by_hand(&self, backend: &TestContainer, change: ByHand) {
        match change {
            ByHand::Start => backend.start().await,
            ByHand::Stop => backend.stop().await,
            ByHand::Kill => backend.kill("SIGKILL").await,
            ByHand::Pause => backend.pause().await,
            ByHand::Unpause => backend.unpause().await,
            ByHand::Remove => backend.remove().await,
            ByHand::Recreate => backend.recreate().await,
        }
    }

    async fn watch(&self, backend: &TestContainer, observer: Arc<Recorder>) -> Box<dyn Any> {
        let events = DockerEvents::new(self.docker.clone());
        events.watch(&backend.name, observer.clone());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(events.run(shutdown));
        let deadline = tokio::time::Instant::now() + SOON;
        while !observer
            .all()
            .iter()
            .any(|e| matches!(e, BackendEvent::Resync(_)))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no resync within {SOON:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        /// Ends the stream: the sender goes, then the task.
        struct Watching(
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        );
        impl Drop for Watching {
            fn drop(&mut self) {
                let _ = self.0.send(true);
                self.1.abort();
            }
        }
        Box::new(Watching(stop, run))
    }
}

// ---------------------------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------------------------

/// The in-memory fake: backends of one `FakeEngine`, changed by hand through the engine.
struct FakeHarness {
    engine: Arc<FakeEngine>,
}

impl FakeHarness {
    fn new() -> Self {
        Self {
            engine: FakeEngine::new(),
        }
    }

    fn name(tag: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!("{tag}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

impl Harness for FakeHarness {
    type Backend = String;

    async fn create(&self, tag: &str) -> String {
        let name = Self::name(tag);
        self.engine.create(&name).expect("create");
        name
    }

    fn provider(&self, backend: &String) -> Arc<dyn Provider> {
        Arc::new(self.engine.provider(backend))
    }

    fn missing(&self) -> Arc<dyn Provider> {
        Arc::new(self.engine.provider(&Self::name("missing")))
    }

    async fn by_hand(&self, backend: &String, change: ByHand) {
        let engine = &self.engine;
        let result = match change {
            ByHand::Start => engine.start_by_hand(backend),
            ByHand::Stop | ByHand::Kill => engine.stop_by_hand(backend),
            ByHand::Pause => engine.pause_by_hand(backend),
            ByHand::Unpause => engine.unpause_by_hand(backend),
            ByHand::Remove => engine.remove(backend),
            ByHand::Recreate => engine.recreate(backend),
        };
        result.unwrap_or_else(|e| panic!("{change:?} by hand: {e}"));
    }

    async fn watch(&self, backend: &String, observer: Arc<Recorder>) -> Box<dyn Any> {
        self.engine.watch(backend, observer);
        Box::new(())
    }
}

// ---------------------------------------------------------------------------------------------
// Proxmox
// ---------------------------------------------------------------------------------------------

/// Proxmox: LXC guests of the fake PVE API (`common::pve`), changed by hand through that API
/// (start, shutdown, stop) or directly (destroyed, created again), watched through the family's
/// own bulk poller.
struct ProxmoxHarness {
    fake: common::pve::FakePve,
    family: Arc<idlewatcher::providers::proxmox::ProxmoxFamily>,
    /// Stops the poller when the harness drops.
    _poller: tokio::sync::watch::Sender<bool>,
}

impl ProxmoxHarness {
    async fn new() -> Self {
        use idlewatcher::providers::ProviderFamily;
        let fake = common::pve::FakePve::start().await;
        fake.set_task_time(Duration::from_millis(50));
        let family = Arc::new(
            idlewatcher::providers::proxmox::ProxmoxFamily::connect(
                &fake.config(Duration::from_millis(100)),
            )
            .await
            .expect("connect to the fake PVE API"),
        );
        let (poller, shutdown) = tokio::sync::watch::channel(false);
        let running = Arc::clone(&family);
        tokio::spawn(async move { running.run_events(shutdown).await });
        Self {
            fake,
            family,
            _poller: poller,
        }
    }

    fn backend(vmid: u32) -> idlewatcher::config::BackendConfig {
        idlewatcher::config::BackendConfig::Proxmox {
            node: "pve1".into(),
            vmid,
        }
    }

    fn driver(&self, vmid: u32) -> Arc<dyn Provider> {
        use idlewatcher::providers::ProviderFamily;
        self.family
            .driver(&Self::backend(vmid))
            .expect("a Proxmox driver")
    }
}

impl Harness for ProxmoxHarness {
    type Backend = u32;

    async fn create(&self, _tag: &str) -> u32 {
        static NEXT: AtomicU64 = AtomicU64::new(200);
        let vmid = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        self.fake.add_guest("pve1", vmid, Some("10.0.0.1"));
        vmid
    }

    fn provider(&self, backend: &u32) -> Arc<dyn Provider> {
        self.driver(*backend)
    }

    fn missing(&self) -> Arc<dyn Provider> {
        self.driver(999_999)
    }

    async fn by_hand(&self, backend: &u32, change: ByHand) {
        let vmid = *backend;
        match change {
            ByHand::Start => self.fake.power("pve1", vmid, "start").await,
            ByHand::Stop => self.fake.power("pve1", vmid, "shutdown").await,
            ByHand::Kill => self.fake.power("pve1", vmid, "stop").await,
            ByHand::Remove => {
                self.fake.remove_guest(vmid);
            }
            ByHand::Recreate => {
                self.fake.remove_guest(vmid);
                self.fake.add_guest("pve1", vmid, Some("10.0.0.1"));
            }
            ByHand::Pause | ByHand::Unpause => panic!("LXC guests are not paused"),
        }
    }

    async fn watch(&self, backend: &u32, observer: Arc<Recorder>) -> Box<dyn Any> {
        use idlewatcher::providers::{BackendObserver, ProviderFamily};
        let as_observer: Arc<dyn BackendObserver> = observer.clone();
        let config = Self::backend(*backend);
        self.family.watch(&config, Arc::clone(&as_observer));
        let deadline = tokio::time::Instant::now() + SOON;
        while observer.all().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no resync");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        struct Watching {
            family: Arc<idlewatcher::providers::proxmox::ProxmoxFamily>,
            config: idlewatcher::config::BackendConfig,
            observer: Arc<dyn BackendObserver>,
        }
        impl Drop for Watching {
            fn drop(&mut self) {
                self.family.unwatch(&self.config, &self.observer);
            }
        }
        Box::new(Watching {
            family: Arc::clone(&self.family),
            config,
            observer: as_observer,
        })
    }
}
