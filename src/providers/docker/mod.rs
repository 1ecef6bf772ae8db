//! The Docker provider family: containers on one Docker (or Podman-compatible) engine, driven
//! through the engine API (bollard).
//!
//! * [`connect`] (`engine.rs`) opens a client and negotiates the API version, so older engines
//!   (tested against engine 20.10, API 1.41) and Podman's Docker-compatible API work.
//! * [`DockerProvider`] (`container.rs`) implements [`Provider`] for one container, named by
//!   name or id exactly as the user configured it.
//! * [`DockerEvents`] (`events.rs`) is the single event source for all Docker backends.
//! * [`FAMILY`] registers the family; [`DockerFamily`] is the connected family the gateway uses.

mod container;
mod engine;
mod events;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

pub use container::DockerProvider;
pub use engine::connect;
pub use events::DockerEvents;

use crate::config::{BackendConfig, GatewayConfig, StopMethod};
use crate::providers::{BackendObserver, FamilyKind, Provider, ProviderError, ProviderFamily};

/// How long start-up waits for the engine to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The Docker family's registration.
pub static FAMILY: FamilyKind = FamilyKind {
    name: "docker",
    shown: "the Docker engine",
    sleep_methods: &[StopMethod::Pause, StopMethod::Stop, StopMethod::Kill],
    reports_health: true,
    connect_timeout: CONNECT_TIMEOUT,
    claims: |backend| matches!(backend, BackendConfig::Docker { .. }),
    connect: connect_family,
};

fn connect_family(
    config: &GatewayConfig,
) -> BoxFuture<'_, Result<Arc<dyn ProviderFamily>, ProviderError>> {
    async move {
        let docker = connect(config.docker_host.as_deref()).await?;
        let family: Arc<dyn ProviderFamily> = Arc::new(DockerFamily::new(docker));
        Ok(family)
    }
    .boxed()
}

/// The connected Docker family: one engine client and one event stream for all its containers.
pub struct DockerFamily {
    docker: Docker,
    events: DockerEvents,
}

impl DockerFamily {
    /// The family over an engine client from [`connect`].
    pub fn new(docker: Docker) -> Self {
        Self {
            events: DockerEvents::new(docker.clone()),
            docker,
        }
    }

    /// The container a Docker backend names.
    fn container(backend: &BackendConfig) -> Option<&str> {
        match backend {
            BackendConfig::Docker { container } => Some(container),
            _ => None,
        }
    }
}

#[async_trait]
impl ProviderFamily for DockerFamily {
    fn kind(&self) -> &'static FamilyKind {
        &FAMILY
    }

    fn driver(&self, backend: &BackendConfig) -> Option<Arc<dyn Provider>> {
        let container = Self::container(backend)?;
        Some(Arc::new(DockerProvider::new(
            self.docker.clone(),
            container,
        )))
    }

    fn watch(&self, backend: &BackendConfig, observer: Arc<dyn BackendObserver>) {
        if let Some(container) = Self::container(backend) {
            self.events.watch(container, observer);
        }
    }

    fn unwatch(&self, backend: &BackendConfig, observer: &Arc<dyn BackendObserver>) {
        if let Some(container) = Self::container(backend) {
            self.events.unwatch(container, observer);
        }
    }

    async fn run_events(&self, shutdown: watch::Receiver<bool>) {
        self.events.clone().run(shutdown).await;
    }
}
