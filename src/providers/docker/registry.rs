//! The containers one engine's event stream watches, indexed the ways an event names them: by
//! name, by a full id learned earlier, or by an id prefix given in the configuration. An event
//! finds its watchers with two map lookups and a scan of the id-prefix references only (rare:
//! routes name containers), never a scan of every watched container — an engine busy with other
//! containers costs a gateway watching 10,000 of them no more per event than one watching one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::providers::{BackendEvent, BackendObserver};

/// One watched container and everyone watching it.
pub(super) struct Watched {
    /// The full id of the container currently bearing the reference, learned at resync or from
    /// an event matched by name; lets events without a `name` attribute match too.
    learned_id: Option<String>,
    /// Everyone to tell.
    observers: Vec<Arc<dyn BackendObserver>>,
}

impl Watched {
    /// Tells every observer.
    pub(super) fn deliver(&self, event: &BackendEvent) {
        for observer in &self.observers {
            observer.observe(event.clone());
        }
    }
}

/// A watcher an event is for: its reference, and whether the event named it (rather than its id).
pub(super) struct Match {
    pub(super) reference: String,
    pub(super) by_name: bool,
}

/// Watched containers by reference (as configured, leading `/` stripped), with the indexes
/// events are matched through.
#[derive(Default)]
pub(super) struct Registry {
    by_reference: HashMap<String, Watched>,
    /// References that may be ids (12 to 64 lowercase hex digits): an event's id may start with
    /// one.
    id_prefixes: Vec<String>,
    /// Learned full ids → the references bearing them.
    by_learned_id: HashMap<String, Vec<String>>,
}

impl Registry {
    /// Adds `observer` to the watchers of `reference`.
    pub(super) fn watch(&mut self, reference: &str, observer: Arc<dyn BackendObserver>) {
        if let Some(entry) = self.by_reference.get_mut(reference) {
            entry.observers.push(observer);
            return;
        }
        if may_be_id(reference) {
            self.id_prefixes.push(reference.to_string());
        }
        self.by_reference.insert(
            reference.to_string(),
            Watched {
                learned_id: None,
                observers: vec![observer],
            },
        );
    }

    /// Removes `observer` (the same `Arc`) from the watchers of `reference`; a container nobody
    /// watches any more is forgotten, indexes included.
    pub(super) fn unwatch(&mut self, reference: &str, observer: &Arc<dyn BackendObserver>) {
        let Some(entry) = self.by_reference.get_mut(reference) else {
            return;
        };
        entry
            .observers
            .retain(|watching| !Arc::ptr_eq(watching, observer));
        if entry.observers.is_empty() {
            self.learn(reference, None);
            self.by_reference.remove(reference);
            self.id_prefixes.retain(|prefix| prefix != reference);
        }
    }

    /// How many containers are watched.
    pub(super) fn len(&self) -> usize {
        self.by_reference.len()
    }

    /// Every watched reference.
    pub(super) fn references(&self) -> impl Iterator<Item = &str> {
        self.by_reference.keys().map(String::as_str)
    }

    /// The watchers of `reference`, if it is watched.
    pub(super) fn get(&self, reference: &str) -> Option<&Watched> {
        self.by_reference.get(reference)
    }

    /// Whether `id` is the full id learned for `reference`.
    pub(super) fn has_learned(&self, reference: &str, id: &str) -> bool {
        self.get(reference)
            .is_some_and(|entry| entry.learned_id.as_deref() == Some(id))
    }

    /// Records `id` (or none) as the full id of the container bearing `reference`.
    pub(super) fn learn(&mut self, reference: &str, id: Option<String>) {
        let Some(entry) = self.by_reference.get_mut(reference) else {
            return;
        };
        if entry.learned_id == id {
            return;
        }
        if let Some(old) = entry.learned_id.take() {
            if let Some(references) = self.by_learned_id.get_mut(&old) {
                references.retain(|bearing| bearing != reference);
                if references.is_empty() {
                    self.by_learned_id.remove(&old);
                }
            }
        }
        if let Some(id) = &id {
            self.by_learned_id
                .entry(id.clone())
                .or_default()
                .push(reference.to_string());
        }
        entry.learned_id = id;
    }

    /// The watchers an event about container `id` (named `name`, if the engine said; already
    /// normalised) is for, each once: by name first, then by id prefix or learned id.
    pub(super) fn matching(&self, id: &str, name: Option<&str>) -> Vec<Match> {
        let mut found = Vec::new();
        let named = name.filter(|name| self.by_reference.contains_key(*name));
        if let Some(name) = named {
            found.push(Match {
                reference: name.to_string(),
                by_name: true,
            });
        }
        if id.is_empty() {
            return found;
        }
        let by_prefix = self
            .id_prefixes
            .iter()
            .filter(|prefix| id.starts_with(prefix.as_str()));
        let by_learned = self.by_learned_id.get(id).into_iter().flatten();
        for reference in by_prefix.chain(by_learned) {
            if Some(reference.as_str()) != named
                && !found.iter().any(|seen| &seen.reference == reference)
            {
                found.push(Match {
                    reference: reference.clone(),
                    by_name: false,
                });
            }
        }
        found
    }
}

/// Whether a reference may be a container id (prefix): 12 to 64 lowercase hex digits.
fn may_be_id(reference: &str) -> bool {
    (12..=64).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;
    impl BackendObserver for Nobody {
        fn observe(&self, _event: BackendEvent) {}
    }

    fn references(found: Vec<Match>) -> Vec<(String, bool)> {
        found
            .into_iter()
            .map(|m| (m.reference, m.by_name))
            .collect()
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn an_event_finds_its_watchers_by_name_prefix_and_learned_id_each_once() {
        let mut registry = Registry::default();
        let observer: Arc<dyn BackendObserver> = Arc::new(Nobody);
        for reference in ["web", "0123456789ab", "db"] {
            registry.watch(reference, Arc::clone(&observer));
        }
        registry.learn("web", Some(ID.to_string()));
        registry.learn("0123456789ab", Some(ID.to_string()));
        assert_eq!(
            references(registry.matching(ID, Some("web"))),
            [("web".into(), true), ("0123456789ab".into(), false)]
        );
        assert_eq!(
            references(registry.matching(ID, None)),
            [("0123456789ab".into(), false), ("web".into(), false)]
        );
        assert!(registry.matching("ffff", Some("other")).is_empty());
        assert!(registry.matching("", None).is_empty());
    }

    #[test]
    fn a_new_id_or_an_unwatch_leaves_no_stale_index_entry() {
        let mut registry = Registry::default();
        let observer: Arc<dyn BackendObserver> = Arc::new(Nobody);
        registry.watch("web", Arc::clone(&observer));
        registry.learn("web", Some("aaaa".to_string()));
        registry.learn("web", Some("bbbb".to_string()));
        assert!(registry.matching("aaaa", None).is_empty(), "the old id");
        assert_eq!(registry.matching("bbbb", None).len(), 1);
        registry.unwatch("web", &observer);
        assert!(registry.matching("bbbb", None).is_empty());
        assert!(registry.by_learned_id.is_empty() && registry.len() == 0);

        registry.watch("0123456789ab", Arc::clone(&observer));
        registry.unwatch("0123456789ab", &observer);
        assert!(registry.id_prefixes.is_empty());
        assert!(registry.matching(ID, None).is_empty());
    }

    #[test]
    fn names_are_not_taken_for_id_prefixes() {
        assert!(may_be_id("0123456789ab"));
        assert!(!may_be_id("0123456789a"), "too short");
        assert!(!may_be_id("web-0123456789ab"));
        assert!(!may_be_id("0123456789AB"), "ids are lowercase");
    }
}
