//! Label discovery (`docker: { labels: true }`): the containers of the gateway's engine
//! labelled `idlewatcher.enable=true`, stopped ones included (routing a sleeping container is
//! the point). One bulk list at start and at every reconnect of its event stream, and again
//! whenever such a container is created or removed (Docker says `destroy`, Podman `remove`):
//! each time the whole set is handed on, so a missed event is repaired by the next list.
//! What the labels mean is the configuration's business (`config::label_routes`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::engine::{error_chain, Endpoint};
use crate::config::{DockerEngine, LabeledContainer, ENABLE_LABEL};
use crate::providers::ProviderError;

/// Pause before the event stream is opened again after it failed.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long a labelled container that disappeared may take to come back under the same name
/// (a re-create: `docker compose up` after a label edit) before its route is removed.
const RECREATE_GRACE: Duration = Duration::from_millis(1500);

/// What is told the labelled containers (the whole set, each time it changes).
pub type OnLabels = Box<dyn Fn(Vec<LabeledContainer>) -> BoxFuture<'static, ()> + Send + Sync>;

/// The labelled containers of one engine, followed live.
pub struct LabelDiscovery {
    docker: Docker,
    shown: String,
}

impl LabelDiscovery {
    /// A discovery on `engine` (its own connection: the event source's is not shared).
    pub fn connect(engine: &DockerEngine) -> Result<Self, ProviderError> {
        let endpoint = Endpoint::resolve(engine);
        Ok(Self {
            docker: endpoint.client()?,
            shown: endpoint.shown(),
        })
    }

    /// Every container labelled `idlewatcher.enable=true`, running or not, by name.
    pub async fn list(&self) -> Result<Vec<LabeledContainer>, ProviderError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{ENABLE_LABEL}=true")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| ProviderError::Api {
                action: "list labelled containers on",
                backend: self.shown.clone(),
                message: error_chain(&error),
            })?;
        let mut containers: Vec<LabeledContainer> = listed
            .into_iter()
            .filter_map(|summary| {
                let labels: BTreeMap<String, String> =
                    summary.labels.unwrap_or_default().into_iter().collect();
                // The engine filtered already; Podman's older filters are looser: check again.
                if labels.get(ENABLE_LABEL).map(|v| v.trim()) != Some("true") {
                    return None;
                }
                let name = summary
                    .names
                    .unwrap_or_default()
                    .into_iter()
                    .next()?
                    .trim_start_matches('/')
                    .to_string();
                Some(LabeledContainer {
                    id: summary.id.unwrap_or_default(),
                    name,
                    labels,
                })
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    /// Follows the labelled containers until `shutdown`, telling `on_change` the whole set at
    /// start, after each reconnect and after each creation or removal that changed it.
    pub async fn run(&self, on_change: OnLabels, mut shutdown: watch::Receiver<bool>) {
        let mut applied: Option<Vec<LabeledContainer>> = None;
        // Containers gone from the list, kept routed for `RECREATE_GRACE` (by name).
        let mut vanished: HashMap<String, (LabeledContainer, Instant)> = HashMap::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Subscribe first, then list: nothing created in between is missed.
            let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
            let mut events = self.docker.events(Some(EventsOptions {
                since: None,
                until: None,
                filters: Some(filters),
            }));
            let mut dirty = true;
            loop {
                if dirty {
                    let listed = match self.list().await {
                        Ok(listed) => listed,
                        Err(error) => {
                            tracing::warn!(engine = %self.shown, %error, "label discovery: cannot list the labelled containers; retrying");
                            break;
                        }
                    };
                    let now = Instant::now();
                    for old in applied.iter().flatten() {
                        if !listed.iter().any(|new| new.name == old.name) {
                            vanished
                                .entry(old.name.clone())
                                .or_insert_with(|| (old.clone(), now + RECREATE_GRACE));
                        }
                    }
                    vanished.retain(|name, (_, until)| {
                        *until > now && !listed.iter().any(|new| &new.name == name)
                    });
                    let mut containers = listed;
                    containers.extend(vanished.values().map(|(container, _)| container.clone()));
                    containers.sort_by(|a, b| a.name.cmp(&b.name));
                    if applied.as_ref() != Some(&containers) {
                        applied = Some(containers.clone());
                        on_change(containers).await;
                    }
                    dirty = false;
                }
                // A vanished container's grace ends: list again (it is gone for good, or back).
                let next_expiry = vanished.values().map(|(_, until)| *until).min();
                let expiry = async {
                    match next_expiry {
                        Some(until) => tokio::time::sleep_until(until.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    next = events.next() => match next {
                        Some(Ok(event)) => {
                            let action = event.action.as_deref().unwrap_or("");
                            let labelled = event
                                .actor
                                .as_ref()
                                .and_then(|actor| actor.attributes.as_ref())
                                .and_then(|attributes| attributes.get(ENABLE_LABEL))
                                .is_some();
                            if labelled && matches!(action, "create" | "destroy" | "remove") {
                                dirty = true;
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(engine = %self.shown, error = %error_chain(&error), "label discovery: the event stream failed; listing again");
                            break;
                        }
                        None => break,
                    },
                    _ = expiry => dirty = true,
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
