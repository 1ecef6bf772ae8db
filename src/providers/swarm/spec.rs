//! A service as the gateway reads and changes it: its replicas, its status, the activity leases
//! of the gateways in front of it, and the one way it is written, [`update`]: the FULL spec, sent
//! with the version it was read at (Swarm's update replaces the spec, and a concurrent change
//! makes it fail with "update out of sequence"; the change is then read again and decided
//! afresh).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as DockerError;
use bollard::models::{Service, ServiceSpec};
use bollard::query_parameters::UpdateServiceOptionsBuilder;
use bollard::Docker;
use futures_util::future::BoxFuture;

use crate::providers::docker::{http_status, map_error};
use crate::providers::{BackendStatus, ProviderError};

/// The label prefix of an activity lease: `idlewatcher.active.<instance>=<unix seconds>`, the
/// last time gateway `<instance>` saw traffic for the service.
pub const LEASE_PREFIX: &str = "idlewatcher.active.";

/// How many version conflicts in a row an update takes before giving up (each one means the
/// service changed between our read and our write; the next read sees that change).
const MAX_ATTEMPTS: u32 = 8;

/// A hook run between reading a service and writing it back: lets a test change the service
/// in that window, deterministically, to see the conflict handled.
pub type BeforeWrite = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What an update decides on the service as read.
pub(crate) enum Decision {
    /// Nothing to write.
    Keep,
    /// Write this spec (the read one, changed).
    Write(Box<ServiceSpec>),
}

/// The replicas the service's spec asks for; `None` when it is not a replicated service.
pub(crate) fn replicas(spec: &ServiceSpec) -> Option<u64> {
    let replicated = spec.mode.as_ref()?.replicated.as_ref()?;
    Some(
        replicated
            .replicas
            .map_or(1, |n| u64::try_from(n).unwrap_or(0)),
    )
}

/// Sets the replicas of a replicated service's spec.
pub(crate) fn set_replicas(spec: &mut ServiceSpec, replicas: u64) {
    if let Some(replicated) = spec.mode.as_mut().and_then(|mode| mode.replicated.as_mut()) {
        replicated.replicas = Some(i64::try_from(replicas).unwrap_or(i64::MAX));
    }
}

/// The service's status: running while it asks for tasks (the task counts of a listing with
/// `status=true`, else its spec), stopped at 0 (its tasks may still be on their way down).
pub(crate) fn status_of(service: &Service) -> BackendStatus {
    let desired = service
        .service_status
        .as_ref()
        .and_then(|status| status.desired_tasks)
        .or_else(|| service.spec.as_ref().and_then(replicas));
    match desired {
        Some(0) => BackendStatus::Stopped,
        _ => BackendStatus::Running,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The lease of gateway `instance` on the spec, in Unix seconds.
pub(crate) fn lease_of(spec: &ServiceSpec, instance: &str) -> Option<u64> {
    spec.labels
        .as_ref()?
        .get(&format!("{LEASE_PREFIX}{instance}"))?
        .trim()
        .parse()
        .ok()
}

/// Writes (or renews) gateway `instance`'s lease on the spec; false when it already says
/// `seconds` or later.
pub(crate) fn set_lease(spec: &mut ServiceSpec, instance: &str, seconds: u64) -> bool {
    if lease_of(spec, instance).is_some_and(|held| held >= seconds) {
        return false;
    }
    spec.labels
        .get_or_insert_with(Default::default)
        .insert(format!("{LEASE_PREFIX}{instance}"), seconds.to_string());
    true
}

/// Removes gateway `instance`'s lease; false when it had none.
pub(crate) fn drop_lease(spec: &mut ServiceSpec, instance: &str) -> bool {
    spec.labels.as_mut().is_some_and(|labels| {
        labels
            .remove(&format!("{LEASE_PREFIX}{instance}"))
            .is_some()
    })
}

/// The youngest lease of a gateway other than `instance` still in force at `now`: one younger
/// than `hold` (`idle_timeout` plus a grace). Its holder and how long it still holds.
pub(crate) fn other_lease(
    spec: &ServiceSpec,
    instance: &str,
    hold: Duration,
    now: SystemTime,
) -> Option<(String, Duration)> {
    let now = unix_seconds(now);
    spec.labels
        .as_ref()?
        .iter()
        .filter_map(|(key, value)| {
            let holder = key.strip_prefix(LEASE_PREFIX)?;
            let seconds: u64 = value.trim().parse().ok()?;
            (holder != instance).then_some((holder, seconds))
        })
        .filter_map(|(holder, seconds)| {
            let until = seconds.saturating_add(hold.as_secs());
            (until > now).then(|| (holder.to_string(), Duration::from_secs(until - now)))
        })
        .max_by_key(|(_, left)| *left)
}

/// Whether an update failed because the service changed since it was read.
fn is_conflict(error: &DockerError) -> bool {
    matches!(error, DockerError::DockerResponseServerError { message, .. }
        if message.contains("out of sequence"))
}

/// Reads service `name`, lets `decide` change its spec, and writes the whole spec back with the
/// version it was read at; on a version conflict, reads and decides again. True when something
/// was written. `before_write` runs between the read and the write (tests).
pub(crate) async fn update(
    docker: &Docker,
    name: &str,
    describe: &str,
    before_write: Option<&BeforeWrite>,
    mut decide: impl FnMut(&Service) -> Result<Decision, ProviderError>,
) -> Result<bool, ProviderError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let service = inspect(docker, name, describe).await?;
        let Decision::Write(spec) = decide(&service)? else {
            return Ok(false);
        };
        let version = service
            .version
            .as_ref()
            .and_then(|version| version.index)
            .and_then(|index| i32::try_from(index).ok())
            .ok_or_else(|| ProviderError::Api {
                action: "update",
                backend: describe.to_string(),
                message: "the manager gave the service no usable version".to_string(),
            })?;
        if let Some(hook) = before_write {
            hook().await;
        }
        let options = UpdateServiceOptionsBuilder::default()
            .version(version)
            .build();
        match docker.update_service(name, *spec, options, None).await {
            Ok(_) => return Ok(true),
            Err(error) if is_conflict(&error) => {
                tracing::debug!(service = %name, attempt, "the service changed meanwhile; deciding again");
            }
            Err(error) => return Err(map_error("update", describe, error)),
        }
    }
    Err(ProviderError::Api {
        action: "update",
        backend: describe.to_string(),
        message: format!("the service changed under {MAX_ATTEMPTS} updates in a row"),
    })
}

/// Inspects service `name` (404: [`ProviderError::NotFound`]).
pub(crate) async fn inspect(
    docker: &Docker,
    name: &str,
    describe: &str,
) -> Result<Service, ProviderError> {
    match docker.inspect_service(name, None).await {
        Ok(service) => Ok(service),
        Err(error) if http_status(&error) == Some(404) => Err(ProviderError::NotFound {
            backend: describe.to_string(),
        }),
        Err(error) => Err(map_error("inspect", describe, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ServiceSpecMode, ServiceSpecModeReplicated};
    use std::collections::HashMap;

    fn spec(replicas: i64, labels: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_other_gateways_fresh_leases_hold_the_service() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let hold = Duration::from_secs(10);
        let s = spec(
            1,
            &[
                ("idlewatcher.active.a", "999"),
                ("idlewatcher.active.b", "995"),
                ("idlewatcher.active.c", "980"),
                ("idlewatcher.active.d", "garbage"),
                ("other", "1"),
            ],
        );
        // Its own lease never holds a gateway back; b's is the longest of the others.
        assert_eq!(
            other_lease(&s, "a", hold, now),
            Some(("b".to_string(), Duration::from_secs(5)))
        );
        assert_eq!(
            other_lease(&s, "b", hold, now),
            Some(("a".to_string(), Duration::from_secs(9)))
        );
        // c's lease is older than the hold: expired.
        let only_c = spec(1, &[("idlewatcher.active.c", "980")]);
        assert_eq!(other_lease(&only_c, "a", hold, now), None);
    }

    #[test]
    fn leases_only_move_forward_and_replicas_are_set() {
        let mut s = spec(0, &[]);
        assert!(set_lease(&mut s, "a", 100));
        assert!(
            !set_lease(&mut s, "a", 90),
            "an older time never replaces a newer"
        );
        assert_eq!(lease_of(&s, "a"), Some(100));
        assert!(drop_lease(&mut s, "a"));
        assert!(!drop_lease(&mut s, "a"));
        assert_eq!(replicas(&s), Some(0));
        assert_eq!(
            status_of(&Service {
                spec: Some(s.clone()),
                ..Default::default()
            }),
            BackendStatus::Stopped
        );
        set_replicas(&mut s, 2);
        assert_eq!(replicas(&s), Some(2));
    }
}
