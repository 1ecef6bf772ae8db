//! Where a route's requests go once its backend is up: the target as configured and the address
//! the last wake resolved, read lock-free by the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::HealthCheck;

/// Where a route's requests go once its backend is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// A fixed `host:port` (e.g. a published port), resolved again after every wake.
    Fixed(String),
    /// The backend's own address (asked from the provider after every wake) and this port.
    BackendPort(u16),
}

/// One route's upstream: what to probe, and the address resolved by the last wake.
///
/// Kept per route because routes sharing a backend may use different ports.
pub struct Upstream {
    /// How the address is found.
    pub target: UpstreamTarget,
    /// How readiness is probed at that address.
    pub health: HealthCheck,
    /// Whether `health` was configured; if not (the built-in default), a backend with its own
    /// health check (a Docker `HEALTHCHECK`) must pass that too before it is ready.
    pub explicit_health: bool,
    /// Whether the wake probes this address (a UDP stream's cannot be: the wake resolves it and
    /// relies on the other upstreams, the backend's own health check, or `ready_after`).
    pub probed: bool,
    /// How long after the backend runs it counts as ready, at the earliest (`ready_after`).
    pub ready_after: Duration,
    address: ArcSwapOption<SocketAddr>,
}

impl Upstream {
    /// An upstream with no address yet (one is resolved by the first wake).
    pub fn new(target: UpstreamTarget, health: HealthCheck) -> Self {
        Self {
            target,
            health,
            explicit_health: true,
            probed: true,
            ready_after: Duration::ZERO,
            address: ArcSwapOption::empty(),
        }
    }

    /// An upstream the wake resolves but never probes (a UDP stream's), ready at the earliest
    /// `ready_after` after the backend runs.
    pub fn unprobed(target: UpstreamTarget, health: HealthCheck, ready_after: Duration) -> Self {
        Self {
            probed: false,
            ready_after,
            ..Self::new(target, health)
        }
    }

    /// Marks `health` as the built-in default rather than configured (see
    /// [`explicit_health`](Self::explicit_health)).
    pub fn with_default_health(mut self) -> Self {
        self.explicit_health = false;
        self
    }

    /// The address resolved by the last wake (lock-free).
    #[inline]
    pub fn address(&self) -> Option<SocketAddr> {
        self.address.load().as_deref().copied()
    }
}

impl Upstream {
    /// Publishes the address resolved by a wake (`None` once the backend sleeps).
    pub(crate) fn set_address(&self, address: Option<SocketAddr>) {
        self.address.store(address.map(Arc::new));
    }
}
