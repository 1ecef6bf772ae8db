//! A reload: the configuration file read again (SIGHUP, `POST /api/reload`), validated whole,
//! and applied with one store of the route table, or not at all.
//!
//! What is kept: a backend whose provider target is unchanged keeps its [`Watcher`] (state,
//! idle timer, event history, requests in flight) and takes the new settings (a changed idle
//! timeout re-arms its timer); an upstream configured alike keeps its resolved address; a route
//! that did not change is the same `Arc<Route>` (with the requests held on it). What is new is
//! built as at start-up: new watchers join the idle clock and their family's event source. A
//! removed route's held requests get 503 (its requests in flight finish); a backend no route
//! fronts any more is no longer watched nor put to sleep (until a later reload fronts it again,
//! with the same watcher). Keys read only at start-up (the
//! listeners, streams, `tick`…) are reported as needing a restart (Pingora's `-u` upgrade), not
//! applied. Reloads are serialised.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::admin::{Reload, ReloadRefused};
use crate::assemble::build::{check, connect_families, Kept, Parts, StartError};
use crate::backend::Watcher;
use crate::config::{
    self, label_routes, BackendConfig, Config, ConfigDiff, ConfigError, InForce, LabeledContainer,
    RejectedRoute, TlsConfig,
};
use crate::http::tls::Certificates;
use crate::idle::IdleClock;
use crate::metrics::Metrics;
use crate::providers::docker::{LabelDiscovery, OnLabels};
use crate::providers::{BackendObserver, ProviderFamily};
use crate::routes::{LiveRoutes, RouteTable};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid: every problem, each naming its line, route and key.
    #[error("{}: {} error(s); nothing changed", path.display(), errors.len())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, top-down.
        errors: Vec<ConfigError>,
    },
    /// Reloading was not enabled: the gateway was not started from a file
    /// ([`IdleWatcher::enable_reload`](crate::IdleWatcher::enable_reload) names it, with the
    /// configuration in force).
    #[error("no configuration file to reload (the gateway was not started from one)")]
    NoFile,
    /// The file is valid but cannot be applied (a family unreachable, an engine not connected).
    #[error("{0}; nothing changed")]
    Apply(#[from] StartError),
}

/// What is in force, as the next reload starts from it.
struct Live {
    /// What the configuration in force (the file's routes and the accepted label routes) is,
    /// as the next reload compares with it: its routes as fingerprints. `None` until reloading
    /// is enabled.
    in_force: Option<InForce>,
    /// The file as last read, kept whole only with label discovery on (each change of the
    /// labelled containers is applied on top of it).
    file: Option<Arc<Config>>,
    /// The labelled containers last discovered.
    labels: Vec<LabeledContainer>,
    families: Vec<Arc<dyn ProviderFamily>>,
    by_backend: std::collections::HashMap<BackendConfig, Arc<Watcher>>,
    /// Watchers of backends no route fronts any more: a later reload that fronts one again
    /// takes it back (its id, its slot in the idle clock), so routes that come and go cost
    /// nothing more each time.
    retired: std::collections::HashMap<BackendConfig, Arc<Watcher>>,
    next_id: u32,
}

/// Reloads the configuration of a running gateway (one per gateway).
pub struct Reloader {
    path: OnceLock<PathBuf>,
    routes: Arc<LiveRoutes>,
    clock: Arc<IdleClock>,
    metrics: Arc<Metrics>,
    live: Mutex<Live>,
    /// One reload at a time: a burst is applied in order, each against the one before.
    serial: tokio::sync::Mutex<()>,
    /// The gateway's shutdown signal, for the event sources of families a reload connects.
    shutdown: OnceLock<watch::Receiver<bool>>,
    /// The certificates the HTTPS listeners serve: read again by every reload of the file.
    certificates: OnceLock<Arc<Certificates>>,
}

impl Reloader {
    /// The reloader of a gateway: its route table, clock, metrics, families and watchers. It
    /// reloads once [`set_file`](Self::set_file) gave it the file and the configuration in force.
    pub(crate) fn new(
        routes: Arc<LiveRoutes>,
        clock: Arc<IdleClock>,
        metrics: Arc<Metrics>,
        families: Vec<Arc<dyn ProviderFamily>>,
        watchers: &[Arc<Watcher>],
        by_backend: std::collections::HashMap<BackendConfig, Arc<Watcher>>,
    ) -> Self {
        Self {
            path: OnceLock::new(),
            routes,
            clock,
            metrics,
            live: Mutex::new(Live {
                in_force: None,
                file: None,
                labels: Vec::new(),
                families,
                by_backend,
                retired: std::collections::HashMap::new(),
                next_id: watchers.len() as u32,
            }),
            serial: tokio::sync::Mutex::new(()),
            shutdown: OnceLock::new(),
            certificates: OnceLock::new(),
        }
    }

    /// The certificates the HTTPS listeners serve, for reloads to read again. Set once.
    pub fn set_certificates(&self, certificates: Arc<Certificates>) {
        let _ = self.certificates.set(certificates);
    }

    /// Reads the certificate files of `tls` again (after the file in force changed): a set
    /// that cannot be read leaves the current one serving, with the error logged.
    fn reread_certificates(&self, tls: Option<&TlsConfig>) {
        let (Some(certificates), Some(tls)) = (self.certificates.get(), tls) else {
            return;
        };
        match certificates.reload(tls) {
            Ok(()) => tracing::info!(certificates = certificates.len(), "certificates read again"),
            Err(error) => {
                tracing::error!(%error, "certificates not read again; the previous ones keep serving")
            }
        }
    }

    /// Names the file reloads read, and the whole configuration read from it at start-up (its
    /// Pingora part too, so that a change there is reported as needing a restart). Set once.
    /// Only its fingerprint is kept (and, with label discovery on, the file itself).
    pub fn set_file(&self, path: PathBuf, config: Config) {
        if self.path.set(path).is_ok() {
            let mut live = self.live.lock();
            live.in_force = Some(InForce::of(&config));
            live.file = config.gateway.docker_labels.then(|| Arc::new(config));
        }
    }

    /// Whether reloads have a file to read.
    pub fn has_file(&self) -> bool {
        self.path.get().is_some()
    }

    /// Gives the reloader the gateway's shutdown signal (the background service does).
    pub(crate) fn set_shutdown(&self, shutdown: watch::Receiver<bool>) {
        let _ = self.shutdown.set(shutdown);
    }

    /// Reads the file again and applies it, or changes nothing; every error is logged.
    pub async fn reload(&self) -> Result<ConfigDiff, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let Some(path) = self.path.get() else {
            return Err(ReloadError::NoFile);
        };
        let shown = path.display().to_string();
        let loaded = match config::load(path) {
            Ok(loaded) => match check(&loaded.gateway) {
                errors if errors.is_empty() => Ok(loaded),
                errors => Err(errors),
            },
            Err(errors) => Err(errors.0),
        };
        let result = match loaded {
            Ok(loaded) => {
                let tls = loaded.gateway.tls.clone();
                let applied = self.apply_locked(loaded, None).await;
                if applied.is_ok() {
                    self.reread_certificates(tls.as_ref());
                }
                applied
            }
            Err(errors) => Err(ReloadError::Invalid {
                path: path.clone(),
                errors,
            }),
        };
        log_outcome(&shown, &result);
        result
    }

    /// Applies an already validated configuration (embedders, tests), serialised with reloads.
    pub async fn apply(&self, config: Config) -> Result<ConfigDiff, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let result = self.apply_locked(config, None).await;
        log_outcome("(configuration)", &result);
        result
    }

    /// Applies a new set of labelled containers (label discovery), with the file in force.
    pub async fn apply_labels(&self, containers: Vec<LabeledContainer>) {
        let _one_at_a_time = self.serial.lock().await;
        let Some(file) = self.live.lock().file.as_deref().cloned() else {
            return; // Reloading is not enabled: nothing to add the label routes to.
        };
        let result = self.apply_locked(file, Some(containers)).await;
        log_outcome("(docker labels)", &result);
    }

    /// Whether the configuration in force asks for label discovery.
    pub fn discovers_labels(&self) -> bool {
        let live = self.live.lock();
        live.in_force
            .as_ref()
            .is_some_and(|in_force| in_force.gateway().docker_labels)
    }

    /// Follows the labelled containers of the gateway's engine until `shutdown`, applying each
    /// change (`docker: { labels: true }`).
    pub async fn run_label_discovery(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let Some(engine) = self
            .live
            .lock()
            .in_force
            .as_ref()
            .map(|in_force| in_force.gateway().docker.clone())
        else {
            return;
        };
        let discovery = match LabelDiscovery::connect(&engine) {
            Ok(discovery) => discovery,
            Err(error) => {
                tracing::error!(%error, "label discovery: cannot reach the Docker engine; labelled containers are not routed");
                return;
            }
        };
        let this = Arc::clone(&self);
        let on_change: OnLabels = Box::new(move |containers| {
            let this = Arc::clone(&this);
            Box::pin(async move { this.apply_labels(containers).await })
        });
        discovery.run(on_change, shutdown).await;
    }

    /// `file` with the routes of `labels` (the last discovered if `None`) added, when the file
    /// asks for label discovery; rejected label routes are logged and listed.
    fn effective(
        &self,
        file: &Config,
        labels: &[LabeledContainer],
    ) -> (Config, HashSet<String>, Vec<RejectedRoute>) {
        if !file.gateway.docker_labels {
            return (file.clone(), HashSet::new(), Vec::new());
        }
        let found = label_routes(labels, &file.gateway);
        let mut config = file.clone();
        let names = found
            .accepted
            .iter()
            .map(|route| route.name.clone())
            .collect();
        config.gateway.routes.extend(found.accepted);
        (config, names, found.rejected)
    }

    async fn apply_locked(
        &self,
        file: Config,
        labels: Option<Vec<LabeledContainer>>,
    ) -> Result<ConfigDiff, ReloadError> {
        let (old, families, by_backend, mut retired, next_id, labels) = {
            let live = self.live.lock();
            let Some(old) = live.in_force.clone() else {
                return Err(ReloadError::NoFile);
            };
            (
                old,
                live.families.clone(),
                live.by_backend.clone(),
                live.retired.clone(),
                live.next_id,
                labels.unwrap_or_else(|| live.labels.clone()),
            )
        };
        let (config, labelled, rejected) = self.effective(&file, &labels);
        for route in &rejected {
            for error in &route.errors {
                tracing::error!("docker labels: not routed: {error}");
            }
        }
        let diff = config::diff(&old, &config);
        // Everything that can fail comes first: nothing running changes until it has passed.
        let connected = connect_families(&config.gateway, &families).await?;
        let mut all = families;
        all.extend(connected.iter().cloned());
        let mut reusable = by_backend.clone();
        reusable.extend(
            retired
                .iter()
                .map(|(backend, watcher)| (backend.clone(), Arc::clone(watcher))),
        );
        let kept = Kept {
            in_force: Some(old),
            by_backend: reusable,
            routes: Some(self.routes.snapshot()),
            next_id,
        };
        let parts = Parts::build(
            &config.gateway,
            &all,
            &self.clock,
            &self.metrics,
            &kept,
            &labelled,
        )?;

        for family in connected {
            if let Some(shutdown) = self.shutdown.get() {
                let shutdown = shutdown.clone();
                tokio::spawn(async move { family.run_events(shutdown).await });
            }
        }
        // Kept backends take their new settings (and a ready one resolves its new upstreams)
        // before the table that routes to them is in force.
        for kept_watcher in parts.kept {
            kept_watcher
                .watcher
                .reconfigure(
                    kept_watcher.settings,
                    kept_watcher.dependencies,
                    kept_watcher.upstreams,
                )
                .await;
        }
        for watcher in &parts.fresh {
            self.clock
                .join(Arc::clone(watcher) as Arc<dyn crate::idle::Sleeper>);
        }
        for (backend, watcher) in &parts.by_backend {
            let revived = retired.remove(backend).is_some();
            if revived {
                watcher.unretire();
            }
            if revived || parts.fresh.iter().any(|fresh| Arc::ptr_eq(fresh, watcher)) {
                let observer: Arc<dyn BackendObserver> = watcher.clone();
                if let Some(family) = all.iter().find(|f| (f.kind().claims)(backend)) {
                    family.watch(backend, observer);
                }
            }
        }

        // One store: requests that matched a route of the old table finish with it.
        let replaced = self.routes.replace(RouteTable::new(parts.routes));
        self.routes.set_rejected(rejected);

        for (backend, watcher) in &by_backend {
            if parts.by_backend.contains_key(backend) {
                continue;
            }
            let observer: Arc<dyn BackendObserver> = watcher.clone();
            if let Some(family) = all.iter().find(|f| (f.kind().claims)(backend)) {
                family.unwatch(backend, &observer);
            }
            watcher.retire();
            retired.insert(backend.clone(), Arc::clone(watcher));
        }
        let table = self.routes.snapshot();
        for route in replaced.iter() {
            let gone = table.by_name(&route.name).is_none() || route.watcher.is_retired();
            if gone {
                route.remove();
            }
        }
        *self.live.lock() = Live {
            in_force: Some(InForce::of(&config)),
            file: file.gateway.docker_labels.then(|| Arc::new(file)),
            labels,
            families: all,
            by_backend: parts.by_backend,
            retired,
            next_id: parts.next_id,
        };
        Ok(diff)
    }

    /// Reloads on every SIGHUP until `shutdown` (a reload that fails keeps what is in force).
    pub async fn run_on_sighup(&self, mut shutdown: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reload with POST /api/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    // Logged inside; the gateway goes on either way.
                    let _ = self.reload().await;
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// Logs a reload's outcome: every error with its line, or what changed and what needs a restart.
fn log_outcome(path: &str, result: &Result<ConfigDiff, ReloadError>) {
    match result {
        Ok(diff) => {
            tracing::info!(
                added = ?diff.added,
                removed = ?diff.removed,
                changed = ?diff.changed,
                "configuration reloaded"
            );
            if !diff.restart_needed.is_empty() {
                tracing::warn!(
                    keys = ?diff.restart_needed,
                    "reload: these keys changed but take effect only after a restart (idlewatcher -u); not applied"
                );
            }
        }
        Err(ReloadError::Invalid { errors, .. }) => {
            tracing::error!("reload: {path}: {} error(s); nothing changed", errors.len());
            for error in errors {
                tracing::error!("reload: {path}: {error}");
            }
        }
        Err(error) => tracing::error!("reload: {error}"),
    }
}

#[async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<ConfigDiff, ReloadRefused> {
        Reloader::reload(self).await.map_err(|error| match error {
            ReloadError::Invalid { errors, .. } => ReloadRefused::Invalid(errors),
            ReloadError::NoFile => ReloadRefused::Unavailable,
            ReloadError::Apply(error) => ReloadRefused::Failed(Box::new(error)),
        })
    }
}
