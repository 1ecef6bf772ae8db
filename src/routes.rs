//! The route table: Host → route, read lock-free and without allocation on every request.
//!
//! A [`RouteTable`] is an immutable snapshot; [`LiveRoutes`] holds the one in force behind
//! `arc-swap`, so a reload or a discovered container replaces it with one atomic store. A request
//! keeps the `Arc<Route>` it matched (never an index into whatever table is current), so it
//! finishes with the route it started with. Host matching ignores the port and ASCII case; the
//! lowercased host is built in a stack buffer, not on the heap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::backend::{Upstream, Watcher};
use crate::config::RejectedRoute;

/// Longest host name matched (RFC 1035 allows 253 characters).
const MAX_HOST_LEN: usize = 255;

/// One route: a set of host names in front of one backend.
pub struct Route {
    /// Unique name from the configuration.
    pub name: String,
    /// The backend's watcher (shared with other routes naming the same backend).
    pub watcher: Arc<Watcher>,
    /// Where this route's requests go once the backend is up.
    pub upstream: Arc<Upstream>,
    /// Only this path may wake the backend.
    pub start_endpoint: Option<String>,
    /// Hold browsers like every other client instead of showing the loading page.
    pub no_loading_page: bool,
    /// Most requests held at once while waking.
    pub max_waiters: usize,
    /// What visitors may see and which clients may wake the backend.
    pub policy: RoutePolicy,
    /// The route's stream listeners, as `tcp 0.0.0.0:25565` (for listings).
    pub streams: Vec<String>,
    /// Where the route comes from: `file`, or `labels` (a labelled container).
    pub source: &'static str,
    waiters: AtomicUsize,
    /// Turns true when a reload removes the route: its held requests then get 503 (those in
    /// flight finish).
    removed: AtomicBool,
    /// Told when `removed` turns true (a `watch` channel would cost every route 350 bytes).
    removal: Notify,
}

/// What a route shows to visitors and whom it lets wake its backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Whether the public page, events and status may name the backend, its addresses and
    /// the provider's error texts (otherwise they show the route and the phase only).
    pub show_details: bool,
    /// Lowercased `User-Agent` substrings that never wake the backend (monitors, crawlers).
    pub ignore_user_agents: Vec<String>,
}

impl RoutePolicy {
    /// Whether a request with this `User-Agent` must not wake the backend. Only asked for a
    /// sleeping route (never on the ready path); ASCII case is ignored without allocating.
    pub fn ignores(&self, user_agent: &[u8]) -> bool {
        self.ignore_user_agents.iter().any(|part| {
            let part = part.as_bytes();
            !part.is_empty()
                && user_agent
                    .windows(part.len())
                    .any(|window| window.eq_ignore_ascii_case(part))
        })
    }
}

impl Route {
    /// A route with no request held.
    pub fn new(
        name: String,
        watcher: Arc<Watcher>,
        upstream: Arc<Upstream>,
        start_endpoint: Option<String>,
        no_loading_page: bool,
        max_waiters: usize,
    ) -> Self {
        Self {
            name,
            watcher,
            upstream,
            start_endpoint,
            no_loading_page,
            max_waiters,
            policy: RoutePolicy::default(),
            streams: Vec::new(),
            source: "file",
            waiters: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            removal: Notify::new(),
        }
    }

    /// The same route with `policy` (what visitors see, who may wake it).
    pub fn with_policy(mut self, policy: RoutePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Counts `count` requests (connections, datagrams) this route refused or dropped while not
    /// ready, for `reason` (`idlewatcher_requests_rejected_total`). Never on the ready path.
    pub fn count_rejected(&self, reason: &str, count: u64) {
        if let Some(metrics) = self.watcher.metrics() {
            metrics.metrics().rejected(&self.name, reason, count);
        }
    }

    /// The same route with where it comes from (`file`, `labels`).
    pub fn with_source(mut self, source: &'static str) -> Self {
        self.source = source;
        self
    }

    /// The same route with its stream listeners described (`tcp 0.0.0.0:25565`).
    pub fn with_streams(mut self, streams: Vec<String>) -> Self {
        self.streams = streams;
        self
    }

    /// Marks the route removed by a reload: every request held on it is answered 503 at once.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.removal.notify_waiters();
    }

    /// Whether a reload removed the route (held requests look; never read on the ready path).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Completes when a reload removes the route after it was enabled: pin it and call
    /// [`Notified::enable`] *before* looking at [`is_removed`](Self::is_removed).
    pub fn removal(&self) -> Notified<'_> {
        self.removal.notified()
    }

    /// How many requests (or connections) are held right now, waiting for the wake.
    pub fn held(&self) -> usize {
        self.waiters.load(Ordering::Relaxed).min(self.max_waiters)
    }

    /// Counts one more held request, or returns `None` if `max_waiters` are already held.
    pub fn hold(&self) -> Option<HeldRequest<'_>> {
        let before = self.waiters.fetch_add(1, Ordering::AcqRel);
        let held = HeldRequest(&self.waiters);
        (before < self.max_waiters).then_some(held)
    }
}

/// One held request; dropping it releases its place.
pub struct HeldRequest<'a>(&'a AtomicUsize);

impl Drop for HeldRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every route, in configuration order and by host: one immutable snapshot.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// aHash: several times faster than std's SipHash on short keys, and still keyed per
    /// process (host names come from clients).
    hosts: HashMap<Box<[u8]>, Arc<Route>, ahash::RandomState>,
}

impl RouteTable {
    /// Builds the table. Host names must already be unique (the configuration checks it);
    /// they are lowercased here.
    pub fn new(routes: Vec<(Arc<Route>, Vec<String>)>) -> Self {
        let mut table = Self::default();
        for (route, hosts) in routes {
            for host in &hosts {
                table.hosts.insert(
                    host.to_ascii_lowercase().into_bytes().into(),
                    Arc::clone(&route),
                );
            }
            table.routes.push(route);
        }
        table
    }

    /// The route for a `Host` header value (port ignored, case-insensitive).
    #[inline]
    pub fn by_host(&self, host: &str) -> Option<&Arc<Route>> {
        self.by_host_bytes(host.as_bytes())
    }

    /// [`by_host`](Self::by_host) on the header's raw bytes: no UTF-8 check on the hot path
    /// (a host that is not ASCII matches no route anyway).
    #[inline]
    pub fn by_host_bytes(&self, host: &[u8]) -> Option<&Arc<Route>> {
        let name = strip_port(host);
        if name.len() > MAX_HOST_LEN {
            return None;
        }
        let mut buffer = [0u8; MAX_HOST_LEN];
        let lower = &mut buffer[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        self.hosts.get(&*lower)
    }

    /// The route named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| route.name == name)
    }

    /// Every route, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// Every route with its host names (lowercased, sorted), in configuration order, for
    /// listings: one pass over the host map (the table keeps no second copy of the names: at
    /// 10,000 routes that copy was ≈ 4 % of what a napping route costs).
    pub fn entries(&self) -> Vec<(&Arc<Route>, Vec<&str>)> {
        let mut by_route: HashMap<*const Route, Vec<&str>> =
            HashMap::with_capacity(self.routes.len());
        for (host, route) in &self.hosts {
            if let Ok(host) = std::str::from_utf8(host) {
                by_route.entry(Arc::as_ptr(route)).or_default().push(host);
            }
        }
        self.routes
            .iter()
            .map(|route| {
                let mut hosts = by_route.remove(&Arc::as_ptr(route)).unwrap_or_default();
                hosts.sort_unstable();
                (route, hosts)
            })
            .collect()
    }

    /// The host names of `route` (lowercased, sorted), for a listing of that route alone.
    pub fn hosts_of(&self, route: &Arc<Route>) -> Vec<&str> {
        let mut hosts: Vec<&str> = self
            .hosts
            .iter()
            .filter(|(_, owner)| Arc::ptr_eq(owner, route))
            .filter_map(|(host, _)| std::str::from_utf8(host).ok())
            .collect();
        hosts.sort_unstable();
        hosts
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The route table in force, replaced as a whole (reload, label discovery) by one atomic store.
pub struct LiveRoutes(ArcSwap<RouteTable>, ArcSwap<Vec<RejectedRoute>>);

impl LiveRoutes {
    /// Live routes starting with `table`.
    pub fn new(table: RouteTable) -> Self {
        Self(
            ArcSwap::from_pointee(table),
            ArcSwap::from_pointee(Vec::new()),
        )
    }

    /// The current snapshot, for one lookup (lock-free; keep it only briefly).
    #[inline]
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.0.load()
    }

    /// The routes discovered but not routed (invalid labels, clashes with the file), with why:
    /// the operator sees them in `GET /api/routes`.
    pub fn rejected(&self) -> Arc<Vec<RejectedRoute>> {
        self.1.load_full()
    }

    /// Replaces the list of rejected routes.
    pub fn set_rejected(&self, rejected: Vec<RejectedRoute>) {
        self.1.store(Arc::new(rejected));
    }

    /// The current snapshot, to keep.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Puts `table` in force; returns the one it replaces. Requests that already matched a route
    /// of the old table finish with it.
    pub fn replace(&self, table: RouteTable) -> Arc<RouteTable> {
        self.0.swap(Arc::new(table))
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`, `example.com.` → `example.com`.
/// Plain loops: host names are short, and a `memchr` call costs more than it saves here.
fn strip_port(host: &[u8]) -> &[u8] {
    let name = if host.first() == Some(&b'[') {
        match host.iter().position(|&byte| byte == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|&byte| byte == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    name.strip_suffix(b".").unwrap_or(name)
}

/// Routes over fake backends, for the unit tests of the layers that use routes.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Route;
    use crate::backend::{BackendSettings, Upstream, UpstreamTarget, Watcher};
    use crate::config::{HealthCheck, StopMethod};
    use crate::idle::IdleClock;
    use crate::providers::fake::FakeEngine;

    /// A route named `name` over the stopped fake backend `name` of `engine`, whose upstream is
    /// 127.0.0.1:`port` (the fake listens there while running, if told to), holding at most
    /// `max_waiters` requests, with a `wake_timeout` of `wake_timeout`.
    pub(crate) fn route(
        engine: &Arc<FakeEngine>,
        name: &str,
        port: u16,
        max_waiters: usize,
        wake_timeout: Duration,
    ) -> Arc<Route> {
        engine.create(name).unwrap();
        let upstream = Arc::new(Upstream::new(
            UpstreamTarget::Fixed(format!("127.0.0.1:{port}")),
            HealthCheck::Tcp,
        ));
        let watcher = Watcher::new(
            0,
            Arc::new(engine.provider(name)),
            BackendSettings {
                idle_ticks: 0,
                wake_timeout,
                stop_method: StopMethod::Stop,
                stop_signal: None,
                stop_timeout: Duration::from_secs(1),
                retry_backoff: Duration::from_secs(1),
            },
            Vec::new(),
            vec![Arc::clone(&upstream)],
            IdleClock::new(Duration::from_secs(1)),
        );
        Arc::new(Route::new(
            name.into(),
            watcher,
            upstream,
            None,
            false,
            max_waiters,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::route;
    use super::{strip_port, LiveRoutes, RouteTable};
    use crate::providers::fake::FakeEngine;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_request_keeps_the_route_it_matched_when_the_table_is_replaced() {
        let engine = FakeEngine::new();
        let old = route(&engine, "old", 1, 10, Duration::from_secs(1));
        let live = LiveRoutes::new(RouteTable::new(vec![(old, vec!["App.Test".into()])]));
        // A request matches (host case and port ignored) and keeps its route.
        let kept = Arc::clone(live.load().by_host("app.test:8080").unwrap());
        assert_eq!(kept.name, "old");
        // A reload puts another route in force for the same host, with one store.
        let new = route(&engine, "new", 2, 10, Duration::from_secs(1));
        let replaced = live.replace(RouteTable::new(vec![(new, vec!["app.test".into()])]));
        assert_eq!(live.load().by_host("app.test").unwrap().name, "new");
        assert_eq!(
            live.load().by_name("new").map(|r| r.name.as_str()),
            Some("new")
        );
        assert!(live.load().by_name("old").is_none());
        // The request in flight still has the old route, and so does the old snapshot.
        assert_eq!(kept.name, "old");
        assert!(Arc::ptr_eq(&kept, replaced.by_host("app.test").unwrap()));
        assert_eq!(live.snapshot().len(), 1);
    }

    #[test]
    fn ports_and_trailing_dots_are_ignored() {
        assert_eq!(strip_port(b"Example.com:8080"), b"Example.com");
        assert_eq!(strip_port(b"example.com"), b"example.com");
        assert_eq!(strip_port(b"example.com.:80"), b"example.com");
        assert_eq!(strip_port(b"[::1]:8080"), b"[::1]");
        assert_eq!(strip_port(b"[::1]"), b"[::1]");
    }
}
