//! The Docker Swarm provider family: replicated services on the swarm the gateway's engine
//! (`docker: { host, tls }`, a manager) belongs to, scaled between 0 and the route's
//! `replicas`.
//!
//! * `spec.rs`: the service as the gateway reads and writes it: replicas, status, activity
//!   leases, and [`update`](spec::update), the versioned write of the whole spec.
//! * `service.rs`: [`SwarmService`], the driver of one service (wake = scale up, sleep = scale
//!   to 0 unless another gateway's lease holds it).
//! * `events.rs`: [`ServiceEvents`], the one event source for every service (the engine's
//!   `service` events plus bulk looks at `GET /services?status=true`).
//! * [`FAMILY`] registers the family; [`SwarmFamily`] is the connected family.

mod events;
mod service;
mod spec;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

pub use events::ServiceEvents;
pub use service::SwarmService;
pub use spec::{BeforeWrite, LEASE_PREFIX};

use crate::config::{BackendConfig, GatewayConfig, StopMethod};
use crate::providers::docker::{negotiate, reason_of, Endpoint, EngineLink};
use crate::providers::{BackendObserver, FamilyKind, Provider, ProviderError, ProviderFamily};

/// How long start-up gives the family.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long start-up waits for the manager's first answer; later, its event stream retries.
const FIRST_CONTACT: Duration = Duration::from_secs(3);

/// The Swarm family's registration: a service sleeps by being scaled to 0 (`stop`), nothing
/// else.
pub static FAMILY: FamilyKind = FamilyKind {
    name: "swarm",
    shown: "the Docker Swarm manager",
    sleep_methods: &[StopMethod::Stop],
    reports_health: false,
    connect_timeout: CONNECT_TIMEOUT,
    claims: |backend| matches!(backend, BackendConfig::Swarm { .. }),
    connect: connect_family,
};

fn connect_family(
    config: &GatewayConfig,
) -> BoxFuture<'_, Result<Arc<dyn ProviderFamily>, ProviderError>> {
    async move {
        let endpoint = Endpoint::resolve(&config.docker);
        let docker = endpoint.client()?;
        let family: Arc<dyn ProviderFamily> =
            Arc::new(SwarmFamily::connect(docker, endpoint.shown(), &config.instance).await);
        Ok(family)
    }
    .boxed()
}

/// The connected Swarm family: one engine client (a manager's), one event source, and this
/// gateway's name for its leases.
pub struct SwarmFamily {
    docker: bollard::Docker,
    link: Arc<EngineLink>,
    instance: String,
    events: ServiceEvents,
}

impl SwarmFamily {
    /// The family on `docker` (shown as `shown`), leasing as gateway `instance`. A manager that
    /// does not answer within [`FIRST_CONTACT`] is left to the event stream's reconnection.
    pub async fn connect(docker: bollard::Docker, shown: String, instance: &str) -> Self {
        let link = Arc::new(EngineLink::new(shown));
        match tokio::time::timeout(FIRST_CONTACT, negotiate(&docker, link.shown())).await {
            Ok(Ok(())) => link.set_up(),
            Ok(Err(error)) => link.set_down(reason_of(&error)),
            Err(_) => link.set_down(format!("no answer within {FIRST_CONTACT:?}")),
        }
        tracing::info!(engine = %link.shown(), %instance, "Swarm family: leasing services as this instance");
        Self {
            events: ServiceEvents::new(docker.clone(), Arc::clone(&link)),
            docker,
            link,
            instance: instance.to_string(),
        }
    }
}

/// The service and replicas a Swarm backend names.
fn service_of(backend: &BackendConfig) -> Option<(&str, u64)> {
    match backend {
        BackendConfig::Swarm { service, replicas } => Some((service, *replicas)),
        _ => None,
    }
}

#[async_trait]
impl ProviderFamily for SwarmFamily {
    fn kind(&self) -> &'static FamilyKind {
        &FAMILY
    }

    fn driver(&self, backend: &BackendConfig) -> Option<Arc<dyn Provider>> {
        let (service, replicas) = service_of(backend)?;
        Some(Arc::new(SwarmService::new(
            self.docker.clone(),
            Arc::clone(&self.link),
            service,
            replicas,
            &self.instance,
        )))
    }

    fn watch(&self, backend: &BackendConfig, observer: Arc<dyn BackendObserver>) {
        if let Some((service, _)) = service_of(backend) {
            self.events.watch(service, observer);
        }
    }

    fn unwatch(&self, backend: &BackendConfig, observer: &Arc<dyn BackendObserver>) {
        if let Some((service, _)) = service_of(backend) {
            self.events.unwatch(service, observer);
        }
    }

    async fn run_events(&self, shutdown: watch::Receiver<bool>) {
        self.events.run(shutdown).await;
    }
}
