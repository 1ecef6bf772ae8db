//! Docker provider: drives one container through the engine API (bollard), and one shared
//! `/events` stream that tells every watcher what happened to its container from outside.
//!
//! * [`connect`] opens a client and negotiates the API version, so older engines (this code is
//!   tested against engine 20.10, API 1.41) and Podman's Docker-compatible API work.
//! * [`DockerProvider`] implements [`Provider`] for one container, named by name or id exactly
//!   as the user configured it. Every call goes to the engine (no cached state): the engine is
//!   the source of truth, and a container may be changed by hand at any moment.
//! * [`DockerEvents`] is the single event source for all Docker backends: one `/events`
//!   subscription, matched to watchers by name or id, with a resync on every (re)connect so a
//!   watcher never keeps a stale view after the stream was down.
//!
//! Engine quirks handled here:
//! * `POST /containers/{id}/stop` has no `signal` parameter before API 1.42; when a stop signal is
//!   configured and the negotiated version is older, the stop is emulated (kill with the signal,
//!   wait for the exit up to the timeout, then `SIGKILL`).
//! * "Already in that state" answers (304 for start/stop, 409 for pause/unpause/kill) are treated
//!   as success after checking the container's actual state, so a provider call is idempotent.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings, EventMessage,
};
use bollard::query_parameters::{
    EventsOptions, KillContainerOptions, StartContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use futures_util::{stream, StreamExt};
use tokio::sync::watch;

use super::{BackendEvent, BackendObserver, BackendStatus, Provider, ProviderError};

/// The first API version whose `stop` endpoint accepts a `signal` parameter.
const STOP_SIGNAL_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 42,
};

/// How long to wait for a container to disappear after `SIGKILL` in an emulated stop.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// Margin added to bollard's per-request timeout for calls that legitimately take as long as the
/// stop timeout (the engine answers `stop` only once the container is down).
const SLOW_CALL_MARGIN: Duration = Duration::from_secs(30);

/// bollard's default per-request timeout (its `DEFAULT_TIMEOUT` is private).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The platform's default engine socket, as bollard uses it when `DOCKER_HOST` is unset.
#[cfg(unix)]
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
#[cfg(windows)]
const DEFAULT_SOCKET: &str = "npipe:////./pipe/docker_engine";

/// Interval of the inspect polling used when the engine's `wait` endpoint is unusable.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Connects to a Docker (or Podman-compatible) engine and negotiates the API version.
///
/// `host` is `unix:///var/run/docker.sock`, a bare socket path, `tcp://h:2375` or
/// `http://h:2375`; `None` means `DOCKER_HOST`, else the platform default socket. Negotiation
/// downgrades the client to the engine's API version, so calls never use a newer API than the
/// engine speaks (and [`DockerProvider::stop`] knows whether it must emulate stop signals).
pub async fn connect(host: Option<&str>) -> Result<Docker, ProviderError> {
    let from_env = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let (client, shown) = match host {
        Some(h) if h.starts_with('/') => (
            Docker::connect_with_host(&format!("unix://{h}")),
            format!("Docker engine at unix://{h}"),
        ),
        Some(h) => (
            Docker::connect_with_host(h),
            format!("Docker engine at {h}"),
        ),
        None => (
            Docker::connect_with_defaults(),
            match from_env {
                Some(h) => format!("Docker engine at {h} (DOCKER_HOST)"),
                None => format!("Docker engine at {DEFAULT_SOCKET}"),
            },
        ),
    };
    let client = client.map_err(|e| ProviderError::Api {
        action: "connect to",
        backend: shown.clone(),
        message: e.to_string(),
    })?;
    let client = client
        .negotiate_version()
        .await
        .map_err(|e| ProviderError::Api {
            // The first request: this is where an unreachable engine shows.
            action: "connect to",
            backend: shown.clone(),
            message: e.to_string(),
        })?;
    let version = client.client_version();
    tracing::info!(engine = %shown, api = %version, "connected to the Docker engine");
    Ok(client)
}

/// The configured container reference as the engine expects it (names without the leading `/`
/// that `docker inspect` shows).
fn normalize_ref(container: &str) -> &str {
    container.strip_prefix('/').unwrap_or(container)
}

/// One Docker container driven as an idlewatcher backend.
///
/// Cheap to clone the underlying client; holds no state besides the reference, so it is always
/// in step with changes made by hand.
#[derive(Clone)]
pub struct DockerProvider {
    docker: Docker,
    container: String,
    describe: String,
}

impl fmt::Debug for DockerProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerProvider")
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl DockerProvider {
    /// A provider for the container named or identified by `container` (as configured; a leading
    /// `/` is ignored). Nothing is checked here: the container may not exist yet.
    pub fn new(docker: Docker, container: &str) -> Self {
        let container = normalize_ref(container).to_string();
        let describe = format!("docker container \"{container}\"");
        Self {
            docker,
            container,
            describe,
        }
    }

    /// Maps an engine failure to a [`ProviderError`] naming this container and the action.
    fn error(&self, action: &'static str, err: DockerError) -> ProviderError {
        map_error(action, &self.describe, err)
    }

    /// Inspects the container; `Ok(None)` when it does not exist.
    async fn inspect(&self) -> Result<Option<ContainerInspectResponse>, ProviderError> {
        inspect_ref(&self.docker, &self.container, &self.describe).await
    }

    /// Whether the negotiated API has `stop?signal=`.
    fn has_stop_signal(&self) -> bool {
        self.docker.client_version() >= STOP_SIGNAL_API
    }

    /// A client whose request timeout covers a call lasting up to `longest`.
    fn client_for(&self, longest: Duration) -> Docker {
        let needed = longest.saturating_add(SLOW_CALL_MARGIN);
        if needed > self.docker.timeout() && needed > DEFAULT_REQUEST_TIMEOUT {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        }
    }

    /// Sends `signal`; a container that is not running counts as done (`Ok(false)`), a paused one
    /// is thawed first so the signal is delivered at once.
    async fn signal(&self, action: &'static str, signal: &str) -> Result<bool, ProviderError> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        let first = match self
            .docker
            .kill_container(&self.container, Some(options.clone()))
            .await
        {
            Ok(()) => return Ok(true),
            Err(e) if http_status(&e) == Some(404) => return Err(self.error(action, e)),
            Err(e) => e,
        };
        // 409 "is not running" on Docker, other codes elsewhere: decide from the real state.
        match self.status().await? {
            BackendStatus::Stopped => Ok(false),
            BackendStatus::Missing => Err(ProviderError::NotFound {
                backend: self.describe.clone(),
            }),
            BackendStatus::Paused => {
                self.unpause().await?;
                match self
                    .docker
                    .kill_container(&self.container, Some(options))
                    .await
                {
                    Ok(()) => Ok(true),
                    Err(e) => Err(self.error(action, e)),
                }
            }
            _ => Err(self.error(action, first)),
        }
    }

    /// Waits until the container is no longer running, at most `limit`. `Ok(true)` when it
    /// stopped (or vanished), `Ok(false)` on timeout.
    async fn wait_stopped(&self, limit: Duration) -> Result<bool, ProviderError> {
        let deadline = Instant::now() + limit;
        let waiter = self.client_for(limit);
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut wait = waiter.wait_container(&self.container, Some(options));
        match tokio::time::timeout(limit, wait.next()).await {
            Err(_) => return Ok(false),
            // A non-zero exit code comes back as an error, but it is an exit all the same.
            Ok(Some(Ok(_))) | Ok(Some(Err(DockerError::DockerContainerWaitError { .. }))) => {
                return Ok(true)
            }
            Ok(Some(Err(e))) if http_status(&e) == Some(404) => return Ok(true),
            Ok(Some(Err(e))) => {
                tracing::debug!(
                    container = %self.container,
                    error = %e,
                    "wait endpoint failed; polling the container state instead"
                );
            }
            Ok(None) => {}
        }
        loop {
            match self.status().await? {
                BackendStatus::Stopped | BackendStatus::Missing => return Ok(true),
                BackendStatus::Running | BackendStatus::Paused => {}
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `stop` for engines without `stop?signal=`: signal, wait up to `timeout`, then `SIGKILL`.
    async fn emulated_stop(&self, signal: &str, timeout: Duration) -> Result<(), ProviderError> {
        if !self.signal("stop", signal).await? {
            return Ok(());
        }
        if self.wait_stopped(timeout).await? {
            return Ok(());
        }
        tracing::debug!(
            container = %self.container,
            signal,
            ?timeout,
            "container ignored the stop signal; sending SIGKILL"
        );
        if !self.signal("stop", "SIGKILL").await? {
            return Ok(());
        }
        if self.wait_stopped(KILL_GRACE).await? {
            Ok(())
        } else {
            Err(ProviderError::Api {
                action: "stop",
                backend: self.describe.clone(),
                message: format!("still running {KILL_GRACE:?} after SIGKILL"),
            })
        }
    }
}

#[async_trait]
impl Provider for DockerProvider {
    fn describe(&self) -> &str {
        &self.describe
    }

    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        Ok(match self.inspect().await? {
            Some(info) => status_of(&info),
            None => BackendStatus::Missing,
        })
    }

    async fn start(&self) -> Result<(), ProviderError> {
        let options: Option<StartContainerOptions> = None;
        let err = match self.docker.start_container(&self.container, options).await {
            // 304 (already started) is a success for bollard too.
            Ok(()) => return Ok(()),
            Err(e) if http_status(&e) == Some(404) => return Err(self.error("start", e)),
            Err(e @ DockerError::DockerResponseServerError { .. }) => e,
            Err(e) => return Err(self.error("start", e)),
        };
        // "cannot start a paused container, try unpause instead" (409), or a race with someone
        // else starting it: decide from the real state.
        match self.status().await? {
            BackendStatus::Paused => self.unpause().await,
            BackendStatus::Running => Ok(()),
            BackendStatus::Missing => Err(ProviderError::NotFound {
                backend: self.describe.clone(),
            }),
            BackendStatus::Stopped => Err(self.error("start", err)),
        }
    }

    async fn stop(&self, signal: Option<&str>, timeout: Duration) -> Result<(), ProviderError> {
        match signal {
            Some(signal) if !self.has_stop_signal() => self.emulated_stop(signal, timeout).await,
            _ => {
                let options = StopContainerOptions {
                    signal: signal.map(str::to_string),
                    t: Some(whole_seconds(timeout)),
                };
                match self
                    .client_for(timeout)
                    .stop_container(&self.container, Some(options))
                    .await
                {
                    // 304 (already stopped) is a success for bollard too.
                    Ok(()) => Ok(()),
                    Err(e) if http_status(&e) == Some(404) => Err(self.error("stop", e)),
                    Err(e @ DockerError::DockerResponseServerError { .. }) => {
                        match self.status().await? {
                            BackendStatus::Stopped => Ok(()),
                            _ => Err(self.error("stop", e)),
                        }
                    }
                    Err(e) => Err(self.error("stop", e)),
                }
            }
        }
    }

    async fn kill(&self, signal: Option<&str>) -> Result<(), ProviderError> {
        self.signal("kill", signal.unwrap_or("SIGKILL"))
            .await
            .map(|_| ())
    }

    async fn pause(&self) -> Result<(), ProviderError> {
        let err = match self.docker.pause_container(&self.container).await {
            Ok(()) => return Ok(()),
            Err(e) if http_status(&e) == Some(404) => return Err(self.error("pause", e)),
            Err(e @ DockerError::DockerResponseServerError { .. }) => e,
            Err(e) => return Err(self.error("pause", e)),
        };
        // 409 "already paused" is success. A stopped container is as asleep as it gets: also
        // success, so an idle stop never fails because someone stopped the container by hand
        // (waking uses `start`, which handles both states).
        match self.status().await? {
            BackendStatus::Paused | BackendStatus::Stopped => Ok(()),
            BackendStatus::Missing => Err(ProviderError::NotFound {
                backend: self.describe.clone(),
            }),
            BackendStatus::Running => Err(self.error("pause", err)),
        }
    }

    async fn unpause(&self) -> Result<(), ProviderError> {
        let err = match self.docker.unpause_container(&self.container).await {
            Ok(()) => return Ok(()),
            Err(e) if http_status(&e) == Some(404) => return Err(self.error("unpause", e)),
            Err(e @ DockerError::DockerResponseServerError { .. }) => e,
            Err(e) => return Err(self.error("unpause", e)),
        };
        // 409 "is not paused": success only if it is actually running (a wake that leaves the
        // container stopped must fail).
        match self.status().await? {
            BackendStatus::Running => Ok(()),
            BackendStatus::Missing => Err(ProviderError::NotFound {
                backend: self.describe.clone(),
            }),
            BackendStatus::Paused | BackendStatus::Stopped => Err(self.error("unpause", err)),
        }
    }

    async fn address(&self) -> Result<IpAddr, ProviderError> {
        let mut reference = self.container.clone();
        // `network_mode: container:<other>` shares the other container's stack: follow it, a few
        // hops at most (a loop would be a broken setup anyway).
        for _ in 0..4 {
            let info = inspect_ref(&self.docker, &reference, &self.describe)
                .await?
                .ok_or_else(|| ProviderError::NotFound {
                    backend: self.describe.clone(),
                })?;
            let mode = info
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.as_deref())
                .unwrap_or("");
            if mode == "host" {
                return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            if let Some(other) = mode.strip_prefix("container:") {
                reference = other.to_string();
                continue;
            }
            let networks = info
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref());
            return networks
                .and_then(pick_address)
                .ok_or_else(|| ProviderError::NoAddress {
                    backend: self.describe.clone(),
                });
        }
        Err(ProviderError::NoAddress {
            backend: self.describe.clone(),
        })
    }
}

/// Inspects `reference`; `Ok(None)` on 404.
async fn inspect_ref(
    docker: &Docker,
    reference: &str,
    describe: &str,
) -> Result<Option<ContainerInspectResponse>, ProviderError> {
    match docker.inspect_container(reference, None).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if http_status(&e) == Some(404) => Ok(None),
        Err(e) => Err(map_error("inspect", describe, e)),
    }
}

/// The engine's HTTP status for an error answer, if the error is one.
fn http_status(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps a bollard error: 404 → [`ProviderError::NotFound`], anything else →
/// [`ProviderError::Api`] with the engine's own message (or the transport failure).
fn map_error(action: &'static str, backend: &str, err: DockerError) -> ProviderError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => ProviderError::NotFound {
            backend: backend.to_string(),
        },
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => ProviderError::Api {
            action,
            backend: backend.to_string(),
            message: if message.trim().is_empty() {
                format!("the engine answered HTTP {status_code}")
            } else {
                message.trim().to_string()
            },
        },
        other => ProviderError::Api {
            action,
            backend: backend.to_string(),
            message: other.to_string(),
        },
    }
}

/// The [`BackendStatus`] of an inspected container.
fn status_of(info: &ContainerInspectResponse) -> BackendStatus {
    let Some(state) = info.state.as_ref() else {
        return BackendStatus::Stopped;
    };
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::RESTARTING) => {
            BackendStatus::Running
        }
        Some(ContainerStateStatusEnum::PAUSED) => BackendStatus::Paused,
        // `stopping` (Podman) is on its way down: a wake has to start it again.
        Some(
            ContainerStateStatusEnum::CREATED
            | ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::REMOVING
            | ContainerStateStatusEnum::STOPPING,
        ) => BackendStatus::Stopped,
        // No status string (very old or odd engines): use the flags.
        Some(ContainerStateStatusEnum::EMPTY) | None => {
            if state.paused == Some(true) {
                BackendStatus::Paused
            } else if state.running == Some(true) || state.restarting == Some(true) {
                BackendStatus::Running
            } else {
                BackendStatus::Stopped
            }
        }
    }
}

/// Picks the address to reach a container by: IPv4 before IPv6, and among networks `bridge`
/// first, then by network name, so the choice is stable across calls and restarts.
fn pick_address(networks: &HashMap<String, EndpointSettings>) -> Option<IpAddr> {
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort_by_key(|name| (name.as_str() != "bridge", name.as_str()));
    let parse = |s: Option<&String>| -> Option<IpAddr> {
        s.map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse::<IpAddr>().ok())
    };
    let v4 = names.iter().find_map(|name| {
        parse(networks[*name].ip_address.as_ref()).filter(|ip| ip.is_ipv4() && !ip.is_unspecified())
    });
    v4.or_else(|| {
        names.iter().find_map(|name| {
            parse(networks[*name].global_ipv6_address.as_ref()).filter(|ip| !ip.is_unspecified())
        })
    })
}

/// A [`Duration`] as the whole seconds the engine takes, rounded up (a 1.5 s grace period must
/// not become 1 s).
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// First delay before reconnecting the event stream.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream that stayed up this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_PERIOD: Duration = Duration::from_secs(10);
/// How far back `since` reaches on subscription, so events between the subscription reaching
/// the engine and the resync are replayed rather than lost. Measured on this host's clock: an
/// engine on another host whose clock is ahead by more than this could skip the few events of
/// that window (the resync still reports the state right after).
const SINCE_MARGIN: Duration = Duration::from_secs(1);
/// Containers inspected at once during a resync.
const RESYNC_CONCURRENCY: usize = 8;
/// The engine actions that matter to a watcher.
const ACTIONS: [&str; 6] = ["start", "unpause", "die", "pause", "destroy", "create"];

/// One watched container and everyone watching it.
struct Watched {
    /// As configured (leading `/` stripped).
    reference: String,
    /// The reference may be an id (prefix): 12 to 64 lowercase hex digits.
    maybe_id: bool,
    /// The full id of the container currently bearing the reference, learned at resync or from
    /// an event matched by name; lets events without a `name` attribute match too.
    learned_id: Option<String>,
    /// Everyone to tell.
    observers: Vec<Arc<dyn BackendObserver>>,
}

impl Watched {
    /// Whether an event about container `id` (named `name`, if the engine said) is for us, and
    /// whether the match was by name.
    fn matches(&self, id: &str, name: Option<&str>) -> Option<bool> {
        if name.map(normalize_ref) == Some(self.reference.as_str()) {
            return Some(true);
        }
        if !id.is_empty()
            && ((self.maybe_id && id.starts_with(&self.reference))
                || self.learned_id.as_deref() == Some(id))
        {
            return Some(false);
        }
        None
    }

    fn deliver(&self, event: &BackendEvent) {
        for observer in &self.observers {
            observer.observe(event.clone());
        }
    }
}

/// Why an event-stream session ended.
enum Disconnect {
    /// The stream failed.
    Stream(DockerError),
    /// The engine closed the stream.
    Ended,
    /// The resync could not inspect a container.
    Resync(ProviderError),
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Stream(e) => write!(f, "stream error: {e}"),
            Disconnect::Ended => f.write_str("the engine closed the stream"),
            Disconnect::Resync(e) => write!(f, "resync failed: {e}"),
        }
    }
}

/// The single Docker event source: one `/events` subscription for every watched container.
///
/// Register containers with [`watch`](Self::watch), then spawn [`run`](Self::run). External
/// changes (a container started, stopped, paused, removed or recreated by hand) reach the
/// observers as [`BackendEvent`]s; each (re)connect first delivers
/// [`BackendEvent::Resync`] with the container's current status, so nothing missed while the
/// stream was down leaves a watcher with a stale view.
pub struct DockerEvents {
    docker: Docker,
    watched: Vec<Watched>,
    /// Position in `watched` of each reference (start-up stays linear in the routes).
    positions: HashMap<String, usize>,
}

impl fmt::Debug for DockerEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerEvents")
            .field(
                "watched",
                &self
                    .watched
                    .iter()
                    .map(|w| w.reference.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl DockerEvents {
    /// An event source on `docker` (from [`connect`]) watching nothing yet.
    pub fn new(docker: Docker) -> Self {
        Self {
            docker,
            watched: Vec::new(),
            positions: HashMap::new(),
        }
    }

    /// Delivers the events of `container` (a name or an id, full or a prefix of at least 12
    /// characters, as configured) to `observer`. Several observers may watch one container; each
    /// gets every event.
    pub fn watch(&mut self, container: &str, observer: Arc<dyn BackendObserver>) {
        let reference = normalize_ref(container);
        if let Some(&at) = self.positions.get(reference) {
            self.watched[at].observers.push(observer);
            return;
        }
        self.positions
            .insert(reference.to_string(), self.watched.len());
        self.watched.push(Watched {
            reference: reference.to_string(),
            maybe_id: (12..=64).contains(&reference.len())
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            learned_id: None,
            observers: vec![observer],
        });
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): subscribes, resyncs every
    /// watched container, then maps events to observers; on error or end of stream, reconnects
    /// with backoff (100 ms doubling to 5 s, reset after a healthy period) and resyncs again.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if self.watched.is_empty() {
            // Nothing to tell anyone: no subscription at all.
            shutdown_requested(&mut shutdown).await;
            return;
        }
        let mut backoff = BACKOFF_INITIAL;
        let mut attempt: u64 = 0;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            attempt += 1;
            if attempt > 1 {
                tracing::info!(attempt, "reconnecting to the Docker event stream");
            }
            let started = Instant::now();
            let reason = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                reason = self.session() => reason,
            };
            if started.elapsed() >= HEALTHY_PERIOD {
                backoff = BACKOFF_INITIAL;
            }
            tracing::warn!(
                %reason,
                retry_in = ?backoff,
                "Docker event stream disconnected"
            );
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        tracing::info!("Docker event stream stopped");
    }

    /// One subscription: open the stream, resync while buffering what arrives, then dispatch
    /// until the stream fails or ends.
    async fn session(&mut self) -> Disconnect {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
        ]);
        let options = EventsOptions {
            since: Some(since_timestamp(SystemTime::now(), SINCE_MARGIN)),
            until: None,
            filters: Some(filters),
        };
        let mut events = self.docker.events(Some(options));

        // Resync concurrently with the first polls of the stream (which send the subscription);
        // events arriving meanwhile are kept and dispatched after the resync, in order.
        let references: Vec<String> = self.watched.iter().map(|w| w.reference.clone()).collect();
        let docker = self.docker.clone();
        let resync = async move {
            stream::iter(references.into_iter().enumerate())
                .map(|(index, reference)| {
                    let docker = docker.clone();
                    async move {
                        let describe = format!("docker container \"{reference}\"");
                        (index, inspect_ref(&docker, &reference, &describe).await)
                    }
                })
                .buffer_unordered(RESYNC_CONCURRENCY)
                .collect::<Vec<_>>()
                .await
        };
        tokio::pin!(resync);
        let mut buffered = Vec::new();
        let results = loop {
            tokio::select! {
                biased;
                item = events.next() => match item {
                    Some(Ok(event)) => buffered.push(event),
                    Some(Err(e)) => return Disconnect::Stream(e),
                    None => return Disconnect::Ended,
                },
                results = &mut resync => break results,
            }
        };

        let mut sorted: Vec<_> = results;
        sorted.sort_by_key(|(index, _)| *index);
        let mut statuses = Vec::with_capacity(sorted.len());
        for (index, result) in sorted {
            match result {
                Ok(info) => statuses.push((index, info)),
                Err(e) => return Disconnect::Resync(e),
            }
        }
        for (index, info) in statuses {
            let watched = &mut self.watched[index];
            let status = match &info {
                Some(info) => {
                    watched.learned_id = info.id.clone();
                    status_of(info)
                }
                None => {
                    watched.learned_id = None;
                    BackendStatus::Missing
                }
            };
            tracing::debug!(container = %watched.reference, ?status, "resync");
            watched.deliver(&BackendEvent::Resync(status));
        }
        tracing::info!(
            containers = self.watched.len(),
            replayed = buffered.len(),
            "Docker event stream connected; watched containers resynced"
        );
        for event in buffered {
            self.dispatch(&event);
        }

        loop {
            match events.next().await {
                Some(Ok(event)) => self.dispatch(&event),
                Some(Err(e)) => return Disconnect::Stream(e),
                None => return Disconnect::Ended,
            }
        }
    }

    /// Delivers one engine event to every watcher of its container.
    fn dispatch(&mut self, event: &EventMessage) {
        let Some(action) = event.action.as_deref() else {
            return;
        };
        let mapped = match action {
            "start" | "unpause" => BackendEvent::Started,
            "die" | "pause" => BackendEvent::Stopped,
            "destroy" => BackendEvent::Removed,
            "create" => BackendEvent::Created,
            _ => return,
        };
        let actor = event.actor.as_ref();
        let id = actor.and_then(|a| a.id.as_deref()).unwrap_or("");
        let name = actor
            .and_then(|a| a.attributes.as_ref())
            .and_then(|attrs| attrs.get("name"))
            .map(String::as_str);
        for watched in &mut self.watched {
            let Some(by_name) = watched.matches(id, name) else {
                continue;
            };
            if by_name && !id.is_empty() {
                // The container now bearing the configured name (it may have been recreated).
                watched.learned_id = Some(id.to_string());
            }
            if mapped == BackendEvent::Removed && watched.learned_id.as_deref() == Some(id) {
                watched.learned_id = None;
            }
            tracing::debug!(
                container = %watched.reference,
                action,
                event = ?mapped,
                "Docker event"
            );
            watched.deliver(&mapped);
        }
    }
}

/// Resolves when shutdown is requested: the value turned true, or the sender is gone (nobody can
/// ever ask any more, so the owner has gone away).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `since` for the events endpoint: `now - margin` as `seconds.nanoseconds`.
fn since_timestamp(now: SystemTime, margin: Duration) -> String {
    let at = now
        .checked_sub(margin)
        .unwrap_or(now)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", at.as_secs(), at.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerState, EventActor};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<BackendEvent>>);
    impl BackendObserver for Recorder {
        fn observe(&self, event: BackendEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn event(action: &str, id: &str, name: Option<&str>) -> EventMessage {
        EventMessage {
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some(id.to_string()),
                attributes: name.map(|n| HashMap::from([("name".to_string(), n.to_string())])),
            }),
            ..Default::default()
        }
    }

    fn events_for_test() -> DockerEvents {
        // Never connects: only the matching logic is exercised.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        DockerEvents::new(docker)
    }

    #[test]
    fn matches_by_name_id_prefix_and_learned_id() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut events = events_for_test();
        let by_name = Arc::new(Recorder::default());
        let by_id = Arc::new(Recorder::default());
        let also_by_name = Arc::new(Recorder::default());
        events.watch("/web", by_name.clone());
        events.watch("0123456789ab", by_id.clone());
        events.watch("web", also_by_name.clone());
        assert_eq!(events.watched.len(), 2);

        events.dispatch(&event("start", id, Some("web")));
        // No name attribute: matches the id prefix, and the id learned from the first event.
        events.dispatch(&event("die", id, None));
        events.dispatch(&event("start", "ffff", Some("other")));
        events.dispatch(&event("kill", id, Some("web")));
        events.dispatch(&event("destroy", id, Some("web")));
        // Recreated under the same name with a new id.
        events.dispatch(&event("create", "eeee", Some("web")));
        events.dispatch(&event("pause", "eeee", None));

        use BackendEvent::*;
        assert_eq!(
            *by_name.0.lock().unwrap(),
            vec![Started, Stopped, Removed, Created, Stopped]
        );
        assert_eq!(*also_by_name.0.lock().unwrap(), *by_name.0.lock().unwrap());
        assert_eq!(*by_id.0.lock().unwrap(), vec![Started, Stopped, Removed]);
    }

    #[test]
    fn status_mapping() {
        let with = |status| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                ..Default::default()
            }),
            ..Default::default()
        };
        use ContainerStateStatusEnum as S;
        assert_eq!(status_of(&with(S::RUNNING)), BackendStatus::Running);
        assert_eq!(status_of(&with(S::RESTARTING)), BackendStatus::Running);
        assert_eq!(status_of(&with(S::PAUSED)), BackendStatus::Paused);
        for s in [S::CREATED, S::EXITED, S::DEAD, S::REMOVING] {
            assert_eq!(status_of(&with(s)), BackendStatus::Stopped);
        }
    }

    #[test]
    fn address_choice_is_deterministic() {
        let net = |v4: &str, v6: &str| EndpointSettings {
            ip_address: Some(v4.to_string()),
            global_ipv6_address: Some(v6.to_string()),
            ..Default::default()
        };
        let nets = HashMap::from([
            ("zeta".to_string(), net("10.0.0.9", "")),
            ("bridge".to_string(), net("172.17.0.2", "")),
            ("alpha".to_string(), net("10.0.0.1", "")),
        ]);
        assert_eq!(pick_address(&nets), Some("172.17.0.2".parse().unwrap()));
        let nets = HashMap::from([
            ("zeta".to_string(), net("10.0.0.9", "")),
            ("alpha".to_string(), net("", "fd00::1")),
            ("beta".to_string(), net("10.0.0.2", "")),
        ]);
        assert_eq!(pick_address(&nets), Some("10.0.0.2".parse().unwrap()));
        let nets = HashMap::from([("v6".to_string(), net("", "fd00::1"))]);
        assert_eq!(pick_address(&nets), Some("fd00::1".parse().unwrap()));
        let nets = HashMap::from([("none".to_string(), net("", ""))]);
        assert_eq!(pick_address(&nets), None);
    }

    #[test]
    fn seconds_round_up_and_since_format() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        let now = UNIX_EPOCH + Duration::new(1_000, 5);
        assert_eq!(
            since_timestamp(now, Duration::from_secs(1)),
            "999.000000005"
        );
    }
}
