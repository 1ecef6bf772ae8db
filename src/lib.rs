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
//! [`EarlyHold`](http::EarlyHold) (optional) holds requests for sleeping routes before Pingora
//! reads them, for far less memory. `examples/embed.rs` is a complete program.
//!
//! ## Layout: layers, each importing only from the ones above it in this table
//!
//! `ARCHITECTURE.md` at the repository's root is the map (code map, invariants, request path).
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the YAML file, validated all at once |
//! | [`listen`] | start-up check that every listen address can be bound |
//! | [`providers`] | provider families (Docker…): drive a backend, watch outside changes |
//! | [`idle`] | the idle clock, its timers and timing wheel |
//! | [`backend`] | one backend's state, singleflight wake, sleep, readiness, slow start, events |
//! | [`routes`] | the live Host → route table |
//! | [`wait`] | waiting through a wake, for any protocol |
//! | [`metrics`] | Prometheus metrics of wakes, sleeps and refused requests |
//! | [`http`] | the HTTP front: gate, early hold, loading page, event stream, HTTPS (`http::tls`), bundled proxy |
//! | [`stream`] | the TCP and UDP fronts: hold unread, wake, splice or replay |
//! | [`admin`] | the admin listener: `/metrics`, the routes, wake and sleep by hand |
//! | [`assemble`] | configuration → running parts, at start-up and on every reload |
//! | this file | the public facade, [`IdleWatcher`] |

#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!(
    "the features `mimalloc` and `jemalloc` each choose the global allocator: enable one"
);

/// The global allocator when built with `--features mimalloc` (glibc's otherwise).
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The global allocator when built with `--features jemalloc` (glibc's otherwise).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod assemble;
pub mod backend;
pub mod config;
pub mod http;
pub mod idle;
pub mod listen;
pub mod metrics;
pub mod providers;
pub mod routes;
pub mod stream;
pub mod wait;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;
use pingora::upstreams::peer::HttpPeer;

use crate::admin::{AdminApi, AdminToken};
use crate::assemble::build::Assembly;
use crate::assemble::Reloader;
use crate::backend::Watcher;
use crate::config::StreamProtocol;
use crate::idle::{IdleClock, IdleTicker};
use crate::metrics::Metrics;
use crate::providers::ProviderFamily;
use crate::routes::LiveRoutes;
use crate::stream::{TcpFront, UdpFront};

pub use crate::assemble::{check, StartError};
pub use crate::http::{GateContext, IdleGate, UnknownHost};

/// The plugin: routes, watchers, the idle clock and the provider families' event sources.
pub struct IdleWatcher {
    gate: Arc<IdleGate>,
    watchers: Vec<Arc<Watcher>>,
    clock: Arc<IdleClock>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    background: Mutex<Option<Background>>,
}

impl IdleWatcher {
    /// Assembles everything from a validated configuration and connects to the provider
    /// families its routes use (the Docker engine…). Call it inside a tokio runtime.
    pub async fn from_config(config: &config::GatewayConfig) -> Result<Self, StartError> {
        Self::from_config_with(config, UnknownHost::NotFound).await
    }

    /// Like [`from_config`](Self::from_config), choosing what unknown hosts get.
    pub async fn from_config_with(
        config: &config::GatewayConfig,
        unknown_host: UnknownHost,
    ) -> Result<Self, StartError> {
        let assembled = Assembly::build(config).await?;
        // The stream fronts and the admin listener: services of their own beside the background.
        let mut services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
        for stream in assembled.streams {
            match stream.protocol {
                StreamProtocol::Tcp => services.push(Box::new(TcpFront::service(stream))),
                StreamProtocol::Udp => {
                    let (route, address) = (stream.route.name.clone(), stream.listen);
                    let front =
                        UdpFront::bind(stream).map_err(|source| StartError::StreamBind {
                            route,
                            address,
                            source,
                        })?;
                    services.push(front.service());
                }
            }
        }
        let clock = assembled.clock;
        let routes = Arc::new(LiveRoutes::new(assembled.routes));
        let reloader = Arc::new(Reloader::new(
            Arc::clone(&routes),
            Arc::clone(&clock),
            Arc::clone(&assembled.metrics),
            assembled.families.clone(),
            &assembled.watchers,
            assembled.by_backend,
        ));
        let admin = match &config.admin {
            Some(admin) => {
                let token = match &admin.token_file {
                    Some(path) => Some(AdminToken::from_file(path)?),
                    None => None,
                };
                let api = AdminApi::new(Arc::clone(&routes), Arc::clone(&assembled.metrics), token)
                    .with_reload(Arc::clone(&reloader) as Arc<dyn admin::Reload>);
                Some(api.service(&admin.listen))
            }
            None => None,
        };
        if let Some(admin) = admin {
            services.push(Box::new(admin));
        }
        let gate = Arc::new(
            IdleGate::new(
                routes,
                &config.path_prefix,
                Arc::clone(&clock),
                unknown_host,
            )
            .with_client_limits(config.clients.clone()),
        );
        Ok(Self {
            gate,
            watchers: assembled.watchers,
            clock,
            metrics: assembled.metrics,
            reloader: Arc::clone(&reloader),
            background: Mutex::new(Some(Background {
                ticker: IdleTicker::new(assembled.timers, config.max_concurrent_stops),
                families: assembled.families,
                reloader,
                services,
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
        self.gate.upstream_peer(ctx)
    }

    /// The gate itself (live route table, internal endpoints); give it to
    /// [`EarlyHold`](http::EarlyHold) and [`IdleProxy`](http::IdleProxy).
    pub fn idle_gate(&self) -> &Arc<IdleGate> {
        &self.gate
    }

    /// The live route table.
    pub fn routes(&self) -> &Arc<LiveRoutes> {
        self.gate.routes()
    }

    /// Lets the gateway reload `path` (the file `config` was read from) on SIGHUP and
    /// `POST /api/reload`. Call it before [`background_services`](Self::background_services).
    pub fn enable_reload(&self, path: std::path::PathBuf, config: config::Config) {
        self.reloader.set_file(path, config);
    }

    /// The certificates the HTTPS listeners serve ([`http::tls::listener`]): every reload of
    /// the file reads them again (a set that cannot be read leaves the current one serving).
    pub fn serve_certificates(&self, certificates: Arc<http::tls::Certificates>) {
        self.reloader.set_certificates(certificates);
    }

    /// The reloader: applies a configuration read again without a restart.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Every backend's watcher at start-up, by id (a reload adds and retires watchers; the
    /// route table has the ones in force).
    pub fn watchers(&self) -> &[Arc<Watcher>] {
        &self.watchers
    }

    /// The metrics registry (wakes, sleeps, refused requests): gather it into your own
    /// `/metrics`, or let the admin listener serve it.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared idle clock.
    pub fn clock(&self) -> &Arc<IdleClock> {
        &self.clock
    }

    /// The background work to add to the Pingora `Server` (`server.add_boxed_service(..)`): the
    /// idle clock with its stopper, each provider family's event source, the routes' stream
    /// fronts (a listening service per TCP stream, a background service per UDP stream, whose
    /// socket is already bound) and the admin listener when the configuration has one. Returns
    /// nothing the second time (there is one of each per gateway).
    pub fn background_services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        match self.background.lock().take() {
            Some(mut background) => {
                let others = std::mem::take(&mut background.services);
                let mut services: Vec<Box<dyn ServiceWithDependents>> =
                    vec![Box::new(background_service("idlewatcher", background))];
                services.extend(others);
                services
            }
            None => Vec::new(),
        }
    }
}

/// The ticker and the families' event sources, run together on one background task (and the
/// other services, handed out beside it).
struct Background {
    ticker: IdleTicker,
    families: Vec<Arc<dyn ProviderFamily>>,
    /// Reloads on SIGHUP (when the gateway was started from a file).
    reloader: Arc<Reloader>,
    /// The stream fronts and the admin listener, handed out as services of their own.
    services: Vec<Box<dyn ServiceWithDependents>>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, shutdown: ShutdownWatch) {
        let events = futures_util::future::join_all(
            self.families
                .iter()
                .map(|family| family.run_events(shutdown.clone())),
        );
        self.reloader.set_shutdown(shutdown.clone());
        let hangups = async {
            if self.reloader.has_file() {
                self.reloader.run_on_sighup(shutdown.clone()).await;
            }
        };
        let labels = async {
            if self.reloader.discovers_labels() {
                Arc::clone(&self.reloader)
                    .run_label_discovery(shutdown.clone())
                    .await;
            }
        };
        tokio::join!(self.ticker.run(shutdown.clone()), events, hangups, labels);
    }
}
