//! Docker labels → routes (`docker: { labels: true }`): a container labelled
//! `idlewatcher.enable=true` becomes a route, read by the file's own route parser and checks.
//!
//! Every route key has a label form, `idlewatcher.<key>`: nested keys dotted
//! (`idlewatcher.health.path`), lists comma-separated (`idlewatcher.hosts=a.lan,b.lan`). The
//! route's name defaults to the container's name and its backend is the labelled container on
//! the gateway's engine; `streams` (listeners are bound at start-up) and `docker`/`proxmox` (the
//! backend is the container itself) have no label form. Compose's own `depends_on` labels are not
//! read; `idlewatcher.depends_on` is. Pure: the discovery (`providers::docker`) hands the
//! containers in, the assembly applies what comes out.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::gateway::inherit_engine;
use super::model::{BackendConfig, GatewayConfig, RouteConfig};
use super::route::parse_route;
use super::yaml::{Node, Value};
use super::ConfigError;

/// The prefix of every label idlewatcher reads.
pub const LABEL_PREFIX: &str = "idlewatcher.";
/// The label that makes a container a route (`true`).
pub const ENABLE_LABEL: &str = "idlewatcher.enable";
/// Route keys whose label value is a comma-separated list.
const LIST_KEYS: &[&str] = &["hosts", "depends_on", "ignore_user_agents"];
/// Route keys with no label form, and why.
const NO_LABEL: &[(&str, &str)] = &[
    ("docker", "the backend is the labelled container itself"),
    ("proxmox", "a labelled container is a Docker backend"),
    ("swarm", "a labelled container is a Docker backend"),
    (
        "streams",
        "stream listeners are bound at start-up; declare streams in the file",
    ),
];

/// A container that carries `idlewatcher.enable=true`, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledContainer {
    /// Its id.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// Every label it carries (only `idlewatcher.*` ones are read).
    pub labels: BTreeMap<String, String>,
}

/// A labelled container that is not routed, with why (for the log and `GET /api/routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRoute {
    /// The route's name (from `idlewatcher.name`, else the container's).
    pub name: String,
    /// The container.
    pub container: String,
    /// Every problem, each naming the container and its label.
    pub errors: Vec<ConfigError>,
}

/// The routes of a set of labelled containers, checked against the file's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelRoutes {
    /// Routed, in container-name order.
    pub accepted: Vec<RouteConfig>,
    /// Not routed, with why.
    pub rejected: Vec<RejectedRoute>,
}

/// One container's route, parsed by the file's route parser (over the file's `defaults`, on
/// the gateway's engine). Errors name the container and the label (`idlewatcher.<key>`).
pub fn route_from_labels(
    container: &LabeledContainer,
    gateway: &GatewayConfig,
) -> Result<RouteConfig, RejectedRoute> {
    let name = container
        .labels
        .get("idlewatcher.name")
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| container.name.clone());
    let problem = |key: &str, message: String| ConfigError {
        route: Some(name.clone()),
        key: key.to_string(),
        message: format!("container {:?}: {message}", container.name),
        line: None,
        column: None,
    };
    let mut errors = Vec::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (label, value) in &container.labels {
        let Some(key) = label.strip_prefix(LABEL_PREFIX) else {
            continue;
        };
        if label == ENABLE_LABEL {
            continue;
        }
        let top = key.split('.').next().unwrap_or(key);
        if let Some((_, why)) = NO_LABEL.iter().find(|(no, _)| *no == top) {
            errors.push(problem(
                label,
                format!("label {label:?} is not read: {why}"),
            ));
            continue;
        }
        pairs.push((key.to_string(), value.clone()));
    }
    if !pairs.iter().any(|(key, _)| key == "name") {
        pairs.push(("name".into(), name.clone()));
    }
    pairs.push(("docker.container".into(), container.name.clone()));
    let mut node = Node::from_pairs(pairs);
    if let Value::Mapping(entries) = &mut node.value {
        for (key, value) in entries.iter_mut() {
            let is_list = key.as_str().is_some_and(|key| LIST_KEYS.contains(&key));
            if let (true, Value::String(text)) = (is_list, &value.value) {
                let items = text
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(Node::scalar)
                    .collect();
                value.value = Value::Sequence(items);
            }
        }
    }
    let mut route = match parse_route(node, &name, &gateway.defaults) {
        Ok(route) => route,
        Err(found) => {
            errors.extend(found.into_iter().map(|error| {
                let label = format!("{LABEL_PREFIX}{}", error.key);
                problem(&label, error.message)
            }));
            return Err(RejectedRoute {
                name,
                container: container.name.clone(),
                errors,
            });
        }
    };
    if !errors.is_empty() {
        return Err(RejectedRoute {
            name,
            container: container.name.clone(),
            errors,
        });
    }
    inherit_engine(&mut route.backend, &gateway.docker);
    Ok(route)
}

/// Every labelled container's route, checked against the file's routes (`gateway.routes`) and
/// each other: a clash of name, host or container with the file rejects the label route; among
/// label routes the first by container name wins. A `depends_on` naming no route, or a cycle,
/// rejects the route too.
pub fn label_routes(containers: &[LabeledContainer], gateway: &GatewayConfig) -> LabelRoutes {
    let mut sorted: Vec<&LabeledContainer> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut names: HashMap<String, String> = HashMap::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    let mut backends: HashMap<BackendConfig, String> = HashMap::new();
    for route in &gateway.routes {
        let owner = format!("the file's route {:?}", route.name);
        names.insert(route.name.clone(), owner.clone());
        for host in &route.hosts {
            hosts.insert(host.clone(), owner.clone());
        }
        backends.insert(route.backend.clone(), owner);
    }
    let mut result = LabelRoutes::default();
    for container in sorted {
        let route = match route_from_labels(container, gateway) {
            Ok(route) => route,
            Err(rejected) => {
                result.rejected.push(rejected);
                continue;
            }
        };
        let clash = |key: &str, message: String| ConfigError {
            route: Some(route.name.clone()),
            key: key.to_string(),
            message: format!("container {:?}: {message}", container.name),
            line: None,
            column: None,
        };
        let mut errors = Vec::new();
        if let Some(owner) = names.get(&route.name) {
            errors.push(clash(
                "idlewatcher.name",
                format!("the name {:?} is taken by {owner}", route.name),
            ));
        }
        for host in &route.hosts {
            if let Some(owner) = hosts.get(host) {
                errors.push(clash(
                    "idlewatcher.hosts",
                    format!("the host {host:?} is served by {owner}"),
                ));
            }
        }
        if let Some(owner) = backends.get(&route.backend) {
            errors.push(clash(
                "idlewatcher.enable",
                format!("the container is already fronted by {owner}"),
            ));
        }
        if !errors.is_empty() {
            result.rejected.push(RejectedRoute {
                name: route.name.clone(),
                container: container.name.clone(),
                errors,
            });
            continue;
        }
        let owner = format!("the label route {:?}", route.name);
        names.insert(route.name.clone(), owner.clone());
        for host in &route.hosts {
            hosts.insert(host.clone(), owner.clone());
        }
        backends.insert(route.backend.clone(), owner);
        result.accepted.push(route);
    }
    reject_broken_dependencies(&mut result, gateway);
    result
}

/// Rejects label routes whose `depends_on` names no route in force, or that sit on a cycle,
/// until none is left (a rejection may break another route's dependency).
fn reject_broken_dependencies(result: &mut LabelRoutes, gateway: &GatewayConfig) {
    loop {
        let broken: Option<(usize, Vec<String>)> = {
            let known: HashSet<&str> = gateway
                .routes
                .iter()
                .chain(&result.accepted)
                .map(|route| route.name.as_str())
                .collect();
            let edges: HashMap<&str, Vec<&str>> = gateway
                .routes
                .iter()
                .chain(&result.accepted)
                .map(|route| {
                    let targets = route.depends_on.iter().map(|d| d.route.as_str()).collect();
                    (route.name.as_str(), targets)
                })
                .collect();
            result
                .accepted
                .iter()
                .enumerate()
                .find_map(|(index, route)| {
                    let missing: Vec<String> = route
                        .depends_on
                        .iter()
                        .map(|dependency| dependency.route.clone())
                        .filter(|target| !known.contains(target.as_str()))
                        .collect();
                    (!missing.is_empty() || on_cycle(&route.name, &edges))
                        .then_some((index, missing))
                })
        };
        let Some((index, missing)) = broken else {
            return;
        };
        let route = result.accepted.remove(index);
        let message = if missing.is_empty() {
            "its depends_on makes a cycle".to_string()
        } else {
            format!("depends_on names no route: {}", missing.join(", "))
        };
        let container = match &route.backend {
            BackendConfig::Docker { container, .. } => container.clone(),
            BackendConfig::Proxmox { .. } | BackendConfig::Swarm { .. } => String::new(),
        };
        result.rejected.push(RejectedRoute {
            name: route.name.clone(),
            errors: vec![ConfigError {
                route: Some(route.name.clone()),
                key: "idlewatcher.depends_on".into(),
                message: format!("container {container:?}: {message}"),
                line: None,
                column: None,
            }],
            container,
        });
    }
}

/// Whether `start` can reach itself through `edges`.
fn on_cycle(start: &str, edges: &HashMap<&str, Vec<&str>>) -> bool {
    let mut stack: Vec<&str> = edges.get(start).cloned().unwrap_or_default();
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some(next) = stack.pop() {
        if next == start {
            return true;
        }
        if seen.insert(next) {
            stack.extend(edges.get(next).into_iter().flatten().copied());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::time::Duration;

    fn gateway(routes: &str) -> GatewayConfig {
        let text = format!(
            "idlewatcher:\n  docker: {{ labels: true }}\n  defaults: {{ wake_timeout: 2m }}\n  routes:\n{routes}"
        );
        match parse(&text) {
            Ok(config) => config.gateway,
            Err(errors) => panic!("{errors}"),
        }
    }

    fn container(name: &str, labels: &[(&str, &str)]) -> LabeledContainer {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert(ENABLE_LABEL.into(), "true".into());
        all.entry("idlewatcher.port".into())
            .or_insert_with(|| "80".into());
        all.insert(
            "com.docker.compose.depends_on".into(),
            "db:service_started".into(),
        );
        LabeledContainer {
            id: format!("{name}-id"),
            name: name.into(),
            labels: all,
        }
    }

    #[test]
    fn labels_make_a_route_with_the_files_defaults() {
        let config = gateway("    []\n");
        let web = container(
            "web",
            &[
                ("idlewatcher.hosts", "a.lan, b.lan"),
                ("idlewatcher.port", "8080"),
                ("idlewatcher.idle_timeout", "5m"),
                ("idlewatcher.health.path", "/healthz"),
                ("idlewatcher.health.statuses", "200-299,301"),
                ("idlewatcher.ignore_user_agents", "UptimeRobot,Pingdom"),
                ("traefik.enable", "true"),
            ],
        );
        let route = route_from_labels(&web, &config).unwrap();
        assert_eq!(route.name, "web", "named after the container");
        assert_eq!(route.hosts, ["a.lan", "b.lan"]);
        assert_eq!(route.port, Some(8080));
        assert_eq!(route.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            route.wake_timeout,
            Duration::from_secs(120),
            "from defaults"
        );
        assert!(
            route.depends_on.is_empty(),
            "Compose's depends_on is not read"
        );
        assert_eq!(
            route.health,
            crate::config::HealthCheck::Http {
                path: "/healthz".into(),
                statuses: vec![(200, 299), (301, 301)]
            }
        );
        assert_eq!(route.ignore_user_agents, ["uptimerobot", "pingdom"]);
        assert!(matches!(
            &route.backend,
            BackendConfig::Docker { container, .. } if container == "web"
        ));
    }

    #[test]
    fn a_bad_label_names_the_container_and_the_label() {
        let config = gateway("    []\n");
        let bad = container(
            "slow",
            &[
                ("idlewatcher.hosts", "x.lan"),
                ("idlewatcher.idle_timeout", "5x"),
                ("idlewatcher.colour", "blue"),
                ("idlewatcher.streams", "tcp"),
            ],
        );
        let rejected = route_from_labels(&bad, &config).unwrap_err();
        let text: Vec<String> = rejected.errors.iter().map(ToString::to_string).collect();
        assert_eq!(rejected.errors.len(), 3, "{text:#?}");
        assert!(
            text.iter().any(|t| t.contains("idlewatcher.idle_timeout")
                && t.contains("container \"slow\"")
                && t.contains("5x")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.contains("idlewatcher.colour")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.contains("idlewatcher.streams")),
            "{text:#?}"
        );
    }

    #[test]
    fn clashes_with_the_file_reject_the_label_route() {
        let config = gateway(
            "    - { name: app, hosts: [app.lan], docker: { container: app }, port: 80 }\n",
        );
        let found = label_routes(
            &[
                container(
                    "app2",
                    &[("idlewatcher.name", "app"), ("idlewatcher.hosts", "x.lan")],
                ),
                container("other", &[("idlewatcher.hosts", "APP.lan")]),
                container(
                    "app",
                    &[("idlewatcher.hosts", "y.lan"), ("idlewatcher.name", "y")],
                ),
                container(
                    "fine",
                    &[
                        ("idlewatcher.hosts", "fine.lan"),
                        ("idlewatcher.depends_on", "app"),
                    ],
                ),
                container(
                    "orphan",
                    &[
                        ("idlewatcher.hosts", "o.lan"),
                        ("idlewatcher.depends_on", "nothing"),
                    ],
                ),
            ],
            &config,
        );
        let accepted: Vec<&str> = found.accepted.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(accepted, ["fine"]);
        let rejected: Vec<(&str, &str)> = found
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.errors[0].key.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("y", "idlewatcher.enable"),
                ("app", "idlewatcher.name"),
                ("other", "idlewatcher.hosts"),
                ("orphan", "idlewatcher.depends_on"),
            ]
        );
    }
}
