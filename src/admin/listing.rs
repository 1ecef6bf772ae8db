//! `GET /api/routes`: every route as the operator needs to see it — in full detail, unlike the
//! public `status` endpoint.

use serde::Serialize;

use crate::routes::{Route, RouteTable};

/// One route in the listing.
#[derive(Serialize)]
pub(super) struct RouteEntry<'a> {
    name: &'a str,
    hosts: &'a [String],
    streams: &'a [String],
    backend: &'a str,
    state: &'static str,
    since: String,
    sleep_in_seconds: Option<u64>,
    error: Option<String>,
    in_flight: u32,
    held: usize,
    held_by: Vec<String>,
    dependencies: Vec<DependencyEntry>,
    /// Where the route comes from: `file` (labels come with discovery).
    source: &'static str,
}

#[derive(Serialize)]
struct DependencyEntry {
    backend: String,
    state: &'static str,
    held_by: Vec<String>,
}

/// Every route of `table`, in configuration order.
pub(super) fn routes(table: &RouteTable) -> Vec<RouteEntry<'_>> {
    table
        .entries()
        .map(|(route, hosts)| entry(route, hosts))
        .collect()
}

/// One route with its `hosts`.
pub(super) fn entry<'a>(route: &'a Route, hosts: &'a [String]) -> RouteEntry<'a> {
    let watcher = &route.watcher;
    let (state, since, error) = watcher.snapshot();
    RouteEntry {
        name: &route.name,
        hosts,
        streams: &route.streams,
        backend: watcher.backend(),
        state: state.as_str(),
        since: humantime::format_rfc3339_seconds(since).to_string(),
        sleep_in_seconds: watcher.sleeps_in().map(|left| left.as_secs()),
        error: error.map(|error| error.to_string()),
        in_flight: watcher.in_flight(),
        held: route.held(),
        held_by: watcher.held_by(),
        dependencies: watcher
            .dependencies()
            .iter()
            .map(|(dependency, _)| DependencyEntry {
                backend: dependency.backend().to_string(),
                state: dependency.state().as_str(),
                held_by: dependency.held_by(),
            })
            .collect(),
        source: "file",
    }
}
