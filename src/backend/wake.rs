//! The wake itself, run once per generation on a detached task: dependencies first, then the
//! provider's start (or unpause), the addresses, and the readiness probes; its outcome is
//! published to every waiter at once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::error::ExitClue;
use crate::backend::events::WakeEventKind;
use crate::backend::readiness::{self, ProbeError};
use crate::backend::watcher::WARM_UP;
use crate::backend::{State, Upstream, UpstreamTarget, WakeError, WakeFailure, Watcher};
use crate::config::{DependencyCondition, HealthCheck};
use crate::metrics::WakePhase;
use crate::providers::{BackendHealth, BackendStatus, ProviderError};

/// Longest pause before a failed backend may be woken again.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// While probing, how often the provider is asked whether the backend is still running
/// (so a backend that exits during its start fails the wake at once, not at the deadline).
const STATUS_RECHECK: Duration = Duration::from_secs(1);
/// How often the backend's own health check status is read while waiting for `healthy`
/// (Docker runs the check; reading its result is one inspect).
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// How long a backend removed during its wake may take to come back under the same name (a
/// re-create) before the wake fails.
const RECREATE_WAIT: Duration = Duration::from_secs(2);
/// How long a backend that stopped during its wake is watched for a removal (the first half of a
/// re-create) before the wake fails.
const REMOVAL_WAIT: Duration = Duration::from_millis(500);

impl Watcher {
    /// Runs the wake of `generation` to its end, bounded by `wake_timeout`.
    pub(super) async fn run_wake(self: Arc<Self>, generation: u64) {
        let began = Instant::now();
        let deadline = began + self.settings.load().wake_timeout;
        let mut last_probe = None;
        let mut phases = Vec::with_capacity(4);
        let result = tokio::time::timeout_at(deadline.into(), async {
            let mut result = self
                .wake_steps(generation, deadline, &mut last_probe, &mut phases)
                .await;
            // Removed while waking: a re-create (`docker compose up` after a label edit) brings a
            // new backend of the same name back at once; wake that one for the same waiters.
            if let Err(WakeError::Exited { status, .. }) = &result {
                let gone = *status == BackendStatus::Missing || self.removed_soon().await;
                if gone && self.reappears().await {
                    self.events.push(
                        WakeEventKind::Starting,
                        format!("{} was re-created; waking the new one", self.backend()),
                        None,
                    );
                    result = self
                        .wake_steps(generation, deadline, &mut last_probe, &mut phases)
                        .await;
                }
            }
            result
        })
        .await
        .unwrap_or_else(|_| {
            Err(WakeError::TimedOut {
                backend: self.backend().to_string(),
                timeout: self.settings.load().wake_timeout,
                last_probe: last_probe.take(),
            })
        });
        if let Some(metrics) = self.metrics.get() {
            phases.push((WakePhase::Total, began.elapsed()));
            let outcome = result.as_ref().map_or_else(WakeError::kind, |()| "ok");
            metrics.wake_finished(outcome, &phases);
        }
        if self.finish_wake(generation, result) {
            // A failed wake leaves nothing running (the next wake restarts it afresh); a
            // backend started by hand is left alone.
            if let Err(error) = self.send_to_sleep().await {
                tracing::warn!(backend = %self.backend(), %error, "could not stop after a failed wake");
            }
            self.control.lock().cleaning_up = false;
        }
    }

    /// Publishes a wake's outcome. Returns whether the backend must now be put back to sleep.
    fn finish_wake(&self, generation: u64, result: Result<(), WakeError>) -> bool {
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
                    format!("{} is ready", self.backend()),
                    None,
                );
                tracing::info!(backend = %self.backend(), "ready");
                false
            }
            Err(error) => {
                let woke_it = control.woke_it;
                control.cleaning_up = woke_it;
                control.consecutive_failures += 1;
                let backoff = self
                    .settings
                    .load()
                    .retry_backoff
                    .saturating_mul(1 << (control.consecutive_failures - 1).min(16))
                    .min(MAX_RETRY_BACKOFF);
                control.retry_at = Some(Instant::now() + backoff);
                let error = Arc::new(error);
                self.set_state(&mut control, State::Error, Some(Arc::clone(&error)));
                // No longer held by this backend: its dependencies' idle clocks start now.
                for (dependency, _) in self.dependencies.load().iter() {
                    dependency.mark_activity();
                }
                self.events.push(
                    WakeEventKind::Error,
                    format!("Could not wake {}", self.backend()),
                    Some(error.to_string()),
                );
                tracing::warn!(backend = %self.backend(), %error, retry_in = ?backoff, "wake failed");
                woke_it
            }
        }
    }

    /// The wake itself: dependencies, provider start, addresses, readiness. The last probe
    /// failure is left in `last_probe` for the timeout's message, and each phase's duration is
    /// added to `phases` as it ends (for the metrics).
    async fn wake_steps(
        &self,
        generation: u64,
        deadline: Instant,
        last_probe: &mut Option<ProbeError>,
        phases: &mut Vec<(WakePhase, Duration)>,
    ) -> Result<(), WakeError> {
        let phase_began = Instant::now();
        // Every dependency is woken at once (each wake is its dependency's own singleflight, so
        // a dependency shared by several paths of a diamond starts once); the first failure
        // fails this wake, naming the dependency. The dependencies' wakes are detached tasks:
        // they run on (and report to their own waiters) whatever happens here.
        let dependencies = self.dependencies.load_full();
        let waking = dependencies
            .iter()
            .map(|(dependency, condition)| self.wake_dependency(dependency, *condition, deadline));
        futures_util::future::try_join_all(waking).await?;
        if !dependencies.is_empty() {
            phases.push((WakePhase::Dependencies, phase_began.elapsed()));
        }

        let start_began = Instant::now();
        let status = self.provider.status().await?;
        if matches!(status, BackendStatus::Paused | BackendStatus::Stopped) {
            let mut control = self.control.lock();
            if control.generation == generation {
                control.woke_it = true;
            }
        }
        let woke = match status {
            BackendStatus::Running => "is running",
            BackendStatus::Paused => {
                self.provider.unpause().await?;
                "was unpaused"
            }
            BackendStatus::Stopped => {
                self.provider.start().await?;
                "was started"
            }
            BackendStatus::Missing => {
                return Err(WakeError::Missing {
                    backend: self.backend().to_string(),
                })
            }
        };
        phases.push((WakePhase::Start, start_began.elapsed()));
        let ready_began = Instant::now();
        let up_at = Instant::now();
        {
            let mut control = self.control.lock();
            if control.generation == generation && self.state() == State::Starting {
                control.backend_up = true;
                self.changed.notify_waiters();
            }
        }
        self.events.push(
            WakeEventKind::ContainerWoke,
            format!("{} {woke}", self.backend()),
            None,
        );

        let upstreams = self.upstreams.load_full();
        let addresses = match self.resolve_addresses(&upstreams).await {
            Ok(addresses) => addresses,
            // No address is often the symptom of a process that already exited: say that.
            Err(error) => match self.provider.status().await {
                Ok(status) if status != BackendStatus::Running => {
                    return Err(self.stopped_while_starting(status, ExitClue::Address(error)))
                }
                _ => return Err(error.into()),
            },
        };
        let docker_only = !upstreams.is_empty()
            && upstreams
                .iter()
                .all(|upstream| upstream.health == HealthCheck::Docker);
        let wants_docker = upstreams
            .iter()
            .any(|upstream| upstream.health == HealthCheck::Docker);
        let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        let waiting = if docker_only || shown.is_empty() {
            format!("Waiting for {} to be ready", self.backend())
        } else {
            format!(
                "Waiting for {} to answer on {}",
                self.backend(),
                shown.join(", ")
            )
        };
        self.events.push(WakeEventKind::WaitingReady, waiting, None);
        let all_default = upstreams
            .iter()
            .filter(|upstream| upstream.probed)
            .all(|upstream| !upstream.explicit_health);
        if wants_docker || all_default {
            // `docker: true`, or no probe configured: the backend's own HEALTHCHECK (if it has
            // one; with `docker: true` it must) decides readiness.
            self.wait_healthy(wants_docker).await?;
        }
        // What cannot be probed (UDP) is ready `ready_after` after the backend runs.
        let ready_after = upstreams
            .iter()
            .map(|upstream| upstream.ready_after)
            .max()
            .unwrap_or_default();
        tokio::time::sleep_until((up_at + ready_after).into()).await;
        for (upstream, address) in upstreams.iter().zip(addresses) {
            if upstream.probed && !docker_only && upstream.health != HealthCheck::Docker {
                self.probe_until_ready(address, &upstream.health, last_probe)
                    .await?;
            }
            upstream.set_address(Some(address));
        }
        phases.push((WakePhase::Ready, ready_began.elapsed()));
        Ok(())
    }

    /// Waits until the backend's own health check says `healthy` (an `unhealthy` fails the
    /// wake with its reason). Without a health check: an error if `required`, else done.
    async fn wait_healthy(&self, required: bool) -> Result<(), WakeError> {
        loop {
            match self.provider.health().await? {
                Some(BackendHealth::Healthy) => return Ok(()),
                Some(BackendHealth::Unhealthy { reason }) => {
                    return Err(WakeError::Unhealthy {
                        backend: self.backend().to_string(),
                        reason,
                    })
                }
                Some(BackendHealth::Starting) => {}
                None if required => {
                    // Stopped meanwhile (no health reported for a stopped container)?
                    match self.provider.status().await? {
                        BackendStatus::Running => {
                            return Err(WakeError::NoHealthCheck {
                                backend: self.backend().to_string(),
                            })
                        }
                        status => return Err(self.stopped_while_starting(status, ExitClue::Health)),
                    }
                }
                None => return Ok(()),
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// Wakes one dependency and waits until it reaches `condition`, with its events.
    async fn wake_dependency(
        &self,
        dependency: &Watcher,
        condition: DependencyCondition,
        deadline: Instant,
    ) -> Result<(), WakeError> {
        self.events.push(
            WakeEventKind::WakingDep,
            format!("Waking dependency {}", dependency.backend()),
            None,
        );
        let dependency_failed = |cause: WakeFailure| WakeError::Dependency {
            dependency: dependency.backend().to_string(),
            cause,
        };
        let dep_generation = dependency.wake().map_err(dependency_failed)?;
        match condition {
            DependencyCondition::Healthy => dependency.wait_ready(dep_generation, deadline).await,
            DependencyCondition::Started => dependency.wait_started(dep_generation, deadline).await,
        }
        .map_err(dependency_failed)?;
        self.events.push(
            WakeEventKind::DepReady,
            format!("Dependency {} is up", dependency.backend()),
            None,
        );
        Ok(())
    }

    /// Resolves every route's upstream address afresh (container IPs change on restart).
    /// Resolves the upstreams that have no address yet (given to a ready backend by a reload).
    pub(super) async fn resolve_missing(&self) -> Result<(), ProviderError> {
        let upstreams = self.upstreams.load_full();
        let missing: Vec<Arc<Upstream>> = upstreams
            .iter()
            .filter(|upstream| upstream.address().is_none())
            .cloned()
            .collect();
        let addresses = self.resolve_addresses(&missing).await?;
        for (upstream, address) in missing.iter().zip(addresses) {
            upstream.set_address(Some(address));
        }
        Ok(())
    }

    async fn resolve_addresses(
        &self,
        upstreams: &[Arc<Upstream>],
    ) -> Result<Vec<SocketAddr>, ProviderError> {
        let mut backend_ip = None;
        let mut addresses = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
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

    /// Probes `address` until it answers, the backend stops, or the wake's deadline (outside)
    /// cancels this.
    async fn probe_until_ready(
        &self,
        address: SocketAddr,
        health: &HealthCheck,
        last_probe: &mut Option<ProbeError>,
    ) -> Result<(), WakeError> {
        let mut interval = Duration::ZERO;
        let mut status_checked = Instant::now();
        loop {
            let failure = match readiness::probe_once(address, health).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            interval = readiness::next_interval(interval, &failure);
            if status_checked.elapsed() >= STATUS_RECHECK {
                status_checked = Instant::now();
                match self.provider.status().await {
                    Ok(BackendStatus::Running) | Err(_) => {}
                    Ok(other) => {
                        return Err(self.stopped_while_starting(other, ExitClue::Probe(failure)))
                    }
                }
            }
            *last_probe = Some(failure);
            tokio::time::sleep(interval).await;
        }
    }

    /// Whether the engine reports the backend removed (or created anew) during this wake, within
    /// a moment: a container removed by force is first seen stopped, then removed.
    async fn removed_soon(&self) -> bool {
        let until = Instant::now() + REMOVAL_WAIT;
        loop {
            if self.control.lock().recreated {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a backend that vanished during a wake is back (re-created under the same name)
    /// within [`RECREATE_WAIT`].
    async fn reappears(&self) -> bool {
        let until = Instant::now() + RECREATE_WAIT;
        while Instant::now() < until {
            if let Ok(status) = self.provider.status().await {
                if status != BackendStatus::Missing {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn stopped_while_starting(&self, status: BackendStatus, clue: ExitClue) -> WakeError {
        WakeError::Exited {
            backend: self.backend().to_string(),
            status,
            clue,
        }
    }
}
