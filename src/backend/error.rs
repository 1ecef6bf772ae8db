//! Why a wake failed ([`WakeError`]) and why a request could not be let through
//! ([`WakeFailure`]): types, not strings, so that callers, metrics and tests can tell a dependency
//! failure from a probe timeout. Their `Display` is what users see in 503 answers, the event
//! stream and the `status` endpoint.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::readiness::ProbeError;
use crate::providers::{BackendStatus, ProviderError};

/// Why one wake of a backend failed (published to every waiter and kept as the backend's error).
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// A dependency could not be woken first.
    #[error("dependency {dependency} failed: {cause}")]
    Dependency {
        /// The dependency's backend, as its provider describes it.
        dependency: String,
        /// Why it failed.
        cause: WakeFailure,
    },
    /// The provider refused or failed an operation (start, unpause, status, address).
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The backend does not exist.
    #[error("{backend} not found")]
    Missing {
        /// The backend.
        backend: String,
    },
    /// The backend stopped (exited, was paused or removed) while it was being started.
    #[error("{backend} {} while starting ({clue})", exit_verb(*status))]
    Exited {
        /// The backend.
        backend: String,
        /// What the provider reported instead of running.
        status: BackendStatus,
        /// What was seen just before.
        clue: ExitClue,
    },
    /// The backend did not answer its readiness probe within `wake_timeout`.
    #[error(
        "{backend} did not become ready within {}{}",
        humantime::format_duration(*timeout),
        LastProbe(last_probe.as_ref())
    )]
    TimedOut {
        /// The backend.
        backend: String,
        /// The wake's deadline.
        timeout: Duration,
        /// The last probe failure, if a probe ran.
        last_probe: Option<ProbeError>,
    },
    /// The backend's own health check (Docker's `HEALTHCHECK`) reported `unhealthy`.
    #[error("{backend} is unhealthy{}", Reason(reason))]
    Unhealthy {
        /// The backend.
        backend: String,
        /// The last failing check's output (may be empty).
        reason: String,
    },
    /// `health: { docker: true }`, but the backend has no health check of its own.
    #[error("{backend} has no health check (HEALTHCHECK), but its route's health is docker: true")]
    NoHealthCheck {
        /// The backend.
        backend: String,
    },
    /// The backend was removed (outside idlewatcher).
    #[error("{backend}: {noun} removed")]
    Removed {
        /// The backend.
        backend: String,
        /// What its provider calls one backend (`container`, `guest`).
        noun: &'static str,
    },
    /// A failed wake whose reason is no longer known.
    #[error("the last wake failed")]
    Unknown,
}

impl WakeError {
    /// The kind of failure, as a metric label (`result` of `idlewatcher_wakes_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dependency { .. } => "dependency",
            Self::Provider(_) => "provider",
            Self::Missing { .. } => "missing",
            Self::Exited { .. } => "exited",
            Self::TimedOut { .. } => "timeout",
            Self::Unhealthy { .. } => "unhealthy",
            Self::NoHealthCheck { .. } => "no_health_check",
            Self::Removed { .. } => "removed",
            Self::Unknown => "unknown",
        }
    }
}

/// What was seen of a backend that stopped while starting.
#[derive(Debug, thiserror::Error)]
pub enum ExitClue {
    /// Its address could not be read (often the first symptom of a process that exited).
    #[error("{0}")]
    Address(ProviderError),
    /// The last readiness probe failed so.
    #[error("last probe: {0}")]
    Probe(ProbeError),
    /// It was waited on for its own health check, which it stopped before reporting.
    #[error("while waiting for its health check")]
    Health,
}

/// `: reason`, or nothing for an empty reason.
struct Reason<'a>(&'a str);

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, ": {}", self.0)
        }
    }
}

fn exit_verb(status: BackendStatus) -> &'static str {
    match status {
        BackendStatus::Stopped => "exited",
        BackendStatus::Paused => "was paused",
        BackendStatus::Missing => "was removed",
        BackendStatus::Running => "is running",
    }
}

/// Shows ` (last probe: …)` when a probe failed before a timeout.
struct LastProbe<'a>(Option<&'a ProbeError>);

impl std::fmt::Display for LastProbe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(probe) => write!(f, " (last probe: {probe})"),
            None => Ok(()),
        }
    }
}

/// Why a request (or a dependent's wake) could not be let through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeFailure {
    /// The wake failed.
    #[error("{0}")]
    Failed(Arc<WakeError>),
    /// The last wake failed recently; another is not attempted before `retry_after`.
    #[error("{error} (next attempt in {}s)", retry_after.as_secs().max(1))]
    BackingOff {
        /// The last failure.
        error: Arc<WakeError>,
        /// How long until a new wake may start.
        retry_after: Duration,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A reload removed the route the request was held on.
    #[error("the route was removed by a reload")]
    RouteRemoved,
    /// The request's own deadline passed first.
    #[error("{backend} did not become ready within {}", humantime::format_duration(*.timeout))]
    TimedOut {
        /// The backend.
        backend: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

impl WakeFailure {
    /// The `Retry-After` a client should be told, in seconds.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::BackingOff { retry_after, .. } => {
                retry_after.as_secs_f64().ceil().max(1.0) as u64
            }
            _ => 2,
        }
    }

    /// Why the request was refused, as a metric label (`reason` of
    /// `idlewatcher_requests_rejected_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Failed(_) => "wake_failed",
            Self::BackingOff { .. } => "backing_off",
            Self::ShuttingDown => "shutting_down",
            Self::RouteRemoved => "route_removed",
            Self::TimedOut { .. } => "timeout",
        }
    }

    /// What a visitor may be told when the route does not `show_details`: the phase, never a
    /// backend's name, address or an engine's error text.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Failed(_) | Self::BackingOff { .. } => "The service could not be started",
            Self::ShuttingDown => "The gateway is shutting down",
            Self::RouteRemoved => "The route no longer exists",
            Self::TimedOut { .. } => "The service did not become ready in time",
        }
    }

    /// The wake error behind this failure, if the wake itself failed.
    pub fn wake_error(&self) -> Option<&WakeError> {
        match self {
            Self::Failed(error) | Self::BackingOff { error, .. } => Some(error),
            Self::ShuttingDown | Self::RouteRemoved | Self::TimedOut { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr() -> SocketAddr {
        SocketAddr::from(([172, 17, 0, 2], 80))
    }

    #[test]
    fn shown_to_users_as_before() {
        let timed_out = WakeError::TimedOut {
            backend: "docker container \"app\"".into(),
            timeout: Duration::from_secs(5),
            last_probe: Some(ProbeError::Refused(addr())),
        };
        assert_eq!(
            timed_out.to_string(),
            "docker container \"app\" did not become ready within 5s \
             (last probe: connection refused by 172.17.0.2:80)"
        );
        let exited = WakeError::Exited {
            backend: "docker container \"app\"".into(),
            status: BackendStatus::Stopped,
            clue: ExitClue::Probe(ProbeError::Refused(addr())),
        };
        assert_eq!(
            exited.to_string(),
            "docker container \"app\" exited while starting \
             (last probe: connection refused by 172.17.0.2:80)"
        );
        let dependency = WakeError::Dependency {
            dependency: "docker container \"db\"".into(),
            cause: WakeFailure::ShuttingDown,
        };
        assert_eq!(
            dependency.to_string(),
            "dependency docker container \"db\" failed: the gateway is shutting down"
        );
        let backing_off = WakeFailure::BackingOff {
            error: Arc::new(WakeError::Removed {
                backend: "docker container \"app\"".into(),
                noun: "container",
            }),
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(
            backing_off.to_string(),
            "docker container \"app\": container removed (next attempt in 1s)"
        );
        assert_eq!(backing_off.retry_after_secs(), 2);
    }
}
