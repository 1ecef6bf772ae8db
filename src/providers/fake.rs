//! An in-memory provider family, for tests: the library's own, and those of programs that embed
//! it and want to drive a [`Watcher`](crate::backend::Watcher) without a Docker engine.
//!
//! It behaves like the Docker family, down to the details a watcher depends on:
//!
//! * A [`FakeEngine`] is the "engine": a registry of named fake backends, shared through an
//!   [`Arc`]. Backends are created, started, stopped, paused, removed and recreated *by hand*
//!   ([`FakeEngine::start_by_hand`]…), as someone at a shell would with `docker start`.
//! * Every change of a backend, whoever made it (a test by hand, or a [`FakeProvider`] call), is
//!   told to the observers registered with [`FakeEngine::watch`], as Docker's event stream would
//!   tell them: start and unpause → [`BackendEvent::Started`]; stop, kill, exit and pause →
//!   [`BackendEvent::Stopped`]; removal → [`BackendEvent::Removed`] (after `Stopped` if it was
//!   running, like `docker rm -f`); creation → [`BackendEvent::Created`]. Watching a name first
//!   delivers [`BackendEvent::Resync`] with its current status, as a (re)connecting event stream
//!   does; [`FakeEngine::resync`] delivers it again, as after a reconnection. Observers watch a
//!   *name*, so they follow a backend through removal and recreation.
//! * A [`FakeProvider`] ([`FakeEngine::provider`]) implements [`Provider`] for one name with the
//!   Docker provider's semantics: `start` is idempotent and unpauses a paused backend; `stop` and
//!   `kill` of a stopped backend succeed; `pause` of a stopped backend succeeds (it is as asleep
//!   as it gets) but `unpause` of a stopped one fails (a wake must not pass for a start); every
//!   call on a missing backend fails with [`ProviderError::NotFound`]; [`Provider::address`] is
//!   `127.0.0.1` while the backend runs (or is paused, whose network stays attached) and
//!   [`ProviderError::NoAddress`] while it is stopped.
//! * Knobs make the awkward cases easy: a delay per operation ([`FakeEngine::set_delay`]), the
//!   next N calls of an operation failing ([`FakeEngine::fail_next`]), a backend whose process
//!   exits right after it starts ([`FakeEngine::exit_after_start`]), call counters
//!   ([`FakeEngine::calls`]) and an ordered journal of calls across backends
//!   ([`FakeEngine::journal`]).
//! * With [`FakeEngine::listen_on`], a running backend really listens: starting it binds a
//!   tokio `TcpListener` on `127.0.0.1:PORT` that answers every HTTP/1.1 request with `200 OK`
//!   (and closes the connection); stopping, killing, pausing or removing it drops the listener
//!   and every open connection. So a watcher's real readiness probe passes exactly while the
//!   backend runs. Binding needs a tokio runtime (the by-hand operations and the provider's
//!   calls run on one).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use idlewatcher::providers::fake::{FakeEngine, FakeOp};
//! use idlewatcher::providers::{BackendStatus, Provider};
//!
//! let engine = FakeEngine::new();
//! engine.create("web")?;
//! engine.listen_on("web", 18080)?;
//! let provider = engine.provider("web");
//! provider.start().await?;
//! assert_eq!(provider.status().await?, BackendStatus::Running);
//! assert_eq!(engine.calls("web").starts, 1);
//! engine.fail_next("web", FakeOp::Start, 1, "no space left on device");
//! engine.stop_by_hand("web")?;
//! assert!(provider.start().await.is_err());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, ReentrantMutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{BackendEvent, BackendHealth, BackendObserver, BackendStatus, Provider, ProviderError};

/// The body a listening fake backend answers with, after its name.
const ANSWER_BODY: &str = "fake backend is up\n";

/// Longest request head a listening fake backend reads before answering anyway.
const MAX_HEAD: usize = 16 * 1024;

/// One operation of a fake backend, as counted, delayed, failed and journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// [`Provider::status`].
    Status,
    /// [`Provider::start`].
    Start,
    /// [`Provider::stop`].
    Stop,
    /// [`Provider::kill`].
    Kill,
    /// [`Provider::pause`].
    Pause,
    /// [`Provider::unpause`].
    Unpause,
    /// [`Provider::address`].
    Address,
}

impl FakeOp {
    /// The operation's name as errors show it (`start`, `stop`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "inspect",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Address => "address",
        }
    }
}

/// How often each [`Provider`] method was called on one backend name (whatever the outcome,
/// injected failures included). Counts survive removal and recreation of the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeCalls {
    /// [`Provider::status`] calls.
    pub status: u32,
    /// [`Provider::start`] calls.
    pub starts: u32,
    /// [`Provider::stop`] calls.
    pub stops: u32,
    /// [`Provider::kill`] calls.
    pub kills: u32,
    /// [`Provider::pause`] calls.
    pub pauses: u32,
    /// [`Provider::unpause`] calls.
    pub unpauses: u32,
    /// [`Provider::address`] calls.
    pub addresses: u32,
    /// The signal of the last `stop` or `kill` call (`None`: the default, or no such call yet).
    pub last_signal: Option<String>,
    /// The timeout of the last `stop` call.
    pub last_stop_timeout: Option<Duration>,
}

impl FakeCalls {
    fn count(&mut self, op: FakeOp) {
        let counter = match op {
            FakeOp::Status => &mut self.status,
            FakeOp::Start => &mut self.starts,
            FakeOp::Stop => &mut self.stops,
            FakeOp::Kill => &mut self.kills,
            FakeOp::Pause => &mut self.pauses,
            FakeOp::Unpause => &mut self.unpauses,
            FakeOp::Address => &mut self.addresses,
        };
        *counter += 1;
    }
}

/// One provider call, in the order the engine received it across all backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// The backend's name.
    pub backend: String,
    /// What was called.
    pub op: FakeOp,
}

/// A by-hand operation on a [`FakeEngine`] that the backend's state does not allow, or a
/// backend's listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// No backend of that name exists.
    #[error("fake backend \"{0}\" does not exist")]
    NotFound(String),
    /// [`FakeEngine::create`] of a name already in use.
    #[error("fake backend \"{0}\" already exists")]
    AlreadyExists(String),
    /// The operation does not apply in the backend's current state (like Docker refusing to
    /// pause a stopped container).
    #[error("cannot {action} fake backend \"{backend}\": it is {status:?}")]
    InvalidState {
        /// The backend.
        backend: String,
        /// What was attempted.
        action: &'static str,
        /// Its status at the time.
        status: BackendStatus,
    },
    /// The backend's listener could not bind its port (or no tokio runtime was running).
    #[error("fake backend \"{backend}\" cannot listen on 127.0.0.1:{port}: {message}")]
    Listen {
        /// The backend.
        backend: String,
        /// The configured port.
        port: u16,
        /// Why.
        message: String,
    },
}

/// The knobs of one backend name; they survive removal and recreation (the same service).
#[derive(Debug, Default)]
struct Knobs {
    port: Option<u16>,
    delays: HashMap<FakeOp, Duration>,
    failures: HashMap<FakeOp, (u32, String)>,
    exit_after_start: bool,
    health: Option<BackendHealth>,
}

/// A backend that exists.
struct Backend {
    status: BackendStatus,
    listener: Option<Listening>,
}

/// The listening socket, shared by the backend (which closes it) and the task accepting on it.
type SharedListener = Arc<Mutex<Option<TcpListener>>>;

/// A bound listener and the task answering on it. Dropping it closes the listener at once (a
/// new one may bind the port right away) and ends the connections it accepted soon after.
struct Listening {
    socket: SharedListener,
    task: JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.socket.lock().take();
        self.task.abort();
    }
}

#[derive(Default)]
struct Registry {
    backends: HashMap<String, Backend>,
    knobs: HashMap<String, Knobs>,
    calls: HashMap<String, FakeCalls>,
    journal: Vec<FakeCall>,
    observers: HashMap<String, Vec<Arc<dyn BackendObserver>>>,
}

/// A registry of fake backends by name, shared through an [`Arc`]: the fake family's "engine"
/// and its event source in one. See the [module docs](self).
#[derive(Default)]
pub struct FakeEngine {
    registry: Mutex<Registry>,
    /// Held from before a change until its events are delivered, so observers see changes in
    /// the order they happened. Always taken before `registry`, and reentrant: an observer may
    /// look at the engine, or change it, from `observe`.
    delivery: ReentrantMutex<()>,
}

impl fmt::Debug for FakeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.registry.lock();
        let mut backends: Vec<(&String, BackendStatus)> = registry
            .backends
            .iter()
            .map(|(name, backend)| (name, backend.status))
            .collect();
        backends.sort_by_key(|(name, _)| *name);
        f.debug_struct("FakeEngine")
            .field("backends", &backends)
            .finish_non_exhaustive()
    }
}

/// Events to deliver once the registry lock is released.
type Pending = Vec<(Vec<Arc<dyn BackendObserver>>, BackendEvent)>;

impl FakeEngine {
    /// An engine with no backends.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Creates a stopped backend `name` (like `docker create`); tells its watchers
    /// [`BackendEvent::Created`].
    pub fn create(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| {
            if registry.backends.contains_key(name) {
                return Err(FakeError::AlreadyExists(name.to_string()));
            }
            registry.create(name, pending);
            Ok(())
        })
    }

    /// Whether backend `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.registry.lock().backends.contains_key(name)
    }

    /// The status of backend `name` as a look from outside sees it (no call is counted):
    /// [`BackendStatus::Missing`] when it does not exist.
    pub fn status(&self, name: &str) -> BackendStatus {
        self.registry
            .lock()
            .backends
            .get(name)
            .map_or(BackendStatus::Missing, |backend| backend.status)
    }

    /// Starts a stopped backend by hand (like `docker start`): [`BackendEvent::Started`]. A
    /// running backend is left alone; a paused one is an error (Docker says "try unpause").
    pub fn start_by_hand(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| match registry.status_of(name)? {
            BackendStatus::Running => Ok(()),
            BackendStatus::Stopped => registry.run(name, pending),
            status => Err(invalid(name, "start", status)),
        })
    }

    /// Stops a running or paused backend by hand (like `docker stop`): [`BackendEvent::Stopped`].
    /// A stopped backend is left alone.
    pub fn stop_by_hand(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| {
            match registry.status_of(name)? {
                BackendStatus::Running | BackendStatus::Paused => {
                    registry.set(name, BackendStatus::Stopped, pending)
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// Pauses a running backend by hand (like `docker pause`): [`BackendEvent::Stopped`]. Any
    /// other state is an error, as with Docker.
    pub fn pause_by_hand(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| match registry.status_of(name)? {
            BackendStatus::Running => {
                registry.set(name, BackendStatus::Paused, pending);
                Ok(())
            }
            status => Err(invalid(name, "pause", status)),
        })
    }

    /// Unpauses a paused backend by hand (like `docker unpause`): [`BackendEvent::Started`]. Any
    /// other state is an error, as with Docker.
    pub fn unpause_by_hand(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| match registry.status_of(name)? {
            BackendStatus::Paused => registry.run(name, pending),
            status => Err(invalid(name, "unpause", status)),
        })
    }

    /// Removes the backend whatever its state (like `docker rm -f`): [`BackendEvent::Stopped`]
    /// if it was running or paused, then [`BackendEvent::Removed`].
    pub fn remove(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| {
            registry.status_of(name)?;
            registry.remove(name, pending);
            Ok(())
        })
    }

    /// Removes the backend if it exists, then creates a stopped one of the same name and knobs
    /// (what `docker compose up` does when a service changes): the events of
    /// [`remove`](Self::remove), then [`BackendEvent::Created`].
    pub fn recreate(&self, name: &str) -> Result<(), FakeError> {
        self.change(|registry, pending| {
            if registry.backends.contains_key(name) {
                registry.remove(name, pending);
            }
            registry.create(name, pending);
            Ok(())
        })
    }

    /// Delivers `observer` every event of backend `name` from now on (the name need not exist
    /// yet), starting with [`BackendEvent::Resync`] of its current status. Several observers may
    /// watch one name; each gets every event. Observers must not block.
    pub fn watch(&self, name: &str, observer: Arc<dyn BackendObserver>) {
        let _delivering = self.delivery.lock();
        let status = {
            let mut registry = self.registry.lock();
            registry
                .observers
                .entry(name.to_string())
                .or_default()
                .push(observer.clone());
            registry
                .backends
                .get(name)
                .map_or(BackendStatus::Missing, |backend| backend.status)
        };
        observer.observe(BackendEvent::Resync(status));
    }

    /// Delivers [`BackendEvent::Resync`] with the current status to every watcher of `name`, as
    /// an event stream does after it reconnected.
    pub fn resync(&self, name: &str) {
        let _: Result<(), FakeError> = self.change(|registry, pending| {
            let status = registry
                .backends
                .get(name)
                .map_or(BackendStatus::Missing, |backend| backend.status);
            registry.notify(name, BackendEvent::Resync(status), pending);
            Ok(())
        });
    }

    /// A [`Provider`] for backend `name` (which need not exist yet).
    pub fn provider(self: &Arc<Self>, name: &str) -> FakeProvider {
        FakeProvider {
            engine: Arc::clone(self),
            name: name.to_string(),
            describe: format!("fake backend \"{name}\""),
        }
    }

    /// From now on, starting backend `name` (by hand or through its provider) also makes it
    /// listen on `127.0.0.1:port`, answering `200 OK` to every HTTP/1.1 request until it stops.
    /// If it is running already, it starts listening now.
    pub fn listen_on(&self, name: &str, port: u16) -> Result<(), FakeError> {
        let mut registry = self.registry.lock();
        registry.knobs.entry(name.to_string()).or_default().port = Some(port);
        let running = registry
            .backends
            .get(name)
            .is_some_and(|backend| backend.status == BackendStatus::Running);
        if running {
            let listening = listen(name, port)?;
            if let Some(backend) = registry.backends.get_mut(name) {
                backend.listener = Some(listening);
            }
        }
        Ok(())
    }

    /// Makes every later `op` call on backend `name` take `delay` before it acts (a slow start,
    /// a slow stop…); `Duration::ZERO` removes the delay.
    pub fn set_delay(&self, name: &str, op: FakeOp, delay: Duration) {
        let mut registry = self.registry.lock();
        let knobs = registry.knobs.entry(name.to_string()).or_default();
        if delay.is_zero() {
            knobs.delays.remove(&op);
        } else {
            knobs.delays.insert(op, delay);
        }
    }

    /// Makes the next `count` `op` calls on backend `name` fail with
    /// [`ProviderError::Api`] carrying `message`, changing nothing (as when the engine refuses).
    /// Replaces an earlier setting for the same operation; a count of 0 clears it.
    pub fn fail_next(&self, name: &str, op: FakeOp, count: u32, message: &str) {
        let mut registry = self.registry.lock();
        let knobs = registry.knobs.entry(name.to_string()).or_default();
        if count == 0 {
            knobs.failures.remove(&op);
        } else {
            knobs.failures.insert(op, (count, message.to_string()));
        }
    }

    /// When `exits` is true, backend `name`'s process exits right after every start (by hand
    /// or through its provider): the start succeeds and reports [`BackendEvent::Started`], then
    /// the backend is stopped again at once ([`BackendEvent::Stopped`]), like a container whose
    /// command fails.
    pub fn exit_after_start(&self, name: &str, exits: bool) {
        let mut registry = self.registry.lock();
        registry
            .knobs
            .entry(name.to_string())
            .or_default()
            .exit_after_start = exits;
    }

    /// Sets what backend `name`'s own health check reports while it runs (`None`: it has no
    /// health check, the default), like a container with a `HEALTHCHECK`.
    pub fn set_health(&self, name: &str, health: Option<BackendHealth>) {
        self.registry
            .lock()
            .knobs
            .entry(name.to_string())
            .or_default()
            .health = health;
    }

    /// How often each provider method was called on backend `name`.
    pub fn calls(&self, name: &str) -> FakeCalls {
        self.registry
            .lock()
            .calls
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Every provider call so far, across backends, in the order they were received.
    pub fn journal(&self) -> Vec<FakeCall> {
        self.registry.lock().journal.clone()
    }

    /// Runs `change` on the registry, then delivers the events it queued, in order and after
    /// the registry is unlocked (an observer may look at the engine).
    fn change<T, E>(
        &self,
        change: impl FnOnce(&mut Registry, &mut Pending) -> Result<T, E>,
    ) -> Result<T, E> {
        let _delivering = self.delivery.lock();
        let mut pending = Pending::new();
        let result = change(&mut self.registry.lock(), &mut pending);
        for (observers, event) in pending {
            for observer in observers {
                observer.observe(event.clone());
            }
        }
        result
    }

    /// Counts and journals a provider call, then waits out its delay and consumes an injected
    /// failure, if any.
    async fn enter(&self, name: &str, describe: &str, op: FakeOp) -> Result<(), ProviderError> {
        let delay = {
            let mut registry = self.registry.lock();
            registry
                .calls
                .entry(name.to_string())
                .or_default()
                .count(op);
            registry.journal.push(FakeCall {
                backend: name.to_string(),
                op,
            });
            registry
                .knobs
                .get(name)
                .and_then(|knobs| knobs.delays.get(&op).copied())
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut registry = self.registry.lock();
        let Some(knobs) = registry.knobs.get_mut(name) else {
            return Ok(());
        };
        let Some((left, message)) = knobs.failures.get_mut(&op) else {
            return Ok(());
        };
        let error = ProviderError::Api {
            action: op.as_str(),
            backend: describe.to_string(),
            message: message.clone(),
        };
        *left -= 1;
        if *left == 0 {
            knobs.failures.remove(&op);
        }
        Err(error)
    }
}

impl Registry {
    /// The status of an existing backend.
    fn status_of(&self, name: &str) -> Result<BackendStatus, FakeError> {
        self.backends
            .get(name)
            .map(|backend| backend.status)
            .ok_or_else(|| FakeError::NotFound(name.to_string()))
    }

    /// Queues `event` for every watcher of `name`.
    fn notify(&self, name: &str, event: BackendEvent, pending: &mut Pending) {
        if let Some(observers) = self.observers.get(name) {
            if !observers.is_empty() {
                pending.push((observers.clone(), event));
            }
        }
    }

    fn create(&mut self, name: &str, pending: &mut Pending) {
        self.backends.insert(
            name.to_string(),
            Backend {
                status: BackendStatus::Stopped,
                listener: None,
            },
        );
        self.notify(name, BackendEvent::Created, pending);
    }

    fn remove(&mut self, name: &str, pending: &mut Pending) {
        if let Some(backend) = self.backends.remove(name) {
            if backend.status != BackendStatus::Stopped {
                self.notify(name, BackendEvent::Stopped, pending);
            }
            self.notify(name, BackendEvent::Removed, pending);
        }
    }

    /// Moves an existing backend to `status` (not running), dropping its listener.
    fn set(&mut self, name: &str, status: BackendStatus, pending: &mut Pending) {
        if let Some(backend) = self.backends.get_mut(name) {
            backend.status = status;
            backend.listener = None;
            self.notify(name, BackendEvent::Stopped, pending);
        }
    }

    /// Runs an existing, stopped or paused backend: listens if configured, reports `Started`,
    /// and exits again at once if configured to.
    fn run(&mut self, name: &str, pending: &mut Pending) -> Result<(), FakeError> {
        let knobs = self.knobs.get(name);
        let exits = knobs.is_some_and(|knobs| knobs.exit_after_start);
        let listener = match knobs.and_then(|knobs| knobs.port) {
            Some(port) if !exits => Some(listen(name, port)?),
            _ => None,
        };
        let Some(backend) = self.backends.get_mut(name) else {
            return Err(FakeError::NotFound(name.to_string()));
        };
        backend.status = BackendStatus::Running;
        backend.listener = listener;
        self.notify(name, BackendEvent::Started, pending);
        if exits {
            self.set(name, BackendStatus::Stopped, pending);
        }
        Ok(())
    }
}

fn invalid(name: &str, action: &'static str, status: BackendStatus) -> FakeError {
    FakeError::InvalidState {
        backend: name.to_string(),
        action,
        status,
    }
}

/// Binds `127.0.0.1:port` and answers every HTTP/1.1 request on it with `200 OK`.
fn listen(name: &str, port: u16) -> Result<Listening, FakeError> {
    let failed = |message: String| FakeError::Listen {
        backend: name.to_string(),
        port,
        message,
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| failed(e.to_string()))?;
    let std_listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .map_err(|e| failed(e.to_string()))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| failed(e.to_string()))?;
    let body = format!("{name}: {ANSWER_BODY}");
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(std_listener).map_err(|e| failed(e.to_string()))?
    };
    let socket: SharedListener = Arc::new(Mutex::new(Some(listener)));
    let task = runtime.spawn(serve(Arc::clone(&socket), body));
    Ok(Listening { socket, task })
}

/// Accepts connections until the listener is taken away (or the task aborted); the
/// connections die with it.
async fn serve(socket: SharedListener, body: String) {
    let mut connections = JoinSet::new();
    loop {
        // The lock is held only while polling, never across an await: the backend can take the
        // listener (and so close it) at any moment.
        let accepted = std::future::poll_fn(|cx| match socket.lock().as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        });
        tokio::select! {
            accepted = accepted => match accepted {
                None => return,
                Some(Ok((stream, _))) => {
                    connections.spawn(answer(stream, body.clone()));
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "fake backend: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Reads one request head and answers `200 OK` with `body`, then closes.
async fn answer(mut stream: TcpStream, body: String) {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The [`Provider`] of one fake backend name; see the [module docs](self) for its semantics.
/// Cheap to clone.
#[derive(Clone)]
pub struct FakeProvider {
    engine: Arc<FakeEngine>,
    name: String,
    describe: String,
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine this provider drives.
    pub fn engine(&self) -> &Arc<FakeEngine> {
        &self.engine
    }

    fn not_found(&self) -> ProviderError {
        ProviderError::NotFound {
            backend: self.describe.clone(),
        }
    }

    /// Counts the call, waits its delay, applies an injected failure, then runs `change` on the
    /// registry and delivers its events.
    async fn call<T>(
        &self,
        op: FakeOp,
        change: impl FnOnce(&mut Registry, &mut Pending) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.engine.enter(&self.name, &self.describe, op).await?;
        self.engine.change(change)
    }

    /// Stops a running or paused backend (`stop` and `kill` alike: the fake has no signals).
    async fn halt(
        &self,
        op: FakeOp,
        signal: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(), ProviderError> {
        {
            let mut registry = self.engine.registry.lock();
            let calls = registry.calls.entry(self.name.clone()).or_default();
            calls.last_signal = signal.map(str::to_string);
            if timeout.is_some() {
                calls.last_stop_timeout = timeout;
            }
        }
        self.call(op, |registry, pending| {
            match registry
                .status_of(&self.name)
                .map_err(|_| self.not_found())?
            {
                BackendStatus::Running | BackendStatus::Paused => {
                    registry.set(&self.name, BackendStatus::Stopped, pending)
                }
                _ => {}
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn noun(&self) -> &'static str {
        "container"
    }

    fn describe(&self) -> &str {
        &self.describe
    }

    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        self.call(FakeOp::Status, |registry, _| {
            Ok(registry
                .backends
                .get(&self.name)
                .map_or(BackendStatus::Missing, |backend| backend.status))
        })
        .await
    }

    async fn start(&self) -> Result<(), ProviderError> {
        self.call(FakeOp::Start, |registry, pending| {
            match registry
                .status_of(&self.name)
                .map_err(|_| self.not_found())?
            {
                BackendStatus::Running => Ok(()),
                BackendStatus::Stopped | BackendStatus::Paused => registry
                    .run(&self.name, pending)
                    .map_err(|e| ProviderError::Api {
                        action: "start",
                        backend: self.describe.clone(),
                        message: e.to_string(),
                    }),
                BackendStatus::Missing => Err(self.not_found()),
            }
        })
        .await
    }

    async fn stop(&self, signal: Option<&str>, timeout: Duration) -> Result<(), ProviderError> {
        self.halt(FakeOp::Stop, signal, Some(timeout)).await
    }

    async fn kill(&self, signal: Option<&str>) -> Result<(), ProviderError> {
        self.halt(FakeOp::Kill, signal, None).await
    }

    async fn pause(&self) -> Result<(), ProviderError> {
        self.call(FakeOp::Pause, |registry, pending| {
            match registry
                .status_of(&self.name)
                .map_err(|_| self.not_found())?
            {
                BackendStatus::Running => {
                    registry.set(&self.name, BackendStatus::Paused, pending);
                    Ok(())
                }
                // Already paused, or stopped: as asleep as it gets (Docker's provider agrees).
                _ => Ok(()),
            }
        })
        .await
    }

    async fn unpause(&self) -> Result<(), ProviderError> {
        self.call(FakeOp::Unpause, |registry, pending| {
            match registry
                .status_of(&self.name)
                .map_err(|_| self.not_found())?
            {
                BackendStatus::Paused => {
                    registry
                        .run(&self.name, pending)
                        .map_err(|e| ProviderError::Api {
                            action: "unpause",
                            backend: self.describe.clone(),
                            message: e.to_string(),
                        })
                }
                BackendStatus::Running => Ok(()),
                // A wake that leaves the backend stopped must fail, as with Docker.
                _ => Err(ProviderError::Api {
                    action: "unpause",
                    backend: self.describe.clone(),
                    message: "the backend is not paused".to_string(),
                }),
            }
        })
        .await
    }

    async fn health(&self) -> Result<Option<BackendHealth>, ProviderError> {
        let registry = self.engine.registry.lock();
        if !registry.backends.contains_key(&self.name) {
            return Err(self.not_found());
        }
        Ok(registry
            .knobs
            .get(&self.name)
            .and_then(|knobs| knobs.health.clone()))
    }

    async fn address(&self) -> Result<IpAddr, ProviderError> {
        self.call(FakeOp::Address, |registry, _| {
            match registry
                .status_of(&self.name)
                .map_err(|_| self.not_found())?
            {
                BackendStatus::Running | BackendStatus::Paused => {
                    Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
                }
                _ => Err(ProviderError::NoAddress {
                    backend: self.describe.clone(),
                }),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<BackendEvent>>);

    impl BackendObserver for Seen {
        fn observe(&self, event: BackendEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[tokio::test]
    async fn by_hand_changes_are_observed_in_order() {
        let engine = FakeEngine::new();
        let seen = Arc::new(Seen::default());
        engine.watch("web", seen.clone());
        engine.create("web").unwrap();
        engine.start_by_hand("web").unwrap();
        engine.pause_by_hand("web").unwrap();
        assert!(engine.start_by_hand("web").is_err(), "paused: unpause it");
        engine.unpause_by_hand("web").unwrap();
        engine.remove("web").unwrap();
        engine.recreate("web").unwrap();
        use BackendEvent::*;
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![
                Resync(BackendStatus::Missing),
                Created,
                Started,
                Stopped,
                Started,
                Stopped,
                Removed,
                Created
            ]
        );
        assert!(matches!(
            engine.pause_by_hand("web"),
            Err(FakeError::InvalidState { .. })
        ));
        assert!(matches!(
            engine.stop_by_hand("nope"),
            Err(FakeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn knobs_count_fail_and_delay() {
        let engine = FakeEngine::new();
        engine.create("db").unwrap();
        let provider = engine.provider("db");
        engine.fail_next("db", FakeOp::Start, 2, "boom");
        for _ in 0..2 {
            let err = provider.start().await.unwrap_err();
            assert!(err.to_string().contains("boom"), "{err}");
        }
        assert_eq!(engine.status("db"), BackendStatus::Stopped);
        engine.set_delay("db", FakeOp::Start, Duration::from_millis(50));
        let began = std::time::Instant::now();
        provider.start().await.unwrap();
        assert!(began.elapsed() >= Duration::from_millis(50));
        assert_eq!(engine.status("db"), BackendStatus::Running);
        provider
            .stop(Some("SIGINT"), Duration::from_secs(3))
            .await
            .unwrap();
        let calls = engine.calls("db");
        assert_eq!((calls.starts, calls.stops), (3, 1));
        assert_eq!(calls.last_signal.as_deref(), Some("SIGINT"));
        assert_eq!(calls.last_stop_timeout, Some(Duration::from_secs(3)));
        assert_eq!(engine.journal().len(), 4);
    }

    #[tokio::test]
    async fn a_listening_backend_answers_only_while_running() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let engine = FakeEngine::new();
        engine.create("web").unwrap();
        engine.listen_on("web", port).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(TcpStream::connect(addr).await.is_err());
        engine.start_by_hand("web").unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        engine.stop_by_hand("web").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "closed at once");
        // Restarted at once: the port is free again.
        engine.start_by_hand("web").unwrap();
        engine.stop_by_hand("web").unwrap();
        engine.start_by_hand("web").unwrap();
        assert!(TcpStream::connect(addr).await.is_ok(), "listens again");
    }
}
