//! What a polled family tells observers when a backend's status changed between two looks
//! (Proxmox's bulk poll, Swarm's service list): the same [`BackendEvent`]s Docker's event
//! stream delivers, so the watcher reacts to every family alike.

use std::sync::Arc;

use crate::providers::{BackendEvent, BackendObserver, BackendStatus};

/// What to tell whom after one look: each backend's observers with its events.
pub(crate) type Deliveries = Vec<(Vec<Arc<dyn BackendObserver>>, Vec<BackendEvent>)>;

/// Tells every observer its events, in order. Called outside the lock the deliveries were
/// gathered under (observers take their own).
pub(crate) fn deliver(deliveries: Deliveries) {
    for (observers, events) in deliveries {
        for event in events {
            for observer in &observers {
                observer.observe(event.clone());
            }
        }
    }
}

/// The events for a backend that was `before` (`None`: not known, resync) and is `now`.
pub(crate) fn transition(before: Option<BackendStatus>, now: BackendStatus) -> Vec<BackendEvent> {
    use BackendStatus::{Missing, Running};
    let Some(before) = before else {
        return vec![BackendEvent::Resync(now)];
    };
    if before == now {
        return Vec::new();
    }
    match (before, now) {
        // As Docker tells it: a running backend that vanished stopped first.
        (Running, Missing) => vec![BackendEvent::Stopped, BackendEvent::Removed],
        (_, Missing) => vec![BackendEvent::Removed],
        (Missing, Running) => vec![BackendEvent::Created, BackendEvent::Started],
        (Missing, _) => vec![BackendEvent::Created],
        (_, Running) => vec![BackendEvent::Started],
        (Running, _) => vec![BackendEvent::Stopped],
        _ => vec![BackendEvent::Resync(now)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendStatus::{Missing, Running, Stopped};

    #[test]
    fn only_changes_are_told_after_the_first_sight() {
        assert_eq!(
            transition(None, Running),
            vec![BackendEvent::Resync(Running)]
        );
        assert!(transition(Some(Running), Running).is_empty());
        assert_eq!(
            transition(Some(Stopped), Running),
            vec![BackendEvent::Started]
        );
        assert_eq!(
            transition(Some(Running), Stopped),
            vec![BackendEvent::Stopped]
        );
        assert_eq!(
            transition(Some(Running), Missing),
            vec![BackendEvent::Stopped, BackendEvent::Removed]
        );
        assert_eq!(
            transition(Some(Stopped), Missing),
            vec![BackendEvent::Removed]
        );
        assert_eq!(
            transition(Some(Missing), Stopped),
            vec![BackendEvent::Created]
        );
        assert_eq!(
            transition(Some(Missing), Running),
            vec![BackendEvent::Created, BackendEvent::Started]
        );
    }
}
