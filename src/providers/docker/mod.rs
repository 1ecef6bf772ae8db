//! The Docker provider family: containers on Docker (or Podman-compatible) engines, one or
//! several, driven through the engine API (bollard). A backend is a (engine, container) pair.
//!
//! * [`Endpoint`] and [`EngineLink`] (`engine.rs`): where an engine listens (`unix://`, `tcp://`,
//!   `http://`, TLS), whether it answers right now; [`connect`] opens a client and negotiates the
//!   API version, so older engines (tested against engine 20.10, API 1.41) and Podman's
//!   Docker-compatible API work.
//! * `tls.rs`: Docker's `ca.pem`/`cert.pem`/`key.pem` as a rustls client over hyper-rustls.
//! * [`DockerProvider`] (`container.rs`) implements [`Provider`] for one container, named by
//!   name or id exactly as the user configured it.
//! * [`DockerEvents`] (`events.rs`) is the single event source of one engine; it also keeps the
//!   engine's [`EngineLink`] up to date (down while the stream reconnects); `clock.rs` reads
//!   event times on the engine's clock, which may differ from this machine's.
//! * [`FAMILY`] registers the family; [`DockerFamily`] is the connected family the gateway uses.

mod clock;
mod container;
mod engine;
mod events;
mod labels;
mod registry;
mod tls;
mod traffic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

pub use container::DockerProvider;
pub(crate) use container::{http_status, map_error};
pub use engine::{connect, Endpoint, EngineLink};
pub(crate) use engine::{error_chain, negotiate, reason_of};
pub use events::DockerEvents;
pub use labels::{LabelDiscovery, OnLabels};
pub use tls::EngineTlsError;

use crate::config::{BackendConfig, DockerEngine, GatewayConfig, StopMethod};
use crate::providers::{BackendObserver, FamilyKind, Provider, ProviderError, ProviderFamily};

/// How long start-up gives the family (its engines are not all waited for: see
/// [`FIRST_CONTACT`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long start-up waits for the engines' first answer, all at once: long enough for a
/// healthy engine, so its routes start with a known state; an engine that has not answered by
/// then is retried in the background, and its routes answer 503 + `Retry-After` meanwhile.
const FIRST_CONTACT: Duration = Duration::from_secs(3);

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
        // With label discovery, the default engine's containers may become routes at any time.
        let engines = config
            .routes
            .iter()
            .filter_map(|route| match &route.backend {
                BackendConfig::Docker { engine, .. } => Some(engine),
                _ => None,
            })
            .chain(config.docker_labels.then_some(&config.docker));
        let family = DockerFamily::connect(engines)
            .await?
            .with_traffic_veto(config.docker_traffic_veto);
        let family: Arc<dyn ProviderFamily> = Arc::new(family);
        Ok(family)
    }
    .boxed()
}

/// One engine of the family: its client, whether it answers, and its one event stream.
struct Engine {
    docker: Docker,
    link: Arc<EngineLink>,
    events: DockerEvents,
}

/// The connected Docker family: every engine the routes name, each with ONE client and ONE
/// event stream for all its containers, connecting, reconnecting and resyncing on its own.
pub struct DockerFamily {
    /// By engine as configured; configurations resolving to the same endpoint share an entry.
    engines: HashMap<DockerEngine, Arc<Engine>>,
    /// Each distinct engine once.
    distinct: Vec<Arc<Engine>>,
    /// The drivers' traffic veto threshold in bytes (0: off).
    traffic_veto: u64,
}

impl DockerFamily {
    /// The family over one engine client from [`connect`] (embedders, tests): every backend runs
    /// on it, whatever engine it names.
    pub fn new(docker: Docker) -> Self {
        let events = DockerEvents::new(docker.clone());
        let link = Arc::new(EngineLink::new("the Docker engine".to_string()));
        link.set_up();
        let engine = Arc::new(Engine {
            docker,
            link,
            events,
        });
        Self {
            engines: HashMap::new(),
            distinct: vec![engine],
            traffic_veto: 0,
        }
    }

    /// Gives every container's driver the traffic veto (`docker: { traffic_veto }`): its stop
    /// is postponed while its network counters grow by more than `threshold` bytes without
    /// this gateway. 0: off.
    pub fn with_traffic_veto(mut self, threshold: u64) -> Self {
        self.traffic_veto = threshold;
        self
    }

    /// The family over `engines` (as routes configure them, repeats allowed): a client per
    /// distinct endpoint, then the first contact with all of them at once, bounded by
    /// [`FIRST_CONTACT`]. Only unusable TLS material fails; an engine that does not answer is
    /// left to its event stream's reconnection.
    pub async fn connect<'a>(
        engines: impl IntoIterator<Item = &'a DockerEngine>,
    ) -> Result<Self, ProviderError> {
        let mut by_endpoint: HashMap<Endpoint, Arc<Engine>> = HashMap::new();
        let mut family = Self {
            engines: HashMap::new(),
            distinct: Vec::new(),
            traffic_veto: 0,
        };
        for configured in engines {
            if family.engines.contains_key(configured) {
                continue;
            }
            let endpoint = Endpoint::resolve(configured);
            let engine = match by_endpoint.get(&endpoint) {
                Some(engine) => Arc::clone(engine),
                None => {
                    let docker = endpoint.client()?;
                    let link = Arc::new(EngineLink::new(endpoint.shown()));
                    let engine = Arc::new(Engine {
                        events: DockerEvents::on_engine(docker.clone(), Arc::clone(&link)),
                        docker,
                        link,
                    });
                    by_endpoint.insert(endpoint, Arc::clone(&engine));
                    family.distinct.push(Arc::clone(&engine));
                    engine
                }
            };
            family.engines.insert(configured.clone(), engine);
        }
        let first_contact = family.distinct.iter().map(|engine| async move {
            let shown = engine.link.shown();
            match tokio::time::timeout(FIRST_CONTACT, engine::negotiate(&engine.docker, shown))
                .await
            {
                Ok(Ok(())) => engine.link.set_up(),
                Ok(Err(error)) => {
                    tracing::warn!(engine = %shown, %error, "engine unreachable at start-up; retrying in the background");
                    engine.link.set_down(engine::reason_of(&error));
                }
                Err(_) => {
                    tracing::warn!(engine = %shown, waited = ?FIRST_CONTACT, "engine did not answer at start-up; retrying in the background");
                    engine.link.set_down(format!("no answer within {FIRST_CONTACT:?}"));
                }
            }
        });
        futures_util::future::join_all(first_contact).await;
        Ok(family)
    }

    /// The container a Docker backend names, and the engine it runs on.
    fn locate<'a>(&'a self, backend: &'a BackendConfig) -> Option<(&'a str, &'a Arc<Engine>)> {
        let BackendConfig::Docker { container, engine } = backend else {
            return None;
        };
        let found = match self.engines.get(engine) {
            Some(found) => found,
            // Built by `new`: one engine for everything.
            None if self.engines.is_empty() => self.distinct.first()?,
            None => return None,
        };
        Some((container, found))
    }
}

#[async_trait]
impl ProviderFamily for DockerFamily {
    fn kind(&self) -> &'static FamilyKind {
        &FAMILY
    }

    fn driver(&self, backend: &BackendConfig) -> Option<Arc<dyn Provider>> {
        let (container, engine) = self.locate(backend)?;
        Some(Arc::new(
            DockerProvider::on_engine(
                engine.docker.clone(),
                container,
                Arc::clone(&engine.link),
                self.distinct.len() > 1,
            )
            .with_traffic_veto(self.traffic_veto),
        ))
    }

    fn watch(&self, backend: &BackendConfig, observer: Arc<dyn BackendObserver>) {
        if let Some((container, engine)) = self.locate(backend) {
            engine.events.watch(container, observer);
        }
    }

    fn unwatch(&self, backend: &BackendConfig, observer: &Arc<dyn BackendObserver>) {
        if let Some((container, engine)) = self.locate(backend) {
            engine.events.unwatch(container, observer);
        }
    }

    /// Every engine's event stream at once, each reconnecting on its own.
    async fn run_events(&self, shutdown: watch::Receiver<bool>) {
        let streams = self
            .distinct
            .iter()
            .map(|engine| engine.events.clone().run(shutdown.clone()));
        futures_util::future::join_all(streams).await;
    }
}
