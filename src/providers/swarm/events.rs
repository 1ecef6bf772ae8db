//! The single event source for every watched Swarm service: the engine's `service` events
//! (create, update, remove: a scale by hand, a lease written, a service removed) each trigger
//! one bulk look at all services (`GET /services?status=true`), as do a new watch and a
//! periodic resync; what changed since the last look is told to the observers as the same
//! [`BackendEvent`](crate::providers::BackendEvent)s Docker's stream delivers. The stream reconnects with a backoff, keeping
//! the engine's [`EngineLink`] up to date, and the first look after a (re)connect resyncs
//! everyone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptions, ListServicesOptions};
use bollard::Docker;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::spec::status_of;
use crate::providers::docker::{error_chain, negotiate, EngineLink};
use crate::providers::transition::{deliver, transition, Deliveries};
use crate::providers::{BackendObserver, BackendStatus, ProviderError};

/// First delay before reconnecting the event stream.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream that stayed up this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_PERIOD: Duration = Duration::from_secs(10);
/// A bulk look even without events: task-level changes (a task that died) send no service event.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// One watched service.
struct Watched {
    observers: Vec<Arc<dyn BackendObserver>>,
    /// As last seen (`None`: not since watched or since an outage: the next look resyncs).
    last: Option<BackendStatus>,
}

/// The one Swarm event source of an engine. Register services with [`watch`](Self::watch)
/// (before or after [`run`](Self::run) started).
pub struct ServiceEvents {
    docker: Docker,
    link: Arc<EngineLink>,
    watched: Mutex<HashMap<String, Watched>>,
    /// A watch was added: look now.
    kick: Notify,
}

impl ServiceEvents {
    /// The event source on `docker`, keeping `link` up to date.
    pub fn new(docker: Docker, link: Arc<EngineLink>) -> Self {
        Self {
            docker,
            link,
            watched: Mutex::new(HashMap::new()),
            kick: Notify::new(),
        }
    }

    /// Tells `observer` what happens to `service` (by name or id) from now on.
    pub fn watch(&self, service: &str, observer: Arc<dyn BackendObserver>) {
        let mut watched = self.watched.lock();
        let entry = watched
            .entry(service.to_string())
            .or_insert_with(|| Watched {
                observers: Vec::new(),
                last: None,
            });
        entry.observers.push(observer);
        entry.last = None;
        self.kick.notify_one();
    }

    /// Stops telling `observer` about `service`.
    pub fn unwatch(&self, service: &str, observer: &Arc<dyn BackendObserver>) {
        let mut watched = self.watched.lock();
        if let Some(entry) = watched.get_mut(service) {
            entry.observers.retain(|o| !Arc::ptr_eq(o, observer));
            if entry.observers.is_empty() {
                watched.remove(service);
            }
        }
    }

    /// Runs until `shutdown` turns true, reconnecting with a backoff.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_INITIAL;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let started = Instant::now();
            let reason = tokio::select! {
                _ = shutdown.changed() => return,
                reason = self.session() => reason,
            };
            self.link.set_down(reason.clone());
            for entry in self.watched.lock().values_mut() {
                entry.last = None;
            }
            if started.elapsed() >= HEALTHY_PERIOD {
                backoff = BACKOFF_INITIAL;
            }
            tracing::warn!(engine = %self.link.shown(), %reason, retry_in = ?backoff, "Swarm event stream disconnected");
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One subscription: connect, look, then look again on every event of a watched service,
    /// every new watch and every [`RESYNC_EVERY`]. Returns why it ended.
    async fn session(&self) -> String {
        if let Err(error) = negotiate(&self.docker, self.link.shown()).await {
            return error.to_string();
        }
        self.link.set_up();
        let filters = HashMap::from([("type".to_string(), vec!["service".to_string()])]);
        let mut events = self.docker.events(Some(EventsOptions {
            since: None,
            until: None,
            filters: Some(filters),
        }));
        if let Err(error) = self.look().await {
            return error.to_string();
        }
        tracing::info!(engine = %self.link.shown(), services = self.watched.lock().len(), "Swarm event stream connected; watched services resynced");
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.tick().await;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return format!("stream error: {}", error_chain(&error)),
                    None => return "the engine closed the stream".to_string(),
                },
                _ = resync.tick() => {}
                _ = self.kick.notified() => {}
            }
            if let Err(error) = self.look().await {
                return error.to_string();
            }
        }
    }

    /// One bulk look at every service; tells each watched one's observers what changed.
    async fn look(&self) -> Result<(), ProviderError> {
        let options = ListServicesOptions {
            filters: None,
            status: Some(true),
        };
        let services = self
            .docker
            .list_services(Some(options))
            .await
            .map_err(|e| crate::providers::docker::map_error("list", "the Swarm services", e))?;
        let mut now: HashMap<&str, BackendStatus> = HashMap::new();
        for service in &services {
            let status = status_of(service);
            if let Some(id) = service.id.as_deref() {
                now.insert(id, status);
            }
            if let Some(name) = service.spec.as_ref().and_then(|spec| spec.name.as_deref()) {
                now.insert(name, status);
            }
        }
        let mut deliveries: Deliveries = Vec::new();
        {
            let mut watched = self.watched.lock();
            for (service, entry) in watched.iter_mut() {
                let status = now
                    .get(service.as_str())
                    .copied()
                    .unwrap_or(BackendStatus::Missing);
                let events = transition(entry.last, status);
                if !events.is_empty() {
                    tracing::debug!(%service, ?events, "service changed");
                    deliveries.push((entry.observers.clone(), events));
                }
                entry.last = Some(status);
            }
        }
        deliver(deliveries);
        Ok(())
    }
}
