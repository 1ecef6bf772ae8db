//! Checks across routes: unique names and hosts, dependencies that exist and form no cycle, and
//! routes sharing a backend that agree on what the backend decides.
//!
//! Why apart from route parsing: these need the whole set of routes, and they run on whatever
//! could be parsed (drafts), so one broken route does not hide problems in the others. Each
//! problem is located at the value that causes it (the duplicate host, the unknown dependency).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::error::ConfigError;
use super::fields::closest;
use super::model::{BackendConfig, StreamProtocol};
use super::route::RouteDraft;
use super::yaml::Position;

/// Runs every cross-route check on `drafts` (in file order); `by_name` maps each route name to the
/// first route that has it; `taken` are the gateway's own TCP listen addresses (HTTP, admin), each
/// with what it is.
pub(crate) fn check_routes(
    drafts: &[RouteDraft],
    by_name: &HashMap<String, usize>,
    taken: &[(String, &str)],
    errors: &mut Vec<ConfigError>,
) {
    check_hosts(drafts, errors);
    check_stream_listeners(drafts, taken, errors);
    check_dependencies(drafts, by_name, errors);
    check_shared_backends(drafts, errors);
}

fn route_error(route: &str, key: &str, message: String, at: Position) -> ConfigError {
    ConfigError::new(Some(route), key, message).at(at)
}

fn describe_backend(backend: &BackendConfig) -> String {
    match backend {
        BackendConfig::Docker { container, engine } => match &engine.host {
            Some(host) => format!("docker container \"{container}\" on {host}"),
            None => format!("docker container \"{container}\""),
        },
        BackendConfig::Proxmox { node, vmid } => format!("proxmox guest {vmid} on node \"{node}\""),
        BackendConfig::Swarm { service, .. } => format!("swarm service \"{service}\""),
    }
}

/// Host names are unique across all routes and within each (case-insensitively: they are
/// lowercased when parsed).
fn check_hosts(drafts: &[RouteDraft], errors: &mut Vec<ConfigError>) {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        for (host, at) in &draft.hosts {
            match owner.get(host.as_str()) {
                Some(&j) if j == i => errors.push(route_error(
                    &draft.label,
                    "hosts",
                    format!("host \"{host}\" is listed twice"),
                    *at,
                )),
                Some(&j) => errors.push(route_error(
                    &draft.label,
                    "hosts",
                    format!(
                        "host \"{host}\" is already used by route \"{}\"",
                        drafts[j].label
                    ),
                    *at,
                )),
                None => {
                    owner.insert(host, i);
                }
            }
        }
    }
}

/// Whether two sockets of the same protocol could not both be bound: same port, and the same
/// address or a wildcard (`0.0.0.0`, `[::]`) on either side.
pub(crate) fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Stream listen addresses are unique per protocol across all routes (TCP and UDP may share one,
/// as DNS does), and a TCP stream never takes one of the gateway's own listen addresses.
fn check_stream_listeners(
    drafts: &[RouteDraft],
    taken: &[(String, &str)],
    errors: &mut Vec<ConfigError>,
) {
    let gateway: Vec<(SocketAddr, &str)> = taken
        .iter()
        .filter_map(|(addr, what)| Some((addr.parse().ok()?, *what)))
        .collect();
    let mut seen: Vec<(StreamProtocol, SocketAddr, usize)> = Vec::new();
    for (i, draft) in drafts.iter().enumerate() {
        for (stream, at) in &draft.streams {
            let (protocol, listen) = (stream.protocol, stream.listen);
            let earlier = seen
                .iter()
                .find(|(p, addr, _)| *p == protocol && overlaps(addr, &listen));
            if let Some((_, addr, j)) = earlier {
                let owner = if *j == i {
                    "this route".to_string()
                } else {
                    format!("route \"{}\"", drafts[*j].label)
                };
                errors.push(route_error(
                    &draft.label,
                    "streams.listen",
                    format!(
                        "{} address {listen} clashes with {addr}, already used by {owner}",
                        protocol.as_str()
                    ),
                    *at,
                ));
            } else {
                seen.push((protocol, listen, i));
            }
            if protocol == StreamProtocol::Tcp {
                if let Some((addr, what)) = gateway.iter().find(|(addr, _)| overlaps(addr, &listen))
                {
                    errors.push(route_error(
                        &draft.label,
                        "streams.listen",
                        format!("tcp address {listen} clashes with {addr}, the {what}"),
                        *at,
                    ));
                }
            }
        }
    }
}

/// Every dependency names another existing route, and the dependency graph has no cycle.
fn check_dependencies(
    drafts: &[RouteDraft],
    by_name: &HashMap<String, usize>,
    errors: &mut Vec<ConfigError>,
) {
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
    for (i, draft) in drafts.iter().enumerate() {
        let mut seen = HashSet::new();
        for (dep, at) in &draft.depends_on {
            if !seen.insert(dep.route.as_str()) {
                errors.push(route_error(
                    &draft.label,
                    "depends_on",
                    format!("route \"{}\" is listed twice", dep.route),
                    *at,
                ));
                continue;
            }
            match by_name.get(&dep.route) {
                Some(&j) if j == i => errors.push(route_error(
                    &draft.label,
                    "depends_on",
                    "a route cannot depend on itself".to_string(),
                    *at,
                )),
                Some(&j) => edges[i].push(j),
                None => {
                    let hint = closest(&dep.route, by_name.keys().map(String::as_str))
                        .map(|k| format!(" (did you mean \"{k}\"?)"))
                        .unwrap_or_default();
                    errors.push(route_error(
                        &draft.label,
                        "depends_on",
                        format!("unknown route \"{}\"{hint}", dep.route),
                        *at,
                    ));
                }
            }
        }
    }
    for cycle in find_cycles(&edges) {
        let (Some(&from), Some(&to)) = (cycle.first(), cycle.get(1)) else {
            continue;
        };
        let names: Vec<&str> = cycle.iter().map(|&i| drafts[i].label.as_str()).collect();
        // Located at the dependency that closes the cycle's first step.
        let at = drafts[from]
            .depends_on
            .iter()
            .find(|(dep, _)| by_name.get(&dep.route) == Some(&to))
            .map_or_else(|| drafts[from].position_of("depends_on"), |(_, at)| *at);
        errors.push(route_error(
            &drafts[from].label,
            "depends_on",
            format!("dependency cycle: {}", names.join(" -> ")),
            at,
        ));
    }
}

/// Each cycle found by an iterative depth-first search (no recursion: route counts can be large),
/// as a closed path `[a, b, a]`.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; edges.len()];
    let mut cycles = Vec::new();
    for start in 0..edges.len() {
        if state[start] != NEW {
            continue;
        }
        state[start] = ON_PATH;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            match edges[node].get(next) {
                Some(&to) => {
                    top.1 += 1;
                    match state[to] {
                        NEW => {
                            state[to] = ON_PATH;
                            stack.push((to, 0));
                        }
                        ON_PATH => {
                            let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(to);
                            cycles.push(cycle);
                        }
                        _ => {}
                    }
                }
                None => {
                    state[node] = DONE;
                    stack.pop();
                }
            }
        }
    }
    cycles
}

/// Routes naming the same backend share its watcher, so they must agree on everything the
/// backend (not the route) decides.
fn check_shared_backends(drafts: &[RouteDraft], errors: &mut Vec<ConfigError>) {
    let mut first: HashMap<&BackendConfig, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        let Some(backend) = &draft.backend else {
            continue;
        };
        let Some(&j) = first.get(backend) else {
            first.insert(backend, i);
            continue;
        };
        let other = &drafts[j];
        for ((key, mine), (_, theirs)) in draft.backend_keys().into_iter().zip(other.backend_keys())
        {
            if mine != theirs {
                errors.push(route_error(
                    &draft.label,
                    key,
                    format!(
                        "routes \"{}\" and \"{}\" share {} but set different {key}: {theirs} vs {mine}",
                        other.label,
                        draft.label,
                        describe_backend(backend)
                    ),
                    draft.position_of(key),
                ));
            }
        }
    }
}
