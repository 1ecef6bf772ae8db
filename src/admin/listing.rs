//! `GET /api/routes`: every route as the operator needs to see it — in full detail, unlike the
//! public `status` endpoint.

use serde::Serialize;

use crate::config::RejectedRoute;
use crate::routes::{Route, RouteTable};

/// One route in the listing.
#[derive(Serialize)]
pub(super) struct RouteEntry<'a> {
    name: &'a str,
    hosts: Vec<&'a str>,
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
    /// Where the route comes from: `file`, or `labels` (a labelled container).
    source: &'static str,
}

/// A discovered route that is not routed (invalid labels, a clash with the file).
#[derive(Serialize)]
pub(super) struct RejectedEntry<'a> {
    name: &'a str,
    container: &'a str,
    state: &'static str,
    source: &'static str,
    /// Every problem, naming the container and its label.
    errors: Vec<String>,
}

/// Every rejected route, after the routed ones.
pub(super) fn rejected(list: &[RejectedRoute]) -> Vec<RejectedEntry<'_>> {
    list.iter()
        .map(|rejected| RejectedEntry {
            name: &rejected.name,
            container: &rejected.container,
            state: "rejected",
            source: "labels",
            errors: rejected.errors.iter().map(ToString::to_string).collect(),
        })
        .collect()
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
        .into_iter()
        .map(|(route, hosts)| entry(route, hosts))
        .collect()
}

/// One route with its `hosts`.
pub(super) fn entry<'a>(route: &'a Route, hosts: Vec<&'a str>) -> RouteEntry<'a> {
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
        source: route.source,
    }
}
