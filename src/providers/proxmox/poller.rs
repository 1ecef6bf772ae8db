//! The single event source for every guest of one PVE cluster: ONE `GET
//! /cluster/resources?type=vm` every `poll`, whatever the number of guests (a peer polls each
//! guest every second), mapped onto [`BackendEvent`](crate::providers::BackendEvent)s exactly like Docker's event stream:
//!
//! * the first answer for a guest (at start, for a guest watched later, after an outage) is a
//!   [`BackendEvent::Resync`](crate::providers::BackendEvent::Resync) with its status;
//! * afterwards only changes are told: running → [`BackendEvent::Started`](crate::providers::BackendEvent::Started), no longer running →
//!   [`BackendEvent::Stopped`](crate::providers::BackendEvent::Stopped), gone → [`BackendEvent::Removed`](crate::providers::BackendEvent::Removed), back → [`BackendEvent::Created`](crate::providers::BackendEvent::Created)
//!   (then `Started` if it came back running);
//! * a guest's `lock` (backup, migrate, snapshot…) is remembered and logged, and the driver
//!   attempts no start while it is set;
//! * a failed poll backs off (doubling, up to 30 s) and the next good one resyncs everyone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;

use super::client::PveClient;
use super::guest::{describe, status_from, GuestLocks};
use crate::providers::transition::{deliver, transition, Deliveries};
use crate::providers::{BackendObserver, BackendStatus};

/// Longest pause between polls while the API fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One entry of `/cluster/resources?type=vm`.
#[derive(Debug, Deserialize)]
struct Resource {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    vmid: Option<u32>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    lock: Option<String>,
}

/// Everyone watching one guest.
type Observers = Vec<Arc<dyn BackendObserver>>;

/// What the last poll said about a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: BackendStatus,
    lock: Option<String>,
}

/// One watched guest.
struct Watched {
    node: String,
    observers: Observers,
    /// `None`: not seen since watched or since an outage (the next poll resyncs).
    last: Option<Seen>,
}

/// The one poller of a cluster. Register guests with [`watch`](Self::watch) (before or after
/// [`run`](Self::run) started); a guest watched while it runs is resynced by the next poll.
pub struct Poller {
    client: PveClient,
    poll: Duration,
    watched: Mutex<HashMap<u32, Watched>>,
    /// Locks as last seen (read by the drivers before a start).
    locks: Arc<GuestLocks>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("poll", &self.poll)
            .field("watched", &self.watched.lock().len())
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller on `client` every `poll`, recording locks in `locks`, watching nothing yet.
    pub fn new(client: PveClient, poll: Duration, locks: Arc<GuestLocks>) -> Self {
        Self {
            client,
            poll,
            watched: Mutex::new(HashMap::new()),
            locks,
        }
    }

    /// Tells `observer` what happens to guest `vmid` on `node` from now on.
    pub fn watch(&self, node: &str, vmid: u32, observer: Arc<dyn BackendObserver>) {
        let mut watched = self.watched.lock();
        let entry = watched.entry(vmid).or_insert_with(|| Watched {
            node: node.to_string(),
            observers: Vec::new(),
            last: None,
        });
        entry.observers.push(observer);
        // The new observer needs the current status: resync the guest at the next poll.
        entry.last = None;
    }

    /// Stops telling `observer` about guest `vmid`.
    pub fn unwatch(&self, vmid: u32, observer: &Arc<dyn BackendObserver>) {
        let mut watched = self.watched.lock();
        if let Some(entry) = watched.get_mut(&vmid) {
            entry.observers.retain(|o| !Arc::ptr_eq(o, observer));
            if entry.observers.is_empty() {
                watched.remove(&vmid);
            }
        }
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pause = match self
                .client
                .get::<Vec<Resource>>("/cluster/resources?type=vm")
                .await
            {
                Ok(resources) => {
                    if failures > 0 {
                        tracing::info!(api = %self.client.base(), "the PVE API answers again; resyncing every guest");
                    }
                    failures = 0;
                    self.apply(&resources);
                    self.poll
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(api = %self.client.base(), "polling the PVE API failed: {error}; backing off");
                        // Whatever happens meanwhile, the next good poll tells everyone afresh.
                        for entry in self.watched.lock().values_mut() {
                            entry.last = None;
                        }
                    } else {
                        tracing::debug!(api = %self.client.base(), failures, "polling the PVE API failed: {error}");
                    }
                    backoff(self.poll, failures)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Compares one poll's answer with the last and tells observers what changed.
    fn apply(&self, resources: &[Resource]) {
        let mut now: HashMap<u32, Seen> = HashMap::new();
        for resource in resources.iter().filter(|r| r.kind == "lxc") {
            if let Some(vmid) = resource.vmid {
                now.insert(
                    vmid,
                    Seen {
                        status: status_from(&resource.status),
                        lock: resource.lock.clone().filter(|l| !l.is_empty()),
                    },
                );
            }
        }
        let mut deliveries: Deliveries = Vec::new();
        {
            let mut watched = self.watched.lock();
            for (vmid, entry) in watched.iter_mut() {
                let seen = now.get(vmid).cloned().unwrap_or(Seen {
                    status: BackendStatus::Missing,
                    lock: None,
                });
                let shown = describe(&entry.node, *vmid);
                let before = self.locks.set(*vmid, seen.lock.as_deref());
                match (&before, &seen.lock) {
                    (old, Some(lock)) if old.as_ref() != Some(lock) => {
                        tracing::info!(guest = %shown, lock = %lock, "guest is locked; no start while it is");
                    }
                    (Some(old), None) => {
                        tracing::info!(guest = %shown, lock = %old, "guest is unlocked");
                    }
                    _ => {}
                }
                let events = transition(entry.last.as_ref().map(|s| s.status), seen.status);
                if !events.is_empty() {
                    tracing::debug!(guest = %shown, ?events, "guest changed");
                    deliveries.push((entry.observers.clone(), events));
                }
                entry.last = Some(seen);
            }
        }
        // Observers are told outside the locks (they take their own).
        deliver(deliveries);
    }
}

/// The pause after `failures` failed polls in a row: doubling from `poll`, at most 30 s.
fn backoff(poll: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(6);
    poll.saturating_mul(factor).min(MAX_BACKOFF.max(poll))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn failures_back_off_to_thirty_seconds() {
        let poll = Duration::from_secs(2);
        assert_eq!(backoff(poll, 1), Duration::from_secs(4));
        assert_eq!(backoff(poll, 2), Duration::from_secs(8));
        assert_eq!(backoff(poll, 10), MAX_BACKOFF);
    }
}
