//! # idlewatcher
//!
//! Puts idle backends (Docker containers) to sleep and wakes them on the first request, inside a
//! [Pingora](https://github.com/cloudflare/pingora) gateway.
//!
//! Each *route* (a set of host names) fronts one *backend*. After `idle_timeout` without traffic
//! the backend is paused, stopped or killed. The next request wakes it — exactly one start
//! however many requests arrive, dependencies first, then a readiness probe from the gateway
//! itself. Browsers get a loading page that follows the wake live; every other request is held
//! and then proxied unchanged (body included), or answered 503 with `Retry-After`.
//!
//! ## Embedding the gate in your own Pingora gateway
//!
//! ```no_run
//! # use pingora::prelude::*;
//! # use pingora::proxy::{ProxyHttp, Session};
//! # use std::sync::Arc;
//! use idlewatcher::{GateContext, IdleWatcher};
//!
//! struct MyGateway { idle: Arc<IdleWatcher> }
//!
//! #[async_trait::async_trait]
//! impl ProxyHttp for MyGateway {
//!     type CTX = GateContext;
//!     fn new_ctx(&self) -> GateContext { GateContext::default() }
//!     async fn request_filter(&self, session: &mut Session, ctx: &mut GateContext) -> Result<bool> {
//!         // Answered here (loading page, 503, status…) → done; otherwise the request goes on.
//!         self.idle.gate(session, ctx).await
//!     }
//!     async fn upstream_peer(&self, _s: &mut Session, ctx: &mut GateContext) -> Result<Box<HttpPeer>> {
//!         self.idle.upstream_peer(ctx)
//!     }
//! }
//! ```
//!
//! Build the [`IdleWatcher`] with [`IdleWatcher::from_config`], add its
//! [`background_services`](IdleWatcher::background_services) (the idle clock and the Docker event
//! stream: without them nothing sleeps, outside changes go unnoticed, and the warm-up after a
//! wake never ends) to your `Server`, and keep the [`GateContext`] alive for the whole request
//! (it holds the guard that keeps the backend awake). Wrapping the proxy in an
//! [`EarlyHold`](hold::EarlyHold) (optional) holds requests for sleeping routes before Pingora
//! reads them, for far less memory. `examples/embed.rs` is a complete program.
//!
//! ## Layout (one concept per module)
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the YAML file, validated all at once |
//! | [`routes`] | the Host → route table |
//! | [`gate`] | what a request gets while its backend is not ready |
//! | [`hold`] | holding requests through a wake, before Pingora reads them where it can |
//! | [`watcher`] | one backend's state, singleflight wake, sleep |
//! | [`readiness`] | probing the backend from the gateway |
//! | [`release`] | how requests enter a backend that just woke: slow start, fail-fast, retries |
//! | [`events`] | wake events, history and live |
//! | [`sse`], [`page`], [`respond`] | the event stream, the loading page, framed answers |
//! | [`idle`], [`wheel`] | the idle clock and its timing wheel |
//! | [`providers`] | Docker (and the trait others implement) |
//! | [`proxy`] | the bundled `ProxyHttp` the `idlewatcher` binary runs |

pub mod config;
pub mod events;
pub mod gate;
pub mod hold;
pub mod idle;
pub mod page;
pub mod providers;
pub mod proxy;
pub mod readiness;
pub mod release;
pub mod respond;
pub mod routes;
pub mod sse;
pub mod watcher;
pub mod wheel;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{BackendConfig, GatewayConfig, RouteConfig};
use crate::idle::{IdleClock, IdleTicker, IdleTimers};
use crate::providers::docker::{DockerEvents, DockerProvider};
use crate::providers::{BackendObserver, Provider, ProviderError};
use crate::routes::{Route, RouteTable};
use crate::watcher::{BackendSettings, Upstream, UpstreamTarget, Watcher};

pub use crate::gate::{GateContext, IdleGate, UnknownHost};

/// Connecting to a backend that answered its readiness probe should be quick; a SYN lost to a
/// full listen backlog is retried by the kernel after 1 s, so allow a few of those.
const UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long start-up waits for the Docker engine to answer.
const DOCKER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why the gateway could not be assembled from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Docker engine could not be reached.
    #[error("cannot connect to the Docker engine: {0}")]
    Docker(#[source] ProviderError),
    /// The Docker engine did not answer.
    #[error("the Docker engine did not answer within {0:?}")]
    DockerTimeout(std::time::Duration),
    /// A route uses a provider this build does not support.
    #[error("route {route:?}: {message}")]
    Unsupported {
        /// The route.
        route: String,
        /// What is missing.
        message: String,
    },
}

/// The plugin: routes, watchers, the idle clock and the provider event streams.
pub struct IdleWatcher {
    gate: IdleGate,
    watchers: Vec<Arc<Watcher>>,
    clock: Arc<IdleClock>,
    background: Mutex<Option<Background>>,
}

impl IdleWatcher {
    /// Assembles everything from a validated configuration and connects to the Docker engine
    /// (if any route uses it). Call it inside a tokio runtime.
    pub async fn from_config(config: &GatewayConfig) -> Result<Self, StartError> {
        Self::from_config_with(config, UnknownHost::NotFound).await
    }

    /// Like [`from_config`](Self::from_config), choosing what unknown hosts get.
    pub async fn from_config_with(
        config: &GatewayConfig,
        unknown_host: UnknownHost,
    ) -> Result<Self, StartError> {
        let docker = if config
            .routes
            .iter()
            .any(|route| matches!(route.backend, BackendConfig::Docker { .. }))
        {
            let connect = providers::docker::connect(config.docker_host.as_deref());
            match tokio::time::timeout(DOCKER_CONNECT_TIMEOUT, connect).await {
                Ok(docker) => Some(docker.map_err(StartError::Docker)?),
                Err(_) => return Err(StartError::DockerTimeout(DOCKER_CONNECT_TIMEOUT)),
            }
        } else {
            None
        };
        let mut providers: HashMap<BackendConfig, Arc<dyn Provider>> = HashMap::new();
        for route in &config.routes {
            if providers.contains_key(&route.backend) {
                continue;
            }
            let provider: Arc<dyn Provider> = match (&route.backend, &docker) {
                (BackendConfig::Docker { container }, Some(docker)) => {
                    Arc::new(DockerProvider::new(docker.clone(), container))
                }
                _ => {
                    return Err(StartError::Unsupported {
                        route: route.name.clone(),
                        message: "the proxmox provider is not available in this build".into(),
                    })
                }
            };
            providers.insert(route.backend.clone(), provider);
        }
        let mut events = docker.clone().map(DockerEvents::new);
        let assembled = Assembly::build(config, &providers)?;
        if let Some(events) = events.as_mut() {
            for (backend, watcher) in &assembled.by_backend {
                if let BackendConfig::Docker { container } = backend {
                    let observer: Arc<dyn BackendObserver> = watcher.clone();
                    events.watch(container, observer);
                }
            }
        }
        let routes = Arc::new(RouteTable::new(assembled.routes));
        let clock = assembled.clock;
        let gate = IdleGate::new(
            routes,
            &config.path_prefix,
            Arc::clone(&clock),
            unknown_host,
        );
        let timers = IdleTimers::new(Arc::clone(&clock), assembled.watchers.clone());
        Ok(Self {
            gate,
            watchers: assembled.watchers,
            clock,
            background: Mutex::new(Some(Background {
                ticker: IdleTicker::new(timers, config.max_concurrent_stops),
                events: Mutex::new(events),
            })),
        })
    }

    /// Runs the gate for one request: `Ok(true)` means it was answered (loading page, 503,
    /// status…) and the request is done; `Ok(false)` means let it through to
    /// [`upstream_peer`](Self::upstream_peer). Call it first thing in `request_filter`.
    #[inline]
    pub async fn gate(
        &self,
        session: &mut pingora::proxy::Session,
        ctx: &mut GateContext,
    ) -> pingora::Result<bool> {
        self.gate.check(session, ctx).await
    }

    /// The upstream for a request the gate let through (address resolved by the last wake).
    pub fn upstream_peer(&self, ctx: &GateContext) -> pingora::Result<Box<HttpPeer>> {
        let address = self.gate.upstream(ctx).ok_or_else(|| {
            pingora::Error::explain(
                pingora::ErrorType::ConnectNoRoute,
                "idlewatcher: the request has no ready upstream",
            )
        })?;
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(UPSTREAM_CONNECT_TIMEOUT);
        Ok(Box::new(peer))
    }

    /// The gate itself (route table, internal endpoints).
    pub fn idle_gate(&self) -> &IdleGate {
        &self.gate
    }

    /// Every backend's watcher, by id.
    pub fn watchers(&self) -> &[Arc<Watcher>] {
        &self.watchers
    }

    /// The shared idle clock.
    pub fn clock(&self) -> &Arc<IdleClock> {
        &self.clock
    }

    /// The background work to add to the Pingora `Server` (`server.add_boxed_service(..)`): the
    /// idle clock with its stopper, and the provider event streams. Returns nothing the second
    /// time (there is one of each per gateway).
    pub fn background_services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        match self.background.lock().take() {
            Some(background) => vec![Box::new(background_service("idlewatcher", background))],
            None => Vec::new(),
        }
    }
}

/// The ticker and the event streams, run together on one background task.
struct Background {
    ticker: IdleTicker,
    events: Mutex<Option<DockerEvents>>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, shutdown: ShutdownWatch) {
        // `DockerEvents::run` consumes the stream; Pingora starts a service once.
        let events = self.events.lock().take();
        let event_shutdown = shutdown.clone();
        let events = async move {
            if let Some(events) = events {
                events.run(event_shutdown).await;
            }
        };
        tokio::join!(self.ticker.run(shutdown), events);
    }
}

/// Watchers and routes built from the configuration (in time linear in the routes).
struct Assembly {
    clock: Arc<IdleClock>,
    watchers: Vec<Arc<Watcher>>,
    by_backend: HashMap<BackendConfig, Arc<Watcher>>,
    routes: Vec<(Arc<Route>, Vec<String>)>,
}

/// What building a watcher needs to look up, indexed once.
struct Plan<'a> {
    config: &'a GatewayConfig,
    providers: &'a HashMap<BackendConfig, Arc<dyn Provider>>,
    /// Route name → index.
    route_index: HashMap<&'a str, usize>,
    /// Backend → the upstreams of every route that fronts it (its watcher probes them all).
    upstreams: HashMap<&'a BackendConfig, Vec<Arc<Upstream>>>,
}

impl Assembly {
    fn build(
        config: &GatewayConfig,
        providers: &HashMap<BackendConfig, Arc<dyn Provider>>,
    ) -> Result<Self, StartError> {
        let mut assembly = Self {
            clock: IdleClock::new(config.tick),
            watchers: Vec::new(),
            by_backend: HashMap::new(),
            routes: Vec::new(),
        };
        // Each route's upstream, created first so a backend's watcher can probe all of them.
        let route_upstreams: Vec<Arc<Upstream>> = config
            .routes
            .iter()
            .map(|route| {
                let target = match (&route.upstream, route.port) {
                    (Some(fixed), _) => UpstreamTarget::Fixed(fixed.clone()),
                    (None, Some(port)) => UpstreamTarget::BackendPort(port),
                    (None, None) => UpstreamTarget::BackendPort(80),
                };
                Arc::new(Upstream::new(target, route.health.clone()))
            })
            .collect();
        let mut plan = Plan {
            config,
            providers,
            route_index: HashMap::with_capacity(config.routes.len()),
            upstreams: HashMap::new(),
        };
        for (index, (route, upstream)) in config.routes.iter().zip(&route_upstreams).enumerate() {
            plan.route_index.insert(route.name.as_str(), index);
            plan.upstreams
                .entry(&route.backend)
                .or_default()
                .push(Arc::clone(upstream));
        }
        for index in 0..config.routes.len() {
            assembly.watcher_for(&plan, index, &mut Vec::new())?;
        }
        for (route, upstream) in config.routes.iter().zip(route_upstreams) {
            let watcher = assembly
                .by_backend
                .get(&route.backend)
                .cloned()
                .ok_or_else(|| StartError::Unsupported {
                    route: route.name.clone(),
                    message: "no watcher was built for its backend".into(),
                })?;
            let entry = Route::new(
                route.name.clone(),
                watcher,
                upstream,
                route.start_endpoint.clone(),
                route.no_loading_page,
                route.max_waiters,
            );
            assembly.routes.push((Arc::new(entry), route.hosts.clone()));
        }
        Ok(assembly)
    }

    /// The watcher of route `index`'s backend, created (after its dependencies, depth first)
    /// if needed. The configuration guarantees there is no cycle; `visiting` guards anyway.
    fn watcher_for(
        &mut self,
        plan: &Plan<'_>,
        index: usize,
        visiting: &mut Vec<usize>,
    ) -> Result<Arc<Watcher>, StartError> {
        let route = &plan.config.routes[index];
        if let Some(watcher) = self.by_backend.get(&route.backend) {
            return Ok(Arc::clone(watcher));
        }
        if visiting.contains(&index) {
            return Err(StartError::Unsupported {
                route: route.name.clone(),
                message: "dependency cycle".into(),
            });
        }
        visiting.push(index);
        let mut dependencies = Vec::new();
        for dependency in &route.depends_on {
            let Some(&target) = plan.route_index.get(dependency.route.as_str()) else {
                continue;
            };
            let watcher = self.watcher_for(plan, target, visiting)?;
            dependencies.push((watcher, dependency.condition));
        }
        visiting.pop();
        let sharing = plan
            .upstreams
            .get(&route.backend)
            .cloned()
            .unwrap_or_default();
        let watcher = Watcher::new(
            self.watchers.len() as u32,
            Arc::clone(&plan.providers[&route.backend]),
            self.settings(route),
            dependencies,
            sharing,
            Arc::clone(&self.clock),
        );
        self.watchers.push(Arc::clone(&watcher));
        self.by_backend
            .insert(route.backend.clone(), Arc::clone(&watcher));
        Ok(watcher)
    }

    fn settings(&self, route: &RouteConfig) -> BackendSettings {
        BackendSettings {
            idle_ticks: if route.idle_timeout.is_zero() {
                0
            } else {
                self.clock.ticks(route.idle_timeout).max(1)
            },
            wake_timeout: route.wake_timeout,
            stop_method: route.stop_method,
            stop_signal: route.stop_signal.clone(),
            stop_timeout: route.stop_timeout,
            retry_backoff: route.retry_backoff,
        }
    }
}
