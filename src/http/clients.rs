//! What one client may cost: the deadlines of [`ClientLimits`] and caps per client address on
//! open connections, held requests and event streams.
//!
//! The counters are a small map per kind of cap behind a mutex, touched when a connection opens
//! or closes, when a request starts or ends a hold, and when an event stream opens or ends —
//! never on the ready request path. A cap of 0 is no cap and costs nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::ClientLimits;

/// Counts what each client address holds, up to a cap.
pub type PerIp = PerKey<IpAddr>;

/// Counts what each key (a client address, a route) holds, up to a cap.
pub struct PerKey<K> {
    cap: usize,
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    /// A counter allowing `cap` per key (0: no cap).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one place for `ip`: `None` if it holds `cap` already. An unknown address (not
    /// TCP) and a cap of 0 always get a place, uncounted.
    pub fn take(self: &Arc<Self>, ip: Option<K>) -> Option<PerKeyPlace<K>> {
        let Some(ip) = ip.filter(|_| self.cap > 0) else {
            return Some(PerKeyPlace(None));
        };
        let mut counts = self.counts.lock();
        let count = counts.entry(ip.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PerKeyPlace(Some((Arc::clone(self), ip))))
    }

    /// How many places `ip` holds.
    pub fn count(&self, ip: &K) -> usize {
        self.counts.lock().get(ip).copied().unwrap_or(0)
    }
}

/// One place taken from a [`PerKey`] counter, given back on drop.
pub struct PerKeyPlace<K: Hash + Eq>(Option<(Arc<PerKey<K>>, K)>);

/// One place taken from a [`PerIp`] counter.
pub type PerIpPlace = PerKeyPlace<IpAddr>;

impl<K: Hash + Eq> Drop for PerKeyPlace<K> {
    fn drop(&mut self) {
        if let Some((counter, ip)) = self.0.take() {
            let mut counts = counter.counts.lock();
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// The client limits of a gateway and their counters, shared by the early hold and the gate.
pub struct Clients {
    /// The configured deadlines and caps.
    pub limits: ClientLimits,
    /// Open connections per address (`max_connections_per_ip`).
    pub connections: Arc<PerIp>,
    /// Requests held through a wake per address (`max_held_per_ip`).
    pub held: Arc<PerIp>,
    /// Open event streams per address (`max_event_streams_per_ip`).
    pub event_streams: Arc<PerIp>,
    /// Open event streams per route name (`max_event_streams_per_route`).
    pub route_event_streams: Arc<PerKey<Box<str>>>,
}

/// The two places an event stream holds for its life: one of its client's, one of its
/// route's.
pub struct EventStreamPlaces {
    _client: PerIpPlace,
    _route: PerKeyPlace<Box<str>>,
}

/// Which cap refused an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStreamRefusal {
    /// The client follows `max_event_streams_per_ip` streams already (429).
    Client,
    /// The route has `max_event_streams_per_route` subscribers already (503).
    Route,
}

impl Clients {
    /// Takes the places of a new event stream of `client` on `route` (the gate's and the
    /// early hold's streams count alike).
    pub fn take_event_stream(
        &self,
        client: Option<IpAddr>,
        route: &str,
    ) -> Result<EventStreamPlaces, EventStreamRefusal> {
        let client = self
            .event_streams
            .take(client)
            .ok_or(EventStreamRefusal::Client)?;
        let route = self
            .route_event_streams
            .take(Some(route.into()))
            .ok_or(EventStreamRefusal::Route)?;
        Ok(EventStreamPlaces {
            _client: client,
            _route: route,
        })
    }

    /// Counters for `limits`.
    pub fn new(limits: ClientLimits) -> Self {
        Self {
            connections: PerIp::new(limits.max_connections_per_ip),
            held: PerIp::new(limits.max_held_per_ip),
            event_streams: PerIp::new(limits.max_event_streams_per_ip),
            route_event_streams: PerKey::new(limits.max_event_streams_per_route),
            limits,
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::new(ClientLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_address_and_given_back() {
        let counter = PerIp::new(2);
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let b = Some(IpAddr::from([127, 0, 0, 2]));
        let first = counter.take(a).unwrap();
        let _second = counter.take(a).unwrap();
        assert!(
            counter.take(a).is_none(),
            "a third place for the same address"
        );
        assert!(
            counter.take(b).is_some(),
            "another address has its own places"
        );
        drop(first);
        assert!(
            counter.take(a).is_some(),
            "a place given back is free again"
        );
        assert!(
            counter.take(None).is_some(),
            "an unknown address is not counted"
        );
    }

    #[test]
    fn a_cap_of_zero_counts_nothing() {
        let counter = PerIp::new(0);
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let places: Vec<_> = (0..100).map(|_| counter.take(a).unwrap()).collect();
        assert_eq!(counter.count(&IpAddr::from([127, 0, 0, 1])), 0);
        drop(places);
    }
}
