//! The levels `/metrics` shows for each route, read from the routes' own atomics when scraped:
//! the request path keeps no gauge of its own, so it pays nothing for them.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use crate::backend::State;
use crate::routes::RouteTable;

/// `idlewatcher_route_state{route,state}` (1 for the current state, 0 for the others),
/// `idlewatcher_requests_held{route}` and `idlewatcher_in_flight{route}`, now.
pub(super) fn gather(table: &RouteTable) -> Vec<MetricFamily> {
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        // The names and labels are constants of this function: valid by construction.
        IntGaugeVec::new(Opts::new(name, help), labels).ok()
    };
    let (Some(state), Some(held), Some(in_flight)) = (
        gauge(
            "idlewatcher_route_state",
            "1 for the route's current backend state, 0 for the others.",
            &["route", "state"],
        ),
        gauge(
            "idlewatcher_requests_held",
            "Requests (and connections) held right now, waiting for the backend to wake.",
            &["route"],
        ),
        gauge(
            "idlewatcher_in_flight",
            "Requests and connections using the route's backend right now.",
            &["route"],
        ),
    ) else {
        return Vec::new();
    };
    for route in table.iter() {
        let current = route.watcher.state();
        for each in State::ALL {
            state
                .with_label_values(&[route.name.as_str(), each.as_str()])
                .set(i64::from(each == current));
        }
        held.with_label_values(&[route.name.as_str()])
            .set(i64::try_from(route.held()).unwrap_or(i64::MAX));
        in_flight
            .with_label_values(&[route.name.as_str()])
            .set(i64::from(route.watcher.in_flight()));
    }
    [state, held, in_flight]
        .iter()
        .flat_map(Collector::collect)
        .collect()
}
