//! Backends that can be put to sleep and woken: the [`Provider`] trait and its implementations.
//!
//! A provider knows how to drive one backend (a Docker container, a Proxmox guest) through its
//! lifecycle. It knows nothing about routes, idle timers or HTTP: the [`Watcher`](crate::backend::Watcher)
//! decides *when*; the provider only does *what* it is told, and reports what the backend is doing.
//!
//! Changes that happen outside idlewatcher (a container started or stopped by hand, removed,
//! recreated) reach watchers through each provider family's event source, which calls
//! [`BackendObserver::observe`] — see [`docker::DockerEvents`].
//!
//! Providers come in *families* ([`ProviderFamily`]): a family connects once for the whole
//! gateway (one Docker engine, one Proxmox cluster), builds a driver per backend, runs ONE event
//! source for all its backends, and declares the sleep methods it supports. Adding a provider is a
//! folder here plus one line in [`FAMILIES`].

pub mod docker;
pub mod fake;
mod family;
pub mod proxmox;
pub mod swarm;
mod transition;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use family::{Connect, FamilyKind, ProviderFamily};

/// Every provider family this build knows. Adding a provider is a folder in `providers/` plus
/// one line here; assembly and `-t` loop over this list and name no family.
pub static FAMILIES: &[&FamilyKind] = &[&docker::FAMILY, &proxmox::FAMILY, &swarm::FAMILY];

/// The family a backend belongs to, if this build has it.
pub fn family_of(backend: &crate::config::BackendConfig) -> Option<&'static FamilyKind> {
    FAMILIES.iter().copied().find(|kind| (kind.claims)(backend))
}

/// What a backend is doing right now, as its provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// Running (its process is up; it may not accept connections yet).
    Running,
    /// Frozen in memory (`docker pause`): wakes with `unpause`, fast.
    Paused,
    /// Not running: exited, dead or created-but-never-started. Wakes with `start`.
    Stopped,
    /// The backend does not exist (removed, or never created).
    Missing,
}

/// Something a provider's event source saw happen to a backend, from whatever cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// The backend started or was unpaused.
    Started,
    /// The backend stopped, died, was killed or paused.
    Stopped,
    /// The backend was removed.
    Removed,
    /// A backend of the watched name was created (again).
    Created,
    /// The event stream reconnected: this is the backend's current status, to resync from.
    Resync(BackendStatus),
}

/// Receives [`BackendEvent`]s from a provider family's event source. Implemented by the watcher.
pub trait BackendObserver: Send + Sync {
    /// Called from the event source's task; must not block.
    fn observe(&self, event: BackendEvent);
}

/// What the backend's own health check (Docker's `HEALTHCHECK`) says, when it has one: a
/// readiness source the manager already runs, so the gateway need not probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHealth {
    /// The check has not passed yet (Docker's `starting`).
    Starting,
    /// The check passes (`healthy`).
    Healthy,
    /// The check fails (`unhealthy`); `reason` is the last check's output, if any.
    Unhealthy {
        /// The last failing check's output, trimmed (may be empty).
        reason: String,
    },
}

/// A failure talking to a backend's manager, with enough context to show a user.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The backend does not exist.
    #[error("{backend} not found")]
    NotFound {
        /// The backend, as [`Provider::describe`] names it.
        backend: String,
    },
    /// The manager (Docker engine, Proxmox API) refused or failed the operation.
    #[error("{action} {backend}: {message}")]
    Api {
        /// What was attempted (`start`, `stop`, `inspect`…).
        action: &'static str,
        /// The backend, as [`Provider::describe`] names it.
        backend: String,
        /// The manager's own explanation.
        message: String,
    },
    /// The manager itself (one of several Docker engines) cannot be reached right now: its
    /// backends fail at once, naming it, and it is retried in the background.
    #[error("{manager} is unreachable: {reason}")]
    Unreachable {
        /// The manager, as messages show it (`Docker engine at tcp://nas:2376`).
        manager: String,
        /// Why, as last seen (`connection refused`…).
        reason: String,
    },
    /// The backend must not be put to sleep yet: someone else (another gateway) is using it.
    /// Not a failure: the idle clock looks again after `retry_in`.
    #[error("{backend} is still in use: {reason}")]
    InUse {
        /// The backend, as [`Provider::describe`] names it.
        backend: String,
        /// Who uses it, as far as the provider can tell (`gateway "b" saw traffic 2 s ago`).
        reason: String,
        /// When asking again may give another answer.
        retry_in: Duration,
    },
    /// The backend is running but has no address the gateway can reach.
    #[error("{backend} has no reachable IP address (is it attached to a network?)")]
    NoAddress {
        /// The backend, as [`Provider::describe`] names it.
        backend: String,
    },
}

/// What this gateway knows of its own traffic to a backend, as the idle clock hands it to a
/// provider that shares the backend with other gateways (a lease, a traffic counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// When this gateway last saw traffic for the backend (now, while anything is in flight).
    pub last_seen: SystemTime,
    /// The backend's `idle_timeout`: how long this gateway keeps it awake after `last_seen`.
    pub idle_timeout: Duration,
}

/// A provider's answer to "may this backend be put to sleep now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SleepVerdict {
    /// Nothing the provider knows of keeps it awake.
    Now,
    /// Someone else is using it: the idle clock re-arms and asks again after `retry_in`.
    Postpone {
        /// When to ask again.
        retry_in: Duration,
        /// Why, for the log (`gateway "b" saw traffic 2 s ago`).
        reason: String,
    },
}

/// Drives one backend. Every method is called from a background task, never the request path.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short human description, e.g. `docker container "whoami"`, used in errors and logs.
    fn describe(&self) -> &str;
    /// What one backend of this kind is called in messages (`container`, `guest`).
    fn noun(&self) -> &'static str {
        "backend"
    }
    /// The backend's current status.
    async fn status(&self) -> Result<BackendStatus, ProviderError>;
    /// Starts a stopped backend. Returns once the manager reports it started.
    async fn start(&self) -> Result<(), ProviderError>;
    /// Stops the backend gracefully: `signal` (or the backend's own default) then, after
    /// `timeout`, a forced kill.
    async fn stop(&self, signal: Option<&str>, timeout: Duration) -> Result<(), ProviderError>;
    /// Sends `signal` (default `SIGKILL`) to the backend's main process.
    async fn kill(&self, signal: Option<&str>) -> Result<(), ProviderError>;
    /// Freezes the backend in memory.
    async fn pause(&self) -> Result<(), ProviderError>;
    /// Thaws a paused backend.
    async fn unpause(&self) -> Result<(), ProviderError>;
    /// The backend's IP address as the gateway should reach it. Asked after every start,
    /// because container addresses change across restarts.
    async fn address(&self) -> Result<IpAddr, ProviderError>;
    /// The backend's own health check status, or `None` when it has none (or the provider
    /// knows of no such thing: the default, so providers without one need not implement it).
    async fn health(&self) -> Result<Option<BackendHealth>, ProviderError> {
        Ok(None)
    }
    /// Whether the provider wants [`activity`](Self::activity) reports (a lease to renew, a
    /// counter to sample); the idle clock then reports at most every `idle_timeout / 4`.
    fn reports_activity(&self) -> bool {
        false
    }
    /// This gateway saw traffic for the backend (`activity.last_seen`), or the traffic it saw
    /// ended: called from the idle clock's side, never per request, at most every
    /// `idle_timeout / 4` while traffic lasts and once more after it ends.
    async fn activity(&self, _activity: Activity) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Asked by the idle clock before it puts the backend to sleep (the default: yes). A
    /// provider shared by several gateways says whether another one still uses the backend.
    async fn may_sleep(&self, _activity: Activity) -> Result<SleepVerdict, ProviderError> {
        Ok(SleepVerdict::Now)
    }
}
