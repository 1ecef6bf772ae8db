//! One Docker container driven as a backend: every call goes to the engine (no cached state),
//! so the provider is always in step with changes made by hand.
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
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings, HealthStatusEnum,
};
use bollard::query_parameters::{
    KillContainerOptions, StartContainerOptions, StatsOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;

use super::engine::{error_chain, EngineLink};
use super::traffic::{network_bytes, TrafficVeto};
use crate::providers::{
    Activity, BackendHealth, BackendStatus, Provider, ProviderError, SleepVerdict,
};

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

/// Interval of the inspect polling used when the engine's `wait` endpoint is unusable.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The configured container reference as the engine expects it (names without the leading `/`
/// that `docker inspect` shows).
pub(super) fn normalize_ref(container: &str) -> &str {
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
    /// Whether its engine answers (`None`: assumed to, the engine is the caller's business).
    link: Option<Arc<EngineLink>>,
    /// The traffic veto (`docker: { traffic_veto }`), when on.
    veto: Option<Arc<TrafficVeto>>,
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
            link: None,
            veto: None,
        }
    }

    /// Postpones this container's stop while its network counters grow by more than
    /// `threshold` bytes without this gateway (another gateway on the same engine uses it);
    /// 0: never.
    pub fn with_traffic_veto(mut self, threshold: u64) -> Self {
        self.veto = (threshold > 0).then(|| Arc::new(TrafficVeto::new(threshold)));
        self
    }

    /// A provider for `container` on the engine `link` follows: failing at once while the
    /// engine is down. `name_engine`: messages name the engine too (when there are several).
    pub fn on_engine(
        docker: Docker,
        container: &str,
        link: Arc<EngineLink>,
        name_engine: bool,
    ) -> Self {
        let mut provider = Self::new(docker, container);
        if name_engine {
            provider.describe = format!("{} on {}", provider.describe, link.shown());
        }
        provider.link = Some(link);
        provider
    }

    /// The container's network bytes, received plus sent (`stats`, one shot); `None` when it
    /// has no counters of its own.
    async fn network_bytes(&self) -> Result<Option<u64>, ProviderError> {
        self.online()?;
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        match self
            .docker
            .stats(&self.container, Some(options))
            .next()
            .await
        {
            Some(Ok(stats)) => Ok(network_bytes(&stats)),
            Some(Err(error)) => Err(self.error("read the counters of", error)),
            None => Ok(None),
        }
    }

    /// `Ok` unless the engine is known to be down (then the error naming it).
    fn online(&self) -> Result<(), ProviderError> {
        self.link.as_ref().map_or(Ok(()), |link| link.check())
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
    fn noun(&self) -> &'static str {
        "container"
    }

    fn describe(&self) -> &str {
        &self.describe
    }

    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        self.online()?;
        Ok(match self.inspect().await? {
            Some(info) => status_of(&info),
            None => BackendStatus::Missing,
        })
    }

    async fn health(&self) -> Result<Option<BackendHealth>, ProviderError> {
        self.online()?;
        Ok(self.inspect().await?.as_ref().and_then(health_of))
    }

    fn reports_activity(&self) -> bool {
        self.veto.is_some()
    }

    /// A traffic baseline, for the veto.
    async fn activity(&self, _activity: Activity) -> Result<(), ProviderError> {
        let Some(veto) = &self.veto else {
            return Ok(());
        };
        let bytes = self.network_bytes().await?;
        veto.record(bytes, SystemTime::now(), &self.describe);
        Ok(())
    }

    /// No while the container's counters grow without this gateway (the traffic veto).
    async fn may_sleep(&self, activity: Activity) -> Result<SleepVerdict, ProviderError> {
        let Some(veto) = &self.veto else {
            return Ok(SleepVerdict::Now);
        };
        let bytes = self.network_bytes().await?;
        Ok(veto.verdict(bytes, SystemTime::now(), &self.describe, activity))
    }

    async fn start(&self) -> Result<(), ProviderError> {
        self.online()?;
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
        self.online()?;
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
        self.online()?;
        self.signal("kill", signal.unwrap_or("SIGKILL"))
            .await
            .map(|_| ())
    }

    async fn pause(&self) -> Result<(), ProviderError> {
        self.online()?;
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
        self.online()?;
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
        self.online()?;
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
pub(super) async fn inspect_ref(
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
pub(crate) fn http_status(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps a bollard error: 404 → [`ProviderError::NotFound`], anything else →
/// [`ProviderError::Api`] with the engine's own message (or the transport failure).
pub(crate) fn map_error(action: &'static str, backend: &str, err: DockerError) -> ProviderError {
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
            message: error_chain(&other),
        },
    }
}

/// The [`BackendStatus`] of an inspected container.
/// The container's `State.Health`, if it has a `HEALTHCHECK` (`none` or absent: it has none).
fn health_of(info: &ContainerInspectResponse) -> Option<BackendHealth> {
    let health = info.state.as_ref()?.health.as_ref()?;
    match health.status? {
        HealthStatusEnum::HEALTHY => Some(BackendHealth::Healthy),
        HealthStatusEnum::STARTING => Some(BackendHealth::Starting),
        HealthStatusEnum::UNHEALTHY => {
            let reason = health
                .log
                .as_ref()
                .and_then(|log| log.last())
                .and_then(|last| last.output.as_deref())
                .unwrap_or_default()
                .trim()
                .to_string();
            Some(BackendHealth::Unhealthy { reason })
        }
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

pub(super) fn status_of(info: &ContainerInspectResponse) -> BackendStatus {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerState;

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
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
