//! Building: a validated configuration → the running parts (provider families connected, one
//! watcher per backend with its dependencies, the route table, the idle timers). Linear in the
//! routes. Names no provider family: it loops over [`FAMILIES`](crate::providers::FAMILIES).
//! A reload builds with the same code, handing in the watchers, upstreams and routes in force
//! so that whatever did not change is kept as it is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{BackendSettings, Upstream, UpstreamTarget, Watcher};
use crate::config::{
    fingerprint, BackendConfig, ConfigError, DependencyCondition, GatewayConfig, HealthCheck,
    InForce, RouteConfig, StreamProtocol,
};
use crate::idle::{IdleClock, IdleTimers, Sleeper};
use crate::metrics::Metrics;
use crate::providers::{
    BackendObserver, FamilyKind, Provider, ProviderError, ProviderFamily, FAMILIES,
};
use crate::routes::{Route, RoutePolicy, RouteTable};
use crate::stream::StreamRoute;

/// Why the gateway could not be assembled from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A provider family (a Docker engine, a Proxmox cluster) could not be reached.
    #[error("cannot connect to {shown}: {source}")]
    Connect {
        /// The family, as its registration shows it.
        shown: &'static str,
        /// Why.
        #[source]
        source: ProviderError,
    },
    /// A provider family did not answer in time.
    #[error("{shown} did not answer within {timeout:?}")]
    ConnectTimeout {
        /// The family, as its registration shows it.
        shown: &'static str,
        /// How long start-up waited.
        timeout: Duration,
    },
    /// A route's backend belongs to no provider family of this build.
    #[error("route {route:?}: the {family} provider is not available in this build")]
    Unsupported {
        /// The route.
        route: String,
        /// The backend's key in the route (`proxmox`).
        family: &'static str,
    },
    /// The metrics could not be registered (a metric name used twice: a programming error).
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The admin API's token file could not be used.
    #[error("admin: {0}")]
    AdminToken(#[from] crate::admin::TokenError),
    /// A UDP stream's listen address could not be bound (taken, or not an address of this host).
    #[error("route {route:?}: cannot listen on udp {address}: {source}")]
    StreamBind {
        /// The route.
        route: String,
        /// The stream's listen address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A reload names a backend on an engine (or cluster) the gateway did not connect to at
    /// start-up.
    #[error("route {route:?}: its {family} engine was not connected at start-up; restart the gateway (-u) to use it")]
    NotConnected {
        /// The route.
        route: String,
        /// The backend's key in the route (`docker`).
        family: &'static str,
    },
    /// A dependency cycle (the configuration check rules them out; kept as a guard).
    #[error("route {route:?}: dependency cycle")]
    DependencyCycle {
        /// A route on the cycle.
        route: String,
    },
}

/// The checks that need the provider registry (on top of the configuration's own): a route's
/// `stop_method` must be one its family supports. `idlewatcher -t` runs them too.
pub fn check(config: &GatewayConfig) -> Vec<ConfigError> {
    check_with(config, FAMILIES)
}

/// [`check`] against a given registry (tests use their own).
fn check_with(config: &GatewayConfig, families: &[&'static FamilyKind]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for route in &config.routes {
        let Some(kind) = families.iter().find(|kind| (kind.claims)(&route.backend)) else {
            continue; // Reported at start-up: the build may not have the family.
        };
        if !kind.sleep_methods.contains(&route.stop_method) {
            let supported: Vec<String> = kind
                .sleep_methods
                .iter()
                .map(|method| format!("{method:?}").to_lowercase())
                .collect();
            let at = route.written.position_of("stop_method");
            errors.push(ConfigError {
                route: Some(route.name.clone()),
                key: "stop_method".into(),
                message: format!(
                    "{} backends cannot be put to sleep with {:?}; use one of {}",
                    kind.name,
                    format!("{:?}", route.stop_method).to_lowercase(),
                    supported.join(", ")
                ),
                line: at.line,
                column: at.column,
            });
        }
        if route.health == HealthCheck::Docker && !kind.reports_health {
            let at = route.written.position_of("health");
            errors.push(ConfigError {
                route: Some(route.name.clone()),
                key: "health.docker".into(),
                message: format!(
                    "{} backends report no health check of their own; probe them with \
                     health: {{ path: … }} or {{ tcp: true }}",
                    kind.name
                ),
                line: at.line,
                column: at.column,
            });
        }
    }
    errors
}

/// The running parts built from a configuration.
pub(crate) struct Assembly {
    pub(crate) clock: Arc<IdleClock>,
    pub(crate) watchers: Vec<Arc<Watcher>>,
    pub(crate) by_backend: HashMap<BackendConfig, Arc<Watcher>>,
    pub(crate) routes: RouteTable,
    pub(crate) timers: IdleTimers,
    pub(crate) families: Vec<Arc<dyn ProviderFamily>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every route's streams, in file order.
    pub(crate) streams: Vec<StreamRoute>,
}

impl Assembly {
    /// Connects the families the routes use, builds everything, and registers every backend
    /// with its family's event source. Call it inside a tokio runtime.
    pub(crate) async fn build(config: &GatewayConfig) -> Result<Self, StartError> {
        let families = connect_families(config, &[]).await?;
        let clock = IdleClock::new(config.tick);
        let metrics = Metrics::new()?;
        let parts = Parts::build(
            config,
            &families,
            &clock,
            &metrics,
            &Kept::default(),
            &HashSet::new(),
        )?;
        for (backend, watcher) in &parts.by_backend {
            let observer: Arc<dyn BackendObserver> = watcher.clone();
            if let Some(family) = families.iter().find(|f| (f.kind().claims)(backend)) {
                family.watch(backend, observer);
            }
        }
        let sleepers = parts
            .watchers
            .iter()
            .map(|watcher| Arc::clone(watcher) as Arc<dyn Sleeper>)
            .collect();
        Ok(Self {
            timers: IdleTimers::new(Arc::clone(&clock), sleepers),
            clock,
            watchers: parts.watchers,
            by_backend: parts.by_backend,
            routes: RouteTable::new(parts.routes),
            families,
            metrics,
            streams: parts.streams,
        })
    }
}

/// What is in force when a reload builds anew: kept wherever nothing changed.
#[derive(Default)]
pub(crate) struct Kept {
    /// What the configuration in force is (its routes' fingerprints).
    pub(crate) in_force: Option<InForce>,
    /// Its watchers, by backend.
    pub(crate) by_backend: HashMap<BackendConfig, Arc<Watcher>>,
    /// Its route table.
    pub(crate) routes: Option<Arc<RouteTable>>,
    /// The next free watcher id.
    pub(crate) next_id: u32,
}

/// The parts built from a configuration (nothing started, nothing registered yet).
pub(crate) struct Parts {
    /// Every watcher of the configuration, kept ones included.
    pub(crate) watchers: Vec<Arc<Watcher>>,
    /// The same, by backend.
    pub(crate) by_backend: HashMap<BackendConfig, Arc<Watcher>>,
    /// Watchers kept from the configuration in force, with what they must now be
    /// (settings, dependencies, upstreams): applied by the reload, after nothing can fail.
    pub(crate) kept: Vec<KeptWatcher>,
    /// New watchers (to give to the idle clock and the event sources).
    pub(crate) fresh: Vec<Arc<Watcher>>,
    /// The routes with their hosts, in file order.
    pub(crate) routes: Vec<(Arc<Route>, Vec<String>)>,
    /// Every route's streams, in file order.
    pub(crate) streams: Vec<StreamRoute>,
    /// The next free watcher id.
    pub(crate) next_id: u32,
}

/// A watcher kept by a reload, with its new settings, dependencies and upstreams.
pub(crate) struct KeptWatcher {
    pub(crate) watcher: Arc<Watcher>,
    pub(crate) settings: Arc<BackendSettings>,
    pub(crate) dependencies: Vec<(Arc<Watcher>, DependencyCondition)>,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
}

impl Parts {
    /// Builds every part of `config` over the connected `families`, keeping from `kept` the
    /// watchers of unchanged backends, the upstreams that did not change and the routes that
    /// did not change. Fails before anything is changed (a backend no family can drive).
    /// `labelled` names the routes that come from Docker labels (for listings).
    pub(crate) fn build(
        config: &GatewayConfig,
        families: &[Arc<dyn ProviderFamily>],
        clock: &Arc<IdleClock>,
        metrics: &Arc<Metrics>,
        kept: &Kept,
        labelled: &HashSet<String>,
    ) -> Result<Self, StartError> {
        let mut providers: HashMap<&BackendConfig, Arc<dyn Provider>> = HashMap::new();
        for route in &config.routes {
            if providers.contains_key(&route.backend)
                || kept.by_backend.contains_key(&route.backend)
            {
                continue;
            }
            let provider = match families
                .iter()
                .find_map(|family| family.driver(&route.backend))
            {
                Some(provider) => provider,
                None if families
                    .iter()
                    .any(|family| (family.kind().claims)(&route.backend)) =>
                {
                    return Err(StartError::NotConnected {
                        route: route.name.clone(),
                        family: backend_key(&route.backend),
                    })
                }
                None => {
                    return Err(StartError::Unsupported {
                        route: route.name.clone(),
                        family: backend_key(&route.backend),
                    })
                }
            };
            providers.insert(&route.backend, provider);
        }

        // An upstream equal to one the kept watcher already has is that one (it keeps the
        // address its last wake resolved, and stream fronts keep theirs).
        let reuse = |backend: &BackendConfig, upstream: Upstream| -> Arc<Upstream> {
            kept.by_backend
                .get(backend)
                .and_then(|watcher| {
                    watcher
                        .upstreams()
                        .iter()
                        .find(|known| same_upstream(known, &upstream))
                        .cloned()
                })
                .unwrap_or_else(|| Arc::new(upstream))
        };
        let mut built = Built {
            clock: Arc::clone(clock),
            watchers: Vec::new(),
            by_backend: HashMap::new(),
            old: &kept.by_backend,
            next_id: kept.next_id,
            kept: Vec::new(),
            fresh: Vec::new(),
            settings: HashMap::new(),
        };
        let plan = Plan::new(config, &providers, &reuse);
        for index in 0..config.routes.len() {
            built.watcher_for(&plan, index, &mut Vec::new())?;
        }
        link_dependents(config, &built.by_backend);
        let old_routes: HashMap<&str, u64> = kept
            .in_force
            .as_ref()
            .map(InForce::fingerprints)
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut streams = Vec::new();
        for ((route, upstream), stream_upstreams) in config
            .routes
            .iter()
            .zip(&plan.route_upstreams)
            .zip(&plan.stream_upstreams)
        {
            let watcher = Arc::clone(&built.by_backend[&route.backend]);
            // A backend's wakes and sleeps are counted under the first route that fronts it.
            if watcher.metrics().is_none() {
                watcher.set_metrics(metrics.for_backend(&route.name));
            }
            // A route that did not change, over the same watcher and upstream, is kept as it is
            // (with the requests held on it).
            let unchanged = old_routes
                .get(route.name.as_str())
                .filter(|old| **old == fingerprint(route))
                .and_then(|_| kept.routes.as_ref()?.by_name(&route.name).cloned())
                .filter(|old| {
                    Arc::ptr_eq(&old.watcher, &watcher) && Arc::ptr_eq(&old.upstream, upstream)
                });
            let entry = match unchanged {
                Some(old) => old,
                None => Arc::new(
                    Route::new(
                        route.name.clone(),
                        watcher,
                        Arc::clone(upstream),
                        route.start_endpoint.clone(),
                        route.no_loading_page,
                        route.max_waiters,
                    )
                    .with_policy(RoutePolicy {
                        show_details: route.show_details,
                        ignore_user_agents: route.ignore_user_agents.clone(),
                    })
                    .with_source(if labelled.contains(&route.name) {
                        "labels"
                    } else {
                        "file"
                    })
                    .with_streams(
                        route
                            .streams
                            .iter()
                            .map(|stream| format!("{} {}", stream.protocol.as_str(), stream.listen))
                            .collect(),
                    ),
                ),
            };
            for (stream, upstream) in route.streams.iter().zip(stream_upstreams) {
                streams.push(StreamRoute {
                    route: Arc::clone(&entry),
                    upstream: Arc::clone(upstream),
                    listen: stream.listen,
                    protocol: stream.protocol,
                    settings: route.stream_settings.clone(),
                });
            }
            routes.push((entry, route.hosts.clone()));
        }
        Ok(Self {
            watchers: built.watchers,
            by_backend: built.by_backend,
            kept: built.kept,
            fresh: built.fresh,
            routes,
            streams,
            next_id: built.next_id,
        })
    }
}

/// Whether two upstreams are configured alike (the address they resolved aside).
fn same_upstream(a: &Upstream, b: &Upstream) -> bool {
    a.target == b.target
        && a.health == b.health
        && a.explicit_health == b.explicit_health
        && a.probed == b.probed
        && a.ready_after == b.ready_after
}

/// Gives every dependency its dependents (each dependent backend once, under the name of the
/// first route that declares the dependency), so it is held awake while they are.
fn link_dependents(config: &GatewayConfig, by_backend: &HashMap<BackendConfig, Arc<Watcher>>) {
    let by_name: HashMap<&str, &RouteConfig> = config
        .routes
        .iter()
        .map(|route| (route.name.as_str(), route))
        .collect();
    let mut dependents: HashMap<u32, Vec<(String, &Arc<Watcher>)>> = HashMap::new();
    for route in &config.routes {
        let Some(dependent) = by_backend.get(&route.backend) else {
            continue;
        };
        for dependency in &route.depends_on {
            let Some(target) = by_name
                .get(dependency.route.as_str())
                .and_then(|target| by_backend.get(&target.backend))
            else {
                continue;
            };
            let list = dependents.entry(target.id()).or_default();
            if !list.iter().any(|(_, known)| known.id() == dependent.id()) {
                list.push((route.name.clone(), dependent));
            }
        }
    }
    for watcher in by_backend.values() {
        // Every watcher, so that one whose dependents a reload removed holds nothing any more.
        watcher.set_dependents(dependents.remove(&watcher.id()).unwrap_or_default());
    }
}

/// Connects every registered family that at least one route uses, each within its timeout.
/// Families already connected (`connected`, on a reload) are not connected again.
pub(crate) async fn connect_families(
    config: &GatewayConfig,
    connected: &[Arc<dyn ProviderFamily>],
) -> Result<Vec<Arc<dyn ProviderFamily>>, StartError> {
    let mut families = Vec::new();
    for kind in FAMILIES {
        if connected
            .iter()
            .any(|family| std::ptr::eq(family.kind(), *kind))
        {
            continue;
        }
        // Label discovery routes Docker containers of the default engine: its family is used
        // even before any is found.
        let labelled = BackendConfig::Docker {
            container: String::new(),
            engine: config.docker.clone(),
        };
        let used = config
            .routes
            .iter()
            .any(|route| (kind.claims)(&route.backend))
            || (config.docker_labels && (kind.claims)(&labelled));
        if !used {
            continue;
        }
        let family = match tokio::time::timeout(kind.connect_timeout, (kind.connect)(config)).await
        {
            Ok(connected) => connected.map_err(|source| StartError::Connect {
                shown: kind.shown,
                source,
            })?,
            Err(_) => {
                return Err(StartError::ConnectTimeout {
                    shown: kind.shown,
                    timeout: kind.connect_timeout,
                })
            }
        };
        families.push(family);
    }
    Ok(families)
}

/// The route key naming a backend's kind (for "not available in this build").
fn backend_key(backend: &BackendConfig) -> &'static str {
    match backend {
        BackendConfig::Docker { .. } => "docker",
        BackendConfig::Proxmox { .. } => "proxmox",
        BackendConfig::Swarm { .. } => "swarm",
    }
}

/// What building a watcher needs to look up, indexed once.
struct Plan<'a> {
    config: &'a GatewayConfig,
    providers: &'a HashMap<&'a BackendConfig, Arc<dyn Provider>>,
    /// Route name → index.
    route_index: HashMap<&'a str, usize>,
    /// Each route's upstream, created first so a backend's watcher can probe all of them.
    route_upstreams: Vec<Arc<Upstream>>,
    /// Each route's streams' upstreams, in the order of its `streams`.
    stream_upstreams: Vec<Vec<Arc<Upstream>>>,
    /// Backend → the upstreams of every route that fronts it (its watcher probes them all).
    upstreams: HashMap<&'a BackendConfig, Vec<Arc<Upstream>>>,
}

impl<'a> Plan<'a> {
    /// `reuse` turns each upstream into the one to use (a kept one equal to it, on a reload).
    fn new(
        config: &'a GatewayConfig,
        providers: &'a HashMap<&'a BackendConfig, Arc<dyn Provider>>,
        reuse: &dyn Fn(&BackendConfig, Upstream) -> Arc<Upstream>,
    ) -> Self {
        let route_index: HashMap<&str, usize> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| (route.name.as_str(), index))
            .collect();
        // The container's own HEALTHCHECK stands in for a probe nobody configured only where a
        // dependent waits for `service_healthy`: elsewhere it would slow every wake down to the
        // health check's interval.
        let awaited_healthy: std::collections::HashSet<&BackendConfig> = config
            .routes
            .iter()
            .flat_map(|route| &route.depends_on)
            .filter(|dependency| dependency.condition == DependencyCondition::Healthy)
            .filter_map(|dependency| route_index.get(dependency.route.as_str()))
            .map(|&index| &config.routes[index].backend)
            .collect();
        let route_upstreams: Vec<Arc<Upstream>> = config
            .routes
            .iter()
            .map(|route| {
                let target = match (&route.upstream, route.port) {
                    (Some(fixed), _) => UpstreamTarget::Fixed(fixed.clone()),
                    (None, Some(port)) => UpstreamTarget::BackendPort(port),
                    (None, None) => UpstreamTarget::BackendPort(80),
                };
                let upstream = Upstream::new(target, route.health.clone());
                reuse(
                    &route.backend,
                    if route.health_set || !awaited_healthy.contains(&route.backend) {
                        upstream
                    } else {
                        upstream.with_default_health()
                    },
                )
            })
            .collect();
        let stream_upstreams = config
            .routes
            .iter()
            .map(|route| {
                stream_upstreams(route)
                    .into_iter()
                    .map(|upstream| reuse(&route.backend, upstream))
                    .collect()
            })
            .collect();
        let mut plan = Plan {
            config,
            providers,
            route_index,
            route_upstreams,
            stream_upstreams,
            upstreams: HashMap::new(),
        };
        for (index, route) in config.routes.iter().enumerate() {
            let sharing = plan.upstreams.entry(&route.backend).or_default();
            sharing.extend(plan.stream_upstreams[index].iter().cloned());
            if route.hosts.is_empty() && route.port.is_none() && route.upstream.is_none() {
                // No hosts and no port (dependency-only, or streams only): nothing else to
                // resolve or probe.
                continue;
            }
            sharing.push(Arc::clone(&plan.route_upstreams[index]));
        }
        plan
    }
}

/// A route's streams' upstreams: a TCP stream is probed with a connection (or, with
/// `health: { docker: true }`, left to the container's health check); a UDP stream cannot be
/// probed, and is ready `ready_after` after the backend runs (if set).
fn stream_upstreams(route: &RouteConfig) -> Vec<Upstream> {
    let health = match route.health {
        HealthCheck::Docker => HealthCheck::Docker,
        _ => HealthCheck::Tcp,
    };
    route
        .streams
        .iter()
        .map(|stream| {
            let target = match (&stream.upstream, stream.port) {
                (Some(fixed), _) => UpstreamTarget::Fixed(fixed.clone()),
                (None, port) => UpstreamTarget::BackendPort(port.unwrap_or(stream.listen.port())),
            };
            match stream.protocol {
                StreamProtocol::Tcp => Upstream::new(target, health.clone()),
                StreamProtocol::Udp => Upstream::unprobed(
                    target,
                    health.clone(),
                    route.stream_settings.ready_after.unwrap_or_default(),
                ),
            }
        })
        .collect()
}

/// The watchers built so far.
struct Built<'k> {
    clock: Arc<IdleClock>,
    watchers: Vec<Arc<Watcher>>,
    by_backend: HashMap<BackendConfig, Arc<Watcher>>,
    /// The watchers in force (on a reload), by backend: kept for the same backend.
    old: &'k HashMap<BackendConfig, Arc<Watcher>>,
    /// The next free id (ids are never reused: the idle clock's slots are by id).
    next_id: u32,
    kept: Vec<KeptWatcher>,
    fresh: Vec<Arc<Watcher>>,
    /// Each distinct settings once: most backends share their route defaults.
    settings: HashMap<BackendSettings, Arc<BackendSettings>>,
}

impl Built<'_> {
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
            return Err(StartError::DependencyCycle {
                route: route.name.clone(),
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
        let settings = self.settings(route);
        let watcher = match self.old.get(&route.backend) {
            Some(old) => {
                self.kept.push(KeptWatcher {
                    watcher: Arc::clone(old),
                    settings,
                    dependencies,
                    upstreams: sharing,
                });
                Arc::clone(old)
            }
            None => {
                let Some(provider) = plan.providers.get(&route.backend) else {
                    return Err(StartError::Unsupported {
                        route: route.name.clone(),
                        family: backend_key(&route.backend),
                    });
                };
                let watcher = Watcher::new(
                    self.next_id,
                    Arc::clone(provider),
                    settings,
                    dependencies,
                    sharing,
                    Arc::clone(&self.clock),
                );
                self.next_id += 1;
                self.fresh.push(Arc::clone(&watcher));
                watcher
            }
        };
        self.watchers.push(Arc::clone(&watcher));
        self.by_backend
            .insert(route.backend.clone(), Arc::clone(&watcher));
        Ok(watcher)
    }

    /// Route `route`'s backend settings, shared with every backend whose settings are equal.
    fn settings(&mut self, route: &RouteConfig) -> Arc<BackendSettings> {
        let settings = BackendSettings {
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
        };
        Arc::clone(
            self.settings
                .entry(settings)
                .or_insert_with_key(|settings| Arc::new(settings.clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, StopMethod};
    use futures_util::FutureExt;

    /// A family that can only stop its backends (as Swarm, which scales to zero, will).
    static STOP_ONLY: FamilyKind = FamilyKind {
        name: "docker",
        shown: "a stop-only test family",
        sleep_methods: &[StopMethod::Stop],
        reports_health: false,
        connect_timeout: Duration::from_secs(1),
        claims: |backend| matches!(backend, BackendConfig::Docker { .. }),
        connect: |_| {
            async {
                Err(ProviderError::NotFound {
                    backend: "nothing".into(),
                })
            }
            .boxed()
        },
    };

    fn gateway(routes: &str) -> GatewayConfig {
        let text = format!("idlewatcher:\n  routes:\n{routes}");
        match parse(&text) {
            Ok(config) => config.gateway,
            Err(errors) => panic!("{errors}"),
        }
    }

    #[test]
    fn a_sleep_method_the_family_lacks_is_an_error_naming_route_and_key() {
        let config = gateway(
            "    - { name: frozen, hosts: [a.test], docker: { container: a }, port: 80, stop_method: pause }\n\
             \x20   - { name: stopped, hosts: [b.test], docker: { container: b }, port: 80, stop_method: stop }\n",
        );
        let errors = check_with(&config, &[&STOP_ONLY]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].route.as_deref(), Some("frozen"));
        assert_eq!(errors[0].key, "stop_method");
        assert_eq!(
            errors[0].line,
            Some(3),
            "the line of the route's stop_method"
        );
        assert!(
            errors[0].message.contains("use one of stop"),
            "{}",
            errors[0].message
        );
        // The real registry: Docker supports every method.
        assert!(check(&config).is_empty());
    }

    #[test]
    fn a_health_check_the_family_cannot_report_is_an_error_with_its_line() {
        let config = gateway(
            "    - name: checked\n      hosts: [a.test]\n      docker: { container: a }\n      port: 80\n      health: { docker: true }\n",
        );
        let errors = check_with(&config, &[&STOP_ONLY]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "health.docker");
        assert_eq!(errors[0].line, Some(7), "{errors:?}");
        // Docker reports its HEALTHCHECK.
        assert!(check(&config).is_empty());
    }
}
