//! The single Docker event source for all Docker backends: one `/events` subscription, matched
//! to observers by name or id, with a resync on every (re)connect so an observer never keeps a
//! stale view after the stream was down.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::{stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::clock::EngineClock;
use super::container::{inspect_ref, normalize_ref, status_of};
use super::engine::{error_chain, negotiate, reason_of, EngineLink};
use super::registry::Registry;
use crate::providers::{BackendEvent, BackendObserver, BackendStatus, ProviderError};

/// First delay before reconnecting the event stream.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream that stayed up this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_PERIOD: Duration = Duration::from_secs(10);
/// How far back `since` reaches on subscription (on the engine's clock), so events between the
/// subscription reaching the engine and the resync are replayed rather than lost.
const SINCE_MARGIN: Duration = Duration::from_secs(1);
/// Containers inspected at once during a resync.
const RESYNC_CONCURRENCY: usize = 8;

/// Why an event-stream session ended.
enum Disconnect {
    /// The engine did not answer (the version negotiation before subscribing failed).
    Connect(ProviderError),
    /// The stream failed.
    Stream(DockerError),
    /// The engine closed the stream.
    Ended,
    /// The resync could not inspect a container.
    Resync(ProviderError),
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Connect(e) => f.write_str(&reason_of(e)),
            Disconnect::Stream(e) => write!(f, "stream error: {}", error_chain(e)),
            Disconnect::Ended => f.write_str("the engine closed the stream"),
            Disconnect::Resync(e) => write!(f, "resync failed: {e}"),
        }
    }
}

/// The single Docker event source: one `/events` subscription for every watched container.
///
/// Register containers with [`watch`](Self::watch) (before or after [`run`](Self::run)
/// started), then spawn `run`. External changes (a container started, stopped, paused, removed
/// or recreated by hand) reach the observers as [`BackendEvent`]s; each (re)connect first
/// delivers [`BackendEvent::Resync`] with the container's current status, so nothing missed
/// while the stream was down leaves a watcher with a stale view, and a container watched while
/// the stream runs gets its own resync at once. Cheap to clone: clones share one registry.
#[derive(Clone)]
pub struct DockerEvents {
    docker: Docker,
    /// The engine's state, kept up to date by `run` (`None`: nobody asks).
    link: Option<Arc<EngineLink>>,
    /// Watched containers, indexed the ways events name them.
    watched: Arc<Mutex<Registry>>,
    /// Whether `run` is connected: a new watch then resyncs on its own.
    running: Arc<AtomicBool>,
}

impl fmt::Debug for DockerEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched = self.watched.lock();
        let mut references: Vec<&str> = watched.references().collect();
        references.sort_unstable();
        f.debug_struct("DockerEvents")
            .field("watched", &references)
            .finish_non_exhaustive()
    }
}

impl DockerEvents {
    /// An event source on `docker` (from [`connect`](super::connect)) watching nothing yet.
    pub fn new(docker: Docker) -> Self {
        Self {
            docker,
            link: None,
            watched: Arc::new(Mutex::new(Registry::default())),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// An event source that also keeps `link` up to date: each (re)connection negotiates the API
    /// version first and marks the engine up; every disconnection marks it down with the reason.
    pub fn on_engine(docker: Docker, link: Arc<EngineLink>) -> Self {
        let mut events = Self::new(docker);
        events.link = Some(link);
        events
    }

    /// How logs name the engine.
    fn engine(&self) -> &str {
        self.link
            .as_ref()
            .map_or("Docker engine", |link| link.shown())
    }

    /// Delivers the events of `container` (a name or an id, full or a prefix of at least 12
    /// characters, as configured) to `observer`. Several observers may watch one container; each
    /// gets every event.
    pub fn watch(&self, container: &str, observer: Arc<dyn BackendObserver>) {
        let reference = normalize_ref(container);
        self.watched.lock().watch(reference, Arc::clone(&observer));
        if self.running.load(Ordering::Acquire) {
            self.resync_one(reference.to_string(), observer);
        }
    }

    /// Stops delivering `container`'s events to `observer` (the same `Arc` that was watching);
    /// a container nobody watches any more is forgotten.
    pub fn unwatch(&self, container: &str, observer: &Arc<dyn BackendObserver>) {
        self.watched
            .lock()
            .unwatch(normalize_ref(container), observer);
    }

    /// How many containers are watched.
    pub fn watched(&self) -> usize {
        self.watched.lock().len()
    }

    /// Tells one new observer its container's current status (a watch while the stream runs).
    fn resync_one(&self, reference: String, observer: Arc<dyn BackendObserver>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Resynced at the next (re)connect.
        };
        let docker = self.docker.clone();
        runtime.spawn(async move {
            let describe = format!("docker container \"{reference}\"");
            match inspect_ref(&docker, &reference, &describe).await {
                Ok(info) => {
                    let status = info.as_ref().map_or(BackendStatus::Missing, status_of);
                    observer.observe(BackendEvent::Resync(status));
                }
                Err(error) => {
                    tracing::warn!(container = %reference, %error, "resync of a new watch failed");
                }
            }
        });
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): subscribes, resyncs every
    /// watched container, then maps events to observers; on error or end of stream, reconnects
    /// with backoff (100 ms doubling to 5 s, reset after a healthy period) and resyncs again.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_INITIAL;
        let mut attempt: u64 = 0;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            attempt += 1;
            if attempt > 1 {
                tracing::info!(engine = %self.engine(), attempt, "reconnecting to the Docker event stream");
            }
            let started = Instant::now();
            let reason = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                reason = self.session() => reason,
            };
            self.running.store(false, Ordering::Release);
            if let Some(link) = &self.link {
                link.set_down(reason.to_string());
            }
            if started.elapsed() >= HEALTHY_PERIOD {
                backoff = BACKOFF_INITIAL;
            }
            tracing::warn!(
                engine = %self.engine(),
                %reason,
                retry_in = ?backoff,
                "Docker event stream disconnected"
            );
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.running.store(false, Ordering::Release);
        tracing::info!(engine = %self.engine(), "Docker event stream stopped");
    }

    /// One subscription: open the stream, resync while buffering what arrives, then dispatch
    /// until the stream fails or ends.
    async fn session(&self) -> Disconnect {
        if let Some(link) = &self.link {
            if let Err(e) = negotiate(&self.docker, link.shown()).await {
                return Disconnect::Connect(e);
            }
            link.set_up();
        }
        let clock = EngineClock::measure(&self.docker, self.engine()).await;
        // By type only: engines spell actions differently (Podman 4.3 sends `died`, `remove`
        // and ignores a filter on Docker's `die`, `destroy`), so actions are matched here.
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let options = EventsOptions {
            since: Some(clock.since(SINCE_MARGIN)),
            until: None,
            filters: Some(filters),
        };
        let mut events = self.docker.events(Some(options));

        // Resync concurrently with the first polls of the stream (which send the subscription);
        // events arriving meanwhile are kept and dispatched after the resync, in order. Watches
        // added from now on resync on their own.
        self.running.store(true, Ordering::Release);
        // What happened before the resync began is in what it inspects: replaying it afterwards
        // would undo the resync (a `start` of a container stopped since would adopt it, and the
        // adoption start it again). So for the whole session, whenever the engine sends them
        // (its history may come after the resync ended), only events from this moment on count.
        let fresh = Fresh {
            since_nanos: clock.now_nanos(),
        };
        let references: Vec<String> = self.watched.lock().references().map(String::from).collect();
        let docker = self.docker.clone();
        let resync = async move {
            stream::iter(references)
                .map(|reference| {
                    let docker = docker.clone();
                    async move {
                        let describe = format!("docker container \"{reference}\"");
                        // Only what the resync needs is kept: a whole inspect answer is
                        // kilobytes, times every watched container at once.
                        let seen = inspect_ref(&docker, &reference, &describe)
                            .await
                            .map(|info| info.map(|info| (info.id.clone(), status_of(&info))));
                        (reference, seen)
                    }
                })
                .buffer_unordered(RESYNC_CONCURRENCY)
                .collect::<Vec<_>>()
                .await
        };
        tokio::pin!(resync);
        let mut buffered = Vec::new();
        let results = loop {
            tokio::select! {
                biased;
                item = events.next() => match item {
                    Some(Ok(event)) => buffered.push(event),
                    Some(Err(e)) => return Disconnect::Stream(e),
                    None => return Disconnect::Ended,
                },
                results = &mut resync => break results,
            }
        };

        let mut statuses = Vec::with_capacity(results.len());
        for (reference, result) in results {
            match result {
                Ok(seen) => statuses.push((reference, seen)),
                Err(e) => return Disconnect::Resync(e),
            }
        }
        let resynced = statuses.len();
        {
            let mut watched = self.watched.lock();
            for (reference, seen) in statuses {
                let (learned_id, status) = seen.unwrap_or((None, BackendStatus::Missing));
                watched.learn(&reference, learned_id);
                // Unwatched meanwhile: nobody to tell.
                let Some(entry) = watched.get(&reference) else {
                    continue;
                };
                tracing::debug!(container = %reference, ?status, "resync");
                entry.deliver(&BackendEvent::Resync(status));
            }
        }
        let received = buffered.len();
        buffered.retain(|event| fresh.admits(event));
        tracing::info!(
            engine = %self.engine(),
            containers = resynced,
            replayed = buffered.len(),
            older = received - buffered.len(),
            "Docker event stream connected; watched containers resynced"
        );
        for event in buffered {
            self.dispatch(&event);
        }

        loop {
            match events.next().await {
                Some(Ok(event)) if fresh.admits(&event) => self.dispatch(&event),
                Some(Ok(event)) => {
                    tracing::debug!(engine = %self.engine(), action = ?event.action, "an event from before the resync, dropped");
                }
                Some(Err(e)) => return Disconnect::Stream(e),
                None => return Disconnect::Ended,
            }
        }
    }

    /// Delivers one engine event to every watcher of its container.
    fn dispatch(&self, event: &EventMessage) {
        let Some(action) = event.action.as_deref() else {
            return;
        };
        let Some(mapped) = backend_event(action) else {
            return;
        };
        let actor = event.actor.as_ref();
        let id = actor.and_then(|a| a.id.as_deref()).unwrap_or("");
        let name = actor
            .and_then(|a| a.attributes.as_ref())
            .and_then(|attrs| attrs.get("name"))
            .map(String::as_str);
        let mut watched = self.watched.lock();
        for found in watched.matching(id, name.map(normalize_ref)) {
            let reference = found.reference.as_str();
            if found.by_name && !id.is_empty() {
                // The container now bearing the configured name (it may have been recreated).
                watched.learn(reference, Some(id.to_string()));
            }
            if mapped == BackendEvent::Removed && watched.has_learned(reference, id) {
                watched.learn(reference, None);
            }
            tracing::debug!(
                container = %reference,
                action,
                event = ?mapped,
                "Docker event"
            );
            if let Some(entry) = watched.get(reference) {
                entry.deliver(&mapped);
            }
        }
    }
}

/// What an engine action means to a watcher, in Docker's spelling and Podman's (4.3 sends
/// `died` and `remove` for Docker's `die` and `destroy`); `None` for the rest (`kill`, `stop`,
/// `exec_start: …`, `health_status: …`).
fn backend_event(action: &str) -> Option<BackendEvent> {
    Some(match action {
        "start" | "unpause" | "restart" => BackendEvent::Started,
        // Not `stop`: Docker and Podman's compatible API both send `die` for every stop, and
        // one stop must be one `Stopped`.
        "die" | "died" | "pause" => BackendEvent::Stopped,
        "destroy" | "remove" => BackendEvent::Removed,
        "create" => BackendEvent::Created,
        _ => return None,
    })
}

/// Resolves when shutdown is requested: the value turned true, or the sender is gone (nobody can
/// ever ask any more, so the owner has gone away).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Which events of one session count: those from the moment its resync began, on the engine's
/// clock (the resync already reflects what happened before). An event without a time counts.
#[derive(Debug, Clone, Copy)]
struct Fresh {
    since_nanos: i64,
}

impl Fresh {
    fn admits(&self, event: &EventMessage) -> bool {
        event.time_nano.is_none_or(|at| at >= self.since_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<BackendEvent>>);
    impl BackendObserver for Recorder {
        fn observe(&self, event: BackendEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn event(action: &str, id: &str, name: Option<&str>) -> EventMessage {
        EventMessage {
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some(id.to_string()),
                attributes: name.map(|n| HashMap::from([("name".to_string(), n.to_string())])),
            }),
            ..Default::default()
        }
    }

    fn events_for_test() -> DockerEvents {
        // Never connects: only the matching logic is exercised.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        DockerEvents::new(docker)
    }

    #[test]
    fn matches_by_name_id_prefix_and_learned_id() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let events = events_for_test();
        let by_name = Arc::new(Recorder::default());
        let by_id = Arc::new(Recorder::default());
        let also_by_name = Arc::new(Recorder::default());
        events.watch("/web", by_name.clone());
        events.watch("0123456789ab", by_id.clone());
        events.watch("web", also_by_name.clone());
        assert_eq!(events.watched(), 2);

        events.dispatch(&event("start", id, Some("web")));
        // No name attribute: matches the id prefix, and the id learned from the first event.
        events.dispatch(&event("die", id, None));
        events.dispatch(&event("start", "ffff", Some("other")));
        events.dispatch(&event("kill", id, Some("web")));
        events.dispatch(&event("destroy", id, Some("web")));
        // Recreated under the same name with a new id.
        events.dispatch(&event("create", "eeee", Some("web")));
        events.dispatch(&event("pause", "eeee", None));
        // Unwatched: told nothing more.
        let as_observer: Arc<dyn BackendObserver> = by_id.clone();
        events.unwatch("0123456789ab", &as_observer);
        events.dispatch(&event("start", id, Some("web")));
        assert_eq!(events.watched(), 1);

        use BackendEvent::*;
        assert_eq!(
            *by_name.0.lock().unwrap(),
            vec![Started, Stopped, Removed, Created, Stopped, Started]
        );
        assert_eq!(*also_by_name.0.lock().unwrap(), *by_name.0.lock().unwrap());
        assert_eq!(*by_id.0.lock().unwrap(), vec![Started, Stopped, Removed]);
    }

    #[test]
    fn docker_and_podman_spellings_map_alike() {
        use BackendEvent::*;
        for (docker, podman) in [("die", "died"), ("destroy", "remove")] {
            assert_eq!(backend_event(docker), backend_event(podman));
        }
        assert_eq!(backend_event("died"), Some(Stopped));
        assert_eq!(backend_event("remove"), Some(Removed));
        assert_eq!(backend_event("stop"), None, "its `die` already said it");
        assert_eq!(backend_event("kill"), None);
        assert_eq!(backend_event("health_status: healthy"), None);
    }

    #[test]
    fn only_events_from_the_resync_on_are_fresh() {
        let fresh = Fresh { since_nanos: 1_000 };
        let at = |time_nano| EventMessage {
            time_nano,
            ..event("start", "id", Some("web"))
        };
        assert!(!fresh.admits(&at(Some(999))));
        assert!(fresh.admits(&at(Some(1_000))));
        assert!(fresh.admits(&at(Some(1_001))));
        assert!(
            fresh.admits(&at(None)),
            "an event without a time is not lost"
        );
    }
}
